"""Benchmark: the dashboard's cost at a sentence. One browser session, nothing else on the server.

The server starts as ``make run`` starts it (``bench.load.serve``), headless Chromium drives it with
playwright (``bench.load.CHROMIUM``, ``CHROMIUM_ARGS``). For each bundled model, a sentence (~12 tokens) is
typed into the sidebar's text box, each time a new one (so no cached record answers), and the seconds are
taken from the input to:

  map       the Attention page's heatmap of layer 0, head 0 (its Head tab open), drawn
  overview  the Attention page's thumbnails of every head (its All heads tab open), drawn
  heads     the Heads page's statistics of every head (its Heatmaps tab), drawn
  page      the same page's script run finished (every tab computed), for each of the three

"Drawn" means a chart with that title, not greyed out as stale, visible, whose marks differ from the ones
shown before the input (so the previous text's chart never counts). The first interaction of each kind
(imports, model load, caches) is left out; the table keeps the median and the fastest of ``--repeats``.

Usage: python -m bench.sentence [--repeats 3] [--label after] [--out bench/results/sentence-cpu.json]
       (--label names the code measured; results for another label already in --out are kept, so a run
       of the code before a change and one after it end up side by side)
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine, markdown  # noqa: E402
from bench.load import CHROMIUM, CHROMIUM_ARGS, RESULTS, Tap, select, selected, serve, type_text  # noqa: E402

MODELS = ("minilm", "smollm2")
WORDS = ("zebra", "violin", "harbor", "lantern", "meadow", "comet", "pebble", "canyon", "orchid", "glacier", "falcon", "tunnel")
TIMEOUT = 300.0
# (what, page URL path, tab to open first or None, a piece of the chart's title)
VIEWS = (
    ("map", "", None, "head 0"),
    ("overview", "", "All heads", "layers x"),
    ("heads", "heads", None, "entropy (nats)"),
)

FINGERPRINT_JS = """([title]) => {
  const chart = [...document.querySelectorAll("[data-testid='stVegaLiteChart']")].find(c =>
    [...c.querySelectorAll("[aria-roledescription='title'][aria-label]")].some(t => t.getAttribute("aria-label").includes(title))
    && !c.closest("[data-stale='true']") && c.offsetParent !== null && c.querySelector("svg"));
  if (!chart) return null;
  const marks = [...chart.querySelectorAll("svg [aria-roledescription$=' mark'][aria-label]")].map(e => e.getAttribute("aria-label")).join("|");
  let hash = 0;
  for (let i = 0; i < marks.length; i++) hash = (hash * 31 + marks.charCodeAt(i)) | 0;
  return marks.length ? `${marks.length}:${hash}` : null;
}"""


def sentence(model: str, view: str, k: int) -> str:
    """A new sentence each time (about 12 tokens)."""
    word = WORDS[k % len(WORDS)]
    return f"The {word} near the old mill was seen by {model} readers on {view} day {k}."


async def fingerprint(page, title: str) -> str | None:
    return await page.evaluate(FINGERPRINT_JS, [title])


async def drawn_after(page, title: str, before: str | None, timeout: float) -> None:
    """Wait until a live chart titled ``title`` shows marks other than ``before``."""
    deadline = time.monotonic() + timeout
    while True:
        now = await fingerprint(page, title)
        if now is not None and now != before:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"no new {title!r} chart within {timeout:.0f} s")
        await asyncio.sleep(0.02)


async def one_view(browser, url: str, model: str, view: str, path: str, tab: str | None, title: str, repeats: int) -> dict:
    """``repeats`` + 1 new sentences on one page; seconds to the drawn chart and to the finished run (first left out)."""
    context = await browser.new_context(viewport={"width": 1400, "height": 1800})
    page = await context.new_page()
    tap = Tap()
    tap.attach(page)
    try:
        await page.goto(f"{url}/{path}", timeout=TIMEOUT * 1000)
        await tap.wait(lambda: bool(tap.runs) and tap.runs[-1].status is not None, TIMEOUT)
        sidebar = page.locator("[data-testid='stSidebar']")
        if await selected(page, "Model", sidebar) != model:
            await tap.commit(lambda: select(page, "Model", model, sidebar), TIMEOUT)
            await tap.settled(TIMEOUT)
        if tab is not None:
            await page.get_by_role("tab", name=tab, exact=True).click()
        box = sidebar.get_by_role("textbox", name="Text", exact=True)
        drawn, finished = [], []
        for k in range(repeats + 1):
            await tap.settled(TIMEOUT)
            await drawn_after(page, title, None, TIMEOUT)  # the current text's chart is on the page
            before = await fingerprint(page, title)
            start = time.monotonic()
            await tap.commit(lambda k=k: type_text(box, sentence(model, view, k)), TIMEOUT)
            await drawn_after(page, title, before, TIMEOUT)
            seconds = time.monotonic() - start
            await tap.settled(TIMEOUT)
            done = time.monotonic() - start
            if k:  # the first one pays for imports, the model's load and first-use caches
                drawn.append(seconds)
                finished.append(done)
        return {"drawn": drawn, "finished": finished}
    finally:
        await context.close()


async def drive(url: str, repeats: int) -> list[dict]:
    from playwright.async_api import async_playwright

    rows = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            for model in MODELS:
                for view, path, tab, title in VIEWS:
                    times = await one_view(browser, url, model, view, path, tab, title, repeats)
                    rows.append(
                        {
                            "model, view": f"{model}, {view}",
                            "drawn s (median)": round(statistics.median(times["drawn"]), 2),
                            "drawn s (fastest)": round(min(times["drawn"]), 2),
                            "page run s (median)": round(statistics.median(times["finished"]), 2),
                        }
                    )
                    print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        finally:
            await browser.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="timed sentences per model and view (after one untimed)")
    parser.add_argument("--label", default="after", help="what code this measures (a column of the result)")
    parser.add_argument("--out", type=Path, default=RESULTS / "sentence-cpu.json")
    parser.add_argument("--log", type=Path, default=Path(tempfile.gettempdir()) / "attnscope-sentence-server.log")
    args = parser.parse_args()
    if CHROMIUM is None:
        sys.exit("chromium is not installed (apt-get install chromium)")
    load_before = os.getloadavg()[0]
    with serve(args.log) as server:
        rows = asyncio.run(drive(server.url, args.repeats))
    loads = f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    for row in rows:
        row["code"] = args.label
    print(f"{machine()}; load average {loads}\n")
    print(markdown(rows, list(rows[0])))
    old = json.loads(args.out.read_text(encoding="utf-8")) if args.out.exists() else {}
    kept = [row for row in old.get("rows", []) if row.get("code") != args.label]
    result = {k: v for k, v in old.items() if k not in ("machine", "rows")}
    result[f"run {args.label}"] = f"{dt.date.today().isoformat()}, {args.repeats} timed sentences per cell, load average (1 min) {loads}"
    result = {"machine": machine(), **result, "rows": kept + rows}
    args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
