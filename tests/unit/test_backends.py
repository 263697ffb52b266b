"""Backends on tiny models: eager and SDPA record the same thing, flash's plumbing, device maps, comparison math."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import attnscope.models.flash as flash
from attnscope.analysis.backends import compare_records, hidden_diff_frame, logits_diff, map_diff_frame, max_abs_diff
from attnscope.analysis.bench_results import ratio_frame, scaling_frame
from attnscope.models import load, run
from attnscope.models.hook import IMPL_NAMES, Recorder, _expand_padding_mask

TEXTS = ["The mouse ran under the old table.", "Click the mouse."]


def _all_maps(rec, batch):
    return np.stack([[rec.attention(l, h, batch) for h in range(rec.spec.n_heads)] for l in range(rec.spec.n_layers)])


# -- eager vs sdpa -------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["llama_gqa", "bert", "gpt2"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_eager_and_sdpa_records_match(tiny_factory, arch, side):
    rec_e = run(tiny_factory(arch, "eager"), TEXTS, padding_side=side)
    rec_s = run(tiny_factory(arch, "sdpa"), TEXTS, padding_side=side)
    for batch in range(2):
        np.testing.assert_allclose(_all_maps(rec_e, batch), _all_maps(rec_s, batch), atol=1e-5)
        for layer in range(rec_e.spec.n_layers + 1):
            np.testing.assert_allclose(rec_e.hidden(layer, batch), rec_s.hidden(layer, batch), atol=1e-5)


# -- flash: refusal, registration, the flash-attn mask path ---------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: flash is allowed here")
def test_flash_refused_without_cuda():
    with pytest.raises(ValueError, match="backend 'flash' needs a CUDA GPU and none is available here; use backend='sdpa'"):
        load("smollm2", backend="flash")  # unit-allowed: refused before any weight is read
    assert "CUDA GPU" in flash.flash_unavailable_reason()


def test_flash_refuses_cpu_device_and_float32(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert flash.flash_unavailable_reason() is None
    assert flash.flash_unavailable_reason(device="cuda", dtype=torch.bfloat16) is None
    assert "device='cuda'" in flash.flash_unavailable_reason(device="cpu")
    assert "float16 or bfloat16" in flash.flash_unavailable_reason(dtype=torch.float32)
    with pytest.raises(ValueError, match="float16 or bfloat16"):
        load("smollm2", backend="flash", device="auto", dtype="float32")  # unit-allowed: refused before any weight is read


def test_flash_name_is_not_taken_for_a_flash_attn_kernel():
    # transformers treats any implementation name containing "flash" as a flash-attn kernel to import.
    assert "flash" not in IMPL_NAMES["flash"]
    from transformers.utils.generic import is_flash_attention_requested

    assert not is_flash_attention_requested(requested_attention_implementation=IMPL_NAMES["flash"])


def _reference_flash_attn(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Stands in for flash-attn: takes its [B, kv] padding mask (or None) and computes exact attention."""
    assert attention_mask is None or attention_mask.ndim == 2  # what flash_attention_mask hands over
    b, h, n, _ = query.shape
    is_causal = kwargs.get("is_causal", module.is_causal)
    padding = torch.ones(b, n, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    allowed = _expand_padding_mask(padding, is_causal)  # [B, 1, n, n]
    k = key.repeat_interleave(h // key.shape[1], dim=1)
    v = value.repeat_interleave(h // value.shape[1], dim=1)
    scores = (query @ k.transpose(-1, -2)) * scaling
    weights = torch.softmax(scores.masked_fill(~allowed, torch.finfo(scores.dtype).min), dim=-1)
    return (weights @ v).transpose(1, 2), None  # [B, n, H, d]


@pytest.mark.parametrize("arch", ["llama_gqa", "bert"])
def test_flash_attn_mask_path_records_the_same_maps(tiny_factory, monkeypatch, arch):
    """With flash-attn installed the mask function gives a [B, kv] padding mask or None; the recorder must expand it right."""
    monkeypatch.setattr(flash, "has_flash_attn_package", lambda: True)
    monkeypatch.setattr(flash, "_flash_attn_forward", _reference_flash_attn)
    lm_flash = tiny_factory(arch, "flash")
    lm_sdpa = tiny_factory(arch, "sdpa")
    for side in ("left", "right"):
        rec_f = run(lm_flash, TEXTS, padding_side=side)
        rec_s = run(lm_sdpa, TEXTS, padding_side=side)
        assert rec_f.layers[0].mask.shape == rec_s.layers[0].mask.shape  # expanded to [B, 1, n, n]
        for batch in range(2):
            np.testing.assert_allclose(_all_maps(rec_f, batch), _all_maps(rec_s, batch), atol=1e-5)
            np.testing.assert_allclose(rec_f.hidden(rec_f.spec.n_layers, batch), rec_s.hidden(rec_s.spec.n_layers, batch), atol=1e-5)
    unpadded = run(lm_flash, TEXTS[0])
    assert unpadded.layers[0].mask == ("causal" if arch == "llama_gqa" else "full")


def test_flash_sdpa_fallback_runs_the_forced_kernel(tiny_factory):
    """Without flash-attn, flash is SDPA with FLASH_ATTENTION forced (+ EFFICIENT when padded); CPU has that kernel too."""
    rec_f = run(tiny_factory("llama_gqa", "flash"), TEXTS, padding_side="left")
    rec_s = run(tiny_factory("llama_gqa", "sdpa"), TEXTS, padding_side="left")
    for batch in range(2):
        np.testing.assert_allclose(rec_f.hidden(2, batch), rec_s.hidden(2, batch), atol=1e-5)


def test_padding_mask_expansion():
    padding = torch.tensor([[0, 1, 1, 1]])  # int mask, one left pad
    causal = _expand_padding_mask(padding.bool(), True)[0, 0]
    expected = torch.tensor([[0, 0, 0, 0], [0, 1, 0, 0], [0, 1, 1, 0], [0, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(causal, expected)
    window = _expand_padding_mask(torch.ones(1, 4, dtype=torch.bool), True, window=2)[0, 0]
    assert torch.equal(window, torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]], dtype=torch.bool))
    module = torch.nn.Module()
    module.is_causal = True
    q = k = torch.zeros(1, 2, 4, 8)  # [B, H, n, d]
    spec = Recorder().mask_spec(module, padding, {}, q, k, "flash")  # an int [B, kv] mask: 1 = real token
    assert torch.equal(spec[0, 0], expected)
    assert Recorder().mask_spec(module, None, {"sliding_window": 8}, q, k, "flash") == "causal"  # window longer than the text
    assert torch.equal(Recorder().mask_spec(module, None, {"sliding_window": 2}, q, k, "flash")[0, 0], window)
    assert Recorder().mask_spec(module, None, {}, q, k, "eager") == "full"  # eager applies nothing without a mask
    assert Recorder().mask_spec(module, None, {}, q[:, :, :1], k, "sdpa") == "full"  # one query: a decoding step


# -- device maps ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved_tiny_llama(tmp_path_factory):
    from tests import tiny

    lm = tiny.build("llama_gqa")
    path = tmp_path_factory.mktemp("tiny_llama")
    lm.model.save_pretrained(path)
    lm.tokenizer.save_pretrained(path)
    return lm, path


PARTS = ("model.embed_tokens", "model.rotary_emb", "model.layers.0", "model.layers.1", "model.norm", "lm_head")


@pytest.mark.parametrize("offload", [False, True], ids=["split-cpu", "disk-offload"])
def test_device_map_recording_equals_plain_run(saved_tiny_llama, offload):
    plain, path = saved_tiny_llama
    device_map = {part: "cpu" for part in PARTS}
    if offload:  # layer 1 and the head live on disk: accelerate hooks load them per forward
        device_map.update({"model.layers.1": "disk", "lm_head": "disk"})
    lm = load(str(path), device_map=device_map)
    if offload:
        assert hasattr(lm.model.model.layers[1], "_hf_hook")
        assert lm.model.model.layers[1].self_attn.q_proj.weight.device.type == "meta"
    rec = run(lm, TEXTS, padding_side="left")
    ref = run(plain, TEXTS, padding_side="left")
    for batch in range(2):
        np.testing.assert_allclose(_all_maps(rec, batch), _all_maps(ref, batch), atol=1e-6)
        np.testing.assert_allclose(rec.hidden(2, batch), ref.hidden(2, batch), atol=1e-5)
        np.testing.assert_allclose(rec.logits(lm, batch), ref.logits(plain, batch), atol=1e-4)


def test_input_device_skips_offloaded_weights():
    from attnscope.models.loaded import input_device

    model = torch.nn.Linear(2, 2, device="meta")
    assert input_device(model) == torch.device("cpu")
    assert input_device(torch.nn.Linear(2, 2)) == torch.device("cpu")


# -- measuring ------------------------------------------------------------------------------------


# -- comparison math on known arrays --------------------------------------------------------------
def test_max_abs_diff_and_hidden_frame():
    a = [np.zeros((2, 3)), np.array([[1.0, -4.0], [2.0, 0.0]])]
    b = [np.zeros((2, 3)), np.array([[1.5, -4.0], [2.0, 0.25]])]
    assert max_abs_diff(a[1], b[1]) == 0.5
    frame = hidden_diff_frame(a, b)
    assert frame["layer"].tolist() == [0, 1]
    assert frame["max_abs_diff"].tolist() == [0.0, 0.5]
    assert frame["max_abs"].tolist() == [0.0, 4.0]
    assert frame["relative"].tolist() == [0.0, 0.125]
    with pytest.raises(ValueError, match="same text"):
        max_abs_diff(np.zeros(2), np.zeros(3))


def test_map_diff_frame_and_logits_diff():
    a = np.zeros((2, 3, 4, 4))
    b = a.copy()
    b[1, 2, 0, 3] = 0.25
    b[0, 1, 2, 2] = -0.125
    frame = map_diff_frame(a, b)
    assert len(frame) == 6
    lookup = {(r.layer, r.head): r.max_abs_diff for r in frame.itertuples()}
    assert lookup[(1, 2)] == 0.25 and lookup[(0, 1)] == 0.125 and lookup[(0, 0)] == 0.0
    la = np.array([[1.0, 3.0, 0.0], [5.0, 0.0, 1.0]])
    lb = np.array([[1.0, 2.0, 2.5], [5.0, 0.5, 1.0]])
    out = logits_diff(la, lb)
    assert out == {"max_abs_diff": 2.5, "max_abs": 5.0, "top1_agreement": 0.5}


def test_scaling_and_ratio_frames():
    rows = [
        {"backend": "eager", "tokens": 512, "ms_per_forward": 40.0, "peak_mb": 300.0},
        {"backend": "flash", "tokens": 512, "ms_per_forward": 10.0, "peak_mb": 20.0},
        {"backend": "eager", "tokens": 256, "ms_per_forward": 12.0, "peak_mb": 80.0},
        {"backend": "flash", "tokens": 256, "ms_per_forward": 6.0, "peak_mb": 10.0},
        {"backend": "eager", "tokens": 8192, "error": "skipped"},
    ]
    frame = scaling_frame(rows)
    assert frame[["backend", "tokens"]].values.tolist() == [["eager", 256], ["eager", 512], ["eager", 8192], ["flash", 256], ["flash", 512]]
    assert np.isnan(frame.loc[2, "ms_per_forward"]) and frame.loc[2, "error"] == "skipped"
    ratios = ratio_frame(frame.dropna(subset=["ms_per_forward"]), "eager", "flash")
    assert ratios["tokens"].tolist() == [256, 512]
    assert ratios["speedup"].tolist() == [2.0, 4.0]
    assert ratios["memory_ratio"].tolist() == [8.0, 15.0]
    with pytest.raises(ValueError, match="bench/backends.py"):
        ratio_frame(frame, "eager", "sdpa")


def test_compare_records_matches_direct_numpy(tiny_factory):
    lm_e, lm_s = tiny_factory("llama_gqa", "eager"), tiny_factory("llama_gqa", "sdpa")
    rec_e, rec_s = run(lm_e, TEXTS[0]), run(lm_s, TEXTS[0])
    result = compare_records(rec_e, rec_s, models=(lm_e, lm_s))
    n_layers, n_heads = rec_e.spec.n_layers, rec_e.spec.n_heads
    expected_hidden = [float(np.abs(rec_e.hidden(l).astype(np.float64) - rec_s.hidden(l)).max()) for l in range(n_layers + 1)]
    assert result.hidden["max_abs_diff"].tolist() == expected_hidden
    expected_maps = [
        float(np.abs(rec_e.attention(l, h).astype(np.float64) - rec_s.attention(l, h)).max())
        for l in range(n_layers)
        for h in range(n_heads)
    ]
    assert result.maps["max_abs_diff"].tolist() == expected_maps
    assert result.logits["max_abs_diff"] == float(np.abs(rec_e.logits(lm_e).astype(np.float64) - rec_s.logits(lm_s)).max())
    per_layer = result.per_layer()
    assert np.isnan(per_layer.loc[0, "map_max_abs_diff"])
    assert per_layer.loc[1, "map_max_abs_diff"] == max(expected_maps[:n_heads])
    with pytest.raises(ValueError, match="same text"):
        compare_records(rec_e, run(tiny_factory("llama_gqa", "sdpa"), TEXTS[1]))


# -- charts and the bench table -------------------------------------------------------------------
def test_charts_round_trip(tiny_factory):
    from attnscope.viz.backends import layer_diff_chart, scaling_chart

    rec = run(tiny_factory("bert", "sdpa"), TEXTS[0])
    per_layer = compare_records(rec, rec).per_layer()
    spec = layer_diff_chart(per_layer, label_a="eager", label_b="sdpa").to_dict()
    assert spec["title"] == "max |eager − sdpa| per layer"
    assert min(row["plotted"] for row in next(iter(spec["datasets"].values()))) == 1e-12  # exact zeros drawn at the floor
    frame = scaling_frame([{"backend": "eager", "tokens": 256, "ms_per_forward": 1.0, "peak_mb": 0.0}])
    scaling = scaling_chart(frame).to_dict()
    assert len(scaling["hconcat"]) == 2
    with pytest.raises(ValueError, match="per_layer"):
        layer_diff_chart(pd.DataFrame({"layer": [0]}))


def test_bench_table_ratios():
    from bench.backends import eager_attention_gb, table

    rows = [
        {"backend": "eager", "tokens": 256, "ms_per_forward": 40.0, "peak_mb": 300.0},
        {"backend": "sdpa", "tokens": 256, "ms_per_forward": 10.0, "peak_mb": 30.0},
        {"backend": "attnscope-sdpa", "tokens": 256, "ms_per_forward": 12.0, "peak_mb": 60.0},
        {"backend": "eager", "tokens": 8192, "error": "skipped: needs 72 GB"},
    ]
    text = table(rows)
    lines = text.splitlines()
    assert "| 256 | sdpa | 10.0 | 30 | 4.00x | 10.0x less |" in lines[3]
    assert "+20% time" in lines[4]
    assert "skipped: needs 72 GB" in lines[5]
    assert round(eager_attention_gb(8192, 4), 1) == 67.5


def test_best_of_trials_keeps_the_fastest_and_states_the_spread():
    from bench.backends import best_of_trials

    trials = [
        {"backend": "sdpa", "tokens": 256, "ms_per_forward": 150.0, "peak_mb": 6.0},
        {"backend": "sdpa", "tokens": 256, "ms_per_forward": 100.0, "peak_mb": 5.0},
        {"error": "killed"},
    ]
    best = best_of_trials(trials)
    assert best["ms_per_forward"] == 100.0 and best["ms_trials"] == [150.0, 100.0]
    assert best["spread_pct"] == 50.0 and best["peak_mb"] == 6.0  # memory: the worst trial
    assert "error" in best_of_trials([{"error": "killed"}])
    frame = scaling_frame([best])
    assert frame["spread_pct"].tolist() == [50.0]
