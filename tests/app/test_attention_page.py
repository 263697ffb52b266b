"""Attention page (AppTest): the charts carry the engine's values; changing the head never re-runs the model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from tests.app import vega

pytestmark = pytest.mark.slow

APP = str(Path(__file__).resolve().parents[2] / "app.py")
HEAT = {"query_pos", "key_pos", "weight", "masked"}


@pytest.fixture
def forward_calls(monkeypatch):
    """Count calls of the engine's ``run`` made by the dashboard's cached ``get_record``."""
    import attnscope.ui.common

    calls = []
    real = attnscope.ui.common.run

    def counting(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(attnscope.ui.common, "run", counting)
    return calls


def engine(name: str, text: str):
    """The expected values: the engine's own record (same cached model object, fresh run)."""
    from attnscope.models import run
    from attnscope.ui.common import get_model

    return run(get_model(name, "sdpa"), [text])


def open_page(text: str, model: str = "minilm") -> AppTest:
    at = AppTest.from_file(APP, default_timeout=180).run()
    if model != "minilm":
        at.sidebar.selectbox(key="model").set_value(model).run()
    at.sidebar.text_area(key="text").input(text).run()
    assert not at.exception, at.exception
    return at


def test_heatmap_is_the_engines_map_and_head_switch_does_not_rerun(forward_calls):
    text = "The mouse ran under the table when the cat came in."  # unique to this test: one cache miss
    at = open_page(text)
    runs = len(forward_calls)
    assert runs >= 1
    at.slider(key="layer").set_value(2).run()
    at.slider(key="head").set_value(3).run()
    assert not at.exception and not at.error
    rec = engine("minilm", text)
    shown = vega.frame(vega.chart(at, key="heatmap_chart"), HEAT)
    assert vega.grid(shown) == pytest.approx(rec.attention(2, 3), abs=1e-6)
    assert shown.sort_values("key_pos").drop_duplicates("key_pos")["key_token"].tolist() == rec.tokens[0]
    at.slider(key="head").set_value(7).run()
    at.slider(key="layer").set_value(5).run()
    at.selectbox(key="token").set_value(4).run()
    assert len(forward_calls) == runs  # layer, head and token changes reuse the cached record
    bars = vega.chart(at, columns={"direction", "pos", "weight"})
    data = {f["direction"].iloc[0]: f.sort_values("pos")["weight"].to_numpy() for f in bars["frames"]}
    expected = rec.attention(5, 7)
    assert data["attends to"] == pytest.approx(expected[4], abs=1e-6)
    assert data["attended by"] == pytest.approx(expected[:, 4], abs=1e-6)


def test_gqa_model_groups_heads_and_masks_the_future(forward_calls):
    text = "Grouped query attention shares keys."
    at = open_page(text, model="smollm2")
    assert not at.error
    rec = engine("smollm2", text)
    overview = vega.frame(vega.chart(at, key="overview"), {"layer", "head", "kv_head"})
    assert len(overview) == 30 * 9
    assert (overview["kv_head"] == overview["head"] // 3).all()
    assert {"entropy", "first_token_mass"} <= set(overview.columns)
    heat = vega.frame(vega.chart(at, key="heatmap_chart"), HEAT)
    allowed = ~vega.grid(heat, "masked").astype(bool)
    assert (allowed == np.tri(len(rec.tokens[0]), dtype=bool)).all()
    assert vega.grid(heat) == pytest.approx(np.where(allowed, rec.attention(0, 0), 0.0), abs=1e-6)
    assert any("GQA" in c.value for c in at.caption)


def test_long_input_aggregates_with_a_zoom_window_and_hides_bertviz(forward_calls):
    text = " ".join(["The quick brown fox jumps over the lazy dog."] * 20)  # ~200 tokens
    at = open_page(text)
    rec = engine("minilm", text)
    n = len(rec.tokens[0])
    assert n > 128
    heat = vega.frame(vega.chart(at, key="heatmap_chart"), HEAT)
    assert heat["query_pos"].nunique() <= 128 < n
    assert any("blocks" in c.value and "mass" in c.value for c in at.caption)
    assert any("bertviz views hidden" in i.value for i in at.info)
    at.select_slider(key="window").set_value((10, 60)).run()
    heat = vega.frame(vega.chart(at, key="heatmap_chart"), HEAT)
    assert vega.grid(heat) == pytest.approx(rec.attention(0, 0)[10:60, 10:60], abs=1e-6)


def test_short_input_embeds_bertviz(forward_calls):
    at = open_page("Short text for bertviz.")
    frames = at.get("iframe")
    assert len(frames) == 2  # head view and model view
    assert "bertviz" in frames[0].proto.srcdoc or "bertviz" in str(frames[0].proto)


def test_bad_model_shows_one_line_and_keeps_the_page():
    at = AppTest.from_file(APP, default_timeout=180).run()
    at.sidebar.selectbox(key="model").set_value("other (HF id or local path)…").run()
    at.sidebar.text_input(key="model_typed").input("/no/such/model-dir").run()
    assert not at.exception
    assert len(at.error) == 1 and at.title[0].value == "Attention"


def test_encoder_decoder_model_shows_cross_attention_and_its_check(t5_dir):
    from attnscope.models import load, run

    at = AppTest.from_file(APP, default_timeout=180).run()
    at.sidebar.selectbox(key="model").set_value("other (HF id or local path)…").run()
    at.sidebar.text_input(key="model_typed").input(t5_dir).run()
    at.sidebar.text_input(key="target").input("Le chat court.").run()
    at.radio(key="attn_kind").set_value("cross").run()
    assert not at.exception and not at.error
    rec = run(load(t5_dir), [at.sidebar.text_area(key="text").value], target=["Le chat court."])
    shown = vega.frame(vega.chart(at, key="heatmap_chart"), HEAT)
    assert vega.grid(shown).shape == (len(rec.target_tokens[0]), len(rec.tokens[0]))
    assert vega.grid(shown) == pytest.approx(rec.cross.attention(0, 0), abs=1e-6)
    assert any("exact: max |Δ|" in c.value for c in at.caption)  # the load-time check is on screen


def test_norm_switch_shows_the_value_weighted_norm_map():
    text = "The mouse hid while the cat slept on the mat."
    at = open_page(text)
    at.radio(key="attn_measure").set_value("norm").run()
    at.slider(key="layer").set_value(1).run()
    at.slider(key="head").set_value(4).run()
    assert not at.exception and not at.error
    from attnscope.models import run
    from attnscope.ui.common import get_model

    expected = run(get_model("minilm", "auto"), [text], values=True).attention(1, 4, measure="norm")
    heat = vega.frame(vega.chart(at, key="heatmap_chart"), HEAT)
    assert vega.grid(heat) == pytest.approx(expected, abs=1e-5)
    assert any("Kobayashi" in c.value for c in at.caption)
