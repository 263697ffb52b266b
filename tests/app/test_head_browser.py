"""The head browser on the Heads page: the values on screen are the result's parquet files; filters; an example
opens on the Attention page with its text, model, layer and head; a running job's shards show before it ends."""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from attnscope.corpus import CorpusConfig, run_corpus
from tests.app import vega

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
APP = str(ROOT / "app.py")
DEMO = ROOT / "corpus" / "data" / "demo.txt"


@pytest.fixture(scope="module")
def result(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("browser")
    data = base / "texts.txt"
    data.write_text("\n".join(DEMO.read_text().splitlines()[:12]) + "\n")
    run_corpus(
        CorpusConfig(
            model="minilm",
            out=base / "ex",
            data=data,
            analysis="examples",
            criterion="all",
            top=3,
            max_batch=6,
            inline=True,
            progress=False,
        )
    )
    return base / "ex"


def opened_result(result) -> AppTest:
    """The Heads page with the corpus result at ``result`` opened in the browser."""
    at = AppTest.from_file(APP, default_timeout=300)
    at.run()
    at.switch_page("ui/heads.py").run()
    at.sidebar.radio(key="heads_source").set_value("Corpus result").run()
    at.sidebar.text_input(key="heads_corpus_dir").set_value(str(result)).run()
    return at


@pytest.fixture(scope="module")
def page(result):
    return opened_result(result)


def test_card_values_equal_the_parquet(page, result):
    at = page
    assert not at.exception and not at.error
    at.selectbox(key="browser_criterion").set_value("previous-token").run()
    at.number_input(key="browser_layer").set_value(2).run()
    at.number_input(key="browser_head").set_value(5).run()
    assert not at.exception
    summary = pd.read_parquet(result / "summary.parquet")
    mine = summary[(summary["layer"] == 2) & (summary["head"] == 5)].set_index("statistic")
    shown = at.dataframe[0].value.set_index("statistic")
    np.testing.assert_allclose(shown.loc[mine.index, "mean"], mine["mean"].round(4))
    np.testing.assert_allclose(shown.loc[mine.index, "ci_high"], mine["ci_high"].round(4))
    examples = pd.read_parquet(result / "examples.parquet")
    top = examples[(examples["layer"] == 2) & (examples["head"] == 5) & (examples["criterion"] == "previous-token")].sort_values("rank")
    lines = [m.value for m in at.markdown if m.value.startswith(("1. ", "2. ", "3. "))]
    assert len(lines) == len(top) == 3
    for line, row in zip(lines, top.itertuples()):
        assert f"weight {row.score:.3f}" in line
        assert f'title="query">{html.escape(row.window[row.query_in_window])}</span>' in line
        assert f'title="attended key">{html.escape(row.window[row.key_in_window])}</span>' in line
    hist = vega.chart(at, title="layer 2 head 5:")["frames"][0]
    rows = pd.concat([pd.read_parquet(p) for p in sorted((result / "shards").glob("*.parquet"))])
    assert len(hist) == int(((rows["layer"] == 2) & (rows["head"] == 5)).sum())  # one value per text


def test_filter_keeps_the_heads_the_rule_names(page, result):
    at = page
    at.selectbox(key="browser_filter").set_value("previous-token ≥").run()
    at.number_input(key="browser_threshold").set_value(0.3).run()
    grid = vega.chart(at, key="browser_grid")["frames"][0]
    summary = pd.read_parquet(result / "summary.parquet")
    prev = summary[summary["statistic"] == "prev_token"]
    expected = set(zip(prev.loc[prev["mean"] >= 0.3, "layer"], prev.loc[prev["mean"] >= 0.3, "head"]))
    assert 0 < len(expected) < 72
    assert set(zip(grid.loc[grid["shown"], "layer"], grid.loc[grid["shown"], "head"])) == expected
    at.selectbox(key="browser_filter").set_value("all heads").run()


def test_an_example_opens_on_the_attention_page(result):
    at = opened_result(result)
    at.number_input(key="browser_layer").set_value(1).run()
    at.number_input(key="browser_head").set_value(3).run()
    at.button(key="browser_open_1").click().run()
    assert not at.exception
    examples = pd.read_parquet(result / "examples.parquet")
    first = (
        examples[(examples["layer"] == 1) & (examples["head"] == 3) & (examples["criterion"] == "max-weight")].sort_values("rank").iloc[0]
    )
    texts = pd.read_parquet(result / "texts.parquet").set_index("text_id")["text"]
    assert at.title[0].value == "Attention"
    assert at.slider(key="layer").value == 1 and at.slider(key="head").value == 3
    assert at.sidebar.text_area(key="text").value == texts[first["text_id"]]


def test_a_running_job_shows_its_finished_shards(result, tmp_path):
    import shutil

    partial = tmp_path / "running"
    shutil.copytree(result, partial)
    (partial / "summary.parquet").unlink()
    (partial / "examples.parquet").unlink()
    first = sorted((partial / "shards").glob("*.parquet"))[0]
    for other in sorted((partial / "shards").glob("*.parquet"))[1:]:
        other.unlink()
    at = AppTest.from_file(APP, default_timeout=300)
    at.run()
    at.switch_page("ui/heads.py").run()
    at.sidebar.radio(key="heads_source").set_value("Corpus result").run()
    at.sidebar.text_input(key="heads_corpus_dir").set_value(str(partial)).run()
    assert not at.exception and not at.error
    assert any("still running: 6 of 12 texts" in w.value for w in at.warning)
    shard_ids = set(pd.read_parquet(first)["text_id"])
    lines = [m.value for m in at.markdown if "text " in m.value and "→ key" in m.value]
    assert lines and all(any(f"text {t}, query" in line for t in shard_ids) for line in lines)
