"""Per-head statistics, streamed over query chunks (never all heads' maps at once).

Definitions follow Clark et al. 2019 and Xiao et al. 2023 (see docs/api.md):
- entropy: mean over queries of -Σ_j A[i, j] log A[i, j] (nats)
- first_token_mass: mean over queries i >= 1 of A[i, 0] (the attention-sink α)
- special_token_mass: mean over queries of the mass on special tokens ([CLS]/[SEP]/BOS/EOS)
- punctuation_mass: mean over queries of the mass on punctuation tokens
- prev_token: mean over i >= 1 of A[i, i-1]; next_token: mean over i < n-1 of A[i, i+1]
- mean_distance: mean over queries of Σ_j A[i, j]·|i - j| (in tokens)

Two ways to the same numbers. On the CPU in float32 (the common case) one fused attention call
per layer does it: PyTorch's blocked flash-attention kernel returns ``A·V`` and the row log-sum-exp
``lse``, and every statistic is linear in ``A`` once ``V`` holds the right key features:
  entropy  -Σ A log A = lse·ΣA - scale·q·(Σ_j A_j k_j)   (the keys themselves are the features)
  class masses, positions: V columns holding the key's class indicator and its position
  first/prev/next token: A_ij = exp(scale·q_i·k_j - lse_i) for the one key j each row needs
  |i - j| (no causal mask): a second call under a causal mask gives the mass left of each query.
The scores never leave the kernel's cache-sized tiles, so this costs about what the forward's own
attention costs. Elsewhere (GPU, bf16, softcapped logits) the statistics stream over query chunks.
A layer whose weights were captured during the forward (short inputs) is read instead (``captured_stats``):
one matrix product and a max per row over weights that already exist, for any number of layers at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

import numpy as np
import torch

from attnscope.analysis.attention import LayerTensors, attention_scores, captured, is_additive, iter_row_chunks, normalise, sink_rows

if TYPE_CHECKING:
    import pandas as pd

    from attnscope.analysis.record_view import RecordView

__all__ = ["STAT_COLUMNS", "captured_stats", "head_table", "layer_head_stats", "weight_stats"]


# PyTorch's CPU flash-attention kernel with the row log-sum-exp (a stable aten op; absent → streaming).
_FLASH_CPU = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
# Extra head dims carrying key features in V (Q and K get zeros there, so scores are unchanged):
# special, punctuation, position, real-key indicator, padded to a multiple of 8 for the kernel's vectors.
_FEATURE_DIMS = 8
# Weights below this are not logged for lse (float32's smallest normal is 1.2e-38).
_SMALLEST_LOG = 1e-30

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
    layer: LayerTensors,
    *,
    batch: int,
    real_index: torch.Tensor,
    special_keys: torch.Tensor,
    punctuation_keys: torch.Tensor,
    chunk: int | None = None,
) -> dict[str, np.ndarray]:
    """Statistics of every head of one layer for one batch item, over its real tokens.

    Args:
        layer: the layer's inputs (``analysis.attention.LayerTensors``).
        real_index: int64 [m] padded positions of the real tokens, in order.
        special_keys, punctuation_keys: bool [m] token classes of the real tokens.
    Returns:
        {stat: float64 [H]} for each name in STAT_COLUMNS.
    """
    if chunk is None and captured(layer) is not None:  # weights kept by the forward: read them
        stats = captured_stats([layer], batch=batch, real_index=real_index, special_keys=special_keys, punctuation_keys=punctuation_keys)
        return {name: values[0] for name, values in stats.items()}
    if chunk is None and _fused_applies(layer):
        return _fused_stats(layer, batch=batch, real_index=real_index, special_keys=special_keys, punctuation_keys=punctuation_keys)
    return _streamed_stats(
        layer, batch=batch, real_index=real_index, special_keys=special_keys, punctuation_keys=punctuation_keys, chunk=chunk
    )


def _fused_applies(layer: LayerTensors) -> bool:
    """Whether the fused CPU kernel gives this layer's statistics (no sinks or softcap, float32 on the CPU)."""
    query, key, mask = layer.query, layer.key, layer.mask
    return (
        _FLASH_CPU is not None
        and layer.sinks is None
        and layer.softcap is None
        and query.device.type == "cpu"
        and query.dtype == torch.float32
        and key.dtype == torch.float32
        and query.shape[2] == key.shape[2]
        and (isinstance(mask, str) or (isinstance(mask, torch.Tensor) and mask.dtype == torch.bool))
    )


