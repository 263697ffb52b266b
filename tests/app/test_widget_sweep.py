"""Every page, every widget (AppTest): no exception, no traceback text, no chart without data.

A generic walker: on each page, with MiniLM, SmolLM2 and a tiny T5 (encoder-decoder), every slider goes to its
minimum, maximum and middle, every select box, radio and select slider through (at most ``MAX_OPTIONS`` of) its
options, number inputs to their minimum and one step up, every toggle on, and every button is pressed once,
with the checks after each rerun. Text boxes and model pickers keep their defaults (the pages' own tests type
into them), and a few settings that only make a page slower are pinned small (``PINNED``). ``STATES`` counts the
reruns checked; the module prints it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from tests.app import vega

pytestmark = pytest.mark.slow

APP = str(Path(__file__).resolve().parents[2] / "app.py")
OTHER = "other (HF id or local path)…"
MAX_OPTIONS = 3  # per select box / radio: the first, the middle and the last option
MODELS = ("minilm", "smollm2", "t5")
# ATTNSCOPE_SWEEP=full walks every planned state with every model (~350 states, ~10 min on 2 CPU cores); by
# default (``make test``: 100 states, 3.6 min on 2 busy CPU cores) the three models share a page's plan, each taking every third state, and each
# model visits at most MAX_STATES of them.
FULL = os.environ.get("ATTNSCOPE_SWEEP") == "full"
MAX_STATES = 60 if FULL else 2  # per page and model: reruns after the first
PAGES = {
    page: "model"
    for page in (
        "attention",
        "masking",
        "compare",
        "heads",
        "explain",
        "routes",
        "generate",
        "drift",
        "padding",
        "backends",
        "lab",
        "anatomy",
    )
}  # page -> the key of its model picker: the workspace's one
# Widgets the sweep leaves alone: the pickers and what reloads a model (the backend), or reads a directory.
SKIP = {"model", "backend", "cmp_b", "mask_decoder", "anatomy_other", "heads_model_b", "heads_corpus_dir"}
# Settings pinned small before the sweep: they change how long a page computes, not what it can show.
PINNED = {
    "explain_methods": ["weights", "input_x_gradient"],
    "probe_len": 8,
    "gen_new": 3,
    "anatomy_largest": 512,
}
STATES = {"count": 0, "seconds": 0.0}


@pytest.fixture(scope="module", autouse=True)
def report():
    """After the module: how many page states the sweep checked, and how long their reruns took."""
    yield
    print(f"\nwidget sweep: {STATES['count']} states checked, reruns {STATES['seconds']:.0f} s")


def check(at: AppTest, where: str) -> None:
    """The page after one rerun: no exception element, no traceback text, every chart has data rows."""
    assert not at.exception, f"{where}: {[e.message for e in at.exception]}"
    texts = [*at.markdown, *at.text, *at.error, *at.warning, *at.info, *at.caption, *at.code]
    bad = [str(e.value)[:200] for e in texts if "Traceback" in str(e.value)]
    assert not bad, f"{where}: traceback text {bad}"
    for chart in vega.charts(at):
        rows = sum(len(frame) for frame in chart["frames"])
        inline = chart["spec"].get("data", {}).get("values", []) if isinstance(chart["spec"].get("data"), dict) else []
        title = chart["spec"].get("title", "")
        assert rows or inline, f"{where}: chart {title!r} ({chart['id']}) has no data rows"


def _rerun(at: AppTest, where: str) -> None:
    start = time.perf_counter()
    at.run()
    STATES["count"] += 1
    STATES["seconds"] += time.perf_counter() - start
    check(at, where)


def _raw_values(widget) -> list:
    """A select box's or radio's options as the values ``set_value`` takes: its formatted options inverted
    through its format function over the candidates we can name (dict keys, small integers, the labels)."""
    fmt = widget.format_func
    current = widget.value
    candidates: list = list(widget.options)
    owner = getattr(fmt, "__self__", None)
    if isinstance(owner, dict):
        candidates = list(owner)
    elif isinstance(current, int) and not isinstance(current, bool):
        candidates = list(range(4097))
    elif current is None:
        candidates = [None, *range(4097)]
    inverse = {}
    for value in candidates:
        try:
            shown = fmt(value)
        except Exception:  # noqa: BLE001 - a format function that does not take this candidate
            continue
        if shown in widget.options and shown not in inverse:
            inverse[shown] = value
        if len(inverse) == len(widget.options):
            break
    picks = sorted({0, len(widget.options) // 2, len(widget.options) - 1})[:MAX_OPTIONS]
    return [inverse[widget.options[i]] for i in picks if widget.options[i] in inverse]


def _find(at: AppTest, kind: str, key: str):
    found = [w for w in getattr(at, kind) if w.key == key]
    return found[0] if found else None


def _plan(at: AppTest) -> list[tuple[str, str, object]]:
    """(widget kind, key, value) to visit, in order: sliders, choices, numbers, toggles, then buttons."""
    plan = []
    for w in at.slider:
        if w.key and w.key not in SKIP and not w.disabled and not isinstance(w.value, (tuple, list)):
            mid = w.min + (w.max - w.min) // 2 if isinstance(w.min, int) else round((w.min + w.max) / 2 / w.step) * w.step
            plan += [("slider", w.key, v) for v in dict.fromkeys([w.min, w.max, mid])]
    for w in at.select_slider:
        if w.key and w.key not in SKIP and not w.disabled and not isinstance(w.value, (tuple, list)):
            options = list(w.options)
            plan += [("select_slider", w.key, options[i]) for i in sorted({0, len(options) // 2, len(options) - 1})]
    for kind in ("selectbox", "radio"):
        for w in getattr(at, kind):
            if w.key and w.key not in SKIP and not w.disabled and not w.key.endswith("_typed") and w.key not in PAGES.values():
                plan += [(kind, w.key, v) for v in _raw_values(w)]
    for w in at.number_input:
        if w.key and w.key not in SKIP and not w.disabled and w.key not in PINNED and w.min is not None:
            plan += [("number_input", w.key, v) for v in dict.fromkeys([w.min, min(w.min + w.step, w.max or w.min + w.step)])]
    for w in at.toggle:
        if w.key and w.key not in SKIP and not w.disabled:
            plan += [("toggle", w.key, True), ("toggle", w.key, False)]
    for w in at.button:
        if w.key and w.key not in SKIP and not w.disabled:
            plan.append(("button", w.key, None))
    return plan


def sweep(page: str, model: str, t5_dir: str, share: int = 0) -> int:
    """Open ``page`` with ``model`` and walk its plan (``share``: this model's third of it unless FULL); returns the
    number of states checked."""
    at = AppTest.from_file(APP, default_timeout=600)
    key = PAGES[page]
    # the model and the pinned settings go into the session before the page first runs: no run with defaults
    at.session_state[key] = OTHER if model == "t5" else model
    if model == "t5":
        at.session_state[f"{key}_typed"] = t5_dir
    for name, value in PINNED.items():
        at.session_state[name] = value
    at.switch_page(f"ui/{page}.py")
    _rerun(at, f"{page}/{model} first run")
    picker = _find(at, "selectbox", key)
    assert picker is not None and picker.value == at.session_state[key], f"{page}: the model was not picked"
    visited = 0
    plan = _plan(at)
    for kind, key, value in plan if FULL else plan[share :: len(MODELS)]:
        if visited >= MAX_STATES:
            break
        widget = _find(at, kind, key)
        if widget is None or widget.disabled:  # gone or greyed out after an earlier change (or another page after a link)
            continue
        if kind == "button":
            widget.click()
        elif kind == "toggle":
            widget.set_value(value)
        else:
            widget.set_value(value)
        _rerun(at, f"{page}/{model} {kind} {key}={value!r}")
        visited += 1
    return visited + 1


@pytest.mark.parametrize("page", list(PAGES))
def test_every_widget_of_the_page_keeps_it_whole(page, t5_dir):
    for share, model in enumerate(MODELS):
        sweep(page, model, t5_dir, share)
