"""One user's journey through the dashboard in real Chromium (issue 32): a sentence typed once on Attention with
SmolLM2 shows on every page with that model; a click on Heads opens that head; a shared URL opens the same view."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlparse

import pytest

from bench.load import CHROMIUM, CHROMIUM_ARGS, serve

pytestmark = pytest.mark.slow

SENTENCE = "The cat chased the mouse into the garden."  # holds Drift's word: Drift starts from it as well
WAIT = 240_000  # ms: SmolLM2's first load and the Heads page's statistics on 2 shared CPU cores
# sidebar title, the box that shows the workspace's text there, and how to read the text from it
PAGES = [
    ("Masking", "Text"),
    ("Compare", "Text"),
    ("Heads", "Text"),
    ("Explain", "Text"),
    ("Routes", "Text"),
    ("Generate", "Prompt"),
    ("Drift", "Text"),
    ("Padding", "Texts, one per line (different lengths)"),
    ("Backends", "Text"),
    ("Lab", "Text"),
    ("Anatomy", "Text"),
    ("Attention", "Text"),
]


@pytest.fixture
def server(tmp_path):
    with serve(tmp_path / "streamlit.log") as running:
        yield running.url


def _sidebar(page):
    return page.locator("[data-testid='stSidebar']")


def _pick(page, label: str, option: str) -> None:
    """Pick ``option`` in the sidebar's select box ``label``."""
    box = _sidebar(page).locator("[data-testid='stSelectbox']").filter(has=page.get_by_role("combobox", name=label, exact=True))
    box.get_by_role("button", name="Open").click()
    page.get_by_role("option", name=option, exact=True).click()


def _workspace(page) -> dict[str, str]:
    """The workspace as the page's URL carries it."""
    return {k: v[-1] for k, v in parse_qs(urlparse(page.url).query).items()}


def _nav(page, server: str, title: str) -> None:
    """Click the sidebar's link to the page ``title`` (links carry the page's path; Attention is the default page)."""
    path = "" if title == "Attention" else title.lower()
    _sidebar(page).locator(f"[data-testid='stSidebarNavLink'][href='{server}/{path}']").click()


def _wait_title(page, title: str) -> None:
    page.get_by_role("heading", level=1).filter(has_text=re.compile(f"^{re.escape(title)}")).first.wait_for(timeout=WAIT)


def _wait_idle(page) -> None:
    """Until the script run is over (Streamlit shows its status widget while it runs)."""
    page.wait_for_timeout(500)
    page.locator("[data-testid='stStatusWidget']").wait_for(state="hidden", timeout=WAIT)


def _shown(page, label: str) -> tuple[str, str]:
    """(the model the sidebar shows, the workspace's text as the page's box shows it: its first line)."""
    sidebar = _sidebar(page)
    box = sidebar.get_by_role("textbox", name=label, exact=True)
    box.wait_for(timeout=WAIT)
    model = sidebar.get_by_role("combobox", name="Model", exact=True).input_value()
    return model, box.input_value().splitlines()[0]


