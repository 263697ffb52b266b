"""Anatomy page: what the loaded model is made of, read from the model itself — parameters, heads and KV cache,
norm placement and the residual stream, positions, the layer-0 input, and attention's measured cost."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from attnscope.models.anatomy import (
    COST_LENGTHS,
    anatomy,
    attention_cost,
    distance_frame,
    embedding_parts,
    heads_table,
    residual_norms,
)
from attnscope.ui.common import DEFAULT_TARGET, bind, budgeted, export_buttons, get_model, get_record, model_picker, prelude, show_error
from attnscope.viz.anatomy import (
    attention_cost_chart,
    cost_fit_frame,
    distance_chart,
    embedding_parts_chart,
    heads_chart,
    parameter_frame,
    parameters_chart,
    polynomial,
    residual_norm_chart,
)


def record_of(name: str, text: str, target: str):
    lm = get_model(name, "auto")
    return get_record(name, "auto", (text,), target=(target,) if lm.spec.kind == "encoder-decoder" else None)


@budgeted("anatomy", "Reading the model…")
def facts_of(name: str, text: str, target: str):
    return anatomy(get_model(name, "auto"), record_of(name, text, target))


@budgeted("anatomy", "Measuring the residual stream…", copy_out=True)
def stream_of(name: str, text: str, target: str) -> pd.DataFrame:
    facts = facts_of(name, text, target)
    frame = residual_norms(record_of(name, text, target))
    frame.insert(0, "placement", facts.norm_placement)
    frame.insert(0, "model", name)
    return frame


@budgeted("anatomy", "Measuring attention by distance…", copy_out=True)
def distances_of(name: str, text: str, target: str, layer: int) -> pd.DataFrame:
    return distance_frame(record_of(name, text, target), layers=[layer])


@budgeted("anatomy", "Timing one layer's attention at each n (up to a minute on a CPU)…")
def cost_of(name: str, lengths: tuple[int, ...]):
    lm = get_model(name, "auto")
    spec = lm.spec
    dtype = next(lm.model.parameters()).dtype
    head_dim = spec.head_dim or spec.d_model // spec.n_heads
    return attention_cost(
        spec.n_heads, spec.n_kv_heads, head_dim, lengths=lengths, dtype=dtype, device=spec.device, causal=spec.kind != "encoder"
    )


st.title("Anatomy: what the model is made of")
ws, lm = prelude()
name, text = ws.model, ws.text
other = model_picker(
    "Compare the residual stream with", key="anatomy_other", default="minilm" if name != "minilm" else "smollm2", follows=name
)
target = st.sidebar.text_input("Target text (encoder-decoder models)", DEFAULT_TARGET, key="anatomy_target")
st.caption(
    "Every fact here is read from the loaded model itself — its modules, parameters and config, and one forward on "
    "the text — never from a table of known models."
)

try:
    spec = lm.spec
    st.caption(f"{spec.model_type} · d = {spec.d_model}")
    facts = facts_of(name, text, target)
except ValueError as exc:
    show_error(exc)
    st.stop()

cols = st.columns(5)
cols[0].metric("parameters", f"{facts.parameters['total']:,}")
cols[1].metric("norm placement", f"{facts.norm_placement}-LN".replace("pre-LN", "Pre-LN").replace("post-LN", "Post-LN"))
cols[2].metric("positions", facts.positional)
cols[3].metric("heads / KV heads / head size", f"{facts.n_heads} / {facts.n_kv_heads} / {facts.head_dim}")
cols[4].metric(
    "KV cache per token", f"{facts.kv_cache_bytes_per_token:,} B", help=f"{facts.dtype}: {facts.bytes_per_element} bytes per element"
)

# -- parameters ------------------------------------------------------------------------------------
st.subheader("Parameters by component")
parts = parameter_frame(facts.parameters)
chart = parameters_chart(parts, title=f"{spec.name}: {facts.parameters['total']:,} parameters")
st.altair_chart(chart, width="content", key="anatomy_parameters", theme=None)
export_buttons(chart, parts, f"anatomy_parameters_{spec.name}", key="export_anatomy_parameters")
tied = {True: "tied to the token embeddings (counted once, with them)", False: "its own matrix", None: "none loaded (encoder)"}
st.caption(
    f"Total = sum(p.numel()) over the model's parameters = {facts.numel:,} (a shared tensor counted once). "
    f"LM head: {tied[facts.lm_head_tied]}. Attention Q, K, V, O are split by their modules' names (a fused QKV by the "
    f"head counts); everything else inside a block that is not a norm is the MLP."
)

# -- heads -----------------------------------------------------------------------------------------
st.subheader("Heads and parameters: MHA, GQA, MQA")
heads = heads_table(facts)
chart = heads_chart(heads)
st.altair_chart(chart, width="content", key="anatomy_heads", theme=None)
export_buttons(chart, heads, f"anatomy_heads_{spec.name}", key="export_anatomy_heads")
st.dataframe(heads, hide_index=True, key="anatomy_heads_table")
st.caption(
    f"At the same width d = {facts.d_model}, one head of size {facts.n_heads * facts.head_dim} and {facts.n_heads} heads of "
    f"size {facts.head_dim} have the same parameters; grouped-query and multi-query attention shrink K and V (and the KV "
    f"cache, 2 × {facts.attention_blocks if spec.kind != 'encoder-decoder' else 'decoder'} layers × KV heads × "
    f"{facts.head_dim} × {facts.bytes_per_element} bytes per token) by H / KV."
)

# -- norm placement --------------------------------------------------------------------------------
st.subheader("Norm placement and the residual stream")
st.markdown(f"**{facts.norm_placement}-LN**: {facts.norm_evidence}.")
try:
    frames = [stream_of(name, text, target)]
    if other and other != name:
        frames.append(stream_of(other, text, target))
    stream = pd.concat(frames, ignore_index=True)
    chart = residual_norm_chart(stream)
    st.altair_chart(chart, width="content", key="anatomy_stream", theme=None)
    export_buttons(chart, stream, "anatomy_residual_stream", key="export_anatomy_stream")
    st.caption(
        "Mean L2 norm of the hidden state after each block on this text. A Pre-LN block adds its sublayers' outputs to "
        "an unnormalised stream, which grows with depth; a Post-LN block normalises after every addition. The last point "
        "is the model's final hidden state (after its final norm in most Pre-LN models)."
    )
except ValueError as exc:
    show_error(exc)

# -- positions -------------------------------------------------------------------------------------
st.subheader("Positional scheme")
st.markdown(f"**{facts.positional}**: {facts.positional_evidence}.")
rec = record_of(name, text, target)
layer = st.slider("Layer (0-based)", 0, spec.n_layers - 1, key="anatomy_layer", **bind("anatomy_layer", "layer", ws.layer))
try:
    distances = distances_of(name, text, target, layer)
    chart = distance_chart(distances, layer=layer)
    st.altair_chart(chart, width="content", key="anatomy_distance", theme=None)
    export_buttons(chart, distances, f"anatomy_distance_{spec.name}_L{layer}", key="export_anatomy_distance")
    st.caption("Each head's attention weight averaged over the queries that have a key at that distance, on this text.")
except ValueError as exc:
    show_error(exc)

found = embedding_parts(lm, rec)
if found is not None:
    st.subheader("The layer-0 input: token, position and segment")
    parts_frame, check = found
    chart = embedding_parts_chart(parts_frame)
    st.altair_chart(chart, width="content", key="anatomy_embedding_parts", theme=None)
    export_buttons(chart, parts_frame, f"anatomy_embedding_parts_{spec.name}", key="export_anatomy_embedding_parts")
    st.caption(
        "Read from the model's own token, position and token-type tables at this text's ids, positions and segments; "
        f"their sum through the embeddings' norm is the recorded layer-0 state (max difference {check:.1e} of its scale)."
    )

# -- cost ------------------------------------------------------------------------------------------
st.subheader("Attention cost, measured on this machine")
largest = st.select_slider("Largest n", options=[n for n in COST_LENGTHS if n >= 512], value=COST_LENGTHS[-1], key="anatomy_largest")
lengths = tuple(n for n in COST_LENGTHS if n <= largest)
st.caption(
    f"One layer's attention with this model's shape ({spec.n_heads} heads, {spec.n_kv_heads} KV heads, head size "
    f"{facts.head_dim}, {facts.dtype}) on random inputs at n = {', '.join(f'{n:,}' for n in lengths)}: eager "
    "(the n × n weights materialised) and SDPA (fused)."
)
if st.button("Measure attention cost", key="anatomy_measure"):
    st.session_state[f"anatomy_cost_{name}"] = True
if st.session_state.get(f"anatomy_cost_{name}"):
    try:
        measured, fits = cost_of(name, lengths)
        fitted = cost_fit_frame(measured, fits)
        chart = attention_cost_chart(measured, fitted)
        st.altair_chart(chart, width="content", key="anatomy_cost", theme=None)
        export_buttons(chart, measured, f"anatomy_cost_{spec.name}", key="export_anatomy_cost")
        lines = [
            f"{kernel}: time ≈ {polynomial(fit)} s (R² {fit['r2']:.3f}; log-log slope {fit['slope']:.2f} over the largest n, 2 = quadratic)"
            for kernel, fit in fits.items()
        ]
        st.caption(" · ".join(lines) + f". Memory: {measured['memory_how'].iloc[0]}.")
    except ValueError as exc:
        show_error(exc)
