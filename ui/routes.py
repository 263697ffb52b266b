"""Routes page: the heads and blocks a prediction went through (information-flow routes), and what a head writes."""

from __future__ import annotations

import json

import streamlit as st

from attnscope.models.routes import DEFAULT_THRESHOLD, check_model, decompose, decompose_seq2seq, graph, head_writes
from attnscope.ui.common import (
    DEFAULT_TARGET,
    TARGET_LABEL,
    budgeted,
    export_buttons,
    follow,
    get_model,
    get_record,
    open_page,
    page_path,
    prelude,
    show_error,
    token_select,
)
from attnscope.ui.labels import labels as shown_labels
from attnscope.ui.labels import raw, warn_unknown
from attnscope.viz.export import MIME
from attnscope.viz.routes import EDGE_SELECTION, route_chart, route_frames

ATTENTION_PAGE = page_path("attention")  # absolute: resolves wherever the package is installed
GOTO = "routes_goto"  # the Attention page's widget values to open it with, consumed on the next run
HEAD_KEY = "routes_head"


@budgeted("routes", "Splitting every block's output into heads, residual and MLP…")
def routes_stack(name: str, text: str, target: str | None = None):
    lm = get_model(name, "auto")
    if target is None:
        return decompose(lm, get_record(name, "auto", (text,), values=True))
    return decompose_seq2seq(lm, get_record(name, "auto", (text,), target=(target,), values=True))


@budgeted("routes", "Building the graph…")
def routes_graph(name: str, text: str, target: str | None, position: int, threshold: float):
    lm = get_model(name, "auto")
    meta = {"model": lm.spec.name, "text": text, "threshold": threshold, **({"target": target} if target else {})}
    return graph(routes_stack(name, text, target), position, threshold, meta)


@budgeted("logit lens", "Reading the logit lens…", copy_out=True)
def routes_lens(name: str, text: str):
    lm = get_model(name, "auto")
    return get_record(name, "auto", (text,), values=True).logit_lens(lm, top_k=1)


@budgeted("routes", "Reading what the head writes…", copy_out=True)
def routes_writes(name: str, text: str, layer: int, head: int, position: int):
    return head_writes(get_model(name, "auto"), routes_stack(name, text), layer, head, position)


def _option(row) -> tuple[int, int, str]:
    """A head on the graph as (layer, head, attention kind): "self" in single-stack models; "encoder",
    "decoder" or "cross" (the Attention page's kinds) in encoder-decoder models."""
    if getattr(row, "stack", None) is None:
        return int(row.layer), int(row.head), "self"
    kind = "encoder" if row.stack == "encoder" else ("cross" if row.from_stack == "encoder" else "decoder")
    return int(row.layer), int(row.head), kind


def _on_edge_pick() -> None:
    """A click on a head line picks its strongest head (read from the line's row on the next run)."""
    picked = st.session_state.get("routes_chart")
    points = picked.selection.get(EDGE_SELECTION, []) if picked else []
    if points and "edge_id" in points[0]:
        st.session_state["routes_picked_line"] = points[0]["edge_id"]


goto = st.session_state.pop(GOTO, None)
if goto is not None:  # the same model and text (the workspace), that head, the predicting token
    if goto.pop("target", None) is not None:
        st.session_state["target"] = st.session_state.get("routes_target")  # the Attention page's target box
    open_page(ATTENTION_PAGE, **goto)

st.title("Routes")
st.caption(
    "Through which heads did the prediction go? Every residual-stream state (a dot: layer × token) is the sum of the "
    "block's input, what each head carries from each token and the MLP; a line's width is that part's importance, "
    "max(0, ‖y‖₁ − ‖y − part‖₁) normalised over the parts of the state it enters (Ferrando & Voita 2024, "
    "[paper](https://arxiv.org/abs/2403.00824)). The graph is built from the prediction down, keeping parts above the threshold."
)
ws, lm = prelude()
name, text = ws.model, ws.text

