"""One workspace (issue 32): a text typed once shows on every page with its model; the URL reproduces the view;
links land on the head they name; boxes over tokens always label this text's tokens."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from tests.app import vega

pytestmark = pytest.mark.slow

APP = str(Path(__file__).resolve().parents[2] / "app.py")
TEXT = "The cat chased the mouse into the garden."  # holds Drift's word, so Drift starts from it too
PAGES = ["attention", "masking", "compare", "heads", "explain", "routes", "generate", "drift", "padding", "backends", "lab", "anatomy"]


def shown_text(at, page: str) -> str:
    """The workspace's text as the page shows it: its Text box, or the first line of its own box."""
    if page == "padding":
        return at.sidebar.text_area(key="padding_texts").value.splitlines()[0]
    if page == "generate":
        return at.sidebar.text_area(key="gen_prompt").value
    return at.sidebar.text_area(key="text").value


def test_a_text_typed_on_attention_shows_on_every_page_with_its_model():
    at = AppTest.from_file(APP, default_timeout=600).run()
    at.sidebar.selectbox(key="model").set_value("smollm2").run()
    at.sidebar.text_area(key="text").input(TEXT).run()
    for page in PAGES:
        at.switch_page(f"ui/{page}.py").run()
        assert not at.exception, (page, [e.value for e in at.exception])
        assert at.sidebar.selectbox(key="model").value == "smollm2", page
        assert shown_text(at, page) == TEXT, page
        assert at.query_params["model"] == "smollm2" and at.query_params["text"] == TEXT, (page, at.query_params)
        if page == "drift":  # Drift's own box of contexts starts from the workspace's text
            assert at.sidebar.text_area(key="drift_contexts").value.splitlines()[0] == TEXT
    at.switch_page("ui/attention.py").run()  # and back: still that model and text
    assert at.sidebar.selectbox(key="model").value == "smollm2" and at.sidebar.text_area(key="text").value == TEXT


def test_the_url_reproduces_the_view():
    at = AppTest.from_file(APP, default_timeout=600)
    at.query_params.update({"model": "smollm2", "text": TEXT, "layer": "3", "head": "5", "token": "2"})
    at.run()
    assert not at.exception and not at.warning, [w.value for w in at.warning]
    assert at.sidebar.selectbox(key="model").value == "smollm2" and at.sidebar.text_area(key="text").value == TEXT
    assert (at.slider(key="layer").value, at.slider(key="head").value, at.selectbox(key="token").value) == (3, 5, 2)
    assert "Layer 3, head 5" in vega._title(vega.chart(at, key="heatmap_chart")["spec"])
    assert any(c.value.startswith("**smollm2** · decoder") for c in at.caption), [c.value for c in at.caption]


def test_an_out_of_range_head_in_a_link_is_clamped_with_a_warning():
    at = AppTest.from_file(APP, default_timeout=600)
    at.query_params.update({"model": "minilm", "layer": "20", "head": "13"})
    at.run()
    assert not at.exception
    assert (at.slider(key="layer").value, at.slider(key="head").value) == (5, 11)
    warnings = [w.value for w in at.warning]
    assert "Layer 20 does not exist in minilm (layers 0–5): showing layer 5." in warnings, warnings
    assert "Head 13 does not exist in minilm (heads 0–11): showing head 11." in warnings, warnings
    assert at.query_params["head"] == "11"  # the URL now says what is shown


def test_a_click_on_heads_opens_that_head_of_that_model_on_that_text():
    at = AppTest.from_file(APP, default_timeout=600).run()
    at.sidebar.selectbox(key="model").set_value("smollm2").run()
    at.sidebar.text_area(key="text").input(TEXT).run()
    at.switch_page("ui/heads.py").run()
    at.session_state["heads_goto"] = (17, 6)  # what a click on a grid cell stores (past MiniLM's 6 layers)
    at.run()
    assert not at.exception
    assert at.title[0].value == "Attention"
    assert at.sidebar.selectbox(key="model").value == "smollm2" and at.sidebar.text_area(key="text").value == TEXT
    assert (at.slider(key="layer").value, at.slider(key="head").value) == (17, 6)
    assert not at.warning  # nothing was clipped
    assert (at.query_params["layer"], at.query_params["head"]) == ("17", "6")


def test_generate_with_an_encoder_says_so_and_offers_a_decoder():
    at = AppTest.from_file(APP, default_timeout=600).run()
    at.switch_page("ui/generate.py").run()  # the workspace's model is MiniLM, an encoder
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any("encoder" in w.value and "decoder" in w.value for w in at.warning), [w.value for w in at.warning]
    at.button(key="use_decoder").click().run()
    assert at.sidebar.selectbox(key="model").value == "smollm2"
    assert not at.exception and at.sidebar.text_area(key="gen_prompt").value == at.query_params["text"]


def _label(box) -> str:
    return box.options[box.index]


def test_every_token_box_labels_the_drawn_tokens_after_the_text_changes():
    first, second = "The cat chased the mouse into the garden.", "Le chat a mangé la souris hier soir."
    at = AppTest.from_file(APP, default_timeout=600).run()
    at.sidebar.selectbox(key="model").set_value("smollm2").run()
    at.sidebar.text_area(key="text").input(first).run()
    at.selectbox(key="token").set_value(3).run()
    at.sidebar.text_area(key="text").input(second).run()
    assert not at.exception
    drawn = vega.frame(vega.chart(at, key="heatmap_chart"), {"query_pos", "query_label"})
    tokens = drawn.drop_duplicates("query_pos").sort_values("query_pos")["query_label"].tolist()  # as the map labels them
    assert tokens[3] == "mang"  # the user's own text, not the byte-level piece "Ġmang"
    box = at.selectbox(key="token")
    assert box.value == 3 and _label(box) == f"3: {tokens[3]}"
    assert box.proto.set_value  # the label is sent again, so the browser does not keep the first text's

    at.switch_page("ui/routes.py").run()
    assert not at.exception
    box = at.selectbox(key="routes_position")
    routes = vega.chart(at, key="routes_chart")
    assert box.value == 3 and _label(box) == f"3: {tokens[3]!r}"
    assert "routes of position 3" in json.dumps(routes["spec"])
    nodes = vega.frame(routes, {"position", "token", "share"})
    assert set(nodes[nodes["position"] == 3]["token"]) == {tokens[3]}  # the drawn column is the box's token

    at.switch_page("ui/explain.py").run()
    box = at.selectbox(key="explain_position")
    assert box.value == 3 and _label(box) == f"3: after {tokens[3]!r}"

    at.switch_page("ui/heads.py").run()
    box = at.selectbox(key="heads_rollout_token")
    assert box.value == 3 and _label(box) == f"3:{tokens[3]}"

    at.switch_page("ui/padding.py").run()
    box = at.selectbox(key="padding_text")
    assert _label(box) == f"0: {second[:30]}"


def test_switching_to_a_decoder_never_leaves_explains_box_blank():
    at = AppTest.from_file(APP, default_timeout=600).run()
    at.switch_page("ui/explain.py").run()
    assert at.selectbox(key="explain_position").value is None  # MiniLM: the sentence embedding
    at.multiselect(key="explain_methods").set_value(["weights"]).run()
    at.sidebar.selectbox(key="model").set_value("smollm2").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    box = at.selectbox(key="explain_position")
    assert box.value == len(box.options) - 1 and box.index == box.value  # the last position, not an empty box
