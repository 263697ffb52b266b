"""The mathematics of the lab's patterns (analysis.patterns, analysis.cost), on random tensors.

Reference: transformers' eager attention (softmax(q·kᵀ·scale + mask)·V with grouped-query expansion).
"""

from __future__ import annotations

import math

import pytest
import torch
from transformers.models.llama.modeling_llama import eager_attention_forward

import attnscope.analysis.cost
import attnscope.analysis.patterns
from attnscope.analysis.attention import Tensors
from attnscope.analysis.cost import cost_frame, flash_io, flash_io_frame, kv_cache_frame
from attnscope.analysis.patterns import (
    PATTERNS,
    SVD,
    Full,
    Global,
    Linformer,
    Performer,
    check_pattern,
    coverage_rows,
    parse_pattern,
    pattern_allowed,
    pattern_output,
    pattern_weights,
    sweep_values,
)

B, H, KV, N, D = 2, 4, 2, 12, 8
SCALE = D**-0.5

EVERY = [
    "full",
    "window:3",
    "window:3,causal",
    "dilated:2,2",
    "strided:3",
    "fixed:4,1",
    "global:2,3",
    "global:special,2",
    "global:0+5,2",
    "bigbird:2,1,2",
    "block:4",
    "recurrence:3",
    "recurrence:2,2",
    "svd:3",
    "linformer:4",
    "performer:32",
    "linear",
    "topk:3",
    "kv:1",
    "kv:2",
    "scale:0.5",
    "scale:2",
]


class _Module(torch.nn.Module):
    num_key_value_groups = H // KV


def tensors(seed: int = 0, n: int = N):
    g = torch.Generator().manual_seed(seed)
    query = torch.randn(B, H, n, D, generator=g) * 1.5  # [B, H, n, d]
    key = torch.randn(B, KV, n, D, generator=g) * 1.5  # [B, KV, n, d]
    value = torch.randn(B, KV, n, D, generator=g)
    return query, key, value


def padded_causal(n: int = N, pad: int = 3) -> torch.Tensor:
    """bool [B, 1, n, n]: causal, and text 1 left-padded by ``pad`` positions."""
    real = torch.ones(B, n, dtype=torch.bool)
    real[1, :pad] = False
    causal = torch.tril(torch.ones(n, n, dtype=torch.bool))
    return causal[None, None] & real[:, None, None, :]


def eager(query, key, value, mask: torch.Tensor):
    additive = torch.zeros(mask.shape).masked_fill(~mask, torch.finfo(torch.float32).min)
    return eager_attention_forward(_Module(), query, key, value, additive, scaling=SCALE)  # ([B, n, H, d], [B, H, n, n])


@pytest.mark.parametrize("mask", ["full", "causal", "padded"])
def test_full_pattern_equals_eager_attention(mask):
    query, key, value = tensors()
    spec = padded_causal() if mask == "padded" else mask
    bool_mask = (
        padded_causal()
        if mask == "padded"
        else (
            torch.ones(B, 1, N, N, dtype=torch.bool)
            if mask == "full"
            else torch.tril(torch.ones(N, N, dtype=torch.bool))[None, None].expand(B, 1, N, N)
        )
    )
    out_ref, weights_ref = eager(query, key, value, bool_mask)
    for b in range(B):
        weights = pattern_weights(Full(), Tensors(query, key, spec, SCALE), batch=b)
        rows = bool_mask[b, 0].any(-1)  # padding queries (no key allowed) are the kernel's business, unused
        torch.testing.assert_close(weights[:, rows], weights_ref[b][:, rows], atol=1e-6, rtol=1e-5)
    out = pattern_output(Full(), Tensors(query, key, spec, SCALE), value=value)
    torch.testing.assert_close(out[0], out_ref[0], atol=1e-5, rtol=1e-5)  # text 0 has no padding rows


@pytest.mark.parametrize("label", EVERY)
def test_every_pattern_keeps_rows_summing_to_one_and_the_models_mask(label):
    query, key, value = tensors(1)
    mask = padded_causal()
    special = torch.zeros(B, N, dtype=torch.bool)
    special[:, -1] = True
    for b in range(B):
        weights = pattern_weights(parse_pattern(label), Tensors(query, key, mask, SCALE), batch=b, special=special[b])  # [H, n, n]
        allowed = mask[b, 0]
        real_rows = allowed.any(-1)
        assert bool((weights >= 0).all())
        assert float(weights[:, ~allowed].abs().max()) == 0.0  # future keys and padding keys get exactly 0
        torch.testing.assert_close(weights[:, real_rows].sum(-1), torch.ones(H, int(real_rows.sum())), atol=1e-5, rtol=0)


