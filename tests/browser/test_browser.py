"""One real browser: `streamlit run` on a free loopback port, headless Chromium, the Attention page."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.load import CHROMIUM, CHROMIUM_ARGS, serve  # one Chromium command line and one server start for bench and tests

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
TEXT = "The mouse ate the cheese, then the cat chased the mouse."  # the page's default text


@pytest.fixture
def server(tmp_path):
    """The dashboard as ``make run`` starts it, on a free loopback port (the load benchmark's own starter)."""
    with serve(tmp_path / "streamlit.log") as running:
        yield running.url


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium); .ci/run installs it")
def test_attention_page_draws_the_models_tokens(server, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    from attnscope.models import load, run

    tokens = run(load("minilm"), TEXT).labels[0]  # what the heatmap must label: the typed words, [CLS] and [SEP]
    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1800})
            page.goto(server, timeout=120_000)
            # Vega draws short maps as SVG: wait for the heatmap's cells, then read its axis labels.
            chart = page.locator("[data-testid='stVegaLiteChart']").first
            chart.locator("svg path, svg .mark-rect").first.wait_for(timeout=180_000)
            page.wait_for_function(
                "() => [...document.querySelectorAll(\"[data-testid='stVegaLiteChart'] svg text\")].some(t => t.textContent === '[SEP]')",
                timeout=60_000,
            )
            labels = set(chart.locator("svg text").all_text_contents())
            page.screenshot(path=str(tmp_path / "attention.png"))
        finally:
            browser.close()
    assert (tmp_path / "attention.png").stat().st_size > 10_000
    assert {"[CLS]", "[SEP]"} <= labels
    missing = [t for t in tokens if t not in labels]
    assert not missing, f"token labels not drawn: {missing}"


SESSION_TEXTS = [
    "Zebras graze quietly.",
    "Volcanoes erupt sometimes.",
    "Penguins swim fast.",
    "Orchestras rehearse daily.",
]


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium); .ci/run installs it")
def test_four_browser_sessions_each_get_their_own_tokens(server, tmp_path):
    """Four sessions on one server, opened at once, each with its own text (?text=...): no session sees another's."""
    playwright = pytest.importorskip("playwright.sync_api")
    from urllib.parse import quote

    from attnscope.models import load, run

    lm = load("minilm")
    expected = [set(run(lm, t).labels[0]) for t in SESSION_TEXTS]  # the tokens as the charts label them
    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            pages = [browser.new_context().new_page() for _ in SESSION_TEXTS]
            for page, text in zip(pages, SESSION_TEXTS):  # all four load concurrently on the server
                page.goto(f"{server}/?text={quote(text)}", wait_until="commit", timeout=120_000)
            drawn = []
            for page, tokens in zip(pages, expected):
                last = sorted(tokens)[0]
                page.wait_for_function(
                    "(t) => [...document.querySelectorAll(\"[data-testid='stVegaLiteChart'] svg text\")].some(e => e.textContent === t)",
                    arg=last,
                    timeout=240_000,
                )
                chart = page.locator("[data-testid='stVegaLiteChart']").first
                drawn.append(set(chart.locator("svg text").all_text_contents()))
            pages[0].screenshot(path=str(tmp_path / "session0.png"))
        finally:
            browser.close()
    for i, labels in enumerate(drawn):
        assert expected[i] <= labels, f"session {i} is missing its tokens {expected[i] - labels}"
        others = set().union(*(expected[j] for j in range(len(expected)) if j != i)) - expected[i]
        assert not (others & labels), f"session {i} shows another session's tokens {others & labels}"
