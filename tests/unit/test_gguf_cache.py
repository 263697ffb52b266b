"""The converted-GGUF cache is written whole or not at all: a failing or killed write is never trusted.

A tiny random Llama stands in for the de-quantized GGUF (``produce``), so each conversion takes well
under a second; the GGUF file itself is only hashed, so a few bytes stand in for it.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess  # unit-allowed: one child that exits at once, for a pid that is surely dead
import sys

import pytest
import torch
import transformers.modeling_utils as modeling_utils
from transformers import AutoModelForCausalLM

from attnscope.models import load
from attnscope.models.convert import MARKER, convert_once, is_complete, remove_stale
from attnscope.models.loaded import _file_hash, gguf_to_safetensors
from tests.tiny import config_for, wordpiece_tokenizer

GGUF = "Tiny.Q4_1.gguf"


@pytest.fixture
def gguf(tmp_path, monkeypatch):
    """A stand-in GGUF file and an empty cache directory (ATTNSCOPE_CACHE)."""
    source = tmp_path / "pkg"
    source.mkdir()
    (source / GGUF).write_bytes(b"GGUF tiny stand-in")
    cache = tmp_path / "cache"
    monkeypatch.setenv("ATTNSCOPE_CACHE", str(cache))
    target = cache / f"Tiny.Q4_1-{_file_hash(source / GGUF)}"
    return source, cache, target


class Producer:
    """produce() for gguf_to_safetensors: a tiny Llama (seeded, so every call gives the same weights); counts calls."""

    def __init__(self):
        self.calls = 0
        self.model = None

    def __call__(self):
        self.calls += 1
        torch.manual_seed(0)
        self.model = AutoModelForCausalLM.from_config(config_for("llama_gqa"))
        return self.model, wordpiece_tokenizer()


def _weights_equal(directory, model) -> None:
    loaded = load(str(directory), device="cpu", verify=False).model.state_dict()
    expected = model.state_dict()
    assert set(loaded) == set(expected)
    for key, tensor in expected.items():
        torch.testing.assert_close(loaded[key], tensor, rtol=0, atol=0)


def _fail_half_way(monkeypatch, error=errno.ENOSPC):
    """save_pretrained's safetensors write puts half the file on disk, then the disk is full."""
    real = modeling_utils.safe_save_file

    def half_then_full(tensors, filename, metadata=None):
        real(tensors, filename, metadata=metadata)
        with open(filename, "r+b") as fh:
            fh.truncate(fh.seek(0, 2) // 2)
        raise OSError(error, "No space left on device")

    monkeypatch.setattr(modeling_utils, "safe_save_file", half_then_full)


def test_a_failed_write_leaves_nothing_and_the_next_call_converts(gguf, monkeypatch):
    source, cache, target = gguf
    produce = Producer()
    with monkeypatch.context() as patch:
        _fail_half_way(patch)
        with pytest.raises(OSError) as exc:
            gguf_to_safetensors(source, GGUF, produce=produce)
        assert exc.value.errno == errno.ENOSPC
    assert list(cache.iterdir()) == []  # no target to trust, no temporary directory left behind
    assert not is_complete(target, target.name.rsplit("-", 1)[1])

    assert gguf_to_safetensors(source, GGUF, produce=produce) == target
    assert produce.calls == 2 and sorted(p.name for p in cache.iterdir()) == [target.name]
    marker = json.loads((target / MARKER).read_text())
    assert marker["files"]["model.safetensors"] == (target / "model.safetensors").stat().st_size
    _weights_equal(target, produce.model)


def test_a_failing_tokenizer_write_after_the_weights_leaves_nothing(gguf, monkeypatch):
    source, cache, target = gguf
    tokenizer_class = type(wordpiece_tokenizer())

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C between the weights and the tokenizer

    monkeypatch.setattr(tokenizer_class, "save_pretrained", interrupted)
    with pytest.raises(KeyboardInterrupt):
        gguf_to_safetensors(source, GGUF, produce=Producer())
    assert list(cache.iterdir()) == []


def test_a_cache_with_a_truncated_weights_file_is_not_trusted(gguf):
    source, _cache, target = gguf
    produce = Producer()
    gguf_to_safetensors(source, GGUF, produce=produce)
    assert gguf_to_safetensors(source, GGUF, produce=produce) == target and produce.calls == 1  # complete: trusted
    weights = target / "model.safetensors"
    size = weights.stat().st_size
    with open(weights, "r+b") as fh:
        fh.truncate(size - 1000)
    assert not is_complete(target, target.name.rsplit("-", 1)[1])  # the marker's size no longer matches
    assert gguf_to_safetensors(source, GGUF, produce=produce) == target
    assert produce.calls == 2 and weights.stat().st_size == size
    _weights_equal(target, produce.model)


def test_a_killed_write_and_an_unmarked_target_are_replaced(gguf):
    """What a killed process leaves: its temporary directory, or (older code) a target without a marker."""
    source, cache, target = gguf
    dead = subprocess.Popen([sys.executable, "-c", "pass"])  # unit-allowed: see the import
    dead.wait()
    cache.mkdir()
    stale = cache / f".{target.name}.tmp-{dead.pid}-0badc0de"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"\0" * 100)
    target.mkdir()
    (target / "config.json").write_text("{}")
    (target / "model.safetensors").write_bytes(b"\0" * 100)
    produce = Producer()
    assert gguf_to_safetensors(source, GGUF, produce=produce) == target
    assert produce.calls == 1 and sorted(p.name for p in cache.iterdir()) == [target.name]
    _weights_equal(target, produce.model)


def test_a_live_processs_temporary_directory_is_kept(tmp_path):
    target = tmp_path / "model-abc"
    live = tmp_path / f".model-abc.tmp-{os.getppid()}-12345678"
    live.mkdir()
    assert remove_stale(target) == [] and live.exists()


def test_a_write_missing_a_tensor_fails_verification(gguf, monkeypatch):
    source, cache, _target = gguf
    real = modeling_utils.safe_save_file

    def drop_one(tensors, filename, metadata=None):
        tensors = dict(tensors)
        tensors.pop("model.layers.1.mlp.down_proj.weight")
        real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(modeling_utils, "safe_save_file", drop_one)
    with pytest.raises(OSError, match="model.layers.1.mlp.down_proj.weight is missing"):
        gguf_to_safetensors(source, GGUF, produce=Producer())
    assert list(cache.iterdir()) == []


def test_a_concurrent_conversion_that_wins_the_rename_is_kept(gguf):
    """Process B publishes while A is still converting: A's rename fails, A keeps B's copy and drops its own."""
    source, cache, target = gguf
    fingerprint = target.name.rsplit("-", 1)[1]
    other = Producer()

    def produce_while_another_publishes():
        convert_once(target, other, fingerprint)  # B, start to finish
        return Producer()()

    assert gguf_to_safetensors(source, GGUF, produce=produce_while_another_publishes) == target
    assert other.calls == 1 and is_complete(target, fingerprint)
    assert sorted(p.name for p in cache.iterdir()) == [target.name]
    _weights_equal(target, other.model)


def test_a_marker_of_another_source_is_not_trusted(gguf):
    source, _cache, target = gguf
    gguf_to_safetensors(source, GGUF, produce=Producer())
    assert is_complete(target, target.name.rsplit("-", 1)[1])
    assert not is_complete(target, "0123456789abcdef")
