"""The dashboard's record cache is bounded by bytes (LRU), computes each key once, and caches no errors."""

from __future__ import annotations

import threading

import pytest

from models import run
from models.cache import RecordCache, record_bytes
from tests import tiny


def test_evicts_least_recently_used_by_bytes():
    cache = RecordCache(max_bytes=100, size=lambda v: v["size"])
    cache.get("a", lambda: {"size": 40})
    cache.get("b", lambda: {"size": 40})
    cache.get("a", lambda: pytest.fail("a is cached"))  # a is now the most recent
    cache.get("c", lambda: {"size": 40})  # 120 > 100: b (least recent) goes
    assert "a" in cache and "c" in cache and "b" not in cache and cache.total_bytes == 80
    big = cache.get("huge", lambda: {"size": 500})
    assert big == {"size": 500} and "huge" not in cache and cache.total_bytes == 80  # returned, not kept


def test_concurrent_requests_compute_once_and_errors_are_not_cached():
    cache = RecordCache(max_bytes=10**6, size=lambda v: 1)
    calls = []
    gate = threading.Event()

    def make():
        calls.append(1)
        gate.wait(2)
        return "value"

    threads = [threading.Thread(target=lambda: cache.get("k", make)) for _ in range(4)]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join(5)
    assert len(calls) == 1

    def fail():
        raise ValueError("empty text")

    with pytest.raises(ValueError):
        cache.get("bad", fail)
    assert "bad" not in cache


def test_record_bytes_counts_queries_keys_and_hidden_states():
    lm = tiny.build("llama_gqa")
    rec = run(lm, "The mouse ran.")
    n, spec = len(rec.tokens[0]), lm.spec
    d = rec.layers[0].query.shape[-1]
    qk = spec.n_layers * (spec.n_heads + spec.n_kv_heads) * n * d * 4
    hidden = (spec.n_layers + 1) * n * spec.d_model * 4
    assert record_bytes(rec) == qk + hidden  # unpadded causal: the mask is the string "causal"
