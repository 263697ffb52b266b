"""analysis.masks and viz.masking: mask matrices, why a cell is masked, attention to the right."""

from __future__ import annotations

import altair as alt
import numpy as np
import pytest
import torch

from attnscope.analysis.masks import MASK_CATEGORIES, allowed_matrix, mask_categories, recorded_allowed, right_share, right_share_per_query
from attnscope.viz.masking import mask_chart, mask_frame, right_share_chart, right_share_frame


def test_allowed_matrices():
    assert allowed_matrix("bidirectional", 3).all()
    causal = allowed_matrix("causal", 4)
    assert causal.tolist() == np.tri(4, dtype=bool).tolist()
    padded = allowed_matrix("bidirectional", 4, attention_mask=[1, 1, 1, 0])
    assert not padded[:, 3].any() and padded[:, :3].all()
    left = allowed_matrix("causal", 4, attention_mask=[0, 1, 1, 1])
    assert left[3].tolist() == [False, True, True, True] and left[1].tolist() == [False, True, False, False]
    with pytest.raises(ValueError, match="causal"):
        allowed_matrix("sideways", 3)


def test_categories_name_the_reason():
    allowed = allowed_matrix("causal", 4, attention_mask=[1, 1, 1, 0])
    cats = mask_categories(allowed, [1, 1, 1, 0])
    assert cats[0, 0] == 0 and cats[0, 2] == 1  # future key
    assert cats[1, 3] == 3 or cats[3, 0] == 3
    assert (cats[3] == 3).all()  # padding query row
    assert cats[2, 3] == 2  # padding key wins over "future"
    assert MASK_CATEGORIES[int(cats[0, 2])].startswith("masked: future")


def test_recorded_allowed_reads_every_form():
    assert recorded_allowed("causal", 0, 3).tolist() == np.tri(3, dtype=bool).tolist()
    assert recorded_allowed("full", 0, 2).all()
    mask = torch.ones(2, 1, 3, 3, dtype=torch.bool)
    mask[1, 0, :, 2] = False
    assert recorded_allowed(mask, 1, 3)[:, 2].tolist() == [False] * 3 and recorded_allowed(mask, 0, 3).all()


def test_right_share_by_hand():
    uniform = np.full((4, 4), 0.25)
    assert right_share_per_query(uniform).tolist() == pytest.approx([0.75, 0.5, 0.25, 0.0])
    assert float(right_share(uniform)) == pytest.approx(0.5)  # mean of 0.75, 0.5, 0.25
    causal = np.tri(4) / np.arange(1, 5)[:, None]
    assert float(right_share(causal)) == 0.0
    stacked = right_share(np.stack([uniform, causal]))
    assert stacked.shape == (2,) and stacked[0] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="square"):
        right_share(np.ones((2, 3)))


def test_right_share_on_tiny_models(tiny_factory):
    from attnscope.models import run

    shares = {}
    for arch in ("bert", "gpt2"):
        rec = run(tiny_factory(arch), "a b c d e f g")
        spec = rec.spec
        shares[arch] = np.array([[right_share(rec.attention(l, h)) for h in range(spec.n_heads)] for l in range(spec.n_layers)])
    assert (shares["gpt2"] == 0).all()  # causal: exactly nothing to the right
    assert shares["bert"].mean() > 0.2  # random-init bidirectional heads spread roughly evenly


def test_charts_round_trip_and_carry_values():
    tokens = ["a", "b", "c"]
    frame = mask_frame(mask_categories(allowed_matrix("causal", 3)), tokens)
    assert frame.set_index(["query_pos", "key_pos"]).loc[(0, 2), "added"] == "large negative (dtype min)"
    spec = mask_chart(frame).to_dict()
    assert alt.Chart.from_dict(spec).to_dict() == spec
    shares = right_share_frame(np.array([[0.0, 0.0], [0.1, 0.3]]), "m", n_layers=2)
    assert shares["right_share"].tolist() == pytest.approx([0.0, 0.2]) and shares["depth"].tolist() == [0.0, 1.0]
    spec = right_share_chart(shares).to_dict()
    assert alt.LayerChart.from_dict(spec).to_dict() == spec


def test_long_masks_aggregate_into_majority_blocks():
    n = 300
    frame = mask_frame(mask_categories(allowed_matrix("causal", n)), [f"t{i}" for i in range(n)], max_cells=100 * 100)
    assert frame.attrs["block"] == 3 and len(frame) == 100 * 100
    cells = frame.set_index(["query_pos", "key_pos"])["category"]
    assert cells[(30, 0)] == "visible" and cells[(0, 30)] == "masked: future key (causal)"
    assert cells[(3, 3)] == "visible"  # 6 of the 9 cells on a diagonal block are visible


@pytest.mark.parametrize("arch", ["bert", "llama_gqa"])
def test_streamed_right_shares_equal_the_per_map_definition(arch):
    """rec.right_shares (streamed, no full maps; 0 without computation under a causal mask) equals
    analysis.masks.right_share over every head's full map, padded batches included."""
    from attnscope.analysis.masks import right_share
    from attnscope.models import run
    from tests import tiny

    lm = tiny.build(arch)
    rec = run(lm, ["The mouse ran under the old table.", "A cat."], padding_side="left")
    for batch in (0, 1):
        expected = np.array(
            [[float(right_share(rec.attention(l, h, batch=batch))) for h in range(lm.spec.n_heads)] for l in range(lm.spec.n_layers)]
        )
        np.testing.assert_allclose(rec.right_shares(batch), expected, atol=1e-6)
    if arch == "bert":
        assert rec.right_shares(0).min() > 0.1
