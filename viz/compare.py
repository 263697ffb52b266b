"""Two models side by side: per-layer profiles on a normalised depth axis.

A 6-layer and a 30-layer model line up when each layer sits at depth = layer / (n_layers - 1):
0 is the first layer, 1 the last.
"""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

from attnscope.viz.heatmap import PAD

__all__ = ["MODEL_COLORS", "PROFILE_METRICS", "depth", "end_labels", "layer_profile", "profile_chart", "shared_domain"]

MODEL_COLORS = alt.Scale(scheme="tableau10")  # distinct hues per model (a host theme may default to shades of one)

# Statistics from ``ForwardRecord.head_stats`` drawn per layer, with the axis title each gets.
PROFILE_METRICS = {
    "entropy": "entropy (nats, mean over heads)",
    "first_token_mass": "first-token mass (mean over heads)",
    "right_share": "share of attention to the right of the query",
}


def depth(layer, n_layers: int) -> np.ndarray:
    """Normalised depth in [0, 1]: layer / (n_layers - 1); a one-layer model sits at 0."""
    if n_layers < 1:
        msg = f"n_layers must be >= 1, not {n_layers}"
        raise ValueError(msg)
    return np.asarray(layer, dtype=np.float64) / max(n_layers - 1, 1)


def layer_profile(stats: pd.DataFrame, model: str, n_layers: int, metrics=("entropy", "first_token_mass")) -> pd.DataFrame:
    """Mean (and spread) over heads of per-head statistics, one row per (layer, metric).

    Args:
        stats: one row per (layer, head) with a ``layer`` column and the metric columns
            (``ForwardRecord.head_stats()``).
        model: label for the legend.
        n_layers: the model's layer count (for the depth axis).
        metrics: which columns to summarise.
    Returns:
        Long DataFrame: model, layer, depth, metric, value (mean over heads), low, high (min/max over heads).
    """
    missing = [m for m in (*metrics, "layer") if m not in stats.columns]
    if missing:
        msg = f"statistics lack column(s) {missing}; pass ForwardRecord.head_stats() or add them"
        raise ValueError(msg)
    grouped = stats.groupby("layer")
    parts = []
    for metric in metrics:
        agg = grouped[metric].agg(["mean", "min", "max"]).reset_index()
        parts.append(
            pd.DataFrame(
                {
                    "model": model,
                    "layer": agg["layer"].astype(int),
                    "depth": depth(agg["layer"], n_layers),
                    "metric": metric,
                    "value": agg["mean"].astype(float),
                    "low": agg["min"].astype(float),
                    "high": agg["max"].astype(float),
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


def profile_chart(
    profile: pd.DataFrame, metric: str, *, width: int = 380, height: int = 220, band: bool = True, standalone: bool = True
) -> alt.LayerChart | alt.FacetChart:
    """One metric by normalised depth, a line per model, with the min-max over heads as a band.

    Args:
        profile: from ``layer_profile`` (one or more models concatenated).
        metric: a value of ``profile["metric"]``.
        band: draw the spread over heads.
        standalone: False to use inside hconcat/vconcat (see ``viz.heatmap.heatmap``).
    Returns:
        alt.LayerChart.
    """
    part = profile[profile["metric"] == metric]
    if part.empty:
        msg = f"no rows for metric {metric!r}; choose one of {sorted(profile['metric'].unique())}"
        raise ValueError(msg)
    title = PROFILE_METRICS.get(metric, metric)
    base = alt.Chart(part).encode(
        x=alt.X("depth:Q", title="depth (0 = first layer, 1 = last)", scale=alt.Scale(domain=[0, 1])),
    )
    tips = [alt.Tooltip("model:N"), alt.Tooltip("layer:O", title="layer (0-based)"), alt.Tooltip("value:Q", format=".3f", title=metric)]
    layers = []
    if band and {"low", "high"} <= set(part.columns):
        layers.append(base.mark_area(opacity=0.15).encode(y="low:Q", y2="high:Q", color=alt.Color("model:N", scale=MODEL_COLORS)))
    color = alt.Color("model:N", title="model", scale=MODEL_COLORS, legend=alt.Legend(orient="bottom"))
    layers.append(base.mark_line(point=True).encode(y=alt.Y("value:Q", title=title), color=color, tooltip=tips))
    layers.append(end_labels(part, "value"))
    chart = alt.layer(*layers).properties(width=width, height=height, title=title)
    return chart.properties(autosize=PAD) if standalone else chart


def end_labels(frame: pd.DataFrame, value: str) -> alt.Chart:
    """The model's name at the last point of its line (direct labels read faster than a legend)."""
    last = frame.sort_values("depth").groupby("model", sort=False).tail(1)
    return (
        alt.Chart(last)
        .mark_text(align="left", dx=6, fontSize=11, fontWeight="bold")
        .encode(x="depth:Q", y=f"{value}:Q", text="model:N", color=alt.Color("model:N", scale=MODEL_COLORS, legend=None))
    )


def shared_domain(*maps: np.ndarray) -> tuple[float, float]:
    """One colour range for maps shown side by side: (0, largest weight of any)."""
    top = max((float(np.nanmax(m)) for m in maps if np.size(m)), default=1.0)
    return (0.0, top if top > 0 else 1.0)
