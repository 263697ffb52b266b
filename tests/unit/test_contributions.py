"""Context-mixing maps against computations on the model's own modules (tiny random models)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attnscope.analysis.contributions import Block, alti_map, norm_map, norm_res_ln_map, rolled, token_terms
from attnscope.analysis.rollout import record_rollout
from attnscope.models import run
from attnscope.models.contributions import METHODS, blocks, contributions, mixing_maps
from tests import tiny
from tests.helpers import SUBBLOCK, TEXT, scale_close, subblock_outputs


@pytest.mark.parametrize("arch", list(SUBBLOCK))
def test_token_terms_sum_to_the_attention_blocks_output(arch):
    """ALTI's per-token terms plus the bias sum to what the model's own attention sub-block returns
    (Pre-LN: input + attention output; Post-LN: the norm's output)."""
    lm = tiny.build(arch)
    rec = run(lm, TEXT, values=True)
    inputs, ys = subblock_outputs(lm, TEXT)
    parts = blocks(lm, rec)
    assert len(parts) == lm.spec.n_layers
    for layer, part in enumerate(parts):
        scale_close(part.residual, inputs[layer])
        terms, rest = token_terms(part)
        scale_close(terms.sum(1) + rest, ys[layer])
        assert (part.norm is not None) == (arch in ("bert", "distilbert"))


def _explicit_llama(lm, layer: int, x: torch.Tensor, attentions) -> tuple[torch.Tensor, torch.Tensor]:
    """T[i, j] and y for a Llama block, from its modules: v = v_proj(input_layernorm(x)), W_O = o_proj."""
    blk = lm.model.model.layers[layer]
    v = blk.self_attn.v_proj(blk.input_layernorm(x)).double()  # [n, KV·dv]
    n, dv = x.shape[0], lm.spec.head_dim
    v = v.view(n, lm.spec.n_kv_heads, dv).repeat_interleave(lm.spec.kv_group, dim=1)  # [n, H, dv]
    w_o = blk.self_attn.o_proj.weight.double()  # [d, H·dv]
    alpha = attentions[layer][0].double()  # [H, n, n]
    terms = torch.zeros(n, n, x.shape[1], dtype=torch.float64)
    for h in range(lm.spec.n_heads):
        written = v[:, h] @ w_o[:, h * dv : (h + 1) * dv].T  # [n, d]
        terms += alpha[h][:, :, None] * written[None]
    terms[range(n), range(n)] += x.double()
    return terms, terms.sum(1)


def _explicit_bert(lm, layer: int, x: torch.Tensor, attentions) -> tuple[torch.Tensor, torch.Tensor]:
    """T'[i, j] and y for a BERT block: v = value(x), W_O = output.dense, the LayerNorm linearised per query."""
    att = lm.model.encoder.layer[layer].attention
    n, dv = x.shape[0], lm.spec.head_dim
    v = att.self.value(x).double().view(n, lm.spec.n_heads, dv)
    w_o = att.output.dense.weight.double()
    alpha = attentions[layer][0].double()
    terms = torch.zeros(n, n, x.shape[1], dtype=torch.float64)
    for h in range(lm.spec.n_heads):
        terms += alpha[h][:, :, None] * (v[:, h] @ w_o[:, h * dv : (h + 1) * dv].T)[None]
    terms[range(n), range(n)] += x.double()
    ln = att.output.LayerNorm
    z = terms.sum(1) + att.output.dense.bias.double()
    s = (z.var(-1, unbiased=False, keepdim=True) + ln.eps).sqrt()  # [n, 1]
    gamma = ln.weight.double()
    linear = gamma * (terms - terms.mean(-1, keepdim=True)) / s[:, None, :]
    y = torch.nn.functional.layer_norm(z, (z.shape[-1],), gamma, ln.bias.double(), ln.eps)
    return linear, y


@pytest.mark.parametrize(("arch", "explicit"), [("llama_gqa", _explicit_llama), ("bert", _explicit_bert)])
def test_alti_and_norm_res_ln_equal_the_formulas_on_eager_weights(arch, explicit):
    """Both maps written out with transformers' eager attentions and the block's own modules (float64)."""
    lm = tiny.build(arch)
    rec = run(lm, TEXT, values=True)
    eager = tiny.build(arch, backend="eager").model  # the same seed: the same weights
    eager.config._attn_implementation = "eager"
    enc = lm.tokenizer(TEXT, return_tensors="pt")
    with torch.no_grad():
        base = eager.base_model if lm.spec.kind == "decoder" else eager
        out = base(input_ids=enc["input_ids"], output_hidden_states=True, output_attentions=True)
        for layer, part in enumerate(blocks(lm, rec)):
            x = out.hidden_states[layer][0]
            terms, y = explicit(lm, layer, x, out.attentions)
            alti = (y.abs().sum(-1, keepdim=True) - (y[:, None] - terms).abs().sum(-1)).clamp_min(0)
            alti = alti / alti.sum(-1, keepdim=True)
            norms = terms.norm(dim=-1)
            norms = norms / norms.sum(-1, keepdim=True)
            np.testing.assert_allclose(alti_map(part).numpy(), alti.numpy(), atol=2e-4)
            np.testing.assert_allclose(norm_res_ln_map(part).numpy(), norms.numpy(), atol=2e-4)


def test_norm_map_is_the_norm_of_each_keys_summed_head_vectors():
    """Kobayashi 2020 at layer level: ‖Σ_h α^h_ij W_O^h v^h_j‖ from explicit per-(i, j) vectors, rows normalised."""
    lm = tiny.build("gpt2")
    rec = run(lm, TEXT, values=True)
    part = blocks(lm, rec, layout=False)[1]
    n_heads, n, dv = part.values.shape
    expected = torch.zeros(n, n)
    for i in range(n):
        for j in range(n):
            vec = sum(part.weights[h, i, j] * (part.w_o[:, h * dv : (h + 1) * dv] @ part.values[h, j]) for h in range(n_heads))
            expected[i, j] = vec.norm()
    expected = expected / expected.sum(-1, keepdim=True)
    np.testing.assert_allclose(norm_map(part).numpy(), expected.numpy(), atol=1e-5)


@pytest.mark.parametrize("arch", ["llama_gqa", "distilbert"])
def test_tiled_alti_equals_the_formula_over_all_terms(arch):
    """The tiled distances (and skipped all-zero tiles) against the formula over every term at once."""
    lm = tiny.build(arch)
    for part in blocks(lm, run(lm, TEXT, values=True)):
        terms, rest = token_terms(part)
        y = terms.sum(1) + rest
        expected = (y.abs().sum(-1, keepdim=True) - (y[:, None] - terms).abs().sum(-1)).clamp_min(0)
        expected = expected / expected.sum(-1, keepdim=True)
        for rows, keys in ((1, 1), (3, 2), (64, 64)):
            np.testing.assert_allclose(alti_map(part, rows=rows, keys=keys).numpy(), expected.numpy(), atol=1e-5)


@pytest.mark.parametrize("arch", ["gpt2", "llama_gqa"])
def test_decoders_take_nothing_from_later_tokens(arch):
    lm = tiny.build(arch)
    for method in ("norm", "norm_res_ln", "alti"):
        maps, roll, _, _ = mixing_maps(lm, TEXT, method)
        upper = np.triu(np.ones(maps.shape[-1], dtype=bool), 1)
        assert np.all(maps[:, upper] == 0) and np.all(roll[:, upper] == 0), method
        np.testing.assert_allclose(maps.sum(-1), 1.0, atol=1e-5)
        np.testing.assert_allclose(roll.sum(-1), 1.0, atol=1e-5)


def test_rollout_of_weights_equals_the_existing_rollout():
    lm = tiny.build("bert")
    rec = run(lm, TEXT)
    maps, roll, _, _ = mixing_maps(lm, TEXT, "weights", rec=rec)
    expected_maps, expected = record_rollout(
        [rec.layer_record(i) for i in rec.attention_layers], batch=0, real_index=torch.from_numpy(rec.real_index(0))
    )
    np.testing.assert_allclose(maps, expected_maps.numpy(), atol=1e-6)
    np.testing.assert_allclose(roll, expected.numpy(), atol=1e-6)


def test_residual_aware_rollout_is_a_plain_product():
    maps = torch.softmax(torch.randn(3, 5, 5, generator=torch.Generator().manual_seed(1)), -1)
    expected = maps[2].double() @ maps[1].double() @ maps[0].double()
    np.testing.assert_allclose(rolled(maps, "alti")[-1].numpy(), expected.numpy(), atol=1e-6)
    assert not np.allclose(rolled(maps, "weights")[-1].numpy(), expected.numpy())


def test_attribution_reads_the_targets_row():
    lm = tiny.build("llama_gqa")
    out = contributions(lm, TEXT, "alti")
    n = len(out.tokens)
    np.testing.assert_array_equal(out.attribution, out.rolled[-1][n - 1])
    at = contributions(lm, TEXT, "alti", position=3)
    np.testing.assert_array_equal(at.attribution, at.rolled[-1][3])
    assert at.attribution[4:].sum() == 0  # a decoder's prediction at 3 reads tokens 0..3 only
    enc = tiny.build("bert")
    sentence = contributions(enc, TEXT, "norm_res_ln")
    np.testing.assert_allclose(sentence.attribution, sentence.rolled[-1].mean(0), atol=1e-7)
    assert sentence.position is None and "sentence embedding" in sentence.target


def test_bad_method_and_position_are_refused_in_one_line():
    lm = tiny.build("gpt2")
    with pytest.raises(ValueError, match="unknown method 'attention'; use one of weights"):
        contributions(lm, TEXT, "attention")
    with pytest.raises(ValueError, match="position 99 out of range"):
        contributions(lm, TEXT, "norm", position=99)
    assert set(METHODS) >= {"alti", "value_zeroing", "integrated_gradients"}


def test_a_sandwich_norm_is_refused_with_what_works_instead():
    lm = tiny.causal(tiny.config_for("gemma2", head_dim=8), name="tiny-gemma2")
    with pytest.raises(ValueError, match="sandwich norm.*use weights, norm, value_zeroing"):
        mixing_maps(lm, TEXT, "alti")
    maps, _, _, _ = mixing_maps(lm, TEXT, "norm")  # needs no layout
    np.testing.assert_allclose(maps.sum(-1), 1.0, atol=1e-5)


def test_block_is_pure_data():
    b = Block(torch.ones(1, 2, 2) / 2, torch.ones(1, 2, 3), torch.ones(4, 3), None, torch.zeros(2, 4))
    terms, rest = token_terms(b)
    assert terms.shape == (2, 2, 4) and float(rest.abs().sum()) == 0.0
