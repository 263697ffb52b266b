"""Measuring one forward pass: median wall time and peak memory (the Backends page and bench/backends.py)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["ForwardCost", "best_of", "measure_forward", "timed"]


@dataclass(frozen=True)
class ForwardCost:
    """What one forward pass cost."""

    seconds: float  # median wall time of one forward
    peak_bytes: int | None  # peak memory above the level just before the forward; None if unmeasurable
    memory: str  # how peak_bytes was measured


def _synchronize(device) -> None:
    if str(device).startswith("cuda") and torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(call: Callable[[], object], device: str = "cpu") -> tuple[object, float]:
    """(result, seconds) of one call; on CUDA the queued kernels are waited for before and after, so
    the seconds are the GPU's work, not only the launch. Every timing in attnscope goes through here."""
    _synchronize(device)
    start = time.perf_counter()
    result = call()
    _synchronize(device)
    return result, time.perf_counter() - start


def best_of(call: Callable[[], object], repeats: int = 3, device: str = "cpu") -> tuple[float, object]:
    """(fastest seconds, last result) over ``repeats`` timed calls."""
    best, result = float("inf"), None
    for _ in range(max(1, repeats)):
        result, seconds = timed(call, device)
        best = min(best, seconds)
    return best, result


def _proc_status_kb(field_name: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset this process's peak-RSS mark (Linux: write 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def measure_forward(forward: Callable[[], object], device: str = "cpu", repeats: int = 3) -> ForwardCost:
    """Time a forward pass and measure its peak memory.

    Memory is read on the first call: on CUDA ``torch.cuda.max_memory_allocated`` above what was
    allocated before; on the CPU the process's peak resident set (VmHWM, reset just before) above its
    resident set before. Then ``repeats`` more calls are timed (median).

    Args:
        forward: runs one forward pass (its result is dropped).
        device: "cpu" or a CUDA device ("cuda", "cuda:0").
        repeats: timed calls after the first.
    Returns:
        ForwardCost.
    """
    cuda = str(device).startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        forward()
        torch.cuda.synchronize()
        peak: int | None
        peak, memory = torch.cuda.max_memory_allocated() - before, "CUDA max_memory_allocated above the weights"
    else:
        reset = _reset_peak_rss()
        rss = _proc_status_kb("VmRSS")
        forward()
        after = _proc_status_kb("VmHWM") if reset else None
        peak = None if rss is None or after is None else max(0, after - rss) * 1024
        memory = "peak RSS of the process above its RSS before the forward"
    times = [timed(forward, device)[1] for _ in range(max(1, repeats))]
    return ForwardCost(seconds=float(statistics.median(times)), peak_bytes=None if peak is None else int(peak), memory=memory)
