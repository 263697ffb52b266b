"""Backends page: the same text through two attention kernels: what changes (time, memory) and what does not (the result)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from attnscope.analysis.backends import compare_records
from attnscope.analysis.bench_results import ratio_frame, scaling_frame
from attnscope.models import run
from attnscope.models.budget import format_bytes
from attnscope.models.flash import flash_kernel_name, flash_unavailable_reason
from attnscope.models.profile import measure_forward
from attnscope.ui.common import bind, budgeted, export_buttons, get_model, get_record, prelude, show_error, store
from attnscope.viz.backends import layer_diff_chart, scaling_chart
from attnscope.viz.heatmap import attention_frame, heatmap

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(os.environ.get("ATTNSCOPE_BENCH_RESULTS") or ROOT / "bench" / "results")  # bench/backends.py writes here


@budgeted("backend comparisons", "Comparing the two runs…", copy_out=True)
def comparison(name: str, backend_a: str, backend_b: str, text: str):
    """(per-layer frame, per-(layer, head) frame, logits dict or None) for two backends' runs of one text."""
    result = compare_records(
        get_record(name, backend_a, (text,)),
        get_record(name, backend_b, (text,)),
        models=(get_model(name, backend_a), get_model(name, backend_b)),
    )
    return result.per_layer(), result.maps, result.logits


@budgeted("timings", "Timing forward passes…", copy_out=True)
def forward_cost(name: str, backend: str, text: str) -> dict:
    """Median time of a recorded forward (``run``) and its peak memory, measured in this process."""
    lm = get_model(name, backend)
    device = "cuda" if lm.spec.device.startswith("cuda") else "cpu"
    cost = measure_forward(lambda: run(lm, text), device=device, repeats=3)
    return {
        "backend": backend,
        "dtype": lm.spec.dtype,
        "ms per forward": round(cost.seconds * 1000, 1),
        "peak MB": None if cost.peak_bytes is None else round(cost.peak_bytes / 2**20, 1),
        "memory measured as": cost.memory,
    }


def _bench_results() -> dict[str, dict]:
    """Saved bench/backends.py results by device, newest first in the dict."""
    found = {}
    for path in sorted(RESULTS.glob("backends-*.json")):
        try:
            found[path.stem.removeprefix("backends-")] = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
    return found


def show_held() -> None:
    """What every session together keeps of computed results, against the one byte budget."""
    st.subheader("Memory held by this server")
    held = store().held()
    st.metric("held (all sessions)", f"{format_bytes(held.total)} of {format_bytes(held.max_bytes)}", help="ATTNSCOPE_CACHE_GB")
    shared = f"; {held.shared:,} bytes are shared between entries (a padding study and its records) and held once" if held.shared else ""
    st.caption(
        f"Computed results kept so that moving a slider never re-runs the model: {held.total:,} bytes held of a "
        f"{held.max_bytes:,}-byte budget (ATTNSCOPE_CACHE_GB); the least recently used go first{shared}. "
        "Loaded models are counted apart (their parameters), outside the budget."
    )
    st.dataframe(held.frame(), hide_index=True, key="backends_held")


def stop() -> None:
    show_held()
    st.stop()


st.title("Backends")
st.caption(
    "The same text through two attention kernels. attnscope records each layer's query and key, so the "
    "attention maps are recomputed exactly whichever kernel ran the forward: eager, SDPA or FlashAttention."
)

reason = flash_unavailable_reason()
available = ["eager", "sdpa"] if reason else ["eager", "sdpa", "flash"]
ws, _ = prelude()  # the workspace's model and text; this page picks its two backends itself
name, text = ws.model, ws.text
choice = st.columns(2)
with choice[0]:
    backend_a = st.selectbox("Backend A", available, index=0, key="backends_a")
with choice[1]:
    backend_b = st.selectbox("Backend B", available, index=len(available) - 1, key="backends_b")
if reason:  # a selectbox cannot grey out one option: show flash as a disabled box, with the reason
    flash_col, note_col = st.columns([1, 5])
    flash_col.checkbox("flash", value=False, disabled=True, key="backends_flash_off", help=reason)
    note_col.caption(f"FlashAttention unavailable: {reason}.")
else:
    st.caption(f"FlashAttention available: {flash_kernel_name()}, bfloat16.")

if not name or not text.strip():
    st.info("Pick a model and type a text.")
    stop()
if backend_a == backend_b:
    st.info("Pick two different backends to compare.")
    stop()

try:
    rec_a = get_record(name, backend_a, (text,))
    rec_b = get_record(name, backend_b, (text,))
    per_layer, maps, logits = comparison(name, backend_a, backend_b, text)
except ValueError as exc:
    show_error(exc)
    stop()

spec = rec_a.spec
st.subheader("Same result")
if rec_a.spec.dtype != rec_b.spec.dtype:
    st.caption(f"{backend_a} runs in {rec_a.spec.dtype}, {backend_b} in {rec_b.spec.dtype}: the differences include the change of dtype.")
