"""Encoder-decoder models on the Masking and Heads pages (AppTest): the decoder's causal mask and its
heads' statistics come from the engine's decoder self-attention, the encoder's from its encoder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from tests.app import vega

pytestmark = pytest.mark.slow

APP = str(Path(__file__).resolve().parents[2] / "app.py")
OTHER = "other (HF id or local path)…"
TARGET = "Le chat court."


def engine(path: str, text: str):
    from attnscope.models import load, run

    return run(load(path), [text], target=[TARGET])


def test_masking_page_shows_an_encoder_decoders_decoder_mask(t5_dir):
    at = AppTest.from_file(APP, default_timeout=180)
    at.switch_page("ui/masking.py").run()
    at.sidebar.selectbox(key="mask_decoder").set_value(OTHER).run()
    at.sidebar.text_input(key="mask_decoder_typed").input(t5_dir).run()
    at.text_input(key="mask_Decoder_target").input(TARGET).run()
    at.radio(key="mask_Decoder_kind").set_value("decoder").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    rec = engine(t5_dir, at.sidebar.text_area(key="text").value)
    name = rec.spec.name
    n = len(rec.target_tokens[0])
    mask = vega.frame(vega.chart(at, title=f"{name}: decoder mask"), {"category"})
    cats = mask.pivot(index="query_pos", columns="key_pos", values="category").to_numpy()
    assert cats.shape == (n, n) and ((cats == "visible") == np.tri(n, dtype=bool)).all()
    heat = vega.frame(vega.chart(at, title=f"{name}: decoder attention"), {"query_pos", "key_pos", "weight", "masked"})
    assert vega.grid(heat) == pytest.approx(np.tril(rec.decoder.attention(0, 0)), abs=1e-6)
    shares = vega.frame(vega.chart(at, title="Share of attention"), {"model", "right_share"})
    assert (shares[shares["model"] == f"{name} (decoder)"]["right_share"] == 0).all()


def test_heads_page_classifies_the_decoders_heads(t5_dir):
    from attnscope.analysis.head_types import HEAD_TYPES, classify_heads

    at = AppTest.from_file(APP, default_timeout=300)
    at.switch_page("ui/heads.py").run()
    at.sidebar.selectbox(key="model").set_value(OTHER).run()
    at.sidebar.text_input(key="model_typed").input(t5_dir).run()
    at.sidebar.text_input(key="heads_target").input(TARGET).run()
    at.radio(key="heads_kind").set_value("decoder").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    rec = engine(t5_dir, at.sidebar.text_area(key="text").value)
    expected = classify_heads(rec.decoder.head_stats(), kind="decoder", n_tokens=len(rec.target_tokens[0]))
    metrics = {m.label: m.value for m in at.metric}
    for kind in HEAD_TYPES:
        assert metrics[kind.replace("_", "-")] == str(int(expected[f"is_{kind}"].sum()))
    table = at.dataframe[0].value.sort_values(["layer", "head"])
    assert np.allclose(table["entropy"], expected.sort_values(["layer", "head"])["entropy"], atol=1e-6)
    assert len(table) == rec.spec.n_decoder_layers * rec.spec.n_heads
    assert any("Rollout follows one stack" in i.value for i in at.info)
