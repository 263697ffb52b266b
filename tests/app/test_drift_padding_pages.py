"""Drift and Padding pages under Streamlit's AppTest: no exception, charts show the analysis values, exports exist."""

from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from attnscope.analysis.drift import DEFAULT_CONTEXTS, depth_frame, drift, parse_contexts, pca_frame, similarity_frame
from attnscope.analysis.padding import padding_study
from attnscope.models import run
from attnscope.ui.workspace import DEFAULT_TEXT
from tests.app import vega

pytestmark = pytest.mark.slow

APP = str(Path(__file__).resolve().parents[2] / "app.py")


def chart_frames(at):
    """Every dataset of every Vega-Lite chart on the page (inline data first), as DataFrames, in page order."""
    return [frame for found in vega.charts(at) for frame in found["frames"]]


def find(frames, columns):
    hits = [f for f in frames if set(columns) <= set(f.columns)]
    assert hits, f"no chart carries columns {columns}"
    return hits[0]


def buttons(at):
    return [b.proto.label for b in at.get("download_button")]


@pytest.fixture(scope="module")
def drift_page():
    at = AppTest.from_file(APP, default_timeout=180)
    at.switch_page("ui/drift.py").run()
    return at


def test_drift_page_shows_the_analysis(drift_page, minilm):
    at = drift_page
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    typed = at.sidebar.text_area(key="drift_contexts").value
    assert typed.splitlines() == [DEFAULT_TEXT, *DEFAULT_CONTEXTS]  # the workspace's text holds "mouse": it comes first
    contexts, senses = parse_contexts(typed)
    result = drift(run(minilm, contexts), minilm.tokenizer, "mouse", senses)
    frames = chart_frames(at)
    top = result.n_layers - 1
    shown = find(frames, ["context_a", "context_b", "cosine"]).sort_values(["context_a", "context_b"])
    expected = similarity_frame(result, [top]).sort_values(["context_a", "context_b"])
    assert np.allclose(shown["cosine"].to_numpy(), expected["cosine"].to_numpy(), atol=1e-6)
    assert set(shown["layer"]) == {top}
    pca = find(frames, ["pc1", "pc2", "sense"])
    assert np.allclose(pca["pc1"].to_numpy(), pca_frame(result, top)["pc1"].to_numpy(), atol=1e-4)
    depth = depth_frame(result)
    within = find(frames, ["pairs", "mean_cosine"])
    shown_within = within[within.pairs == "within_sense"].sort_values("layer")["mean_cosine"].to_numpy()
    assert np.allclose(shown_within, depth["within_sense"].to_numpy(), atol=1e-6)
    baseline = find(frames, ["measure", "value"])
    shown_baseline = baseline[baseline.measure == "anisotropy_baseline"].sort_values("layer")["value"].to_numpy()
    assert np.allclose(shown_baseline, depth["anisotropy_baseline"].to_numpy(), atol=1e-6)
    labels = buttons(at)
    assert labels.count("PNG") == 3 and labels.count("SVG") == 3 and labels.count("HTML") == 3 and labels.count("CSV") == 3


def test_drift_page_layer_slider_and_missing_word(drift_page, minilm):
    at = drift_page
    at.slider(key="drift_layer").set_value(0).run()
    assert not at.exception
    shown = find(chart_frames(at), ["context_a", "cosine"])
    assert set(shown["layer"]) == {0}
    at.sidebar.text_area(key="drift_contexts").set_value("The mouse ran.\nClick the button.").run()
    assert not at.exception
    assert any("context 2: 'Click the button.'" in e.value for e in at.error)
    assert at.sidebar.text_input(key="drift_word").value == "mouse"  # the rest of the page stays


def test_padding_page_shows_the_analysis(minilm):
    at = AppTest.from_file(APP, default_timeout=240)
    at.switch_page("ui/padding.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    texts = at.sidebar.text_area(key="padding_texts").value.splitlines()
    assert texts[0] == DEFAULT_TEXT and len(texts) == 3  # the workspace's text, then the page's examples of other lengths
    study = padding_study(lambda t, side, mask: run(minilm, t, padding_side=side, attention_mask=mask), texts)
    expected = study.frame().sort_values(["padding_side", "attention_mask", "layer"])
    shown = find(chart_frames(at), ["max_relative_diff", "pad_attention_mass"]).sort_values(["padding_side", "attention_mask", "layer"])
    for column in ("max_relative_diff", "max_hidden_diff", "pad_attention_mass"):
        assert np.allclose(shown[column].to_numpy(), expected[column].to_numpy(), rtol=1e-3, atol=1e-9), column
    frames = vega.chart(at, title="pads in red")["frames"]
    heat = next(f for f in frames if "weight" in f.columns and "query_is_pad" not in f.columns)  # every cell
    pad_cells = next(f for f in frames if "query_is_pad" in f.columns)  # the red pad markers
    setting = study.setting("left", True)
    weights = setting.record.attention(0, 0, 0, include_padding=True)
    n = weights.shape[0]
    n_pad = int((setting.record.attention_mask[0] == 0).sum())
    assert n_pad > 0 and len(heat) == n * n
    assert len(pad_cells) == n * n - (n - n_pad) ** 2  # a cell is marked when its query or key is a pad
    assert (pad_cells["query_is_pad"] | pad_cells["key_is_pad"]).all()
    heat = heat.sort_values(["query_pos", "key_pos"])
    unmasked = ~heat["masked"].to_numpy()
    assert np.allclose(heat["weight"].to_numpy()[unmasked], weights.ravel()[unmasked], atol=1e-6)
    assert len(at.success) == 2 and len(at.warning) == 2  # with mask: match; without: diverge (encoder)
    labels = buttons(at)
    assert "JSON (every setting and layer)" in labels
    assert labels.count("PNG") == 4 and labels.count("CSV") == 4
