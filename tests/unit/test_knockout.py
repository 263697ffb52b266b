"""Knockout through the hook: nothing knocked out is bit-identical; a head equals zeroing its projection
columns; an edge changes only its query; importance equals one knockout at a time."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attnscope.models import run
from attnscope.models.forward import tokenize
from attnscope.models.hook import intervening
from attnscope.models.knockout import Ablation, ablation_edits, head_importance, knockout
from tests import tiny

TEXT = "The mouse ran, the cat waited under the table."


@pytest.fixture(scope="module", params=["llama_gqa", "bert"])
def lm(request):
    return tiny.build(request.param)


def outputs(lm, fn=None):
    enc, _ = tokenize(lm, TEXT)
    with torch.inference_mode():
        if fn is None:
            out = lm.model(**enc)
        else:
            with intervening(fn, lm.module_names):
                out = lm.model(**enc)
    return out.logits if lm.spec.kind == "decoder" else out.last_hidden_state


def test_an_empty_plan_is_bit_identical(lm):
    assert torch.equal(outputs(lm, ablation_edits(Ablation(), lm.spec.kv_group)), outputs(lm))


def test_knocking_out_a_head_equals_removing_its_output_columns(lm):
    layer, head = 1, 2
    result = knockout(lm, TEXT, heads=[(layer, head)])
    module = result.before.layers[layer].module
    dv = result.before.layers[layer].key.shape[-1]
    parent = lm.model.get_submodule(module.rsplit(".", 1)[0])
    attn = lm.model.get_submodule(module)
    proj = next(m for n, m in [*attn.named_modules(), *parent.named_modules()] if n.endswith(("o_proj", "output.dense")))
    saved = proj.weight.detach().clone()
    with torch.no_grad():
        proj.weight[:, head * dv : (head + 1) * dv] = 0
    try:
        manual = run(lm, TEXT)
    finally:
        with torch.no_grad():
            proj.weight.copy_(saved)
    top = lm.spec.n_layers
    np.testing.assert_allclose(result.after.hidden(top), manual.hidden(top), atol=1e-5)
    assert result.hidden_cosine < 1 - 1e-6  # something changed
    np.testing.assert_array_equal(result.after.attention(layer, 0), result.before.attention(layer, 0))  # its own layer's maps stay
    assert not np.allclose(result.after.attention(top - 1, 0), result.before.attention(top - 1, 0)) or layer == top - 1
    if lm.spec.kind == "decoder":
        assert result.kl > 0 and len(result.top_before) == 5 and result.target == result.top_before["token"][0]


def test_an_edge_changes_only_its_query_in_the_last_layer(lm):
    last = lm.spec.n_layers - 1
    q, k = 5, 2
    result = knockout(lm, TEXT, edges=[(last, 1, q, k)])
    diff = np.abs(result.after.hidden(last + 1) - result.before.hidden(last + 1)).max(-1)  # [n]
    changed = np.flatnonzero(diff > 1e-6)
    assert changed.tolist() == [q]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(heads=[(9, 0)]), "layer 9 out of range"),
        (dict(heads=[(0, 7)]), "head 7 out of range"),
        (dict(edges=[(0, 0, 3, 40)]), "positions must lie"),
        (dict(), "nothing to knock out"),
        (dict(heads=[(0, 0)], mode="drop"), "mode must be"),
    ],
)
def test_bad_plans_are_one_clear_error(lm, kwargs, match):
    with pytest.raises(ValueError, match=match):
        knockout(lm, TEXT, **kwargs)


def test_an_edge_the_mask_forbids_is_refused():
    lm = tiny.build("llama_gqa")
    with pytest.raises(ValueError, match="mask forbids"):
        knockout(lm, TEXT, edges=[(0, 0, 2, 5)])  # causal: token 2 cannot see token 5


def test_mean_ablation_differs_from_zero(lm):
    zero = knockout(lm, TEXT, heads=[(0, 1)], mode="zero")
    mean = knockout(lm, TEXT, heads=[(0, 1)], mode="mean")
    assert not np.allclose(zero.after.hidden(lm.spec.n_layers), mean.after.hidden(lm.spec.n_layers))


def test_importance_equals_one_knockout_at_a_time(lm):
    table = head_importance(lm, TEXT, batch_size=3)  # batches mix layers and heads
    assert len(table) == lm.spec.n_layers * lm.spec.n_heads
    for layer, head in [(0, 0), (1, 3)]:
        fn = ablation_edits(Ablation(heads=((layer, head),)), lm.spec.kv_group)
        out = outputs(lm, fn)
        row = table[(table["layer"] == layer) & (table["head"] == head)].iloc[0]
        if lm.spec.kind == "decoder":
            ids = tokenize(lm, TEXT)[0]["input_ids"]
            loss = torch.nn.functional.cross_entropy(out[0, :-1].float(), ids[0, 1:]).item()
            assert row["loss"] == pytest.approx(loss, abs=1e-4)
        else:
            base = outputs(lm)
            expected = 1 - torch.nn.functional.cosine_similarity(out[0], base[0], dim=-1).mean().item()
            assert row["delta"] == pytest.approx(expected, abs=1e-5)


def test_effect_measures_against_their_definitions():
    """analysis.effects, shared by knockout, importance and the lab, against the formulas written out."""
    from attnscope.analysis.effects import kl_divergence, mean_cosine, next_token_loss, relative_error

    gen = torch.Generator().manual_seed(0)
    p, q = torch.randn(3, 11, generator=gen), torch.randn(3, 11, generator=gen)
    pp, qq = torch.softmax(p.double(), -1), torch.softmax(q.double(), -1)
    torch.testing.assert_close(kl_divergence(p, q), (pp * (pp.log() - qq.log())).sum(-1))
    assert float(kl_divergence(p, p).abs().max()) < 1e-12
    a, b = torch.randn(5, 8, generator=gen), torch.randn(5, 8, generator=gen)
    expected = np.mean([float(a[i] @ b[i] / (a[i].norm() * b[i].norm())) for i in range(5)])
    assert float(mean_cosine(a, b)) == pytest.approx(expected, abs=1e-6)
    assert float(relative_error(a, a)) == 0.0
    logits, ids = torch.randn(2, 4, 11, generator=gen), torch.randint(0, 11, (2, 4), generator=gen)
    manual = [-np.mean([float(torch.log_softmax(logits[r, t], -1)[ids[r, t + 1]]) for t in range(3)]) for r in range(2)]
    np.testing.assert_allclose(next_token_loss(logits, ids).numpy(), manual, rtol=1e-5)
