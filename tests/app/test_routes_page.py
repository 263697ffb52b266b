"""Routes page (AppTest): the drawn lines carry the engine's importances, the threshold re-draws without a new
forward, a head's writes and its link to the Attention page, and bad input in one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from tests.app import vega

pytestmark = pytest.mark.slow

APP = str(Path(__file__).resolve().parents[2] / "app.py")
TEXT = "The capital of France is Paris, and the capital of Italy is"
LINES = {"edge_id", "importance", "flow", "kind"}


def open_page(model: str = "smollm2", text: str = TEXT) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=300)
    at.switch_page("ui/routes.py").run()
    at.sidebar.selectbox(key="model").set_value(model).run()
    at.sidebar.text_area(key="text").input(text).run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    return at


def engine(model: str, text: str, threshold: float):
    from attnscope.models.routes import routes
    from attnscope.ui.common import get_model

    return routes(get_model(model, "auto"), text, threshold=threshold)


def test_lines_are_the_engines_edges_and_the_threshold_redraws_without_a_forward(monkeypatch):
    import attnscope.ui.common

    at = open_page()
    expected = engine("smollm2", TEXT, 0.04)
    lines = vega.frame(vega.chart(at, key="routes_chart"), LINES)
    # every kept edge is on a line; heads joining the same two nodes share one, with their importances summed
    assert lines["importance"].sum() == pytest.approx(expected.edges["importance"].sum(), rel=1e-4)
    residual = lines[lines["kind"] == "residual"]
    assert len(residual) == int((expected.edges["kind"] == "residual").sum())
    assert set(lines["layer"].astype(int)) <= set(range(30)) and lines["edge_id"].is_unique
    assert at.metric[0].value == str(len(expected.nodes))
    calls = []
    real = attnscope.ui.common.run
    monkeypatch.setattr(attnscope.ui.common, "run", lambda *a, **k: calls.append(k) or real(*a, **k))
    at.slider(key="routes_threshold").set_value(0.1).run()
    assert not at.exception and not calls  # the record is reused: no new forward for a new threshold
    fewer = vega.frame(vega.chart(at, key="routes_chart"), LINES)
    assert len(fewer) < len(lines)
    assert at.metric[0].value == str(len(engine("smollm2", TEXT, 0.1).nodes))


def test_a_head_shows_what_it_writes_and_opens_the_attention_page():
    from attnscope.models.routes import decompose, head_writes
    from attnscope.ui.common import get_model, get_record

    at = open_page()
    layer, head, kind = at.selectbox(key="routes_head").value
    assert kind == "self"
    lm = get_model("smollm2", "auto")
    split = decompose(lm, get_record("smollm2", "auto", (TEXT,), values=True))
    writes = head_writes(lm, split, layer, head, len(split.tokens) - 1)
    shown = at.dataframe[1].value  # promoted tokens
    assert list(shown["label"]) == list(writes[writes["direction"] == "promotes"]["label"])  # decoded, not "Ġ..."
    assert "token" not in shown.columns
    np.testing.assert_allclose(shown["logit"], writes[writes["direction"] == "promotes"]["logit"], rtol=1e-5)
    at.button(key="routes_open_attention").click().run()
    assert not at.exception
    assert at.session_state["layer"] == layer and at.session_state["head"] == head
    assert at.session_state["token"] == len(split.tokens) - 1
    assert at.slider(key="layer").value == layer  # now on the Attention page


def test_an_encoder_and_bad_input():
    at = open_page("minilm", "The mouse ran up the clock.")
    assert vega.frame(vega.chart(at, key="routes_chart"), LINES)["importance"].gt(0).all()
    assert any("unembedding" in c.value for c in at.caption)  # no "what it writes" for an encoder
    at.sidebar.text_area(key="text").input("   ").run()
    assert not at.exception and at.error


def test_an_encoder_decoder_shows_cross_attention_lines_and_opens_them(t5_dir):
    from attnscope.models import load
    from attnscope.models.routes import routes

    at = AppTest.from_file(APP, default_timeout=300)
    at.switch_page("ui/routes.py").run()
    at.sidebar.selectbox(key="model").set_value("other (HF id or local path)…").run()
    at.sidebar.text_input(key="model_typed").input(t5_dir).run()
    at.sidebar.text_input(key="routes_target").input("Le chat court.").run()
    at.slider(key="routes_threshold").set_value(0.0).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    lines = vega.frame(vega.chart(at, key="routes_chart"), LINES)
    expected = routes(load(t5_dir), at.sidebar.text_area(key="text").value, threshold=0.0, target="Le chat court.")
    assert lines["importance"].sum() == pytest.approx(expected.edges["importance"].sum(), rel=1e-4)
    assert (lines["kind"] == "cross").any()
    scores = expected.head_scores()
    row = scores[scores["from_stack"] == "encoder"].iloc[0]
    choice = (int(row["layer"]), int(row["head"]), "cross")
    at.selectbox(key="routes_head").set_value(choice).run()
    assert not at.exception and any("unembedding" in c.value for c in at.caption)
    at.button(key="routes_open_attention").click().run()
    assert not at.exception, at.exception
    assert (at.session_state["attn_kind"], at.session_state["layer"], at.session_state["head"]) == ("cross", *choice[:2])
    assert at.radio(key="attn_kind").value == "cross"  # the Attention page opened on cross-attention


def test_no_head_edge_above_the_threshold_says_so_without_a_traceback():
    # SmolLM2 on its default text keeps no head edge at τ = 0.3: the page said so only after a pandas TypeError
    at = AppTest.from_file(APP, default_timeout=300)
    at.switch_page("ui/routes.py").run()
    at.slider(key="routes_threshold").set_value(0.3).run()
    assert not at.exception, at.exception
    assert any("No head edge is above the threshold" in i.value for i in at.info)
    lines = vega.frame(vega.chart(at, key="routes_chart"), LINES)
    assert len(lines) and set(lines["kind"]) <= {"residual", "mlp"}
