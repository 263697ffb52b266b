"""Attention page: one head's map, what a token attends to, every head at a glance, bertviz views."""

from __future__ import annotations

import numpy as np
import streamlit as st

from attnscope.ui.common import (
    DEFAULT_TARGET,
    KIND_LABELS,
    TARGET_LABEL,
    bind,
    budgeted,
    cached_bertviz_scripts,
    export_buttons,
    get_mixing,
    get_record,
    prelude,
    select,
    show_error,
    token_select,
)
from attnscope.ui.labels import axis_labels, labels, warn_unknown
from attnscope.ui.why import on_cell, why_panel
from attnscope.viz import bertviz
from attnscope.viz.bertviz import offline_html
from attnscope.viz.figures import overview_thumbnails
from attnscope.viz.heatmap import DEFAULT_MAX_CELLS, attention_frame, container_height, heatmap, token_bars, token_frame
from attnscope.viz.overview import THUMB, overview, overview_frame

# The Measure switch: two per-head measures, then the context-mixing maps of a whole layer (models.contributions).
MEASURES = {
    "weight": "attention weight α",
    "norm": "value-weighted norm ‖α·W_O v‖",
    "mix:weights": "layer: mean weight",
    "mix:norm": "layer: ‖Σα·W_O v‖",
    "mix:norm_res_ln": "layer: + residual & LN",
    "mix:alti": "layer: ALTI",
    "mix:value_zeroing": "layer: value zeroing",
}
MIXING = tuple(m for m in MEASURES if m.startswith("mix:"))
CELL_LIMIT = int(DEFAULT_MAX_CELLS**0.5)  # tokens per side drawn as single cells; longer maps aggregate


@budgeted("thumbnails", "Drawing a thumbnail of every head…", copy_out=True)
def overview_data(name: str, backend: str, text: str, max_length: int | None, target: tuple[str, ...] | None = None):
    """The overview's frame: every head's thumbnail as a PNG, with statistics for tooltips (cached per text)."""
    rec = get_record(name, backend, (text,), None, True, max_length, target)
    thumbs = overview_thumbnails(rec, THUMB)  # [layer, head, t, t]
    # Statistics stream over every head's map: worth it for tooltips at moderate lengths only.
    stats = rec.head_stats() if len(rec.tokens[0]) <= 1024 else None
    return overview_frame(thumbs, kv_group=rec.spec.kv_group, stats=stats)


def _on_overview_select() -> None:
    """Clicking a head in the overview selects it (runs before the rerun, so widgets can take it)."""
    picked = st.session_state.get("overview")
    points = picked.selection.get("head_pick", []) if picked else []
    if points:
        select(layer=int(points[0]["layer"]), head=int(points[0]["head"]))


def _on_cell_select() -> None:
    """Clicking a cell of the heatmap selects its query token."""
    picked = st.session_state.get("heatmap_chart")
    points = picked.selection.get("cell_pick", []) if picked else []
    if points:
        select(token=int(points[0]["query_pos"]))
        on_cell(points[0])  # and opens "why" on that cell


def _bertviz_offline():
    """A function that inlines bertviz's scripts into its HTML when they are installed; says which on the page."""
    scripts = cached_bertviz_scripts()
    if scripts:
        st.caption("bertviz's scripts (require.js, d3, jQuery) come with attnscope, so these views draw offline.")
        return lambda html: offline_html(html, scripts)
    st.caption(
        "bertviz's scripts are not installed here (`make install` needs npm), so these views load require.js and d3 "
        "from public CDNs and stay blank without internet access."
    )
    return lambda html: html


def _bertviz(rec, layer: int) -> None:
    """bertviz's head view and model view, when the input is small enough for them."""
    from bertviz import head_view, model_view

    spec, tokens = rec.spec, labels(rec)
    n = len(tokens)
    head_reason, model_reason = bertviz.too_big(spec.n_layers, spec.n_heads, n)
    if head_reason:
        st.info(head_reason)
        return
    local = _bertviz_offline()
    with st.spinner("Building bertviz views…"):
        html = head_view(bertviz.layer_tensors(rec, only=layer), tokens, include_layers=[layer], html_action="return").data
    st.markdown(f"**bertviz head view** (layer {layer}, all heads)")
    st.iframe(local(html), height=min(1200, 140 + 22 * n))
    if model_reason:
        st.info(model_reason)
        return
    with st.spinner("Building bertviz model view…"):
        html = model_view(bertviz.layer_tensors(rec), tokens, html_action="return").data
    st.markdown("**bertviz model view** (all layers x heads)")
    st.iframe(local(html), height=min(2400, 120 + 110 * spec.n_layers))


