"""Head analysis on the bundled models: known heads of MiniLM and SmolLM2, and the CLI table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from attnscope import cli
from attnscope.analysis.head_types import classify_heads
from attnscope.models import run
from attnscope.models.aggregates import group_similarity_table
from attnscope.models.probes import induction_scores

pytestmark = pytest.mark.slow

TEXT = (
    "The mouse ate the cheese, then the cat chased the mouse around the kitchen. "
    "Researchers want to know which attention heads do what, and why."
)


def test_minilm_has_a_previous_token_head_early(minilm):
    rec = run(minilm, TEXT)
    table = classify_heads(rec.head_stats(layers=[0, 1]), kind="encoder", n_tokens=len(rec.tokens[0]))
    prev = table[table["is_previous_token"]]
    assert len(prev) >= 1 and prev["prev_token"].max() > 0.9


def test_smollm2_induction_heads_and_sink_depth(smollm2, tmp_path):
    out = tmp_path / "heads.csv"
    assert cli.main(["heads", "--model", "smollm2", "--text", TEXT, "--probe", "induction", "--out", str(out)]) == 0
    table = pd.read_csv(out)
    assert len(table) == 30 * 9 and {"induction", "types", "primary_type"} <= set(table.columns)
    assert (table["induction"] > 0.5).sum() >= 2
    top = table.loc[table["induction"].idxmax()]
    assert "induction" in top["types"]
    assert 2 <= top["layer"] <= 27  # induction needs a previous-token head in an earlier layer
    per_layer = table.groupby("layer")["first_token_mass"].mean()
    assert per_layer.loc[[0, 1]].max() < per_layer.loc[2:].mean()


def test_smollm2_probe_is_deterministic_per_seed(smollm2):
    a = induction_scores(smollm2, seq_len=16, batch=1, seed=7)
    b = induction_scores(smollm2, seq_len=16, batch=1, seed=7)
    np.testing.assert_array_equal(a["induction"].to_numpy(), b["induction"].to_numpy())


def test_smollm2_kv_groups(smollm2):
    rec = run(smollm2, TEXT)
    groups = group_similarity_table(rec, layers=[0, 15, 29])
    assert groups[["within_group", "across_groups"]].notna().all().all()
    assert ((groups[["within_group", "across_groups"]] > 0) & (groups[["within_group", "across_groups"]] <= 1)).all().all()
    # query heads that share keys tend to attend alike: on average over these layers the gap is positive
    assert groups["gap"].mean() > 0
