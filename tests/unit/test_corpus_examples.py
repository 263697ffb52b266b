"""Top examples per head over a corpus: equal to a serial brute force (across batches, shards and a resume),
readable windows, the merge's exactness, the geometry sample against the record and scikit-learn's PCA."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from attnscope.analysis.examples import CRITERIA, criterion_scores, merge_top, parse_criteria, window_around
from attnscope.corpus import CorpusConfig, load_result, run_corpus
from attnscope.corpus.store import read_examples, read_shards
from attnscope.models import run
from tests import tiny
from tests.parity import corpus_examples_brute_force as brute_force

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "corpus" / "data" / "demo.txt"
TOP = 4


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "small.txt"
    path.write_text("\n".join(DEMO.read_text().splitlines()[:10]) + "\n")
    return path


@pytest.mark.parametrize("arch", ["bert", "llama_gqa"])
def test_examples_equal_a_serial_brute_force_across_shards_and_a_resume(arch, small_data, tmp_path):
    lm = tiny.build(arch)
    texts = small_data.read_text().splitlines()
    config = dict(
        model=lambda: lm, data=small_data, analysis="examples", criterion="all", top=TOP, max_batch=5, inline=True, progress=False
    )

    def stop(event):  # the first run dies after its first shard: the second run writes the other
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_corpus(CorpusConfig(out=tmp_path / "job", on_shard=stop, **config))
    assert not (tmp_path / "job" / "examples.parquet").exists()
    partial = read_examples(tmp_path / "job")  # what the browser shows while the job runs: the finished shards merged
    first = read_shards(tmp_path / "job").done
    assert len(first) == 5 and set(partial["text_id"]) <= first and len(partial)
    info = run_corpus(CorpusConfig(out=tmp_path / "job", **config))
    assert info["runs"] == 2 and info["shards"] == 2

    got = pd.read_parquet(tmp_path / "job" / "examples.parquet")
    expected = brute_force(lm, texts, TOP)
    keys = ["layer", "head", "criterion", "rank"]
    got, expected = got.sort_values(keys).reset_index(drop=True), expected.sort_values(keys).reset_index(drop=True)
    assert len(got) == len(expected) == lm.spec.n_layers * lm.spec.n_heads * len(CRITERIA) * TOP
    for column in ["layer", "head", "criterion", "rank", "text_id", "query_pos", "key_pos"]:
        assert got[column].tolist() == expected[column].tolist(), column
    np.testing.assert_allclose(got["score"], expected["score"], atol=2e-5)

    # windows hold the readable labels of the text, and point at the query and key
    for row in got.itertuples():
        labels = run(lm, [texts[row.text_id]]).token_labels(0)
        assert row.window[row.query_in_window] == labels[row.query_pos]
        assert row.window[row.key_in_window] == labels[row.key_pos]
        assert not any("Ġ" in t or "Ã" in t for t in row.window)

    # beside the heads statistics: the summary has every heads statistic plus max_weight and induction
    result = load_result(tmp_path / "job")
    assert {"entropy", "prev_token", "first_token_mass", "max_weight", "induction"} <= set(result.summary["statistic"])
    one = result.rows[(result.rows["text_id"] == 3) & (result.rows["layer"] == 1) & (result.rows["head"] == 2)].iloc[0]
    rec = run(lm, [texts[3]])
    a = rec.layer_attention(1, 0)[2].astype(np.float64)
    start = 1 if lm.spec.kind == "decoder" else 0
    assert one["max_weight"] == pytest.approx(np.mean([a[i, 1 : (i + 1 if start else None)].max() for i in range(start, len(a))]), abs=1e-5)


def test_merge_is_exact_for_any_partition():
    rng = np.random.default_rng(0)
    n = 400
    frame = pd.DataFrame(
        {
            "layer": rng.integers(0, 2, n),
            "head": rng.integers(0, 2, n),
            "criterion": rng.choice(["max-weight", "low-entropy"], n),
            "score": rng.choice([0.1, 0.5, 0.9], n),  # many ties: broken by text and query
            "text_id": rng.integers(0, 30, n),
            "segment": 0,
            "query_pos": rng.integers(0, 50, n),
            "key_pos": 0,
        }
    ).drop_duplicates(["layer", "head", "criterion", "text_id", "query_pos"])
    whole = merge_top(frame, 5)
    parts = [merge_top(frame.iloc[k::3], 5) for k in range(3)]
    merged = merge_top(pd.concat(parts).drop(columns="rank"), 5)
    pd.testing.assert_frame_equal(whole.reset_index(drop=True), merged.reset_index(drop=True), check_like=True)
    low = whole[whole["criterion"] == "low-entropy"].groupby(["layer", "head"])["score"]
    assert (low.apply(lambda s: s.is_monotonic_increasing)).all()  # lowest entropy first


def test_criterion_scores_on_a_hand_made_map():
    a = np.array(
        [
            [1.0, 0.0, 0.0, 0.0],
            [0.5, 0.5, 0.0, 0.0],
            [0.1, 0.8, 0.1, 0.0],
            [0.1, 0.2, 0.3, 0.4],
        ]
    )[None]
    ids = np.array([7, 8, 7, 9])  # token 7 repeats at 2: induction targets the token after 0, i.e. 1
    score, key = criterion_scores(a, ids, "induction", causal=True)
    assert np.isnan(score[0, [0, 1, 3]]).all() and score[0, 2] == pytest.approx(0.8) and key[0, 2] == 1
    score, key = criterion_scores(a, ids, "max-weight", causal=True)
    assert np.isnan(score[0, 0]) and score[0, 2] == pytest.approx(0.8) and key[0, 3] == 3
    score, _ = criterion_scores(a, ids, "low-entropy", causal=True)
    assert np.isnan(score[0, 0]) and score[0, 1] == pytest.approx(math.log(2))
    score, key = criterion_scores(a, ids, "previous-token", causal=True)
    assert score[0, 3] == pytest.approx(0.3) and key[0, 3] == 2


def test_window_joins_far_spans_with_a_gap():
    labels = [f"t{k}" for k in range(60)]
    window, q, k = window_around(labels, 50, 3, width=2)
    assert window == ["t1", "t2", "t3", "t4", "t5", "…", "t48", "t49", "t50", "t51", "t52"]
    assert window[q] == "t50" and window[k] == "t3"
    window, q, k = window_around(labels, 6, 3, width=2)
    assert window == [f"t{k}" for k in range(1, 9)] and window[q] == "t6"


def test_parse_criteria():
    assert parse_criteria(None) == ["max-weight"] and parse_criteria("all") == list(CRITERIA)
    with pytest.raises(ValueError, match="--criterion 'bogus'"):
        parse_criteria("bogus")


def test_geometry_sample_is_the_recorded_q_and_k_and_its_pca_matches_sklearn(small_data, tmp_path):
    from sklearn.decomposition import PCA

    lm = tiny.build("llama_gqa")
    run_corpus(
        CorpusConfig(model=lambda: lm, out=tmp_path, data=small_data, analysis="geometry", layer=1, head=3, inline=True, progress=False)
    )
    points = pd.read_parquet(tmp_path / "geometry.parquet")
    result = load_result(tmp_path)
    text = small_data.read_text().splitlines()[2]
    rec = run(lm, [text])
    record = rec.layer_record(1)
    row = result.rows[(result.rows["text_id"] == 2) & (result.rows["position"] == 4)]
    q = row[row["role"] == "query"]["vector"].iloc[0]
    k = row[row["role"] == "key"]["vector"].iloc[0]
    np.testing.assert_allclose(q, record.query[0, 3, 4].numpy(), atol=1e-5)
    np.testing.assert_allclose(k, record.key[0, 3 // lm.spec.kv_group, 4].numpy(), atol=1e-5)
    assert set(points["token_class"]) >= {"first token", "word", "punctuation"}
    assert (points.loc[points["position"] == 0, "token_class"] == "first token").all()
    ordered = result.rows.sort_values(["text_id", "segment", "position", "role"], kind="stable")
    reference = np.abs(PCA(2).fit_transform(np.stack(ordered["vector"].to_numpy()).astype(np.float64)))
    np.testing.assert_allclose(np.abs(points[["pc1", "pc2"]].to_numpy()), reference, atol=1e-6)
