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
