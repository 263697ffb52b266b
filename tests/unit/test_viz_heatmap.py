"""viz.heatmap: the long-form frame, block aggregation, the chart and its export."""

from __future__ import annotations

import json
import struct
import xml.etree.ElementTree as ET

import altair as alt
import numpy as np
import pytest

from attnscope.viz.export import chart_bytes
from attnscope.viz.heatmap import COLUMNS, attention_frame, block_size, display_token, heatmap, pool, token_bars, token_frame


def softmax_rows(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.fixture
def small():
    rng = np.random.default_rng(0)
    weights = softmax_rows(rng.normal(size=(5, 5))).astype(np.float32)  # [q, k]
    tokens = ["[CLS]", "the", "cat", "the", "[SEP]"]  # "the" twice: positions keep them apart
    return weights, tokens


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])  # IHDR
    return width, height


def test_frame_holds_every_cell_with_its_tokens(small):
    weights, tokens = small
    frame = attention_frame(weights, tokens, layer=2, head=3)
    assert list(frame.columns[: len(COLUMNS)]) == COLUMNS
    assert len(frame) == 25 and frame.attrs["block"] == 1
    for row in frame.itertuples():
        assert row.weight == pytest.approx(weights[row.query_pos, row.key_pos])
        assert row.query_token == tokens[row.query_pos] and row.key_token == tokens[row.key_pos]
    assert set(frame["layer"]) == {2} and set(frame["head"]) == {3}
    assert not frame["masked"].any()


def test_frame_marks_masked_cells(small):
    weights, tokens = small
    allowed = np.tri(5, dtype=bool)
    frame = attention_frame(weights, tokens, allowed=allowed)
    masked = frame.set_index(["query_pos", "key_pos"])["masked"]
    assert masked[(1, 3)] and not masked[(3, 1)] and not masked[(2, 2)]
    assert int(frame["masked"].sum()) == 10  # strictly upper triangle of 5x5


def test_large_map_aggregates_into_blocks_and_names_the_reduction():
    rng = np.random.default_rng(1)
    n = 300
    weights = softmax_rows(rng.normal(size=(n, n)))
    tokens = [f"t{i}" for i in range(n)]
    frame = attention_frame(weights, tokens, max_cells=100 * 100)
    assert frame.attrs["block"] == 3 and len(frame) == 100 * 100
    assert "3x3-token blocks" in frame.attrs["reduction"] and "mass" in frame.attrs["reduction"]
    # mass keeps rows summing to 1
    assert frame.groupby("query_pos")["weight"].sum().to_numpy() == pytest.approx(np.ones(100), abs=1e-5)
    # block (q 6..8, k 12..14) by hand
    cell = frame[(frame["query_pos"] == 6) & (frame["key_pos"] == 12)].iloc[0]
    assert cell["weight"] == pytest.approx(weights[6:9, 12:15].sum(1).mean(), rel=1e-5)
    assert (cell["query_end"], cell["key_end"]) == (8, 14)
    mean = attention_frame(weights, tokens, max_cells=100 * 100, reduce="mean")
    assert mean.iloc[0]["weight"] == pytest.approx(weights[0:3, 0:3].mean(), rel=1e-5)
    top = attention_frame(weights, tokens, max_cells=100 * 100, reduce="max")
    assert top.iloc[1]["weight"] == pytest.approx(weights[0:3, 3:6].max(), rel=1e-6)


def test_block_size_and_ragged_pool():
    assert block_size(2048, 2048, 128 * 128) == 16
    assert block_size(10, 10, 100) == 1
    weights = np.arange(25, dtype=np.float64).reshape(5, 5)
    pooled = pool(weights, 2, "mean")  # last block is 1 wide
    assert pooled.shape == (3, 3)
    assert pooled[2, 2] == 24 and pooled[0, 2] == pytest.approx(np.mean([4, 9]))
    assert pool(weights, 2, "max")[1, 1] == 18


def test_masked_blocks_ignore_forbidden_cells():
    n = 8
    weights = softmax_rows(np.where(np.tri(n, dtype=bool), 0.0, -np.inf))  # causal uniform
    frame = attention_frame(weights, [str(i) for i in range(n)], allowed=np.tri(n, dtype=bool), max_cells=16, reduce="mean")
    assert frame.attrs["block"] == 2
    upper = frame[(frame["query_pos"] == 0) & (frame["key_pos"] == 4)].iloc[0]
    assert upper["masked"]  # every cell of the block is masked
    diag = frame[(frame["query_pos"] == 2) & (frame["key_pos"] == 2)].iloc[0]
    assert not diag["masked"]
    assert diag["weight"] == pytest.approx(np.mean([weights[2, 2], weights[3, 2], weights[3, 3]]))  # (2,3) is masked


