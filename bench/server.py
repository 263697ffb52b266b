"""What the server does per interaction, apart from the browsers: script-run and CPU seconds per page.

Drives the dashboard in this process with Streamlit's AppTest (the same script runs, session state and caches as
``streamlit run``; no websocket, no browser), one page at a time, and times each interaction's script run:

- ``new text``: the workspace's text changes (a cache miss: the model runs, the page's results are computed);
- ``rerun``: the same inputs again (a cache hit: what any click that changes nothing costs at least).

CPU seconds are the process's (every thread: the script thread and torch's workers). One server sustains about
``1 / wall`` interactions per second one after another, and at most ``cores / cpu`` when sessions overlap and the
work is CPU-bound; both are printed. The machine should be quiet: other jobs inflate wall and CPU alike.

    python -m bench.server                              # every page, 5 interactions of each kind, SmolLM2
    python -m bench.server --pages attention,heads --interactions 1 --out /tmp/server.json   # a smoke run
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import time
from pathlib import Path

from bench.common import ROOT, machine

RESULTS = ROOT / "bench" / "results"
APP = str(ROOT / "app.py")
PAGES = ("attention", "masking", "compare", "heads", "explain", "routes", "generate", "drift", "padding", "backends", "lab", "anatomy")
# The box that holds the workspace's text on each page (sidebar text areas); the others use the workspace's "text".
TEXT_BOX = {"padding": "padding_texts", "generate": "gen_prompt"}
WORDS = ("mouse", "cheese", "garden", "window", "river", "lamp", "violin", "harbour", "pepper", "meadow")


def texts(page: str, i: int) -> str:
    """A text no earlier interaction used (a cache miss); Padding gets two lines of different lengths."""
    a, b = WORDS[i % len(WORDS)], WORDS[(i * 3 + 1) % len(WORDS)]
    text = f"The cat chased the mouse past the {a} and the {b}, run {i}."
    return f"{text}\nA {b}." if page == "padding" else text


def timed(at) -> tuple[float, float, list[str]]:
    """Run the script once: (wall seconds, CPU seconds of this process, exceptions and errors on the page)."""
    wall, cpu = time.perf_counter(), time.process_time()
    at.run()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    problems = [e.value for e in at.exception] + [e.value for e in at.error]
    return wall, cpu, problems


def measure_page(page: str, model: str, interactions: int, timeout: float) -> list[dict]:
    """Open ``page`` with ``model`` (warmed once, not timed), then time ``interactions`` of each kind."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=timeout)
    at.query_params.update({"model": model})
    at.run()
    at.switch_page(f"ui/{page}.py").run()  # the page's first run, the model's load: not an interaction
    rows = []
    for i in range(interactions):
        key = TEXT_BOX.get(page, "text")
        at.sidebar.text_area(key=key).set_value(texts(page, PAGES.index(page) * 1000 + i))
        wall, cpu, problems = timed(at)
        rows.append({"page": page, "kind": "new text", "wall_s": wall, "cpu_s": cpu, "problems": problems})
        wall, cpu, problems = timed(at)
        rows.append({"page": page, "kind": "rerun", "wall_s": wall, "cpu_s": cpu, "problems": problems})
    return rows


def summarize(rows: list[dict], cores: int) -> list[dict]:
    """Per page and kind: mean and median seconds, CPU seconds, and the interactions per second one server sustains."""
    out = []
    for key in dict.fromkeys((r["page"], r["kind"]) for r in rows):
        mine = [r for r in rows if (r["page"], r["kind"]) == key]
        wall = [r["wall_s"] for r in mine]
        cpu = [r["cpu_s"] for r in mine]
        mean_wall, mean_cpu = statistics.fmean(wall), statistics.fmean(cpu)
        out.append(
            {
                "page": key[0],
                "kind": key[1],
                "n": len(mine),
                "wall_s_mean": round(mean_wall, 4),
                "wall_s_median": round(statistics.median(wall), 4),
                "cpu_s_mean": round(mean_cpu, 4),
                "serial_per_s": round(1 / mean_wall, 2) if mean_wall > 0 else None,
                "cpu_bound_per_s": round(cores / mean_cpu, 2) if mean_cpu > 0 else None,
                "problems": sorted({p[:160] for r in mine for p in r["problems"]}),
            }
        )
    return out


def table(summary: list[dict]) -> str:
    head = "| page | interaction | n | wall s (mean) | wall s (median) | CPU s (mean) | per s, one after another | per s, CPU-bound |"
    lines = [head, "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in summary:
        lines.append(
            f"| {r['page']} | {r['kind']} | {r['n']} | {r['wall_s_mean']:.3f} | {r['wall_s_median']:.3f} | "
            f"{r['cpu_s_mean']:.3f} | {r['serial_per_s']} | {r['cpu_bound_per_s']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", default=",".join(PAGES), help="comma-separated pages (default: all twelve)")
    parser.add_argument("--model", default="smollm2", help="the workspace's model (default smollm2)")
    parser.add_argument("--interactions", type=int, default=5, help="interactions of each kind per page (default 5)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds one script run may take (default 600)")
    parser.add_argument(
        "--out", type=Path, default=RESULTS / "server-cpu.json", help="JSON results (default bench/results/server-cpu.json)"
    )
    args = parser.parse_args()
    pages = [p.strip() for p in args.pages.split(",") if p.strip()]
    unknown = sorted(set(pages) - set(PAGES))
    if unknown:
        sys.exit(f"unknown page(s) {', '.join(unknown)}; pick from {', '.join(PAGES)}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    load_before = os.getloadavg()[0]
    cores = os.cpu_count() or 1
    rows = []
    for page in pages:
        rows += measure_page(page, args.model, args.interactions, args.timeout)
        print(f"{page}: done", file=sys.stderr, flush=True)
    summary = summarize(rows, cores)
    result = {
        "date": dt.date.today().isoformat(),
        "machine": machine(),
        "model": args.model,
        "interactions_per_kind": args.interactions,
        "load_average_1min": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
        "how": "AppTest in one process: script-run wall and process CPU seconds per interaction, after the page's first run",
        "rows": summary,
        "runs": rows,
    }
    print(f"{args.model}, {args.interactions} interaction(s) of each kind per page, {machine()}")
    print(f"load average {result['load_average_1min']['before']} before, {result['load_average_1min']['after']} after")
    print(table(summary))
    for r in summary:
        for problem in r["problems"]:
            print(f"  {r['page']} {r['kind']}: {problem}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
