"""All layers x all heads at a glance: one raster thumbnail per head, laid out as a clickable grid.

Cells would be L·H·n² marks (SmolLM2 at 2,048 tokens: 1.1 billion); a thumbnail is a small
downsampled map encoded as a PNG data URI inside an Altair image mark, so the whole overview is a few
hundred kilobytes at any length. Query heads that share a KV head (GQA/MQA) sit together under a
"KV k" band.
"""

from __future__ import annotations

import base64
import io
import math

import altair as alt
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from attnscope.analysis.attention import real_weight_chunks
from attnscope.analysis.record_view import RecordView
from attnscope.viz.heatmap import PAD, Reduce, pool

__all__ = ["VIRIDIS", "colorize", "overview", "overview_frame", "png_data_uri", "thumbnail", "thumbnails", "THUMB"]

# Viridis at 0, 0.1, ..., 1 (matplotlib's values); interpolated linearly in between.
VIRIDIS = np.array(
    [
        [68, 1, 84],
        [72, 36, 117],
        [65, 68, 135],
        [53, 95, 141],
        [42, 120, 142],
        [33, 145, 140],
        [34, 168, 132],
        [68, 191, 112],
        [122, 209, 81],
        [189, 223, 38],
        [253, 231, 37],
    ],
    dtype=np.float64,
)
THUMB = 32  # thumbnail side in pixels of data: enough to see diagonals, sinks and blocks


def thumbnail(weights: np.ndarray, size: int = THUMB, reduce: Reduce = "max", *, causal: bool = False) -> np.ndarray:
    """Downsample one map to at most ``size`` x ``size`` (unchanged when already smaller).

    Args:
        weights: float [n_q, n_k].
        size: largest side of the result.
        reduce: block reduction ("max" keeps thin structure such as a previous-token diagonal visible).
        causal: blocks lying wholly right of the diagonal become NaN (drawn grey: masked, not "weight 0").
    Returns:
        float32 [t_q, t_k] with t <= size.
    """
    n = max(np.shape(weights))
    block = max(1, math.ceil(n / size))
    out = pool(weights, block, reduce)  # [t_q, t_k]
    if causal:
        first_key = np.arange(out.shape[1]) * block
        last_query = np.minimum((np.arange(out.shape[0]) + 1) * block, np.shape(weights)[0]) - 1
        out = np.where(first_key[None, :] > last_query[:, None], np.nan, out).astype(np.float32)
    return out


