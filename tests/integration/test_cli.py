"""CLI on the bundled models: files with the engine's values; bad input exits 2 with one stderr line and no
traceback (some in a fresh process, as a shell runs it)."""

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st

from attnscope import cli
from attnscope.models import load, run
from tests.helpers import BARE_ENV, ROOT, assert_one_line_exit_2, free_port, run_cli

pytestmark = pytest.mark.slow


def test_extract_writes_engine_maps(tmp_path):
    out = tmp_path / "maps.npz"
    texts = ["The mouse ran.", "Click the mouse button."]
    assert cli.main(["extract", "--model", "minilm", "--text", texts[0], "--text", texts[1], "--layers", "1,4", "--out", str(out)]) == 0
    data = np.load(out)
    rec = run(load("minilm"), texts)
    meta = json.loads(str(data["meta"]))
    assert meta["layers"] == [1, 4] and meta["kind"] == "encoder"
    assert data["attention_1"].shape == (2, 12, len(rec.tokens[1]), len(rec.tokens[1]))
    np.testing.assert_allclose(data["attention_1"][1, 7], rec.attention(4, 7, batch=1), atol=1e-6)
    assert data["tokens_0"].tolist() == rec.tokens[0]
    assert data["hidden_0"].shape == (7, len(rec.tokens[0]), 384)


def test_heads_writes_stats(tmp_path):
    out = tmp_path / "heads.csv"
    assert cli.main(["heads", "--model", "minilm", "--text", "The mouse ran.", "--out", str(out)]) == 0
    table = pd.read_csv(out)
    expected = run(load("minilm"), "The mouse ran.").head_stats()
    assert len(table) == 72
    np.testing.assert_allclose(table["entropy"].to_numpy(), expected["entropy"].to_numpy(), atol=1e-6)


FRESH_PROCESS = {"0..5", "max_new_tokens", "out of range", "at least 3"}


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["extract", "--model", "minilm", "--text", "   ", "--out", "x.npz"], "empty"),
        (["extract", "--model", "no-such/model-xyz", "--text", "hi", "--out", "x.npz"], "minilm, smollm2"),
        (["extract", "--model", "minilm", "--text", "hi", "--layers", "9", "--out", "x.npz"], "0..5"),
        (["extract", "--model", "minilm", "--text", "hi", "--out", "/no/such/dir/x.npz"], "does not exist"),
        (["extract", "--model", "minilm", "--text", "hi", "--out", "x.txt"], ".npz"),
        (["extract", "--model", "minilm", "--text", "word " * 600, "--out", "x.npz"], "at most 512"),
        (["heads", "--model", "minilm"], "required"),
        (["knockout", "--model", "minilm", "--text", "hi there", "--heads", "3.12", "--out", "k.json"], "head 12 out of range"),
        (["knockout", "--model", "minilm", "--text", "hi there", "--heads", "3", "--out", "k.json"], "layer.head"),
        (["knockout", "--model", "minilm", "--text", "hi there", "--edges", "1.1:1>9", "--out", "k.json"], "positions must lie"),
        (["generate", "--model", "minilm", "--text", "hi", "--out", "g.npz"], "needs a decoder"),
        (["generate", "--model", "smollm2", "--text", "hi", "--new-tokens", "0", "--out", "g.npz"], "max_new_tokens"),
        (["contributions", "--model", "minilm", "--text", "hi", "--method", "attention", "--out", "x.npz"], "unknown method"),
        (
            ["contributions", "--model", "minilm", "--text", "hi there", "--method", "alti", "--predict", "40", "--out", "x.npz"],
            "out of range",
        ),
        (["faithfulness", "--model", "minilm", "--text", "hi", "--methods", "alti,nope", "--out", "x.csv"], "unknown method"),
        (["contributions", "--model", "minilm", "--text", "a", "--text", "b", "--method", "alti", "--out", "x.npz"], "one text"),
        (["anatomy", "--model", "minilm", "--out", "a.csv"], ".json"),
        (["anatomy", "--model", "minilm", "--cost", "16,32", "--out", "a.json"], "at least 3"),
        (["anatomy", "--model", "no-such/model-xyz", "--out", "a.json"], "minilm, smollm2"),
        (["anatomy", "--model", "minilm", "--text", " ", "--out", "a.json"], "empty"),
    ],
)
def test_bad_input_exit_2_one_line(tmp_path, argv, needle):
    """Exit 2, one stderr line, nothing half-written. A few cases, one per path that loads a model before refusing,
    run as a shell runs them (a fresh interpreter, a bare environment: a library's stray warning would show there);
    the rest run ``cli.main`` in this process, as the console script does, without paying for a new interpreter."""
    fresh = needle in FRESH_PROCESS
    assert_one_line_exit_2(run_cli(argv, cwd=tmp_path, process=fresh, env=BARE_ENV if fresh else None), needle)
    assert not list(tmp_path.iterdir())


