"""Value zeroing, gradient attributions and faithfulness on the two bundled models (short texts)."""

from __future__ import annotations

import numpy as np
import pytest

from attnscope.models.attribution import METHODS, gradient_attribution
from attnscope.models.faithfulness import faithfulness
from attnscope.models.value_zeroing import value_zeroing

pytestmark = pytest.mark.slow

TEXTS = {
    "minilm": "The mouse ran across the kitchen floor while the cat watched.",
    "smollm2": "The capital of France is Paris, and the capital of Germany is",
}


@pytest.fixture(scope="module", params=["minilm", "smollm2"])
def bundled(request):
    return request.getfixturevalue(request.param), TEXTS[request.param]


def test_value_zeroing_on_the_bundled_models(bundled):
    lm, text = bundled
    contributions = value_zeroing(lm, text)
    n = contributions.shape[-1]
    assert contributions.shape == (lm.spec.n_layers, n, n)
    np.testing.assert_allclose(contributions.sum(-1), 1.0, atol=1e-5)
    if lm.spec.kind == "decoder":
        assert np.all(np.triu(contributions, k=1) == 0)
    own = np.mean([np.diag(layer).mean() for layer in contributions])  # how much of a token's change is its own value's
    assert 1.0 / n < own < 0.9


def test_attributions_and_their_faithfulness_on_the_bundled_models(bundled):
    lm, text = bundled
    attributions = {method: gradient_attribution(lm, text, method) for method in METHODS}
    target = attributions["integrated_gradients"].target
    if lm.spec.kind == "decoder":
        assert target.kind == "next_token" and target.token == "ĠBerlin"
    else:  # MiniLM's sentence embedding; position embeddings keep the zero baseline off the degenerate point
        assert target.kind == "sentence_embedding"
        meta = attributions["integrated_gradients"].meta
        assert meta["completeness"] < 0.02 * abs(meta["f_difference"])
    relevance = attributions["grad_attention"].relevance
    assert relevance.shape[0] == lm.spec.n_layers and np.all(attributions["grad_attention"].scores >= 0)
    result = faithfulness(lm, text, {method: a.scores for method, a in attributions.items()})
    assert list(result.table["method"]) == list(METHODS)
    assert set(result.curves["method"]) == {*METHODS, "random"}
    np.testing.assert_allclose(np.diag(result.spearman.to_numpy()), 1.0)
    assert result.table["comprehensiveness_random"].nunique() == 1  # one baseline shared by every method


IG_TEXTS = (
    "When Mary and John went to the store, John gave a drink to",
    "The mouse ran up the clock. The clock struck one, and the mouse ran",
    "In the story, the lion spared the mouse, and the mouse later freed the lion.",
)


@pytest.mark.parametrize("text", IG_TEXTS)
def test_integrated_gradients_add_up_by_default_on_the_bundled_models(bundled, text):
    """The default baseline and steps: Σ attributions within 5% of f(x) − f(x') (the issue's target), on each text."""
    lm, _ = bundled
    got = gradient_attribution(lm, text, "integrated_gradients")
    meta = got.meta
    gap = meta["f_input"] - meta["f_baseline"]
    assert abs(gap) > 0.1
    assert abs(float(got.scores.astype(np.float64).sum()) - gap) <= 0.05 * abs(gap)
    assert meta["adds_up"] and meta["steps"] <= 256
    assert "pad token" in meta["baseline"]
