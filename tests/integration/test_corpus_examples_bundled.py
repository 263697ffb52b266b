"""Top examples on a bundled model: MiniLM's examples equal a serial brute force, and Ray's equal the in-process job."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from attnscope.corpus import CorpusConfig, run_corpus
from attnscope.corpus import job as corpus_job
from tests.unit.test_corpus_examples import brute_force

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
    ray = pytest.importorskip("ray")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=128 * 1024**2,
        log_to_driver=False,
        logging_level="ERROR",
        runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}},
    )
    try:
        run_corpus(
            CorpusConfig(
                model="minilm", out=tmp_path, data=data, analysis="examples", criterion="all", top=3, max_batch=3, workers=2, progress=False
            )
        )
    finally:
        corpus_job._POOLS.clear()
        ray.shutdown()
    got = pd.read_parquet(tmp_path / "examples.parquet").sort_values(KEYS).reset_index(drop=True)
    pd.testing.assert_frame_equal(got.drop(columns="score"), inline_result.drop(columns="score"))
    np.testing.assert_allclose(got["score"], inline_result["score"], atol=1e-5)
