"""What a head writes, not only where it looks: each layer's output projection, split by head.

Kobayashi et al. 2020 ("Attention is not only a weight"): head h's output at query i is
Σ_j α_ij · W_O^h v_j, so the contribution of key j is the vector α_ij · W_O^h v_j and its norm
α_ij · ‖W_O^h v_j‖ (α ≥ 0). ``head_grams`` keeps, per head, G_h = W_O^hᵀ W_O^h [dv, dv], so
‖W_O^h v‖² = vᵀ G_h v needs no [n, d_model] product.
"""

from __future__ import annotations

import torch

from attnscope.models.architecture import output_layer

__all__ = ["head_grams", "output_projection", "written_norms"]


def output_projection(model: torch.nn.Module, module_name: str, width: int) -> torch.Tensor | None:
    """The output projection's weight as [d_model, width] (width = heads x head size), or None
    (``models.architecture.output_layer``)."""
    found = output_layer(model, module_name, width)
    return None if found is None else found[0]


def head_grams(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """G_h = W_O^hᵀ W_O^h for every head. weight [d_model, H·dv] -> float32 [H, dv, dv]."""
    d_model, width = weight.shape
    w = weight.float().reshape(d_model, n_heads, width // n_heads).permute(1, 0, 2)  # [H, d_model, dv]
    return w.transpose(1, 2) @ w


def written_norms(vectors: torch.Tensor, grams: torch.Tensor) -> torch.Tensor:
    """‖W_O^h x‖ for vectors in head space. vectors [H, n, dv], grams [H, dv, dv] -> float32 [H, n]."""
    x = vectors.float()
    return ((x @ grams) * x).sum(-1).clamp_min(0).sqrt()
