"""Lab page: impose a sparse, low-rank, kernel or fewer-KV-head pattern on a real model; see what it keeps, loses and costs."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from attnscope.analysis.cost import (
    DEFAULT_SRAM_BYTES,
    cost_frame,
    flash_io_frame,
    kv_cache_frame,
    receptive_field_frame,
    recurrence_memory_frame,
)
from attnscope.analysis.patterns import PATTERNS, Pattern, Recurrence, Scale, check_pattern, saturation
from attnscope.models.anatomy import dtype_bytes
from attnscope.models.lab import lab_coverage, lab_effect, lab_maps, lab_scale, lab_sweep
from attnscope.ui.common import (
    DEFAULT_TARGET,
    TARGET_LABEL,
    bind,
    budgeted,
    export_buttons,
    get_model,
    get_record,
    prelude,
    show_chart,
    show_error,
)
from attnscope.ui.labels import labels as shown_labels
from attnscope.viz.lab import (
    cost_chart,
    coverage_heatmap,
    flash_io_chart,
    kept_lost_chart,
    kept_lost_frame,
    kv_cache_chart,
    layer_error_chart,
    pattern_map_chart,
    receptive_field_chart,
    recurrence_memory_chart,
    scale_effect_chart,
    scale_entropy_chart,
    sweep_chart,
)

APPROXIMATION = (
    "**These are approximations.** The model was trained with full attention; the lab imposes each pattern on it "
    "without retraining (the papers train or fine-tune with theirs), and computes it densely to compare cell by cell. "
    "Coverage is read from the exact maps (the model unchanged); the effect comes from really running the model with "
    "the pattern in the chosen layers. Costs are formulas, except the measured times."
)


def record_of(name: str, text: str, target: str | None):
    """The record of the text (and of an encoder-decoder's target)."""
    return get_record(name, "auto", (text,), target=(target,) if target is not None else None)


@budgeted("lab runs", "Measuring coverage…", copy_out=True)
def coverage_table(name: str, text: str, pattern: Pattern, target: str | None) -> pd.DataFrame:
    return lab_coverage(record_of(name, text, target), pattern)


@budgeted("lab runs", "Running the model with the pattern imposed…", copy_out=True)
def effect_of(name: str, text: str, pattern: Pattern, layers: tuple[int, ...], target: str | None):
    return lab_effect(get_model(name, "auto"), text, pattern, layers=list(layers), target=target)


@budgeted("lab runs", "Sweeping τ (one forward per value)…", copy_out=True)
def scale_sweep_of(name: str, text: str, layers: tuple[int, ...], target: str | None):
    return lab_scale(get_model(name, "auto"), text, layers=list(layers), target=target)


@budgeted("lab runs", "Sweeping the parameter (one forward per value)…", copy_out=True)
def sweep_of(name: str, text: str, pattern: Pattern, layers: tuple[int, ...], target: str | None) -> pd.DataFrame:
    lm = get_model(name, "auto")
    return lab_sweep(lm, text, pattern, layers=list(layers), rec=record_of(name, text, target), target=target)


class SidebarForm:
    """``analysis.patterns.Form`` over the sidebar: each pattern asks for its own parameters, widget keys ``lab_<parameter>``."""

    def number(self, ask: str, low: int, high: int, start: int, *, key: str) -> int:
        return int(st.sidebar.number_input(ask, low, high, start, key=f"lab_{key}"))

    def flag(self, ask: str, *, key: str) -> bool:
        return st.sidebar.checkbox(ask, key=f"lab_{key}")

    def choice(self, ask: str, options: list, *, key: str, buttons: bool = False):
        if buttons:
            return st.sidebar.radio(ask, options, key=f"lab_{key}", horizontal=True)
        return st.sidebar.selectbox(ask, options, key=f"lab_{key}")

    def text(self, ask: str, start: str, *, key: str) -> str:
        return st.sidebar.text_input(ask, start, key=f"lab_{key}")


st.title("Lab: efficient attention on a real model")
ws, lm = prelude()
name, text = ws.model, ws.text
pattern_name = st.sidebar.selectbox(
    "Pattern", list(PATTERNS), index=list(PATTERNS).index("window"), key="lab_pattern", format_func=lambda p: f"{p} ({PATTERNS[p].family})"
)
st.info(APPROXIMATION, icon=":material/science:")
st.caption(f"**{pattern_name}** — {PATTERNS[pattern_name].about}")

try:
    spec = lm.spec
    # an encoder-decoder's encoder gets the pattern; its decoder reads this target (KL over its next tokens)
    target = st.sidebar.text_input(TARGET_LABEL, DEFAULT_TARGET, key="lab_target") if spec.kind == "encoder-decoder" else None
    rec = record_of(name, text, target)
    n = len(rec.tokens[0])
    pattern = PATTERNS[pattern_name].from_form(SidebarForm(), n, spec.n_heads)
    layers = st.sidebar.multiselect("Impose on layers (0-based; empty = all)", list(range(spec.n_layers)), key="lab_layers")
    layers = tuple(layers) if layers else tuple(rec.attention_layers)
    check_pattern(pattern, n, spec.n_heads)
    st.markdown(f"Pattern `{pattern.label}` on {len(layers)} of {spec.n_layers} layers, {n} tokens.")
    whole = saturation(pattern, n, spec.n_heads, causal=spec.kind == "decoder")
    if whole is not None:
        st.info(f"`{pattern.label}` {whole} ({n} tokens): it is full attention here, so its effect is the model's own (KL 0).")
except ValueError as exc:
    show_error(exc)
    st.stop()

# -- what one head keeps ---------------------------------------------------------------------------
st.subheader("What the pattern keeps of one head")
left, right = st.columns(2)
layer = left.slider("Layer (0-based)", 0, spec.n_layers - 1, key="lab_layer", **bind("lab_layer", "layer", ws.layer))
head = right.slider("Head (0-based)", 0, spec.n_heads - 1, key="lab_head", **bind("lab_head", "head", ws.head))
try:
    maps = lab_maps(rec, pattern, layer, head)
    cells = kept_lost_frame(maps, shown_labels(rec))
    a, b = st.columns(2)
    with a:
        chart = pattern_map_chart(cells, title=f"{pattern.label}: imposed map, layer {layer} head {head}")
        st.altair_chart(chart, width="content", key="lab_pattern_map", theme=None)
        export_buttons(chart, cells, f"lab_pattern_{spec.name}_L{layer}_H{head}", key="export_lab_pattern")
    with b:
        chart = kept_lost_chart(cells, title=f"true map, layer {layer} head {head}: kept mass coloured, lost mass marked")
        st.altair_chart(chart, width="content", key="lab_kept_map", theme=None)
        export_buttons(chart, cells, f"lab_kept_{spec.name}_L{layer}_H{head}", key="export_lab_kept")
    st.caption(
        "Left: the map the pattern imposes (red: keys it drops, grey: keys the model's own mask forbids). Right: the exact map, "
        "each cell coloured by the mass the pattern keeps there, min(A, Â); a red square's size is the mass lost in that cell."
    )
except ValueError as exc:
    show_error(exc)

# -- coverage --------------------------------------------------------------------------------------
st.subheader("Coverage per layer and head (the model unchanged)")
try:
    table = coverage_table(name, text, pattern, target)
    chart = coverage_heatmap(table)
    show_chart(chart, table, f"lab_coverage_{spec.name}", key="lab_coverage")
    st.caption(
        f"Coverage = Σ_j min(A_ij, Â_ij) per query (1 − total variation), averaged over queries; for a sparse pattern it is "
        f"exactly the exact attention mass on the keys it keeps. Mean over heads {table['coverage'].mean():.3f}."
    )
    st.markdown("**Heads losing the most**")
    st.dataframe(table.nsmallest(5, "coverage")[["layer", "head", "kv_head", "coverage", "min_coverage"]], hide_index=True)
except ValueError as exc:
    show_error(exc)

# -- effect ----------------------------------------------------------------------------------------
st.subheader("Effect on the output (the model run with the pattern imposed)")
effect = None
try:
    effect = effect_of(name, text, pattern, layers, target)
    cols = st.columns(5)
    if effect.kl is not None:
        cols[0].metric("KL(full ‖ pattern), next token", f"{effect.kl:.4f} nats", help=f"mean over positions; max {effect.kl_max:.3f}")
        cols[1].metric("top-1 kept", f"{effect.top1_kept:.0%}", help="positions whose most likely next token is unchanged")
        if effect.loss_imposed is not None:
            cols[2].metric(
                "loss on the text",
                f"{effect.loss_imposed:.3f}",
                f"{effect.loss_imposed - effect.loss_full:+.3f} vs full",
                delta_color="inverse",
            )
    cols[3].metric("cosine, last hidden states", f"{effect.cosine:.4f}")
    cols[4].metric("forward time (measured)", f"{effect.seconds_imposed:.2f} s", f"full {effect.seconds_full:.2f} s", delta_color="off")
    st.caption(f"How: {effect.how}." + (f" {effect.note}." if effect.note else ""))
    chart = layer_error_chart(effect.layer_error)
    show_chart(chart, effect.layer_error, f"lab_layer_error_{spec.name}", key="lab_layer_error")
    st.caption(
        "The imposed forward is a dense simulation on this machine: its time is not the pattern's efficient-kernel time (see the cost formulas below)."
    )
except ValueError as exc:
    show_error(exc)

# -- sweep -----------------------------------------------------------------------------------------
if pattern.sweep_parameter is not None:
    st.subheader(f"Sweep: error against {pattern.sweep_parameter}")
    if isinstance(pattern, Scale):
        st.caption("Why attention scales q·k by 1/√d: every logit multiplied by τ, τ from 0.25 to 4 (1 = the model).")
    if st.toggle("Run the sweep (one forward per value)", key="lab_sweep"):
        try:
            if isinstance(pattern, Scale):
                swept = scale_sweep_of(name, text, layers, target)
                st.markdown(swept.line)
                a, b = st.columns(2)
                with a:
                    chart = scale_entropy_chart(swept.entropy)
                    show_chart(chart, swept.entropy, f"lab_scale_entropy_{spec.name}", key="lab_scale_entropy")
                with b:
                    chart = scale_effect_chart(swept.summary)
                    show_chart(chart, swept.summary, f"lab_scale_effect_{spec.name}", key="lab_scale_effect")
            else:
                sweep = sweep_of(name, text, pattern, layers, target)
                chart = sweep_chart(sweep)
                st.altair_chart(chart, width="content", key="lab_sweep_chart", theme=None)
                export_buttons(chart, sweep, f"lab_sweep_{spec.name}_{pattern.name}", key="export_lab_sweep")
        except ValueError as exc:
            show_error(exc)

# -- cost ------------------------------------------------------------------------------------------
st.subheader("Cost")
head_dim = spec.head_dim
costs = cost_frame(pattern, head_dim, spec.n_heads, spec.n_layers)
chart = cost_chart(costs)
show_chart(chart, costs, f"lab_cost_{spec.name}_{pattern.name}", key="lab_cost")
st.caption(f"Formulas for {spec.name} (head size {head_dim}); multiply-add = 2 FLOPs; bidirectional counts. {costs['how'].iloc[-1]}.")
if isinstance(pattern, Recurrence):
    a, b = st.columns(2)
    with a:
        field = receptive_field_frame(pattern, spec.n_layers, n)
        chart = receptive_field_chart(field)
        show_chart(chart, field, f"lab_receptive_field_{spec.name}", key="lab_receptive_field")
        st.caption(
            f"On this text of {n} tokens: after block l the last query of a segment can be reached from (l·M + 1)·C tokens, "
            f"{pattern.memory * pattern.segment} more per layer; on a long text {spec.n_layers} layers reach "
            f"{pattern.receptive_field(spec.n_layers, 10**9):,} tokens (Dai et al. 2019: O(N·L))."
        )
    with b:
        memory = recurrence_memory_frame(pattern, spec.n_layers, spec.n_kv_heads, head_dim, bytes_per_element=dtype_bytes(spec.dtype))
        chart = recurrence_memory_chart(memory)
        show_chart(chart, memory, f"lab_recurrence_memory_{spec.name}", key="lab_recurrence_memory")
        held = (
            f" Measured in the chunked run above: at most {max(effect.cache_tokens)} keys held."
            if effect is not None and effect.cache_tokens
            else ""
        )
        st.caption(
            f"While a segment runs its cache holds (M+1)·C = {pattern.cached_tokens(10**9):,} tokens per layer ({spec.dtype}), "
            f"not all n.{held}"
        )
a, b = st.columns(2)
with a:
    cache = kv_cache_frame(spec.n_layers, spec.n_heads, spec.n_kv_heads, head_dim)
    chart = kv_cache_chart(cache)
    show_chart(chart, cache, f"lab_kv_cache_{spec.name}", key="lab_kv_cache")
    own = cache[cache["model"]].iloc[0]
    st.caption(
        f"2 (K, V) x {spec.n_layers} layers x G heads x {head_dim} x 2 bytes per token; {spec.name} ({own['kind']}): {own['bytes_per_token']:,} bytes per token."
    )
with b:
    sram_kb = st.number_input("On-chip SRAM per SM (KB)", 1, 1024, DEFAULT_SRAM_BYTES // 1024, key="lab_sram")
    try:
        io = flash_io_frame(head_dim, int(sram_kb) * 1024)
        chart = flash_io_chart(io, sram_kb, head_dim)
        show_chart(chart, io, f"lab_flash_io_{spec.name}", key="lab_flash_io")
        st.caption(
            "FlashAttention (Dao et al. 2022, Theorem 2): standard attention writes and rereads the n x n matrix, Θ(nd + n²) "
            "HBM accesses; the tiled kernel keeps blocks in SRAM and rereads Q and O once per key block, Θ(n²d²/M). "
            f"At n = 4,096: {io[io['n'] == 4096]['ratio'].iloc[0]:.1f}x less traffic. Both compute exact attention."
        )
    except ValueError as exc:
        show_error(exc)
