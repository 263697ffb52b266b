"""Charts for the Backends page: per-layer differences between two backends, and the scaling sweep.

Build, then show: frames come from ``analysis.backends``; these functions return Altair charts.
"""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

__all__ = ["layer_diff_chart", "scaling_chart"]


def layer_diff_chart(per_layer: pd.DataFrame, *, label_a: str = "a", label_b: str = "b", width: int = 520) -> alt.Chart:
    """Max |difference| per layer, hidden states and attention maps, on a log scale.

    Args:
        per_layer: from ``BackendComparison.per_layer()`` (layer, hidden_max_abs_diff, map_max_abs_diff).
        label_a, label_b: the two backends' names, for the title.
    Returns:
        alt.Chart: one line per quantity. Exact zeros are drawn at 1e-12 (log scale), the tooltip
        shows the real value.
    """
    needed = {"layer", "hidden_max_abs_diff", "map_max_abs_diff"}
    if not needed <= set(per_layer.columns):
        msg = f"layer_diff_chart needs columns {sorted(needed)}; pass BackendComparison.per_layer()"
        raise ValueError(msg)
    long = per_layer.melt(
        id_vars="layer", value_vars=["hidden_max_abs_diff", "map_max_abs_diff"], var_name="quantity", value_name="max_abs_diff"
    ).dropna(subset=["max_abs_diff"])
    long["quantity"] = long["quantity"].map({"hidden_max_abs_diff": "hidden state", "map_max_abs_diff": "attention map (all heads)"})
    long["plotted"] = np.maximum(long["max_abs_diff"].to_numpy(dtype=float), 1e-12)
    return (
        alt.Chart(long, title=f"max |{label_a} − {label_b}| per layer")
        .mark_line(point=True)
        .encode(
            x=alt.X("layer:Q", title="layer (0 = embeddings for hidden states)", axis=alt.Axis(tickMinStep=1)),
            y=alt.Y("plotted:Q", title="max |difference|", scale=alt.Scale(type="log")),
            color=alt.Color("quantity:N", title=None, legend=alt.Legend(orient="bottom")),
            tooltip=["quantity:N", "layer:Q", alt.Tooltip("max_abs_diff:Q", format=".3e")],
        )
        .properties(width=width, height=260)
    )


def scaling_chart(frame: pd.DataFrame, *, width: int = 340) -> alt.HConcatChart:
    """Time per forward and peak memory against sequence length, one line per backend (log-log).

    On log-log axes a quadratic cost has slope 2 and a linear one slope 1, so eager's O(n²) attention
    memory and flash's O(n) memory separate visibly.

    Args:
        frame: from ``analysis.backends.scaling_frame`` (backend, tokens, ms_per_forward, peak_mb).
    Returns:
        alt.HConcatChart: time panel | memory panel.
    """
    needed = {"backend", "tokens", "ms_per_forward", "peak_mb"}
    if not needed <= set(frame.columns):
        msg = f"scaling_chart needs columns {sorted(needed)}; pass analysis.backends.scaling_frame(rows)"
        raise ValueError(msg)
    data = frame.dropna(subset=["ms_per_forward"]).copy()
    data["peak_mb_plotted"] = np.maximum(data["peak_mb"].to_numpy(dtype=float), 0.1)  # log scale: no zeros
    base = alt.Chart(data).encode(
        x=alt.X("tokens:Q", title="sequence length (tokens)", scale=alt.Scale(type="log", base=2)),
        color=alt.Color("backend:N", title="backend", legend=alt.Legend(orient="bottom")),
        tooltip=["backend:N", "tokens:Q", alt.Tooltip("ms_per_forward:Q", format=",.1f"), alt.Tooltip("peak_mb:Q", format=",.1f")],
    )
    time_panel = (
        base.mark_line(point=True)
        .encode(y=alt.Y("ms_per_forward:Q", title="ms per forward", scale=alt.Scale(type="log")))
        .properties(width=width, height=260, title="time per forward")
    )
    memory_panel = (
        base.mark_line(point=True)
        .encode(y=alt.Y("peak_mb_plotted:Q", title="peak memory above weights (MB)", scale=alt.Scale(type="log")))
        .properties(width=width, height=260, title="peak memory (eager: n², flash/SDPA: n)")
    )
    return alt.hconcat(time_panel, memory_panel)
