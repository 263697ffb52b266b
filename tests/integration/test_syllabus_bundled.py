"""The syllabus additions on the two bundled models: SmolLM2's chunked Transformer-XL run equals the banded-block mask
in one pass, a window wider than the text is full attention on both, the temperature sweep, and the anatomy of each."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attnscope.models.anatomy import anatomy, embedding_parts, heads_table, residual_norms
from attnscope.models.forward import run, tokenize
from attnscope.models.lab import imposing, lab_effect, lab_scale, recurrent_forward

pytestmark = pytest.mark.slow

TEXT = (
    "The mouse ran under the table, and the cat waited by the door for a long time. When the mouse came back, "
    "the cat had fallen asleep in the warm afternoon sun."
)


def banded(n: int, segment: int, memory: int) -> torch.Tensor:
    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    return (j <= i) & (j // segment >= i // segment - memory)


@pytest.mark.parametrize("segment, memory", [(8, 1), (5, 2)])
def test_smollm2_chunked_recurrence_equals_the_banded_mask(smollm2, segment, memory):
    enc, _ = tokenize(smollm2, [TEXT])
    ids = enc["input_ids"]
    n = ids.shape[1]
    mask = torch.where(banded(n, segment, memory), 0.0, torch.finfo(torch.float32).min)[None, None]
    with torch.inference_mode():
        reference = smollm2.model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        with imposing(smollm2, f"recurrence:{segment},{memory}"):
            imposed = smollm2.model(input_ids=ids, use_cache=False).logits
    chunked = recurrent_forward(smollm2, TEXT, f"recurrence:{segment},{memory}")
    scale = float(reference.abs().max())
    torch.testing.assert_close(chunked.logits, reference, atol=1e-4 * scale, rtol=0)
    torch.testing.assert_close(imposed, reference, atol=1e-4 * scale, rtol=0)
    assert max(chunked.cache_tokens) == (memory + 1) * segment


@pytest.mark.parametrize("which", ["smollm2", "minilm"])
def test_a_window_wider_than_the_text_is_the_model_itself(request, which):
    lm = request.getfixturevalue(which)
    effect = lab_effect(lm, "The mouse ran.", "window:4096")
    assert effect.saturated == "covers the whole text" and effect.cosine == pytest.approx(1.0, abs=1e-6)
    assert effect.kl in (None, 0.0) and (effect.kl is None or effect.top1_kept == 1.0)


def test_smollm2_temperature_sweep(smollm2):
    sweep = lab_scale(smollm2, TEXT, taus=(0.25, 1.0, 4.0))
    summary = sweep.summary.set_index("tau")
    assert summary.loc[1.0, "kl"] < 1e-4 and summary.loc[4.0, "kl"] > summary.loc[1.0, "kl"]
    assert summary.loc[0.25, "entropy"] > summary.loc[1.0, "entropy"] > summary.loc[4.0, "entropy"]
    assert sweep.head_dim == 64 and "√64 ≈ 8.0" in sweep.line


def test_anatomy_of_the_bundled_models(smollm2, minilm):
    smol, mini = anatomy(smollm2), anatomy(minilm)
    for lm, facts in ((smollm2, smol), (minilm, mini)):
        assert facts.parameters["total"] == sum(p.numel() for p in lm.model.parameters())
        own = heads_table(facts).query("model")
        for part in "qkvo":
            assert int(own[part].iloc[0]) * facts.attention_blocks == facts.parameters[f"attention_{part}"]
    assert (smol.norm_placement, smol.positional, smol.lm_head_tied) == ("pre", "rotary", True)
    assert (mini.norm_placement, mini.positional, mini.lm_head_tied) == ("post", "learned absolute", None)
    assert (smol.n_heads, smol.n_kv_heads, smol.head_dim) == (9, 3, 64) and smol.kv_cache_bytes_per_token == 2 * 30 * 3 * 64 * 4
    growth = residual_norms(run(smollm2, TEXT))["mean_norm"].to_numpy()
    flat = residual_norms(run(minilm, TEXT))["mean_norm"].to_numpy()
    assert growth[-2] > 100 * growth[0] and flat.max() < 2 * flat[0]  # Pre-LN grows with depth, Post-LN does not
    parts, check = embedding_parts(minilm, run(minilm, TEXT))
    assert check < 1e-5 and np.isfinite(parts["norm"]).all()
