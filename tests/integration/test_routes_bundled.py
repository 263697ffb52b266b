"""Routes on the bundled models: importances sum to 1, the graph's top heads matter more to SmolLM2's prediction
than its bottom heads when knocked out, and what a strong head writes."""

from __future__ import annotations

import numpy as np
import pytest

from attnscope.models.routes import decompose_text, head_writes, knockout_check, routes

pytestmark = pytest.mark.slow

PROMPTS = (
    "When Mary and John went to the store, John gave a drink to",
    "The capital of France is",
    "One, two, three, four, five,",
)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_smollm2_top_heads_move_the_prediction_more_than_bottom_heads(smollm2, prompt):
    check = knockout_check(smollm2, prompt, k=5)
    assert check.top_change > 3 * check.bottom_change, (check.top, check.top_change, check.bottom_change)


def test_importances_sum_to_one_on_both_bundled_models(smollm2, minilm):
    for lm, text in ((smollm2, PROMPTS[1]), (minilm, "The mouse ran up the clock.")):
        full = routes(lm, text, threshold=0.0)
        np.testing.assert_allclose(full.incoming_sums().to_numpy(), 1.0, atol=1e-4)
        assert full.meta["layout"] == ("Pre-LN" if lm is smollm2 else "Post-LN")


def test_the_head_that_moves_paris_promotes_it(smollm2):
    """The graph's strongest head at the last layers of "The capital of France is" writes " Paris" among its top tokens."""
    split = decompose_text(smollm2, PROMPTS[1])
    graph = routes(smollm2, PROMPTS[1], threshold=0.04)
    assert graph.meta["prediction"] == "ĠParis"
    promoted = set()
    for row in graph.head_scores().head(3).itertuples():
        writes = head_writes(smollm2, split, int(row.layer), int(row.head), k=10)
        promoted |= set(writes[writes["direction"] == "promotes"]["token"])
    assert "ĠParis" in promoted
