"""Contextual drift and padding effects on the bundled models (MiniLM encoder, SmolLM2 decoder)."""

import json

import numpy as np
import pytest
import torch

from attnscope import cli
from attnscope.analysis.drift import DEFAULT_CONTEXTS, depth_frame, drift, layer0_is_static, parse_contexts
from attnscope.analysis.padding import TOLERANCE, padding_study
from attnscope.models import run

pytestmark = pytest.mark.slow

PAD_TEXTS = ["The mouse ate the cheese.", "Click the left mouse button twice to open the file in a new window.", "A cat sat by the door."]


@pytest.fixture(scope="module")
def bundled(request):
    return {"minilm": request.getfixturevalue("minilm"), "smollm2": request.getfixturevalue("smollm2")}


@pytest.fixture(scope="module")
def mouse(bundled):
    contexts, senses = parse_contexts(DEFAULT_CONTEXTS)
    return {name: drift(run(lm, contexts), lm.tokenizer, "mouse", senses) for name, lm in bundled.items()}


@pytest.fixture(scope="module")
def padding(bundled):
    def study(lm):
        return padding_study(lambda texts, side, mask: run(lm, texts, padding_side=side, attention_mask=mask), PAD_TEXTS)

    return {name: study(lm) for name, lm in bundled.items()}