@pytest.mark.parametrize("mask", ["full", "causal"])
def test_window_as_long_as_the_text_is_full_attention_exactly(mask):
    query, key, _ = tensors(2)
    full = pattern_weights(Full(), Tensors(query, key, mask, SCALE), batch=0)
    for label in (f"window:{N}", f"window:{N},causal" if mask == "causal" else f"window:{N}", f"block:{N}", f"strided:{N}"):
        assert torch.equal(pattern_weights(parse_pattern(label), Tensors(query, key, mask, SCALE), batch=0), full), label
    assert not torch.equal(pattern_weights(parse_pattern(f"window:{N - 4}"), Tensors(query, key, mask, SCALE), batch=0), full)


def test_global_all_tokens_is_full_and_topk_n_is_full():
    query, key, _ = tensors(3)
    for mask in ("full", padded_causal()):
        full = pattern_weights(Full(), Tensors(query, key, mask, SCALE), batch=1)
        all_global = Global(width=1, positions=tuple(range(N)))
        assert torch.equal(pattern_weights(all_global, Tensors(query, key, mask, SCALE), batch=1), full)
        assert torch.equal(pattern_weights(parse_pattern(f"global:{N},1"), Tensors(query, key, mask, SCALE), batch=1), full)
        assert torch.equal(pattern_weights(parse_pattern(f"topk:{N}"), Tensors(query, key, mask, SCALE), batch=1), full)
        assert torch.equal(pattern_weights(parse_pattern(f"bigbird:1,0,{N}"), Tensors(query, key, mask, SCALE), batch=1), full)