def _bertviz_encoder_decoder(rec) -> None:
    """bertviz's head view with its encoder, decoder and cross-attention tabs, for short inputs."""
    from bertviz import head_view

    source, target = labels(rec), labels(rec, target=True)
    if max(len(source), len(target)) > bertviz.MAX_TOKENS:
        st.info(f"bertviz views hidden: they are shown up to {bertviz.MAX_TOKENS} tokens per side.")
        return
    with st.spinner("Building the bertviz head view…"):
        html = head_view(
            encoder_attention=bertviz.layer_tensors(rec, "encoder"),
            decoder_attention=bertviz.layer_tensors(rec, "decoder"),
            cross_attention=bertviz.layer_tensors(rec, "cross"),
            encoder_tokens=source,
            decoder_tokens=target,
            html_action="return",
        ).data
    local = _bertviz_offline()
    st.markdown("**bertviz head view** (encoder, decoder and cross-attention: pick in its menu)")
    st.iframe(local(html), height=min(1400, 200 + 22 * max(len(source), len(target))))


def head_tab(rec, spec, weights, tokens_q, tokens_k, layer: int, head: int, kind, measure: str, gqa: bool) -> None:
    """One head's map (clickable, zoomable, exported) and what one token attends to."""
    tokens, n = tokens_q, len(tokens_q)
    window = None
    if n > CELL_LIMIT:
        lo, hi = st.select_slider(
            "Zoom window (token range, 0-based)",
            options=list(range(n + 1)),
            value=(0, n),
            key="window",
            help=f"Windows of up to {CELL_LIMIT} tokens are drawn cell by cell; longer ranges aggregate into blocks.",
        )
        if hi - lo >= 2:
            window = (lo, hi)
    allowed = rec.stack(kind).allowed(layer)  # the mask the model really applied (causal, window, padding)
    labels_q, labels_k = axis_labels(rec, kind)
    frame = attention_frame(
        weights,
        tokens_q,
        tokens_k,
        layer=layer,
        head=head,
        allowed=allowed,
        window=window if kind != "cross" else None,
        labels_q=labels_q,
        labels_k=labels_k,
    )
    kv_note = f" · reads KV head {rec.kv_head(head)}" if gqa else ""
    if measure.startswith("mix:"):
        method, scope = measure.removeprefix("mix:").rsplit(":", 1)
        title = f"Layer {layer} (0-based), all heads · {MEASURES['mix:' + method]}" + (" · rolled out" if scope == "rolled" else "")
    else:
        title = f"Layer {layer}, head {head}{kv_note} (0-based)" + (" · value-weighted norm" if measure == "norm" else "")
    # On the page the map fills the column (up to a readable height); the exported figure keeps a fixed size.
    picked = st.session_state.get("token") if kind != "cross" else None
    picked = int(picked) if isinstance(picked, (int, np.integer)) and 0 <= picked < n else None
    shown = heatmap(frame, select="cell_pick", title=title, size="container", highlight=picked)
    chart = heatmap(frame, title=title)
    # The map's column grows with the page; its share keeps cells near square (wider for long inputs).
    share = min(0.8, max(0.55, container_height(frame["query_pos"].nunique()) / 860))
    map_col, note_col = st.columns([share, 1 - share], gap="medium")
    map_col.altair_chart(shown, width="stretch", key="heatmap_chart", on_select=_on_cell_select, theme=None)
    with note_col:
        if frame.attrs["block"] > 1:
            st.caption(
                f"{n} tokens: drawn as {frame.attrs['reduction']}. Narrow the zoom window to {CELL_LIMIT} tokens or fewer "
                "for single cells; click a block to select its first query token."
            )
        else:
            rows = (
                "each row sums to less than 1: the rest went to the head's learned attention sink"
                if spec.attention_sinks
                else "each row sums to 1"
            )
            st.caption(
                (
                    f"Rows are queries, columns the keys they attend to; {rows}."
                    if measure == "weight"
                    else "Each cell is α_ij·‖W_O^h v_j‖: the length of what key j writes into query i's residual stream "
                    "through this head (Kobayashi et al. 2020); rows do not sum to 1."
                    if measure == "norm"
                    else "Rows are tokens, columns the tokens their representation draws on after this layer "
                    + ("(the product of every layer's map up to here); " if measure.endswith(":rolled") else "(this block alone); ")
                    + "each row sums to 1."
                )
                + (
                    " Grey cells are masked: the mask this layer really applied (causal, sliding window or padding)."
                    if not allowed.all()
                    else ""
                )
                + " Click a cell to select its query token."
            )
        if picked is not None:
            st.caption(f"Selected: query {picked} ({labels_q[picked]!r}), outlined on the map; its row and column are below.")
        export_name = (
            f"{measure.replace(':', '_')}_{spec.name}_L{layer}" if measure.startswith("mix:") else f"attention_{spec.name}_L{layer}_H{head}"
        )
        export_buttons(chart, frame, export_name, key="export_heatmap")

    if kind != "cross":  # the token view reads a square map (queries and keys are the same tokens)
        position = token_select("Token", tokens, "token", default=0, format_func=lambda i: f"{i}: {labels_q[i]}")
        bars_frame = token_frame(weights, tokens, position, labels=labels_q)
        bars = token_bars(bars_frame)
        st.altair_chart(bars, width="content", key="token_chart", theme=None)
        export_buttons(bars, bars_frame, f"token_{position}_{spec.name}_L{layer}_H{head}", key="export_token")


