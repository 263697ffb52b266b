"""Heads page in AppTest: counts match the library, a picked cell opens that head on the Attention page."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from analysis.head_types import HEAD_TYPES, classify_heads
from models import run

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
    rec = run(minilm, text)
    expected = classify_heads(rec.head_stats(), kind="encoder", n_tokens=len(rec.tokens[0]))
    metrics = {m.label: m.value for m in at.metric}
    for kind in HEAD_TYPES:
        assert metrics[kind.replace("_", "-")] == str(int(expected[f"is_{kind}"].sum()))
    assert [t.label for t in at.tabs] == ["Heatmaps", "Types", "Table", "GQA groups", "Rollout", "Compare models"]
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
