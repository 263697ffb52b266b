"""The spec carries the model's real head size, and the memory guard's estimate uses it: Gemma and Qwen3
set ``head_dim`` apart from hidden_size / num_attention_heads."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
from transformers import BertConfig, ConvBertConfig, DeepseekV3Config, T5Config

from attnscope.models import run
from attnscope.models.budget import footprint
from attnscope.models.limits import estimate_run_bytes, estimate_run_parts
from attnscope.models.loaded import head_size
from tests import tiny

HIDDEN, HEADS, KV_HEADS = 32, 4, 2
WIDE = 3 * HIDDEN // HEADS  # 24: three times hidden / heads
TEXT = "The mouse ate the cheese, then the cat chased the mouse."


def build(arch: str, head_dim: int):
    config = tiny.config_for(arch, hidden=HIDDEN, heads=HEADS, kv_heads=KV_HEADS, head_dim=head_dim)
    return tiny.causal(config, name=f"tiny-{arch}-d{head_dim}", backend="sdpa")


@pytest.fixture(scope="module", params=["qwen3", "gemma"])
def wide(request):
    return build(request.param, WIDE)


def test_spec_reads_head_dim_from_the_config(wide):
    assert wide.spec.head_dim == WIDE != wide.spec.d_model // wide.spec.n_heads
    assert wide.spec.verification.passed  # the recorded maps are exact at this head size


def test_estimate_scales_with_head_dim(wide):
    narrow = build(wide.spec.model_type, HIDDEN // HEADS)
    assert narrow.spec.head_dim == 8
    n = 256
    attention_wide = estimate_run_parts(wide.model.config, wide.spec, 1, n, False)["attention"]
    attention_narrow = estimate_run_parts(narrow.model.config, narrow.spec, 1, n, False)["attention"]
    assert attention_wide == 2 * 1 * (HEADS + KV_HEADS) * n * WIDE * 4
    assert attention_wide == 3 * attention_narrow
    total_wide = estimate_run_bytes(wide.model.config, wide.spec, 1, n, False)
    total_narrow = estimate_run_bytes(narrow.model.config, narrow.spec, 1, n, False)
    assert total_wide - total_narrow == attention_wide - attention_narrow


def test_estimate_covers_what_a_run_records(wide):
    rec = run(wide, TEXT)
    n = rec.n_padded
    recorded = [layer for layer in rec.layers if layer is not None]
    assert recorded[0].query.shape == (1, HEADS, n, WIDE) and recorded[0].key.shape == (1, KV_HEADS, n, WIDE)
    measured = footprint([(layer.query, layer.key) for layer in recorded])
    qk_bytes = sum(measured.buffers.values())
    assert qk_bytes >= len(recorded) * (HEADS + KV_HEADS) * n * WIDE * 4
    assert estimate_run_parts(wide.model.config, wide.spec, 1, n, False)["attention"] >= qk_bytes
    # hidden / heads (what the estimate used before) falls short by the factor 3
    guessed = dataclasses.replace(wide.spec, head_dim=0)
    assert estimate_run_parts(wide.model.config, guessed, 1, n, False)["attention"] * 3 <= qk_bytes * 1.01


def test_head_size_of_other_configs():
    assert head_size(BertConfig(), 12) == 64
    assert head_size(T5Config(d_model=512, num_heads=6, d_kv=64), 6) == 64  # mT5-small: d_kv, not 512 / 6
    assert head_size(DeepseekV3Config(), 128) == 192  # latent attention: nope 128 + rope 64 per query/key head
    assert head_size(ConvBertConfig(hidden_size=768, num_attention_heads=12, head_ratio=2), 6) == 64
    assert head_size(SimpleNamespace(head_dim=None, hidden_size=32, num_attention_heads=4), 4) == 8
    assert head_size(SimpleNamespace(model_type="odd"), 4) == 1  # nothing to go on: a sane floor, not a crash
