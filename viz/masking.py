"""Mask pictures: which query/key pairs a model lets through, and how much attention goes rightwards."""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

from attnscope.analysis.masks import MASK_CATEGORIES
from attnscope.viz.compare import MODEL_COLORS, end_labels, layer_profile
from attnscope.viz.heatmap import DEFAULT_MAX_CELLS, PAD, block_size, display_token, pool

__all__ = ["CATEGORY_COLORS", "mask_chart", "mask_frame", "right_share_chart", "right_share_frame"]

CATEGORY_COLORS = ("#4c78a8", "#d9d9d9", "#f2a541", "#9e9e9e")  # visible, future, padding key, padding query


def mask_frame(
    categories: np.ndarray, tokens: list[str], *, max_cells: int = DEFAULT_MAX_CELLS, labels: list[str] | None = None
) -> pd.DataFrame:
    """Long-form mask: one row per (query, key), or per token block above ``max_cells``, with why it is masked.

    Args:
        categories: int [n, n] from ``analysis.masks.mask_categories``.
        tokens: n tokens (padding tokens included when the mask covers them).
        max_cells: larger masks aggregate into square blocks labelled with their most common category.
        labels: what each token shows (``ForwardRecord.labels``); given, query_label and key_label columns.
    Returns:
        DataFrame: query_pos, key_pos, query_token, key_token, category, added (what is added to the score),
        and query_label, key_label when labels were given.
        ``attrs["block"]`` is the block side in tokens (1 = one cell per pair).
    """
    cats = np.asarray(categories)
    n = len(tokens)
    if cats.shape != (n, n):
        msg = f"categories of shape {cats.shape} do not match {n} tokens"
        raise ValueError(msg)
    size = block_size(n, n, max_cells)
    if size > 1:  # majority category per block: share of each category, then argmax
        shares = np.stack([pool((cats == c).astype(np.float32), size, "mean") for c in range(len(MASK_CATEGORIES))])
        cats = shares.argmax(0).astype(np.int8)  # [bq, bk]
    starts = np.arange(cats.shape[0]) * size
    q, k = np.meshgrid(starts, starts, indexing="ij")
    flat = cats.ravel()
    names = np.array(MASK_CATEGORIES, dtype=object)[flat]
    toks = np.array(tokens, dtype=object)
    frame = pd.DataFrame(
        {
            "query_pos": q.ravel(),
            "key_pos": k.ravel(),
            "query_token": toks[q.ravel()],
            "key_token": toks[k.ravel()],
            "category": names,
            "added": np.where(flat == 0, "0", np.where(flat == 3, "(row ignored)", "large negative (dtype min)")),
        }
    )
    if labels is not None:
        if len(labels) != n:
            msg = f"{len(labels)} labels for {n} tokens; pass one label per token"
            raise ValueError(msg)
        shown = np.array(labels, dtype=object)
        frame["query_label"], frame["key_label"] = shown[q.ravel()], shown[k.ravel()]
    frame.attrs["block"] = size
    return frame


def mask_chart(frame: pd.DataFrame, *, title: str = "mask", size: int | None = None, standalone: bool = True) -> alt.Chart:
    """The mask as a grid: visible pairs blue, future keys grey, padding orange. Token labels on both axes.

    ``standalone=False`` for use inside hconcat/vconcat (see ``viz.heatmap.heatmap``).
    """
    n = frame["query_pos"].nunique()
    side = size or int(min(640, max(340, 22 * n)))  # the same size as the attention heatmap beside it
    block = frame.attrs.get("block", 1)
    labelled = "key_label" in frame.columns
    shown = frame["key_label"] if labelled else frame["key_token"].map(display_token)
    labels = {str(p): str(t)[:18] if block == 1 else f"{p}–{p + block - 1}" for p, t in zip(frame["key_pos"], shown)}
    expr = f"{pd.Series(labels).to_json(force_ascii=False)}[datum.value]"
    slim = frame.copy()
    slim.attrs = {}
    for col in ("query_token", "key_token", "query_label", "key_label", "category", "added"):  # Arrow dictionaries: ~6x fewer bytes
        if col in slim.columns:
            slim[col] = slim[col].astype(str).astype("category")
    for col in ("query_pos", "key_pos"):
        slim[col] = slim[col].astype(np.int32)
    chart = (
        alt.Chart(slim)
        .mark_rect(stroke="white", strokeWidth=0.5 if n <= 40 else 0)
        .encode(
            x=alt.X("key_pos:O", title="key", axis=alt.Axis(labelExpr=expr, labelAngle=-60, orient="top", labelOverlap=n > 48)),
            y=alt.Y("query_pos:O", title="query", axis=alt.Axis(labelExpr=expr, labelOverlap=n > 48)),
            color=alt.Color(
                "category:N",
                title=None,
                scale=alt.Scale(domain=list(MASK_CATEGORIES), range=list(CATEGORY_COLORS)),
                legend=alt.Legend(orient="bottom", columns=2, labelLimit=280),
            ),
            tooltip=[
                alt.Tooltip("query_label:N" if labelled else "query_token:N", title="query"),
                alt.Tooltip("key_label:N" if labelled else "key_token:N", title="key"),
                alt.Tooltip("category:N"),
                alt.Tooltip("added:N", title="added to the score"),
            ],
        )
        .properties(width=side, height=side, title=title)
    )
    return chart.properties(autosize=PAD) if standalone else chart


def right_share_frame(shares: np.ndarray, model: str, n_layers: int | None = None) -> pd.DataFrame:
    """Per-layer share of attention to the right of the query, averaged over heads.

    Args:
        shares: float [L, H] from ``analysis.masks.right_share`` of every head.
        model: label for the legend.
    Returns:
        DataFrame: model, layer, depth, right_share (mean over heads), low, high (min/max over heads).
    """
    s = np.asarray(shares, dtype=np.float64)
    if s.ndim != 2:
        msg = f"shares must be [layer, head], got shape {s.shape}"
        raise ValueError(msg)
    layers, heads = np.meshgrid(np.arange(s.shape[0]), np.arange(s.shape[1]), indexing="ij")
    table = pd.DataFrame({"layer": layers.ravel(), "head": heads.ravel(), "right_share": s.ravel()})
    profile = layer_profile(table, model, n_layers or s.shape[0], metrics=("right_share",))
    return profile.drop(columns="metric").rename(columns={"value": "right_share"})


def right_share_chart(
    frame: pd.DataFrame, *, width: int = 520, height: int = 220, standalone: bool = True
) -> alt.LayerChart | alt.FacetChart:
    """Right-of-query share by normalised depth, one line per model (0 for causal models)."""
    base = alt.Chart(frame).encode(
        x=alt.X("depth:Q", title="depth (0 = first layer, 1 = last)", scale=alt.Scale(domain=[0, 1])),
    )
    band = base.mark_area(opacity=0.15).encode(y="low:Q", y2="high:Q", color=alt.Color("model:N", scale=MODEL_COLORS))
    line = base.mark_line(point=True).encode(
        color=alt.Color("model:N", scale=MODEL_COLORS, legend=alt.Legend(orient="bottom")),
        y=alt.Y("right_share:Q", title="attention to the right of the query", scale=alt.Scale(domain=[0, 1])),
        tooltip=[alt.Tooltip("model:N"), alt.Tooltip("layer:O", title="layer (0-based)"), alt.Tooltip("right_share:Q", format=".3f")],
    )
    chart = alt.layer(band, line, end_labels(frame, "right_share")).properties(
        width=width, height=height, title="Share of attention on tokens to the right of the query, per layer"
    )
    return chart.properties(autosize=PAD) if standalone else chart
