"""The pure parts of head probes: induction score and head-to-head pattern similarity.

Running a model on probe inputs lives in ``models.probes``; here are only functions over
recorded query/key tensors and maps, streamed over query chunks like ``analysis.heads``.

- induction score (Olsson et al. 2022; the TransformerLens demo): feed random tokens of length T
  repeated twice; the score is the mean of the attention diagonal at offset -(T-1): a query in the
  second copy attending to the token just after its earlier occurrence.
- pattern similarity of two heads: mean over query rows of 1 - JSD(A_h[i], A_g[i]), the
  Jensen-Shannon divergence in bits (so 1 = identical rows, 0 = disjoint support).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from attnscope.analysis.attention import DEFAULT_CHUNK, LayerTensors, attention_rows, attention_scores, iter_row_chunks, softmax_rows

__all__ = [
    "group_similarity",
    "induction_score",
    "js_similarity",
    "layer_head_similarity",
    "layer_induction_scores",
]


def induction_score(weights, period: int) -> np.ndarray:
    """Mean of the attention diagonal at offset -(period-1), the literature's induction score.

    Args:
        weights: [..., n, n] attention maps (numpy or torch); rows are queries.
        period: T, the length of the random segment that is repeated (n >= T + 1).
    Returns:
        float64 [...] one score per map.
    """
    w = torch.as_tensor(np.asarray(weights) if not torch.is_tensor(weights) else weights)
    n = w.shape[-1]
    if not 1 <= period < n:
        msg = f"period {period} must lie in 1..{n - 1} for maps of {n} tokens (the sequence holds the segment twice)"
        raise ValueError(msg)
    stripe = torch.diagonal(w, offset=-(period - 1), dim1=-2, dim2=-1)  # [..., n - period + 1]
    return stripe.double().mean(-1).cpu().numpy()


def layer_induction_scores(layer: LayerTensors, *, period: int, chunk: int = DEFAULT_CHUNK) -> np.ndarray:
    """Induction score of every head of one layer, averaged over the batch, without forming full maps.

    Args:
        layer: the layer's inputs (``analysis.attention.LayerTensors``); every batch item must be a
            probe sequence of n tokens without padding.
        period: T, the length of the repeated random segment.
    Returns:
        float64 [H].
    """
    batch_size, n_heads, n = layer.query.shape[0], layer.query.shape[1], layer.query.shape[2]
    if not 1 <= period < n:
        msg = f"period {period} must lie in 1..{n - 1} for probe sequences of {n} tokens"
        raise ValueError(msg)
    heads = torch.arange(n_heads)
    rows_all = torch.arange(period - 1, n)  # queries that have a key at offset -(period-1)
    total = torch.zeros(n_heads, dtype=torch.float64)
    for b in range(batch_size):
        for rows in iter_row_chunks(rows_all, chunk):
            weights = attention_rows(layer, batch=b, heads=heads, rows=rows)  # [H, r, n]
            cols = (rows - (period - 1)).to(weights.device)
            stripe = weights.gather(-1, cols[None, :, None].expand(n_heads, -1, 1))  # [H, r, 1]
            total += stripe.sum((-1, -2)).double().cpu()
    return (total / (batch_size * len(rows_all))).numpy()


def js_similarity(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """1 - Jensen-Shannon divergence (bits) between rows of two distributions. [..., n] -> [...]."""
    mid = 0.5 * (p + q)
    # xlogy(x, x / m) is 0 where x == 0, so masked keys contribute nothing.
    kl_p = torch.special.xlogy(p, p).sum(-1) - torch.special.xlogy(p, mid).sum(-1)
    kl_q = torch.special.xlogy(q, q).sum(-1) - torch.special.xlogy(q, mid).sum(-1)
    jsd = 0.5 * (kl_p + kl_q) / math.log(2)
    return (1.0 - jsd).clamp(0.0, 1.0)


def layer_head_similarity(layer: LayerTensors, *, batch: int, real_index: torch.Tensor, chunk: int = DEFAULT_CHUNK) -> np.ndarray:
    """Pairwise pattern similarity of all heads of one layer over one text's real tokens.

    Args:
        layer: the layer's inputs (``analysis.attention.LayerTensors``).
        real_index: int64 [m] padded positions of the real tokens.
    Returns:
        float64 [H, H]: mean over query rows of 1 - JSD between the two heads' rows (diagonal = 1).
    """
    n_heads, n_padded = layer.query.shape[1], layer.query.shape[2]
    m = len(real_index)
    dense = m == n_padded
    causal = isinstance(layer.mask, str) and layer.mask == "causal"
    pairs = torch.triu_indices(n_heads, n_heads, offset=1)  # [2, P]
    sums = torch.zeros(pairs.shape[1], dtype=torch.float64)
    heads = torch.arange(n_heads)
    cols = real_index.to(layer.query.device)
    # JSD(p, q) = H(½(p+q)) - ½H(p) - ½H(q) in bits, and Σ x log₂ x of ½(p+q) = ½ Σ s log₂ s - ½ Σ s with
    # s = p + q: one pass over s per pair, the heads' own entropies once. Every weight is lifted by TINY
    # first, so no log sees 0 (x log x → 0 there; log₂ is several times faster than log and than xlogy).
    # Keys after a causal chunk carry no weight in any head, so they are skipped.
    for rows in iter_row_chunks(real_index, chunk):
        limit = int(rows[-1]) + 1 if causal and dense else None
        scores = attention_scores(layer, batch=batch, heads=heads, rows=rows, key_limit=limit)
        weights = softmax_rows(scores, layer.sinks, batch=batch, heads=None, rows=rows)  # [H, r, k]
        if not dense:  # normalised over the padded row, then restricted to real keys
            weights = weights[:, :, cols]
        lifted = weights.add_(_TINY)  # [H, r, k], no zeros
        mass = lifted.sum(-1)  # [H, r]
        self_term = torch.linalg.vecdot(lifted, torch.log2(lifted))  # [H, r] Σ p log₂ p
        sims = []
        for head in range(n_heads - 1):
            both = lifted[head + 1 :] + lifted[head]  # [H-1-head, r, k]: this head with every later one
            both_term = torch.linalg.vecdot(both, torch.log2(both))  # [H-1-head, r] Σ s log₂ s
            mid_term = 0.5 * both_term - 0.5 * (mass[head + 1 :] + mass[head])  # Σ m log₂ m
            jsd = 0.5 * (self_term[head + 1 :] + self_term[head]) - mid_term  # bits
            sims.append((1.0 - jsd).clamp(0.0, 1.0).sum(-1))
        sums += torch.cat(sims).double().cpu()  # pair order = triu_indices order
    result = np.eye(n_heads)
    means = (sums / max(m, 1)).numpy()
    result[pairs[0].numpy(), pairs[1].numpy()] = means
    result[pairs[1].numpy(), pairs[0].numpy()] = means
    return result


_TINY = 1e-30  # x·log₂x at 1e-30 is -1e-28 (and 8,192 of them -8e-25): zero for every sum here


def group_similarity(similarity: np.ndarray, kv_group: int) -> dict[str, float]:
    """Mean similarity of query-head pairs sharing a KV head versus pairs reading different KV heads.

    Args:
        similarity: [H, H] from ``layer_head_similarity``.
        kv_group: query heads per KV head (H / KV); head h reads KV head h // kv_group.
    Returns:
        {"within_group": float, "across_groups": float}; within_group is NaN without grouping
        (kv_group == 1), across_groups is NaN for multi-query attention (one KV head).
    """
    sim = np.asarray(similarity, dtype=np.float64)
    n_heads = sim.shape[0]
    if kv_group < 1 or n_heads % kv_group:
        msg = f"kv_group {kv_group} must divide the {n_heads} heads"
        raise ValueError(msg)
    group = np.arange(n_heads) // kv_group
    upper = np.triu(np.ones((n_heads, n_heads), dtype=bool), k=1)
    same = upper & (group[:, None] == group[None, :])
    other = upper & (group[:, None] != group[None, :])
    within = float(sim[same].mean()) if same.any() else float("nan")
    across = float(sim[other].mean()) if other.any() else float("nan")
    return {"within_group": within, "across_groups": across}
