"""One byte budget for every kept result: the sizer measures what values hold, the store is an LRU by
bytes that computes each key once, keeps no errors, counts shared buffers once and is safe across threads."""

from __future__ import annotations

import random
import sys
import threading

import numpy as np
import pandas as pd
import pytest
import torch

from attnscope.models import run
from attnscope.models.budget import BudgetStore, Footprint, footprint, model_bytes, object_bytes

# -- the sizer --------------------------------------------------------------------------------------


def test_float32_tensor_is_four_bytes_per_element():
    t = torch.zeros(1000, dtype=torch.float32)
    fp = footprint(t)
    assert sum(fp.buffers.values()) == 4000
    assert fp.private == 0 and fp.bytes == 4000
    assert object_bytes(torch.zeros(10, 10, dtype=torch.float16)) == 200


def test_views_and_shared_tensors_count_once():
    t = torch.zeros(1000)
    view = t[:10]  # keeps the whole storage alive
    assert footprint(view).bytes == 4000
    pair = footprint([t, t, view, t.numpy()])  # one storage, reached four ways
    assert sum(pair.buffers.values()) == 4000
    assert pair.private == sys.getsizeof([t, t, view, t.numpy()])
    two = footprint((t, torch.zeros(1000)))
    assert sum(two.buffers.values()) == 8000


def test_numpy_views_count_their_owner():
    a = np.zeros((100, 10), dtype=np.float64)
    assert footprint(a[:2, :3]).bytes == 8000
    views = [a, a.T, a[5]]
    assert footprint(views).bytes == 8000 + sys.getsizeof(views)


def test_frame_uses_deep_memory_usage():
    tokens = pd.Series([f"word{i}" for i in range(50)], dtype=object)
    frame = pd.DataFrame({"layer": np.arange(50), "token": tokens, "weight": np.ones(50, np.float32)})
    deep = int(frame.memory_usage(deep=True).sum())
    assert deep > int(frame.memory_usage(deep=False).sum()) + 50 * 40  # each string object, not just its pointer
    assert deep > 50 * 8 + 50 * 4  # the numeric columns
    assert footprint(frame).bytes == deep
    assert footprint(frame["weight"]).bytes == int(frame["weight"].memory_usage(deep=True))


def test_nested_containers_and_objects():
    class Holder:
        def __init__(self):
            self.maps = {"a": np.zeros(256, np.float32), "b": [torch.ones(64), "text"]}

    holder = Holder()
    fp = footprint((holder, holder))  # the same object twice: once
    payload = 256 * 4 + 64 * 4
    assert sum(fp.buffers.values()) == payload
    overhead = (  # attribute names belong to the class, not to the object
        sys.getsizeof((0, 0))
        + sys.getsizeof(holder)
        + sys.getsizeof(vars(holder))
        + sys.getsizeof(holder.maps)
        + sys.getsizeof("a")
        + sys.getsizeof("b")
        + sys.getsizeof(holder.maps["b"])
        + sys.getsizeof("text")
    )
    assert fp.private == overhead


def test_record_counts_its_tensors_not_the_model(tiny_factory):
    lm = tiny_factory("llama_gqa")
    rec = run(lm, "The mouse ran.")
    n, spec = len(rec.tokens[0]), lm.spec
    d = rec.layers[0].query.shape[-1]
    qk = spec.n_layers * (spec.n_heads + spec.n_kv_heads) * n * d * 4
    hidden = (spec.n_layers + 1) * n * spec.d_model * 4
    ids = rec.input_ids.nbytes + rec.attention_mask.nbytes
    # a short text takes the captured path: every layer's weights, once, in one [L, B, H, n, n] buffer
    captured = spec.n_layers * spec.n_heads * n * n * 4 if rec.path == "captured" else 0
    assert rec.path == "captured"
    fp = footprint(rec)
    assert sum(fp.buffers.values()) == qk + hidden + ids + captured  # unpadded causal: the mask is the string "causal"
    assert model_bytes(lm) > 6_000_000  # the head (49152 x 32 floats) is the model's, and the record keeps no module
    assert fp.bytes < qk + hidden + ids + captured + 20_000  # spec, tokens, texts: a few kB of Python objects
    assert footprint(lm).bytes == 0


