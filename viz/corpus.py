"""Charts of a corpus result: head means with confidence intervals, one text against the corpus, word clusters.

Frames come from ``analysis.corpus`` (``aggregate``, ``compare_to_corpus``, ``occurrence_points``);
every function returns an ``alt.Chart`` and renders nothing.
"""

from __future__ import annotations

import altair as alt
import pandas as pd

from attnscope.viz.heads import _UNIT_STATS, STAT_TITLES

__all__ = ["corpus_heatmap", "depth_summary_chart", "drift_scatter", "zscore_heatmap"]

Z_LIMIT = 3.0  # colour scale of z-scores saturates at ±3 standard deviations


def _one_stat(frame: pd.DataFrame, stat: str) -> pd.DataFrame:
    rows = frame[frame["statistic"] == stat]
    if rows.empty:
        have = ", ".join(sorted(frame["statistic"].unique()))
        msg = f"the corpus result has no statistic {stat!r}; choose one of {have}"
        raise ValueError(msg)
    return rows


def _grid(rows: pd.DataFrame, size: int) -> alt.Chart:
    return (
        alt.Chart(rows)
        .encode(
            x=alt.X("head:O", title="head (0-based)"),
            y=alt.Y("layer:O", title="layer (0-based)"),
        )
        .properties(width=alt.Step(size + 4), height=alt.Step(size))
    )


def corpus_heatmap(summary: pd.DataFrame, stat: str, *, size: int = 16) -> alt.Chart:
    """Layer x head grid of a statistic's corpus mean; the tooltip gives std, 95% CI and n.

    Args:
        summary: ``analysis.corpus.aggregate`` output (layer, head, statistic, mean, std, ci_low, ci_high, n).
        stat: which statistic.
    """
    rows = _one_stat(summary, stat)
    title = STAT_TITLES.get(stat, stat)
    domain = [0, 1] if stat in _UNIT_STATS else alt.Undefined
    n = int(rows["n"].max())
    return (
        _grid(rows, size)
        .mark_rect()
        .encode(
            color=alt.Color(
                "mean:Q", title=title if title.startswith("mean") else f"mean {title}", scale=alt.Scale(scheme="viridis", domain=domain)
            ),
            tooltip=[
                "layer:O",
                "head:O",
                alt.Tooltip("mean:Q", format=".3f", title="corpus mean"),
                alt.Tooltip("std:Q", format=".3f", title="std"),
                alt.Tooltip("ci_low:Q", format=".3f", title="95% CI low"),
                alt.Tooltip("ci_high:Q", format=".3f", title="95% CI high"),
                alt.Tooltip("n:Q", title="texts"),
            ],
        )
        .properties(title=f"{title}: mean over {n} texts")
    )


def zscore_heatmap(compared: pd.DataFrame, stat: str, *, size: int = 16) -> alt.Chart:
    """Layer x head grid of how unusual each head is on one text, in corpus standard deviations.

    Args:
        compared: ``analysis.corpus.compare_to_corpus`` output (value, mean, std, z, ...).
    """
    rows = _one_stat(compared, stat)
    title = STAT_TITLES.get(stat, stat)
    return (
        _grid(rows, size)
        .mark_rect()
        .encode(
            color=alt.Color(
                "z:Q",
                title="z (std from corpus mean)",
                scale=alt.Scale(scheme="redblue", reverse=True, domain=[-Z_LIMIT, Z_LIMIT], clamp=True),
            ),
            tooltip=[
                "layer:O",
                "head:O",
                alt.Tooltip("value:Q", format=".3f", title="this text"),
                alt.Tooltip("mean:Q", format=".3f", title="corpus mean"),
                alt.Tooltip("std:Q", format=".3f", title="corpus std"),
                alt.Tooltip("z:Q", format="+.2f", title="z"),
                alt.Tooltip("n:Q", title="texts"),
            ],
        )
        .properties(title=f"{title}: this text vs the corpus (z = (value - mean) / std)")
    )


def drift_scatter(points: pd.DataFrame, word: str) -> alt.Chart:
    """The word's occurrences across the corpus in 2-D (PCA), coloured by k-means cluster; hover shows the text.

    Args:
        points: ``analysis.corpus.occurrence_points`` output with a ``text`` column joined on.
    """
    layer = int(points["layer"].iloc[0]) if "layer" in points.columns else None
    k, silhouette = int(points["k"].iloc[0]), float(points["silhouette"].iloc[0])
    ex1, ex2 = float(points["explained_pc1"].iloc[0]), float(points["explained_pc2"].iloc[0])
    where = f"layer {layer}: " if layer is not None else ""
    quality = f", silhouette {silhouette:.2f}" if silhouette == silhouette else ""
    return (
        alt.Chart(points)
        .mark_circle(size=70, opacity=0.8)
        .encode(
            x=alt.X("pc1:Q", title=f"PC1 ({ex1:.0%} of variance)"),
            y=alt.Y("pc2:Q", title=f"PC2 ({ex2:.0%} of variance)"),
            color=alt.Color("cluster:N", title="k-means cluster", scale=alt.Scale(scheme="category10")),
            tooltip=[
                alt.Tooltip("text:N", title="text"),
                alt.Tooltip("text_id:Q", title="text id (row)"),
                alt.Tooltip("pieces:N", title="tokens"),
                alt.Tooltip("cluster:N", title="cluster"),
            ],
        )
        .properties(width=560, height=420, title=f"{where}{len(points)} occurrences of '{word}', k = {k} by silhouette{quality}")
    )


def depth_summary_chart(summary: pd.DataFrame, word: str) -> alt.Chart:
    """Self-similarity and the chosen clustering's silhouette per layer (``analysis.corpus.drift_summary``)."""
    long = summary.melt(
        id_vars=["layer", "k", "n_occurrences"], value_vars=["self_similarity", "silhouette"], var_name="measure", value_name="value"
    )
    return (
        alt.Chart(long)
        .mark_line(point=True)
        .encode(
            x=alt.X("layer:Q", title="hidden layer (0 = embeddings)", axis=alt.Axis(tickMinStep=1, format="d")),
            y=alt.Y("value:Q", title="value"),
            color=alt.Color("measure:N", title=None),
            tooltip=["layer:Q", "measure:N", alt.Tooltip("value:Q", format=".3f"), "k:Q", "n_occurrences:Q"],
        )
        .properties(width=520, height=240, title=f"'{word}' across the corpus by depth")
    )
