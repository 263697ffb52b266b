"""A head's circuit (issue 33, part 2): shares sum to 1 and agree with the per-cell split; Elhage's weight-only
composition through low-rank factors equals the full products."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attnscope.analysis.why import composition_scores
from attnscope.models import run
from attnscope.models.circuit import circuit
from attnscope.models.why import why
from tests import tiny

TEXT = "The mouse ran up the clock."


@pytest.mark.parametrize("arch", ["gpt2", "gpt_neox", "bert"])
def test_key_and_query_shares_are_the_alpha_weighted_spread_of_the_per_cell_split(arch):
    lm = tiny.build(arch)
    rec = run(lm, TEXT, values=True)
    layer, head = 1, 2
    found = circuit(lm, TEXT, layer, head, rec=rec)
    for side in (found.keys, found.queries, found.values):
        assert abs(sum(side.values()) - 1) < 1e-9 and min(side.values()) >= 0
    alpha = rec.attention(layer, head).astype(np.float64)
    allowed = rec.allowed(layer)
    n = alpha.shape[0]
    spread = {"keys": np.zeros(len(found.keys)), "queries": np.zeros(len(found.keys))}
    for i in range(n):
        cells = [j for j in range(n) if allowed[i, j]]
        rows = {
            side: np.array([list(getattr(why(lm, TEXT, layer, head, i, j, rec=rec), f"{s}_side").values()) for j in cells])
            for side, s in (("keys", "key"), ("queries", "query"))
        }
        a = alpha[i, cells]
        for side, terms in rows.items():  # [cells, C]
            spread[side] += (a[:, None] * np.abs(terms - a @ terms)).sum(0)
    for side in ("keys", "queries"):
        expected = spread[side] / spread[side].sum()
        np.testing.assert_allclose(list(getattr(found, side).values()), expected, atol=1e-6)
    assert set(found.weight_only) == {f"L0H{h}" for h in range(lm.spec.n_heads)}
    assert ("approximate" in found.meta["weight_only"]) is (arch != "gpt2")  # Post-LN norms (BERT), RoPE (NeoX)


def test_weight_only_composition_equals_the_full_products():
    torch.manual_seed(0)
    d, dh = 24, 6
    w_q, w_k, w_v = (torch.randn(dh, d, dtype=torch.float64) for _ in range(3))
    w_o = torch.randn(d, dh, dtype=torch.float64)
    senders = [(torch.randn(d, dh, dtype=torch.float64), torch.randn(dh, d, dtype=torch.float64)) for _ in range(3)]
    got = composition_scores(w_q, w_k, w_v, w_o, senders)
    qk, ov = w_q.T @ w_k, w_o @ w_v
    for row, (o_s, v_s) in zip(got, senders):
        ov_s = o_s @ v_s
        fro = torch.linalg.matrix_norm
        expected = [
            fro(qk.T @ ov_s) / (fro(qk) * fro(ov_s)),
            fro(qk @ ov_s) / (fro(qk) * fro(ov_s)),
            fro(ov @ ov_s) / (fro(ov) * fro(ov_s)),
        ]
        np.testing.assert_allclose(row.numpy(), torch.stack(expected).numpy(), rtol=1e-10)


def test_a_bad_head_is_refused_in_one_line():
    lm = tiny.build("llama_gqa")
    with pytest.raises(ValueError, match="head 4 out of range; this model has heads 0..3"):
        circuit(lm, TEXT, 1, 4)