def colorize(values: np.ndarray, domain: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """Map values to viridis RGB. float [h, w] -> uint8 [h, w, 3]; NaN (masked) becomes light grey."""
    lo, hi = domain
    v = np.asarray(values, dtype=np.float64)
    t = np.clip((np.nan_to_num(v, nan=lo) - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0) * (len(VIRIDIS) - 1)
    i = np.minimum(t.astype(int), len(VIRIDIS) - 2)
    frac = (t - i)[..., None]
    rgb = VIRIDIS[i] * (1 - frac) + VIRIDIS[i + 1] * frac  # [h, w, 3]
    rgb[np.isnan(v)] = 217
    return rgb.round().astype(np.uint8)


def png_data_uri(rgb: np.ndarray) -> str:
    """uint8 [h, w, 3] -> 'data:image/png;base64,...' (Pillow ships with Streamlit)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb), mode="RGB").save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def overview_frame(
    thumbs: np.ndarray,
    *,
    kv_group: int = 1,
    stats: pd.DataFrame | None = None,
    domain: tuple[float, float] = (0.0, 1.0),
    cell: int | None = None,
) -> pd.DataFrame:
    """One row per (layer, head) with its thumbnail image and pixel position in the grid.

    Args:
        thumbs: float [L, H, t, t] downsampled maps (``thumbnail`` of each head).
        kv_group: query heads per KV head (1 without GQA); heads h // kv_group share a KV head.
        stats: optional per-head statistics (columns layer, head, ...) added for tooltips.
        domain: colour range shared by every thumbnail.
        cell: thumbnail size on screen in pixels (default fits ~900 x 1,320 px, 14..64).
    Returns:
        DataFrame: layer, head, kv_head, image, x, y, x0, x1, y0, y1 (+ stats columns).
        ``attrs``: cell, width, height, kv_group, n_layers, n_heads.
    """
    thumbs = np.asarray(thumbs)
    if thumbs.ndim != 4:
        msg = f"thumbnails must be [layer, head, t, t], got shape {thumbs.shape}"
        raise ValueError(msg)
    n_layers, n_heads = thumbs.shape[:2]
    if kv_group < 1 or n_heads % kv_group:
        msg = f"kv_group {kv_group} does not divide {n_heads} heads; pass n_heads // n_kv_heads"
        raise ValueError(msg)
    n_kv = n_heads // kv_group
    gap, group_gap = 2, (10 if kv_group > 1 else 0)
    if cell is None:
        # ~900 px wide and ~1,320 px tall at most: a 30-layer model gets smaller thumbnails, not a long scroll.
        cell = int(np.clip(min((900 - group_gap * n_kv) // n_heads, 1320 // n_layers) - gap, 14, 64))
    rows = []
    for layer in range(n_layers):
        for head in range(n_heads):
            kv = head // kv_group
            x0 = head * (cell + gap) + kv * group_gap
            y0 = layer * (cell + gap)
            rows.append(
                {
                    "layer": layer,
                    "head": head,
                    "kv_head": kv,
                    "image": png_data_uri(colorize(thumbs[layer, head], domain)),
                    "x": x0 + cell / 2,
                    "y": y0 + cell / 2,
                    "x0": x0,
                    "x1": x0 + cell,
                    "y0": y0,
                    "y1": y0 + cell,
                }
            )
    frame = pd.DataFrame(rows)
    if stats is not None:
        keep = [c for c in stats.columns if c not in ("kv_head",)]
        frame = frame.merge(stats[keep], on=["layer", "head"], how="left")
    width = n_heads * (cell + gap) + (n_kv - 1) * group_gap
    frame.attrs.update(cell=cell, width=width, height=n_layers * (cell + gap), kv_group=kv_group, n_layers=n_layers, n_heads=n_heads)
    return frame


def overview(
    frame: pd.DataFrame,
    *,
    selected: tuple[int, int] | None = None,
    select: str | None = "head_pick",
    title: str | None = None,
    tooltip_stats: tuple[str, ...] = ("entropy", "first_token_mass", "prev_token"),
) -> alt.LayerChart:
    """The grid of thumbnails: layers down, heads across, KV groups banded; click a head to select it.

    Args:
        frame: from ``overview_frame``.
        selected: (layer, head) drawn with a red outline.
        select: name of the click selection (fields layer, head) for ``st.altair_chart(on_select=...)``.
        title: chart title.
        tooltip_stats: statistics columns shown on hover when present.
    Returns:
        alt.LayerChart sized to the grid.
    """
    attrs = frame.attrs
    width, height, cell = attrs["width"], attrs["height"], attrs["cell"]
    n_layers, n_heads, kv_group = attrs["n_layers"], attrs["n_heads"], attrs["kv_group"]
    label_w = 34
    top = 18 if kv_group > 1 else 14  # room for KV-group labels (GQA) or head labels above the grid
    bottom = 14 if kv_group > 1 else 0  # head labels go below the grid when KV labels take the top
    x_scale = alt.Scale(domain=[-label_w, width], range=[0, width + label_w], nice=False, zero=False)
    y_scale = alt.Scale(domain=[-top, height + bottom], range=[0, height + top + bottom], nice=False, zero=False)
    x = lambda field: alt.X(field, type="quantitative", scale=x_scale, axis=None)  # noqa: E731
    y = lambda field: alt.Y(field, type="quantitative", scale=y_scale, axis=None)  # noqa: E731
    base = alt.Chart(frame)
    layers = []
    if kv_group > 1:
        bands = frame.groupby("kv_head").agg(x0=("x0", "min"), x1=("x1", "max")).reset_index()
        bands["label"] = [f"KV {k}: heads {k * kv_group}–{(k + 1) * kv_group - 1}" for k in bands["kv_head"]]
        bands["y0"], bands["y1"], bands["xm"], bands["ym"] = -4, height + 2, (bands["x0"] + bands["x1"]) / 2, -10
        band_chart = alt.Chart(bands)
        layers.append(band_chart.mark_rect(color="#eef1f6").encode(x=x("x0"), x2="x1", y=y("y0"), y2="y1"))
        layers.append(band_chart.mark_text(fontSize=10, color="#555").encode(x=x("xm"), y=y("ym"), text="label:N"))
    layers.append(base.mark_image(width=cell, height=cell, smooth=False).encode(x=x("x"), y=y("y"), url="image:N"))
    tips = [alt.Tooltip("layer:O", title="layer (0-based)"), alt.Tooltip("head:O", title="head (0-based)")]
    if kv_group > 1:
        tips.append(alt.Tooltip("kv_head:O", title="KV head"))
    tips += [alt.Tooltip(f"{c}:Q", format=".3f") for c in tooltip_stats if c in frame.columns]
    # A near-transparent rect over each thumbnail takes clicks and hovers (images do not show tooltips).
    hit = base.mark_rect(fill="white", fillOpacity=0.01).encode(x=x("x0"), x2="x1", y=y("y0"), y2="y1", tooltip=tips)
    if select:
        hit = hit.add_params(alt.selection_point(name=select, fields=["layer", "head"], on="click", clear=False, toggle=False))
    layers.append(hit)
    if selected is not None:
        mark = frame[(frame["layer"] == selected[0]) & (frame["head"] == selected[1])]
        layers.append(
            alt.Chart(mark).mark_rect(filled=False, stroke="#e4572e", strokeWidth=3).encode(x=x("x0"), x2="x1", y=y("y0"), y2="y1")
        )
    # Axis labels as text: every layer when they fit, else every few.
    every = max(1, math.ceil(12 / max(cell, 1)))
    ylab = pd.DataFrame({"layer": range(0, n_layers, every)})
    ylab["y"] = ylab["layer"] * (height / n_layers) + cell / 2
    ylab["x"] = -6
    ylab["text"] = "L" + ylab["layer"].astype(str)
    layers.append(alt.Chart(ylab).mark_text(align="right", fontSize=10, color="#333").encode(x=x("x"), y=y("y"), text="text:N"))
    heads = frame[frame["layer"] == 0][["head", "x"]].copy()
    heads["y"] = -4 if kv_group == 1 else height + 2
    heads["text"] = "H" + heads["head"].astype(str)
    heads = heads.iloc[:: max(1, math.ceil(22 / max(cell, 1)))]
    layers.append(
        alt.Chart(heads)
        .mark_text(fontSize=10, color="#333", baseline="bottom" if kv_group == 1 else "top")
        .encode(x=x("x"), y=y("y"), text="text:N")
    )
    chart = (
        alt.layer(*layers)
        .properties(
            width=width + label_w,
            height=height + top + bottom,
            autosize=PAD,
            title=title or f"All {n_layers} layers x {n_heads} heads (rows: layers, columns: heads; click a head)",
        )
        .configure_view(strokeWidth=0)
    )
    return chart


def thumbnails(rec: RecordView, size: int, batch: int = 0) -> np.ndarray:
    """Every head's map of a ``ForwardRecord`` max-pooled to at most ``size`` x ``size`` (the overview's
    thumbnails), streamed over query blocks (no head's full map is formed), with cells where the recorded
    mask allows nothing set to NaN.

    Returns:
        float32 [n_layers, n_heads, t, t], t = ceil(n / ceil(n / size)) (NaN for blocks without attention).
    """
    rec.check_batch(batch)
    real = torch.from_numpy(rec.real_index(batch))
    n = len(real)
    block = max(1, math.ceil(n / size))
    t = math.ceil(n / block)
    out = np.full((rec.spec.n_layers, rec.spec.n_heads, t, t), np.nan, dtype=np.float32)
    rows_per_chunk = block * max(1, 256 // block)  # whole thumbnail rows per chunk
    for layer in rec.attention_layers:
        recorded = rec.layer_record(layer)
        parts = [
            F.max_pool2d(w.float().cpu()[None], block, block, ceil_mode=True)[0]  # [H, r/block, t]
            for w in real_weight_chunks(recorded, batch=batch, real_index=real, chunk=rows_per_chunk)
        ]
        pooled = torch.cat(parts, dim=1).numpy()
        allowed = torch.from_numpy(rec.allowed(layer, batch)).float()[None, None]
        any_allowed = F.max_pool2d(allowed, block, block, ceil_mode=True)[0, 0].numpy() > 0
        out[layer] = np.where(any_allowed[None], pooled, np.nan)
    return out
