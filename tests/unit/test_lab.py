"""The lab on tiny random models: patterns imposed through the one hook, coverage, effect, bad input, the CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import attnscope.models.lab
from attnscope import cli
from attnscope.models import from_model, run
from attnscope.models.forward import tokenize
from attnscope.models.lab import imposing, lab_coverage, lab_effect, lab_maps, lab_sweep, lab_table
from tests import tiny, zoo
from tests.helpers import assert_one_line_exit_2, run_cli
from tests.tiny import bpe_tokenizer

TEXT = "The mouse ran, the cat waited by the door."
TEXTS = ["The mouse ran, the cat waited by the door.", "Click the mouse."]


@pytest.fixture(scope="module", params=["llama_gqa", "bert"])
def lm(request):
    return tiny.build(request.param)


@pytest.fixture(scope="module")
def decoder():
    return tiny.build("llama_gqa")


@pytest.fixture(scope="module")
def materialised():
    return from_model(zoo.build("bloom"), bpe_tokenizer(), name="tiny-bloom")


def outputs(lm, texts, pattern=None, layers=None, side="right"):
    enc, _ = tokenize(lm, texts, padding_side=side)
    with torch.inference_mode():
        if pattern is None:
            out = lm.model(**enc)
        else:
            with imposing(lm, pattern, layers):
                out = lm.model(**enc)
    return (out.last_hidden_state if lm.spec.kind == "encoder" else out.logits), enc["attention_mask"].bool()


@pytest.mark.parametrize("label", ["full", "window:64", "topk:64", "kv:4", "global:64,1", "linformer:64"])
def test_imposed_patterns_equal_to_full_reproduce_the_model_on_a_padded_batch(lm, label):
    """Full attention recomputed in the hook (and patterns that reduce to it) = the model's own kernel, pads masked."""
    label = label.replace("64", str(len(tokenize(lm, TEXTS)[0]["input_ids"][0])))
    for side in ("right", "left"):
        reference, real = outputs(lm, TEXTS, side=side)
        imposed, _ = outputs(lm, TEXTS, label, side=side)
        torch.testing.assert_close(imposed[real], reference[real], atol=2e-5, rtol=1e-4)


def test_a_pattern_changes_the_output_only_on_the_chosen_layers(decoder):
    reference, _ = outputs(decoder, [TEXT])
    changed, _ = outputs(decoder, [TEXT], "window:2")
    assert not torch.allclose(changed, reference, atol=1e-4)
    enc, _ = tokenize(decoder, [TEXT])
    seen = []
    original = attnscope.models.lab.pattern_output

    def spy(*args, **kwargs):
        seen.append(True)
        return original(*args, **kwargs)

    attnscope.models.lab.pattern_output = spy
    try:
        with torch.inference_mode(), imposing(decoder, "window:2", layers=[1]):
            one_layer = decoder.model(**enc).logits
    finally:
        attnscope.models.lab.pattern_output = original
    assert len(seen) == 1  # one of the two layers
    assert not torch.allclose(one_layer, changed, atol=1e-5) and not torch.allclose(one_layer, reference, atol=1e-5)


