"""Charts of what padding changes (frames from ``analysis.padding``)."""

from __future__ import annotations

import json

import altair as alt
import numpy as np
import pandas as pd

from attnscope.viz.heatmap import attention_frame as heatmap_frame
from attnscope.viz.heatmap import heatmap

__all__ = ["PAD_COLOR", "depth_chart", "pad_heatmap", "pad_heatmap_frame", "positions_chart", "setting_label"]

PAD_COLOR = "#d62728"
FLOOR = 1e-12  # log axes cannot show 0; exact zeros are drawn at this floor (tooltips keep the value)


def setting_label(padding_side: str, attention_mask: bool) -> str:
    return f"{padding_side}, {'mask' if attention_mask else 'no mask'}"


def _with_setting(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(setting=[setting_label(s, bool(m)) for s, m in zip(frame["padding_side"], frame["attention_mask"])])


def depth_chart(frame: pd.DataFrame, *, tolerance: float) -> alt.VConcatChart:
    """Per block and setting: relative and absolute hidden difference (log) and pad attention mass.

    Args:
        frame: ``PaddingStudy.frame()`` (LAYER_COLUMNS).
        tolerance: drawn as a rule on the relative-difference panel.
    Returns:
        alt.VConcatChart with three panels sharing the layer axis.
    """
    data = _with_setting(frame)
    order = [setting_label(s, m) for s in ("right", "left") for m in (True, False)]
    color = alt.Color("setting:N", title="padding", sort=order, scale=alt.Scale(scheme="tableau10"))
    dash = alt.condition("datum.attention_mask", alt.value([1, 0]), alt.value([6, 3]))
    x = alt.X("layer:Q", title="block (0-based); difference of its output", axis=alt.Axis(tickMinStep=1))
    tooltip: list[str | alt.Tooltip] = [
        "setting:N",
        "layer:Q",
        alt.Tooltip("max_relative_diff:Q", format=".3e"),
        alt.Tooltip("max_hidden_diff:Q", format=".3e"),
        alt.Tooltip("pad_attention_mass:Q", format=".4f"),
        alt.Tooltip("pad_attention_max:Q", format=".4f"),
    ]
    base = alt.Chart(data).encode(x=x, color=color, strokeDash=dash, tooltip=tooltip)

    def log_panel(column: str, title: str, y_title: str):
        return (
            base.transform_calculate(shown=f"max(datum.{column}, {FLOOR})")
            .mark_line(point=True)
            .encode(
                y=alt.Y("shown:Q", title=y_title, scale=alt.Scale(type="log")),
            )
            .properties(width=560, height=200, title=title)
        )

    relative = log_panel("max_relative_diff", "Real tokens vs each text run alone: relative difference", "max ‖Δh‖ / ‖h‖")
    rule = alt.Chart(pd.DataFrame({"tolerance": [tolerance]})).mark_rule(color="black", strokeDash=[2, 2]).encode(y="tolerance:Q")
    label = (
        alt.Chart(pd.DataFrame({"tolerance": [tolerance], "text": [f"tolerance {tolerance:g}"]}))
        .mark_text(align="left", dy=-6, x=4, fontSize=10)
        .encode(y="tolerance:Q", text="text:N")
    )
    absolute = log_panel("max_hidden_diff", "Absolute difference", "max |Δh|")
    mass = (
        base.mark_line(point=True)
        .encode(
            y=alt.Y("pad_attention_mass:Q", title="mean attention on pads", scale=alt.Scale(domain=[0, 1])),
        )
        .properties(width=560, height=160, title="Attention mass real tokens put on pad tokens")
    )
    return alt.vconcat(relative + rule + label, absolute, mass)


def pad_heatmap_frame(
    weights: np.ndarray, tokens: list[str], is_pad: np.ndarray, allowed: np.ndarray | None, *, layer: int, head: int
) -> pd.DataFrame:
    """A padded map as a heatmap frame, pad tokens labelled "[pad]" and flagged.

    Args:
        weights: float [n, n] one head's map over all padded slots.
        tokens: n padded tokens; is_pad: bool [n].
        allowed: bool [n, n] the mask the model applied (None = all allowed).
        layer, head: 0-based.
    Returns:
        ``viz.heatmap.attention_frame`` columns plus query_is_pad, key_is_pad.
    """
    pad = np.asarray(is_pad, dtype=bool)
    labels = [f"{i}:{t}" + (" [pad]" if pad[i] else "") for i, t in enumerate(tokens)]
    frame = heatmap_frame(weights, labels, layer=layer, head=head, allowed=allowed, max_cells=len(tokens) ** 2)
    frame["query_is_pad"] = pad[frame["query_pos"].to_numpy()]
    frame["key_is_pad"] = pad[frame["key_pos"].to_numpy()]
    return frame


def pad_heatmap(frame: pd.DataFrame, *, title: str | None = None) -> alt.LayerChart | alt.FacetChart:
    """The padded map with pad rows and columns outlined in red and pad labels in red.

    Args:
        frame: from ``pad_heatmap_frame``.
    """
    chart = heatmap(frame, title=title, domain=(0.0, 1.0))
    pads = frame[frame["query_is_pad"] | frame["key_is_pad"]]
    if pads.empty:
        return chart
    pad_positions = sorted(set(pads.loc[pads["query_is_pad"], "query_pos"]) | set(pads.loc[pads["key_is_pad"], "key_pos"]))
    is_pad_label = f"indexof({json.dumps([int(p) for p in pad_positions])}, toNumber(datum.value)) >= 0"
    outline = (
        alt.Chart(pads)
        .mark_rect(filled=False, stroke=PAD_COLOR, strokeWidth=1)
        .encode(
            x=alt.X("key_pos:O", axis=alt.Axis(labelColor=alt.ExprRef(f"{is_pad_label} ? '{PAD_COLOR}' : 'black'"))),
            y=alt.Y("query_pos:O", axis=alt.Axis(labelColor=alt.ExprRef(f"{is_pad_label} ? '{PAD_COLOR}' : 'black'"))),
            tooltip=[
                alt.Tooltip("query_token:N", title="query"),
                alt.Tooltip("key_token:N", title="key"),
                alt.Tooltip("weight:Q", format=".4f"),
            ],
        )
    )
    # Append to the heatmap's own layer list: its cells read the data lifted to the top-level chart.
    assert isinstance(chart, alt.LayerChart)  # the heatmap has no facet encodings to hoist
    chart.layer = [*chart.layer, outline]
    return chart


def positions_chart(frame: pd.DataFrame, *, title: str) -> alt.LayerChart | alt.FacetChart:
    """Each padded slot's token and the position id it was given; pads in red.

    Args:
        frame: ``analysis.padding.positions_frame``.
    """
    n = int(frame["slot"].max()) + 1
    base = alt.Chart(frame).encode(
        x=alt.X("slot:O", title="slot in the padded batch"),
        y=alt.Y("batch:O", title="text (0-based)"),
    )
    cells = base.mark_rect(stroke="white").encode(
        color=alt.condition("datum.is_pad", alt.value("#f4c7c3"), alt.value("#dbe9f6")),
        tooltip=["batch:O", "slot:O", "token:N", "is_pad:N", "position_id:Q"],
    )
    ids = base.mark_text(fontSize=11, dy=-6).encode(text="position_id:Q")
    tokens = base.mark_text(fontSize=8, dy=7, limit=38).encode(
        text="token:N", color=alt.condition("datum.is_pad", alt.value(PAD_COLOR), alt.value("#333"))
    )
    return alt.layer(cells, ids, tokens).properties(width=alt.Step(max(44, 300 // n)), height=alt.Step(40), title=title)
