"""Per-head attention heatmaps: a long-form frame, then an Altair chart built from it.

Build, then show: ``attention_frame(weights, tokens_q, tokens_k) -> DataFrame`` and
``heatmap(frame) -> alt.Chart``. Above ``max_cells`` cells the frame aggregates the map into square
blocks of tokens (the reduction is named in ``frame.attrs["reduction"]``), so a 2,048-token map stays a
few hundred kilobytes in the browser; ``window`` zooms into a token range at full resolution.
"""

from __future__ import annotations

import json
import math
import warnings
from typing import Final, Literal

import altair as alt
import numpy as np
import pandas as pd

__all__ = [
    "COLUMNS",
    "DEFAULT_MAX_CELLS",
    "MASKED_COLOR",
    "Reduce",
    "attention_frame",
    "block_size",
    "container_height",
    "display_token",
    "heatmap",
    "pool",
    "token_bars",
    "token_frame",
    "PAD",
    "SCHEME",
]

Reduce = Literal["mass", "mean", "max"]

# 128 x 128 cells: drawn in well under a second by Vega and ~0.5 MB as Arrow; larger maps aggregate.
DEFAULT_MAX_CELLS = 128 * 128
COLUMNS = ["layer", "head", "query_pos", "key_pos", "query_token", "key_token", "weight"]
MASKED_COLOR = "#d9d9d9"  # cells the mask forbids: a neutral grey, outside the colour scale
SCHEME: Final = "viridis"
PAD = alt.AutoSizeParams(type="pad", contains="padding")  # sizes are the plot area; labels and legend add to them

# Frames are already bounded by ``max_cells``; Altair's 5,000-row guard would refuse a 128x128 map.
alt.data_transformers.disable_max_rows()

_REDUCTION_TEXT = {
    "mass": "attention mass a query in the block puts on the key block (summed over keys, averaged over queries; rows still sum to 1)",
    "mean": "mean weight over the cells of each block",
    "max": "largest weight in each block",
}


def block_size(n_q: int, n_k: int, max_cells: int) -> int:
    """Smallest square block (in tokens) so that the blocked map has at most ``max_cells`` cells."""
    if max_cells < 1:
        msg = f"max_cells must be >= 1, not {max_cells}"
        raise ValueError(msg)
    size = 1
    while math.ceil(n_q / size) * math.ceil(n_k / size) > max_cells:
        size += 1
    return size


def pool(weights: np.ndarray, size: int, reduce: Reduce = "mass") -> np.ndarray:
    """Aggregate a map into ``size`` x ``size`` token blocks (the last block may be smaller).

    Args:
        weights: float [n_q, n_k].
        size: block side in tokens (1 = unchanged).
        reduce: "mass" (sum over keys, mean over queries), "mean" or "max".
    Returns:
        float32 [ceil(n_q / size), ceil(n_k / size)]; NaN cells of ``weights`` are ignored.
    """
    if reduce not in _REDUCTION_TEXT:
        msg = f"unknown reduction {reduce!r}; use one of {', '.join(_REDUCTION_TEXT)}"
        raise ValueError(msg)
    w = np.asarray(weights)
    if size == 1:
        return w.astype(np.float32)
    n_q, n_k = w.shape
    bq, bk = math.ceil(n_q / size), math.ceil(n_k / size)
    has_nan = bool(np.isnan(w).any()) or n_q % size or n_k % size
    if has_nan:
        padded = np.full((bq * size, bk * size), np.nan)  # float64: NaN-aware sums stay exact
        padded[:n_q, :n_k] = w
    else:
        padded = w
    blocks = padded.reshape(bq, size, bk, size)  # [block_q, in_q, block_k, in_k]
    if not has_nan:  # fast path: plain reductions
        if reduce == "max":
            return blocks.max(axis=(1, 3)).astype(np.float32)
        if reduce == "mean":
            return blocks.mean(axis=(1, 3), dtype=np.float64).astype(np.float32)
        return blocks.sum(axis=3, dtype=np.float64).mean(axis=1).astype(np.float32)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-masked blocks stay NaN on purpose
        if reduce == "max":
            out = np.nanmax(blocks, axis=(1, 3))
        elif reduce == "mean":
            out = np.nanmean(blocks, axis=(1, 3))
        else:  # mass: per query, sum over the keys of the block; then mean over the block's queries
            per_query = np.nansum(blocks, axis=3)  # [block_q, in_q, block_k]
            real_q = (np.arange(bq * size) < n_q).reshape(bq, size)  # [block_q, in_q]; False = padding
            per_query = np.where(real_q[:, :, None], per_query, np.nan)
            out = np.nanmean(per_query, axis=1)
            out[np.isnan(blocks).all(axis=(1, 3))] = np.nan  # a fully masked block stays masked
    return out.astype(np.float32)


