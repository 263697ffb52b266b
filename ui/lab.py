"""Lab page: impose a sparse, low-rank, kernel or fewer-KV-head pattern on a real model; see what it keeps, loses and costs."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from analysis.cost import DEFAULT_SRAM_BYTES, cost_frame, flash_io_frame, kv_cache_frame
from analysis.patterns import PATTERNS, SWEEP_PARAMETER, check_pattern, parse_pattern
from models.lab import lab_coverage, lab_effect, lab_maps, lab_sweep
from ui.common import budgeted, export_buttons, get_model, get_record, model_header, model_picker, show_error
from viz.lab import (
    cost_chart,
    coverage_heatmap,
    flash_io_chart,
    kept_lost_chart,
    kept_lost_frame,
    kv_cache_chart,
    layer_error_chart,
    pattern_map_chart,
    sweep_chart,
)

DEFAULT_TEXT = (
    "The efficient attention lab puts a sliding window, a few global tokens or random features into a trained model "
    "and shows what each head keeps and what the output loses."
)
APPROXIMATION = (
    "**These are approximations.** The model was trained with full attention; the lab imposes each pattern on it "
    "without retraining (the papers train or fine-tune with theirs), and computes it densely to compare cell by cell. "
    "Coverage is read from the exact maps (the model unchanged); the effect comes from really running the model with "
    "the pattern in the chosen layers. Costs are formulas, except the measured times."
)


@budgeted("lab runs", "Measuring coverage…", copy_out=True)
def coverage_table(name: str, text: str, label: str) -> pd.DataFrame:
    return lab_coverage(get_record(name, "auto", (text,)), label)


@budgeted("lab runs", "Running the model with the pattern imposed…", copy_out=True)
def effect_of(name: str, text: str, label: str, layers: tuple[int, ...]):
    return lab_effect(get_model(name, "auto"), text, label, layers=list(layers))


@budgeted("lab runs", "Sweeping the parameter (one forward per value)…", copy_out=True)
def sweep_of(name: str, text: str, label: str, layers: tuple[int, ...]) -> pd.DataFrame:
    return lab_sweep(get_model(name, "auto"), text, label, layers=list(layers), rec=get_record(name, "auto", (text,)))


def pattern_widgets(name: str, n: int, n_heads: int) -> str:
    """Sidebar parameters for the chosen pattern; returns its ``name:params`` label."""
    side = st.sidebar
    top = max(1, n)
    if name in ("full", "linear"):
        return name
    if name == "window":
        width = side.number_input("Width W (keys at distance < W)", 1, top, min(4, top), key="lab_width")
        causal = side.checkbox("Causal (left side only)", key="lab_causal")
        return f"window:{width}" + (",causal" if causal else "")
    if name == "dilated":
        width = side.number_input("Keys per side W", 1, top, min(4, top), key="lab_width")
        dilation = side.number_input("Dilation D", 1, top, min(2, top), key="lab_dilation")
        return f"dilated:{width},{dilation}"
    if name in ("strided", "block"):
        width = side.number_input("Stride L" if name == "strided" else "Block size B", 1, top, min(4, top), key="lab_width")
        return f"{name}:{width}"
    if name == "fixed":
        width = side.number_input("Block length L", 1, top, min(4, top), key="lab_width")
        summary = side.number_input("Summary cells C", 1, top, 1, key="lab_summary")
        return f"fixed:{width},{summary}"
    if name == "global":
        which = side.radio("Global tokens", ["first G", "special tokens", "chosen positions"], key="lab_global_kind", horizontal=True)
        width = side.number_input("Window W", 1, top, min(2, top), key="lab_width")
        if which == "first G":
            return f"global:{side.number_input('G', 0, top, min(2, top), key='lab_global')},{width}"
        if which == "special tokens":
            return f"global:special,{width}"
        positions = side.text_input("Positions (0-based, e.g. 0+5+9)", "0+5", key="lab_positions").strip() or "0"
        return f"global:{positions if '+' in positions else positions + '+'},{width}"
    if name == "bigbird":
        width = side.number_input("Window W", 1, top, min(2, top), key="lab_width")
        n_global = side.number_input("Global (first G)", 0, top, min(2, top), key="lab_global")
        random = side.number_input("Random keys R per query", 0, top, min(3, top), key="lab_random")
        seed = side.number_input("Seed", 0, 10_000, 0, key="lab_seed")
        return f"bigbird:{width},{n_global},{random},{seed}"
    if name in ("svd", "linformer", "topk"):
        label = {"svd": "Rank R", "linformer": "Projected rows K", "topk": "Keys per query K"}[name]
        return f"{name}:{side.number_input(label, 1, top, min(4, top), key='lab_rank')}"
    if name == "performer":
        features = side.number_input("Random features M", 1, 4096, 64, key="lab_features")
        seed = side.number_input("Seed", 0, 10_000, 0, key="lab_seed")
        return f"performer:{features},{seed}"
    divisors = [g for g in range(1, n_heads + 1) if n_heads % g == 0]
    return f"kv:{side.selectbox('Key/value heads G (1 = multi-query)', divisors, key='lab_groups')}"


st.title("Lab: efficient attention on a real model")
name = model_picker(default="smollm2", key="lab_model")
text = st.sidebar.text_area("Text", DEFAULT_TEXT, key="lab_text", height=120)
pattern_name = st.sidebar.selectbox("Pattern", list(PATTERNS), index=list(PATTERNS).index("window"), key="lab_pattern",
                                    format_func=lambda p: f"{p} ({PATTERNS[p][0]})")
st.info(APPROXIMATION, icon=":material/science:")
st.caption(f"**{pattern_name}** — {PATTERNS[pattern_name][2]}")

try:
    if not name:
        st.info("Type a Hugging Face id or a local directory.")
        st.stop()
    lm = get_model(name, "auto")
    spec = lm.spec
    st.caption(f"{spec.name} · {spec.kind} · {spec.n_layers} layers x {spec.n_heads} heads ({spec.n_kv_heads} key/value heads)")
    model_header(spec)
    rec = get_record(name, "auto", (text,))
    n = len(rec.tokens[0])
    label = pattern_widgets(pattern_name, n, spec.n_heads)
    layers = st.sidebar.multiselect("Impose on layers (0-based; empty = all)", list(range(spec.n_layers)), key="lab_layers")
    layers = tuple(layers) if layers else tuple(rec.attention_layers)
    pattern = parse_pattern(label)
    check_pattern(pattern, n, spec.n_heads)
    st.markdown(f"Pattern `{pattern.label}` on {len(layers)} of {spec.n_layers} layers, {n} tokens.")
except ValueError as exc:
    show_error(exc)
    st.stop()

# -- what one head keeps ---------------------------------------------------------------------------
st.subheader("What the pattern keeps of one head")
left, right = st.columns(2)
layer = left.slider("Layer (0-based)", 0, spec.n_layers - 1, 0, key="lab_layer")
head = right.slider("Head (0-based)", 0, spec.n_heads - 1, 0, key="lab_head")
try:
    maps = lab_maps(rec, pattern, layer, head)
    cells = kept_lost_frame(maps, rec.tokens[0])
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
    table = coverage_table(name, text, pattern.label)
    chart = coverage_heatmap(table)
    st.altair_chart(chart, width="content", key="lab_coverage", theme=None)
    export_buttons(chart, table, f"lab_coverage_{spec.name}", key="export_lab_coverage")
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
try:
    effect = effect_of(name, text, pattern.label, layers)
    cols = st.columns(4)
    if effect.kl is not None:
        cols[0].metric("KL(full ‖ pattern), next token", f"{effect.kl:.4f} nats", help="mean over positions; max " f"{effect.kl_max:.3f}")
        cols[1].metric("loss on the text", f"{effect.loss_imposed:.3f}", f"{effect.loss_imposed - effect.loss_full:+.3f} vs full", delta_color="inverse")
    cols[2].metric("cosine, last hidden states", f"{effect.cosine:.4f}")
    cols[3].metric("forward time (measured)", f"{effect.seconds_imposed:.2f} s", f"full {effect.seconds_full:.2f} s", delta_color="off")
    if effect.note:
        st.caption(effect.note)
    chart = layer_error_chart(effect.layer_error)
    st.altair_chart(chart, width="content", key="lab_layer_error", theme=None)
    export_buttons(chart, effect.layer_error, f"lab_layer_error_{spec.name}", key="export_lab_layer_error")
    st.caption("The imposed forward is a dense simulation on this machine: its time is not the pattern's efficient-kernel time (see the cost formulas below).")
except ValueError as exc:
    show_error(exc)

# -- sweep -----------------------------------------------------------------------------------------
if pattern.name in SWEEP_PARAMETER:
    st.subheader(f"Sweep: error against {SWEEP_PARAMETER[pattern.name]}")
    if st.toggle("Run the sweep (one forward per value)", key="lab_sweep"):
        try:
            sweep = sweep_of(name, text, pattern.label, layers)
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
st.altair_chart(chart, width="content", key="lab_cost", theme=None)
export_buttons(chart, costs, f"lab_cost_{spec.name}_{pattern.name}", key="export_lab_cost")
st.caption(f"Formulas for {spec.name} (head size {head_dim}); multiply-add = 2 FLOPs; bidirectional counts. {costs['how'].iloc[-1]}.")
a, b = st.columns(2)
with a:
    cache = kv_cache_frame(spec.n_layers, spec.n_heads, spec.n_kv_heads, head_dim)
    chart = kv_cache_chart(cache)
    st.altair_chart(chart, width="content", key="lab_kv_cache", theme=None)
    export_buttons(chart, cache, f"lab_kv_cache_{spec.name}", key="export_lab_kv_cache")
    own = cache[cache["model"]].iloc[0]
    st.caption(f"2 (K, V) x {spec.n_layers} layers x G heads x {head_dim} x 2 bytes per token; {spec.name} ({own['kind']}): {own['bytes_per_token']:,} bytes per token.")
with b:
    sram_kb = st.number_input("On-chip SRAM per SM (KB)", 1, 1024, DEFAULT_SRAM_BYTES // 1024, key="lab_sram")
    try:
        io = flash_io_frame(head_dim, int(sram_kb) * 1024)
        chart = flash_io_chart(io, sram_kb, head_dim)
        st.altair_chart(chart, width="content", key="lab_flash_io", theme=None)
        export_buttons(chart, io, f"lab_flash_io_{spec.name}", key="export_lab_flash_io")
        st.caption(
            "FlashAttention (Dao et al. 2022, Theorem 2): standard attention writes and rereads the n x n matrix, Θ(nd + n²) "
            "HBM accesses; the tiled kernel keeps blocks in SRAM and rereads Q and O once per key block, Θ(n²d²/M). "
            f"At n = 4,096: {io[io['n'] == 4096]['ratio'].iloc[0]:.1f}x less traffic. Both compute exact attention."
        )
    except ValueError as exc:
        show_error(exc)
