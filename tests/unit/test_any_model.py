"""Backend "auto", the materialised fallback, refusals and the load-time check against eager."""

from __future__ import annotations

import numpy as np
import pytest

import attnscope.analysis.attention
from attnscope.models import run
from attnscope.models.eager import TOLERANCE
from attnscope.models.hook import IMPL_NAMES
from attnscope.models.limits import estimate_run_bytes
from attnscope.models.verify import PROBE_TEXT
from tests import zoo
from tests.parity import TEXTS, assert_matches_eager

wrap = zoo.wrap


def test_registered_names_avoid_transformers_name_checks():
    for name in IMPL_NAMES.values():
        assert "sdpa" not in name and "flash" not in name


def test_auto_takes_sdpa_where_the_class_has_it():
    lm = wrap("llama")
    assert (lm.spec.backend, lm.spec.recording, lm.spec.requested_backend) == ("sdpa", "hook", "auto")
    check = lm.spec.verification
    assert check.passed and check.max_abs_diff <= TOLERANCE and check.heads == lm.spec.n_layers * lm.spec.n_heads
    assert check.probe == PROBE_TEXT
    assert "exact" in lm.spec.recording_label and "hook" in lm.spec.recording_label


def test_auto_takes_the_model_files_eager_where_the_class_has_no_sdpa():
    lm = wrap("gemma2")  # soft-capped scores: no SDPA kernel
    assert (lm.spec.backend, lm.spec.recording) == ("eager", "hook")
    rec = run(lm, TEXTS, padding_side="left")
    assert rec.layers[0].softcap is not None
    assert_matches_eager(lm, rec)


def test_explicit_kernel_the_architecture_lacks_names_those_it_has():
    with pytest.raises(ValueError, match=r"gemma2 has no sdpa attention kernel; it supports eager"):
        wrap("gemma2", backend="sdpa")


def test_materialised_fallback_keeps_eagers_weights_behind_the_same_api():
    lm = wrap("bloom")  # ALiBi inside its own attention module: no AttentionInterface call
    assert (lm.spec.recording, lm.spec.backend) == ("materialised", "eager")
    assert "materialised" in lm.spec.recording_label and "no recording hook" in lm.spec.recording_label
    rec = run(lm, TEXTS, padding_side="right")
    assert_matches_eager(lm, rec)
    a = rec.attention(1, 2, batch=1)
    np.testing.assert_allclose(a.sum(-1), 1.0, atol=1e-5)
    assert np.all(a[np.triu_indices_from(a, k=1)] == 0.0)  # causal, read from the weights themselves
    stats = rec.head_stats(batch=0)
    m = len(rec.tokens[0])
    prev = np.mean([rec.attention(0, 1)[i, i - 1] for i in range(1, m)])
    np.testing.assert_allclose(stats.query("layer == 0 and head == 1")["prev_token"].item(), prev, atol=1e-5)


def test_materialised_memory_estimate_counts_the_n_squared_weights():
    hook, materialised = wrap("llama"), wrap("bloom")
    n = 1024
    extra = estimate_run_bytes(materialised.model.config, materialised.spec, 1, n, False) - estimate_run_bytes(
        materialised.model.config, _as_hook(materialised.spec), 1, n, False
    )
    assert extra >= materialised.spec.n_layers * materialised.spec.n_heads * n * n * 4
    assert hook.spec.recording == "hook"


def _as_hook(spec):
    import dataclasses

    return dataclasses.replace(spec, recording="hook")


def test_explicit_backend_on_an_architecture_without_hook_is_refused_with_the_way_out():
    with pytest.raises(ValueError, match=r"bloom cannot be recorded exactly with backend 'eager'.*backend='auto'"):
        wrap("bloom", backend="eager")


def test_position_bias_passed_to_the_hook_is_part_of_the_map():
    """T5-style relative biases reach the kernel as ``position_bias``: the map must include them."""
    import torch

    from attnscope.analysis.attention import attention_map
    from attnscope.models.hook import _make_attention, recording

    torch.manual_seed(0)
    b, h, n, d = 1, 2, 5, 4
    query, key, value = (torch.randn(b, h, n, d) * 2 for _ in range(3))
    bias = torch.randn(1, h, n, n) * 3
    module = torch.nn.Module()
    module.is_causal = True
    with recording() as recorder:
        output, _ = _make_attention("sdpa")(module, query, key, value, None, scaling=0.5, position_bias=bias)
    layer = recorder.layers[0]
    assert layer.mask.is_floating_point()
    causal = torch.tril(torch.ones(n, n, dtype=torch.bool))
    expected = torch.softmax((query @ key.transpose(-1, -2) * 0.5 + bias).masked_fill(~causal, float("-inf")), -1)  # [B, H, n, n]
    for head in range(h):
        got = attention_map(layer, batch=0, head=head, rows=torch.arange(n), cols=torch.arange(n))
        torch.testing.assert_close(got, expected[0, head], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(output.transpose(1, 2), expected @ value, atol=1e-5, rtol=1e-5)  # the kernel saw the same bias


def test_sliding_window_is_kept(tmp_path):
    lm = wrap("mistral")  # window shrunk to 4 tokens, shorter than the texts
    rec = run(lm, TEXTS, padding_side="left")
    a = rec.attention(0, 0, batch=0)
    assert np.all(np.tril(a, k=-zoo.WINDOW) == 0.0)  # keys 4 or more back get nothing
    assert_matches_eager(lm, rec)


def _scale_off_by_ten_percent(monkeypatch, module, name: str) -> None:
    """``module.name`` (a function of a layer's tensors) given a scaling 10% off, as a bug would."""
    original = getattr(module, name)

    def off_by_ten_percent(layer, **kwargs):
        wrong = attnscope.analysis.attention.Tensors(layer.query, layer.key, layer.mask, layer.scaling * 1.1, layer.softcap, layer.sinks)
        return original(wrong, **kwargs)

    monkeypatch.setattr(module, name, off_by_ten_percent)


def test_a_wrong_recomputation_is_caught_at_load(monkeypatch):
    _scale_off_by_ten_percent(monkeypatch, attnscope.analysis.attention, "attention_scores")
    lm = wrap("llama")  # auto: the hook's maps differ, so eager's own weights are kept instead
    assert lm.spec.recording == "materialised"
    assert "differ from eager" in lm.spec.verification.note
    with pytest.raises(ValueError, match=r"cannot be recorded exactly with backend 'sdpa'.*differ from eager's by up to"):
        wrap("llama", backend="sdpa")


def test_a_wrong_capture_is_caught_at_load(monkeypatch):
    """The probe is short, so its maps are captured inside the forward: a wrong capture is caught too."""
    import attnscope.models.hook

    _scale_off_by_ten_percent(monkeypatch, attnscope.models.hook, "full_weights")
    lm = wrap("llama")
    assert lm.spec.recording == "materialised"
    assert "differ from eager" in lm.spec.verification.note


def test_verify_false_skips_the_check():
    lm = wrap("llama", verify=False)
    assert lm.spec.verification is None and "not verified" in lm.spec.recording_label


def test_state_space_model_is_refused_with_the_reason():
    with pytest.raises(ValueError, match=r"no attention heads"):
        wrap("mamba")