@pytest.mark.parametrize(
    "label",
    [
        "window:2",
        "dilated:2,2",
        "strided:2",
        "global:special,2",
        "bigbird:2,1,2",
        "block:3",
        "linformer:3",
        "performer:16",
        "linear",
        "topk:2",
        "kv:1",
    ],
)
def test_imposed_patterns_stay_causal(decoder, label):
    """Changing the last token changes nothing before it (SVD of the whole map is the one non-causal ideal)."""
    ids = tokenize(decoder, [TEXT])[0]["input_ids"]
    other = ids.clone()
    other[0, -1] = (other[0, -1] + 7) % 1000
    special = torch.zeros_like(ids, dtype=torch.bool)
    special[0, 0] = True  # pretend the first token is special (global:special)
    with torch.inference_mode(), imposing(decoder, label, special=special):
        a = decoder.model(input_ids=ids).logits
        b = decoder.model(input_ids=other).logits
    torch.testing.assert_close(a[0, :-1], b[0, :-1], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(a[0, -1], b[0, -1])


def test_coverage_of_full_is_one_and_a_window_keeps_the_mass_inside_it(lm):
    rec = run(lm, TEXT)
    full = lab_coverage(rec, "full")
    np.testing.assert_allclose(full["coverage"], 1.0, atol=1e-5)
    table = lab_coverage(rec, "window:2")
    n = len(rec.tokens[0])
    band = np.abs(np.arange(n)[:, None] - np.arange(n)[None, :]) < 2
    for layer, head in ((0, 1), (1, 3)):
        expected = (rec.attention(layer, head) * band).sum(-1).mean()  # the exact map, read through the public API
        got = table.query("layer == @layer and head == @head")["coverage"].item()
        assert got == pytest.approx(expected, abs=1e-5)
    assert (table["coverage"] < 1).all() and len(table) == lm.spec.n_layers * lm.spec.n_heads
    maps = lab_maps(rec, "window:2", 1, 3)
    np.testing.assert_allclose(maps["exact"], rec.attention(1, 3), atol=1e-6)
    assert (maps["kept"] == (band & maps["allowed"])).all()
    np.testing.assert_allclose(maps["approx"][~maps["kept"]], 0.0)


def test_effect_is_zero_for_full_and_grows_as_the_window_shrinks(decoder):
    full = lab_effect(decoder, TEXT, "full")
    assert (
        abs(full.kl) < 1e-5 and full.cosine == pytest.approx(1.0, abs=1e-5) and full.loss_full == pytest.approx(full.loss_imposed, abs=1e-4)
    )
    assert full.layer_error["relative_error"].max() < 1e-4 and len(full.layer_error) == decoder.spec.n_layers + 1
    sweep = lab_sweep(decoder, TEXT, "window:1")
    assert sweep["value"].iloc[-1] == len(tokenize(decoder, [TEXT])[0]["input_ids"][0])
    assert sweep["kl"].iloc[-1] < 1e-5 and sweep["kl"].iloc[0] > sweep["kl"].iloc[-1]
    assert sweep["coverage"].is_monotonic_increasing and sweep["coverage"].iloc[-1] == pytest.approx(1.0, abs=1e-5)


def test_encoder_effect_is_measured_on_hidden_states():
    effect = lab_effect(tiny.build("bert"), TEXT, "window:2")
    assert effect.kl is None and effect.loss_full is None and "hidden states" in effect.note
    assert effect.layer_error["relative_error"].iloc[-1] > 0 and effect.cosine < 1


@pytest.mark.parametrize(
    "label, needle",
    [
        ("window:0", "1.."),
        ("recurrence:2,-1", "memory -1 must be at least 0"),
        ("svd:0", "rank"),
        ("nosuch:2", "unknown pattern"),
        ("performer:100000000", "too much memory"),
        ("kv:3", "divide"),
    ],
)
def test_bad_input_is_one_value_error(decoder, label, needle):
    with pytest.raises(ValueError, match=needle):
        lab_effect(decoder, TEXT, label)
    with pytest.raises(ValueError, match="layer 9 out of range"):
        lab_effect(decoder, TEXT, "window:2", layers=[9])


def test_materialised_model_refuses_to_impose_but_measures_coverage(materialised):
    assert materialised.spec.recording == "materialised"
    with pytest.raises(ValueError, match="materialised"):
        lab_effect(materialised, TEXT, "window:2")
    rec = run(materialised, TEXT)
    table = lab_coverage(rec, "window:2")
    n = len(rec.tokens[0])
    band = np.abs(np.arange(n)[:, None] - np.arange(n)[None, :]) < 2
    expected = (rec.attention(1, 2) * band).sum(-1).mean()
    assert table.query("layer == 1 and head == 2")["coverage"].item() == pytest.approx(expected, abs=1e-5)
    with pytest.raises(ValueError, match="queries and keys"):
        lab_coverage(rec, "performer:8")
    rows, note = lab_table(materialised, TEXT, ["window:2", "topk:2"])
    assert "materialised" in note and "kl" not in rows and len(rows) == 2 and (rows["coverage"] < 1).all()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Tiny models saved as local directories, so the CLI loads them by path."""
    root = tmp_path_factory.mktemp("models")
    paths = {}
    for name, lm in (("llama", tiny.build("llama_gqa")), ("bloom", from_model(zoo.build("bloom"), bpe_tokenizer(), name="bloom"))):
        lm.model.save_pretrained(root / name)
        lm.tokenizer.save_pretrained(root / name)
        paths[name] = str(root / name)
    return paths


def test_cli_lab_writes_one_row_per_pattern(saved, tmp_path, capsys):
    import pandas as pd

    out = tmp_path / "lab.csv"
    code = cli.main(
        ["lab", "--model", saved["llama"], "--text", TEXT, "--pattern", "window:3", "--pattern", "bigbird:2,1,2", "--out", str(out)]
    )
    assert code == 0, capsys.readouterr().err
    table = pd.read_csv(out)
    assert table["pattern"].tolist() == ["window:3", "bigbird:2,1,2"]
    lm = from_model(__import__("transformers").AutoModelForCausalLM.from_pretrained(saved["llama"]), bpe_tokenizer())
    assert table["kl"].iloc[0] == pytest.approx(lab_effect(lm, TEXT, "window:3").kl, rel=1e-4)
    assert "approximations" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--pattern", "nosuch:3"], "unknown pattern"),
        (["--pattern", "window:0"], "1.."),
        (["--pattern", "performer:100000000"], "too much memory"),
    ],
)
def test_cli_lab_bad_input_exit_2_one_line(saved, tmp_path, argv, needle):
    out = tmp_path / "lab.csv"
    assert_one_line_exit_2(run_cli(["lab", "--model", saved["llama"], "--text", TEXT, *argv, "--out", str(out)]), needle)
    assert not out.exists()


def test_cli_lab_on_a_materialised_model_writes_nothing_and_says_why(saved, tmp_path, capsys):
    """A failing command writes nothing (it used to write the coverage, then exit 2); --coverage-only writes it, exit 0."""
    import pandas as pd

    out = tmp_path / "lab.csv"
    assert cli.main(["lab", "--model", saved["bloom"], "--text", TEXT, "--pattern", "window:3", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "materialised" in err[0] and "--coverage-only" in err[0]
    assert list(tmp_path.iterdir()) == []
    assert cli.main(["lab", "--model", saved["bloom"], "--text", TEXT, "--pattern", "window:3", "--coverage-only", "--out", str(out)]) == 0
    table = pd.read_csv(out)
    assert "kl" not in table and 0 < table["coverage"].iloc[0] < 1
