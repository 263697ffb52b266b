"""Gradient attributions against independent computations on the model's own modules: transformers' eager
attention with output_attentions for attention × gradient, plain autograd for input × gradient, and the
model's own forward at the two ends of the path for integrated gradients' completeness."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

from attnscope.models.attribution import METHODS, attention_weights, gradient_attribution
from attnscope.models.forward import tokenize
from attnscope.models.hook import intervening
from tests import tiny
from tests.helpers import in_threads

TEXT = "The mouse ran, the cat waited under the table."


@pytest.fixture(scope="module", params=["gpt2", "llama_gqa", "bert"])
def lm(request):
    return tiny.build(request.param)


def eager_copy(lm) -> torch.nn.Module:
    model = copy.deepcopy(lm.model)
    model.set_attn_implementation("eager")
    return model


def reference_f(lm, model, ids, position, embeds=None, **extra):
    """The target written out on the model's own forward: a decoder's log p(top next token) from its full
    causal-LM logits; an encoder's mean last hidden state projected on the clean one's direction."""
    inputs = {"inputs_embeds": embeds} if embeds is not None else {"input_ids": ids}
    out = model(**inputs, **extra)
    if lm.spec.kind == "decoder":
        with torch.no_grad():
            clean = model(input_ids=ids).logits[0, position]
        return torch.log_softmax(out.logits[:, position].float(), -1)[:, int(clean.argmax())], out
    with torch.no_grad():
        direction = model(input_ids=ids).last_hidden_state[0].mean(0)
    return out.last_hidden_state.mean(1) @ (direction / direction.norm()), out


def test_reattending_through_the_hook_reproduces_the_kernel(lm):
    """The grad_attention edit (weights recomputed, times the values) gives the kernel's own outputs."""
    enc, _ = tokenize(lm, TEXT)
    kept = []

    def reattend(call):
        weights = attention_weights(call)
        kept.append(weights)
        value = call.value.repeat_interleave(weights.shape[1] // call.value.shape[1], dim=1)
        return torch.matmul(weights, value).transpose(1, 2)

    with torch.inference_mode():
        plain = lm.model(**enc)
        with intervening(dict.fromkeys(range(lm.spec.n_layers), reattend), lm.module_names):
            edited = lm.model(**enc)
    field = "logits" if lm.spec.kind == "decoder" else "last_hidden_state"
    torch.testing.assert_close(getattr(edited, field), getattr(plain, field), atol=1e-5, rtol=1e-5)
    assert len(kept) == lm.spec.n_layers
    eager = eager_copy(lm)
    with torch.inference_mode():
        reference = eager(**enc, output_attentions=True).attentions
    for got, expected in zip(kept, reference):
        torch.testing.assert_close(got, expected.float(), atol=1e-6, rtol=1e-5)


def test_grad_attention_equals_the_rollout_of_eagers_weighted_gradients(lm):
    position = 6
    got = gradient_attribution(lm, TEXT, "grad_attention", position=position if lm.spec.kind == "decoder" else None)
    enc, _ = tokenize(lm, TEXT)
    ids = enc["input_ids"]
    model = eager_copy(lm)
    f, out = reference_f(lm, model, ids, position, output_attentions=True)
    attentions = list(out.attentions)  # [1, H, n, n] each, the tensors eager multiplied with its values
    grads = torch.autograd.grad(f.sum(), attentions)
    n = ids.shape[1]
    rollout = torch.eye(n)
    for layer, (weights, grad) in enumerate(zip(attentions, grads)):
        mixed = (grad[0] * weights[0]).clamp(min=0).mean(0)  # Ā = E_h[(∇A ⊙ A)⁺]
        rollout = rollout + mixed @ rollout
        np.testing.assert_allclose(got.relevance[layer], rollout.detach().numpy(), rtol=1e-4, atol=1e-6)
    expected = rollout[position] if lm.spec.kind == "decoder" else rollout.mean(0)
    np.testing.assert_allclose(got.scores, expected.detach().numpy(), rtol=1e-4, atol=1e-6)
    assert got.relevance.shape == (lm.spec.n_layers, n, n)
    assert float(np.abs(got.relevance[-1] - np.eye(n)).max()) > 1e-3  # the gradients moved R away from I
    if lm.spec.kind == "decoder":
        assert np.all(got.scores[position + 1 :] == 0)  # a causal model cannot read later tokens


def test_input_x_gradient_equals_autograd_on_the_models_own_forward(lm):
    got = gradient_attribution(lm, TEXT, "input_x_gradient")
    enc, _ = tokenize(lm, TEXT)
    ids = enc["input_ids"]
    model = copy.deepcopy(lm.model)
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    f, _ = reference_f(lm, model, ids, ids.shape[1] - 1, embeds=embeds)
    (grad,) = torch.autograd.grad(f.sum(), embeds)
    expected = (grad * embeds)[0].sum(-1).detach().numpy()
    np.testing.assert_allclose(got.scores, expected, rtol=1e-4, atol=1e-6)
    assert got.tokens == lm.tokenizer.convert_ids_to_tokens(ids[0].tolist())


def path_ends(lm, baseline) -> torch.Tensor:
    """f at the text's own embeddings and at ``baseline(model, ids, embeds)``, both read through the model's own
    forward (on a copy) at the last position: the two ends of integrated gradients' straight path."""
    enc, _ = tokenize(lm, TEXT)
    ids = enc["input_ids"]
    model = copy.deepcopy(lm.model)
    with torch.no_grad():
        embeds = model.get_input_embeddings()(ids)
        ends, _ = reference_f(lm, model, ids, ids.shape[1] - 1, embeds=torch.cat([embeds, baseline(model, ids, embeds)]))
    return ends


def test_integrated_gradients_is_complete_within_the_integration_error(lm):
    """Σ attributions = f(x) − f(0), f read at both ends through the model's own forward; with RMSNorm and
    no position embeddings (Llama) the zero baseline is degenerate and the gap is reported, not hidden."""
    got = gradient_attribution(lm, TEXT, "integrated_gradients", steps=50, baseline="zero")
    ends = path_ends(lm, lambda model, ids, embeds: torch.zeros_like(embeds))
    gap = float(ends[0] - ends[1])
    total = float(got.scores.astype(np.float64).sum())
    assert got.meta["f_difference"] == pytest.approx(gap, rel=1e-4, abs=1e-5)
    assert got.meta["completeness"] == pytest.approx(abs(total - gap), rel=1e-3, abs=1e-4)
    assert abs(gap) > 0.1
    if lm.spec.model_type != "llama":
        assert abs(total - gap) < 1e-3 * abs(gap)
        coarse = gradient_attribution(lm, TEXT, "integrated_gradients", steps=3, baseline="zero")
        assert coarse.meta["completeness"] > got.meta["completeness"]  # the error is the quadrature's


def test_integrated_gradients_from_another_baseline_start_there(lm):
    """The UNK baseline: f(x') is f at the UNK embedding in every position, read through the model's own forward."""
    if lm.tokenizer.unk_token_id is None:
        with pytest.raises(ValueError, match="no unk token"):
            gradient_attribution(lm, TEXT, "integrated_gradients", steps=4, baseline="unk")
        return
    got = gradient_attribution(lm, TEXT, "integrated_gradients", steps=8, baseline="unk")
    ends = path_ends(lm, lambda model, ids, embeds: model.get_input_embeddings()(torch.full_like(ids, lm.tokenizer.unk_token_id)))
    assert got.meta["f_baseline"] == pytest.approx(float(ends[1]), rel=1e-4, abs=1e-5)
    assert "unk token" in got.meta["baseline"]
    assert got.meta["completeness_share"] == pytest.approx(got.meta["completeness"] / abs(got.meta["f_difference"]))
    with pytest.raises(ValueError, match="unknown baseline"):
        gradient_attribution(lm, TEXT, "integrated_gradients", baseline="noise")


def test_integrated_gradients_add_up_by_default_from_the_pad_baseline(lm):
    """The default: the pad embedding with special tokens (and a decoder's first token) kept; the steps double until
    Σ attributions is within 5% of f(x) − f(x'), both ends read through the model's own forward."""
    got = gradient_attribution(lm, TEXT, "integrated_gradients")
    ids = tokenize(lm, TEXT)[0]["input_ids"]
    specials = set(lm.tokenizer.all_special_ids)
    keep = torch.tensor([int(t) in specials for t in ids[0].tolist()])
    if lm.spec.kind == "decoder":
        keep[0] = True
    assert keep.any() and not keep.all()

    def pad_start(model, ids, embeds):
        table = model.get_input_embeddings().weight
        pad = lm.tokenizer.pad_token_id
        start = table.mean(0) if pad is None else table[pad]
        return torch.where(keep[None, :, None], embeds, start.expand_as(embeds))

    ends = path_ends(lm, pad_start)
    gap = float(ends[0] - ends[1])
    assert got.meta["f_baseline"] == pytest.approx(float(ends[1]), rel=1e-4, abs=1e-5)
    assert abs(gap) > 0.01
    total = float(got.scores.astype(np.float64).sum())
    assert abs(total - gap) <= 0.05 * abs(gap)
    assert got.meta["adds_up"] and got.meta["completeness_share"] <= 0.05
    assert got.meta["steps"] == got.meta["steps_tried"][-1] and got.meta["steps"] in (32, 64, 128, 256)
    kept = np.flatnonzero(keep.numpy())
    np.testing.assert_allclose(got.scores[kept], 0.0, atol=1e-7)  # x − x' = 0 there: nothing to attribute
    fixed = gradient_attribution(lm, TEXT, "integrated_gradients", steps=4)
    assert fixed.meta["steps"] == 4 and fixed.meta["steps_tried"] == [4] and fixed.meta["steps_rule"] == "fixed"


def test_encoder_token_target_and_decoder_position(lm):
    position = 3
    got = gradient_attribution(lm, TEXT, "input_x_gradient", position=position)
    assert got.target.position == position
    if lm.spec.kind == "decoder":
        assert got.target.kind == "next_token" and got.target.token is not None
        assert np.all(got.scores[position + 1 :] == 0)
    else:
        assert got.target.kind == "token_representation" and "token 3" in got.target.description
        assert got.target.token is None
    default = gradient_attribution(lm, TEXT, "input_x_gradient")
    n = len(default.tokens)
    expected = ("next_token", n - 1) if lm.spec.kind == "decoder" else ("sentence_embedding", None)
    assert (default.target.kind, default.target.position) == expected


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(method="saliency"), "unknown attribution method"),
        (dict(method="input_x_gradient", position=99), "position 99 out of range"),
        (dict(method="input_x_gradient", position=-1), "out of range"),
        (dict(method="integrated_gradients", steps=0), "steps must be"),
    ],
)
def test_bad_inputs_are_one_clear_error(kwargs, match):
    lm = tiny.build("gpt2")
    with pytest.raises(ValueError, match=match):
        gradient_attribution(lm, TEXT, **kwargs)
    with pytest.raises(ValueError, match="empty"):
        gradient_attribution(lm, " ", "input_x_gradient")


