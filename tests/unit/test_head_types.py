"""Head types: planted heads in a tiny GPT-2 are classified correctly; rules, probes and group similarity."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM

from attnscope.analysis.head_types import HeadThresholds, classify_heads, max_entropy, sink_rate
from attnscope.analysis.probes import group_similarity, induction_score, js_similarity, layer_induction_scores
from attnscope.models import from_model, run
from attnscope.models.aggregates import head_similarity
from attnscope.models.forward import run_ids
from attnscope.models.probes import add_probe_scores, induction_ids, induction_scores
from tests import tiny

TEXT = "The mouse ate the cheese, then the cat chased the mouse around the old wooden table again."
PREV, FIRST, RANDOM = 0, 1, 2  # planted heads of layer 0
SHARP = 60.0  # score of the planted key; others score 0, so its weight is 1 - O(n·e^-60)


def planted_gpt2():
    """A tiny GPT-2 whose layer-0 head 0 is exactly previous-token and head 1 exactly first-token.

    Token embeddings are zero and position p's embedding is the unit vector e_p, so layer 0 sees
    LayerNorm(e_p) = (e_p - 1/d) / σ. Projection columns are balanced by the last (unused) position
    column so the -1/d term cancels: q_p and k_p are then exactly chosen columns / σ.
    """
    torch.manual_seed(0)
    config = tiny.config_for("gpt2", hidden=128, n_positions=64, initializer_range=0.02)  # weights set below
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    d, hd = config.n_embd, config.n_embd // config.n_head
    block = model.transformer.h[0]
    sigma = math.sqrt((1 / d) * (1 - 1 / d) + block.ln_1.eps)
    with torch.no_grad():
        model.transformer.wte.weight.zero_()
        model.transformer.wpe.weight.zero_()
        model.transformer.wpe.weight[: config.n_positions, : config.n_positions] = torch.eye(config.n_positions)
        block.ln_1.weight.fill_(1.0)
        block.ln_1.bias.zero_()
        w = block.attn.c_attn.weight  # Conv1D: [d_in, 3·d]; output = x @ w + b, columns q | k | v
        b = block.attn.c_attn.bias
        scale = SHARP * math.sqrt(hd) * sigma
        wq = torch.zeros(d, d)
        wk = torch.zeros(d, d)
        bq = torch.zeros(d)
        # head PREV: q_i = c·e_i, k_j = e_{j+1} (in the head's own dims) -> score only at j = i - 1
        for p in range(hd - 1):
            wq[p, PREV * hd + p] = scale
            wk[p, PREV * hd + p + 1] = 1.0
        # head FIRST: q constant (bias), k_0 = e_0, k_j = 0 otherwise -> score only at j = 0
        bq[FIRST * hd] = SHARP * math.sqrt(hd)
        wk[0, FIRST * hd] = sigma
        for m in (wq, wk):  # balance the LayerNorm mean: the unused last row makes every column sum to 0
            m[d - 1] = -m[: d - 1].sum(0)
        for h in (PREV, FIRST):
            cols = slice(h * hd, (h + 1) * hd)
            w[:, cols] = wq[:, cols]
            w[:, d + h * hd : d + (h + 1) * hd] = wk[:, cols]
            b[cols] = bq[cols]
            b[d + h * hd : d + (h + 1) * hd] = 0.0
    return from_model(model, tiny.bpe_tokenizer(), name="planted-gpt2", backend="sdpa")


@pytest.fixture(scope="module")
def planted():
    lm = planted_gpt2()
    rec = run(lm, TEXT)
    assert 16 <= len(rec.tokens[0]) < 31  # the planted previous-token pattern covers positions < head dim
    return lm, rec


def test_planted_maps_are_exact(planted):
    _, rec = planted
    n = len(rec.tokens[0])
    prev = rec.attention(0, PREV)
    first = rec.attention(0, FIRST)
    np.testing.assert_allclose(prev[np.arange(1, n), np.arange(n - 1)], 1.0, atol=1e-6)
    np.testing.assert_allclose(first[:, 0], 1.0, atol=1e-6)


def test_planted_heads_are_classified(planted):
    lm, rec = planted
    table = classify_heads(rec.head_stats(layers=[0]), kind="decoder", n_tokens=len(rec.tokens[0]))
    by_head = table.set_index("head")
    assert by_head.loc[PREV, "primary_type"] == "previous_token"
    assert by_head.loc[PREV, "prev_token"] > 0.999
    assert by_head.loc[FIRST, "primary_type"] == "sink"
    assert by_head.loc[FIRST, "first_token_mass"] > 0.999
    assert not by_head.loc[FIRST, "is_previous_token"]
    random_head = by_head.loc[RANDOM]
    assert not random_head["is_previous_token"] and not random_head["is_sink"]
    assert random_head["is_broad"]  # near-uniform scores of a random init spread attention


def test_thresholds_are_adjustable(planted):
    _, rec = planted
    stats = rec.head_stats(layers=[0])
    strict = classify_heads(stats, kind="decoder", n_tokens=len(rec.tokens[0]), thresholds=HeadThresholds(sink=0.05))
    # the random head's uniform causal attention puts mean_i 1/(i+1) > 0.05 on the first token
    assert strict.set_index("head").loc[RANDOM, "is_sink"]


def test_rules_on_a_hand_made_table():
    table = pd.DataFrame(
        {
            "layer": [0, 0, 0, 0],
            "head": [0, 1, 2, 3],
            "entropy": [0.0, math.log(10), 0.1, 0.2],
            "first_token_mass": [0.0, 0.1, 0.05, 0.05],
            "special_token_mass": [0.0, 0.1, 0.6, 0.0],
            "prev_token": [0.0, 0.1, 0.0, 0.1],
            "next_token": [0.9, 0.1, 0.0, 0.0],
            "mean_distance": [1.0, 3.0, 4.0, 4.0],
            "induction": [0.0, 0.0, 0.0, 0.9],
        }
    )
    enc = classify_heads(table, kind="encoder", n_tokens=10).set_index("head")
    assert enc.loc[0, "types"] == "next_token, diagonal"
    assert enc.loc[1, "primary_type"] == "broad" and enc.loc[1, "normalised_entropy"] == pytest.approx(1.0)
    assert enc.loc[2, "primary_type"] == "sink"  # [CLS]/[SEP] mass counts as vertical
    assert enc.loc[3, "primary_type"] == "other"  # induction is a decoder label
    dec = classify_heads(table, kind="decoder", n_tokens=10).set_index("head")
    assert dec.loc[3, "primary_type"] == "induction"
    assert not dec.loc[0, "is_next_token"]
    assert table.columns.tolist()[-1] == "induction"  # input untouched
    with pytest.raises(ValueError, match="head_stats"):
        classify_heads(table.drop(columns=["entropy"]), kind="encoder", n_tokens=10)


def test_max_entropy_and_sink_rate():
    assert max_entropy(8, "encoder") == pytest.approx(math.log(8))
    assert max_entropy(4, "decoder") == pytest.approx((math.log(1) + math.log(2) + math.log(3) + math.log(4)) / 4)
    assert sink_rate(pd.DataFrame({"first_token_mass": [0.1, 0.31, 0.9, 0.3]})) == 0.5


def test_induction_score_formula():
    n, period = 9, 4
    weights = np.zeros((n, n))
    weights[np.arange(n), 0] = 1.0
    stripe_rows = np.arange(period - 1, n)
    weights[stripe_rows, :] = 0.0
    weights[stripe_rows, stripe_rows - (period - 1)] = 1.0
    assert induction_score(weights, period) == pytest.approx(1.0)
    assert induction_score(np.full((n, n), 1 / n), period) == pytest.approx(1 / n)
    with pytest.raises(ValueError, match="period"):
        induction_score(weights, n)


def test_streamed_induction_equals_dense_maps(tiny_factory):
    lm = tiny_factory("llama_gqa")
    ids, prefix = induction_ids(lm, seq_len=6, batch=2, seed=3)
    assert prefix == 0 and ids.shape == (2, 12)
    np.testing.assert_array_equal(ids[:, :6], ids[:, 6:])
    rec = run_ids(lm, ids)
    r = rec.layers[1]
    streamed = layer_induction_scores(r, period=6, chunk=4)
    dense = np.array([np.mean([induction_score(rec.attention(1, h, batch=b), 6) for b in range(2)]) for h in range(lm.spec.n_heads)])
    np.testing.assert_allclose(streamed, dense, atol=1e-6)
    table = induction_scores(lm, seq_len=6, batch=2, seed=3)
    np.testing.assert_allclose(table[table.layer == 1]["induction"].to_numpy(), dense, atol=1e-6)


def test_add_probe_scores_joins_on_layer_and_head(tiny_factory):
    lm = tiny_factory("gpt2")
    stats = run(lm, TEXT).head_stats()
    joined = add_probe_scores(lm, stats, "induction", seq_len=5, batch=1)
    assert len(joined) == len(stats) and joined["induction"].notna().all()
    with pytest.raises(ValueError, match="induction"):
        add_probe_scores(lm, stats, "copying")


def test_induction_probe_wraps_like_the_tokenizer(tiny_factory):
    ids, prefix = induction_ids(tiny_factory("bert"), seq_len=5, batch=1)
    assert prefix == 1 and ids[0, 0] == 101 and ids[0, -1] == 102  # [CLS] ... [SEP]
    np.testing.assert_array_equal(ids[0, 1:6], ids[0, 6:11])


def test_js_similarity_and_groups(tiny_factory):
    p = torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])
    q = torch.tensor([[0.5, 0.5, 0.0], [0.0, 1.0, 0.0]])
    np.testing.assert_allclose(js_similarity(p, q).numpy(), [1.0, 0.0], atol=1e-7)
    sim = np.array([[1, 0.9, 0.2, 0.3], [0.9, 1, 0.4, 0.1], [0.2, 0.4, 1, 0.7], [0.3, 0.1, 0.7, 1]])
    groups = group_similarity(sim, kv_group=2)
    assert groups["within_group"] == pytest.approx(0.8)
    assert groups["across_groups"] == pytest.approx(0.25)
    assert math.isnan(group_similarity(sim, kv_group=1)["within_group"])
    lm = tiny_factory("llama_gqa")
    rec = run(lm, TEXT)
    matrix = head_similarity(rec, 0)
    a0, a1 = rec.attention(0, 0).astype(np.float64), rec.attention(0, 1).astype(np.float64)
    expected = js_similarity(torch.from_numpy(a0), torch.from_numpy(a1)).mean().item()
    assert matrix[0, 1] == pytest.approx(expected, abs=1e-5)
    np.testing.assert_allclose(matrix, matrix.T)
    np.testing.assert_allclose(np.diag(matrix), 1.0)
