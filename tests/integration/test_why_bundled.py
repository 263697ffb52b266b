"""The why split on the bundled models (MiniLM: BERT Post-LN; SmolLM2: Llama, GQA, RoPE), against an independent
split on a deep copy of each (tests/why_reference.py)."""

from __future__ import annotations

import math

import pytest

from attnscope.models import run
from attnscope.models.why import why
from tests.why_reference import reference

pytestmark = pytest.mark.slow

TEXT = "The cat sat on the mat because the mat was warm."


@pytest.mark.parametrize("name", ["minilm", "smollm2"])
def test_the_split_sums_to_the_recorded_score_and_matches_an_independent_one(name, request):
    lm = request.getfixturevalue(name)
    rec = run(lm, TEXT, values=True)
    n = len(rec.tokens[0])
    layer, head, i, j = lm.spec.n_layers - 2, 1, n - 1, n // 2
    split = why(lm, TEXT, layer, head, i, j, rec=rec)
    scale = max(1.0, abs(split.score))
    assert split.meta["split_error"] < 1e-4 * scale
    assert math.isclose(sum(split.key_side.values()) + split.bias["key"] + split.bias["position"], split.score, abs_tol=1e-4 * scale)
    ref = reference(lm, rec, layer, head, i, j)
    assert abs(ref.score - split.score) < 1e-3 * scale
    theirs = ref.query_side()
    assert max(abs(split.query_side[c] - v) for c, v in theirs.items()) < 1e-3 * scale
    assert split.meta["rope"] is (name == "smollm2")
    assert split.meta["layout"] == ("Post-LN" if name == "minilm" else "Pre-LN")
    if name == "smollm2":
        assert split.meta["kv_head"] == head // 3


def test_smollm2_induction_head_feeder_matters_more_than_random_earlier_heads(smollm2):
    from attnscope.models.circuit import induction_check

    check = induction_check(smollm2, seq_len=20, seed=0, samples=8)
    assert check.score > 0.5  # a real induction head
    assert check.feeder.startswith("L") and int(check.feeder[1:].split("H")[0]) < check.head[0]
    assert check.top_drop > 0.2 and check.top_drop > check.random_drop + 0.1, check
    # the weight-only K-composition ranks the feeder among the head's strongest
    k_ranked = sorted(check.circuit.weight_only, key=lambda name: -check.circuit.weight_only[name]["k"])
    assert check.feeder in k_ranked[:5]