def _additive(allowed: torch.Tensor) -> torch.Tensor:
    """bool [..., q, k] (True = may attend) -> float32 0 / -inf, the form the kernel takes."""
    return torch.zeros(allowed.shape, dtype=torch.float32, device=allowed.device).masked_fill_(~allowed, float("-inf"))


def _fused_stats(layer: LayerTensors, *, batch: int, real_index, special_keys, punctuation_keys) -> dict[str, np.ndarray]:
    query, key, mask, scaling = layer.query, layer.key, layer.mask, layer.scaling
    n_heads, n_kv, n, d = query.shape[1], key.shape[1], query.shape[2], query.shape[3]
    group = n_heads // n_kv
    m = len(real_index)
    real = real_index.to(torch.long)
    causal = isinstance(mask, str) and mask == "causal"
    full = isinstance(mask, str) and mask == "full"
    # Key features over padded positions (padding keys 0 everywhere, so they drop out of every sum): [n, 8]
    features = torch.zeros(n, _FEATURE_DIMS, dtype=torch.float32)
    features[real, 0] = special_keys.float()
    features[real, 1] = punctuation_keys.float()
    features[real, 2] = torch.arange(m, dtype=torch.float32)  # position among real tokens
    features[real, 3] = 1.0
    is_real = features[:, 3]  # [n]
    q = query[batch : batch + 1]  # [1, H, n, d]
    k = key[batch].repeat_interleave(group, dim=0)  # [H, n, d]: query head h reads KV head h // group
    zeros_q = q.new_zeros(1, n_heads, n, _FEATURE_DIMS)
    q_pad = torch.cat([q, zeros_q], dim=-1)  # [1, H, n, d+8]
    k_pad = torch.cat([k[None], zeros_q], dim=-1)  # [1, H, n, d+8]
    real_k = k if m == n else k * is_real[None, :, None]  # only real keys count in the entropy
    values = torch.cat([real_k, features.expand(n_heads, n, _FEATURE_DIMS)], dim=-1)[None]  # [1, H, n, d+8]
    allowed_2d = (
        None if causal or full else cast(torch.Tensor, mask)[batch if cast(torch.Tensor, mask).shape[0] > 1 else 0, 0]
    )  # bool [n, n]
    additive = None if allowed_2d is None else _additive(allowed_2d)[None, None]  # [1, 1, n, n]
    # A padded decoder's mask is causal too: nothing right of the query, so |i - j| = i - j.
    left_only = causal or (allowed_2d is not None and not bool(allowed_2d.triu(1).any()))
    assert _FLASH_CPU is not None  # _fused_applies checked it
    out, lse = _FLASH_CPU(q_pad, k_pad, values, 0.0, causal, attn_mask=additive, scale=scaling)
    dense = m == n  # no padding: real positions are all positions, so slices stay views (no copies)
    out, lse = (out[0], lse[0]) if dense else (out[0][:, real], lse[0][:, real])  # [H, m, d+8], [H, m]: real queries
    q_real = q[0] if dense else q[0][:, real]  # [H, m, d]
    k_real = k if dense else k[:, real]  # [H, m, d]
    local = torch.arange(m)  # query position among real tokens

    def weight_at(keys: slice, rows: slice) -> torch.Tensor:
        """A[i, j] for the real query rows ``rows`` and keys ``keys`` (slices of real tokens, paired in order
        or one key for every row; masked keys 0): [H, rows]."""
        qi, kj = real[rows], real[keys]
        score = (q_real[:, rows] * k_real[:, keys]).sum(-1) * scaling  # [H, r]
        if causal:
            allowed = kj <= qi
        elif full:
            allowed = torch.ones(len(qi), dtype=torch.bool)
        else:
            assert allowed_2d is not None  # neither causal nor full: a mask tensor
            allowed = allowed_2d[qi, kj]
        return torch.where(allowed[None], torch.exp(score - lse[:, rows]), 0.0)

    real_mass = out[..., d + 3]  # [H, m] Σ over real keys of A (1 without padding)
    sums = {
        # -Σ A log A = Σ A (lse - s) over real keys
        "entropy": (lse * real_mass - scaling * torch.linalg.vecdot(q_real, out[..., :d])).double().sum(-1),
        "special_token_mass": out[..., d].double().sum(-1),
        "punctuation_mass": out[..., d + 1].double().sum(-1),
    }
    zero = torch.zeros(n_heads, dtype=torch.float64)
    after_first, before_last = slice(1, m), slice(0, m - 1)
    sums["first_token_mass"] = weight_at(slice(0, 1), after_first).double().sum(-1) if m > 1 else zero
    sums["prev_token"] = weight_at(before_last, after_first).double().sum(-1) if m > 1 else zero
    # Under a causal mask the next key is never visible: 0 without computing it.
    sums["next_token"] = weight_at(after_first, before_last).double().sum(-1) if m > 1 and not causal else zero
    right = out[..., d + 2] - local[None] * real_mass  # Σ A (j - i): keys right count +, left -
    if left_only:
        sums["mean_distance"] = (-right).double().sum(-1)
    else:  # |i - j| = (j - i) + 2·max(i - j, 0); the second term from the same keys under a causal mask
        left_mask = None if full or allowed_2d is None else _additive(allowed_2d.tril())[None, None]
        out_c, lse_c = _FLASH_CPU(q_pad, k_pad, values, 0.0, full, attn_mask=left_mask, scale=scaling)
        out_c, lse_c = out_c[0][:, real], lse_c[0][:, real]
        share = torch.exp(lse_c - lse)  # mass of the keys at or left of the query, under the full softmax
        left = torch.where(  # Σ_{j<=i} A (i - j); a row with no key on its left adds 0
            share > 0, share * (local[None] * out_c[..., d + 3] - out_c[..., d + 2]), 0.0
        )
        sums["mean_distance"] = (right + 2 * left).double().sum(-1)
    return _means(sums, m)