def test_sparse_masks_have_their_shape():
    n = 16
    window = pattern_allowed(parse_pattern("window:3"), n, n)
    i, j = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    assert torch.equal(window, (i - j).abs() < 3)
    assert torch.equal(pattern_allowed(parse_pattern("window:3,causal"), n, n), ((i - j) >= 0) & ((i - j) < 3))
    assert torch.equal(pattern_allowed(parse_pattern("dilated:2,3"), n, n), ((i - j).abs() % 3 == 0) & ((i - j).abs() < 6))
    assert torch.equal(pattern_allowed(parse_pattern("block:4"), n, n), (i // 4) == (j // 4))
    strided = pattern_allowed(parse_pattern("strided:4"), n, n)
    assert bool(strided[15, 3]) and bool(strided[15, 12]) and not bool(strided[15, 10])  # distance 12 and 3 kept, 5 dropped
    big = pattern_allowed(parse_pattern("bigbird:2,1,3"), n, n, model_allowed=torch.tril(torch.ones(n, n, dtype=torch.bool)))
    extra = big & ~pattern_allowed(parse_pattern("global:1,2"), n, n)  # the random keys
    causal_room = torch.tril(torch.ones(n, n, dtype=torch.bool)) & ~pattern_allowed(parse_pattern("global:1,2"), n, n)
    assert torch.equal(extra.sum(-1), causal_room.sum(-1).clamp(max=3))  # r per query where there is room, all causal
    assert torch.equal(
        big, pattern_allowed(parse_pattern("bigbird:2,1,3"), n, n, model_allowed=torch.tril(torch.ones(n, n, dtype=torch.bool)))
    )  # seeded


def test_rank_n_svd_reproduces_the_map_and_lower_rank_loses_mass():
    query, key, _ = tensors(4)
    for mask in ("full", "causal"):
        full = pattern_weights(Full(), Tensors(query, key, mask, SCALE), batch=0)
        torch.testing.assert_close(pattern_weights(SVD(rank=N), Tensors(query, key, mask, SCALE), batch=0), full, atol=1e-5, rtol=0)
        low = pattern_weights(SVD(rank=2), Tensors(query, key, mask, SCALE), batch=0)
        assert float(coverage_rows(full, low).mean()) < 0.99
        coverage = [
            float(coverage_rows(full, pattern_weights(SVD(rank=r), Tensors(query, key, mask, SCALE), batch=0)).mean()) for r in (1, 4, 8)
        ]
        assert coverage == sorted(coverage)


def test_linformer_with_one_key_per_segment_is_full_attention():
    query, key, _ = tensors(5)
    for mask in ("full", padded_causal()):
        full = pattern_weights(Full(), Tensors(query, key, mask, SCALE), batch=1)
        torch.testing.assert_close(pattern_weights(Linformer(rows=N), Tensors(query, key, mask, SCALE), batch=1), full, atol=1e-6, rtol=0)


def test_favor_error_falls_as_features_grow():
    query, key, _ = tensors(6)
    query, key = query * 0.5, key * 0.5  # FAVOR+'s variance grows with |q|·|k|; keep the test well-conditioned
    full = pattern_weights(Full(), Tensors(query, key, "causal", SCALE), batch=0)

    def error(m: int) -> float:  # averaged over seeds: one draw can be lucky
        return (
            sum(
                float((pattern_weights(Performer(features=m, seed=s), Tensors(query, key, "causal", SCALE), batch=0) - full).abs().mean())
                for s in range(6)
            )
            / 6
        )

    errors = [error(m) for m in (4, 32, 256, 2048)]
    assert errors == sorted(errors, reverse=True), errors
    assert errors[-1] < errors[0] / 5


def test_one_kv_head_per_query_head_is_the_model_and_pooling_is_the_mean():
    query, key, value = tensors(7)
    mask = padded_causal()
    out_ref, weights_ref = eager(query, key, value, mask)
    out = pattern_output(attnscope.analysis.patterns.KV(groups=H), Tensors(query, key, mask, SCALE), value=value)
    torch.testing.assert_close(out[0], out_ref[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        pattern_output(attnscope.analysis.patterns.KV(groups=KV), Tensors(query, key, mask, SCALE), value=value)[0],
        out_ref[0],
        atol=1e-5,
        rtol=1e-5,
    )
    # MQA: one key/value head, the mean of the model's KV heads (each read by the same number of query heads)
    mqa_key, mqa_value = key.mean(1, keepdim=True), value.mean(1, keepdim=True)
    _Module.num_key_value_groups = H
    try:
        out_mqa, _ = eager(query, mqa_key, mqa_value, mask)
    finally:
        _Module.num_key_value_groups = H // KV
    torch.testing.assert_close(
        pattern_output(attnscope.analysis.patterns.KV(groups=1), Tensors(query, key, mask, SCALE), value=value)[0],
        out_mqa[0],
        atol=1e-5,
        rtol=1e-5,
    )


def test_coverage_of_full_is_one_and_of_a_sparse_pattern_is_its_kept_mass():
    query, key, _ = tensors(8)
    full = pattern_weights(Full(), Tensors(query, key, "causal", SCALE), batch=0)
    torch.testing.assert_close(coverage_rows(full, full), torch.ones(H, N), atol=1e-6, rtol=0)
    window = pattern_weights(parse_pattern("window:3"), Tensors(query, key, "causal", SCALE), batch=0)
    kept = pattern_allowed(parse_pattern("window:3"), N, N)
    torch.testing.assert_close(coverage_rows(full, window), (full * kept).sum(-1), atol=1e-6, rtol=0)
    top = pattern_weights(parse_pattern("topk:2"), Tensors(query, key, "causal", SCALE), batch=0)
    torch.testing.assert_close(coverage_rows(full, top), full.topk(2, dim=-1).values.sum(-1), atol=1e-6, rtol=0)


@pytest.mark.parametrize("label", ["full", "window:3", "svd:3", "performer:32", "topk:3", "kv:1"])
def test_patterns_refuse_learned_sinks_instead_of_ignoring_them(label):
    query, key, value = tensors(9)
    sinks = torch.zeros(1, H, 1)  # a sink logit per head: exact rows would sum to less than 1
    layer = Tensors(query, key, "causal", SCALE, sinks=sinks)
    with pytest.raises(ValueError, match="learned attention sinks"):
        pattern_weights(parse_pattern(label), layer, batch=0)
    with pytest.raises(ValueError, match="learned attention sinks"):
        pattern_output(parse_pattern(label), layer, value=value)
    # without sinks the same layer is accepted, and the output reads the layer's own values when it holds them
    plain = Tensors(query, key, "causal", SCALE, value=value)
    out = pattern_output(parse_pattern(label), plain)
    torch.testing.assert_close(out, pattern_output(parse_pattern(label), Tensors(query, key, "causal", SCALE), value=value))
    with pytest.raises(ValueError, match="needs the layer's values"):
        pattern_output(parse_pattern(label), Tensors(query, key, "causal", SCALE))


@pytest.mark.parametrize(
    "label, needle",
    [
        ("window:0", "1..12"),
        ("recurrence:0", "segment length 0 must be at least 1"),
        ("svd:0", "rank 0"),
        ("scale:0", r"τ must lie in \(0, 64\]"),
        ("linformer:-1", "1..12"),
        ("performer:100000000", "too much memory"),
        ("kv:3", "divide the 4"),
        ("dilated:2,0", "dilation"),
        ("fixed:3,4", "summary"),
        ("global:0+40,2", "global positions"),
        ("nosuch:3", "unknown pattern"),
        ("window", "needs 1 number"),
        ("window:x", "whole numbers"),
        ("window:3,up", "causal or centred"),
        ("linear:3", "no parameters"),
        ("", "empty pattern"),
    ],
)
def test_bad_pattern_text_and_parameters_say_what_to_use(label, needle):
    """Refused when read (unknown name, malformed numbers) or when checked against a text (out-of-range parameters)."""
    with pytest.raises(ValueError, match=needle):
        check_pattern(parse_pattern(label), N, H)


@pytest.mark.parametrize("label", EVERY)
def test_labels_round_trip(label):
    pattern = parse_pattern(label)
    assert parse_pattern(pattern.label) == pattern and pattern.name in PATTERNS


def test_sweeps_are_valid_and_end_at_full_for_windows():
    values = sweep_values(parse_pattern("window:2"), N, H)
    for pattern in values:
        check_pattern(pattern, N, H)
    assert values[-1].width == N and [p.width for p in values] == sorted(p.width for p in values)
    assert [p.groups for p in sweep_values(parse_pattern("kv:1"), N, H)] == [1, 2, 4]


def test_cost_formulas():
    frame = cost_frame(parse_pattern("window:64"), d=64, n_heads=9, n_layers=30)
    at = frame.set_index(["n", "method"])
    assert at.loc[(32768, "window:64"), "flops_ratio"] == pytest.approx(127 / 32768)
    assert at.loc[(32768, "full"), "gflops"] == pytest.approx(4 * 32768**2 * 64 * 9 * 30 / 1e9)
    performer = cost_frame(parse_pattern("performer:256"), d=64, n_heads=9, n_layers=30).set_index(["n", "method"])
    ratios = [performer.loc[(n, "performer:256"), "flops_ratio"] for n in (1024, 4096, 32768)]
    assert ratios == sorted(ratios, reverse=True)  # linear vs quadratic: the gap widens with n
    cache = kv_cache_frame(n_layers=30, n_heads=9, n_kv_heads=3, head_dim=64).set_index("kind")
    assert cache.loc["GQA-3", "bytes_per_token"] == 2 * 30 * 3 * 64 * 2 and bool(cache.loc["GQA-3", "model"])
    assert cache.loc["MQA", "ratio"] == pytest.approx(1 / 9) and cache.loc["MHA", "mb_per_sequence"] == pytest.approx(
        2 * 30 * 9 * 64 * 2 * 4096 / 2**20
    )


def test_flash_io_follows_the_papers_counts():
    n, d, sram = 4096, 64, 100 * 1024
    standard, flash = flash_io(n, d, sram)
    assert standard == 4 * n * d + 4 * n * n
    m = sram / 2
    assert flash == pytest.approx(12 * n * n * d * d / m, rel=0.1)  # Θ(N²d²/M): 12 = 3 (Q, O in; O out) x 4 (B_c = M / 4d)
    frame = flash_io_frame(d, sram).pivot(index="n", columns="method", values="hbm_mb")
    assert (frame["FlashAttention"] < frame["standard"]).all()
    bigger = flash_io_frame(d, 4 * sram).pivot(index="n", columns="method", values="hbm_mb")
    assert (bigger["FlashAttention"] < frame["FlashAttention"]).all()  # more SRAM, fewer passes over Q and O
    with pytest.raises(ValueError, match="cannot hold"):
        flash_io_frame(d, 64)


def test_public_surface():
    for module in (attnscope.analysis.patterns, attnscope.analysis.cost):
        assert all(getattr(module, name, None) is not None for name in module.__all__)
    assert math.isfinite(attnscope.analysis.cost.keys_per_query(parse_pattern("bigbird:3,2,2"), 100))
