"""CLI: files with the engine's values; bad input exits 2 with one stderr line and no traceback."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.stats

from attnscope import cli
from attnscope.models import load, run

ROOT = Path(__file__).resolve().parents[2]


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
    ],
)
def test_bad_input_exit_2_one_line(tmp_path, argv, needle):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), *argv],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(Path.home())},
    )
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert needle in lines[0] and "Traceback" not in proc.stderr
    assert not list(tmp_path.iterdir())  # nothing half-written


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


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["contributions", "--model", "minilm", "--text", "hi", "--method", "attention", "--out", "x.npz"], "unknown method"),
        (
            ["contributions", "--model", "minilm", "--text", "hi there", "--method", "alti", "--predict", "40", "--out", "x.npz"],
            "out of range",
        ),
        (["faithfulness", "--model", "minilm", "--text", "hi", "--methods", "alti,nope", "--out", "x.csv"], "unknown method"),
        (["contributions", "--model", "minilm", "--text", "a", "--text", "b", "--method", "alti", "--out", "x.npz"], "one text"),
    ],
)
def test_contributions_bad_input_exit_2_one_line(tmp_path, argv, needle):
    argv = [a if not a.startswith("x.") else str(tmp_path / a) for a in argv]
    proc = subprocess.run([sys.executable, str(ROOT / "cli.py"), *argv], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in proc.stderr, proc.stderr
