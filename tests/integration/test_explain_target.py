"""Explain names what it explains: the predicted token decoded, its probability, the position and its input token."""

import json

import numpy as np
import pytest

from attnscope import cli
from attnscope.models.contributions import contributions

pytestmark = pytest.mark.slow

IOI = "When Mary and John went to the store, John gave a drink to"


def test_a_decoders_target_is_the_predicted_token_not_the_input_token(smollm2):
    result = contributions(smollm2, IOI, "weights")
    assert result.target.startswith("predicts ' Mary' (p = 0.") and result.target.endswith("after position 13 ('to')")
    meta = result.meta
    assert meta["predicted_token"] == " Mary" and meta["target_input_token"] == "to" and meta["target_position"] == 13
    assert 0.5 < meta["predicted_probability"] <= 1
    assert smollm2.tokenizer.decode([meta["predicted_token_id"]]) == " Mary"
    gradient = contributions(smollm2, IOI, "input_x_gradient")
    assert gradient.meta["predicted_token"] == " Mary"
    assert gradient.meta["predicted_probability"] == pytest.approx(meta["predicted_probability"], rel=1e-4)


def test_the_cli_meta_names_the_prediction(tmp_path):
    out = tmp_path / "c.npz"
    assert cli.main(["contributions", "--model", "smollm2", "--text", IOI, "--method", "weights", "--out", str(out)]) == 0
    meta = json.loads(str(np.load(out)["meta"]))
    assert meta["predicted_token"] == " Mary" and meta["target_input_token"] == "to"
    assert meta["target"].startswith("predicts ' Mary'")
