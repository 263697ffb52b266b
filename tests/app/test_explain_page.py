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


def test_explain_page_explains_a_typed_token_and_one_token_rather_than_another():
    """The page's attributions and deletion test for " John" and for " Mary" rather than " John" equal the API's."""
    from attnscope.models.attribution import gradient_attribution
    from attnscope.models.faithfulness import faithfulness
    from attnscope.ui.common import get_model

    text = "When Mary and John went to the store, John gave a drink to"
    at = AppTest.from_file(APP, default_timeout=600)
    at.switch_page("ui/explain.py").run()
    at.multiselect(key="explain_methods").set_value(["weights", "input_x_gradient"]).run()  # first: cheap methods only
    at.sidebar.selectbox(key="model").set_value("smollm2").run()
    at.sidebar.text_area(key="text").input(text).run()
    assert at.multiselect(key="explain_methods").value == ["weights", "input_x_gradient"]
    lm = get_model("smollm2", "auto")
    for kind, target, contrast in (("token", " John", None), ("contrast", " Mary", " John")):
        at.radio(key="explain_target").set_value(kind).run()
        at.text_input(key="explain_target_token").input(target).run()
        if contrast is not None:
            at.text_input(key="explain_contrast").input(contrast).run()
        assert not at.exception, at.exception
        assert not at.error, [e.value for e in at.error]
        expected = gradient_attribution(lm, text, "input_x_gradient", target_token=target, contrast=contrast)
        strip = vega.chart(at, title="Input-token attribution, by method")["frames"][0]
        got = strip[strip["method"] == "input_x_gradient"].sort_values("position")["score"].to_numpy()
        np.testing.assert_allclose(got, expected.scores, rtol=1e-4, atol=1e-6)
        explains = [m.value for m in at.markdown if m.value.startswith("**Explains:**")]
        assert explains == [f"**Explains:** {expected.target.description}"]
        assert ("rather than" in explains[0]) == (contrast is not None)
        table = at.dataframe[0].value
        scores = {"weights": table_scores(strip, "weights"), "input_x_gradient": expected.scores}
        api = faithfulness(lm, text, scores, target_token=target, contrast=contrast).table
        np.testing.assert_allclose(table["comprehensiveness"], api["comprehensiveness"], rtol=1e-6)
        np.testing.assert_allclose(table["sufficiency"], api["sufficiency"], rtol=1e-6)
        assert list(table["beats_random"]) == list(api["beats_random"])


def table_scores(strip, method):
    return strip[strip["method"] == method].sort_values("position")["score"].to_numpy()


def test_explain_page_runs_the_demo_set_and_shows_the_table_over_texts():
    from attnscope.models.contributions import explain_texts
    from attnscope.ui.common import demo_texts, get_model

    at = AppTest.from_file(APP, default_timeout=600)
    at.switch_page("ui/explain.py").run()
    at.sidebar.text_area(key="text").input("The mouse ran up the clock and down again.").run()
    at.multiselect(key="explain_methods").set_value(["weights", "alti"]).run()
    at.number_input(key="explain_set_limit").set_value(3).run()
    at.button(key="explain_set_run").click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    shown = at.dataframe[-1].value  # the last table on the page: the one over the texts
    expected = explain_texts(get_model("minilm", "auto"), demo_texts()[:3], methods=["weights", "alti"])
    assert expected.scored == 3
    assert list(shown["method"]) == ["weights", "alti"]
    for column in ("comprehensiveness", "comprehensiveness_low", "comprehensiveness_high", "sufficiency", "beats_random_share"):
        np.testing.assert_allclose(shown[column].to_numpy(dtype=float), expected.table[column].to_numpy(dtype=float), rtol=1e-6)
    assert any("3 texts scored" in c.value for c in at.caption)
