"""Encoder-decoder models: encoder self-, decoder self- and cross-attention, each equal to eager."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from transformers import AutoModelForSeq2SeqLM

from attnscope.models import from_model, run
from tests.tiny import bpe_tokenizer, seq2seq_config

SOURCES = ["The mouse ran across the kitchen floor.", "A cat sat."]
TARGETS = ["Le chat.", "Une souris court vite dans la cuisine."]


@pytest.fixture(scope="module", params=["t5", "bart"])
def seq2seq(request):
    torch.manual_seed(0)
    model = AutoModelForSeq2SeqLM.from_config(seq2seq_config(request.param), attn_implementation="eager")
    with torch.no_grad():  # peaked maps, so a wrong scaling or bias could not pass as near-uniform
        for name, param in model.named_parameters():
            if param.ndim == 2 and any(part in name for part in ("q.", "k.", "q_proj", "k_proj")):
                param.normal_(0.0, 0.3)
    return from_model(model, bpe_tokenizer(), name=f"tiny-{request.param}")


def eager(lm, rec):
    model = copy.deepcopy(lm.model)
    model.set_attn_implementation("eager")
    with torch.inference_mode():
        out = model(**rec.inputs, output_attentions=True, use_cache=False)
    return {"encoder": out.encoder_attentions, "decoder": out.decoder_attentions, "cross": out.cross_attentions}


def test_spec_and_load_check_cover_all_three_kinds(seq2seq):
    spec = seq2seq.spec
    assert (spec.kind, spec.n_layers, spec.n_decoder_layers, spec.recording) == ("encoder-decoder", 2, 2, "hook")
    assert spec.verification.passed and spec.verification.heads == 3 * 2 * 4  # encoder, decoder, cross


@pytest.mark.parametrize("side", ["right", "left"])
def test_every_kind_matches_eager_on_a_padded_batch(seq2seq, side):
    rec = run(seq2seq, SOURCES, target=TARGETS, padding_side=side)
    assert rec.target_attention_mask.sum(-1).tolist()[0] != rec.target_attention_mask.sum(-1).tolist()[1]
    reference = eager(seq2seq, rec)
    for kind, maps in reference.items():
        for batch in range(2):
            rows = rec.target_index(batch) if kind != "encoder" else rec.real_index(batch)
            cols = rec.real_index(batch) if kind != "decoder" else rec.target_index(batch)
            for layer in range(2):
                expected = maps[layer][batch].numpy()[:, rows][:, :, cols]
                for head in range(4):
                    got = rec.stack(kind).attention(layer, head, batch=batch)
                    assert got.shape == (len(rows), len(cols))
                    np.testing.assert_allclose(got, expected[head], atol=1e-4, err_msg=f"{kind} L{layer} H{head} b{batch}")


def test_decoder_is_causal_and_cross_sees_the_whole_source(seq2seq):
    rec = run(seq2seq, SOURCES[0], target=TARGETS[1])
    dec = rec.decoder.attention(1, 2)
    assert np.all(dec[np.triu_indices_from(dec, k=1)] == 0.0)
    cross = rec.cross.attention(1, 2)
    assert cross.shape == (len(rec.target_tokens[0]), len(rec.tokens[0])) and cross.min() > 0.0
    np.testing.assert_allclose(cross.sum(-1), 1.0, atol=1e-5)
    assert rec.cross.axes() == (rec.target_tokens[0], rec.tokens[0])
    stats = rec.decoder.head_stats()
    np.testing.assert_allclose(
        stats.query("layer == 1 and head == 2")["prev_token"].item(), np.mean([dec[i, i - 1] for i in range(1, len(dec))]), atol=1e-5
    )


def test_bad_input_is_one_clear_line(seq2seq, tiny_factory):
    with pytest.raises(ValueError, match=r"encoder-decoder model: give a source text and a target text"):
        run(seq2seq, SOURCES[0])
    with pytest.raises(ValueError, match=r"2 source text\(s\) but 1 target"):
        run(seq2seq, SOURCES, target=TARGETS[0])
    rec = run(seq2seq, SOURCES[0], target=TARGETS[0])
    with pytest.raises(ValueError, match=r"statistics are defined over one sequence"):
        rec.cross.head_stats()
    with pytest.raises(ValueError, match=r"decoder layer 5 out of range"):
        rec.cross.attention(5, 0)
    with pytest.raises(ValueError, match=r"takes no target text"):
        run(tiny_factory("gpt2"), "The mouse.", target="Le chat.")
    with pytest.raises(ValueError, match=r"attention stack 'cross' does not exist"):
        run(tiny_factory("gpt2"), "The mouse.").stack("cross")


def test_each_stack_reads_the_same_maps_captured_or_recomputed(tiny_factory):
    torch.manual_seed(0)
    model = AutoModelForSeq2SeqLM.from_config(seq2seq_config("bart"), attn_implementation="sdpa")
    lm = from_model(model, bpe_tokenizer(), name="tiny-bart-sdpa")
    kept = run(lm, SOURCES, target=TARGETS, path="captured")
    again = run(lm, SOURCES, target=TARGETS, path="recomputed")
    assert kept.layers[0].weights is not None and kept.decoder_layers[0].weights is not None  # cross: recomputed either way
    assert again.layers[0].weights is None and again.decoder_layers[0].weights is None and again.path == "recomputed"
    assert kept.stack_names == ("encoder", "decoder", "cross") and kept.stack("self").name == "encoder"
    for name in kept.stack_names:
        for batch in range(2):
            a, b = kept.stack(name), again.stack(name)
            np.testing.assert_allclose(a.maps(batch), b.maps(batch), atol=1e-5, err_msg=name)
            np.testing.assert_allclose(a.attention(1, 3, batch), b.attention(1, 3, batch), atol=1e-5, err_msg=name)
            assert a.maps(batch).shape[-2:] == (len(a.axes(batch)[0]), len(a.axes(batch)[1]))
    # the record's own readers are the encoder's
    np.testing.assert_array_equal(kept.attention(0, 1, batch=1), kept.encoder.attention(0, 1, batch=1))
    np.testing.assert_array_equal(kept.head_stats().to_numpy(), kept.encoder.head_stats().to_numpy())
    plain = run(tiny_factory("gpt2"), "The mouse.")
    assert plain.stack_names == ("self",) and plain.stack().name == "self"
    with pytest.raises(ValueError, match=r"attention stack 'decoder' does not exist for .*use one of self"):
        plain.decoder  # noqa: B018
