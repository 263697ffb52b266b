"""Bad input on every page: one clear message, no exception, and the page keeps working afterwards."""

import pytest
from streamlit.testing.v1 import AppTest

from tests.conftest import ROOT

APP = str(ROOT / "app.py")

# page, the text widget's key, where it lives
TEXT_WIDGETS = [
    ("ui/attention.py", "text", "sidebar_area"),
    ("ui/masking.py", "mask_text", "sidebar_area"),
    ("ui/compare.py", "cmp_text", "sidebar_area"),
    ("ui/heads.py", "text", "sidebar_area"),
    ("ui/padding.py", "padding_texts", "sidebar_area"),
    ("ui/backends.py", "backends_text", "input"),
    ("ui/lab.py", "lab_text", "sidebar_area"),
]


def _widget(at, key, kind):
    return at.sidebar.text_area(key=key) if kind == "sidebar_area" else at.text_input(key=key)


@pytest.mark.parametrize("page, key, kind", TEXT_WIDGETS)
def test_empty_text_gives_one_clear_message(page, key, kind):
    at = AppTest.from_file(APP, default_timeout=240)
    at.switch_page(page).run()
    assert not at.exception
    _widget(at, key, kind).set_value("   ").run()
    assert not at.exception, [e.value for e in at.exception]
    messages = [e.value for e in at.error] + [e.value for e in at.info]
    assert any(word in m for m in messages for word in ("empty", "no text", "type a", "needs at least")), messages
    recovery = "The mouse ran.\nClick the mouse button twice." if kind == "sidebar_area" else "The mouse ran."
    _widget(at, key, kind).set_value(recovery).run()  # recovers
    assert not at.exception and not at.error


def test_unknown_model_names_the_bundled_aliases():
    at = AppTest.from_file(APP, default_timeout=240)
    at.switch_page("ui/attention.py").run()
    at.sidebar.selectbox(key="model").set_value("other (HF id or local path)…").run()
    at.sidebar.text_input(key="model_typed").set_value("no-such-org/no-such-model").run()
    assert not at.exception
    assert any("minilm" in e.value and "smollm2" in e.value for e in at.error), [e.value for e in at.error]


def test_too_long_text_says_the_limit():
    at = AppTest.from_file(APP, default_timeout=240)
    at.switch_page("ui/attention.py").run()
    at.sidebar.text_area(key="text").set_value("word " * 600).run()
    assert not at.exception
    assert any("512" in e.value for e in at.error), [e.value for e in at.error]


def test_allowlist_limits_the_model_picker(monkeypatch):
    monkeypatch.setenv("ATTNSCOPE_ALLOWED_MODELS", "minilm")
    at = AppTest.from_file(APP, default_timeout=240)
    at.switch_page("ui/attention.py").run()
    assert list(at.sidebar.selectbox(key="model").options) == ["minilm"]
