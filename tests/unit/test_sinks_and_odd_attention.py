"""Attention that is not one plain softmax per configured head, shown exactly: learned sinks (per head
and per query), ConvBERT's head ratio, SqueezeBERT's scores, Longformer's band, MiniMax's linear layers,
a [B, 1, 1, n] mask. The reference is always the model's own eager computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attnscope.models import from_model, run
from attnscope.models.eager import band_to_full
from attnscope.models.generation import generate
from attnscope.models.lab import lab_effect
from tests import zoo
from tests.helpers import max_map_diff, teacher_forced
from tests.parity import TEXTS, assert_matches_eager, eager_reference, softmax_module_outputs, strip
from tests.tiny import bpe_tokenizer
from tests.zoo import wrap


@pytest.fixture(scope="module")
def gpt_oss():
    return wrap("gpt_oss")


def test_learned_sinks_are_recorded_and_labelled(gpt_oss):
    spec = gpt_oss.spec
    assert (spec.recording, spec.attention_sinks) == ("hook", True)
    assert "learned attention sinks" in spec.recording_label and spec.verification.passed
    sinks = gpt_oss.model.model.layers[0].self_attn.sinks.detach()
    rec = run(gpt_oss, TEXTS, padding_side="left")
    np.testing.assert_array_equal(rec.layers[0].sinks.reshape(-1).numpy(), sinks.float().numpy())


@pytest.mark.parametrize("side", ["left", "right"])
def test_sink_maps_equal_eager_and_rows_keep_the_sinks_share(gpt_oss, side):
    rec = run(gpt_oss, TEXTS, padding_side=side)
    assert_matches_eager(gpt_oss, rec)
    sums = np.stack([rec.attention(layer, head).sum(-1) for layer in range(4) for head in range(4)])
    assert sums.max() <= 1 + 1e-5 and sums.min() < 0.9  # the sinks' share stays out: not renormalised away


def test_head_statistics_under_sinks_match_eager_maps(gpt_oss):
    rec = run(gpt_oss, TEXTS, padding_side="right")
    reference, _ = eager_reference(gpt_oss, rec)
    stats = rec.head_stats(batch=1)
    for layer in range(gpt_oss.spec.n_layers):
        maps = strip(reference[layer], rec, 1)  # [H, m, m]
        entropy = -(np.where(maps > 0, maps * np.log(np.where(maps > 0, maps, 1)), 0)).sum(-1).mean(-1)
        first = maps[:, 1:, 0].mean(-1)
        prev = np.array([np.mean([maps[h, i, i - 1] for i in range(1, maps.shape[1])]) for h in range(maps.shape[0])])
        row = stats[stats.layer == layer].sort_values("head")
        np.testing.assert_allclose(row["entropy"], entropy, atol=1e-4)
        np.testing.assert_allclose(row["first_token_mass"], first, atol=1e-5)
        np.testing.assert_allclose(row["prev_token"], prev, atol=1e-5)


def test_the_lab_refuses_a_model_with_sinks_instead_of_a_wrong_baseline(gpt_oss):
    with pytest.raises(ValueError, match="learned attention sinks"):
        lab_effect(gpt_oss, TEXTS[0], "window:2")


def test_generation_with_sinks_equals_a_teacher_forced_pass():
    config = zoo.tiny_config("gpt_oss")
    config.layer_types = ["full_attention"] * config.num_hidden_layers  # a cache that keeps every key
    torch.manual_seed(0)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    zoo._sharpen(model)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.sinks.normal_(0.0, 1.0)
    lm = from_model(model.eval(), bpe_tokenizer(), name="tiny-gpt-oss-full")
    rec = generate(lm, "The mouse ran, the cat", max_new_tokens=5, stop_at_eos=False)
    assert rec.generation.recording == "cache"
    assert max_map_diff(lm, rec, teacher_forced(lm, rec)) <= 1e-4


def test_per_query_sinks_equal_eager():
    lm = wrap("inkling2_text")  # a sink logit projected from each query's hidden state
    rec = run(lm, TEXTS, padding_side="left")
    assert lm.spec.attention_sinks and rec.layers[0].sinks.shape[-1] == rec.n_padded
    assert_matches_eager(lm, rec)


def test_convbert_shows_its_softmax_heads_and_says_the_rest_are_convolutions():
    lm = wrap("convbert")
    config = lm.model.config
    assert lm.spec.n_heads == config.num_attention_heads // config.head_ratio
    assert "span-based convolutions" in lm.spec.recording_label
    rec = run(lm, TEXTS, padding_side="right")
    assert_matches_eager(lm, rec)


def test_squeezebert_weights_are_the_softmax_its_forward_uses():
    lm = wrap("squeezebert")  # its output_attentions returns pre-softmax scores
    rec = run(lm, TEXTS, padding_side="right")
    used = softmax_module_outputs(lm, rec)  # what its nn.Softmax modules really returned
    assert len(used) == lm.spec.n_layers
    for layer, weights in enumerate(used):
        for batch in range(2):
            expected = strip(weights, rec, batch)
            for head in range(lm.spec.n_heads):
                np.testing.assert_allclose(rec.attention(layer, head, batch=batch), expected[head], atol=1e-5)


def test_a_local_band_becomes_the_full_map_with_zeros_outside():
    band = torch.rand(1, 2, 6, 5)  # window 2 either side, the self weight in column 2
    full = band_to_full(band, 6).numpy()
    for i in range(6):
        for j in range(6):
            expected = band[0, :, i, j - i + 2].numpy() if abs(i - j) <= 2 else 0.0
            np.testing.assert_array_equal(full[0, :, i, j], expected)


def test_longformer_window_is_kept_in_the_map():
    config = zoo.tiny_config("longformer")
    config.attention_window = [4] * config.num_hidden_layers  # 2 keys either side, shorter than the text
    from transformers import AutoModelForMaskedLM

    torch.manual_seed(0)
    model = AutoModelForMaskedLM.from_config(config, attn_implementation="eager")
    zoo._sharpen(model)
    lm = from_model(model.eval(), bpe_tokenizer(), name="tiny-longformer")
    assert lm.spec.recording == "materialised"
    rec = run(lm, TEXTS[0])
    a = rec.attention(1, 0)
    i, j = np.indices(a.shape)
    assert np.all(a[np.abs(i - j) > 2] == 0) and np.all(a[np.abs(i - j) <= 2] > 0)
    np.testing.assert_allclose(a.sum(-1), 1.0, atol=1e-5)


def test_linear_attention_blocks_have_no_map_and_the_softmax_blocks_are_exact():
    lm = wrap("minimax")  # lightning (linear) attention in every second block
    types = lm.model.config.layer_types
    assert list(lm.spec.attention_layers) == [i for i, t in enumerate(types) if t == "full_attention"]
    rec = run(lm, TEXTS, padding_side="right")
    reference, _ = eager_reference(lm, rec)
    for layer in lm.spec.attention_layers:
        for batch in range(2):
            expected = strip(reference[layer], rec, batch)
            for head in range(lm.spec.n_heads):
                np.testing.assert_allclose(rec.attention(layer, head, batch=batch), expected[head], atol=1e-4)


def test_a_mask_broadcast_over_queries_is_expanded():
    lm = wrap("layoutlm")  # builds its own [B, 1, 1, n] mask
    rec = run(lm, TEXTS, padding_side="right")
    assert_matches_eager(lm, rec)
