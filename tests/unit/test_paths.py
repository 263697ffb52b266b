"""The two exact paths to the maps: captured inside the forward (short inputs) and recomputed from q/k.

Parity of every head against eager on both paths is in test_parity_tiny.py; statistics on both paths
against brute force in test_engine.py. Here: the choice, the statistics' formulas on their own, and the
refusals.
"""

import numpy as np
import pytest
import torch

import attnscope.models.forward
import attnscope.models.record
from attnscope.analysis.heads import weight_stats
from attnscope.models import run
from tests.parity import brute_stats, eager_reference, strip

TEXTS = ["The mouse ate the cheese in the kitchen.", "Click the mouse."]


@pytest.mark.parametrize("causal", [False, True])
def test_weight_stats_both_ways_equal_brute_force(causal):
    """Entropy from q/k (lse at the query's own key, or at the row's largest weight where that one underflows)
    and from xlogy, distances from row/column sums (causal) or against |i - j|: all equal the definitions."""
    gen = torch.Generator().manual_seed(0)
    n_layers, n_heads, n_kv, m, d = 2, 4, 2, 9, 8
    scaling = d**-0.5
    query = torch.randn(n_layers, n_heads, m, d, generator=gen, dtype=torch.float64) * 2
    key = torch.randn(n_layers, n_kv, m, d, generator=gen, dtype=torch.float64) * 2
    own = key[0, 0, 3]
    query[0, 1, 3] = -600 * own / own.dot(own)  # head 1 reads KV head 0: its own key scores -600·scale, A_33 = 0 in float32
    keys = key.repeat_interleave(n_heads // n_kv, dim=1)  # [L, H, m, d]
    scores = scaling * query @ keys.transpose(-1, -2)  # [L, H, m, m], float64 reference
    if causal:
        scores = scores.masked_fill(torch.ones(m, m, dtype=torch.bool).triu(1), float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    assert float(weights[0, 1, 3, 3].float()) == 0.0  # underflows in float32: the fallback row really is exercised
    special = torch.zeros(m, dtype=torch.bool)
    special[[0, m - 1]] = True
    punct = torch.zeros(m, dtype=torch.bool)
    punct[4] = True
    common = dict(special_keys=special, punctuation_keys=punct, left_only=causal)
    from_qk = weight_stats(weights.float(), query=query.float(), key=key.float(), scaling=scaling, **common)
    from_log = weight_stats(weights.float(), **common)
    for layer in range(n_layers):
        for head in range(n_heads):
            expected = brute_stats(weights[layer, head].numpy(), special.numpy(), punct.numpy())
            for name, value in expected.items():
                assert from_qk[name][layer, head] == pytest.approx(value, abs=2e-5), (name, layer, head, "q/k")
                assert from_log[name][layer, head] == pytest.approx(value, abs=2e-5), (name, layer, head, "xlogy")


def test_auto_captures_short_inputs_and_recomputes_long_ones(tiny_factory, monkeypatch):
    lm = tiny_factory("llama_gqa")
    short = run(lm, TEXTS)
    assert short.path == "captured"
    assert all(layer.weights is not None and layer.weights.shape[-1] == short.n_padded for layer in short.layers)
    monkeypatch.setattr(
        attnscope.models.forward, "CAPTURE_CAUSAL_LAYER_BYTES", 4 * 2 * lm.spec.n_heads * 5 * 5
    )  # as if these texts were long
    long = run(lm, TEXTS)
    assert long.path == "recomputed"
    assert all(layer.weights is None for layer in long.layers)
    for batch in range(2):  # the same maps either way
        np.testing.assert_allclose(short.attention_stack(batch), long.attention_stack(batch), atol=1e-5)
        for layer in range(lm.spec.n_layers + 1):
            np.testing.assert_allclose(short.hidden(layer, batch), long.hidden(layer, batch), atol=1e-5)


def test_other_kernels_and_materialised_models_are_not_captured(tiny_factory):
    eager = run(tiny_factory("llama_gqa", "eager"), TEXTS)
    assert eager.path == "recomputed"  # the model file's own eager function runs, its weights are recomputed
    with pytest.raises(ValueError, match="path must be one of auto, captured, recomputed"):
        run(tiny_factory("bert"), TEXTS, path="fast")


def test_forced_capture_over_the_memory_limit_is_refused(tiny_factory, monkeypatch):
    monkeypatch.setattr(attnscope.models.forward, "memory_limit_bytes", lambda device=None: 1024)
    lm = tiny_factory("bert")
    assert run(lm, TEXTS).path == "recomputed"  # auto falls back
    with pytest.raises(ValueError, match="path='captured' keeps every layer's"):
        run(lm, TEXTS, path="captured")


def test_captured_maps_cannot_be_written_through(tiny_factory):
    """Reading a captured map never lets a caller change the record's own weights: maps and layers are copies,
    and every layer's stack of an unpadded text is a read-only view of the one buffer the forward filled."""
    lm = tiny_factory("gpt2")
    rec = run(lm, TEXTS[1])
    assert rec.path == "captured"
    ref_attn, _ = eager_reference(lm, rec)
    rec.attention(0, 1)[:] = 7.0
    rec.layer_attention(0)[:] = 7.0
    stack = rec.attention_stack()
    assert not stack.flags.writeable and np.shares_memory(stack, rec.layers[0].weights.numpy())
    with pytest.raises(ValueError, match="read-only"):
        stack[:] = 7.0
    np.array(stack)[:] = 7.0  # a copy is writable
    rec.attention_stack(layers=[1, 0])[:] = 7.0  # not every layer in order: a new array
    np.testing.assert_allclose(rec.attention(0, 1), strip(ref_attn[0], rec, 0)[1], atol=1e-4)
    np.testing.assert_allclose(rec.attention_stack()[0], strip(ref_attn[0], rec, 0), atol=1e-4)
    padded = run(lm, TEXTS)  # text 1 is padded: its stack gathers the real tokens, a copy
    assert padded.attention_stack(1).flags.writeable and not padded.attention_stack(0).flags.writeable


def test_captured_records_in_threads_equal_sequential(tiny_factory):
    """Each run keeps its own weights: 6 threads on one shared model, each equal to its sequential run."""
    import concurrent.futures

    lm = tiny_factory("qwen2")
    texts = [f"{word} ran across the floor and hid." for word in ("mouse", "cat", "dog", "owl", "fox", "bee")]
    sequential = [run(lm, text).attention_stack() for text in texts]
    with concurrent.futures.ThreadPoolExecutor(max_workers=6) as pool:
        records = list(pool.map(lambda text: run(lm, text), texts))
    for rec, expected in zip(records, sequential):
        assert rec.path == "captured"
        np.testing.assert_array_equal(rec.attention_stack(), expected)


@pytest.mark.parametrize("arch", ["gpt2", "llama_gqa", "bert"])
def test_recomputed_maps_in_many_blocks_match_eager(tiny_factory, arch, monkeypatch):
    """Long inputs recompute in blocks of query rows; under a causal mask each block scores only the keys up to
    its last query. Blocks of 16 rows here (as a long input gets), every map against eager."""
    import attnscope.analysis.attention

    monkeypatch.setattr(attnscope.models.record, "MAP_CHUNK_BYTES", 1)  # the smallest chunk: 16 rows
    lm = tiny_factory(arch)
    text = " ".join(["the mouse ran to the cheese and the cat saw it"] * 12)
    rec = run(lm, text, max_length=100, path="recomputed")
    assert rec.n_padded == 100
    ref_attn, _ = eager_reference(lm, rec)
    stack = rec.attention_stack()
    real = torch.from_numpy(rec.real_index(0))
    for layer in range(lm.spec.n_layers):
        expected = strip(ref_attn[layer], rec, 0)
        np.testing.assert_allclose(stack[layer], expected, atol=1e-4)
        for head in range(lm.spec.n_heads):
            got = attnscope.analysis.attention.attention_map(rec.layers[layer], batch=0, head=head, rows=real, cols=real, chunk=16)
            np.testing.assert_allclose(got.numpy(), expected[head], atol=1e-4)
