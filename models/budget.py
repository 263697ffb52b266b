"""One byte budget for everything the dashboard keeps: a least-recently-used store bounded by bytes.

The dashboard keeps recent records, generations, knockouts, padding studies, lab runs, thumbnails...
so that moving a slider never re-runs the model. One record of SmolLM2 at 8k tokens holds ~3 GB and
one of MiniLM at 20 tokens ~100 kB, so a bound by number of entries is either useless or dangerous:
every computed result goes into one ``BudgetStore``, bounded by ``ATTNSCOPE_CACHE_GB`` and measured
by ``footprint``. The loaded models themselves are not in the budget; ``loaded_models`` reports them.

Thread-safe: every session of a server shares one store (``shared_store``).
"""

from __future__ import annotations

import os
import sys
import threading
import types
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from attnscope.models.loaded import LoadedModel

__all__ = [
    "BudgetStore",
    "DEFAULT_CACHE_GB",
    "Footprint",
    "GB",
    "Held",
    "CategoryUsage",
    "LOADED_MODELS",
    "cache_limit_bytes",
    "footprint",
    "format_bytes",
    "model_bytes",
    "object_bytes",
    "shared_store",
]


DEFAULT_CACHE_GB = 4.0
GB = 1024**3

# Python scalars and text: their own size is all they hold.
_ATOMS = (str, bytes, bytearray, int, float, complex, bool, type(None), range, slice)
# Code and types are shared by every value of their kind, not held by one entry.
_CODE = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType, types.CodeType)


def cache_limit_bytes() -> int:
    """ATTNSCOPE_CACHE_GB (default 4): what the dashboard may keep of computed results, all sessions together."""
    raw = os.environ.get("ATTNSCOPE_CACHE_GB", "")
    try:
        return int(float(raw) * GB)
    except ValueError:
        return int(DEFAULT_CACHE_GB * GB)


@dataclass
class Footprint:
    """What one value holds: small Python objects, plus large buffers keyed by identity.

    Buffers (tensor storages, array memory, frames) are keyed so that two entries of a store sharing
    one (a padding study and the records it is made of) count it once.
    """

    private: int = 0  # bytes of containers, strings, numbers and object headers
    buffers: dict[Hashable, int] = field(default_factory=dict)

    @property
    def bytes(self) -> int:
        return self.private + sum(self.buffers.values())


def _is_model_part(obj) -> bool:
    """The loaded model and tokenizer are counted as loaded models, never as part of a result."""
    if isinstance(obj, (torch.nn.Module, LoadedModel)):
        return True
    names = {klass.__name__ for klass in type(obj).__mro__}
    return bool(names & {"PreTrainedTokenizerBase", "PretrainedConfig", "Tokenizer"})


def _tensor_buffer(t: torch.Tensor) -> tuple[Hashable, int]:
    """The storage a tensor (or view) keeps alive: views of one storage share its key."""
    if t.device.type == "meta":
        return ("meta", id(t)), 0
    try:
        storage = t.untyped_storage()
        return (str(t.device), storage.data_ptr()), storage.nbytes()
    except (RuntimeError, NotImplementedError):  # sparse and other storage-less layouts
        return ("tensor", id(t)), t.numel() * t.element_size()


