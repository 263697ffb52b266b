"""FlashAttention on a CUDA GPU: attention maps and hidden states match eager within bf16 tolerance.

Run on a GPU machine: ``python -m pytest tests/gpu -q``. Without CUDA every test skips with the reason.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attnscope.analysis.backends import compare_records
from attnscope.models import load, run
from attnscope.models.flash import flash_kernel_name

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="FlashAttention needs a CUDA GPU; none is available here")

TEXTS = ["The mouse ate the cheese in the old kitchen, then ran under the table.", "Click the mouse."]


@pytest.fixture(scope="module")
def pair():
    """SmolLM2 in bfloat16 on the GPU, eager and flash."""
    eager = load("smollm2", backend="eager", device="cuda", dtype="bfloat16")
    flash = load("smollm2", backend="flash", device="cuda")
    return eager, flash


def test_flash_loads_in_bf16_on_cuda(pair):
    _, flash = pair
    assert (flash.spec.backend, flash.spec.dtype) == ("flash", "bfloat16")
    assert flash.spec.device.startswith("cuda")
    print("flash kernel:", flash_kernel_name())


@pytest.mark.parametrize("side", ["right", "left"])
def test_flash_maps_and_hidden_match_eager(pair, side):
    eager, flash = pair
    rec_e = run(eager, TEXTS, padding_side=side)
    rec_f = run(flash, TEXTS, padding_side=side)
    for batch in range(2):
        # Layer 0 sees identical q/k with both kernels: its maps agree to float32 rounding.
        for head in range(flash.spec.n_heads):
            np.testing.assert_allclose(rec_f.attention(0, head, batch), rec_e.attention(0, head, batch), atol=1e-6)
        result = compare_records(rec_e, rec_f, batch=batch, models=(eager, flash))
        # Deeper layers differ by bf16 rounding of the attention outputs carried through the residual stream.
        assert result.max_map_diff < 0.05, result.maps.sort_values("max_abs_diff").tail()
        assert result.hidden["relative"].max() < 0.05, result.hidden
        assert result.logits["top1_agreement"] >= 0.9
        for layer in (0, flash.spec.n_layers - 1):
            a = rec_f.attention(layer, 0, batch)
            np.testing.assert_allclose(a.sum(-1), 1.0, atol=1e-5)  # recomputed in float32 from bf16 q/k


def test_flash_matches_transformers_eager_reference(pair):
    """The reference: transformers' own eager attention with output_attentions=True, in bf16."""
    eager, flash = pair
    rec_f = run(flash, TEXTS[0])
    base = eager.model.base_model
    base.set_attn_implementation("eager")
    try:
        with torch.inference_mode():
            out = base(**{k: v.to("cuda") for k, v in rec_f.inputs.items()}, output_attentions=True, use_cache=False)
    finally:
        base.set_attn_implementation("attnscope_eager")
    worst = 0.0
    for layer in range(flash.spec.n_layers):
        ref = out.attentions[layer][0].float().cpu().numpy()  # [H, n, n]
        for head in range(flash.spec.n_heads):
            worst = max(worst, float(np.abs(rec_f.attention(layer, head) - ref[head]).max()))
    assert worst < 0.05


def test_flash_long_input_keeps_maps(pair):
    """2,048 tokens through flash: every map still available, rows sum to 1, causal."""
    _, flash = pair
    text = "The mouse ran across the kitchen floor while the cat watched. " * 200
    rec = run(flash, text, max_length=2048)
    a = rec.attention(flash.spec.n_layers - 1, 3)
    assert a.shape == (2048, 2048)
    np.testing.assert_allclose(a.sum(-1), 1.0, atol=1e-4)
    assert float(np.triu(a, k=1).max()) == 0.0


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="sharding with device='auto' needs 2 or more GPUs")
def test_auto_device_map_shards_across_gpus():
    lm = load("smollm2", backend="sdpa", device="auto")
    devices = set(map(str, lm.model.hf_device_map.values()))
    assert len(devices) >= 2
    rec = run(lm, TEXTS[0])
    np.testing.assert_allclose(rec.attention(lm.spec.n_layers - 1, 0).sum(-1), 1.0, atol=1e-5)
