"""One cached model serving many sessions: 8 concurrent runs equal their sequential results."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from models import run

pytestmark = pytest.mark.slow

TEXTS = [
    "The mouse ate the cheese.",
    "Click the mouse twice to open the file.",
    "A cat sat on the warm mat by the door.",
    "Transformers attend to every token.",
    "Padding must not change the result.",
    "Attention heads specialise across layers in surprising ways.",
    "She moved the mouse and the cursor followed.",
    "Short one.",
]


@pytest.mark.parametrize("model", ["minilm", "smollm2"])
def test_eight_concurrent_runs_equal_sequential(request, model):
    lm = request.getfixturevalue(model)
    sequential = [run(lm, t) for t in TEXTS]
    last = lm.spec.n_layers - 1
    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit(run, lm, t) for t in TEXTS]
        concurrent = [f.result(timeout=300) for f in futures]  # bounded: a deadlock fails, it does not hang
    for seq, con in zip(sequential, concurrent):
        assert con.tokens == seq.tokens and len(con.layers) == lm.spec.n_layers
        np.testing.assert_allclose(con.attention(last, 1), seq.attention(last, 1), atol=1e-6)
        np.testing.assert_allclose(con.hidden(lm.spec.n_layers), seq.hidden(lm.spec.n_layers), atol=1e-4, rtol=1e-5)


def test_sessions_padding_on_different_sides_at_once_get_their_own_padding(minilm):
    """Padding side is passed per call, never set on the shared tokenizer: left- and right-padded batches
    run at the same moment each come back padded on their own side."""
    batch = [TEXTS[1], TEXTS[7]]  # different lengths: the short one is padded
    side_of = {}
    for side in ("left", "right"):
        rec = run(minilm, batch, padding_side=side)
        side_of[side] = rec.attention_mask[1].copy()
    assert side_of["left"][0] == 0 and side_of["right"][-1] == 0  # the two sides differ
    sides = ["left", "right"] * 12
    before = minilm.tokenizer.padding_side
    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit(run, minilm, batch, side) for side in sides]
        records = [f.result(timeout=300) for f in futures]
    for side, rec in zip(sides, records):
        assert rec.padding_side == side
        assert np.array_equal(rec.attention_mask[1], side_of[side])
    assert minilm.tokenizer.padding_side == before  # nothing mutated the shared tokenizer