def footprint(value) -> Footprint:
    """Measure the bytes ``value`` holds, walking tensors, arrays, frames, containers and objects' fields.

    Args:
        value: any result: a ``ForwardRecord``, a DataFrame, a tuple of arrays, a dataclass...
    Returns:
        Footprint: tensors count their storage (views of one storage once), numpy arrays the memory of
        the array owning their data, pandas objects ``memory_usage(deep=True)``, str/bytes and other
        objects ``sys.getsizeof``; an object reached twice counts once; the loaded model, its modules,
        config and tokenizer count nothing (they are not the result's to free).
    """
    result = Footprint()
    seen: set[int] = set()
    stack = [value]
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            key, size = _tensor_buffer(obj)
            result.buffers[key] = size
        elif isinstance(obj, np.ndarray):
            root = obj
            while isinstance(root.base, np.ndarray):
                root = root.base
            if isinstance(root.base, torch.Tensor):  # tensor.numpy(): the tensor's storage
                stack.append(root.base)
            else:
                result.buffers[("cpu", root.__array_interface__["data"][0])] = root.nbytes
            if obj.dtype == object:
                stack.extend(obj.ravel().tolist())
        elif isinstance(obj, (pd.DataFrame, pd.Series, pd.Index)):
            used = obj.memory_usage(deep=True)
            result.buffers[("pandas", id(obj))] = int(used.sum() if isinstance(used, pd.Series) else used)
        elif isinstance(obj, _ATOMS):
            result.private += sys.getsizeof(obj)
        elif isinstance(obj, _CODE) or _is_model_part(obj):
            continue
        elif isinstance(obj, dict):
            result.private += sys.getsizeof(obj)
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            result.private += sys.getsizeof(obj)
            stack.extend(obj)
        elif isinstance(obj, np.generic):
            result.private += obj.nbytes
        else:  # dataclasses and plain objects: their fields
            result.private += sys.getsizeof(obj)
            fields = getattr(obj, "__dict__", None)
            if isinstance(fields, dict):
                result.private += sys.getsizeof(fields)
                stack.extend(fields.values())
            for klass in type(obj).__mro__:
                for slot in getattr(klass, "__slots__", ()):
                    if isinstance(slot, str) and hasattr(obj, slot):
                        stack.append(getattr(obj, slot))
    return result


def object_bytes(value) -> int:
    """Bytes ``value`` holds (``footprint(value).bytes``)."""
    return footprint(value).bytes


def model_bytes(lm) -> int:
    """Bytes of a loaded model's parameters and buffers (tied weights once)."""
    storages = {}
    for tensor in [*lm.model.parameters(), *lm.model.buffers()]:
        key, size = _tensor_buffer(tensor)
        storages[key] = size
    return sum(storages.values())


@dataclass
class _Entry:
    value: object
    category: str  # what the entry is ("records", "padding studies", ...): how usage is reported
    footprint: Footprint
    size: int  # footprint.bytes, measured once


@dataclass(frozen=True)
class CategoryUsage:
    category: str
    entries: int
    bytes: int  # each entry measured alone: buffers shared with other entries are in both


LOADED_MODELS = "loaded models"


@dataclass(frozen=True)
class Held:
    """One consistent snapshot of a store: what it holds by category, in total, and the loaded models beside it."""

    categories: list[CategoryUsage]
    total: int  # bytes held, shared buffers once (<= max_bytes)
    max_bytes: int
    models: dict[Hashable, int]  # parameter bytes of each loaded model, outside the budget

    @property
    def shared(self) -> int:
        """Bytes counted under more than one entry (a padding study and its records), held once."""
        return sum(u.bytes for u in self.categories) - self.total

    def frame(self) -> pd.DataFrame:
        """One row per category (entries, bytes, MB, in_budget), then one for the loaded models (not in the budget)."""
        rows = [{"category": u.category, "entries": u.entries, "bytes": u.bytes, "in_budget": True} for u in self.categories]
        rows.append({"category": LOADED_MODELS, "entries": len(self.models), "bytes": sum(self.models.values()), "in_budget": False})
        frame = pd.DataFrame(rows, columns=["category", "entries", "bytes", "in_budget"])
        frame.insert(3, "MB", (frame["bytes"] / 2**20).round(3))
        return frame