# -- the store --------------------------------------------------------------------------------------


def test_evicts_least_recently_used_by_bytes():
    store = BudgetStore(max_bytes=100, size=lambda v: v["size"])
    store.get("a", lambda: {"size": 40})
    store.get("b", lambda: {"size": 40})
    store.get("a", lambda: pytest.fail("a is kept"))  # a is now the most recent
    store.get("c", lambda: {"size": 40})  # 120 > 100: b (least recent) goes
    assert "a" in store and "c" in store and "b" not in store and store.total_bytes == 80
    big = store.get("huge", lambda: {"size": 500})
    assert big == {"size": 500} and "huge" not in store and store.total_bytes == 80  # returned, not kept


def test_usage_by_category_and_shared_buffers_once():
    store = BudgetStore(max_bytes=10**6)
    shared = torch.zeros(1000)
    store.get("record", lambda: shared, category="records")
    store.get("study", lambda: (shared, torch.zeros(500)), category="padding studies")
    usage = {u.category: (u.entries, u.bytes) for u in store.usage()}
    tuple_overhead = sys.getsizeof((0, 0))
    assert usage == {"records": (1, 4000), "padding studies": (1, 6000 + tuple_overhead)}
    assert store.total_bytes == 6000 + tuple_overhead  # the shared tensor once
    store.set_limit(7000)
    assert len(store) == 2
    # Evicting the record frees nothing (the study holds its tensor), so the study goes too.
    store.set_limit(5000)
    assert len(store) == 0 and store.total_bytes == 0 and store.usage() == []


def test_lowering_the_budget_evicts_to_fit(monkeypatch):
    monkeypatch.setenv("ATTNSCOPE_CACHE_GB", str(10_000 / 1024**3))
    store = BudgetStore(size=lambda v: v)
    for key in range(10):
        store.get(key, lambda key=key: 1000)
    assert store.total_bytes == 10_000 and len(store) == 10
    monkeypatch.setenv("ATTNSCOPE_CACHE_GB", str(3_500 / 1024**3))  # read at each use
    assert store.total_bytes == 3000 and [k for k in range(10) if k in store] == [7, 8, 9]
    store.set_limit(1500)
    assert store.max_bytes == 1500 and store.total_bytes == 1000 and 9 in store


def test_concurrent_requests_compute_once_and_errors_are_not_kept():
    store = BudgetStore(max_bytes=10**6, size=lambda v: 1)
    calls = []
    gate = threading.Event()

    def make():
        calls.append(1)
        gate.wait(2)
        return "value"

    results = []
    threads = [threading.Thread(target=lambda: results.append(store.get("k", make))) for _ in range(4)]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join(5)
    assert len(calls) == 1 and results == ["value"] * 4

    def fail():
        raise ValueError("empty text")

    with pytest.raises(ValueError):
        store.get("bad", fail)
    assert "bad" not in store and store.total_bytes == 1
    assert store.get("bad", lambda: "fixed") == "fixed"  # the next try computes again


def test_threaded_access_stays_consistent():
    store = BudgetStore(max_bytes=20 * 4000)  # room for ~20 of the 50 keys
    errors = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(300):
            key = rng.randrange(50)
            value = store.get(key, lambda key=key: torch.full((1000,), float(key)))
            if value.shape != (1000,) or float(value[0]) != key:
                errors.append((key, value))

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    kept = [k for k in range(50) if k in store]
    assert 0 < len(kept) <= 20
    assert store.total_bytes == sum(u.bytes for u in store.usage()) == len(kept) * 4000 <= store.max_bytes
    assert not store._key_locks  # every computation let go of its key


def test_footprint_passes_through_a_custom_sizer():
    store = BudgetStore(max_bytes=100, size=lambda v: Footprint(private=10, buffers={"x": 30}))
    store.get(1, lambda: "a")
    store.get(2, lambda: "b")  # shares buffer "x"
    assert store.total_bytes == 50
