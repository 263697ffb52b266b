"""A least-recently-used cache of records bounded by the bytes they hold, not by their number.

The dashboard keeps recent ``ForwardRecord``s so that moving a slider never re-runs the model; one
record of SmolLM2 at 8k tokens holds ~3 GB and one of MiniLM at 20 tokens ~100 kB, so a count
bound is either useless or dangerous. Thread-safe: every session of a server shares one.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from typing import Callable, Hashable

import torch

DEFAULT_CACHE_GB = 4.0


def cache_limit_bytes() -> int:
    """ATTNSCOPE_CACHE_GB (default 4): what the dashboard's record cache may hold, all sessions together."""
    raw = os.environ.get("ATTNSCOPE_CACHE_GB", "")
    try:
        return int(float(raw) * 1024**3)
    except ValueError:
        return int(DEFAULT_CACHE_GB * 1024**3)


def record_bytes(rec) -> int:
    """Bytes of the tensors a record keeps (queries, keys, values, tensor masks, hidden states), on any device."""
    seen, total = set(), 0

    def add(t) -> None:
        nonlocal total
        if isinstance(t, torch.Tensor) and id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()

    for layers in (rec.layers, rec.decoder_layers, rec.cross_layers):
        for layer in layers or []:
            if layer is not None:
                for t in (layer.query, layer.key, layer.value, layer.mask):
                    add(t)
    for h in rec.hidden_states:
        add(h)
    return total


class RecordCache:
    """LRU over records; evicts the least recently used until the total is within ``max_bytes``.

    A record larger than the whole budget is returned but not kept.
    """

    def __init__(self, max_bytes: int | None = None, size: Callable[[object], int] = record_bytes) -> None:
        self.max_bytes = cache_limit_bytes() if max_bytes is None else max_bytes
        self._size = size
        self._items: OrderedDict[Hashable, tuple[object, int]] = OrderedDict()
        self._lock = threading.Lock()
        self._key_locks: dict[Hashable, threading.Lock] = {}

    @property
    def total_bytes(self) -> int:
        with self._lock:
            return sum(size for _, size in self._items.values())

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._items

    def get(self, key: Hashable, make: Callable[[], object]):
        """The cached value for ``key``, or ``make()`` (run once even when sessions ask at the same time)."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key][0]
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                if key in self._items:
                    self._items.move_to_end(key)
                    return self._items[key][0]
            value = make()  # errors propagate and nothing is cached
            size = self._size(value)
            with self._lock:
                self._key_locks.pop(key, None)
                if size <= self.max_bytes:
                    self._items[key] = (value, size)
                    total = sum(s for _, s in self._items.values())
                    while total > self.max_bytes:
                        _, (_, evicted) = self._items.popitem(last=False)
                        total -= evicted
            return value

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
