"""Per-head statistics, streamed over query blocks (never all heads' maps at once).

Definitions follow Clark et al. 2019 and Xiao et al. 2023 (see the README):
- entropy: mean over queries of -Σ_j A[i, j] log A[i, j] (nats)
- first_token_mass: mean over queries i >= 1 of A[i, 0] (the attention-sink α)
- special_token_mass: mean over queries of the mass on special tokens ([CLS]/[SEP]/BOS/EOS)
- punctuation_mass: mean over queries of the mass on punctuation tokens
- prev_token: mean over i >= 1 of A[i, i-1]; next_token: mean over i < n-1 of A[i, i+1]
- mean_distance: mean over queries of Σ_j A[i, j]·|i - j| (in tokens)
"""

from __future__ import annotations

import numpy as np
import torch

from analysis.attention import DEFAULT_BLOCK, attention_rows, iter_blocks

STAT_COLUMNS = (
    "entropy",
    "first_token_mass",
    "special_token_mass",
    "punctuation_mass",
    "prev_token",
    "next_token",
    "mean_distance",
)


def layer_head_stats(
    query: torch.Tensor,
    key: torch.Tensor,
    mask,
    scaling: float,
    *,
    batch: int,
    real_index: torch.Tensor,
    special_keys: torch.Tensor,
    punctuation_keys: torch.Tensor,
    softcap: float | None = None,
    block: int = DEFAULT_BLOCK,
) -> dict[str, np.ndarray]:
    """Statistics of every head of one layer for one batch item, over its real tokens.

    Args:
        query: [B, H, n, d]; key: [B, KV, n, d]; mask as in ``attention_rows``.
        real_index: int64 [m] padded positions of the real tokens, in order.
        special_keys, punctuation_keys: bool [m] token classes of the real tokens.
    Returns:
        {stat: float64 [H]} for each name in STAT_COLUMNS.
    """
    n_heads = query.shape[1]
    m = len(real_index)
    heads = torch.arange(n_heads)
    cols = real_index.to(query.device)
    special = special_keys.to(query.device, torch.float32)
    punct = punctuation_keys.to(query.device, torch.float32)
    positions = torch.arange(m, device=query.device, dtype=torch.float32)
    sums = {name: torch.zeros(n_heads, dtype=torch.float64) for name in STAT_COLUMNS}
    offset = 0
    for rows in iter_blocks(real_index, block):
        weights = attention_rows(query, key, mask, scaling, batch=batch, heads=heads, rows=rows, softcap=softcap)
        weights = weights[:, :, cols]  # [H, r, m] real keys only
        r = weights.shape[1]
        local = torch.arange(offset, offset + r, device=weights.device)  # query positions among real tokens
        sums["entropy"] += (-torch.special.xlogy(weights, weights).sum(-1)).sum(-1).double().cpu()
        first = weights[:, :, 0]
        sums["first_token_mass"] += first[:, local >= 1].sum(-1).double().cpu()
        sums["special_token_mass"] += (weights @ special).sum(-1).double().cpu()
        sums["punctuation_mass"] += (weights @ punct).sum(-1).double().cpu()
        distance = (positions[None, :] - local[:, None].float()).abs()  # [r, m]
        sums["mean_distance"] += (weights * distance[None]).sum((-1, -2)).double().cpu()
        has_prev = local >= 1
        if has_prev.any():
            idx = local[has_prev]
            sums["prev_token"] += weights[:, has_prev, :].gather(-1, (idx - 1)[None, :, None].expand(n_heads, -1, 1)).sum((-1, -2)).double().cpu()
        has_next = local < m - 1
        if has_next.any():
            idx = local[has_next]
            sums["next_token"] += weights[:, has_next, :].gather(-1, (idx + 1)[None, :, None].expand(n_heads, -1, 1)).sum((-1, -2)).double().cpu()
        offset += r
    counts = {
        "entropy": m,
        "first_token_mass": max(m - 1, 1),
        "special_token_mass": m,
        "punctuation_mass": m,
        "prev_token": max(m - 1, 1),
        "next_token": max(m - 1, 1),
        "mean_distance": m,
    }
    return {name: (sums[name] / counts[name]).numpy() for name in STAT_COLUMNS}