@pytest.mark.parametrize("name", ["minilm", "smollm2"])
def test_senses_separate_in_upper_layers(mouse, name):
    depth = depth_frame(mouse[name])
    upper = depth[depth.layer >= depth.layer.max() // 2]
    assert (upper.across_sense < upper.within_sense).all(), upper[["layer", "within_sense", "across_sense"]]
    # ... and by a visible margin at the top block, not just noise.
    assert upper.within_sense.iloc[-1] - upper.across_sense.iloc[-1] > 0.03
    # Ethayarajh: the word is more alike to itself than random token pairs are to each other.
    assert (depth.self_similarity > depth.anisotropy_baseline).all()


def test_smollm2_layer0_is_the_embedding_row(mouse, bundled):
    result = mouse["smollm2"]
    assert {o.pieces for o in result.occurrences} == {("Ġmouse",)}
    assert np.allclose(result.similarity[0], 1.0, atol=1e-6)
    assert layer0_is_static(result) is True
    table = bundled["smollm2"].model.get_input_embeddings().weight
    row = table[bundled["smollm2"].tokenizer.convert_tokens_to_ids("Ġmouse")].detach().float().numpy()
    assert np.allclose(result.vectors[0, 0], row, atol=1e-6)


def test_minilm_layer0_differs_only_through_positions(mouse, bundled):
    result = mouse["minilm"]
    lm = bundled["minilm"]
    emb = lm.model.embeddings
    word_id = lm.tokenizer.convert_tokens_to_ids("mouse")
    with torch.no_grad():
        for b, occ in enumerate(result.occurrences):
            (position,) = occ.token_index.tolist()
            expected = emb.LayerNorm(
                emb.word_embeddings.weight[word_id] + emb.position_embeddings.weight[position] + emb.token_type_embeddings.weight[0]
            )
            assert np.allclose(result.vectors[0, b], expected.numpy(), atol=1e-5)
    positions = [int(o.token_index[0]) for o in result.occurrences]
    same = [(i, j) for i in range(len(positions)) for j in range(i + 1, len(positions)) if positions[i] == positions[j]]
    different = [(i, j) for i in range(len(positions)) for j in range(i + 1, len(positions)) if positions[i] != positions[j]]
    assert same and different
    assert all(result.similarity[0, i, j] == pytest.approx(1.0, abs=1e-6) for i, j in same)
    assert all(result.similarity[0, i, j] < 0.999 for i, j in different)
    assert layer0_is_static(result) is False


@pytest.mark.parametrize("name", ["minilm", "smollm2"])
def test_word_split_into_several_subwords(bundled, name):
    lm = bundled[name]
    contexts = ["The trackball rolled off the desk.", "She cleaned the old trackball with a cloth."]
    rec = run(lm, contexts)
    result = drift(rec, lm.tokenizer, "trackball")
    for b, occ in enumerate(result.occurrences):
        assert len(occ.pieces) == 2
        assert "".join(occ.pieces).replace("##", "").replace("Ġ", "") == "trackball"
        top = lm.spec.n_layers
        assert np.allclose(result.vectors[top, b], rec.hidden(top, b)[occ.token_index].mean(0), atol=1e-5)


@pytest.mark.parametrize("name", ["minilm", "smollm2"])
def test_missing_word_is_a_clear_error(bundled, name):
    lm = bundled[name]
    rec = run(lm, ["The mouse ate.", "Click the button."])
    with pytest.raises(ValueError, match=r"'mouse' does not occur as a whole word in context 2: 'Click the button.'"):
        drift(rec, lm.tokenizer, "mouse")


def test_decoder_sees_only_left_context(bundled):
    lm = bundled["smollm2"]
    contexts = ["I saw a mouse in the kitchen eating cheese.", "I saw a mouse cursor freeze on the screen."]
    result = drift(run(lm, contexts), lm.tokenizer, "mouse")
    assert np.allclose(result.similarity[:, 0, 1], 1.0, atol=1e-5)
    encoder = bundled["minilm"]
    bidirectional = drift(run(encoder, contexts), encoder.tokenizer, "mouse")
    assert bidirectional.similarity[-1, 0, 1] < 0.95


@pytest.mark.parametrize("name", ["minilm", "smollm2"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_padding_with_mask_matches_unpadded(padding, name, side):
    setting = padding[name].setting(side, True)
    assert setting.max_relative_diff <= TOLERANCE, setting.layers
    assert setting.matches_unpadded
    assert (setting.layers.pad_attention_mass == 0).all() and (setting.layers.pad_attention_max == 0).all()
    if name == "minilm":
        assert setting.max_hidden_diff <= TOLERANCE


@pytest.mark.parametrize("name, side", [("minilm", "right"), ("minilm", "left"), ("smollm2", "left")])
def test_padding_without_mask_diverges(padding, name, side):
    setting = padding[name].setting(side, False)
    assert setting.max_relative_diff > 0.1
    assert setting.max_hidden_diff > 0.1
    assert setting.layers.pad_attention_mass.max() > 0.1


def test_decoder_right_padding_without_mask_still_matches(padding):
    setting = padding["smollm2"].setting("right", False)
    assert setting.matches_unpadded
    assert (setting.layers.pad_attention_max == 0).all()


def test_cli_drift_and_padding(tmp_path, capsys):
    out = tmp_path / "drift.csv"
    assert (
        cli.main(
            [
                "drift",
                "--model",
                "minilm",
                "--word",
                "mouse",
                "--context",
                "animal | The cat caught the mouse.",
                "--context",
                "device | Click the mouse button.",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    lines = out.read_text().splitlines()
    assert lines[0] == "layer,context_a,context_b,sense_a,sense_b,cosine"
    assert len(lines) == 1 + 7 * 4  # 7 hidden layers x 2 x 2 contexts
    assert cli.main(["drift", "--model", "minilm", "--context", "The cat.", "--context", "A mouse.", "--out", str(out)]) == 2
    assert "context 1: 'The cat.'" in capsys.readouterr().err
    out = tmp_path / "padding.json"
    assert (
        cli.main(
            [
                "padding",
                "--model",
                "minilm",
                "--text",
                "Hi there.",
                "--text",
                "A much longer text about a mouse.",
                "--padding-side",
                "left",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    data = json.loads(out.read_text())
    assert [(s["padding_side"], s["attention_mask"]) for s in data["settings"]] == [("left", True), ("left", False)]
    assert data["settings"][0]["matches_unpadded"] and not data["settings"][1]["matches_unpadded"]
    assert len(data["settings"][0]["layers"]) == 6
    assert cli.main(["padding", "--model", "minilm", "--text", "Only one.", "--out", str(out)]) == 2