def attention_frame(
    weights: np.ndarray,
    tokens_q: list[str],
    tokens_k: list[str] | None = None,
    *,
    layer: int | None = None,
    head: int | None = None,
    allowed: np.ndarray | None = None,
    max_cells: int = DEFAULT_MAX_CELLS,
    reduce: Reduce = "mass",
    window: tuple[int, int] | None = None,
    labels_q: list[str] | None = None,
    labels_k: list[str] | None = None,
) -> pd.DataFrame:
    """One head's attention as a long-form frame, aggregated into blocks when it is large.

    Args:
        weights: float [n_q, n_k] attention map (rows = queries, columns = keys).
        tokens_q: n_q query token strings; tokens_k: n_k key tokens (default ``tokens_q``).
        layer, head: 0-based indices written into the frame (None for maps that are not one head).
        allowed: optional bool [n_q, n_k], True where the mask lets the query see the key; masked
            cells get ``masked=True`` and are drawn grey by ``heatmap``.
        max_cells: most cells to emit; larger maps aggregate into square token blocks.
        reduce: block reduction, "mass" (default: rows still sum to 1), "mean" or "max".
        window: optional (start, stop) token range (0-based, stop exclusive) shown on both axes.
        labels_q, labels_k: what each token shows (``ForwardRecord.labels``: the user's own text; default
            ``labels_q``); given, the frame gets query_label and key_label columns, which the chart draws.
    Returns:
        DataFrame with columns ``COLUMNS`` (tokens: the raw pieces) plus query_end, key_end (last token of the
        block, inclusive), masked, and query_label, key_label when labels were given. ``query_pos``/``key_pos`` are first positions of the cell's block. ``attrs`` holds
        block (tokens per side), reduction (a sentence), n_query, n_key, window, tokens_q, tokens_k.
    """
    w = np.asarray(weights)
    tokens_k = tokens_q if tokens_k is None else tokens_k
    if w.ndim != 2 or w.shape != (len(tokens_q), len(tokens_k)):
        msg = (
            f"weights of shape {w.shape} do not match {len(tokens_q)} query and {len(tokens_k)} key tokens; "
            "pass one head's [n_query, n_key] map and its tokens"
        )
        raise ValueError(msg)
    if labels_q is not None:
        labels_k = labels_q if labels_k is None else labels_k
        if len(labels_q) != len(tokens_q) or len(labels_k) != len(tokens_k):
            msg = f"{len(labels_q)} and {len(labels_k)} labels for {len(tokens_q)} query and {len(tokens_k)} key tokens; pass one per token"
            raise ValueError(msg)
    if allowed is not None and np.shape(allowed) != w.shape:
        msg = f"allowed mask of shape {np.shape(allowed)} does not match weights {w.shape}"
        raise ValueError(msg)
    offset = 0
    if window is not None:
        start, stop = int(window[0]), int(window[1])
        if not (0 <= start < stop <= min(w.shape)):
            msg = f"window {window} is outside the map; choose 0 <= start < stop <= {min(w.shape)}"
            raise ValueError(msg)
        w = w[start:stop, start:stop]
        tokens_q, tokens_k = tokens_q[start:stop], tokens_k[start:stop]
        if labels_q is not None and labels_k is not None:
            labels_q, labels_k = labels_q[start:stop], labels_k[start:stop]
        allowed = None if allowed is None else np.asarray(allowed)[start:stop, start:stop]
        offset = start
    n_q, n_k = w.shape
    size = block_size(n_q, n_k, max_cells)
    values = w.astype(np.float64)
    if allowed is not None:
        values = np.where(allowed, values, np.nan)  # masked cells never count in a block's value
    pooled = pool(values, size, reduce)  # [bq, bk]
    masked = np.isnan(pooled)
    bq, bk = pooled.shape
    q_start = np.arange(bq) * size
    k_start = np.arange(bk) * size
    q_end = np.minimum(q_start + size, n_q) - 1
    k_end = np.minimum(k_start + size, n_k) - 1
    grid_q, grid_k = np.meshgrid(np.arange(bq), np.arange(bk), indexing="ij")  # [bq, bk]
    qi, ki = grid_q.ravel(), grid_k.ravel()
    q_labels = np.asarray([_span_label(tokens_q, int(a), int(b)) for a, b in zip(q_start, q_end)], dtype=object)
    k_labels = np.asarray([_span_label(tokens_k, int(a), int(b)) for a, b in zip(k_start, k_end)], dtype=object)
    frame = pd.DataFrame(
        {
            "layer": pd.array([layer] * len(qi), dtype="Int64"),
            "head": pd.array([head] * len(qi), dtype="Int64"),
            "query_pos": q_start[qi] + offset,
            "key_pos": k_start[ki] + offset,
            "query_token": q_labels[qi],
            "key_token": k_labels[ki],
            "weight": np.nan_to_num(pooled.ravel(), nan=0.0).astype(np.float32),
            "query_end": q_end[qi] + offset,
            "key_end": k_end[ki] + offset,
            "masked": masked.ravel(),
        }
    )
    if labels_q is not None and labels_k is not None:
        query_labels = [_span_label(labels_q, int(a), int(b)) for a, b in zip(q_start, q_end)]
        key_labels = [_span_label(labels_k, int(a), int(b)) for a, b in zip(k_start, k_end)]
        frame["query_label"] = [query_labels[i] for i in qi]
        frame["key_label"] = [key_labels[i] for i in ki]
    frame.attrs.update(
        block=size,
        reduce=reduce,
        reduction="none (one cell per token pair)" if size == 1 else f"{size}x{size}-token blocks: {_REDUCTION_TEXT[reduce]}",
        n_query=n_q,
        n_key=n_k,
        window=(offset, offset + n_q) if window is not None else None,
        tokens_q=list(tokens_q) if size == 1 else None,
        tokens_k=list(tokens_k) if size == 1 else None,
    )
    return frame


