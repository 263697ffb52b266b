"""Helpers for benchmarks: a fixed long text, peak-RSS measurement of a child process, markdown tables."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PARAGRAPH = (
    "The mouse ran across the kitchen floor while the cat watched from the chair. "
    "Later that evening she clicked the mouse to open the report, scrolled through the tables, "
    "and wrote a short note about attention heads, padding and masks in transformer models. "
)


def long_text(n_tokens: int) -> str:
    """Text with comfortably more than ``n_tokens`` tokens (truncate with max_length)."""
    return PARAGRAPH * (n_tokens // 40 + 2)


def exact_text(lm, n_tokens: int) -> str:
    """A text of exactly ``n_tokens`` tokens for ``lm``: the long text cut there and decoded back."""
    from attnscope.models.forward import tokenize

    return lm.tokenizer.decode(tokenize(lm, long_text(n_tokens), max_length=n_tokens)[0]["input_ids"][0])


def smollm2_on_cpu(threads: int | None = None):
    """SmolLM2-135M on the CPU without the load-time check; ``threads`` torch threads (default: torch's own)."""
    import torch

    from attnscope.models import load

    if threads:
        torch.set_num_threads(threads)
    return load("smollm2", device="cpu", verify=False)


def paired_parser(doc: str | None, rounds: str, check: str):
    """The options of a paired-timing benchmark: --tokens, --rounds (``rounds`` says what one round runs), --threads,
    --check (``check``: what it runs instead of the timings) and --json; add more before parse_args()."""
    import argparse

    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5, help=f"interleaved rounds of {rounds}")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--check", action="store_true", help=f"the {check} check instead of the timings")
    parser.add_argument("--json", default=None, help="also write the rows and the machine to this file")
    return parser


def print_table(title: str, rows: list[dict]) -> None:
    print(f"{title}\n")
    print(markdown(rows, list(rows[0])))


def plain_forward(lm, text: str):
    """A call that runs ``lm``'s own forward on ``text`` (no cache, no recording): the unit the paired ratios use."""
    import torch

    from attnscope.models import run

    ids = torch.as_tensor(run(lm, text).input_ids)

    def forward() -> None:
        with torch.inference_mode():
            lm.model(input_ids=ids, use_cache=False)

    return forward


def show_timings(title: str, result: dict, note: str) -> tuple[list[dict], dict[str, float]]:
    """Print the steps' table under ``title``, then the paired medians and ``note``; return the rows and the medians."""
    rows = step_rows(result["steps"])
    paired = paired_medians(result["ratios"])
    print_table(title, rows)
    print(f"\npaired (median of per-round ratios): {paired}; {note}")
    return rows, paired


def paired_medians(ratios: dict[str, list[float]]) -> dict[str, float]:
    """Each paired ratio's median over the rounds, to two decimals."""
    import statistics

    return {name: round(statistics.median(values), 2) for name, values in ratios.items()}


def step_rows(steps: dict[str, list[float]]) -> list[dict]:
    """One row per timed step (steps without times left out): its best time, that best as a multiple of the best
    plain forward (the step "forward"), and the spread between its slowest and best run."""
    forward = min(steps["forward"])
    return [
        {
            "step": step,
            "best s": f"{min(times):.3f}",
            "× plain forward (best)": f"{min(times) / forward:.2f}",
            "spread": f"{100 * (max(times) - min(times)) / min(times):.0f}%",
        }
        for step, times in steps.items()
        if times
    ]


def write_json(path: str | None, payload: dict) -> None:
    """The rows and the machine as JSON at ``path`` (nothing when ``path`` is None)."""
    if path:
        Path(path).write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        import torch

        threads = torch.get_num_threads()
        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    except Exception:  # noqa: BLE001 - best effort description
        threads, gpu = "?", "?"
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} CPU cores ({cpu}), {mem:.0f} GiB RAM, torch threads {threads}, {gpu}"


def in_child(module: str, payload: dict, timeout: int = 1800) -> dict:
    """Run ``python -m module`` with a JSON payload in a fresh process; it prints one JSON line last."""
    proc = subprocess.run(
        [sys.executable, "-m", module, json.dumps(payload)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"},
    )
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["killed"])[-1]
        return {"error": tail if proc.returncode > 0 else f"killed (signal {-proc.returncode}, likely out of memory)"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def markdown(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(str(row.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)
