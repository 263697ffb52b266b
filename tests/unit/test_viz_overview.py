"""viz.overview: thumbnails, the head grid (GQA grouping) and its size at long inputs."""

from __future__ import annotations

import base64
import io
import json

import altair as alt
import numpy as np
import pytest
from PIL import Image

from attnscope.viz.export import chart_bytes
from attnscope.viz.overview import VIRIDIS, colorize, overview, overview_frame, thumbnail, thumbnails


def test_thumbnail_max_pools_and_greys_the_causal_region():
    n = 64
    weights = np.zeros((n, n), dtype=np.float32)
    weights[np.arange(1, n), np.arange(n - 1)] = 1.0  # previous-token diagonal
    thumb = thumbnail(weights, size=16)
    assert thumb.shape == (16, 16)
    assert thumb[5, 5] == 1.0 and thumb[5, 4] == 1.0  # rows 20..23 reach keys 19..22: blocks 4 and 5
    assert thumb[5, 7] == 0.0
    causal = thumbnail(weights, size=16, causal=True)
    assert np.isnan(causal[0, 1]) and not np.isnan(causal[1, 1]) and not np.isnan(causal[1, 0])
    assert thumbnail(np.eye(8), size=32).shape == (8, 8)  # already small: unchanged


def test_colorize_ends_and_masked_grey():
    rgb = colorize(np.array([[0.0, 1.0, np.nan]]))
    assert rgb[0, 0].tolist() == VIRIDIS[0].tolist() and rgb[0, 1].tolist() == VIRIDIS[-1].tolist()
    assert rgb[0, 2].tolist() == [217, 217, 217]


def test_frame_groups_query_heads_by_kv_head():
    thumbs = np.random.default_rng(0).random((4, 6, 8, 8)).astype(np.float32)
    frame = overview_frame(thumbs, kv_group=3)
    assert len(frame) == 24
    assert frame.groupby("head")["kv_head"].first().tolist() == [0, 0, 0, 1, 1, 1]
    row = frame[(frame["layer"] == 0) & (frame["head"] == 3)].iloc[0]
    prev = frame[(frame["layer"] == 0) & (frame["head"] == 2)].iloc[0]
    same = frame[(frame["layer"] == 0) & (frame["head"] == 1)].iloc[0]
    assert row["x0"] - prev["x0"] > prev["x0"] - same["x0"]  # a gap between KV groups
    image = Image.open(io.BytesIO(base64.b64decode(row["image"].split(",", 1)[1])))
    assert image.size == (8, 8)
    pixel = np.asarray(image.convert("RGB"))[2, 5]
    assert pixel.tolist() == colorize(thumbs[0, 3])[2, 5].tolist()
    with pytest.raises(ValueError, match="kv_group"):
        overview_frame(thumbs, kv_group=4)


def test_chart_round_trips_exports_and_stays_small_at_long_inputs():
    # SmolLM2's grid (30 x 9, 3 KV heads) with 32x32 thumbnails: what the overview sends at any length
    thumbs = np.random.default_rng(1).random((30, 9, 32, 32)).astype(np.float32)
    frame = overview_frame(thumbs, kv_group=3)
    chart = overview(frame, selected=(2, 4))
    spec = chart.to_dict()
    assert alt.LayerChart.from_dict(spec).to_dict() == spec
    text = json.dumps(spec, ensure_ascii=False)
    assert "head_pick" in text and "KV 1: heads 3–5" in text
    assert len(text) < 5_000_000  # random thumbnails compress worst; real ones are smaller
    png = chart_bytes(chart, "png", scale=1.0)
    assert png[:4] == b"\x89PNG"
    width, height = Image.open(io.BytesIO(png)).size
    assert width >= frame.attrs["width"] and height >= frame.attrs["height"]


@pytest.mark.parametrize(("arch", "n_words"), [("bert", 30), ("llama_gqa", 45), ("mistral_window", 12)])
def test_streamed_thumbnails_equal_pooling_each_full_map(arch, n_words):
    """rec.thumbnails (streamed, never a full map) equals max-pooling each head's full map, with blocks
    the recorded mask forbids entirely (causal, sliding window) NaN."""
    from attnscope.models import run
    from attnscope.viz.overview import thumbnail
    from tests import tiny

    lm = tiny.build(arch)
    rec = run(lm, " ".join(["mouse"] * n_words))
    size = 8
    got = thumbnails(rec, size)
    for layer in range(lm.spec.n_layers):
        allowed = rec.allowed(layer)
        forbidden = thumbnail(np.where(allowed, 1.0, 0.0), size) == 0  # no allowed cell in the block
        for head in range(lm.spec.n_heads):
            expected = np.where(forbidden, np.nan, thumbnail(rec.attention(layer, head), size))
            np.testing.assert_allclose(got[layer, head], expected, atol=1e-6)
    if arch != "bert":
        assert np.isnan(got).any()  # masked blocks are grey
