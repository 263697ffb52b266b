"""Readable tokens on the pages (AppTest): the typed text on the axes and in the token box, raw pieces one toggle
away, and one warning line when a text is mostly [UNK]."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from tests.app import vega

pytestmark = pytest.mark.slow

APP = str(Path(__file__).resolve().parents[2] / "app.py")
RAW = ("Ã", "Ġ", "Ċ", "Â")


def attention_page(model: str, text: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=300).run()
    at.sidebar.selectbox(key="model").set_value(model).run()
    at.sidebar.text_area(key="text").input(text).run()
    assert not at.exception, at.exception
    return at


def test_the_attention_page_labels_tokens_with_the_typed_text_and_the_toggle_shows_pieces():
    at = attention_page("smollm2", "Le chat a mangé la souris.")
    cells = vega.frame(vega.chart(at, key="heatmap_chart"), {"key_label", "key_token"})
    labels = list(dict.fromkeys(cells.sort_values("key_pos")["key_label"]))
    assert labels == ["Le", "chat", "a", "mang", "é", "la", "sour", "is", "."]
    assert "Ã©" in set(cells["key_token"])  # the raw piece stays in the data (and the CSV)
    assert not [o for o in at.selectbox(key="token").options if any(mark in o for mark in RAW)]
    assert not at.warning
    at.sidebar.toggle(key="raw_tokens").set_value(True).run()
    raw = vega.frame(vega.chart(at, key="heatmap_chart"), {"key_label"})
    assert "Ã©" in set(raw["key_label"]) and "4: Ã©" in at.selectbox(key="token").options


def test_a_text_of_mostly_unknown_tokens_gets_one_warning_line():
    at = attention_page("minilm", "我喜欢猫和狗。")
    assert len(at.warning) == 1 and "[UNK]" in at.warning[0].value and "%" in at.warning[0].value