def test_materialised_models_refuse_attention_x_gradient_in_one_line():
    lm = tiny.build("gpt2")
    materialised = dataclasses.replace(lm, spec=dataclasses.replace(lm.spec, recording="materialised"))
    with pytest.raises(ValueError, match="materialised") as info:
        gradient_attribution(materialised, TEXT, "grad_attention")
    assert "\n" not in str(info.value)
    assert METHODS == ("input_x_gradient", "integrated_gradients", "grad_attention")


def test_no_gradient_is_left_on_the_shared_model():
    lm = tiny.build("llama_gqa")
    for method in METHODS:
        gradient_attribution(lm, TEXT, method, steps=4)
    assert all(p.grad is None for p in lm.model.parameters())
    assert not lm.model.training


def test_attributions_and_plain_runs_in_two_threads_do_not_disturb_each_other():
    from attnscope.models import run

    lm = tiny.build("llama_gqa")
    alone = gradient_attribution(lm, TEXT, "grad_attention")
    plain = run(lm, "A cat sat on the mat.").hidden(lm.spec.n_layers)
    seen_attribution, seen_run = in_threads(
        (lambda: gradient_attribution(lm, TEXT, "grad_attention"), 3),
        (lambda: run(lm, "A cat sat on the mat.").hidden(lm.spec.n_layers), 8),
    )
    for got in seen_attribution:
        np.testing.assert_array_equal(got.relevance, alone.relevance)
    for got in seen_run:
        np.testing.assert_array_equal(got, plain)


