"""Masking and Compare pages (AppTest): masks, masked attention, right-of-query share, shared colour scale."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from tests.app import vega

pytestmark = pytest.mark.slow

APP = str(Path(__file__).resolve().parents[2] / "app.py")
HEAT = {"query_pos", "key_pos", "weight", "masked"}


def engine(name: str, texts):
    from attnscope.models import run
    from attnscope.ui.common import get_model

    return run(get_model(name, "sdpa"), list(texts))


def open_page(page: str, **texts) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=180)
    at.switch_page(page).run()
    for key, value in texts.items():
        at.sidebar.text_area(key=key).input(value).run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    return at


def test_masking_page_shows_each_mask_and_the_share_to_the_right():
    text = "Masks decide what each token may see."
    at = open_page("ui/masking.py", text=text)
    enc, dec = engine("minilm", [text]), engine("smollm2", [text])
    n_dec = len(dec.tokens[0])
    dec_mask = vega.frame(vega.chart(at, title="smollm2: mask"), {"category"})
    cats = dec_mask.pivot(index="query_pos", columns="key_pos", values="category").to_numpy()
    assert ((cats == "visible") == np.tri(n_dec, dtype=bool)).all()
    enc_mask = vega.frame(vega.chart(at, title="minilm: mask"), {"category"})
    assert (enc_mask["category"] == "visible").all() and len(enc_mask) == len(enc.tokens[0]) ** 2
    heat = vega.frame(vega.chart(at, title="smollm2: attention"), HEAT)
    assert (~vega.grid(heat, "masked").astype(bool) == np.tri(n_dec, dtype=bool)).all()
    assert vega.grid(heat) == pytest.approx(np.tril(dec.attention(0, 0)), abs=1e-6)
    shares = vega.frame(vega.chart(at, title="Share of attention"), {"model", "right_share"})
    by_model = shares.groupby("model")["right_share"]
    assert (by_model.get_group("smollm2") == 0).all() and len(by_model.get_group("smollm2")) == 30
    assert by_model.get_group("minilm").mean() > 0.1 and len(by_model.get_group("minilm")) == 6
    assert any("large negative" in i.value for i in at.info)


def test_masking_page_draws_padding():
    text = "Short one."
    at = open_page("ui/masking.py", text=text)
    at.sidebar.checkbox(key="mask_padded").check().run()
    assert not at.exception and not at.error
    rec = engine("minilm", [text, at.sidebar.text_input(key="mask_longer").value])
    pads = np.flatnonzero(rec.attention_mask[0] == 0)
    assert len(pads) > 0
    mask = vega.frame(vega.chart(at, title="minilm: mask"), {"category"})
    cats = mask.pivot(index="query_pos", columns="key_pos", values="category")
    real = np.flatnonzero(rec.attention_mask[0])
    assert (cats.loc[real, pads] == "masked: padding key").all().all()
    assert (cats.loc[pads] == "padding query (output unused)").all().all()
    assert (cats.loc[real, real] == "visible").all().all()


def test_compare_page_scales_each_map_by_default_and_shares_on_request():
    text = "Two models read the same sentence."
    at = open_page("ui/compare.py", text=text)
    assert at.radio(key="cmp_scale").value == "each its own scale"
    recs = {"a": engine("minilm", [text]), "b": engine("smollm2", [text])}
    for rec in recs.values():
        found = vega.chart(at, title=f"{rec.spec.name}: layer")
        scale = [
            layer for layer in found["spec"]["layer"] if "color" in layer.get("encoding", {}) and "scale" in layer["encoding"]["color"]
        ]
        own = float(rec.attention(0, 0).max())
        assert scale[0]["encoding"]["color"]["scale"]["domain"] == [0.0, pytest.approx(own, rel=1e-5)]
    assert any("its own colour scale" in c.value for c in at.caption)


def test_compare_page_shares_one_colour_scale():
    text = "Two models read the same sentence."
    at = open_page("ui/compare.py", text=text)
    at.radio(key="cmp_scale").set_value("shared scale").run()
    recs = {"a": engine("minilm", [text]), "b": engine("smollm2", [text])}
    at.slider(key="cmp_b_layer").set_value(4).run()
    at.slider(key="cmp_b_head").set_value(2).run()
    expected = {"a": recs["a"].attention(0, 0), "b": recs["b"].attention(4, 2)}
    top = max(float(m.max()) for m in expected.values())
    for tag, rec in recs.items():
        found = vega.chart(at, title=f"{rec.spec.name}: layer")
        heat = vega.frame(found, HEAT)
        weights = expected[tag] if tag == "a" else np.tril(expected[tag])
        assert vega.grid(heat) == pytest.approx(weights, abs=1e-6)
        assert heat.sort_values("key_pos").drop_duplicates("key_pos")["key_token"].tolist() == rec.tokens[0]
        scale = [
            layer for layer in found["spec"]["layer"] if "color" in layer.get("encoding", {}) and "scale" in layer["encoding"]["color"]
        ]
        assert scale[0]["encoding"]["color"]["scale"]["domain"] == [0.0, pytest.approx(top, rel=1e-5)]
    assert any(f"0 to {top:.3f}" in c.value for c in at.caption)  # the shared maximum is stated
    profile = vega.frame(vega.chart(at, title="entropy"), {"model", "depth", "value"})
    stats = recs["b"].head_stats()
    smol = profile[profile["model"] == "smollm2"].sort_values("layer")
    assert smol["value"].to_numpy() == pytest.approx(stats.groupby("layer")["entropy"].mean().to_numpy(), rel=1e-4)
    assert smol["depth"].iloc[-1] == 1.0 and profile[profile["model"] == "minilm"]["depth"].max() == 1.0
