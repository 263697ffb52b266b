"""Rows of a committed benchmark result file (bench/backends.py writes them) as frames for the Backends page."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

__all__ = ["BENCH_COLUMNS", "ratio_frame", "scaling_frame"]

# One benchmark measurement (bench/backends.py writes these, the scaling chart reads them).
BENCH_COLUMNS = ("backend", "tokens", "ms_per_forward", "peak_mb")


def scaling_frame(rows: Sequence[dict]) -> pd.DataFrame:
    """Benchmark rows as a long-form frame for the scaling chart.

    Args:
        rows: dicts with at least ``BENCH_COLUMNS`` (rows with an ``error`` or missing numbers are kept
            with NaN so the table can say why).
    Returns:
        DataFrame with columns backend, tokens, ms_per_forward, peak_mb, error, and spread_pct (the
        (max - min) / min of the trials' times, NaN for sweeps measured once); sorted by backend, tokens.
    """
    frame = pd.DataFrame(list(rows))
    for column in (*BENCH_COLUMNS, "error"):
        if column not in frame.columns:
            frame[column] = np.nan if column not in ("backend", "error") else None
    if "spread_pct" not in frame.columns:
        frame["spread_pct"] = np.nan
    frame = frame[[*BENCH_COLUMNS, "error", "spread_pct"]].copy()
    frame["spread_pct"] = pd.to_numeric(frame["spread_pct"], errors="coerce")
    frame["tokens"] = frame["tokens"].astype(int)
    frame["ms_per_forward"] = pd.to_numeric(frame["ms_per_forward"], errors="coerce")
    frame["peak_mb"] = pd.to_numeric(frame["peak_mb"], errors="coerce")
    return frame.sort_values(["backend", "tokens"], kind="stable").reset_index(drop=True)


def ratio_frame(frame: pd.DataFrame, reference: str, other: str) -> pd.DataFrame:
    """How much ``other`` saves against ``reference`` at each length.

    Args:
        frame: from ``scaling_frame``.
        reference, other: backend names in ``frame``.
    Returns:
        DataFrame: tokens, speedup (reference time / other time), memory_ratio (reference peak /
        other peak); only lengths both measured.
    """
    ref = frame[frame["backend"] == reference].set_index("tokens")
    oth = frame[frame["backend"] == other].set_index("tokens")
    common = ref.index.intersection(oth.index)
    if len(common) == 0:
        msg = f"no length measured for both {reference!r} and {other!r}; run bench/backends.py with both"
        raise ValueError(msg)
    out = pd.DataFrame({"tokens": common})
    out["speedup"] = (ref.loc[common, "ms_per_forward"] / oth.loc[common, "ms_per_forward"]).to_numpy()
    out["memory_ratio"] = (ref.loc[common, "peak_mb"] / oth.loc[common, "peak_mb"]).to_numpy()
    return out