def display_token(token: str) -> str:
    """A token as a label: byte-level BPE / SentencePiece space markers dropped, newlines as ↵.

    "Ġcat" -> "cat", "▁the" -> "the", "Ċ" -> "↵", a lone space marker -> "␣"; WordPiece "##ing" stays.
    """
    text = str(token).replace("Ċ", "↵").replace("\n", "↵")
    stripped = text.replace("Ġ", "").replace("▁", "")
    return stripped if stripped else ("␣" if text else text)


def _span_label(tokens: list[str], start: int, end: int) -> str:
    if start == end:
        return str(tokens[start])
    return f"{tokens[start]} … {tokens[end]}"


def _axis_labels(frame: pd.DataFrame, pos: str, token: str, limit: int = 24) -> str:
    """A Vega label expression mapping a position to its token (or block range), trimmed to ``limit`` chars."""
    pairs = frame[[pos, token]].drop_duplicates(pos)
    block = frame.attrs.get("block", 1)
    lookup = {}
    labelled = token.replace("_token", "_label") in frame.columns  # labels are shown as given; raw pieces made readable
    if labelled:
        pairs = frame[[pos, token.replace("_token", "_label")]].drop_duplicates(pos)
    for p, t in zip(pairs.iloc[:, 0], pairs.iloc[:, 1]):
        label = (str(t) if labelled else display_token(t)) if block == 1 else f"{int(p)}–{int(p) + block - 1}"
        lookup[str(int(p))] = label if len(label) <= limit else label[: limit - 1] + "…"
    return f"{json.dumps(lookup, ensure_ascii=False)}[datum.value]"


