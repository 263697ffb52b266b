"""What an intervention did to a forward pass: the measures knockout, importance and the lab share.

All take tensors (no models): logits [..., vocab], hidden states [..., tokens, d], token ids.
"""

from __future__ import annotations

import torch

__all__ = ["kl_divergence", "mean_cosine", "next_token_loss", "relative_error"]


def kl_divergence(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) per row of next-token logits, in float64: Σ_v p_v (log p_v − log q_v). [...]"""
    log_p = torch.log_softmax(logits_p.double(), dim=-1)
    log_q = torch.log_softmax(logits_q.double(), dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def mean_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of the cosine between two runs' hidden states [..., tokens, d] -> [...]."""
    return torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1).mean(-1)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of |b − a| / |a| of hidden states [..., tokens, d] -> [...]."""
    return ((b - a).norm(dim=-1) / a.norm(dim=-1).clamp(min=1e-12)).mean(-1)


def next_token_loss(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of a sequence: logits [..., n, vocab] at positions 0..n-2 against
    ids [..., n] at 1..n-1 -> [...] (one loss per row)."""
    logits, ids = logits.float()[..., :-1, :], ids.to(logits.device)[..., 1:]
    per_token = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids.reshape(-1), reduction="none")
    return per_token.reshape(ids.shape).mean(-1)