def captured_stats(
    layers: Sequence[LayerTensors],
    *,
    batch: int,
    real_index: torch.Tensor,
    special_keys: torch.Tensor,
    punctuation_keys: torch.Tensor,
    weights: torch.Tensor | None = None,
) -> dict[str, np.ndarray]:
    """Statistics of every head of several layers whose weights were captured during the forward, in one call.

    Args:
        layers: ``LayerTensors`` that carry ``weights`` [B, H, n, n] (``analysis.attention.captured``), of one shape.
        real_index: int64 [m] padded positions of the real tokens, in order.
        special_keys, punctuation_keys: bool [m] token classes of the real tokens.
        weights: the same layers' weights of text ``batch`` already side by side, float32 [L, H, n, n] (a view of
            the buffer the forward filled), for an unpadded text: not stacked again.
    Returns:
        {stat: float64 [len(layers), H]} for each name in STAT_COLUMNS.
    """
    first = captured(layers[0])
    if first is None:
        msg = "captured_stats reads layers that kept their weights (the captured path)"
        raise ValueError(msg)
    device, n = first.device, first.shape[-1]
    real = real_index.to(device)
    dense = len(real) == n  # no padding: whole tensors, no gathers

    def real_part(tensor: torch.Tensor, square: bool = False) -> torch.Tensor:
        t = tensor[batch]  # [H or KV, n, n or d]
        if dense:
            return t
        t = t[:, real]
        return t[:, :, real] if square else t

    def stacked(tensors: list[torch.Tensor]) -> torch.Tensor:
        return tensors[0][None] if len(tensors) == 1 else torch.stack(tensors)  # one layer: a view, no copy

    if weights is None or not dense:
        kept = [captured(layer) for layer in layers]
        weights = stacked([real_part(w, square=True) for w in kept if w is not None])  # [L, H, m, m]
    plain = all(not is_additive(layer.mask) for layer in layers) and len({layer.scaling for layer in layers}) == 1
    return weight_stats(
        weights,
        special_keys=special_keys,
        punctuation_keys=punctuation_keys,
        query=stacked([real_part(layer.query) for layer in layers]).float() if plain else None,
        key=stacked([real_part(layer.key) for layer in layers]).float() if plain else None,
        scaling=layers[0].scaling,
        left_only=all(_left_only(mask, batch) for mask in {id(layer.mask): layer.mask for layer in layers}.values()),
    )


