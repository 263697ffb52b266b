"""Bad input on every page: one clear message, no exception, and the page keeps working afterwards."""

import pytest
from streamlit.testing.v1 import AppTest

from tests.conftest import ROOT

APP = str(ROOT / "app.py")

# page, the text widget's key, where it lives (every page but Padding shows the workspace's one Text box)
TEXT_WIDGETS = [
    ("ui/attention.py", "text", "sidebar_area"),
    ("ui/masking.py", "text", "sidebar_area"),
    ("ui/compare.py", "text", "sidebar_area"),
    ("ui/heads.py", "text", "sidebar_area"),
    ("ui/padding.py", "padding_texts", "sidebar_area"),
    ("ui/backends.py", "text", "sidebar_area"),
    ("ui/lab.py", "text", "sidebar_area"),
    ("ui/anatomy.py", "text", "sidebar_area"),
    ("ui/explain.py", "text", "sidebar_area"),
    ("ui/routes.py", "text", "sidebar_area"),
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


@pytest.fixture
def server_address():
    """Set Streamlit's server.address for one test (what `streamlit run --server.address` sets), then restore it."""
    from streamlit import config

    old = config.get_option("server.address")
    yield lambda address: config.set_option("server.address", address)
    config.set_option("server.address", old)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A tiny model saved as a local directory, as a visitor could type it."""
    from tests import tiny

    path = tmp_path_factory.mktemp("models") / "tiny-bert"
    lm = tiny.build("bert")
    lm.model.save_pretrained(path)
    lm.tokenizer.save_pretrained(path)
    return str(path)


def _type_model(at, name):
    at.sidebar.selectbox(key="model").set_value("other (HF id or local path)…").run()
    at.sidebar.text_input(key="model_typed").set_value(name).run()


def test_a_shared_server_refuses_a_typed_local_directory(monkeypatch, server_address, tiny_dir):
    monkeypatch.delenv("ATTNSCOPE_ALLOWED_MODELS", raising=False)
    server_address("0.0.0.0")  # every interface: visitors from other machines
    at = AppTest.from_file(APP, default_timeout=240)
    at.switch_page("ui/attention.py").run()
    _type_model(at, tiny_dir)
    assert not at.exception
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and "ATTNSCOPE_ALLOWED_MODELS" in errors[0] and tiny_dir in errors[0], errors
    at.sidebar.selectbox(key="model").set_value("minilm").run()  # bundled aliases always load
    assert not at.exception and not at.error


def test_a_shared_server_accepts_an_allowlisted_directory(monkeypatch, server_address, tiny_dir):
    monkeypatch.setenv("ATTNSCOPE_ALLOWED_MODELS", f"minilm,{tiny_dir}")
    server_address("0.0.0.0")
    at = AppTest.from_file(APP, default_timeout=240)
    at.switch_page("ui/attention.py").run()
    at.sidebar.selectbox(key="model").set_value(tiny_dir).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any(tiny_dir in c.value and "2 layers" in c.value for c in at.caption), [c.value for c in at.caption]


def test_a_failed_load_is_one_line_and_does_not_poison_the_cache(server_address, tiny_dir, tmp_path):
    """A directory that fails to load (broken config) gives one error; once fixed, it loads in the next session,
    and the failing session itself recovers with another model: the failure was not cached."""
    import shutil

    server_address("127.0.0.1")
    broken = tmp_path / "model"
    broken.mkdir()
    (broken / "config.json").write_text("{ not json")
    (broken / "model.safetensors").write_bytes(b"")
    at = AppTest.from_file(APP, default_timeout=240)
    at.switch_page("ui/attention.py").run()
    _type_model(at, str(broken))
    assert not at.exception
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and "cannot load model" in errors[0] and "\n" not in errors[0], errors
    at.sidebar.selectbox(key="model").set_value("minilm").run()
    assert not at.exception and not at.error
    shutil.rmtree(broken)
    shutil.copytree(tiny_dir, broken)
    again = AppTest.from_file(APP, default_timeout=240)
    again.switch_page("ui/attention.py").run()
    _type_model(again, str(broken))
    assert not again.exception and not again.error, [e.value for e in again.error]
    assert any(str(broken) in c.value for c in again.caption)
