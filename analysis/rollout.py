"""Attention rollout (Abnar & Zuidema 2020), per layer, over one text's real tokens.

Per layer A' = 0.5·mean_heads(A) + 0.5·I with rows renormalised (the identity stands for the
residual stream); rollout after layer l is A'_l · ... · A'_1. Row i of the last rollout says how
much of token i's final representation traces back to each input token. For a causal model every
A' is lower-triangular, and so is every product: a token never draws on later tokens.

Each layer's mean map is O(n²) (16 MB at 2,048 tokens) and each product O(n³): meant for the
lengths one reads on screen, not for 8k-token inputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from attnscope.analysis.attention import DEFAULT_CHUNK, LayerTensors, real_weight_chunks

__all__ = ["mean_head_attention", "record_rollout", "rollout"]


def mean_head_attention(layer: LayerTensors, *, batch: int, real_index: torch.Tensor, chunk: int = DEFAULT_CHUNK) -> torch.Tensor:
    """One layer's attention averaged over heads, over real tokens.

    Args:
        layer: the layer's inputs (``analysis.attention.LayerTensors``).
        real_index: int64 [m] padded positions of the real tokens.
    Returns:
        float32 [m, m] (rows sum to 1; less with attention sinks, whose share rollout's renormalisation gives to the residual).
    """
    chunks = real_weight_chunks(layer, batch=batch, real_index=real_index, chunk=chunk)
    return torch.cat([weights.mean(0).cpu() for weights in chunks], dim=0)  # [m, m]


def rollout(mean_maps, residual: float = 0.5) -> torch.Tensor:
    """Rollout after every layer from per-layer head-averaged maps.

    Args:
        mean_maps: [L, n, n] head-averaged attention of each layer (rows are queries), any float type.
        residual: weight of the identity (0.5 in Abnar & Zuidema); 0 gives the plain product of maps.
    Returns:
        float64 [L, n, n]; entry [l] = A'_l · ... · A'_0 (0-based layers), rows sum to 1.
    """
    maps = torch.as_tensor(mean_maps).double()
    if maps.ndim != 3 or maps.shape[1] != maps.shape[2]:
        msg = f"mean_maps must be [layers, n, n], got shape {tuple(maps.shape)}"
        raise ValueError(msg)
    if not 0.0 <= residual <= 1.0:
        msg = f"residual must lie in [0, 1], got {residual}"
        raise ValueError(msg)
    eye = torch.eye(maps.shape[1], dtype=torch.float64)
    out = torch.empty_like(maps)
    acc = eye
    for layer in range(maps.shape[0]):
        mixed = (1.0 - residual) * maps[layer] + residual * eye  # [n, n]
        mixed = mixed / mixed.sum(-1, keepdim=True)
        acc = mixed @ acc
        out[layer] = acc
    return out


def record_rollout(
    layers: Sequence[LayerTensors], *, batch: int, real_index: torch.Tensor, residual: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor]:
    """Head-averaged maps and their rollout for every layer of one recorded text.

    Args:
        layers: recorded layers in order (``ForwardRecord.layers``).
        real_index: int64 [m] padded positions of the text's real tokens.
    Returns:
        (mean_maps float32 [L, m, m], rollout float64 [L, m, m]).
    """
    maps = torch.stack([mean_head_attention(r, batch=batch, real_index=real_index) for r in layers])  # [L, m, m]
    return maps, rollout(maps, residual=residual)