def test_a_contrast_explains_the_logit_difference():
    """log p(A) − log p(B) = logit(A) − logit(B): input × gradient of "A rather than B" is IxG(A) − IxG(B)."""
    lm = tiny.build("gpt2")
    ids = tokenize(lm, TEXT)[0]["input_ids"][0]
    a, b = (lm.tokenizer.convert_ids_to_tokens(int(i)) for i in ids[2:4])
    a_text, b_text = (lm.tokenizer.convert_tokens_to_string([t]) for t in (a, b))
    plain_a = gradient_attribution(lm, TEXT, "input_x_gradient", target_token=a_text)
    plain_b = gradient_attribution(lm, TEXT, "input_x_gradient", target_token=b_text)
    contrast = gradient_attribution(lm, TEXT, "input_x_gradient", target_token=a_text, contrast=b_text)
    assert (plain_a.target.token, contrast.target.contrast) == (a, b) and "rather than" in contrast.target.description
    np.testing.assert_allclose(contrast.scores, plain_a.scores - plain_b.scores, atol=1e-4)
    with pytest.raises(ValueError, match="is the explained token itself"):
        gradient_attribution(lm, TEXT, "input_x_gradient", target_token=a_text, contrast=a_text)
    with pytest.raises(ValueError, match="tokens for this model"):
        gradient_attribution(lm, TEXT, "input_x_gradient", target_token=TEXT)
    with pytest.raises(ValueError, match="language-model head"):
        gradient_attribution(tiny.build("bert"), TEXT, "input_x_gradient", target_token="mouse")