def _head_title(page) -> str:
    """The Attention heatmap's title as drawn (SVG text)."""
    title = page.locator("[data-testid='stVegaLiteChart'] svg text", has_text=re.compile(r"^Layer \d+, head \d+"))
    title.first.wait_for(timeout=WAIT)
    return title.first.text_content()


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium); .ci/run installs it")
def test_one_workspace_from_page_to_page_and_through_a_shared_url(server, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1800})
            page.goto(server, timeout=WAIT)
            _wait_title(page, "Attention")
            _pick(page, "Model", "smollm2")
            _wait_idle(page)
            box = _sidebar(page).get_by_role("textbox", name="Text", exact=True)
            box.fill(SENTENCE)
            box.press("Control+Enter")
            page.wait_for_function(f"() => new URLSearchParams(location.search).get('text') === {SENTENCE!r}", timeout=WAIT)
            assert _workspace(page)["model"] == "smollm2"

            seen = {}
            for title, label in PAGES:
                _nav(page, server, title)
                _wait_title(page, "Contextual drift" if title == "Drift" else title)
                _wait_idle(page)
                seen[title] = _shown(page, label)
                page.screenshot(path=str(tmp_path / f"{title.lower()}.png"))
            wrong = {title: shown for title, shown in seen.items() if shown != ("smollm2", SENTENCE)}
            assert not wrong, wrong

            # Heads: a click on a grid cell opens that head of SmolLM2 on this sentence (past MiniLM's 6 layers)
            _nav(page, server, "Heads")
            _wait_title(page, "Heads")
            cell = page.locator("[data-testid='stVegaLiteChart'] svg [aria-label*='layer: 17'][aria-label*='head: 6']").first
            cell.wait_for(timeout=WAIT)
            cell.click(force=True)
            _wait_title(page, "Attention")
            page.wait_for_function("() => new URLSearchParams(location.search).get('layer') === '17'", timeout=WAIT)
            _wait_idle(page)
            assert _shown(page, "Text") == ("smollm2", SENTENCE)
            assert _head_title(page).startswith("Layer 17, head 6")
            shared = page.url
            assert {k: _workspace(page)[k] for k in ("model", "text", "layer", "head")} == {
                "model": "smollm2",
                "text": SENTENCE,
                "layer": "17",
                "head": "6",
            }

            # The address, opened by someone else (a new context: no cookies, no session): the same view
            other = browser.new_context(viewport={"width": 1400, "height": 1800}).new_page()
            other.goto(shared, timeout=WAIT)
            _wait_title(other, "Attention")
            assert _shown(other, "Text") == ("smollm2", SENTENCE)
            assert _head_title(other).startswith("Layer 17, head 6")
            other.screenshot(path=str(tmp_path / "shared.png"))
        finally:
            browser.close()


FRENCH = "Le chat a mangé la souris."
CHINESE = "我喜欢猫和老鼠。"
BYTE_PIECES = ("Ã", "Ġ", "Ċ", "Â")  # what byte-level BPE pieces look like when shown raw
LABEL_PAGES = ("Attention", "Masking", "Explain", "Routes")


def _drawn_text(page) -> tuple[str, str]:
    """(every label the charts drew (SVG text), the page's own text: select boxes, captions, tables)."""
    charts = page.locator("[data-testid='stVegaLiteChart'] svg text").all_text_contents()
    return "\n".join(charts), page.locator("body").inner_text()


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium); .ci/run installs it")
def test_journey_french_and_chinese_show_decoded_labels(server, tmp_path):
    """A French and a Chinese sentence on SmolLM2, opened from a link: every page's labels show the words as typed
    ("mangé", "猫"), never byte-level pieces."""
    from urllib.parse import urlencode

    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1800})
            for sentence, word in ((FRENCH, "mangé"), (CHINESE, "猫")):
                page.goto(f"{server}/?{urlencode({'model': 'smollm2', 'text': sentence})}", timeout=WAIT)
                for title in LABEL_PAGES:
                    if title != "Attention":
                        _nav(page, server, title)
                    _wait_title(page, title)
                    _wait_idle(page)
                    page.locator("[data-testid='stVegaLiteChart'] svg text").first.wait_for(timeout=WAIT)
                    page.screenshot(path=str(tmp_path / f"{title.lower()}-{word}.png"))
                    charts, body = _drawn_text(page)
                    assert _shown(page, "Text") == ("smollm2", sentence)
                    # "mangé" is two tokens ("mang", "é"): its labels, read in order, spell it. Routes draws only the
                    # positions a route passes through, so its chart need not show the word.
                    if title != "Routes":
                        assert word in charts.replace("\n", ""), f"{title}: {word!r} is not among the charts' labels"
                    raw = [piece for piece in BYTE_PIECES if piece in charts + body]
                    assert not raw, f"{title} shows byte-level pieces {raw} for {sentence!r}"
        finally:
            browser.close()
