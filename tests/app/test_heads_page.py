"""Heads page in AppTest: counts match the library, a picked cell opens that head on the Attention page."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from attnscope.analysis.head_types import HEAD_TYPES, classify_heads
from attnscope.models import run

pytestmark = pytest.mark.slow

APP = str(Path(__file__).resolve().parents[2] / "app.py")


@pytest.fixture(scope="module")
def heads_page():
    at = AppTest.from_file(APP, default_timeout=300)
    at.run()
    at.switch_page("ui/heads.py").run()
    return at


def test_heads_page_counts_match_the_classifier(heads_page, minilm):
    at = heads_page
    assert not at.exception and not at.error
    text = at.sidebar.text_area(key="text").value
    rec = run(minilm, text, values=True)
    table = rec.head_stats().merge(rec.norm_stats(), on=["layer", "head"])  # the page adds the norm columns
    expected = classify_heads(table, kind="encoder", n_tokens=len(rec.tokens[0]))
    metrics = {m.label: m.value for m in at.metric}
    for kind in HEAD_TYPES:
        assert metrics[kind.replace("_", "-")] == str(int(expected[f"is_{kind}"].sum()))
    assert [t.label for t in at.tabs] == ["Heatmaps", "Types", "Table", "Knockout", "GQA groups", "Rollout", "Compare models"]
    assert len(at.dataframe[0].value) == 72


def test_raising_a_threshold_drops_labels(heads_page):
    at = heads_page
    before = int({m.label: m.value for m in at.metric}["sink"])
    at.slider(key="th_sink").set_value(1.0).run()
    after = int({m.label: m.value for m in at.metric}["sink"])
    assert before > 0 and after < before


def test_picked_cell_opens_attention_page(heads_page):
    at = heads_page
    at.session_state["heads_goto"] = (3, 7)  # what a click on the grid stores
    at.run()
    assert not at.exception
    assert at.title[0].value == "Attention"
    assert at.slider(key="layer").value == 3 and at.slider(key="head").value == 7


def test_knockout_tab_shows_importance_and_the_engines_knockout(minilm):
    import numpy as np

    from attnscope.models.knockout import head_importance, knockout
    from tests.app import vega

    at = AppTest.from_file(APP, default_timeout=300)
    at.run()
    at.switch_page("ui/heads.py").run()
    text = at.sidebar.text_area(key="text").value
    at.toggle(key="heads_importance").set_value(True).run()
    at.number_input(key="ko_layer").set_value(2).run()
    at.number_input(key="ko_head").set_value(5).run()
    assert not at.exception and not at.error
    grid = vega.chart(at, key="heads_importance_grid")["frames"][0].sort_values(["layer", "head"])
    expected = head_importance(minilm, text).sort_values(["layer", "head"])
    np.testing.assert_allclose(grid["delta"].to_numpy(), expected["delta"].to_numpy(), atol=1e-5)
    result = knockout(minilm, text, heads=[(2, 5)])
    change = vega.chart(at, columns={"layer", "change"})["frames"][0].sort_values("layer")
    np.testing.assert_allclose(change["change"].to_numpy(), result.layer_change, atol=1e-6)
    assert any(f"{result.hidden_cosine:.4f}" in c.value for c in at.caption)
