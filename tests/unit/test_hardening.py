"""Hardening: strange text, limits, allowlist, export paths, and random input (hypothesis)."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attnscope.models import run
from attnscope.models.limits import estimate_run_bytes
from attnscope.viz.export import write_bytes


@pytest.mark.parametrize("text", ["héllo wörld — мир 世界 🙂 مرحبا", "tab\there\nnew line\r\n", "bell\x07 and nul\x00 inside"])
@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_control_chars_and_mixed_scripts(tiny_factory, arch, text):
    rec = run(tiny_factory(arch), [text, "short"])
    a = rec.attention(1, 2, batch=0)
    assert len(rec.tokens[0]) > 2 and a.shape == (len(rec.tokens[0]),) * 2
    np.testing.assert_allclose(a.sum(-1), 1.0, atol=1e-5)


def test_text_of_only_control_characters_is_refused(tiny_factory):
    with pytest.raises(ValueError, match="no tokens"):
        run(tiny_factory("bert"), "\x00\x01\x02")


def test_token_cap(monkeypatch, tiny_factory):
    monkeypatch.setenv("ATTNSCOPE_MAX_TOKENS", "32")
    with pytest.raises(ValueError, match=r"exceeds this deployment's limit of 32.*ATTNSCOPE_MAX_TOKENS"):
        run(tiny_factory("gpt2"), ["word " * 20, "word " * 10])
    assert run(tiny_factory("gpt2"), "word " * 10).tokens[0][:2] == ["word", "Ġword"]  # under the cap it runs


def test_memory_guard_refuses_before_running(monkeypatch, tiny_factory):
    lm = tiny_factory("llama_gqa")
    monkeypatch.setenv("ATTNSCOPE_MAX_MEMORY_GB", "0.00001")
    with pytest.raises(ValueError, match=r"would need about .* GB but .* is allowed"):
        run(lm, "The mouse ran.")


def test_memory_estimate_scales(tiny_factory):
    lm = tiny_factory("llama_gqa")
    small = estimate_run_bytes(lm.model.config, lm.spec, 1, 512, padded=False)
    double = estimate_run_bytes(lm.model.config, lm.spec, 1, 1024, padded=False)
    padded = estimate_run_bytes(lm.model.config, lm.spec, 2, 1024, padded=True)
    assert 1.8 < (double - 2**21) / (small - 2**21) < 2.2  # linear without a padding mask
    assert padded > 2 * double + 2 * 4 * 1024 * 1024  # padded batches pay for one layer's n² scores


def test_export_paths(tmp_path):
    with pytest.raises(ValueError, match="exports go under"):
        write_bytes(tmp_path / ".." / "escape.png", b"x", root=tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        write_bytes(tmp_path / "missing" / "a.png", b"x")
    with pytest.raises(ValueError, match="cannot write"):
        write_bytes("/dev/null/a.png", b"x")
    assert write_bytes(tmp_path / "ok.png", b"\x89PNG", root=tmp_path).read_bytes() == b"\x89PNG"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    texts=st.lists(st.text(max_size=40), min_size=1, max_size=3),
    layer=st.integers(-2, 4),
    head=st.integers(-2, 6),
    side=st.sampled_from(["left", "right", None]),
    arch=st.sampled_from(["bert", "llama_gqa"]),
)
def test_api_random_input_only_documented_errors(tiny_factory, texts, layer, head, side, arch):
    lm = tiny_factory(arch)
    try:
        rec = run(lm, texts, padding_side=side)
    except ValueError as exc:
        assert "text" in str(exc) or "tokens" in str(exc)
        return
    try:
        a = rec.attention(layer, head, batch=len(texts) - 1)
    except ValueError as exc:
        assert "out of range" in str(exc)
        assert not (0 <= layer < 2 and 0 <= head < 4)
        return
    assert 0 <= layer < 2 and 0 <= head < 4
    assert np.isfinite(a).all()
    np.testing.assert_allclose(a.sum(-1), 1.0, atol=1e-5)


def test_guard_counts_the_gpu_when_the_model_is_on_one(monkeypatch):
    """A model on CUDA is checked against the GPU's free memory, not host RAM."""
    import torch

    from attnscope.models import limits as guard

    monkeypatch.delenv("ATTNSCOPE_MAX_MEMORY_GB", raising=False)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2 * guard.GB, 80 * guard.GB))
    monkeypatch.setattr(guard, "available_bytes", lambda: 100 * guard.GB)
    assert guard.memory_limit_bytes("cuda:0") == int(0.8 * 2 * guard.GB)
    assert guard.memory_limit_bytes("cpu") == int(0.8 * 100 * guard.GB)