def heatmap(
    frame: pd.DataFrame,
    *,
    title: str | None = None,
    domain: tuple[float, float] | None = None,
    size: int | str | None = None,
    legend: bool = True,
    select: str | None = None,
    standalone: bool = True,
    highlight: int | None = None,
) -> alt.LayerChart | alt.FacetChart:
    """Query rows x key columns, token labels on both axes, one colour scale with a legend.

    Args:
        frame: from ``attention_frame``.
        title: chart title; default names the layer/head and the block reduction.
        domain: colour scale (lo, hi); default (0, largest weight). Pass the same domain to charts
            meant to be compared.
        size: chart width = height in pixels (default grows with the number of rows, 340..640), or
            "container": as wide as the page column and ``container_height(n)`` tall, so the map grows
            on a wide screen (hosts only: file exports need a fixed size).
        legend: draw the colour legend.
        select: name of a click selection on cells (fields query_pos, key_pos), for ``on_select``.
        highlight: a query position whose row is outlined (the token picked by a click or the token box).
        standalone: sizes are the plot area (``autosize="pad"``), so hosts that default to "fit" (Streamlit)
            do not shrink the cells to make room for labels. Pass False to put the chart inside
            ``alt.hconcat``/``vconcat`` (Altair allows autosize only at the top level).
    Returns:
        alt.LayerChart: coloured cells, masked cells in grey, tooltips with tokens and weight.
    """
    if not set(COLUMNS) <= set(frame.columns):
        msg = f"heatmap needs a frame from attention_frame with columns {COLUMNS}"
        raise ValueError(msg)
    n_rows = frame["query_pos"].nunique()
    container = size == "container"
    side = container_height(n_rows) if container else (size or int(min(640, max(340, 22 * n_rows))))
    if domain is None:
        top = float(frame.loc[~frame["masked"], "weight"].max()) if "masked" in frame and (~frame["masked"]).any() else 1.0
        domain = (0.0, top if top > 0 else 1.0)
    if title is None:
        title = _default_title(frame)
    block = frame.attrs.get("block", 1)
    label_font = 11 if n_rows <= 40 else 9
    x = alt.X(
        "key_pos:O",
        title="key (attended to)",
        axis=alt.Axis(
            labelExpr=_axis_labels(frame, "key_pos", "key_token"),
            labelAngle=-60,
            labelFontSize=label_font,
            labelOverlap=block > 1,
            orient="top" if block == 1 else "bottom",
        ),
        sort="ascending",
    )
    y = alt.Y(
        "query_pos:O",
        title="query (attending)",
        axis=alt.Axis(labelExpr=_axis_labels(frame, "query_pos", "query_token"), labelFontSize=label_font, labelOverlap=block > 1),
        sort="ascending",
    )
    q_field = "query_label" if "query_label" in frame.columns else "query_token"
    k_field = "key_label" if "key_label" in frame.columns else "key_token"
    tooltip = [
        alt.Tooltip(f"{q_field}:N", title="query"),
        alt.Tooltip(f"{k_field}:N", title="key"),
        alt.Tooltip("query_pos:O", title="query pos"),
        alt.Tooltip("key_pos:O", title="key pos"),
        alt.Tooltip("weight:Q", title="weight" if block == 1 else "block value", format=".4f"),
    ]
    base = alt.Chart(_slim(frame)).encode(x=x, y=y)
    cells = base.mark_rect().encode(
        color=alt.Color(
            "weight:Q",
            title="weight" if block == 1 else f"weight ({frame.attrs.get('reduce', 'mass')})",
            scale=alt.Scale(domain=list(domain), scheme=SCHEME, clamp=True),
            legend=alt.Legend(orient="right", gradientLength=min(int(side), 240)) if legend else None,
        ),
        tooltip=tooltip,
    )
    if "masked" in frame:
        cells = cells.transform_filter("!datum.masked")
        grey = (
            base.mark_rect(color=MASKED_COLOR)
            .encode(tooltip=[alt.Tooltip(f"{q_field}:N", title="query"), alt.Tooltip(f"{k_field}:N", title="key (masked)")])
            .transform_filter("datum.masked")
        )
        layers = [grey, cells]
    else:
        layers = [cells]
    if select:
        pick = alt.selection_point(name=select, fields=["query_pos", "key_pos"], on="click", clear="dblclick")
        layers[-1] = layers[-1].add_params(pick)
    if highlight is not None:
        rows = frame.loc[(frame["query_pos"] <= highlight) & (frame.get("query_end", frame["query_pos"]) >= highlight), "query_pos"]
        if len(rows):
            picked = pd.DataFrame({"query_pos": [int(rows.iloc[0])]}).astype(np.int32)
            layers.append(
                alt.Chart(picked).mark_rect(fill=None, stroke="#e4572e", strokeWidth=2.5).encode(y=alt.Y("query_pos:O", sort="ascending"))
            )
    chart = alt.layer(*layers).properties(width="container" if container else side, height=side, title=title)
    if container:  # the column sets the width; labels and legend fit inside it
        return chart.properties(autosize=alt.AutoSizeParams(type="fit-x", contains="padding"))
    return chart.properties(autosize=PAD) if standalone else chart


def container_height(n_rows: int) -> int:
    """Plot height of a page-wide map: ~30 px a row, at least 420 and at most 860 (one screen, cells readable)."""
    return int(min(860, max(420, 30 * n_rows)))


