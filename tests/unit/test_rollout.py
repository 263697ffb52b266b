"""Attention rollout: the Abnar & Zuidema recurrence, causal structure, and record glue."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attnscope.analysis.rollout import rollout
from attnscope.models import run
from attnscope.models.aggregates import rollout_of

TEXT = "The mouse ate the cheese, then the cat chased the mouse."


def brute_force(maps: np.ndarray, residual: float = 0.5) -> np.ndarray:
    """Rollout with numpy, straight from the paper's formula."""
    n = maps.shape[-1]
    out, acc = [], np.eye(n)
    for a in maps.astype(np.float64):
        mixed = (1 - residual) * a + residual * np.eye(n)
        mixed /= mixed.sum(-1, keepdims=True)
        acc = mixed @ acc
        out.append(acc)
    return np.stack(out)


@pytest.mark.parametrize("arch", ["gpt2", "llama_gqa", "bert"])
def test_rollout_matches_formula_over_head_means(tiny_factory, arch):
    lm = tiny_factory(arch)
    rec = run(lm, TEXT)
    maps, rolled = rollout_of(rec)
    n = len(rec.tokens[0])
    head_means = np.stack([np.mean([rec.attention(l, h) for h in range(lm.spec.n_heads)], axis=0) for l in range(lm.spec.n_layers)])
    np.testing.assert_allclose(maps, head_means, atol=1e-6)
    np.testing.assert_allclose(rolled, brute_force(head_means), atol=1e-6)
    np.testing.assert_allclose(rolled.sum(-1), 1.0, atol=1e-9)
    assert rolled.shape == (lm.spec.n_layers, n, n)


@pytest.mark.parametrize("arch", ["gpt2", "llama_gqa"])
def test_causal_rollout_stays_lower_triangular(tiny_factory, arch):
    rec = run(tiny_factory(arch), TEXT)
    _, rolled = rollout_of(rec)
    upper = np.triu(np.ones(rolled.shape[-2:], dtype=bool), k=1)
    assert np.all(rolled[:, upper] == 0.0)
    assert np.all(rolled[:, ~upper].min() >= 0.0) and rolled[-1, -1, 0] > 0


def test_rollout_of_a_padded_batch_uses_real_tokens(tiny_factory):
    lm = tiny_factory("llama_gqa")
    rec = run(lm, ["Hi there.", TEXT], padding_side="left")
    maps, _ = rollout_of(rec, batch=0)
    assert maps.shape[-1] == len(rec.tokens[0])
    np.testing.assert_allclose(maps[0], np.mean([rec.attention(0, h, 0) for h in range(lm.spec.n_heads)], axis=0), atol=1e-6)


def test_rollout_edge_cases():
    maps = torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(0))
    maps = maps / maps.sum(-1, keepdim=True)
    np.testing.assert_allclose(rollout(maps, residual=1.0).numpy(), np.broadcast_to(np.eye(4), (3, 4, 4)))
    plain = rollout(maps, residual=0.0).numpy()
    m = maps.double().numpy()
    np.testing.assert_allclose(plain[2], m[2] @ m[1] @ m[0], rtol=1e-6, atol=1e-7)  # float32 products against float64
    before = maps.clone()
    rollout(maps)
    assert torch.equal(maps, before)  # inputs are not mutated
    with pytest.raises(ValueError, match="layers, n, n"):
        rollout(torch.rand(4, 4))
    with pytest.raises(ValueError, match="residual"):
        rollout(maps, residual=1.5)
