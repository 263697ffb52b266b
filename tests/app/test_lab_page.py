"""Lab page (AppTest): the imposed map next to the true one, coverage, effect, sweep, costs; bad input in one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from tests.app import vega

pytestmark = pytest.mark.slow

APP = str(Path(__file__).resolve().parents[2] / "app.py")
TEXT = "A sliding window keeps the nearby tokens and drops the rest."


def open_lab(**values) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=240)
    at.switch_page("ui/lab.py").run()
    at.sidebar.selectbox(key="model").set_value("smollm2").run()  # the workspace's model and text
    at.sidebar.text_area(key="text").input(TEXT).run()
    for key, value in values.items():
        at.sidebar.number_input(key=key).set_value(value).run()
    return at


def test_lab_page_shows_what_a_window_keeps_and_what_it_costs():
    from attnscope.models import run
    from attnscope.models.lab import lab_coverage, lab_effect
    from attnscope.ui.common import get_model

    at = open_lab(lab_width=3)
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    assert any("approximations" in i.value for i in at.info)
    assert any("Beltagy" in c.value for c in at.caption)  # the method's reference
    lm = get_model("smollm2", "auto")
    rec = run(lm, TEXT)
    n = len(rec.tokens[0])
    cells = vega.frame(vega.chart(at, title="true map, layer 0 head 0"), {"kept_mass", "lost", "status"})
    status = vega.grid(cells, "status")
    offset = np.arange(n)[:, None] - np.arange(n)[None, :]
    assert ((status == "kept") == ((offset >= 0) & (offset < 3))).all()  # window of 3, causal model
    assert ((status == "masked by the model") == (offset < 0)).all()
    np.testing.assert_allclose(vega.grid(cells, "weight"), rec.attention(0, 0), atol=1e-6)
    coverage = vega.frame(vega.chart(at, title="coverage"), {"layer", "head", "coverage"})
    expected = lab_coverage(rec, "window:3")
    assert len(coverage) == 270
    np.testing.assert_allclose(coverage.sort_values(["layer", "head"])["coverage"], expected["coverage"], atol=1e-5)
    effect = lab_effect(lm, TEXT, "window:3")
    assert any(f"{effect.kl:.4f}" in m.value for m in at.metric)
    errors = vega.frame(vega.chart(at, title="hidden-state error"), {"relative_error"})
    np.testing.assert_allclose(errors["relative_error"], effect.layer_error["relative_error"], rtol=1e-4, atol=1e-6)
    assert vega.chart(at, title="attention cost") and vega.chart(at, title="KV cache") and vega.chart(at, title="slow-memory traffic")
    at.toggle(key="lab_sweep").set_value(True).run()
    assert not at.exception and not at.error
    sweep = vega.frame(vega.chart(at, title="sweep: error and coverage vs width"), {"value", "kl", "coverage"})
    assert sweep["value"].max() == n and sweep.sort_values("value")["kl"].iloc[-1] < 1e-4


def test_lab_page_bad_parameter_is_one_clear_error_and_recovers():
    at = open_lab()
    at.sidebar.selectbox(key="lab_pattern").set_value("global").run()
    at.sidebar.radio(key="lab_global_kind").set_value("chosen positions").run()
    assert not at.exception and not at.error
    at.sidebar.text_input(key="lab_positions").input("0+400").run()  # past the end of the text
    assert not at.exception
    assert len(at.error) == 1 and "global positions must lie in 0.." in at.error[0].value, [e.value for e in at.error]
    at.sidebar.text_input(key="lab_positions").input("0+3").run()
    assert not at.exception and not at.error


def test_every_registered_pattern_builds_from_its_own_widgets():
    """The page makes each pattern object from the widgets its class asks for (no text built and parsed again)."""
    from attnscope.analysis.patterns import PATTERNS, parse_pattern

    at = open_lab()
    for name, kind in PATTERNS.items():
        at.sidebar.selectbox(key="lab_pattern").set_value(name).run()
        assert not at.exception and not at.error, (name, at.exception, [e.value for e in at.error])
        shown = next(m.value for m in at.markdown if m.value.startswith("Pattern `")).split("`")[1]
        assert type(parse_pattern(shown)) is kind, (name, shown)
        sweeps = [s.value for s in at.subheader if s.value.startswith("Sweep")]
        assert sweeps == ([f"Sweep: error against {kind.sweep_parameter}"] if kind.sweep_parameter else []), (name, sweeps)
    at.sidebar.selectbox(key="lab_pattern").set_value("kv").run()
    at.sidebar.selectbox(key="lab_groups").set_value(3).run()  # SmolLM2: 9 query heads
    assert any(m.value.startswith("Pattern `kv:3`") for m in at.markdown)