def _slim(frame: pd.DataFrame) -> pd.DataFrame:
    """Only what the chart draws, compactly typed: tokens as categories (Arrow dictionaries), positions int32.

    A 128x128 map is ~0.4 MB as Arrow this way instead of ~1.4 MB (layer, head and block ends stay in the CSV).
    """
    keep = [
        c
        for c in ("query_pos", "key_pos", "query_token", "key_token", "query_label", "key_label", "weight", "masked")
        if c in frame.columns
    ]
    slim = frame[keep].copy()
    slim.attrs = {}
    for col in ("query_pos", "key_pos"):
        slim[col] = slim[col].astype(np.int32)
    for col in ("query_token", "key_token", "query_label", "key_label"):
        if col in slim.columns:
            slim[col] = slim[col].astype(str).astype("category")
    return slim


def _default_title(frame: pd.DataFrame) -> str:
    parts = []
    layer = frame["layer"].iloc[0] if len(frame) else None
    head = frame["head"].iloc[0] if len(frame) else None
    if layer is not None and not pd.isna(layer):
        parts.append(f"layer {int(layer)}")
    if head is not None and not pd.isna(head):
        parts.append(f"head {int(head)}")
    title = "Attention" + (f", {' '.join(parts)}" if parts else "") + " (0-based)"
    if frame.attrs.get("block", 1) > 1:
        title += f" — {frame.attrs['block']}-token blocks, {frame.attrs.get('reduce', 'mass')}"
    return title


def token_frame(weights: np.ndarray, tokens: list[str], position: int, labels: list[str] | None = None) -> pd.DataFrame:
    """What token ``position`` attends to (its row) and what attends to it (its column).

    Args:
        weights: float [n, n] one head's map (square: queries and keys are the same tokens).
        tokens: n token strings.
        position: 0-based token position.
        labels: what each token shows (``ForwardRecord.labels``); default the tokens made readable.
    Returns:
        DataFrame with columns direction ("attends to" | "attended by"), pos, token, label, weight; 2n rows.
    """
    w = np.asarray(weights)
    n = len(tokens)
    if w.shape != (n, n):
        msg = f"weights of shape {w.shape} do not match {n} tokens; pass one head's square map"
        raise ValueError(msg)
    if not 0 <= position < n:
        msg = f"token position {position} out of range; this text has positions 0..{n - 1}"
        raise ValueError(msg)
    labels = [display_token(t) for t in tokens] if labels is None else list(labels)
    if len(labels) != n:
        msg = f"{len(labels)} labels for {n} tokens; pass one label per token"
        raise ValueError(msg)
    pos = np.arange(n)
    out = pd.DataFrame(
        {
            "direction": ["attends to"] * n + ["attended by"] * n,
            "pos": np.concatenate([pos, pos]),
            "token": list(tokens) * 2,
            "label": list(labels) * 2,
            "weight": np.concatenate([w[position, :], w[:, position]]).astype(np.float32),
        }
    )
    out.attrs.update(position=position, token=labels[position])
    return out


def token_bars(frame: pd.DataFrame, *, max_bars: int = 64, width: int = 320) -> alt.HConcatChart:
    """Two bar charts from ``token_frame``: the selected token's row and column.

    Inputs longer than ``max_bars`` keep the ``max_bars`` largest weights of each side, in position order.
    """
    token = frame.attrs.get("token", "")
    position = frame.attrs.get("position", "")
    panels = []
    for direction, title in (
        ("attends to", f"“{token}” ({position}) attends to"),
        ("attended by", f"what attends to “{token}” ({position})"),
    ):
        part = frame[frame["direction"] == direction]
        if len(part) > max_bars:
            part = part.nlargest(max_bars, "weight").sort_values("pos")
        column = part["label"] if "label" in part.columns else part["token"].map(display_token)
        labels = {str(int(p)): str(t)[:20] for p, t in zip(part["pos"], column)}
        bars = (
            alt.Chart(part)
            .mark_bar()
            .encode(
                x=alt.X(
                    "pos:O",
                    title=None,
                    axis=alt.Axis(
                        labelExpr=f"{json.dumps(labels, ensure_ascii=False)}[datum.value]", labelAngle=-60, labelOverlap=len(part) > 48
                    ),
                ),
                y=alt.Y("weight:Q", title="weight", scale=alt.Scale(domain=[0, 1])),
                color=alt.Color("weight:Q", scale=alt.Scale(domain=[0, 1], scheme=SCHEME), legend=None),
                tooltip=[
                    alt.Tooltip("pos:O"),
                    alt.Tooltip("label:N" if "label" in part.columns else "token:N", title="token"),
                    alt.Tooltip("weight:Q", format=".4f"),
                ],
            )
            .properties(title=title, width=max(width, min(440, 12 * len(part))), height=180)
        )
        panels.append(bars)
    return alt.hconcat(*panels).properties(autosize=PAD)