def test_window_zooms_with_true_positions():
    n = 40
    weights = softmax_rows(np.random.default_rng(2).normal(size=(n, n)))
    frame = attention_frame(weights, [f"w{i}" for i in range(n)], window=(10, 20))
    assert frame["query_pos"].min() == 10 and frame["key_pos"].max() == 19
    cell = frame[(frame["query_pos"] == 12) & (frame["key_pos"] == 15)].iloc[0]
    assert cell["weight"] == pytest.approx(weights[12, 15]) and cell["key_token"] == "w15"
    with pytest.raises(ValueError, match="window"):
        attention_frame(weights, [f"w{i}" for i in range(n)], window=(30, 50))


def test_bad_shapes_say_what_to_pass(small):
    weights, tokens = small
    with pytest.raises(ValueError, match="do not match"):
        attention_frame(weights, tokens[:4])
    with pytest.raises(ValueError, match="reduction"):
        pool(weights, 2, "median")


def test_chart_round_trips_and_carries_tokens(small):
    weights, tokens = small
    chart = heatmap(attention_frame(weights, tokens, layer=0, head=1), select="cell_pick")
    spec = chart.to_dict()
    assert alt.LayerChart.from_dict(spec).to_dict() == spec
    text = json.dumps(spec)
    assert "[CLS]" in text and "cell_pick" in text
    scale = spec["layer"][-1]["encoding"]["color"]["scale"]
    assert scale["domain"] == [0.0, pytest.approx(float(weights.max()))]


def test_png_and_svg_export_have_the_chart_size(small):
    weights, tokens = small
    chart = heatmap(attention_frame(weights, tokens), size=300)
    width, height = png_size(chart_bytes(chart, "png", scale=2.0))
    # plot area 300 px plus axes, title and legend, at 2x
    assert 600 < width < 2 * 300 + 400 and 600 < height < 2 * 300 + 400
    svg = ET.fromstring(chart_bytes(chart, "svg"))
    assert svg.tag.endswith("svg")
    assert float(svg.get("width")) == pytest.approx(width / 2, abs=1) and float(svg.get("height")) == pytest.approx(height / 2, abs=1)


def test_token_frame_is_row_and_column(small):
    weights, tokens = small
    frame = token_frame(weights, tokens, 2)
    out = frame[frame["direction"] == "attends to"]["weight"].to_numpy()
    into = frame[frame["direction"] == "attended by"]["weight"].to_numpy()
    assert out == pytest.approx(weights[2]) and into == pytest.approx(weights[:, 2])
    spec = token_bars(frame).to_dict()
    assert alt.HConcatChart.from_dict(spec).to_dict() == spec
    with pytest.raises(ValueError, match="out of range"):
        token_frame(weights, tokens, 5)


def test_display_token():
    assert display_token("Ġcat") == "cat" and display_token("▁the") == "the"
    assert display_token("##ing") == "##ing" and display_token("Ġ") == "␣" and display_token("Ċ") == "↵"


def test_charts_compose_when_not_standalone(small):
    weights, tokens = small
    frame = attention_frame(weights, tokens)
    with pytest.raises(TypeError, match="autosize"):
        alt.hconcat(heatmap(frame), heatmap(frame))
    pair = alt.hconcat(heatmap(frame, standalone=False), heatmap(frame, standalone=False, legend=False))
    assert len(pair.to_dict()["hconcat"]) == 2


def test_labels_are_drawn_beside_the_raw_tokens_and_the_picked_row_is_outlined():
    w = np.full((3, 3), 1 / 3, dtype=np.float32)
    frame = attention_frame(w, ["Le", "Ġchat", "Ã©"], labels_q=["Le", "chat", "é"])
    assert set(frame["query_token"]) == {"Le", "Ġchat", "Ã©"} and set(frame["key_label"]) == {"Le", "chat", "é"}
    spec = heatmap(frame, highlight=1).to_dict()
    expr = spec["layer"][0]["encoding"]["x"]["axis"]["labelExpr"]
    assert json.loads(expr.removesuffix("[datum.value]")) == {"0": "Le", "1": "chat", "2": "é"}  # the labels, not the pieces
    outlined = [layer for layer in spec["layer"] if layer.get("mark", {}).get("stroke") == "#e4572e"]
    assert len(outlined) == 1
    assert spec["datasets"][outlined[0]["data"]["name"]] == [{"query_pos": 1}]
    bars = token_frame(w, ["Le", "Ġchat", "Ã©"], 2, labels=["Le", "chat", "é"])
    assert bars.attrs["token"] == "é" and list(bars["label"][:3]) == ["Le", "chat", "é"]
    with pytest.raises(ValueError, match="labels"):
        attention_frame(w, ["a", "b", "c"], labels_q=["a"])
