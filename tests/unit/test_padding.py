"""Padding effects on tiny random models (analysis.padding, viz.padding)."""

import json

import numpy as np
import pytest

from attnscope.analysis.padding import (
    LAYER_COLUMNS,
    TOLERANCE,
    allowed_keys,
    hidden_difference,
    pad_attention,
    padding_study,
    positions_frame,
    study_json,
)
from attnscope.models import run
from attnscope.viz.export import chart_bytes
from attnscope.viz.padding import depth_chart, pad_heatmap, pad_heatmap_frame, positions_chart

TEXTS = ["The mouse ate.", "Click the left mouse button twice to open the file.", "A cat sat by the door."]


def study_for(lm, texts=TEXTS, sides=("right", "left")):
    return padding_study(lambda batch, side, mask: run(lm, batch, padding_side=side, attention_mask=mask), texts, sides)


@pytest.fixture(scope="module")
def studies(tiny_factory):
    return {arch: study_for(tiny_factory(arch)) for arch in ("bert", "roberta", "gpt2", "llama_gqa")}


@pytest.mark.parametrize("arch", ["bert", "roberta", "gpt2", "llama_gqa"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_with_mask_real_tokens_match_and_ignore_pads(studies, arch, side):
    setting = studies[arch].setting(side, True)
    assert setting.matches_unpadded
    assert setting.max_relative_diff <= TOLERANCE
    assert setting.max_hidden_diff <= TOLERANCE  # tiny models have small activations: absolute holds too
    assert (setting.layers["pad_attention_mass"] == 0).all()
    assert (setting.layers["pad_attention_max"] == 0).all()


@pytest.mark.parametrize("arch, side", [("bert", "right"), ("bert", "left"), ("roberta", "right"), ("gpt2", "left"), ("llama_gqa", "left")])
def test_without_mask_real_tokens_diverge(studies, arch, side):
    setting = studies[arch].setting(side, False)
    assert not setting.matches_unpadded
    assert setting.max_relative_diff > 10 * TOLERANCE  # random tiny weights: attention is nearly uniform, effects are small
    assert (setting.layers["pad_attention_mass"] > 0).all()


@pytest.mark.parametrize("arch", ["gpt2", "llama_gqa"])
def test_decoder_right_padding_is_hidden_by_causality(studies, arch):
    setting = studies[arch].setting("right", False)
    assert setting.matches_unpadded
    assert (setting.layers["pad_attention_max"] == 0).all()  # pads come after every real token


def test_pad_attention_equals_brute_force(tiny_factory):
    lm = tiny_factory("bert")
    rec = run(lm, TEXTS, padding_side="left", attention_mask=False)
    layer = 1
    sums = []
    for b in range(rec.batch_size):
        pads = rec.attention_mask[b] == 0
        if not pads.any():
            continue
        real = rec.attention_mask[b] == 1
        for head in range(lm.spec.n_heads):
            full = rec.attention(layer, head, b, include_padding=True).astype(np.float64)
            sums.extend(full[real][:, pads].sum(-1))
    mean, top = pad_attention(rec, layer)
    assert mean == pytest.approx(np.mean(sums), rel=1e-5)
    assert top == pytest.approx(np.max(sums), rel=1e-5)


def test_hidden_difference_against_itself_is_zero_and_detects_change(tiny_factory):
    lm = tiny_factory("llama_gqa")
    singles = [run(lm, [t]) for t in TEXTS]
    assert hidden_difference(singles[0], singles[:1], 2) == (0.0, 0.0)
    other = run(lm, ["The mouse ran."])  # same token count as "The mouse ate.", one word changed
    assert len(other.tokens[0]) == len(singles[0].tokens[0])
    absolute, relative = hidden_difference(other, singles[:1], 2)
    assert absolute > 1e-3 and relative > 1e-3
    with pytest.raises(ValueError, match="tokens in the batch"):
        hidden_difference(singles[1], singles[:1], 1)


def test_positions_keep_real_tokens_in_place(studies):
    for arch in ("bert", "llama_gqa"):
        for side in ("right", "left"):
            rec = studies[arch].setting(side, True).record
            frame = positions_frame(rec)
            for b in range(rec.batch_size):
                real = frame[(frame.batch == b) & ~frame.is_pad]
                assert real["position_id"].tolist() == list(range(len(rec.tokens[b])))
                assert real["token"].tolist() == rec.tokens[b]
    roberta = studies["roberta"].setting("left", True).record
    assert roberta.position_ids is None  # RoBERTa derives positions from the pad token itself
    assert not positions_frame(roberta)["position_ids_passed"].any()


@pytest.mark.parametrize(
    "texts, fragment",
    [(["Only one text."], "at least 2 texts"), (["Same length.", "Same length."], "nothing gets padded"), ("one string", "at least 2")],
)
def test_bad_input(tiny_factory, texts, fragment):
    with pytest.raises(ValueError, match=fragment):
        study_for(tiny_factory("bert"), texts)


def test_bad_side(tiny_factory):
    with pytest.raises(ValueError, match="'left' or 'right'"):
        study_for(tiny_factory("bert"), TEXTS, sides=("top",))


def test_json_export(studies, tiny_factory):
    study = studies["gpt2"]
    data = json.loads(json.dumps(study_json(study, "tiny-gpt2")))
    assert [(s["padding_side"], s["attention_mask"]) for s in data["settings"]] == [
        ("right", True),
        ("right", False),
        ("left", True),
        ("left", False),
    ]
    n_layers = tiny_factory("gpt2").spec.n_layers
    for entry, setting in zip(data["settings"], study.settings):
        assert [row["layer"] for row in entry["layers"]] == list(range(n_layers))
        assert [row["max_hidden_diff"] for row in entry["layers"]] == setting.layers["max_hidden_diff"].tolist()
        assert [row["pad_attention_mass"] for row in entry["layers"]] == setting.layers["pad_attention_mass"].tolist()
        assert entry["matches_unpadded"] == setting.matches_unpadded
    assert data["settings"][2]["position_ids"][0][-1] == len(study.singles[0].tokens[0]) - 1
    assert tuple(study.frame().columns) == LAYER_COLUMNS


def test_charts(studies):
    study = studies["llama_gqa"]
    setting = study.setting("left", False)
    rec = setting.record
    weights = rec.attention(0, 1, 0, include_padding=True)
    is_pad = rec.attention_mask[0] == 0
    frame = pad_heatmap_frame(weights, rec.padded_tokens(0), is_pad, allowed_keys(rec, 0, 0), layer=0, head=1)
    assert frame["query_is_pad"].sum() == is_pad.sum() * len(is_pad)
    assert frame.loc[frame.query_is_pad, "query_token"].str.endswith("[pad]").all()
    n = len(is_pad)
    assert np.allclose(
        frame["weight"].to_numpy().reshape(n, n)[~frame["masked"].to_numpy().reshape(n, n)], weights[allowed_keys(rec, 0, 0)]
    )
    charts = [pad_heatmap(frame), depth_chart(study.frame(), tolerance=TOLERANCE), positions_chart(positions_frame(rec), title="left")]
    for chart in charts:
        assert "$schema" in chart.to_dict()
    assert chart_bytes(charts[0], "png").startswith(b"\x89PNG")
    assert chart_bytes(charts[1], "svg").startswith(b"<svg")


def test_verdicts_and_summary_say_what_each_setting_showed(studies):
    from attnscope.analysis.padding import summary_frame, verdict

    study = studies["gpt2"]
    levels = {(s.padding_side, s.attention_mask): verdict(s, "tiny-gpt2")[0] for s in study.settings}
    assert levels == {("right", True): "ok", ("left", True): "ok", ("right", False): "expected", ("left", False): "changed"}
    assert "does NOT" not in verdict(study.setting("left", True), "tiny-gpt2")[1]
    assert levels_of_bert(studies) == {"ok", "changed"}
    summary = summary_frame(study)
    assert list(summary["max relative difference"]) == [s.max_relative_diff for s in study.settings]
    assert summary.iloc[:, 1].tolist() == [s.matches_unpadded for s in study.settings]


def levels_of_bert(studies) -> set[str]:
    from attnscope.analysis.padding import verdict

    return {verdict(s, "tiny-bert")[0] for s in studies["bert"].settings}