def test_help_for_every_subcommand(capsys):
    parser = cli.build_parser()
    subs = parser._subparsers._group_actions[0].choices
    assert {"extract", "heads"} <= set(subs)
    for name in subs:
        with pytest.raises(SystemExit) as exc:
            cli.main([name, "--help"])
        assert exc.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith("usage: attnscope " + name)
        if name not in ("bench", "serve", "fetch-bundled", "corpus-data"):  # these take no input text
            assert "--model" in out or "--data" in out or "--results" in out, f"{name} --help names no input"


def test_knockout_and_importance_write_the_engines_numbers(tmp_path):
    import json

    from attnscope.models.knockout import head_importance, knockout

    lm = load("minilm")
    text = "The mouse ate the cheese."
    out = tmp_path / "ko.json"
    assert cli.main(["knockout", "--model", "minilm", "--text", text, "--heads", "2.5,3.1", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    expected = knockout(lm, text, heads=[(2, 5), (3, 1)])
    assert data["heads"] == [[2, 5], [3, 1]] and data["hidden_cosine"] == pytest.approx(expected.hidden_cosine, abs=1e-6)
    out = tmp_path / "imp.csv"
    assert cli.main(["importance", "--model", "minilm", "--text", text, "--out", str(out)]) == 0
    table = pd.read_csv(out)
    np.testing.assert_allclose(table["delta"].to_numpy(), head_importance(lm, text)["delta"].to_numpy(), atol=1e-6)


def test_generate_and_lens_write_files(tmp_path):
    out = tmp_path / "gen.npz"
    assert (
        cli.main(["generate", "--model", "smollm2", "--text", "The capital of France is", "--new-tokens", "4", "--maps", "--out", str(out)])
        == 0
    )
    data = np.load(out)
    n = len(data["tokens"])
    assert data["generated"].tolist() == list(range(n - 4, n)) and data["attention"].shape == (30, 9, n, n)
    lens = tmp_path / "lens.csv"
    assert cli.main(["lens", "--model", "smollm2", "--text", "The capital of France is Paris.", "--out", str(lens)]) == 0
    table = pd.read_csv(lens)
    assert set(table["layer"]) == set(range(31)) and table["next_rank"].min() >= 0


def test_contributions_and_faithfulness_write_the_engines_numbers(tmp_path):
    from attnscope.models.contributions import contributions

    text = "The mouse ran up the clock and down again."
    out = tmp_path / "alti.npz"
    assert cli.main(["contributions", "--model", "minilm", "--text", text, "--method", "alti", "--predict", "2", "--out", str(out)]) == 0
    data = np.load(out)
    expected = contributions(load("minilm"), text, "alti", position=2)
    n = len(expected.tokens)
    assert data["contributions"].shape == (6, n, n) and data["rolled"].shape == (6, n, n)
    assert data["contributions"].dtype == np.float32 and data["attribution"].dtype == np.float32
    np.testing.assert_allclose(data["attribution"], data["rolled"][-1][2], atol=1e-7)
    np.testing.assert_allclose(data["contributions"], expected.maps, atol=1e-6)
    meta = json.loads(str(data["meta"]))
    assert meta["method"] == "alti" and "Post-LN" in meta["decomposed"] and meta["position"] == 2
    assert data["tokens"].tolist() == expected.tokens
    csv = tmp_path / "faith.csv"
    argv = ["faithfulness", "--model", "minilm", "--text", text, "--methods", "weights,alti", "--out", str(csv)]
    assert cli.main(argv) == 0
    table = pd.read_csv(csv)
    assert list(table["method"]) == ["weights", "alti"]
    assert {"comprehensiveness", "sufficiency", "comprehensiveness_random", "sufficiency_random", "spearman_alti"} <= set(table.columns)
    assert table.loc[table["method"] == "alti", "spearman_alti"].item() == pytest.approx(1.0)


def test_faithfulness_over_a_file_of_texts_is_the_mean_of_each_texts_table(tmp_path):
    from attnscope.models.contributions import explain

    texts = ["The mouse ran up the clock.", "Click the mouse to open the file.", "A cat watched the mouse."]
    data = tmp_path / "texts.txt"
    data.write_text("\n".join(texts) + "\n", encoding="utf-8")
    csv = tmp_path / "set.csv"
    assert cli.main(["faithfulness", "--model", "minilm", "--data", str(data), "--methods", "weights,alti", "--out", str(csv)]) == 0
    table = pd.read_csv(csv).set_index("method")
    lm = load("minilm")
    each = [explain(lm, t, methods=["weights", "alti"]).faithfulness.table.set_index("method") for t in texts]
    for method in ("weights", "alti"):
        values = [t.loc[method, "comprehensiveness"] for t in each]
        assert table.loc[method, "texts"] == 3
        assert table.loc[method, "comprehensiveness"] == pytest.approx(np.mean(values), abs=1e-9)
        half = scipy.stats.t.ppf(0.975, 2) * np.std(values, ddof=1) / np.sqrt(3)
        assert table.loc[method, "comprehensiveness_high"] == pytest.approx(np.mean(values) + half, abs=1e-9)
        assert table.loc[method, "beats_random_texts"] == sum(bool(t.loc[method, "beats_random"]) for t in each)
    assert cli.main(["faithfulness", "--model", "minilm", "--out", str(csv)]) == 2  # neither --text nor --data


def test_the_cli_writes_the_json_contract(tmp_path):
    from attnscope import cli

    out = tmp_path / "why.json"
    argv = ["why", "--model", "minilm", "--text", "The cat sat on the mat.", "--layer", "2", "--head", "1"]
    assert cli.main([*argv, "--query", "3", "--key", "6", "--top", "4", "--out", str(out)]) == 0
    data = json.loads(out.read_text(encoding="utf-8"))
    for key in ("score", "weight", "components", "query_side", "key_side", "bias", "pairs", "tokens", "meta"):
        assert key in data
    assert data["components"][:3] == ["embed", "pos", "type"] and data["components"][-1] == "L1MLP"
    assert list(data["query_side"]) == data["components"] == list(data["key_side"])
    total = sum(data["query_side"].values()) + data["bias"]["query"] + data["bias"]["position"]
    assert abs(total - data["score"]) < 1e-4 * max(1.0, abs(data["score"]))
    assert len(data["pairs"]) == 4 and set(data["pairs"][0]) == {"query", "key", "value"}
    assert data["tokens"][0] == "[CLS]" and data["meta"]["layout"] == "Post-LN" and data["meta"]["rope"] is False


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--layer", "6", "--head", "0", "--query", "1", "--key", "1"], "layer 6 out of range"),
        (["--layer", "0", "--head", "12", "--query", "1", "--key", "1"], "head 12 out of range"),
        (["--layer", "0", "--head", "0", "--query", "40", "--key", "1"], "query 40 out of range"),
    ],
)
def test_the_cli_refuses_bad_cells_with_status_2_and_one_line(tmp_path, extra, needle):
    argv = ["why", "--model", "minilm", "--text", "The cat sat.", *extra, "--out", str(tmp_path / "w.json")]
    assert_one_line_exit_2(run_cli(argv), needle)
    assert not (tmp_path / "w.json").exists()


