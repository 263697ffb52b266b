"""Charts of a corpus result: head means with confidence intervals, one text against the corpus, word clusters.

Frames come from ``analysis.corpus`` (``aggregate``, ``compare_to_corpus``, ``occurrence_points``);
every function returns an ``alt.Chart`` and renders nothing.
"""

from __future__ import annotations

import html

import altair as alt
import pandas as pd

from attnscope.viz.heads import _UNIT_STATS, STAT_TITLES

__all__ = [
    "browser_grid",
    "corpus_heatmap",
    "criterion_histogram",
    "depth_summary_chart",
    "drift_scatter",
    "example_html",
    "QK_COLOURS",
    "qk_scatter",
    "zscore_heatmap",
]

Z_LIMIT = 3.0  # colour scale of z-scores saturates at ±3 standard deviations


def _one_stat(frame: pd.DataFrame, stat: str) -> pd.DataFrame:
    rows = frame[frame["statistic"] == stat]
    if rows.empty:
        have = ", ".join(sorted(frame["statistic"].unique()))
        msg = f"the corpus result has no statistic {stat!r}; choose one of {have}"
        raise ValueError(msg)
    return rows


# Tooltip titles and formats of the corpus grids' fields, so that every grid names a field the same way.
_TIPS = {
    "value": ("this text", ".3f"),
    "mean": ("corpus mean", ".3f"),
    "std": ("corpus std", ".3f"),
    "ci_low": ("95% CI low", ".3f"),
    "ci_high": ("95% CI high", ".3f"),
    "z": ("z", "+.2f"),
    "n": ("texts", None),
}


def _grid_tooltip(*fields: str) -> list:
    """The tooltip of a layer x head grid: layer, head, then ``fields`` titled and formatted by ``_TIPS``."""
    tips: list = ["layer:O", "head:O"]
    for field in fields:
        title, fmt = _TIPS[field]
        tips.append(alt.Tooltip(f"{field}:Q", title=title) if fmt is None else alt.Tooltip(f"{field}:Q", format=fmt, title=title))
    return tips


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
            tooltip=_grid_tooltip("mean", "std", "ci_low", "ci_high", "n"),
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
            tooltip=_grid_tooltip("value", "mean", "std", "z", "n"),
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


def browser_grid(summary: pd.DataFrame, stat: str, matching: pd.DataFrame, *, size: int = 16) -> alt.Chart:
    """The head browser's grid: a statistic's corpus mean per head, heads outside the filter faded; a click selects a head.

    Args:
        summary: ``aggregate`` output.
        matching: layer, head of the heads the filter keeps.
    """
    from attnscope.viz.heads import CELL_SELECTION

    rows = _one_stat(summary, stat).copy()
    keep = set(zip(matching["layer"].astype(int), matching["head"].astype(int)))
    rows["shown"] = [(int(layer), int(head)) in keep for layer, head in zip(rows["layer"], rows["head"])]
    title = STAT_TITLES.get(stat, stat)
    domain = [0, 1] if stat in _UNIT_STATS else alt.Undefined
    return (
        _grid(rows, size)
        .mark_rect(stroke="white", strokeWidth=0.5)
        .encode(
            color=alt.Color("mean:Q", title=f"mean {title}", scale=alt.Scale(scheme="viridis", domain=domain)),
            opacity=alt.condition("datum.shown", alt.value(1.0), alt.value(0.15)),
            tooltip=[*_grid_tooltip("mean", "ci_low", "ci_high", "n"), alt.Tooltip("shown:N", title="passes the filter")],
        )
        .add_params(alt.selection_point(name=CELL_SELECTION, fields=["layer", "head"], on="click"))
        .properties(title=f"{title}: corpus mean per head ({len(keep)} pass the filter; click one)")
    )


def criterion_histogram(values: pd.DataFrame, stat: str, *, layer: int, head: int) -> alt.Chart:
    """The distribution over the corpus' texts of one head's per-text statistic (``values``: text_id, value)."""
    title = STAT_TITLES.get(stat, stat)
    return (
        alt.Chart(values)
        .mark_bar()
        .encode(
            x=alt.X("value:Q", bin=alt.Bin(maxbins=30), title=f"{title} on one text"),
            y=alt.Y("count():Q", title="texts"),
            tooltip=[alt.Tooltip("count():Q", title="texts")],
        )
        .properties(width=360, height=180, title=f"layer {layer} head {head}: {title} over {len(values)} texts")
    )


QK_COLOURS = {"token_class": "token class", "position_bucket": "position", "role": "query or key", "token": "token"}


def qk_scatter(points: pd.DataFrame, colour: str = "token_class", *, layer: int, head: int) -> alt.Chart:
    """A head's sampled queries (circles) and keys (squares) in 2-D (one PCA on both), coloured by ``colour``.

    Args:
        points: ``analysis.geometry.qk_points`` output.
        colour: one of QK_COLOURS.
    """
    if colour not in QK_COLOURS:
        msg = f"colour {colour!r}: choose one of {', '.join(QK_COLOURS)}"
        raise ValueError(msg)
    ex1, ex2 = float(points["explained_pc1"].iloc[0]), float(points["explained_pc2"].iloc[0])
    frame = points.drop(columns=["explained_pc1", "explained_pc2"])
    if colour == "token":  # the 12 commonest tokens by name, the rest as one colour
        common = frame["token"].value_counts().index[:12]
        frame = frame.assign(token=frame["token"].where(frame["token"].isin(common), "(other)"))
    from attnscope.analysis.geometry import POSITION_BUCKETS

    order = [label for _, _, label in POSITION_BUCKETS]
    scale = alt.Scale(domain=order, scheme="viridis") if colour == "position_bucket" else alt.Scale(scheme="tableau10")
    return (
        alt.Chart(frame)
        .mark_point(filled=True, size=40, opacity=0.7)
        .encode(
            x=alt.X("pc1:Q", title=f"PC1 ({ex1:.0%} of variance)"),
            y=alt.Y("pc2:Q", title=f"PC2 ({ex2:.0%} of variance)"),
            color=alt.Color(f"{colour}:N", title=QK_COLOURS[colour], scale=scale),
            shape=alt.Shape("role:N", title="vector", scale=alt.Scale(domain=["query", "key"], range=["circle", "square"])),
            tooltip=["role:N", "token:N", "token_class:N", "position:Q", "text_id:Q"],
        )
        .properties(width=420, height=340, title=f"layer {layer} head {head}: {len(frame)} query and key vectors, PCA to 2-D")
    )


def example_html(window: list[str], query: int, key: int, score: float, criterion: str) -> str:
    """One example as HTML: the window's tokens, the query marked blue, the attended key orange, with the score."""
    parts = []
    for k, token in enumerate(window):
        text = html.escape(token)
        if k == query and k == key:
            parts.append(f'<span style="background:#c9b3f0;border-radius:3px;padding:0 2px" title="query and key">{text}</span>')
        elif k == query:
            parts.append(f'<span style="background:#b3d4f0;border-radius:3px;padding:0 2px" title="query">{text}</span>')
        elif k == key:
            parts.append(f'<span style="background:#f5c28c;border-radius:3px;padding:0 2px" title="attended key">{text}</span>')
        else:
            parts.append(text)
    what = "entropy" if criterion == "low-entropy" else "weight"
    return f'<span style="font-family:monospace;font-size:0.9em">{what} {score:.3f}</span> · ' + " ".join(parts)