try:
    spec = lm.spec
    check_model(lm)
    target = None
    if spec.kind == "encoder-decoder":
        target = st.sidebar.text_input(TARGET_LABEL, DEFAULT_TARGET, key="routes_target")
    split = routes_stack(name, text, target)
    rec = get_record(name, "auto", (text,), **({"target": (target,)} if target is not None else {}), values=True)
    warn_unknown(rec)
    tokens = shown_labels(rec, target=target is not None)  # the predicting side: the target of an encoder-decoder
    source_tokens = shown_labels(rec) if target is not None else None
    if len(tokens) != len(split.tokens):
        tokens = list(split.tokens)
    n = len(tokens)
    position = token_select(
        {"decoder": "Prediction made at", "encoder": "Representation of"}.get(spec.kind, "Prediction made at target token"),
        tokens,
        "routes_position",
        default=n - 1,
        format_func=lambda i: f"{i}: {tokens[i]!r}",
        help="Decoders: the next token predicted after this one. Encoders: this token's last-layer representation.",
    )
    threshold = st.slider(
        "Threshold τ (keep parts with importance above it)",
        0.0,
        0.5,
        DEFAULT_THRESHOLD,
        0.005,
        format="%.3f",
        key="routes_threshold",
        help="0 keeps every part that carries anything: at 0 the importances into every state sum to 1.",
    )
    routes = routes_graph(name, text, target, int(position), float(threshold))
    lens = routes_lens(name, text) if spec.kind == "decoder" else None
    frames = route_frames(routes, lens, labels=tokens, source_labels=source_tokens)
    cols = st.columns(4)
    cols[0].metric("states (nodes)", len(routes.nodes))
    cols[1].metric("parts kept (edges)", len(routes.edges))
    cols[2].metric("heads on the graph", len(routes.head_scores()))
    if spec.kind == "decoder":
        final = lens[(lens["layer"] == spec.n_layers) & (lens["position"] == position)]
        cols[3].metric("prediction", str(final["top_token" if raw() else "top_label"].iloc[0]))
    st.caption(
        f"{split.layout} blocks · {routes.meta['check']} · {routes.meta['biases']} · layers are hidden-state indices "
        "(0 = embeddings; layer l + 1 is the output of block l); heads 0-based, with their KV group."
        + (
            " Encoder-decoder: the source tokens (src) sit left of the target's; green lines are cross-attention heads "
            "reading the encoder's output."
            if routes.seq2seq
            else ""
        )
    )
    if frames.note:
        st.info(
            f"Collapsed to stay readable: {frames.note}. Raise the threshold to draw every column and line.", icon=":material/compress:"
        )
    chart = route_chart(frames, title=f"{spec.name}: routes of position {position} (τ = {threshold:.3f})")
    st.altair_chart(chart, key="routes_chart", on_select=_on_edge_pick, selection_mode=EDGE_SELECTION, width="content", theme=None)
    export_buttons(chart, routes.edges, f"routes_{spec.name}_{position}", key="routes_export")
    st.download_button(
        "Graph as JSON",
        lambda: json.dumps(routes.to_json(), ensure_ascii=False).encode("utf-8"),
        file_name=f"routes_{spec.name}_{position}.json",
        mime=MIME["json"],
        key="routes_json",
        icon=":material/data_object:",
    )

    st.subheader("A head on the graph")
    heads = routes.head_scores()
    if heads.empty:
        st.info("No head edge is above the threshold: lower it to see heads.")
        st.stop()
    options = [_option(r) for r in heads.itertuples(index=False)]  # (layer, head, attention kind)
    share = {_option(r): float(r.flow) for r in heads.itertuples(index=False)}
    picked_line = st.session_state.pop("routes_picked_line", None)
    if picked_line is not None:
        row = frames.edges[frames.edges["edge_id"] == picked_line]
        if len(row) and int(row["top_head"].iloc[0]) >= 0:
            kind = "cross" if row["kind"].iloc[0] == "cross" else (row["stack"].iloc[0] or "self")
            picked = (int(row["layer"].iloc[0]), int(row["top_head"].iloc[0]), kind)
            if picked in options:
                st.session_state[HEAD_KEY] = picked
    kept = st.session_state.get(HEAD_KEY)
    # The labels carry each head's share of this graph: sent again whenever the graph changes.
    follow(HEAD_KEY, tuple(share.items()), kept if kept in options else options[0])
    layer, head, kind = st.selectbox(
        "Head (click a blue or green line to pick its strongest head)",
        options,
        format_func=lambda o: (
            (f"{o[2]} " if o[2] != "self" else "")
            + f"layer {o[0]} head {o[1]} (KV {o[1] // split.kv_group}): {share[o]:.3f} of the prediction"
        ),
        key=HEAD_KEY,
    )
    mine = routes.edges[(routes.edges["kind"] == "head") & (routes.edges["layer"] == layer) & (routes.edges["head"] == head)]
    if routes.seq2seq:
        into = "encoder" if kind == "encoder" else "decoder"
        source = "encoder" if kind in ("encoder", "cross") else "decoder"
        mine = mine[(mine["stack"] == into) & (mine["from_stack"] == source)]
    st.dataframe(mine.drop(columns=["kind"]), hide_index=True, width="stretch")
    if st.button("Open its attention map", icon=":material/grid_view:", key="routes_open_attention"):
        token = int(position) if kind in ("self", "decoder", "cross") else int(mine["to_position"].iloc[0])
        extra = {"kind": kind, "target": target} if routes.seq2seq else {}
        st.session_state[GOTO] = {"layer": layer, "head": head, "token": token, **extra}
        st.rerun()
    if spec.kind == "decoder" and split.final is not None:
        writes = routes_writes(name, text, layer, head, int(position))
        st.caption(
            f"What head {head} of layer {layer} writes at position {position}: its output Σ_j α·W_O·v_j through the final norm "
            "(linearised with the final state's own statistics) and the unembedding — its additive share of each token's logit."
        )
        left, right = st.columns(2)
        left.markdown("**Promotes**")
        hidden = ["direction", "label" if raw() else "token"]  # the decoded token, or the raw piece with the toggle
        left.dataframe(writes[writes["direction"] == "promotes"].drop(columns=hidden), hide_index=True, width="stretch")
        right.markdown("**Suppresses**")
        right.dataframe(writes[writes["direction"] == "suppresses"].drop(columns=hidden), hide_index=True, width="stretch")
    else:
        st.caption("What a head writes is read through the final norm and unembedding of a decoder-only model; not for this one.")
except ValueError as exc:
    show_error(exc)
