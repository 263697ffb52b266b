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

from analysis.attention import attention_scores, iter_blocks

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
    block: int | None = None,
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
    n_padded = query.shape[2]
    heads = torch.arange(n_heads)
    dense = m == n_padded  # no padding: real keys are all keys, no column gather needed
    cols = real_index.to(query.device)
    # Key features whose attention-weighted sums we need, one matmul for all: [m, 3]
    features = torch.stack(
        [special_keys.float(), punctuation_keys.float(), torch.arange(m, dtype=torch.float32)], dim=-1
    ).to(query.device)
    positions = features[:, 2]
    causal = isinstance(mask, str) and mask == "causal"
    sums = {name: torch.zeros(n_heads, dtype=torch.float64) for name in STAT_COLUMNS}
    offset = 0
    if block is None:  # one block of [heads, rows, keys] near 4 MB: repeated passes stay in cache (measured best)
        block = min(256, max(16, (1 << 20) // (n_heads * n_padded)))
    for rows in iter_blocks(real_index, block):
        # Under a causal mask with no padding, keys after the block's last query carry no weight: skip them.
        limit = int(rows[-1]) + 1 if causal and dense else None
        scores = attention_scores(query, key, mask, scaling, batch=batch, heads=heads, rows=rows, softcap=softcap, key_limit=limit)
        # softmax with a single exp pass, keeping log Z for the entropy: [H, r, n]
        row_max = scores.amax(-1, keepdim=True)
        weights = (scores - row_max).exp_()
        norm = weights.sum(-1, keepdim=True)
        weights.div_(norm)
        log_norm = (row_max + norm.log())[..., 0]  # [H, r]
        if not dense:  # normalised over the padded row, then restricted to real keys
            scores, weights = scores[:, :, cols], weights[:, :, cols]
        r = weights.shape[1]
        local = torch.arange(offset, offset + r, device=weights.device)  # query positions among real tokens
        # -Σ A log A = Σ A (log Z - s); masked scores are dtype-min with A = 0 exactly, so they add 0
        entropy = log_norm * weights.sum(-1) - torch.linalg.vecdot(weights, scores)
        sums["entropy"] += entropy.sum(-1).double().cpu()
        weighted = weights @ features[: weights.shape[-1]]  # [H, r, 3]
        sums["special_token_mass"] += weighted[..., 0].sum(-1).double().cpu()
        sums["punctuation_mass"] += weighted[..., 1].sum(-1).double().cpu()
        if causal:  # all keys at or left of the query: Σ_j A_ij (i - j) = i·Σ_j A_ij - Σ_j A_ij j
            distance = local.float()[None] * weights.sum(-1) - weighted[..., 2]
        else:
            distance = (weights * (positions[None, : weights.shape[-1]] - local[:, None].float()).abs()[None]).sum(-1)
        sums["mean_distance"] += distance.sum(-1).double().cpu()
        sums["first_token_mass"] += weights[:, local >= 1, 0].sum(-1).double().cpu()
        row_ids = torch.arange(r, device=weights.device)
        has_prev = local >= 1
        if has_prev.any():
            sums["prev_token"] += weights[:, row_ids[has_prev], local[has_prev] - 1].sum(-1).double().cpu()
        has_next = local + 1 < min(m, weights.shape[-1])  # with a key limit, the next key is masked (weight 0)
        if has_next.any():
            sums["next_token"] += weights[:, row_ids[has_next], local[has_next] + 1].sum(-1).double().cpu()
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
