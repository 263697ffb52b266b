"""bertviz's head view drawn by Chromium with every network request refused, from the project's scripts."""

from __future__ import annotations

import shutil

import pytest

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
TOKENS = ["[CLS]", "the", "mouse", "ran", ".", "[SEP]"]


def head_view_html() -> str:
    import torch
    from bertviz import head_view

    torch.manual_seed(0)
    attention = tuple(torch.softmax(torch.randn(1, 3, len(TOKENS), len(TOKENS)), -1) for _ in range(2))  # [1, H, n, n] per layer
    return head_view(attention, TOKENS, html_action="return").data


def draw(html: str, tmp_path) -> dict:
    """Open the HTML in Chromium with only file:// allowed; count what the head view drew."""
    playwright = pytest.importorskip("playwright.sync_api")
    page_file = tmp_path / "view.html"
    page_file.write_text(f"<!doctype html><html><body>{html}</body></html>", encoding="utf-8")
    refused = []
    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page()

            def gate(route):
                if route.request.url.startswith("file:"):
                    route.continue_()
                else:
                    refused.append(route.request.url)
                    route.abort()

            page.route("**/*", gate)
            page.goto(page_file.as_uri())
            page.wait_for_timeout(500)
            try:
                page.wait_for_selector("#vis svg text", timeout=15_000)
            except Exception:  # noqa: BLE001 - an undrawn view is what the control case expects
                pass
            counts = page.evaluate(
                "() => ({svg: document.querySelectorAll('#vis svg').length,"
                " texts: [...document.querySelectorAll('#vis svg text')].map(t => t.textContent),"
                " lines: document.querySelectorAll('#vis svg line, #vis svg path').length})"
            )
        finally:
            browser.close()
    return {**counts, "refused": refused}


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium); .ci/run installs it")
def test_head_view_draws_offline(tmp_path):
    from attnscope.ui.common import bertviz_scripts
    from attnscope.viz.bertviz import offline_html

    scripts = bertviz_scripts()
    if scripts is None:
        pytest.skip("bertviz's scripts are not installed: `make install` runs npm ci in js/")
    drawn = draw(offline_html(head_view_html(), scripts), tmp_path)
    assert drawn["refused"] == []  # nothing even tried to leave the machine
    assert drawn["svg"] >= 1
    assert set(TOKENS) <= set(drawn["texts"])  # both token columns are labelled
    assert drawn["lines"] > 0


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium); .ci/run installs it")
def test_unmodified_head_view_stays_blank_offline(tmp_path):
    """The control: bertviz's own HTML asks a CDN and draws nothing when that is refused."""
    drawn = draw(head_view_html(), tmp_path)
    assert any("require" in url for url in drawn["refused"])
    assert drawn["texts"] == []
