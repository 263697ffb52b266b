"""Nothing a run does writes to what every session shares: the tokenizer (its Rust backend too) and the model."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import attnscope.models.encoding as encoding_module
from attnscope.analysis.drift import locate
from attnscope.models import run
from attnscope.models.encoding import encode_batch
from tests.parity import tokenizer_state

TEXTS = ["Click the mouse twice to open the file.", "Short one.", "A cat sat on the warm mat by the door, then slept."]


backend_state = tokenizer_state


@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama_gqa"])
def test_runs_write_nothing_to_the_shared_backend(tiny_factory, arch):
    """A fast tokenizer's own padded call runs enable_padding on its Rust backend; a run must not."""
    lm = tiny_factory(arch)
    before = backend_state(lm.tokenizer)
    assert before["padding"] is None and before["truncation"] is None  # sealed at load
    for side in ("left", "right"):
        run(lm, TEXTS, padding_side=side)
        run(lm, TEXTS, padding_side=side, max_length=6)
        assert backend_state(lm.tokenizer) == before, side


def test_drift_offsets_write_nothing_to_the_shared_backend(tiny_factory):
    lm = tiny_factory("bert")
    before = backend_state(lm.tokenizer)
    occurrences, _ = locate(lm.tokenizer, ["the mouse ate", "move the mouse"], ["animal", "device"], "mouse")
    assert len(occurrences) == 2
    assert backend_state(lm.tokenizer) == before


@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama_gqa"])
@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("max_length", [None, 4, 7])
@pytest.mark.parametrize("truncation_side", ["right", "left"])
def test_equal_to_transformers_padded_call(tiny_factory, arch, side, max_length, truncation_side):
    """Reference: transformers' own padded, truncated call, on a copy so the shared one stays untouched."""
    tok = tiny_factory(arch).tokenizer
    reference = copy.deepcopy(tok)
    reference.truncation_side = truncation_side
    kwargs = {"truncation": True, "max_length": max_length} if max_length else {}
    want = reference(TEXTS, padding=True, padding_side=side, return_tensors="pt", **kwargs)
    private = copy.copy(tok)  # same backend, its own truncation side
    private.truncation_side = truncation_side
    got = encode_batch(private, TEXTS, padding_side=side, max_length=max_length)
    assert set(got) == set(want)
    for key in want:
        assert torch.equal(got[key], want[key]), key


def test_slow_tokenizer_path_pads_the_same(tiny_factory, monkeypatch):
    """A tokenizer without a Rust backend is called unpadded and padded here, to the same ids."""
    tok = tiny_factory("bert").tokenizer
    want = copy.deepcopy(tok)(TEXTS, padding=True, padding_side="left", return_tensors="pt")
    monkeypatch.setattr(encoding_module, "_backend", lambda tokenizer: None)
    got = encode_batch(tok, TEXTS, padding_side="left")
    for key in want:
        assert torch.equal(got[key], want[key]), key


def test_left_and_right_masks_differ_where_the_short_text_is_padded(tiny_factory):
    lm = tiny_factory("gpt2")
    left = run(lm, TEXTS[:2], padding_side="left").attention_mask[1]
    right = run(lm, TEXTS[:2], padding_side="right").attention_mask[1]
    assert left[0] == 0 and left[-1] == 1 and right[0] == 1 and right[-1] == 0
    assert np.array_equal(left[::-1], right)
