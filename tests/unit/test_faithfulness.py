"""Faithfulness (ERASER AOPC): the pure metrics against hand-computed values, and on tiny models an oracle
ranking (each token's single-deletion effect, measured here on the model's own forward) beats random."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from attnscope.analysis.faithfulness import deletion_plan, random_orders, ranking, removal_counts, spearman, summarise
from attnscope.models.attribution import gradient_attribution
from attnscope.models.faithfulness import faithfulness, score_variants
from attnscope.models.forward import tokenize
from tests import tiny

TEXT = "The mouse ran across the kitchen floor while the cat watched from the old chair."


# -- the pure metrics -------------------------------------------------------------------------------
def test_aopc_by_hand():
    removable = np.array([False, True, True, True, True])  # token 0 is special: always kept
    weights = np.array([0.0, 1.0, 4.0, 3.0, 2.0])  # f(variant) = Σ weights of the kept tokens
    scores = {"a": np.array([9.0, 0.1, 0.4, 0.3, 0.2])}  # ranks 2, 3, 4, 1
    plan = deletion_plan(scores, removable, fractions=(0.25, 0.5), n_random=3, seed=7)
    assert plan.counts == (1, 2)
    table, curves = summarise(plan, plan.keeps.astype(float) @ weights)
    row = table.iloc[0]
    # full 10; without {2}: 6, without {2, 3}: 3 -> (4 + 7) / 2
    assert row["comprehensiveness"] == pytest.approx(5.5)
    # only {0, 2}: 4, only {0, 2, 3}: 7 -> (6 + 3) / 2
    assert row["sufficiency"] == pytest.approx(4.5)
    # the random baseline written out: the same seeded generator, its permutations of tokens 1..4
    generator = np.random.default_rng(7)
    comp, suff = [], []
    for _ in range(3):
        order = generator.permutation(np.array([1, 2, 3, 4]))
        comp.append(np.mean([weights[order[:k]].sum() for k in (1, 2)]))
        suff.append(np.mean([10 - weights[order[:k]].sum() for k in (1, 2)]))
    assert row["comprehensiveness_random"] == pytest.approx(np.mean(comp))
    assert row["sufficiency_random"] == pytest.approx(np.mean(suff))
    comp_low, comp_high = np.quantile(comp, [0.025, 0.975])  # the random rankings' central 95%
    suff_low, suff_high = np.quantile(suff, [0.025, 0.975])
    assert (row["comprehensiveness_random_low"], row["comprehensiveness_random_high"]) == pytest.approx((comp_low, comp_high))
    assert (row["sufficiency_random_low"], row["sufficiency_random_high"]) == pytest.approx((suff_low, suff_high))
    assert row["beats_random"] == bool(5.5 > comp_high and 4.5 < suff_low)
    random_curve = curves[curves["method"] == "random"]
    assert random_curve["comprehensiveness"].mean() == pytest.approx(np.mean(comp))
    assert list(curves.columns) == ["method", "fraction", "tokens", "comprehensiveness", "sufficiency"]
    assert curves[curves["method"] == "a"]["comprehensiveness"].tolist() == pytest.approx([4.0, 7.0])


def test_the_best_ranking_beats_random_and_the_worst_does_not():
    removable = np.ones(8, dtype=bool)
    weights = np.array([5.0, 0.1, 3.0, 0.2, 0.3, 4.0, 0.1, 0.2])
    plan = deletion_plan({"best": weights, "worst": -weights}, removable, n_random=10, seed=0)
    table, _ = summarise(plan, plan.keeps.astype(float) @ weights)
    verdict = dict(zip(table["method"], table["beats_random"]))
    assert verdict == {"best": True, "worst": False}


def test_ranking_ties_and_counts():
    assert ranking(np.array([1.0, 2.0, 2.0, 0.0]), np.array([True, True, True, False])).tolist() == [1, 2, 0]
    assert removal_counts(4, (0.1, 0.2, 0.3, 0.4, 0.5)) == [1, 1, 1, 2, 2]
    assert removal_counts(2, (0.1, 0.5, 0.9)) == [1, 1, 1]  # never all: a reduced input keeps a token
    assert removal_counts(100, (0.1, 0.5)) == [10, 50]


def test_random_rankings_are_reproducible_and_leave_the_global_rng_alone():
    removable = np.array([False, True, True, True, True, True, True])
    state = np.random.get_state()
    first, again, other = (random_orders(removable, 5, seed) for seed in (3, 3, 4))
    assert np.random.get_state()[1].tolist() == state[1].tolist()
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))
    assert all(sorted(order.tolist()) == [1, 2, 3, 4, 5, 6] for order in first)


def test_spearman_agrees_with_scipy():
    gen = np.random.default_rng(0)
    scores = {"a": gen.normal(size=9), "b": gen.normal(size=9)}
    scores["minus_a"] = -scores["a"]
    removable = np.ones(9, dtype=bool)
    removable[0] = False
    matrix = spearman(scores, removable)
    assert matrix.loc["a", "minus_a"] == pytest.approx(-1.0)
    assert matrix.loc["a", "b"] == pytest.approx(spearmanr(scores["a"][1:], scores["b"][1:]).statistic)
    assert list(matrix.index) == list(matrix.columns) == ["a", "b", "minus_a"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(scores={}), "no rankings"),
        (dict(scores={"a": np.ones(3)}), "shape"),
        (dict(scores={"a": np.array([1.0, np.nan, 0, 0, 0])}), "NaN"),
        (dict(scores={"random": np.ones(5)}), "method names"),
        (dict(fractions=(0.0, 0.5)), "strictly between"),
        (dict(fractions=(0.5, 1.0)), "strictly between"),
        (dict(n_random=0), "n_random"),
        (dict(removable=np.array([True, False, False, False, False])), "at least 2"),
    ],
)
def test_bad_plans_are_one_clear_error(kwargs, match):
    args = dict(scores={"a": np.arange(5.0)}, removable=np.ones(5, dtype=bool))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        deletion_plan(args.pop("scores"), args.pop("removable"), **args)


# -- on the model ---------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=["gpt2", "llama_gqa", "bert"])
def lm(request):
    return tiny.build(request.param)


def measured(lm, ids: torch.Tensor, keep: np.ndarray, position: int | None):
    """f of one reduced input on the model's own forward, unpadded: a decoder's probability of its clean top
    next token at the last kept token, an encoder's cosine of mean last hidden states with the full text's."""
    kept = ids[torch.from_numpy(np.flatnonzero(keep))][None]
    with torch.inference_mode():
        if lm.spec.kind == "decoder":
            best = int(lm.model(input_ids=ids[None]).logits[0, -1].argmax())
            return float(torch.softmax(lm.model(input_ids=kept).logits[0, -1].double(), -1)[best])
        full = lm.model(input_ids=ids[None]).last_hidden_state[0].mean(0)
        reduced = lm.model(input_ids=kept).last_hidden_state[0].mean(0)
        return float(torch.nn.functional.cosine_similarity(full.double(), reduced.double(), dim=0))


def test_an_oracle_ranking_beats_random(lm):
    enc, _ = tokenize(lm, TEXT)
    ids = enc["input_ids"][0]
    n = len(ids)
    specials = set(lm.tokenizer.all_special_ids)
    full = measured(lm, ids, np.ones(n, dtype=bool), None)
    oracle = np.zeros(n)
    for i in range(n):
        if int(ids[i]) not in specials:
            keep = np.ones(n, dtype=bool)
            keep[i] = False
            oracle[i] = full - measured(lm, ids, keep, None)  # what deleting token i alone costs
    result = faithfulness(lm, TEXT, {"oracle": oracle, "anti": -oracle})
    rows = result.table.set_index("method")
    # On a tiny random model every token matters about as much as any other, so whether the oracle clears the
    # random rankings' 95% interval depends on the draw; the verdict must follow the rule either way.
    for name in ("oracle", "anti"):
        row = rows.loc[name]
        rule = row["comprehensiveness"] > row["comprehensiveness_random_high"] and row["sufficiency"] < row["sufficiency_random_low"]
        assert row["beats_random"] == rule
    assert not rows.loc["anti", "beats_random"]
    assert rows.loc["oracle", "comprehensiveness"] > rows.loc["oracle", "comprehensiveness_random"]  # above the mean
    assert rows.loc["oracle", "comprehensiveness"] > rows.loc["anti", "comprehensiveness"]
    # one point of the curve, measured directly: the oracle's top 10% deleted
    k = int(result.curves.query("method == 'oracle'")["tokens"].iloc[0])
    order = np.lexsort((np.arange(n), -np.where(result.removable, oracle, -np.inf)))[:k]
    keep = np.ones(n, dtype=bool)
    keep[order] = False
    point = result.curves.query("method == 'oracle'")["comprehensiveness"].iloc[0]
    assert point == pytest.approx(full - measured(lm, ids, keep, None), abs=1e-5)
    assert result.meta["f_full"] == pytest.approx(full, abs=1e-6)
    assert (result.spearman.loc["oracle", "anti"]) == pytest.approx(-1.0)
    decoder = lm.spec.kind == "decoder"  # a decoder's predicting (last) token is the query and stays
    assert result.removable.sum() == sum(int(t) not in specials for t in ids.tolist()) - decoder


def test_padded_batches_read_each_row_at_its_own_last_token(lm):
    """score_variants pads variants of different lengths into one forward; each equals its unpadded run."""
    enc, _ = tokenize(lm, TEXT)
    ids = enc["input_ids"][0]
    n = len(ids)
    from attnscope.models.attribution import prediction_target

    target, reference = prediction_target(lm, ids[None], None)
    gen = np.random.default_rng(1)
    keeps = gen.random((6, n)) < 0.6
    keeps[:, 0] = True
    keeps[0] = True
    got = score_variants(lm, ids, keeps, target, reference, enc.get("token_type_ids", [None])[0])
    expected = [measured(lm, ids, keep, None) for keep in keeps]
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_decoder_position_ranks_the_prefix_and_seeds_reproduce():
    lm = tiny.build("gpt2")
    attribution = gradient_attribution(lm, TEXT, "input_x_gradient", position=8)
    first = faithfulness(lm, TEXT, {"ixg": attribution.scores}, position=8, seed=5)
    again = faithfulness(lm, TEXT, {"ixg": attribution.scores}, position=8, seed=5)
    other = faithfulness(lm, TEXT, {"ixg": attribution.scores}, position=8, seed=6)
    assert len(first.tokens) == 9 and first.target.position == 8
    assert first.table.equals(again.table) and first.curves.equals(again.curves)
    assert first.table["comprehensiveness_random"].iloc[0] != other.table["comprehensiveness_random"].iloc[0]
    # of 8 removable tokens: GPT-2's tokenizer adds no BOS, and the predicting token 8 stays (it is the query)
    assert not first.removable[8] and first.removable[:8].all()
    assert first.meta["counts"] == [1, 2, 2, 3, 4]
    assert "predicting token (position 8)" in first.meta["removal"]


def test_a_decoder_ranking_that_puts_the_predicting_token_first_still_keeps_it():
    lm = tiny.build("gpt2")
    n = len(tokenize(lm, TEXT)[0]["input_ids"][0])
    last_first = np.zeros(n)
    last_first[:9] = np.arange(9, dtype=float)  # the predicting token (8) ranked most important
    result = faithfulness(lm, TEXT, {"last_first": last_first}, position=8)
    order = result.curves.query("method == 'last_first'")
    assert int(order["tokens"].iloc[0]) == 1
    # the top "removable" token is 7, not 8: deleting it leaves a prefix that still ends at the predicting token
    assert not result.removable[8] and result.removable[7]


def test_inside_the_random_interval_is_not_beating_random():
    """A ranking a little better than the random mean, but inside the random rankings' 95%, gets no tick."""
    removable = np.ones(10, dtype=bool)
    weights = np.linspace(1.0, 2.0, 10)  # nearly flat: any ranking deletes about as much as any other
    rng = np.random.default_rng(3)
    slightly = weights + rng.normal(0, 0.4, 10)  # correlated with the truth, noisily
    plan = deletion_plan({"slightly": slightly, "best": weights}, removable, n_random=50, seed=0)
    table, _ = summarise(plan, plan.keeps.astype(float) @ weights)
    rows = table.set_index("method")
    low, high = rows.loc["slightly", ["comprehensiveness_random_low", "comprehensiveness_random_high"]]
    assert low < rows.loc["slightly", "comprehensiveness_random"] < high
    if rows.loc["slightly", "comprehensiveness"] <= high:
        assert not rows.loc["slightly", "beats_random"]
    assert rows.loc["best", "comprehensiveness"] > high and rows.loc["best", "beats_random"]


def test_encoder_token_target_keeps_its_token():
    lm = tiny.build("bert")
    n = len(tokenize(lm, TEXT)[0]["input_ids"][0])
    result = faithfulness(lm, TEXT, {"position": np.arange(n, dtype=float)}, position=4)
    assert not result.removable[4] and not result.removable[0] and not result.removable[-1]  # target, [CLS], [SEP]
    assert result.target.kind == "token_representation" and result.meta["f_full"] == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(scores={}), "no rankings"),
        (dict(scores={"a": np.ones(3)}), "one value per token"),
        (dict(position=99), "out of range"),
        (dict(seed=1.5), "seed"),
        (dict(fractions=(0.1, 2.0)), "strictly between"),
    ],
)
def test_bad_inputs_are_one_clear_error(kwargs, match):
    lm = tiny.build("gpt2")
    n = len(tokenize(lm, TEXT)[0]["input_ids"][0])
    args = dict(scores={"a": np.arange(float(n))})
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        faithfulness(lm, TEXT, **args)
