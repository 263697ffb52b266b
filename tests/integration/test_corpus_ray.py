"""Corpus jobs on a real local Ray: equal to a single-process loop, a worker killed mid-run, a resumed job."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from attnscope.analysis.corpus import repeat_induction
from attnscope.analysis.drift import find_word
from attnscope.corpus import CorpusConfig, load_result, run_corpus
from attnscope.models import run
from tests import tiny
from tests.helpers import local_ray

ray = pytest.importorskip("ray")
pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "corpus" / "data" / "demo.txt"
BERT = functools.partial(tiny.build, "bert")  # one object, so every job of this module reuses one actor pool
N_GOOD = 30
LONG = "word " * 300  # > 128 positions of the tiny models


@pytest.fixture(scope="module")
def ray_session():
    with local_ray():
        yield


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    lines = DEMO.read_text().splitlines()[:N_GOOD]
    lines[5:5] = ["", "   "]  # ids 5 and 6: empty
    lines.append(LONG.strip())  # the last id: too long
    path = tmp_path_factory.mktemp("data") / "texts.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def _texts(data: Path) -> dict[int, str]:
    return {i: t for i, t in enumerate(data.read_text().splitlines()) if t.strip() and len(t) < 1000}


def _job(data, out, **kwargs):
    return run_corpus(CorpusConfig(model=kwargs.pop("model", BERT), out=out, data=data, max_batch=4, progress=False, **kwargs))


@pytest.fixture(scope="module")
def clean(ray_session, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("clean")
    info = _job(data, out)
    return info, load_result(out)


def test_ray_rows_equal_a_single_process_loop(clean, data):
    info, result = clean
    lm = tiny.build("bert")
    texts = _texts(data)
    assert sorted(result.rows["text_id"].unique()) == sorted(texts)
    for text_id, text in texts.items():
        expected = run(lm, [text]).head_stats()
        got = result.rows[result.rows["text_id"] == text_id].sort_values(["layer", "head"])
        for column in ("entropy", "first_token_mass", "prev_token", "mean_distance"):
            np.testing.assert_allclose(got[column].to_numpy(), expected[column].to_numpy(), atol=2e-5, err_msg=f"{text_id} {column}")
    assert info["workers"] == 2 and info["worker_deaths"] == 0


def test_summary_equals_pandas_mean_std_and_t_interval(clean):
    _, result = clean
    per_head = result.rows.groupby(["layer", "head"])["entropy"]
    mean, std, n = per_head.mean(), per_head.std(ddof=1), per_head.count()
    got = result.summary[result.summary["statistic"] == "entropy"].set_index(["layer", "head"]).sort_index()
    np.testing.assert_allclose(got["mean"], mean.sort_index(), rtol=1e-12)
    np.testing.assert_allclose(got["std"], std.sort_index(), rtol=1e-12)
    half = stats.t.ppf(0.975, n - 1) * std / np.sqrt(n)
    np.testing.assert_allclose(got["ci_high"], (mean + half).sort_index(), rtol=1e-12)
    assert (got["n"] == N_GOOD).all()


def test_bad_rows_are_reported_and_every_row_counted_once(clean, data):
    info, result = clean
    bad = result.bad.set_index("text_id")["reason"]
    last = len(data.read_text().splitlines()) - 1
    assert bad[5] == "empty" and bad[6] == "empty"
    assert bad[last].startswith("too long: ") and "> cap 128" in bad[last]
    assert info["every_row_accounted"] and info["rows_in_file"] == N_GOOD + 3
    assert info["texts_with_results"] + info["bad_rows"] == info["rows_in_file"]
    assert not result.rows.duplicated(["text_id", "layer", "head"]).any()


def test_a_worker_killed_mid_run_loses_nothing(ray_session, data, clean, tmp_path):
    info = _job(data, tmp_path, fault_exit_at_batch=2)
    assert info["worker_deaths"] == 1 and (tmp_path / ".fault-2").exists()
    result = load_result(tmp_path)
    assert info["every_row_accounted"] and result.rows.groupby("text_id").size().eq(result.rows.groupby("text_id").size().iloc[0]).all()
    pd.testing.assert_frame_equal(result.summary, clean[1].summary, check_exact=False, atol=2e-5)


def test_an_interrupted_job_resumes_to_the_same_summary(ray_session, data, clean, tmp_path):
    def stop_after_two(event):
        if len(list((tmp_path / "shards").glob("*.parquet"))) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _job(data, tmp_path, on_shard=stop_after_two)
    assert len(list((tmp_path / "shards").glob("*.parquet"))) == 2 and not (tmp_path / "summary.parquet").exists()
    info = _job(data, tmp_path)
    assert info["texts_from_earlier_runs"] == 8 and info["texts_this_run"] == N_GOOD - 8 and info["runs"] == 2
    result = load_result(tmp_path)
    assert result.rows["text_id"].nunique() == N_GOOD
    pd.testing.assert_frame_equal(result.summary, clean[1].summary, check_exact=False, atol=2e-5)


def test_split_long_texts_instead_of_refusing(ray_session, data, tmp_path):
    info = _job(data, tmp_path, too_long="split")
    result = load_result(tmp_path)
    last = len(data.read_text().splitlines()) - 1
    segments = sorted(result.rows.loc[result.rows["text_id"] == last, "segment"].unique())
    assert len(segments) >= 3 and segments == list(range(len(segments)))
    assert info["bad_rows"] == 2 and (result.rows["n_tokens"] <= 128).all()


def test_drift_job_finds_every_occurrence(ray_session, data, tmp_path):
    lm = tiny.build("bert")
    info = _job(data, tmp_path, analysis="drift", word="mouse")
    result = load_result(tmp_path)
    texts = _texts(data)
    expected = sum(len(find_word(t, "mouse")) for t in texts.values())
    n_hidden = lm.spec.n_layers + 1
    assert expected > 5 and len(result.rows) == expected * n_hidden
    text_id = int(result.rows["text_id"].iloc[0])
    rec = run(lm, [texts[text_id]])
    row = result.rows[(result.rows["text_id"] == text_id) & (result.rows["occurrence"] == 0) & (result.rows["layer"] == n_hidden - 1)].iloc[
        0
    ]
    enc = lm.tokenizer(texts[text_id], return_offsets_mapping=True)
    span = find_word(texts[text_id], "mouse")[0]
    pieces = [k for k, (s, e) in enumerate(enc["offset_mapping"]) if e > s and e > span[0] and s < span[1]]
    np.testing.assert_allclose(row["vector"], rec.hidden(n_hidden - 1)[pieces].mean(0), atol=2e-5)
    assert list(result.summary["layer"]) == list(range(n_hidden)) and (result.summary["n_occurrences"] == expected).all()
    assert info["texts_with_results"] == len({i for i, t in texts.items() if find_word(t, "mouse")})


def test_induction_job_matches_maps_of_a_plain_run(ray_session, data, tmp_path):
    lm = tiny.build("bert")  # the formula is the same for any model; reusing the module's workers keeps the test short
    _job(data, tmp_path, analysis="induction")
    result = load_result(tmp_path)
    texts = _texts(data)
    with_repeats = []
    for text_id, text in texts.items():
        rec = run(lm, [text])
        ids = rec.input_ids[0][rec.real_index(0)]
        maps = np.stack([rec.attention(1, h) for h in range(lm.spec.n_heads)])
        expected = repeat_induction(maps, ids)
        got = result.rows[(result.rows["text_id"] == text_id) & (result.rows["layer"] == 1)].sort_values("head")["induction"].to_numpy()
        np.testing.assert_allclose(got, expected, atol=2e-5, equal_nan=True)
        with_repeats.append(not np.isnan(expected).all())
    assert any(with_repeats)
    assert (tmp_path / "probe.parquet").exists()
    n_induction = result.summary.loc[result.summary["statistic"] == "induction", "n"]
    assert (n_induction == sum(with_repeats)).all()
