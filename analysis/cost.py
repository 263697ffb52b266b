"""What attention costs: FLOPs and memory of each pattern against n, KV-cache bytes, FlashAttention's HBM traffic.

Formulas, not measurements (``bench/lab.py`` measures); each pattern's own formula is its ``cost`` method
in ``analysis.patterns``, written to the conventions below. Per layer and per query head, n tokens, head size d,
counting a multiply-add as 2 FLOPs and memory as the attention-sized intermediate each method keeps
(elements, not bytes). Causal masking halves the full-attention work in an ideal kernel; the
formulas count the bidirectional case, the same for every pattern, so the ratios hold.

FlashAttention's traffic follows Dao et al. 2022 (Theorem 2 and Algorithms 0/1): standard attention
reads and writes Θ(N·d + N²) elements of slow GPU memory (HBM), FlashAttention Θ(N²·d²/M) for an
on-chip SRAM of M elements, because it streams K/V blocks of B_c = ⌈M / 4d⌉ rows past query blocks of
B_r = min(B_c, d) rows and never writes the N x N matrix.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

from attnscope.analysis.patterns import Full, Pattern, Recurrence

__all__ = [
    "DEFAULT_LENGTHS",
    "DEFAULT_SRAM_BYTES",
    "attention_cost",
    "cost_frame",
    "flash_io",
    "flash_io_frame",
    "kv_cache_frame",
    "keys_per_query",
    "reach_by_layer",
    "receptive_field_frame",
    "recurrence_memory_frame",
]

DEFAULT_LENGTHS = (256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
# The FlashAttention paper's example on-chip size ("M around 100KB"); an A100 has 192 KB of SRAM per SM.
DEFAULT_SRAM_BYTES = 100 * 1024


def keys_per_query(pattern: Pattern, n: int) -> float:
    """Mean number of keys a query scores under ``pattern`` at ``n`` tokens (bidirectional count; n for a dense one)."""
    return pattern.keys_per_query(n)


def attention_cost(pattern: Pattern, n: int, d: int) -> tuple[float, float, str]:
    """(FLOPs, memory in elements, how) of one head of one layer at ``n`` tokens and head size ``d``.

    Each pattern's formula is its ``cost`` method (``analysis.patterns``), under this module's conventions.
    """
    return pattern.cost(n, d)


def cost_frame(pattern: Pattern, d: int, n_heads: int, n_layers: int, lengths=DEFAULT_LENGTHS, bytes_per_element: int = 2) -> pd.DataFrame:
    """FLOPs and memory of the pattern and of full attention for the whole model at each length.

    Args:
        d: head size; n_heads, n_layers: the model's.
        lengths: token counts n.
        bytes_per_element: for the memory column (2 = fp16/bf16).
    Returns:
        DataFrame, two rows per n (method = the pattern's label and "full"): n, method, gflops, memory_mb
        (the largest per-layer intermediate of all heads), ratio (of full), how.
    """
    rows = []
    for n in lengths:
        full_flops, full_memory, _ = attention_cost(Full(), n, d)
        for method, (flops, memory, how) in (
            ("full", (full_flops, full_memory, "n² scores")),
            (pattern.label, attention_cost(pattern, n, d)),
        ):
            rows.append(
                {
                    "n": int(n),
                    "method": method,
                    "gflops": flops * n_heads * n_layers / 1e9,
                    "memory_mb": memory * n_heads * bytes_per_element / 2**20,
                    "flops_ratio": flops / full_flops,
                    "how": how,
                }
            )
    frame = pd.DataFrame(rows)
    return frame.drop_duplicates(["n", "method"]).reset_index(drop=True)


def kv_cache_frame(
    n_layers: int, n_heads: int, n_kv_heads: int, head_dim: int, *, bytes_per_element: int = 2, tokens: int = 4096
) -> pd.DataFrame:
    """KV-cache size of the model as multi-head, every grouped-query count, and multi-query attention.

    Per token: 2 (K and V) x layers x KV heads x head size x bytes.

    Returns:
        DataFrame, one row per KV-head count G dividing ``n_heads`` (G = H: MHA, 1: MQA): kv_heads, kind,
        bytes_per_token, mb_per_sequence (``tokens`` tokens), ratio (of MHA), model (True for the model's own G).
    """
    rows = []
    for groups in [g for g in range(n_heads, 0, -1) if n_heads % g == 0]:
        per_token = 2 * n_layers * groups * head_dim * bytes_per_element
        kind = "MHA" if groups == n_heads else ("MQA" if groups == 1 else f"GQA-{groups}")
        rows.append(
            {
                "kv_heads": groups,
                "kind": kind,
                "bytes_per_token": per_token,
                "mb_per_sequence": per_token * tokens / 2**20,
                "ratio": groups / n_heads,
                "model": groups == n_kv_heads,
            }
        )
    return pd.DataFrame(rows)


def flash_io(n: int, d: int, sram_bytes: int = DEFAULT_SRAM_BYTES, bytes_per_element: int = 2) -> tuple[float, float]:
    """HBM elements read and written by one head's attention: (standard, FlashAttention).

    Standard (Dao et al. 2022, Algorithm 0): read Q, K (2Nd), write S (N²), read S, write P (2N²),
    read P and V (N² + Nd), write O (Nd): 4Nd + 4N². FlashAttention (Algorithm 1): K and V once (2Nd),
    and for each of the ⌈N / B_c⌉ key blocks every query block's Q, O, ℓ, m read and O, ℓ, m written
    (3Nd + 4N), with B_c = ⌈M / 4d⌉ for M = SRAM elements: about 12·N²·d²/M.
    """
    standard = 4.0 * n * d + 4.0 * n * n
    sram = sram_bytes / bytes_per_element
    block_cols = math.ceil(sram / (4 * d))
    if sram < 4 * d:
        msg = f"an on-chip memory of {sram_bytes} bytes cannot hold one block for head size {d}; use at least {4 * d * bytes_per_element} bytes"
        raise ValueError(msg)
    flash = 2.0 * n * d + math.ceil(n / block_cols) * (3.0 * n * d + 4.0 * n)
    return standard, flash


def flash_io_frame(d: int, sram_bytes: int = DEFAULT_SRAM_BYTES, lengths=DEFAULT_LENGTHS, bytes_per_element: int = 2) -> pd.DataFrame:
    """Standard vs FlashAttention HBM traffic per head against n.

    Returns:
        DataFrame, two rows per n: n, method ("standard" / "FlashAttention"), hbm_mb, ratio (standard / flash).
    """
    if sram_bytes < 4 * d * bytes_per_element:
        msg = f"an on-chip memory of {sram_bytes} bytes cannot hold one row block for head size {d}; use at least {4 * d * bytes_per_element} bytes"
        raise ValueError(msg)
    rows = []
    for n in lengths:
        standard, flash = flash_io(int(n), d, sram_bytes, bytes_per_element)
        for method, elements in (("standard", standard), ("FlashAttention", flash)):
            rows.append({"n": int(n), "method": method, "hbm_mb": elements * bytes_per_element / 2**20, "ratio": standard / flash})
    return pd.DataFrame(rows)


# -- recurrence with memory (Transformer-XL) ------------------------------------------------------------
def recurrence_memory_frame(
    pattern: Recurrence, n_layers: int, n_kv_heads: int, head_dim: int, *, bytes_per_element: int = 2, lengths=DEFAULT_LENGTHS
) -> pd.DataFrame:
    """Keys per query and KV memory of segment recurrence against full attention at each length.

    The cache holds (M+1)·C tokens while a segment runs (its own C and the M·C of the memory) instead of all n:
    2 (K and V) x layers x KV heads x head size x bytes per token held.

    Returns:
        DataFrame, two rows per n (method = the pattern's label and "full"): n, method, keys_per_query, cached_tokens,
        kv_cache_mb.
    """
    rows = []
    per_token = 2 * n_layers * n_kv_heads * head_dim * bytes_per_element
    for n in lengths:
        for method, keys, cached in (
            ("full", float(n), int(n)),
            (pattern.label, pattern.keys_per_query(int(n)), pattern.cached_tokens(int(n))),
        ):
            rows.append(
                {"n": int(n), "method": method, "keys_per_query": keys, "cached_tokens": cached, "kv_cache_mb": per_token * cached / 2**20}
            )
    return pd.DataFrame(rows)


def receptive_field_frame(pattern: Recurrence, n_layers: int, n: int) -> pd.DataFrame:
    """How far back the last query of a segment can see after each block: (l·M + 1)·C tokens, growing by M·C per
    layer (C with the default one segment of memory), against full attention's n from the first layer on.

    Returns:
        DataFrame, two rows per layer l = 1..n_layers (method = the pattern's label and "full"): layer, method, tokens.
    """
    rows = []
    for layer in range(1, n_layers + 1):
        rows.append({"layer": layer, "method": "full", "tokens": int(n)})
        rows.append({"layer": layer, "method": pattern.label, "tokens": pattern.receptive_field(layer, int(n))})
    return pd.DataFrame(rows)


def reach_by_layer(kept: torch.Tensor, n_layers: int, query: int = -1) -> np.ndarray:
    """Positions that can reach ``query`` through ``n_layers`` blocks that each keep the keys ``kept`` says.

    The receptive field written out by composing the mask with itself (a path key -> ... -> query, one hop per
    block); the reference for ``Recurrence.receptive_field`` and usable for any sparse pattern.

    Args:
        kept: bool [n, n], True where query i may attend to key j (the pattern combined with the model's mask).
    Returns:
        int64 [n_layers]: the count after 1, 2, ... blocks.
    """
    step = kept.to(torch.float64)
    reached = step[query].clone()  # [n] keys one block away
    counts = []
    for _ in range(n_layers):
        counts.append(int((reached > 0).sum()))
        reached = ((reached > 0).to(torch.float64) @ step).clamp(max=1)  # one more block: keys of the keys
    return np.array(counts, dtype=np.int64)
