"""Figures grey out the mask each layer really applied, read from the record (not np.tri by model type)."""

from __future__ import annotations

import numpy as np

from attnscope.models import run
from attnscope.viz.figures import heatmap_figure
from tests import tiny

TEXT = "The mouse ran, the cat waited under the old table."


def test_sliding_window_model_greys_out_keys_outside_its_window():
    lm = tiny.build("mistral_window")  # window 4 < the text
    rec = run(lm, TEXT)
    allowed = rec.allowed(0)
    n = len(rec.tokens[0])
    offset = np.arange(n)[:, None] - np.arange(n)[None, :]
    assert np.array_equal(allowed, (offset >= 0) & (offset < 4))
    weights = rec.attention(0, 0)
    assert np.all(weights[~allowed] == 0)  # the map agrees: nothing outside the window
    _, frame = heatmap_figure(rec, 0, 0)
    masked = frame.pivot(index="query_pos", columns="key_pos", values="masked").to_numpy()
    assert np.array_equal(masked, ~allowed)


def test_padding_and_encoders():
    lm = tiny.build("bert")
    rec = run(lm, [TEXT, "Short one."])
    assert rec.allowed(1, batch=1).all()  # real tokens of an encoder see each other: nothing greyed
    dec = tiny.build("llama_gqa")
    rec = run(dec, [TEXT, "Short one."], padding_side="left")
    short = rec.allowed(1, batch=1)
    assert np.array_equal(short, np.tri(len(rec.tokens[1]), dtype=bool))  # causal over the real tokens, pads dropped
