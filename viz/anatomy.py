"""Charts of the Anatomy page: parameters by component, heads vs parameters and KV cache, the residual stream's
norm by layer (two models side by side), attention by relative distance, the parts of an encoder's layer-0
input, and the measured attention cost with its n² fit.

Build, then show: every builder takes a long-form DataFrame and returns an Altair chart.
"""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

from attnscope.viz.heatmap import PAD

__all__ = [
    "attention_cost_chart",
    "cost_fit_frame",
    "distance_chart",
    "embedding_parts_chart",
    "heads_chart",
    "parameter_frame",
    "parameters_chart",
    "polynomial",
    "residual_norm_chart",
]

_LABELS = {
    "token_embeddings": "token embeddings",
    "position_embeddings": "position embeddings",
    "token_type_embeddings": "token-type embeddings",
    "attention_q": "attention Q",
    "attention_k": "attention K",
    "attention_v": "attention V",
    "attention_o": "attention O",
    "attention_other": "attention (other)",
    "mlp": "MLP",
    "norms": "norms",
    "lm_head": "LM head (untied)",
    "other": "other (pooler, heads)",
}


def parameter_frame(parameters: dict[str, int]) -> pd.DataFrame:
    """{component: count, "total": ...} (``models.anatomy.Anatomy.parameters``) as rows: component, label, count,
    share (of the total); components with no parameters left out."""
    total = parameters.get("total") or sum(v for k, v in parameters.items() if k != "total")
    rows = [
        {"component": k, "label": _LABELS.get(k, k), "count": int(v), "share": v / total if total else 0.0}
        for k, v in parameters.items()
        if k != "total" and v
    ]
    return pd.DataFrame(rows, columns=["component", "label", "count", "share"])


def parameters_chart(frame: pd.DataFrame, *, title: str = "parameters by component") -> alt.Chart:
    """Horizontal bars: parameters per component (``parameter_frame``), in the frame's order."""
    return (
        alt.Chart(frame)
        .mark_bar()
        .encode(
            y=alt.Y("label:N", title=None, sort=list(frame["label"])),
            x=alt.X("count:Q", title="parameters"),
            color=alt.Color("label:N", legend=None, sort=list(frame["label"])),
            tooltip=["label:N", alt.Tooltip("count:Q", format=","), alt.Tooltip("share:Q", format=".1%")],
        )
        .properties(width=420, height=alt.Step(18), title=title, autosize=PAD)
    )


def heads_chart(frame: pd.DataFrame) -> alt.HConcatChart:
    """Attention parameters (stacked Q, K, V, O) and KV-cache bytes per token for one head, H heads, GQA and MQA
    (``analysis.anatomy.heads_frame``); the model's own grouping in orange."""
    order = list(frame["variant"])
    long = frame.melt(id_vars=["variant", "model"], value_vars=["q", "k", "v", "o"], var_name="projection", value_name="parameters")
    params = (
        alt.Chart(long)
        .mark_bar()
        .encode(
            x=alt.X("variant:N", title=None, sort=order),
            y=alt.Y("sum(parameters):Q", title="attention parameters per block"),
            color=alt.Color("projection:N", title="projection", sort=["q", "k", "v", "o"]),
            tooltip=["variant:N", "projection:N", alt.Tooltip("parameters:Q", format=",")],
        )
        .properties(width=300, height=220, title="same width, any number of heads: only K and V shrink")
    )
    cache = (
        alt.Chart(frame)
        .mark_bar()
        .encode(
            x=alt.X("variant:N", title=None, sort=order),
            y=alt.Y("kv_cache_bytes_per_token:Q", title="KV cache per token (bytes)"),
            color=alt.condition("datum.model", alt.value("#f58518"), alt.value("#4c78a8")),
            tooltip=["variant:N", "kv_heads:Q", "head_dim:Q", alt.Tooltip("kv_cache_bytes_per_token:Q", format=",")],
        )
        .properties(width=300, height=220, title="KV cache per token (orange: this model)")
    )
    return alt.hconcat(params, cache).properties(autosize=PAD, title="heads and parameters: MHA, GQA, MQA")


def residual_norm_chart(frame: pd.DataFrame) -> alt.Chart:
    """Mean residual-stream norm by layer, one panel per model side by side (columns: model, placement, layer,
    mean_norm, max_norm). A log scale, since a Pre-LN stream grows by orders of magnitude."""
    return (
        alt.Chart(frame)
        .mark_line(point=True)
        .encode(
            x=alt.X("layer:Q", title="hidden state after block (0 = embeddings)"),
            y=alt.Y("mean_norm:Q", title="mean ‖h‖ over tokens", scale=alt.Scale(type="log")),
            color=alt.Color("placement:N", title="norm placement", scale=alt.Scale(domain=["pre", "post"], range=["#e45756", "#4c78a8"])),
            tooltip=[
                "model:N",
                "placement:N",
                "layer:Q",
                alt.Tooltip("mean_norm:Q", format=",.2f"),
                alt.Tooltip("max_norm:Q", format=",.2f"),
            ],
        )
        .properties(width=280, height=220)
        .facet(column=alt.Column("model:N", title=None))
        .resolve_scale(x="independent", y="independent")
        .properties(title="residual-stream norm by layer: Pre-LN grows with depth, Post-LN does not")
    )


