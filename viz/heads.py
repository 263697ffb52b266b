"""Charts of the Heads page: layer x head grids, head types, GQA similarity, rollout, two-model depth profiles.

Discrete axes are sized by step (``alt.Step``), never by a fixed width: Streamlit squeezes fixed-width
ordinal grids to nothing.

Every function takes frames/arrays and returns an ``alt.Chart``; nothing is rendered or written here.
"""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

from attnscope.viz.compare import layer_profile

__all__ = [
    "CELL_SELECTION",
    "STAT_TITLES",
    "depth_profile",
    "depth_profile_frame",
    "group_similarity_chart",
    "layer_change_chart",
    "rollout_comparison",
    "rollout_comparison_frame",
    "rollout_layers",
    "similarity_heatmap",
    "stat_heatmap",
    "type_heatmap",
]

# Statistic -> (title, colour-scale domain or None for data-driven).
STAT_TITLES: dict[str, str] = {
    "entropy": "entropy (nats)",
    "normalised_entropy": "entropy / uniform",
    "first_token_mass": "first-token (sink) mass",
    "special_token_mass": "special-token mass",
    "punctuation_mass": "punctuation mass",
    "prev_token": "previous-token score",
    "next_token": "next-token score",
    "mean_distance": "mean distance (tokens)",
    "induction": "induction score",
    "first_token_norm": "first-token share under norms",
    "prev_token_norm": "previous-token share under norms",
    "special_token_norm": "special-token share under norms",
    "output_norm": "output norm ‖W_O o‖",
    "output_share": "share of the layer's output",
    "delta": "importance: loss change when knocked out",
}
_UNIT_STATS = {
    "first_token_mass",
    "special_token_mass",
    "punctuation_mass",
    "prev_token",
    "next_token",
    "induction",
    "normalised_entropy",
    "first_token_norm",
    "prev_token_norm",
    "special_token_norm",
}

# Name of the point selection on grid cells; the page reads {"layer", "head"} from it.
CELL_SELECTION = "cell"

_TYPE_COLOURS = {
    "induction": "#d62728",
    "previous_token": "#1f77b4",
    "next_token": "#17becf",
    "sink_noop": "#c7c7c7",
    "sink": "#7f7f7f",
    "diagonal": "#2ca02c",
    "broad": "#ff7f0e",
    "other": "#e5e5e5",
}


def _grid_base(table: pd.DataFrame, n_layers: int, n_heads: int) -> alt.Chart:
    return alt.Chart(table).encode(
        x=alt.X("head:O", title="head (0-based)", sort="ascending"),
        y=alt.Y("layer:O", title="layer (0-based)", sort="ascending"),
    )


def stat_heatmap(table: pd.DataFrame, stat: str, *, selectable: bool = True, size: int = 16) -> alt.Chart:
    """Layer x head grid of one statistic; a click selects (layer, head) as ``CELL_SELECTION``.

    Args:
        table: one row per head with layer, head and ``stat`` (kv_head, types used in tooltips if present).
        stat: column to colour by.
    """
    if stat not in table.columns:
        msg = f"no column {stat!r} in the head table; choose one of {', '.join(c for c in STAT_TITLES if c in table.columns)}"
        raise ValueError(msg)
    n_layers, n_heads = int(table["layer"].max()) + 1, int(table["head"].max()) + 1
    domain = [0, 1] if stat in _UNIT_STATS else alt.Undefined
    tooltip: list[str | alt.Tooltip] = ["layer:O", "head:O", *(f"{c}:O" for c in ("kv_head",) if c in table.columns)]
    tooltip += [alt.Tooltip(f"{stat}:Q", format=".3f")] + (["types:N"] if "types" in table.columns else [])
    chart = (
        _grid_base(table, n_layers, n_heads)
        .mark_rect()
        .encode(
            color=alt.Color(f"{stat}:Q", title=STAT_TITLES.get(stat, stat), scale=alt.Scale(scheme="viridis", domain=domain)),
            tooltip=tooltip,
        )
        .properties(width=alt.Step(size + 4), height=alt.Step(size), title=STAT_TITLES.get(stat, stat))
    )
    if selectable:
        chart = chart.add_params(alt.selection_point(name=CELL_SELECTION, fields=["layer", "head"], on="click"))
    return chart


