"""A short load test: three real browser sessions at once on one server, every map read back equals the solo run.

The long version (8 sessions x 120 s, with timings) is ``python -m bench.load``; this one reuses its functions.
"""

from __future__ import annotations

import pytest

from bench import load as bench

pytestmark = pytest.mark.slow

SESSIONS = 3
SECONDS = 25  # interactions started within this window run to the end (INTERACTION_LIMIT each)
INTERACTION_LIMIT = 60.0
TEXTS = bench.PADDING_TEXTS[0]
# Two sessions on the Padding page at the same moment with the same texts, one padded on each side: a session
# that got the other's record would draw the other side's pads. The third opens SmolLM2 on the Attention page.
OPENINGS = {
    0: [bench.Choice("Padding", "minilm", TEXTS, "right, mask")],
    1: [bench.Choice("Padding", "minilm", TEXTS, "left, mask")],
    2: [bench.Choice("Attention", "smollm2", bench.TEXTS[2])],
}


@pytest.mark.skipif(bench.CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium); .ci/run installs it")
def test_concurrent_sessions_draw_the_solo_maps(minilm, smollm2, tmp_path):
    pytest.importorskip("playwright.async_api")
    loaded = {"minilm": minilm, "smollm2": smollm2}
    result = bench.run_load(SESSIONS, SECONDS, tmp_path / "streamlit.log", openings=OPENINGS, timeout=INTERACTION_LIMIT, loaded=loaded)
    items = result["_items"]
    summary = bench.table(result["rows"])

    failed = [f"session {i.session} {i.page} {i.model}: {i.failure}" for i in items if i.failure]
    assert not failed, "interactions that did not draw their chart:\n" + "\n".join(failed) + "\n" + summary
    raised = [f"session {i.session} {i.page} {i.model}: {e}" for i in items for e in i.exceptions + i.errors]
    assert not raised, "exceptions or errors on the pages:\n" + "\n".join(raised)
    assert not result["server_tracebacks"], f"tracebacks in the server log: {result['server_tracebacks']}"
    unequal = [f"session {i.session} {i.page} {i.model} {i.setting or ''}: {i.detail}" for i in items if i.equal is False]
    assert not unequal, "maps that differ from the same run alone:\n" + "\n".join(unequal)

    for page in {i.page for i in items}:
        drawn = [i for i in items if i.page == page and i.equal]
        assert drawn, f"no chart drawn and checked on the {page} page\n{summary}"
    assert {i.model for i in items if i.equal} == set(bench.MODELS), f"both models should have been driven\n{summary}"
    assert all(i.drawn_checked for i in items if i.equal), "a drawn SVG was not compared with the chart's data"

    # The check itself can fail: each Padding session's chart differs from the other side's solo run.
    padding = {i.setting: i for i in items if i.page == "Padding" and i.texts == TEXTS and i.model == "minilm" and i.equal}
    assert {"right, mask", "left, mask"} <= set(padding), "the two opening Padding sessions should both have drawn"
    for side, other in (("right, mask", "left, mask"), ("left, mask", "right, mask")):
        wrong = bench.PAGE["Padding"].expected(minilm, bench.Choice("Padding", "minilm", TEXTS, other))
        assert bench.compare(padding[side].chart, wrong, bench.PAGE["Padding"]), f"{side}'s chart also matches {other}"
