"""Explain page and the Attention page's context-mixing measures (AppTest): the charts carry the engine's numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from tests.app import vega

pytestmark = pytest.mark.slow

APP = str(Path(__file__).resolve().parents[2] / "app.py")


def test_attention_page_shows_alti_of_a_layer_and_rolled_out():
    from attnscope.models.contributions import mixing_maps
    from attnscope.ui.common import get_model

    text = "The mouse ran up the clock and down again."
    at = AppTest.from_file(APP, default_timeout=240).run()
    at.sidebar.text_area(key="text").input(text).run()
    at.radio(key="attn_measure").set_value("mix:alti").run()
    at.slider(key="layer").set_value(3).run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    maps, rolled, tokens, what = mixing_maps(get_model("minilm", "auto"), text, "alti")
    shown = vega.chart(at, key="heatmap_chart")["frames"][0]
    n = len(tokens)
    grid = np.zeros((n, n))
    grid[shown["query_pos"], shown["key_pos"]] = shown["weight"]
    np.testing.assert_allclose(grid, maps[3], atol=1e-6)
    assert any("Post-LN" in c.value for c in at.caption)  # what the map includes, for this model
    at.radio(key="attn_scope").set_value("rolled").run()
    shown = vega.chart(at, key="heatmap_chart")["frames"][0]
    grid[shown["query_pos"], shown["key_pos"]] = shown["weight"]
    np.testing.assert_allclose(grid, rolled[3], atol=1e-6)


def test_explain_page_shows_every_methods_attribution_and_the_faithfulness_table():
    from attnscope.models.contributions import contributions
    from attnscope.ui.common import get_model

    text = "The cat sat on the mat. The cat sat on the"
    at = AppTest.from_file(APP, default_timeout=600)
    at.switch_page("ui/explain.py").run()
    at.sidebar.selectbox(key="model").set_value("smollm2").run()
    at.sidebar.text_area(key="text").input(text).run()
    at.multiselect(key="explain_methods").set_value(["weights", "alti", "input_x_gradient"]).run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    lm = get_model("smollm2", "auto")
    strip = vega.chart(at, title="Input-token attribution, by method")["frames"][0]
    for method in ("alti", "input_x_gradient"):
        expected = contributions(lm, text, method).attribution
        got = strip[strip["method"] == method].sort_values("position")["score"].to_numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
    table = at.dataframe[0].value
    assert list(table["method"]) == ["weights", "alti", "input_x_gradient"]
    assert {"comprehensiveness", "sufficiency", "beats_random"} <= set(table.columns)
    assert any("deleted from the input" in c.value for c in at.caption)
    vega.chart(at, columns={"fraction", "comprehensiveness"})  # the deletion curves are drawn


def test_explain_page_says_in_one_line_what_is_wrong():
    at = AppTest.from_file(APP, default_timeout=240)
    at.switch_page("ui/explain.py").run()
    at.sidebar.text_area(key="text").input("   ").run()
    assert not at.exception, at.exception
    assert len(at.error) == 1 and "empty" in at.error[0].value
