"""Corpus scale without Ray: aggregation, reading files, planning batches, shards, resume, CLI bad input."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from attnscope.analysis.corpus import aggregate, cluster_occurrences, compare_to_corpus, repeat_induction, self_similarity, t_interval
from attnscope.analysis.drift import cosine_matrix
from attnscope.corpus import CorpusConfig, load_result, read_corpus, run_corpus
from attnscope.corpus.plan import make_plan, split_text
from attnscope.corpus.store import read_shards, write_shard
from tests import tiny
from tests.helpers import free_port

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "corpus" / "data" / "demo.txt"


# -- aggregation -----------------------------------------------------------------------------------
def _per_text(seed: int = 0, n_texts: int = 7) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = [
        {
            "text_id": t,
            "segment": 0,
            "n_tokens": 10,
            "layer": l,
            "head": h,
            "kv_head": h,
            "entropy": rng.normal(2, 0.5),
            "prev_token": rng.uniform(),
        }
        for t in range(n_texts)
        for l in range(2)
        for h in range(3)
    ]
    return pd.DataFrame(rows)


def test_aggregate_equals_pandas_and_the_t_interval():
    per_text = _per_text()
    out = aggregate(per_text).set_index(["layer", "head", "statistic"])
    assert set(out.index.get_level_values("statistic")) == {"entropy", "prev_token"}  # ids are not statistics
    group = per_text.groupby(["layer", "head"])["prev_token"]
    got = out.xs("prev_token", level="statistic")
    np.testing.assert_allclose(got["mean"], group.mean(), rtol=1e-12)
    np.testing.assert_allclose(got["std"], group.std(ddof=1), rtol=1e-12)
    half = stats.t.ppf(0.975, 6) * group.std(ddof=1) / np.sqrt(7)
    np.testing.assert_allclose(got["ci_low"], group.mean() - half, rtol=1e-12)
    assert (got["n"] == 7).all()


def test_t_interval_known_values_and_small_n():
    low, high = t_interval(np.array([1.0, 5.0]), np.array([1.0, 2.0]), np.array([2, 1]))
    assert high[0] - 1.0 == pytest.approx(12.7062047 / np.sqrt(2), rel=1e-6)  # t(0.975, 1)
    assert np.isnan(low[1]) and np.isnan(high[1])  # one text: no interval


def test_nan_values_are_left_out_of_n():
    per_text = _per_text()
    per_text.loc[per_text["text_id"] == 0, "prev_token"] = np.nan
    out = aggregate(per_text)
    assert (out.loc[out["statistic"] == "prev_token", "n"] == 6).all()
    assert (out.loc[out["statistic"] == "entropy", "n"] == 7).all()


def test_compare_to_corpus_z_scores():
    per_text = _per_text()
    summary = aggregate(per_text)
    one = per_text[per_text["text_id"] == 3].drop(columns=["text_id", "segment", "n_tokens"])
    z = compare_to_corpus(one, summary)
    row = z[(z["layer"] == 1) & (z["head"] == 2) & (z["statistic"] == "entropy")].iloc[0]
    values = per_text[(per_text["layer"] == 1) & (per_text["head"] == 2)]["entropy"]
    assert row["z"] == pytest.approx((values.iloc[3] - values.mean()) / values.std(ddof=1))
    with pytest.raises(ValueError, match="different model"):
        compare_to_corpus(one.assign(layer=one["layer"] + 10), summary)


def test_repeat_induction_on_a_hand_made_map():
    ids = np.array([7, 8, 9, 7, 5])  # token 7 repeats at 3; the token after its first occurrence is 1
    w = np.full((2, 5, 5), 0.0)
    w[0, :, 0] = 1.0  # head 0: sink on token 0
    w[1, 3, 1] = 1.0  # head 1: query 3 attends to position 1 (after the earlier 7)
    w[1, [0, 1, 2, 4], 0] = 1.0
    np.testing.assert_allclose(repeat_induction(w, ids), [0.0, 1.0])
    assert np.isnan(repeat_induction(w, np.array([1, 2, 3, 4, 5]))).all()
    assert np.isnan(repeat_induction(w, np.array([1, 1, 2, 3, 4]))).all()  # j = i-1 only: no token after to look at


def test_self_similarity_equals_mean_pairwise_cosine():
    v = np.random.default_rng(1).normal(size=(9, 5))
    cos = cosine_matrix(v)
    a, b = np.triu_indices(9, k=1)
    assert self_similarity(v) == pytest.approx(cos[a, b].mean())


def test_kmeans_with_silhouette_finds_two_senses():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal([5, 0, 0], 0.3, size=(20, 3)), rng.normal([0, 5, 0], 0.3, size=(15, 3))])
    labels, k, silhouette, scores = cluster_occurrences(x)
    assert k == 2 and silhouette > 0.8 and set(scores) >= {2, 3}
    assert len(set(labels[:20])) == 1 and len(set(labels[20:])) == 1 and labels[0] != labels[-1]
    assert cluster_occurrences(np.ones((4, 3)))[1] == 1  # identical points: one cluster


# -- reading ---------------------------------------------------------------------------------------
def test_read_txt_lists_empty_lines(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("First text.\n\n   \nSecond text.\n")
    corpus = read_corpus(path)
    assert corpus.texts["text_id"].tolist() == [0, 3] and corpus.n_rows == 4
    assert [(b["text_id"], b["reason"]) for b in corpus.bad] == [(1, "empty"), (2, "empty")]


def test_read_jsonl_field_and_bad_lines(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"body": "A text."}\nnot json\n{"other": 1}\n{"body": 42}\n{"body": "Another."}\n')
    corpus = read_corpus(path, "body")
    assert corpus.texts["text"].tolist() == ["A text.", "Another."] and corpus.texts["text_id"].tolist() == [0, 4]
    assert [b["reason"] for b in corpus.bad] == ["not JSON", "no field 'body'", "not text (int)"]
    with pytest.raises(ValueError, match="no line has a field 'text'"):
        read_corpus(_write(tmp_path / "d.jsonl", '{"body": "x"}\n'))


def _write(path: Path, content: str) -> Path:
    path.write_text(content)
    return path


def test_read_csv_and_parquet_columns(tmp_path):
    frame = pd.DataFrame({"sentence": ["One.", None, "Three."], "n": [1, 2, 3]})
    frame.to_parquet(tmp_path / "c.parquet")
    corpus = read_corpus(tmp_path / "c.parquet", "sentence")
    assert corpus.texts["text_id"].tolist() == [0, 2] and corpus.bad[0]["reason"] == "missing (no value)"
    frame.to_csv(tmp_path / "c.csv", index=False)
    assert read_corpus(tmp_path / "c.csv", "sentence").texts["text"].tolist() == ["One.", "Three."]
    with pytest.raises(ValueError, match="no column 'text'; the file has columns sentence, n"):
        read_corpus(tmp_path / "c.csv")


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("missing.txt", None, "no such file"),
        ("empty.txt", "\n \n", "the corpus is empty"),
        ("c.docx", "x", "unknown format"),
        ("bad.parquet", "not parquet", "cannot read it"),
        ("latin.txt", b"caf\xe9\n", "not UTF-8"),
    ],
)
def test_read_bad_files(tmp_path, name, content, match):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(ValueError, match=match):
        read_corpus(path)


def test_demo_corpus_is_shipped_and_varied():
    corpus = read_corpus(DEMO)
    texts = corpus.texts["text"]
    assert len(texts) >= 250 and not corpus.bad and texts.is_unique
    assert texts.str.contains(r"\bmouse\b", case=False).sum() >= 100
    assert texts.str.contains("cat|owl|cheese|trap|nest|barn|tail|snake|hawk|fox").sum() >= 20
    assert texts.str.contains("click|cursor|keyboard|button|computer|laptop|screen|wireless|USB|scroll").sum() >= 30


# -- planning --------------------------------------------------------------------------------------
def test_plan_refuses_or_splits_long_texts_and_sizes_batches():
    tok = tiny.wordpiece_tokenizer()
    long_text = " ".join(f"word{i}" for i in range(200))
    texts = pd.DataFrame({"text_id": [0, 1, 2, 3], "text": ["Short one.", long_text, "A bit longer text here.", "Mid text."]})
    refused = make_plan(tok, texts, cap=64, too_long="refuse", fits=lambda b, n: True, max_batch=2)
    assert [b["text_id"] for b in refused.bad] == [1] and "> cap 64" in refused.bad[0]["reason"]
    assert [len(b) for b in refused.batches] == [2, 1] and sorted(i for b in refused.batches for i, _, _ in b) == [0, 2, 3]
    split = make_plan(tok, texts, cap=64, too_long="split", fits=lambda b, n: b * n <= 64 * 40, max_batch=40)
    segments = [item for batch in split.batches for item in batch if item[0] == 1]
    assert not split.bad and len(segments) >= 3 and [s for _, s, _ in segments] == list(range(len(segments)))
    assert all(len(tok(t)["input_ids"]) <= 64 for _, _, t in segments)
    assert " ".join(t for _, _, t in segments).split() == long_text.split()  # nothing lost at the cuts
    guarded = make_plan(tok, texts.drop(index=1), cap=64, too_long="refuse", fits=lambda b, n: b <= 1, max_batch=16)
    assert [len(b) for b in guarded.batches] == [1, 1, 1]


def test_split_text_keeps_every_word():
    tok = tiny.wordpiece_tokenizer()
    text = "The mouse ran. " * 50
    pieces = split_text(tok, text, 32)
    assert " ".join(pieces).split() == text.split() and max(len(tok(p)["input_ids"]) for p in pieces) <= 32


# -- shards, inline jobs and resume ----------------------------------------------------------------
def test_shards_count_each_text_once(tmp_path):
    (tmp_path / "shards").mkdir()
    rows = pd.DataFrame({"text_id": [1, 1, 2], "segment": 0, "layer": 0, "head": [0, 1, 0], "entropy": [0.1, 0.2, 0.3]})
    write_shard(tmp_path, "a", rows, [1, 2, 3], [{"text_id": 3, "segment": 0, "reason": "ValueError: x"}])
    write_shard(tmp_path, "b", rows[rows["text_id"] == 2], [2], [])  # a batch that ran twice
    shards = read_shards(tmp_path)
    assert shards.done == {1, 2, 3} and len(shards.rows) == 3 and shards.duplicates == 1
    assert shards.failed == [{"text_id": 3, "segment": 0, "reason": "ValueError: x"}]
    assert not list((tmp_path / "shards").glob(".*tmp"))  # written atomically


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "t.txt"
    path.write_text("\n".join(DEMO.read_text().splitlines()[:12]) + "\n")
    return path


def _inline(data, out, **kwargs):
    return run_corpus(
        CorpusConfig(model=lambda: tiny.build("bert"), out=out, data=data, max_batch=3, inline=True, progress=False, **kwargs)
    )


def test_inline_resume_gives_the_clean_summary(small_data, tmp_path):
    clean = _inline(small_data, tmp_path / "clean")

    def stop(event):
        if event["processed"] >= 6:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _inline(small_data, tmp_path / "resumed", on_shard=stop)
    info = _inline(small_data, tmp_path / "resumed")
    assert (info["texts_from_earlier_runs"], info["texts_this_run"], info["runs"]) == (6, 6, 2)
    assert clean["texts_with_results"] == info["texts_with_results"] == 12 and info["every_row_accounted"]
    pd.testing.assert_frame_equal(load_result(tmp_path / "clean").summary, load_result(tmp_path / "resumed").summary)


def test_a_different_job_in_the_same_dir_is_refused_and_kept(small_data, tmp_path):
    _inline(small_data, tmp_path)
    before = sorted(p.name for p in (tmp_path / "shards").iterdir())
    with pytest.raises(ValueError, match="holds results of a different job .*analysis"):
        _inline(small_data, tmp_path, analysis="induction")
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == before


# -- the CLI: bad input is one line, exit 2, nothing lost ------------------------------------------


def test_unreachable_address_keeps_earlier_shards(small_data, tmp_path):
    _inline(small_data, tmp_path)
    shards = sorted((tmp_path / "shards").iterdir())
    started = time.perf_counter()
    with pytest.raises(ValueError, match="no Ray cluster answers there"):
        run_corpus(
            CorpusConfig(
                model=lambda: tiny.build("bert"), out=tmp_path, data=small_data, address=f"127.0.0.1:{free_port()}", progress=False
            )
        )
    assert time.perf_counter() - started < 6
    assert sorted((tmp_path / "shards").iterdir()) == shards and (tmp_path / "summary.parquet").exists()


# -- Ray stays inside corpus/ ----------------------------------------------------------------------
def test_only_the_corpus_package_imports_ray():
    offenders = []
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in {".venv", "corpus", "tests", "bench", "build"} or "site-packages" in rel.parts:
            continue
        text = path.read_text()
        if "import ray" in text or "from ray" in text:
            offenders.append(str(rel))
    assert offenders == []


def test_public_surfaces_resolve():
    import attnscope.analysis.corpus
    import attnscope.viz.corpus
    from attnscope import corpus

    for module in (corpus, attnscope.analysis.corpus, attnscope.viz.corpus):
        assert module.__all__ and all(getattr(module, name, None) is not None for name in module.__all__), module.__name__
