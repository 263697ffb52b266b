"""Generate page (AppTest): the running text, candidates and logit lens carry the engine's values."""

from __future__ import annotations

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from tests.app import vega

pytestmark = pytest.mark.slow

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def page():
    at = AppTest.from_file("../../app.py", default_timeout=300)
    at.run()
    at.switch_page("ui/generate.py")
    at.run()
    at.sidebar.selectbox(key="model").set_value("smollm2").run()  # the workspace's model: a decoder
    at.sidebar.text_area(key="gen_prompt").input(PROMPT).run()
    at.sidebar.number_input(key="gen_new").set_value(6).run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    return at


def engine():
    from attnscope.models.generation import generate
    from attnscope.ui.common import get_model

    return generate(get_model("smollm2", "auto"), PROMPT, max_new_tokens=6)


def test_step_colours_the_text_by_that_tokens_attention(page):
    rec = engine()
    gen = rec.generation
    page.slider(key="gen_step").set_value(4).run()
    page.radio(key="gen_source").set_value("head").run()
    page.select_slider(key="gen_layer").set_value(5).run()
    page.slider(key="gen_head").set_value(2).run()
    assert not page.exception and not page.error
    frame = vega.chart(page, key="gen_text")["frames"][0].sort_values("position")
    position = int(gen.positions[3])
    assert len(frame) == position + 1  # the text up to the selected token
    expected = rec.attention(5, 2)[position, : position + 1]
    np.testing.assert_allclose(frame["weight"].to_numpy(), expected, atol=1e-6)
    assert frame["selected"].to_numpy().nonzero()[0].tolist() == [position]
    assert frame["generated"].to_numpy().nonzero()[0].tolist() == list(gen.positions[:4])


def test_candidates_and_lens_are_the_models(page):
    rec = engine()
    gen = rec.generation
    page.slider(key="gen_step").set_value(2).run()
    bars = vega.chart(page, key=None, columns={"rank", "prob", "chosen"})["frames"][0].sort_values("rank")
    np.testing.assert_allclose(bars["prob"].to_numpy(), gen.top_probs[1], atol=1e-6)
    assert bars.loc[bars["chosen"], "token"].tolist() == [gen.tokens[1]]
    lens = vega.chart(page, columns={"layer", "top_prob", "hit"})["frames"][0]
    top = lens[lens["layer"] == rec.spec.n_layers].sort_values("position")
    # greedy: the last layer's top token at the position before a generated token is that token
    before = top[top["position"] == gen.positions[1] - 1]
    assert before["top_token"].tolist() == [gen.tokens[1]] and bool(before["hit"].iloc[0])


def test_an_encoder_gets_one_line(page):
    page.sidebar.selectbox(key="model").set_value("minilm").run()
    assert not page.error and any("needs a decoder" in w.value for w in page.warning)  # said before anything runs
    assert not page.get("vega_lite_chart")
    page.sidebar.selectbox(key="model").set_value("smollm2").run()
    assert not page.error