def distance_chart(frame: pd.DataFrame, *, layer: int) -> alt.Chart:
    """One layer's heads × relative distance heatmap of mean attention (``models.anatomy.distance_frame``);
    offset > 0: the key is to the left of the query."""
    part = frame[frame["layer"] == layer] if "layer" in frame else frame
    return (
        alt.Chart(part)
        .mark_rect()
        .encode(
            x=alt.X("offset:O", title="query − key position (> 0: key to the left)"),
            y=alt.Y("head:O", title="head (0-based)"),
            color=alt.Color("weight:Q", title="mean weight", scale=alt.Scale(scheme="viridis")),
            tooltip=["head:O", "offset:O", alt.Tooltip("weight:Q", format=".4f"), "queries:Q"],
        )
        .properties(width=alt.Step(12), height=alt.Step(14), title=f"layer {layer}: mean attention by relative distance", autosize=PAD)
    )


def embedding_parts_chart(frame: pd.DataFrame) -> alt.Chart:
    """Norm of each part of the layer-0 input per token (``models.anatomy.embedding_parts``), grouped bars."""
    order = ["token", "position", "segment", "sum"]
    return (
        alt.Chart(frame)
        .mark_line(point=True)
        .encode(
            x=alt.X("position:O", title="token position", axis=alt.Axis(labelAngle=0)),
            y=alt.Y("norm:Q", title="‖part‖"),
            color=alt.Color("part:N", title="part", sort=order),
            tooltip=["position:O", "token:N", "part:N", alt.Tooltip("norm:Q", format=".3f")],
        )
        .properties(width=520, height=220, title="layer-0 input: token, position and segment embeddings (before the norm)", autosize=PAD)
    )


def polynomial(fit: dict[str, float]) -> str:
    """The fit a·n² + b·n + c as text, zero terms left out and signs written once ("3e-09·n² + 0.0001")."""
    terms = [(fit["a"], "·n²"), (fit["b"], "·n"), (fit["c"], "")]
    out = ""
    for value, unit in terms:
        if value == 0:
            continue
        text = f"{abs(value):.3g}{unit}"
        out += (" − " if value < 0 else " + ") + text if out else ("−" if value < 0 else "") + text
    return out or "0"


def cost_fit_frame(measured: pd.DataFrame, fits: dict[str, dict[str, float]], points: int = 48) -> pd.DataFrame:
    """The fitted curves a·n² + b·n + c of ``models.anatomy.attention_cost`` at ``points`` lengths per kernel."""
    if measured.empty:
        return pd.DataFrame(columns=["n", "kernel", "fitted_seconds"])
    grid = np.geomspace(measured["n"].min(), measured["n"].max(), points)
    rows = []
    for kernel, fit in fits.items():
        rows += [{"n": float(n), "kernel": kernel, "fitted_seconds": fit["a"] * n * n + fit["b"] * n + fit["c"]} for n in grid]
    frame = pd.DataFrame(rows, columns=["n", "kernel", "fitted_seconds"])
    return frame[frame["fitted_seconds"] > 0]  # the time axis is logarithmic


def attention_cost_chart(measured: pd.DataFrame, fitted: pd.DataFrame) -> alt.HConcatChart:
    """Measured time (points) with the n² fit (lines), and measured memory, of one layer's attention against n."""
    x = alt.X("n:Q", title="tokens n", scale=alt.Scale(type="log", base=2))
    color = alt.Color("kernel:N", title="kernel")
    points = (
        alt.Chart(measured)
        .mark_point(filled=True, size=60)
        .encode(
            x=x,
            y=alt.Y("seconds:Q", title="seconds (best of repeats)", scale=alt.Scale(type="log")),
            color=color,
            tooltip=["kernel:N", "n:Q", alt.Tooltip("seconds:Q", format=".5f")],
        )
    )
    curve = alt.Chart(fitted).mark_line(strokeDash=[4, 3]).encode(x=x, y="fitted_seconds:Q", color=color)
    memory = (
        alt.Chart(measured.dropna(subset=["memory_mb"]))
        .mark_line(point=True)
        .encode(
            x=x,
            y=alt.Y("memory_mb:Q", title="memory (MB)", scale=alt.Scale(type="log")),
            color=color,
            tooltip=["kernel:N", "n:Q", alt.Tooltip("memory_mb:Q", format=",.2f"), "memory_how:N"],
        )
        .properties(width=300, height=240, title="memory")
    )
    time = alt.layer(points, curve).properties(width=300, height=240, title="time, with the fit a·n² + b·n + c (dashed)")
    return alt.hconcat(time, memory).properties(autosize=PAD, title="one layer's attention measured on this machine")