def _left_only(mask, batch: int) -> bool:
    """Whether no query may attend to a key on its right (causal, also when padded)."""
    if isinstance(mask, str):
        return mask == "causal"
    if is_additive(mask):
        return False
    return not bool(mask[batch if mask.shape[0] > 1 else 0, 0].triu(1).any())


def weight_stats(
    weights: torch.Tensor,
    *,
    special_keys: torch.Tensor,
    punctuation_keys: torch.Tensor,
    query: torch.Tensor | None = None,
    key: torch.Tensor | None = None,
    scaling: float = 1.0,
    left_only: bool = False,
) -> dict[str, np.ndarray]:
    """The statistics from weights that already exist, for any number of layers at once.

    Everything but the entropy is linear in A: one matrix product with the keys' features (special,
    punctuation, position, 1) gives every row's class masses and, under a causal mask, its distances
    Σ_j A_ij (i - j); otherwise the distances are one pass against |i - j|. The entropy needs no log of the
    n² weights when the query and key are given (scores = scale·q·k, no additive terms): the same product
    with the keys themselves gives -Σ_j A_ij log A_ij = lse_i·Σ_j A_ij - scale·q_i·(A·K)_i, with
    lse_i = s_ii - log A_ii read at the query's own key (at the row's largest weight where that one is too
    small to take a log of); without them it is -Σ xlogy(A, A).

    Args:
        weights: float32 [L, H, m, m] over one text's real tokens (rows: queries, columns: keys),
            normalised over the padded row.
        special_keys, punctuation_keys: bool [m] token classes of the real tokens.
        query: float32 [L, H, m, d] and key: float32 [L, KV, m, d], the real tokens' (post-RoPE), or None.
        scaling: the factor applied to q·kᵀ.
        left_only: no query attends to a key on its right (a causal mask).
    Returns:
        {stat: float64 [L, H]} for each name in STAT_COLUMNS.
    """
    n_layers, n_heads, m = weights.shape[0], weights.shape[1], weights.shape[-1]
    device = weights.device
    position = torch.arange(m, dtype=torch.float32, device=device)
    ones = torch.ones(m, device=device)
    # What each key is: special, punctuation, position, 1 (so A·features holds every row's masses and Σ_j A_ij)
    features = torch.stack([special_keys.to(device, torch.float32), punctuation_keys.to(device, torch.float32), position, ones], dim=-1)
    if key is not None and query is not None:
        n_kv, d = key.shape[1], key.shape[-1]
        group = n_heads // n_kv
        width = -(-(d + 4) // 8) * 8  # keys and features, padded to the kernel's vector width
        values = torch.zeros(n_layers, n_kv, m, width, device=device)
        values[..., :d] = key
        values[..., d : d + 4] = features
        # Each KV head's keys and features weighted by its whole group's maps at once: [L, H, m, width]
        out = torch.matmul(weights.reshape(n_layers, n_kv, group * m, m), values).view(n_layers, n_heads, m, width)
        mass = out[..., d : d + 4]  # [L, H, m, 4]
        own_keys = key.repeat_interleave(group, dim=1)  # [L, H, m, d]: query head h reads KV head h // group
        own = weights.diagonal(dim1=-2, dim2=-1)  # [L, H, m]: A_ii
        lse = scaling * torch.linalg.vecdot(query, own_keys) - torch.log(own)  # s_ii - log A_ii
        tiny = own < _SMALLEST_LOG
        if bool(tiny.any()):  # A_ii underflowed (or the query may not see itself): read lse at the row's largest weight
            layer, head, row = tiny.nonzero(as_tuple=True)
            at = weights[layer, head, row].argmax(-1)  # [rows]
            score = scaling * torch.linalg.vecdot(query[layer, head, row], own_keys[layer, head, at])
            lse[layer, head, row] = score - torch.log(weights[layer, head, row, at])
        entropy = lse * mass[..., 3] - scaling * torch.linalg.vecdot(query, out[..., :d])  # [L, H, m]
    else:
        mass = torch.matmul(weights, features)  # [L, H, m, 4]
        entropy = -torch.special.xlogy(weights, weights).sum(-1)  # 0·log 0 = 0 for masked keys
    sums = {
        "entropy": entropy.double().sum(-1),
        "special_token_mass": mass[..., 0].double().sum(-1),
        "punctuation_mass": mass[..., 1].double().sum(-1),
        "first_token_mass": weights[:, :, 1:, 0].double().sum(-1),
        "prev_token": weights.diagonal(offset=-1, dim1=-2, dim2=-1).double().sum(-1),  # A[i, i - 1], i >= 1
        "next_token": weights.diagonal(offset=1, dim1=-2, dim2=-1).double().sum(-1),  # A[i, i + 1], i < m - 1
    }
    if left_only:  # Σ_j A_ij (i - j) = i·Σ_j A_ij - Σ_j A_ij j
        sums["mean_distance"] = (position * mass[..., 3] - mass[..., 2]).double().sum(-1)
    else:  # one pass against |i - j|, every head's m² weights as one vector
        distance = (position[:, None] - position[None, :]).abs_().reshape(m * m)
        sums["mean_distance"] = (weights.reshape(n_layers * n_heads, m * m) @ distance).view(n_layers, n_heads).double()
    return _means(sums, m)


def _means(sums: dict[str, torch.Tensor], m: int) -> dict[str, np.ndarray]:
    counts = {
        "entropy": m,
        "first_token_mass": max(m - 1, 1),
        "special_token_mass": m,
        "punctuation_mass": m,
        "prev_token": max(m - 1, 1),
        "next_token": max(m - 1, 1),
        "mean_distance": m,
    }
    return {name: (sums[name].cpu() / counts[name]).numpy() for name in STAT_COLUMNS}


def _streamed_stats(
    layer: LayerTensors, *, batch: int, real_index, special_keys, punctuation_keys, chunk: int | None
) -> dict[str, np.ndarray]:
    """The same statistics streamed over query chunks of explicit scores (any device, dtype, softcap, sinks)."""
    query, mask, sinks = layer.query, layer.mask, layer.sinks
    n_heads = query.shape[1]
    m = len(real_index)
    n_padded = query.shape[2]
    heads = torch.arange(n_heads)
    dense = m == n_padded  # no padding: real keys are all keys, no column gather needed
    cols = real_index.to(query.device)
    # Key features whose attention-weighted sums we need, one matmul for all: [m, 3]
    features = torch.stack([special_keys.float(), punctuation_keys.float(), torch.arange(m, dtype=torch.float32)], dim=-1).to(query.device)
    positions = features[:, 2]
    causal = isinstance(mask, str) and mask == "causal"
    sums = {name: torch.zeros(n_heads, dtype=torch.float64) for name in STAT_COLUMNS}
    offset = 0
    if chunk is None:  # one chunk of [heads, rows, keys] near 4 MB: repeated passes stay in cache (measured best)
        chunk = min(256, max(16, (1 << 20) // (n_heads * n_padded)))
    for rows in iter_row_chunks(real_index, chunk):
        # Under a causal mask with no padding, keys after the chunk's last query carry no weight: skip them.
        limit = int(rows[-1]) + 1 if causal and dense else None
        scores = attention_scores(layer, batch=batch, heads=heads, rows=rows, key_limit=limit)
        # softmax with a single exp pass, keeping log Z for the entropy (a sink's share joins Z): [H, r, n]
        weights, log_norm = normalise(scores, None if sinks is None else sink_rows(sinks, batch=batch, heads=None, rows=rows))
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
    return _means(sums, m)


def head_table(rec: RecordView, batch: int = 0, stack: str | None = None, norms: bool | None = None) -> pd.DataFrame:
    """Every head's statistics for text ``batch`` of a ``ForwardRecord``: the one table the Heads page
    and ``cli.py heads`` show.

    Args:
        stack: encoder-decoder models: "encoder" (default) or "decoder" self-attention (``ForwardRecord.stack``).
        norms: add the value-weighted norm columns (Kobayashi et al. 2020, ``rec.norm_stats``): True
            requires them (the run must have kept values), None adds them where the record kept values
            and the architecture's output projection was found, False never.
    Returns:
        DataFrame per (layer, head).
    """
    table = rec.stack(stack).head_stats(batch=batch)
    kept_values = rec.has_values
    if norms is False or (norms is None and (not kept_values or rec.spec.kind == "encoder-decoder")):
        return table
    try:
        return table.merge(rec.norm_stats(batch=batch), on=["layer", "head"])
    except ValueError:
        if norms:
            raise
        return table  # no output projection found for this architecture: weights only