def test_the_circuit_cli_writes_shares_that_sum_to_one(tmp_path):
    from attnscope import cli

    out = tmp_path / "circuit.json"
    argv = ["circuit", "--model", "minilm", "--text", "The cat sat on the mat.", "--layer", "2", "--head", "1", "--out", str(out)]
    assert cli.main(argv) == 0
    data = json.loads(out.read_text(encoding="utf-8"))
    for side in ("keys", "queries", "values"):
        assert abs(sum(data[side].values()) - 1) < 1e-6 and list(data[side])[:3] == ["embed", "pos", "type"]
    assert set(data["weight_only"]) == {f"L{m}H{h}" for m in range(2) for h in range(12)}
    assert set(data["weight_only"]["L0H0"]) == {"q", "k", "v"}
    assert cli.main([*argv[:-4], "--head", "12", "--out", str(tmp_path / "bad.json")]) == 2


def test_cli_figure_writes_the_chart_and_its_data(tmp_path, minilm, capsys):
    import xml.etree.ElementTree as ET

    from attnscope import cli
    from attnscope.models import run

    text = "The cat sat on the mat."
    out, data = tmp_path / "fig.svg", tmp_path / "fig.csv"
    code = cli.main(
        [
            "figure",
            "--model",
            "minilm",
            "--text",
            text,
            "--view",
            "heatmap",
            "--layer",
            "2",
            "--head",
            "3",
            "--out",
            str(out),
            "--data",
            str(data),
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert ET.parse(out).getroot().tag.endswith("svg")
    frame = pd.read_csv(data)
    grid = frame.pivot(index="query_pos", columns="key_pos", values="weight").to_numpy()
    assert grid == pytest.approx(run(minilm, [text]).attention(2, 3), abs=1e-6)
    assert cli.main(["figure", "--model", "minilm", "--text", text, "--view", "nope", "--out", str(out)]) == 2
    assert "choose one of heatmap, overview, masking, compare" in capsys.readouterr().err
    assert cli.main(["figure", "--model", "minilm", "--text", text, "--layer", "9", "--out", str(out)]) == 2


@settings(max_examples=12, deadline=None)
@given(text=st.text(max_size=30), layers=st.sampled_from(["0", "5", "6", "-1", "x", "0,3"]))
def test_cli_random_input_exit_0_or_2(tmp_path_factory, text, layers):
    import contextlib
    import io

    from attnscope import cli

    out = tmp_path_factory.mktemp("cli") / "a.npz"
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(["extract", "--model", "minilm", "--text", text, "--layers", layers, "--no-hidden", "--out", str(out)])
    assert code in (0, 2)
    if code == 2:
        assert len(err.getvalue().strip().splitlines()) == 1 and not out.exists()
    else:
        assert out.exists() and text.strip()


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "t.txt"
    path.write_text("\n".join((ROOT / "corpus" / "data" / "demo.txt").read_text().splitlines()[:12]) + "\n")
    return path


def test_cli_bad_input_exits_2_with_one_line(tmp_path, small_data):

    csv = tmp_path / "c.csv"
    pd.DataFrame({"body": ["One."]}).to_csv(csv, index=False)
    (tmp_path / "empty.txt").write_text("\n")
    port = free_port()
    cases = [
        (["--model", "minilm", "--data", str(tmp_path / "nope.txt")], "no such file"),
        (["--model", "minilm", "--data", str(csv)], "no column 'text'"),
        (["--model", "minilm", "--data", str(tmp_path / "empty.txt")], "the corpus is empty"),
        (["--model", "minilm", "--data", str(small_data), "--address", f"ray://127.0.0.1:{port}"], "no Ray cluster answers there"),
        (["--model", str(tmp_path), "--data", str(small_data)], "--model"),
        (["--model", "minilm", "--data", str(small_data), "--word", "mouse"], "--analysis drift only"),
        (["--model", "minilm", "--data", str(small_data), "--analysis", "topics"], "invalid choice"),
    ]
    for args, match in cases:
        started = time.perf_counter()
        result = run_cli(["corpus", *args, "--out", str(tmp_path / "out")])
        assert_one_line_exit_2(result, match)
        assert result.error_lines[0].startswith("error: "), args
        if "--address" in args:
            assert time.perf_counter() - started < 6  # says so within seconds
    assert not list((tmp_path / "out").glob("shards/*"))
