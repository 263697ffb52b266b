"""Why attention scales q·k by 1/√d: the measures of the lab's temperature sweep (``scale:τ``).

A dot product of two d-dimensional vectors with unit-variance entries has variance d, so without the 1/√d
factor the logits of a wide head are √d times larger and the softmax saturates onto its largest score
(Vaswani et al. 2017, section 3.2.1). Multiplying the model's logits by τ shows the same thing on a real model:
entropy falls as τ grows, and the outputs move away from the model's.

All take tensors or frames (no models).
"""

from __future__ import annotations

import math

import pandas as pd
import torch

__all__ = ["row_entropy", "scale_line", "top1_kept"]


def row_entropy(weights: torch.Tensor) -> torch.Tensor:
    """Entropy −Σ_j A_ij log A_ij of each attention row, in nats (0 · log 0 = 0).

    Args:
        weights: float [..., q, k], rows summing to 1.
    Returns:
        float [..., q].
    """
    weights = weights.double()
    logs = torch.where(weights > 0, weights.clamp(min=torch.finfo(torch.float64).tiny).log(), torch.zeros((), dtype=torch.float64))
    return -(weights * logs).sum(-1)


def top1_kept(logits_full: torch.Tensor, logits_changed: torch.Tensor) -> torch.Tensor:
    """Share of positions whose most likely next token is the same in both runs.

    Args:
        logits_full, logits_changed: float [..., n, vocab].
    Returns:
        float [...] in [0, 1].
    """
    return (logits_full.argmax(-1) == logits_changed.argmax(-1)).double().mean(-1)


def scale_line(summary: pd.DataFrame, head_dim: int) -> str:
    """One sentence on a temperature sweep (``models.lab.lab_scale``'s summary: tau, entropy, kl, top1_kept, ...).

    Says how the mean entropy and the output moved from the smallest to the largest τ, and where the model would
    sit without its 1/√d factor (τ = √d).
    """
    ordered = summary.sort_values("tau")
    low, high = ordered.iloc[0], ordered.iloc[-1]
    if pd.notna(high.get("top1_kept", float("nan"))):
        output = f"the most likely next token is kept at {high['top1_kept']:.0%} of positions (KL {high['kl']:.3f} nats)"
    else:
        output = f"the last hidden states' cosine to the model's falls to {1 - high['one_minus_cosine']:.3f}"
    unscaled = math.sqrt(head_dim) if head_dim > 0 else float("nan")
    where = "past the right end of the sweep" if unscaled > high["tau"] else "inside the sweep"
    return (
        f"From τ = {low['tau']:g} to τ = {high['tau']:g} the mean attention entropy falls from {low['entropy']:.2f} to "
        f"{high['entropy']:.2f} nats and {output}: larger logits saturate the softmax onto one key per query. "
        f"Without the 1/√d factor this model's logits would be √{head_dim} ≈ {unscaled:.1f} times larger ({where}): "
        f"dot products of d terms grow like √d."
    )