def type_heatmap(classified: pd.DataFrame, *, selectable: bool = True, size: int = 16) -> alt.Chart:
    """Layer x head grid coloured by ``primary_type`` (from ``analysis.head_types.classify_heads``)."""
    n_layers, n_heads = int(classified["layer"].max()) + 1, int(classified["head"].max()) + 1
    names = list(_TYPE_COLOURS)
    chart = (
        _grid_base(classified, n_layers, n_heads)
        .mark_rect(stroke="white", strokeWidth=0.5)
        .encode(
            color=alt.Color("primary_type:N", title="head type", scale=alt.Scale(domain=names, range=[_TYPE_COLOURS[n] for n in names])),
            tooltip=["layer:O", "head:O", "primary_type:N", "types:N"],
        )
        .properties(width=alt.Step(size + 4), height=alt.Step(size), title="head types (most specific label)")
    )
    if selectable:
        chart = chart.add_params(alt.selection_point(name=CELL_SELECTION, fields=["layer", "head"], on="click"))
    return chart


def similarity_heatmap(similarity: np.ndarray, kv_group: int, layer: int) -> alt.Chart:
    """Head x head pattern similarity of one layer; outlined cells share a KV head."""
    sim = np.asarray(similarity)
    n = sim.shape[0]
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    df = pd.DataFrame({"head_a": i.ravel(), "head_b": j.ravel(), "similarity": sim.ravel()})
    df["same_kv_head"] = (df["head_a"] // kv_group) == (df["head_b"] // kv_group)
    base = alt.Chart(df).encode(x=alt.X("head_b:O", title="query head"), y=alt.Y("head_a:O", title="query head"))
    cells = base.mark_rect().encode(
        color=alt.Color("similarity:Q", scale=alt.Scale(scheme="viridis", domain=[0, 1]), title="1 - JSD"),
        tooltip=["head_a:O", "head_b:O", alt.Tooltip("similarity:Q", format=".3f"), "same_kv_head:N"],
    )
    frame = base.transform_filter(alt.datum.same_kv_head).mark_rect(fill=None, stroke="white", strokeWidth=1.5)
    return (cells + frame).properties(width=alt.Step(22), height=alt.Step(22), title=f"layer {layer}: head pattern similarity")


def group_similarity_chart(groups: pd.DataFrame) -> alt.Chart:
    """Within-KV-group versus across-group similarity per layer (from ``models.aggregates.group_similarity_table``)."""
    long = groups.melt(id_vars="layer", value_vars=["within_group", "across_groups"], var_name="pairs", value_name="similarity")
    return (
        alt.Chart(long)
        .mark_line(point=True)
        .encode(
            x=alt.X("layer:Q", title="layer (0-based)"),
            y=alt.Y("similarity:Q", title="mean 1 - JSD", scale=alt.Scale(domain=[0, 1])),
            color=alt.Color("pairs:N", title="head pairs"),
            tooltip=["layer:Q", "pairs:N", alt.Tooltip("similarity:Q", format=".3f")],
        )
        .properties(width=520, height=240, title="query heads sharing a KV head vs. not")
    )


def rollout_layers(tokens: list[str], rollout_rows: np.ndarray, query: int) -> alt.Chart:
    """Layer x key-token grid: the rollout row of one query token after each layer.

    Args:
        tokens: the text's tokens (n).
        rollout_rows: [L, n] rollout[l, query, :] for every layer.
        query: the chosen token's position.
    """
    rows = np.asarray(rollout_rows)
    labels = [f"{k}:{t}" for k, t in enumerate(tokens)]
    layers, keys = np.meshgrid(np.arange(rows.shape[0]), np.arange(rows.shape[1]), indexing="ij")
    df = pd.DataFrame(
        {"layer": layers.ravel(), "key_pos": keys.ravel(), "key_token": [labels[k] for k in keys.ravel()], "weight": rows.ravel()}
    )
    return (
        alt.Chart(df)
        .mark_rect()
        .encode(
            x=alt.X("key_token:N", sort=labels, title="input token"),
            y=alt.Y("layer:O", title="after layer (0-based)"),
            color=alt.Color("weight:Q", scale=alt.Scale(scheme="viridis"), title="rollout"),
            tooltip=["layer:O", "key_token:N", alt.Tooltip("weight:Q", format=".3f")],
        )
        .properties(width=alt.Step(22), height=alt.Step(12), title=f"rollout of {labels[query]} per layer")
    )


def rollout_comparison_frame(tokens: list[str], rollout_row: np.ndarray, raw_row: np.ndarray) -> pd.DataFrame:
    """Long frame [key_pos, key_token, source, weight] of the final rollout and raw last-layer attention of one token."""
    labels = [f"{k}:{t}" for k, t in enumerate(tokens)]
    parts = []
    for source, row in (("rollout (all layers)", rollout_row), ("last-layer attention (head mean)", raw_row)):
        parts.append(
            pd.DataFrame(
                {"key_pos": np.arange(len(tokens)), "key_token": labels, "source": source, "weight": np.asarray(row, dtype=np.float64)}
            )
        )
    return pd.concat(parts, ignore_index=True)


def rollout_comparison(frame: pd.DataFrame) -> alt.Chart:
    """Paired horizontal bars: rollout next to raw last-layer attention for one query token."""
    labels = frame.drop_duplicates("key_pos").sort_values("key_pos")["key_token"].tolist()
    return (
        alt.Chart(frame)
        .mark_bar()
        .encode(
            y=alt.Y("key_token:N", sort=labels, title="input token"),
            yOffset="source:N",
            x=alt.X("weight:Q", title="weight"),
            color=alt.Color("source:N", title=None, scale=alt.Scale(range=["#d62728", "#1f77b4"]), legend=alt.Legend(orient="top")),
            tooltip=["key_token:N", "source:N", alt.Tooltip("weight:Q", format=".3f")],
        )
        .properties(width=420, height=alt.Step(22), title="rollout vs. raw last-layer attention")
    )


def depth_profile_frame(tables: dict[str, pd.DataFrame], stat: str) -> pd.DataFrame:
    """Per model and layer: depth (layer / (L-1)) and the mean (value), min (low) and max (high) of
    ``stat`` over heads; ``viz.compare.layer_profile`` builds each model's rows."""
    frames = []
    for name, table in tables.items():
        if stat not in table.columns:
            msg = f"model {name} has no {stat!r} statistic; choose a statistic both tables have"
            raise ValueError(msg)
        frames.append(layer_profile(table, name, int(table["layer"].max()) + 1, metrics=(stat,)))
    return pd.concat(frames, ignore_index=True)


def depth_profile(frame: pd.DataFrame, stat: str) -> alt.Chart:
    """Two (or more) models' per-layer statistic on a shared 0..1 depth axis: mean line, min-max band."""
    base = alt.Chart(frame).encode(
        x=alt.X("depth:Q", title="relative depth (layer / (layers - 1))", scale=alt.Scale(domain=[0, 1])),
        color=alt.Color("model:N", scale=alt.Scale(range=["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e"])),
    )
    band = base.mark_area(opacity=0.2).encode(y=alt.Y("low:Q", title=STAT_TITLES.get(stat, stat)), y2="high:Q")
    line = base.mark_line(point=True).encode(
        y="value:Q",
        tooltip=[
            "model:N",
            "layer:Q",
            alt.Tooltip("value:Q", title="mean", format=".3f"),
            alt.Tooltip("low:Q", title="min", format=".3f"),
            alt.Tooltip("high:Q", title="max", format=".3f"),
        ],
    )
    return (band + line).properties(width=520, height=260, title=f"{STAT_TITLES.get(stat, stat)} by depth (line: head mean; band: min-max)")


def layer_change_chart(frame: pd.DataFrame, *, title: str = "Knockout: change of the hidden states by layer") -> alt.Chart:
    """1 − mean cosine of the hidden states before and after a knockout, per layer (0 = embeddings)."""
    return (
        alt.Chart(frame)
        .mark_line(point=True)
        .encode(
            x=alt.X("layer:O", title="layer (0 = embeddings)"),
            y=alt.Y("change:Q", title="1 − mean cosine"),
            tooltip=["layer:O", alt.Tooltip("change:Q", format=".4f")],
        )
        .properties(width=420, height=180, title=title)
    )
