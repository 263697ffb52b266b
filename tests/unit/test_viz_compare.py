"""viz.compare and viz.figures: depth-normalised profiles, one colour scale, the CLI's figure views."""

from __future__ import annotations

import json

import altair as alt
import numpy as np
import pandas as pd
import pytest

from attnscope.viz.compare import depth, layer_profile, profile_chart, shared_domain
from attnscope.viz.figures import VIEWS


def test_depth_lines_up_models_of_any_depth():
    assert depth([0, 5], 6).tolist() == [0.0, 1.0] and depth([0, 29], 30).tolist() == [0.0, 1.0]
    assert depth(3, 7) == pytest.approx(0.5) and depth(0, 1) == 0.0


def test_profile_is_mean_over_heads():
    stats = pd.DataFrame(
        {"layer": [0, 0, 1, 1], "head": [0, 1, 0, 1], "entropy": [1.0, 3.0, 0.5, 0.5], "first_token_mass": [0.1, 0.3, 0.9, 0.7]}
    )
    profile = layer_profile(stats, "m", 2)
    ent = profile[profile["metric"] == "entropy"].set_index("layer")
    assert ent.loc[0, "value"] == 2.0 and ent.loc[0, "low"] == 1.0 and ent.loc[0, "high"] == 3.0
    assert ent.loc[1, "depth"] == 1.0
    spec = profile_chart(profile, "first_token_mass").to_dict()
    assert alt.LayerChart.from_dict(spec).to_dict() == spec
    with pytest.raises(ValueError, match="lack"):
        layer_profile(stats.drop(columns=["entropy"]), "m", 2)


def test_shared_domain_takes_the_larger_maximum():
    assert shared_domain(np.array([[0.2, 0.4]]), np.array([[0.9]])) == (0.0, pytest.approx(0.9))


@pytest.mark.parametrize("view", ["heatmap", "overview", "masking", "compare"])
def test_every_view_builds_from_records(view, tiny_factory):
    from attnscope.models import run

    decoder = run(tiny_factory("llama_gqa"), "one two three four five")
    encoder = run(tiny_factory("bert"), "one two three four five")
    chart, frame = VIEWS[view](encoder, 1, 1, other=decoder)
    spec = chart.to_dict()
    assert type(chart).from_dict(spec).to_dict() == spec
    assert len(frame) > 0
    if view == "heatmap":
        n = len(encoder.tokens[0])
        grid = frame.pivot(index="query_pos", columns="key_pos", values="weight").to_numpy()
        assert grid == pytest.approx(encoder.attention(1, 1), abs=1e-6)
        assert len(frame) == n * n
    if view == "overview":
        assert len(frame) == encoder.spec.n_layers * encoder.spec.n_heads
    if view == "masking":
        by_model = frame.groupby("model")["right_share"].mean()
        assert by_model[decoder.spec.name] == 0.0 and by_model[encoder.spec.name] > 0.1
    if view == "compare":
        assert set(frame["model"]) == {encoder.spec.name, decoder.spec.name}
        assert "entropy" in json.dumps(spec)