def format_bytes(n: int) -> str:
    """Bytes in the largest unit that keeps the number >= 1 (binary: 1 MB = 2**20 bytes)."""
    for unit, scale in (("GB", GB), ("MB", 2**20), ("kB", 2**10)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


class BudgetStore:
    """LRU over computed results of any kind; evicts the least recently used until the bytes held are
    within ``max_bytes`` (buffers shared by several entries count once).

    A value larger than the whole budget is returned but not kept; errors propagate and are not kept.
    """

    def __init__(self, max_bytes: int | None = None, size: Callable[[object], int | Footprint] = footprint) -> None:
        self._limit = max_bytes  # None: read ATTNSCOPE_CACHE_GB at each use, so a changed setting applies
        self._size = size
        self._items: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._buffers: dict[Hashable, list[int]] = {}  # key -> [bytes, entries holding it]
        self._total = 0
        self._lock = threading.Lock()
        self._key_locks: dict[Hashable, threading.Lock] = {}
        self._models: weakref.WeakValueDictionary = weakref.WeakValueDictionary()

    # -- the budget -----------------------------------------------------------------------------
    @property
    def max_bytes(self) -> int:
        return cache_limit_bytes() if self._limit is None else self._limit

    def set_limit(self, max_bytes: int | None) -> None:
        """A new budget (None: ATTNSCOPE_CACHE_GB again); evicts at once to fit it."""
        with self._lock:
            self._limit = max_bytes
            self._trim(self.max_bytes)

    @property
    def total_bytes(self) -> int:
        """Bytes held now, all categories together, shared buffers once."""
        with self._lock:
            self._trim(self.max_bytes)
            return self._total

    # -- lookups --------------------------------------------------------------------------------
    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._items

    def get(self, key: Hashable, make: Callable[[], object], category: str = "records"):
        """The kept value for ``key``, or ``make()`` (run once even when sessions ask at the same time)."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key].value
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                if key in self._items:
                    self._items.move_to_end(key)
                    return self._items[key].value
            try:
                value = make()  # errors propagate and nothing is kept
                measured = self._size(value)
            except BaseException:
                with self._lock:
                    self._key_locks.pop(key, None)
                raise
            fp = measured if isinstance(measured, Footprint) else Footprint(private=int(measured))
            with self._lock:
                self._key_locks.pop(key, None)
                limit = self.max_bytes
                if fp.bytes <= limit:
                    self._remove(key)
                    self._add(key, _Entry(value, category, fp, fp.bytes))
                    self._trim(limit)
            return value

    def usage(self) -> list[CategoryUsage]:
        """Entries and bytes by category, most bytes first (evicting first if the budget was lowered)."""
        return self.held().categories

    def held(self) -> Held:
        """Categories, total and budget read under one lock (evicting first if the budget was lowered), and the loaded models."""
        with self._lock:
            limit = self.max_bytes
            self._trim(limit)
            counts: dict[str, list[int]] = {}
            for entry in self._items.values():
                row = counts.setdefault(entry.category, [0, 0])
                row[0] += 1
                row[1] += entry.size
            total = self._total
        categories = sorted((CategoryUsage(name, n, size) for name, (n, size) in counts.items()), key=lambda u: (-u.bytes, u.category))
        return Held(categories=categories, total=total, max_bytes=limit, models=self.loaded_models())

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._buffers.clear()
            self._total = 0

    # -- loaded models (reported, not budgeted) -------------------------------------------------
    def note_model(self, key: Hashable, lm) -> None:
        """Report ``lm`` under ``key`` for as long as something else keeps it loaded."""
        self._models[key] = lm

    def loaded_models(self) -> dict[Hashable, int]:
        """Parameter (and buffer) bytes of each model noted and still loaded."""
        return {key: model_bytes(lm) for key, lm in list(self._models.items())}

    # -- bookkeeping (callers hold the lock) ----------------------------------------------------
    def _add(self, key: Hashable, entry: _Entry) -> None:
        self._items[key] = entry
        self._total += entry.footprint.private
        for buffer, size in entry.footprint.buffers.items():
            held = self._buffers.get(buffer)
            if held is None:
                self._buffers[buffer] = [size, 1]
                self._total += size
            else:
                held[1] += 1

    def _remove(self, key: Hashable) -> None:
        entry = self._items.pop(key, None)
        if entry is None:
            return
        self._total -= entry.footprint.private
        for buffer in entry.footprint.buffers:
            held = self._buffers[buffer]
            held[1] -= 1
            if held[1] == 0:
                del self._buffers[buffer]
                self._total -= held[0]

    def _trim(self, limit: int) -> None:
        while self._total > limit and self._items:
            self._remove(next(iter(self._items)))


_shared: BudgetStore | None = None
_shared_lock = threading.Lock()


def shared_store() -> BudgetStore:
    """The process-wide store every dashboard session uses (budget: ATTNSCOPE_CACHE_GB)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = BudgetStore()
        return _shared
