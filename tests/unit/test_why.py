"""The "why" split of one attention score (issue 33): against an independent split on a deep copy of each model
(tests/why_reference.py), summing to the recorded score, and score differences equal to eager log-ratios."""

from __future__ import annotations

import math

import numpy as np
import pytest

from attnscope.models import run
from attnscope.models.why import why
from tests import tiny
from tests.why_reference import reference

TEXT = "The mouse ran up the clock and the clock struck one."
ARCHS = ("gpt2", "llama_gqa", "gpt_neox", "bert", "t5_encoder")  # GPT-NeoX: parallel residual, fused per-head QKV, partial RoPE
# float32 forward vs the split's float64 sums: a few float32 steps of the score's size
ROUNDING = 2e-5


@pytest.fixture(scope="module", params=ARCHS)
def model(request):
    lm = tiny.build(request.param)
    return lm, run(lm, TEXT, values=True)


def _cell(lm, rec):
    n = len(rec.tokens[0])
    return 1, lm.spec.n_heads - 1, n - 2, n // 3  # layer 1 (after one full block), last head, a query after its key


def test_the_split_sums_to_the_recorded_score(model):
    lm, rec = model
    layer, head, i, j = _cell(lm, rec)
    split = why(lm, TEXT, layer, head, i, j, rec=rec)
    scale = max(1.0, abs(split.score))
    assert abs(split.meta["split_score"] - split.score) < ROUNDING * scale
    bias = split.bias
    assert math.isclose(sum(split.query_side.values()) + bias["query"] + bias["position"], split.score, abs_tol=ROUNDING * scale)
    assert math.isclose(sum(split.key_side.values()) + bias["key"] + bias["position"], split.score, abs_tol=ROUNDING * scale)
    assert list(split.query_side) == split.components == list(split.key_side)
    n_heads = lm.spec.n_heads
    assert split.components[-1] == "L0MLP" and split.components[-1 - n_heads] == "L0H0"
    assert split.meta["kv_head"] == head // lm.spec.kv_group


def test_the_split_matches_an_independent_one_on_the_model_itself(model):
    lm, rec = model
    layer, head, i, j = _cell(lm, rec)
    split = why(lm, TEXT, layer, head, i, j, rec=rec)
    ref = reference(lm, rec, layer, head, i, j)
    scale = max(1.0, abs(ref.score))
    assert abs(split.score - ref.score) < 1e-4 * scale
    assert abs(split.bias["position"] - ref.position) < 1e-4 * scale
    for mine, theirs in ((split.query_side, ref.query_side()), (split.key_side, ref.key_side())):
        assert set(mine) == set(theirs)
        for name in mine:
            assert abs(mine[name] - theirs[name]) < 1e-4 * scale, (name, mine[name], theirs[name])
    # the split says something: several components carry the score, not one
    assert sum(abs(v) > 1e-3 * scale for v in split.query_side.values()) >= 3


def test_score_differences_across_keys_are_eager_log_ratios(model):
    lm, rec = model
    layer, head, i, _ = _cell(lm, rec)
    ref = reference(lm, rec, layer, head, i, 0)
    keys = [j for j in range(i + 1) if ref.eager_row[j] > 1e-30][:4]
    scores = [why(lm, TEXT, layer, head, i, j, rec=rec).score for j in keys]
    logs = [math.log(float(ref.eager_row[j])) for j in keys]
    np.testing.assert_allclose(np.diff(scores), np.diff(logs), atol=1e-3)


def test_the_pairs_are_the_largest_terms_and_sum_with_the_biases(model):
    lm, rec = model
    layer, head, i, j = _cell(lm, rec)
    split = why(lm, TEXT, layer, head, i, j, top=5, rec=rec)
    values = [abs(p["value"]) for p in split.pairs]
    assert len(values) == 5 and values == sorted(values, reverse=True)
    assert {p["query"] for p in split.pairs} <= set(split.components)
    payload = split.to_json()
    for key in ("score", "weight", "components", "query_side", "key_side", "bias", "pairs", "tokens", "meta"):
        assert key in payload
    assert 0.0 <= payload["weight"] <= 1.0


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"layer": 9}, "layer 9 out of range"),
        ({"head": -1}, "head -1 out of range"),
        ({"query": 99}, "query 99 out of range"),
        ({"key": True}, "key True out of range"),
        ({"top": -2}, "top must be"),
    ],
)
def test_bad_cells_are_refused_in_one_line(kwargs, words):
    lm = tiny.build("gpt2")
    args = {"layer": 1, "head": 0, "query": 3, "key": 1, **kwargs}
    with pytest.raises(ValueError, match=words) as info:
        why(lm, TEXT, **args)
    assert "\n" not in str(info.value)


def test_a_masked_cell_says_what_a_causal_query_sees():
    lm = tiny.build("llama_gqa")
    with pytest.raises(ValueError, match="masked for query 2"):
        why(lm, TEXT, 1, 0, 2, 5)


@pytest.mark.parametrize("arch", ["qwen2", "llama_mqa", "roberta", "distilbert"])
def test_more_families_sum_to_the_recorded_score(arch):
    # Qwen2: query and key biases; MQA: one KV head; RoBERTa: positions offset past the pad id; DistilBERT: no types
    lm = tiny.build(arch)
    split = why(lm, TEXT, 1, 1, 5, 2)
    assert split.meta["split_error"] < ROUNDING * max(1.0, abs(split.score))
    assert split.meta["kv_head"] == (0 if arch == "llama_mqa" else 1 // lm.spec.kv_group)
    assert ("type" in split.components) is (arch == "roberta")


def test_gpt_neox_reads_its_per_head_fused_projection_and_partial_rope():
    lm = tiny.build("gpt_neox")  # query_key_value groups rows by head; RoPE covers half of each head (rotary_pct 0.5)
    split = why(lm, TEXT, 1, 2, 7, 3)
    assert split.meta["rope"] is True and split.meta["layout"] == "Pre-LN"
    assert max(split.meta["check"].values()) < 1e-5
    assert split.components[-1] == "L0MLP"  # the parallel MLP is its own component