metrics = st.columns(4)
metrics[0].metric("max |Δ hidden state|", f"{per_layer['hidden_max_abs_diff'].max():.2e}", help="over all layers and real tokens")
metrics[1].metric("max |Δ attention|", f"{maps['max_abs_diff'].max():.2e}", help=f"over all {spec.n_layers * spec.n_heads} heads")
if logits is not None:
    metrics[2].metric("max |Δ logit|", f"{logits['max_abs_diff']:.2e}", help=f"largest |logit| {logits['max_abs']:.1f}")
    metrics[3].metric("same top-1 next token", f"{100 * logits['top1_agreement']:.0f}%")
else:
    metrics[2].metric("max |Δ logit|", "—", help=f"{spec.name} is an encoder: no language-model head")
chart = layer_diff_chart(per_layer, label_a=backend_a, label_b=backend_b)
st.altair_chart(chart, width="content", theme=None)
with st.expander("Per-layer numbers"):
    st.dataframe(per_layer, hide_index=True, key="backends_per_layer")
export_buttons(chart, per_layer, f"backends-{backend_a}-{backend_b}", key="backends_diff_export")

st.subheader("Attention maps stay available")
st.caption(
    f"Both maps below are recomputed from the query and key each backend recorded. "
    f"With {backend_b} the kernel never formed this matrix; attnscope still shows it."
)
pick = st.columns(3)
layer = pick[0].number_input("Layer (0-based)", 0, spec.n_layers - 1, key="backends_layer", **bind("backends_layer", "layer", ws.layer))
head = pick[1].number_input("Head (0-based)", 0, spec.n_heads - 1, key="backends_head", **bind("backends_head", "head", ws.head))
map_a = rec_a.attention(int(layer), int(head))
map_b = rec_b.attention(int(layer), int(head))
head_diff = float(np.abs(map_a.astype(np.float64) - map_b.astype(np.float64)).max())
pick[2].metric(f"max |Δ| layer {int(layer)} head {int(head)}", f"{head_diff:.2e}")
tokens = rec_a.tokens[0]
domain = (0.0, float(max(map_a.max(), map_b.max())))
panels = st.columns(2)
for side, (col, backend, weights, legend) in enumerate(((panels[0], backend_a, map_a, False), (panels[1], backend_b, map_b, True))):
    frame = attention_frame(weights, tokens, layer=int(layer), head=int(head))
    title = f"{backend}: layer {int(layer)}, head {int(head)}"
    side_chart = heatmap(frame, title=title, domain=domain, size=360, legend=legend)
    col.altair_chart(side_chart, width="content", theme=None)
    with col:
        export_buttons(side_chart, frame, f"backends-{backend}-L{int(layer)}-H{int(head)}", key=f"backends_map_{side}_export")

st.subheader("Time and memory")
st.caption(
    "Time per recorded forward (median of 3) and its peak memory, measured here: CUDA max_memory_allocated on a GPU, peak RSS on the CPU."
)
if st.button("Measure both backends", key="backends_measure"):
    try:
        costs = pd.DataFrame([forward_cost(name, backend_a, text), forward_cost(name, backend_b, text)])
        st.dataframe(costs, hide_index=True, key="backends_costs")
    except ValueError as exc:
        show_error(exc)

st.subheader("Scaling with sequence length")
results = _bench_results()
if results:
    which = st.radio("Benchmark", list(results), horizontal=True, key="backends_bench") if len(results) > 1 else next(iter(results))
    bench = results[which]
    st.caption(
        f"bench/backends.py, {bench.get('model', 'SmolLM2')}, {bench.get('date', '?')}: {bench.get('machine', '')}"
        + (f" ({bench['threads']} torch thread(s) per measurement). " if bench.get("threads") else ". ")
        + "Log-log axes: eager's output_attentions memory grows with n² (slope 2), SDPA/flash with n (slope 1)."
    )
    if bench.get("note"):
        st.caption(f"Note: {bench['note']}.")
    frame = scaling_frame(bench["rows"])
    spread = frame["spread_pct"].dropna()
    if len(spread) and bench.get("trials", 1) > 1:
        st.caption(
            f"Each time is the best of {bench['trials']} fresh processes; trials of one cell differed by "
            f"{spread.median():.0f}% (median) and at most {spread.max():.0f}% (max − min over min)."
        )
    else:
        st.caption("Each time comes from one process: on a shared machine expect tens of percent of noise.")
    scaling = scaling_chart(frame)
    st.altair_chart(scaling, width="content", theme=None)
    fast = "flash" if "flash" in set(frame["backend"]) else "sdpa"
    try:
        ratios = ratio_frame(frame.dropna(subset=["ms_per_forward"]), "eager", fast)
        st.caption(f"eager ÷ {fast}: speedup in time, and how many times less peak memory {fast} needs.")
        st.dataframe(ratios, hide_index=True, key="backends_ratios")
    except ValueError as exc:
        st.caption(str(exc))
    with st.expander("All measurements"):
        st.dataframe(frame, hide_index=True)
    export_buttons(scaling, frame, f"backends-scaling-{which.split()[0]}", key="backends_scaling_export")
else:
    st.info("No saved benchmark yet: run `python -m bench.backends` (add `--device cuda` on a GPU).")
# Sweeps run from the command line only: a page button would let any visitor of a shared server start
# minutes of CPU work (eager output_attentions included) outside the memory guard.
st.caption(
    "New measurements: `python -m bench.backends --device cpu` (or `cuda`) writes `bench/results/backends-<device>.json`, shown here."
)

show_held()
