"""Heads page, corpus mode: means with confidence intervals, this text against the corpus, drift clusters."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from attnscope.analysis.corpus import compare_to_corpus
from attnscope.corpus import CorpusConfig, run_corpus
from attnscope.corpus.compute import head_rows
from attnscope.models import run
from tests.app import vega

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
APP = str(ROOT / "app.py")
DEMO = ROOT / "corpus" / "data" / "demo.txt"


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Two small result directories of MiniLM, written in-process (the Ray path is tested in tests/integration)."""
    lines = DEMO.read_text().splitlines()
    base = tmp_path_factory.mktemp("corpus")
    data = base / "texts.txt"
    data.write_text("\n".join(lines[:24]) + "\n")
    mouse = base / "mouse.jsonl"
    import json

    mouse.write_text("\n".join(json.dumps({"body": t}) for t in [t for t in lines if "mouse" in t][:40]) + "\n")
    run_corpus(CorpusConfig(model="minilm", out=base / "heads", data=data, inline=True, progress=False))
    run_corpus(
        CorpusConfig(
            model="minilm", out=base / "drift", data=mouse, text_field="body", analysis="drift", word="mouse", inline=True, progress=False
        )
    )
    return base


@pytest.fixture(scope="module")
def page():
    at = AppTest.from_file(APP, default_timeout=300)
    at.run()
    at.switch_page("ui/heads.py").run()
    at.sidebar.radio(key="heads_source").set_value("Corpus result").run()
    return at


def test_corpus_means_with_interval_tooltips(page, results):
    at = page
    at.sidebar.text_input(key="heads_corpus_dir").set_value(str(results / "heads")).run()
    assert not at.exception and not at.error
    from attnscope.corpus import load_result

    summary = load_result(results / "heads").summary
    chart = vega.chart(at, title="entropy (nats): mean over")
    data = vega.frame(chart, {"layer", "head", "mean", "ci_low", "ci_high", "n"})
    expected = summary[summary["statistic"] == "entropy"].set_index(["layer", "head"]).sort_index()
    got = data.set_index(["layer", "head"]).sort_index()
    np.testing.assert_allclose(got["mean"], expected["mean"], rtol=1e-9)
    assert (got["n"] == 24).all() and (got["ci_low"] < got["mean"]).all() and (got["mean"] < got["ci_high"]).all()
    fields = {t["field"] for t in chart["spec"]["encoding"]["tooltip"]}
    assert {"mean", "std", "ci_low", "ci_high", "n"} <= fields
    assert "24 texts" in chart["spec"]["title"]


def test_this_text_vs_corpus_in_standard_deviations(page, results, minilm):
    at = page
    at.sidebar.text_input(key="heads_corpus_dir").set_value(str(results / "heads")).run()
    text = at.sidebar.text_area(key="text").value
    at.selectbox(key="corpus_z_stat").set_value("prev_token").run()
    assert not at.exception
    from attnscope.corpus import load_result

    summary = load_result(results / "heads").summary
    table = head_rows(run(minilm, [text]), 0, 0, 0, induction=False)
    expected = compare_to_corpus(table, summary)
    expected = expected[expected["statistic"] == "prev_token"].set_index(["layer", "head"]).sort_index()
    got = (
        vega.frame(vega.chart(at, title="this text vs the corpus"), {"layer", "head", "z", "value"})
        .set_index(["layer", "head"])
        .sort_index()
    )
    np.testing.assert_allclose(got["z"], expected["z"], atol=1e-4)
    np.testing.assert_allclose(got["z"], (got["value"] - got["mean"]) / got["std"], rtol=1e-6)
    assert np.abs(got["z"]).max() > 1  # some head is unusual on this text


def test_drift_occurrences_clustered_with_texts_on_hover(page, results):
    at = page
    at.sidebar.text_input(key="heads_corpus_dir").set_value(str(results / "drift")).run()
    assert not at.exception and not at.error
    chart = vega.chart(at, title="occurrences of 'mouse'")
    data = vega.frame(chart, {"pc1", "pc2", "cluster", "text"})
    from attnscope.corpus import load_result

    result = load_result(results / "drift")
    top = int(result.summary["layer"].max())
    assert len(data) == int(result.summary.loc[result.summary["layer"] == top, "n_occurrences"].iloc[0])
    assert data["text"].str.contains("mouse", case=False).all()
    assert data["cluster"].nunique() == int(result.summary.loc[result.summary["layer"] == top, "k"].iloc[0]) >= 2
    assert "text" in {t["field"] for t in chart["spec"]["encoding"]["tooltip"]}