def all_heads_tab(name: str, backend: str, text: str, max_length, target, spec, layer: int, head: int, kind, gqa: bool) -> None:
    """Every layer x head as a thumbnail; a click selects the head shown in the Head tab."""
    if kind is not None:
        st.caption("Every head of the encoder's self-attention.")
    ov_frame = overview_data(name, backend, text, max_length, target)
    ov_chart = overview(ov_frame, selected=(layer, head))
    st.altair_chart(ov_chart, width="content", key="overview", on_select=_on_overview_select, theme=None)
    masked_note = "; grey = masked (causal)" if spec.kind == "decoder" else ""
    st.caption(
        f"Each thumbnail is one head's map, max-pooled to at most {THUMB}x{THUMB} pixels, colour 0 (dark) to 1 (yellow), "
        f"viridis{masked_note}. Click a head to show it above." + (" Query heads sharing a KV head sit together." if gqa else "")
    )
    export_buttons(ov_chart, ov_frame.drop(columns=["image"]), f"overview_{spec.name}", key="export_overview")


st.title("Attention")
ws, lm = prelude(backend=True)
name, backend, text = ws.model, ws.backend, ws.text
max_length = (
    st.sidebar.number_input(
        "Truncate to (tokens, 0 = refuse longer text)", min_value=0, max_value=32768, value=0, step=128, key="max_length"
    )
    or None
)

try:
    spec = lm.spec
    gqa = spec.n_kv_heads < spec.n_heads
    target, kind = None, None
    if spec.kind == "encoder-decoder":
        target = (st.sidebar.text_input(TARGET_LABEL, DEFAULT_TARGET, key="target"),)
        kind = st.radio(
            "Attention",
            ["encoder", "decoder", "cross"],
            horizontal=True,
            key="attn_kind",
            format_func={**KIND_LABELS, "cross": "cross-attention (target queries → source keys)"}.get,
            **bind("attn_kind", "kind", ws.kind or "encoder"),
        )
    measure, scope = "weight", "layer"
    if spec.kind != "encoder-decoder" and spec.recording == "hook":
        measure = st.radio(
            "Measure",
            list(MEASURES),
            horizontal=True,
            key="attn_measure",
            format_func=MEASURES.get,
            help="Per head: the weight α, or α·‖W_O v‖ (Kobayashi et al. 2020). Per layer (all heads together): "
            "how much each token's representation draws on each token — weights, norms, with the residual and layer "
            "norm, ALTI, value zeroing (see the Explain page for what each computes).",
        )
        if measure in MIXING:
            scope = st.radio(
                "Scope",
                ["layer", "rolled"],
                horizontal=True,
                key="attn_scope",
                format_func={"layer": "this layer", "rolled": "rolled out to this layer"}.get,
            )
    rec = get_record(name, backend, (text,), None, True, max_length, target, measure == "norm")
    tokens_q, tokens_k = rec.stack(kind).axes()
    warn_unknown(rec)
    n_layers = spec.n_decoder_layers if kind in ("decoder", "cross") else spec.n_layers

    left, right = st.columns(2)
    layer = left.slider("Layer (0-based)", 0, n_layers - 1, key="layer", **bind("layer", "layer", min(ws.layer, n_layers - 1)))
    head = right.slider("Head (0-based)", 0, spec.n_heads - 1, key="head", disabled=measure in MIXING, **bind("head", "head", ws.head))
    if measure in MIXING:
        maps, rolled, _, decomposed = get_mixing(name, backend, text, max_length, measure.removeprefix("mix:"))
        position = rec.attention_layers.index(layer) if layer in rec.attention_layers else None
        if position is None:
            rec.layer_record(layer)  # a block without attention: refused with its one line
        weights = (rolled if scope == "rolled" else maps)[position]
        measure = f"{measure}:{scope}"
        st.caption(f"{MEASURES[measure.rsplit(':', 1)[0]]}: {decomposed}.")
    else:
        weights = rec.stack(kind).attention(layer, head, measure=measure)  # [n_q, n_k] exact, recomputed from the recorded q/k

    tab_head, tab_all, tab_bertviz = st.tabs(["Head", "All heads", "bertviz"])
    with tab_head:
        head_tab(rec, spec, weights, tokens_q, tokens_k, layer, head, kind, measure, gqa)
        if kind is None and not measure.startswith("mix:"):
            why_panel(name, text, lm, rec, layer, head, axis_labels(rec)[0])

    with tab_all:
        all_heads_tab(name, backend, text, max_length, target, spec, layer, head, kind, gqa)

    with tab_bertviz:
        if spec.kind == "encoder-decoder":
            _bertviz_encoder_decoder(rec)
        else:
            _bertviz(rec, layer)
except ValueError as exc:
    show_error(exc)
