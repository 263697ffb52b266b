"""Efficient-attention patterns and approximations, imposed on recorded (or live) query/key/value tensors.

Every pattern here turns a layer's exact inputs into an *approximate* attention map over the same keys,
``Â [H, q, k]`` (rows sum to 1), and the output ``Â·V``. All of them compose with the model's own mask:
a key the model forbids (future keys of a causal model, padding) is never attended to, so a causal model
stays causal and padding stays masked. They are simulations of the methods on a model trained with full
attention, computed densely so they can be compared cell by cell with the exact map; their cost is a
formula (the conventions of ``analysis.cost``), not the time this module takes.

Families (``parse_pattern`` reads ``name:param,param``; ``PATTERNS`` is the registry, name -> class):

- sparse masks (the exact scores restricted to a set of keys, renormalised): ``window``, ``dilated``,
  ``strided``, ``fixed``, ``global``, ``bigbird``, ``block``; every sparse pattern keeps each query's own
  position, so no real query is left without a key.
- recurrence: ``recurrence`` (Transformer-XL segments with a memory of the previous M), as the banded-block
  mask a single pass needs; ``models.lab.recurrent_forward`` runs it really chunk by chunk.
- low rank: ``svd`` (the best rank-r approximation of each head's map, the ideal) and ``linformer``
  (keys and values mean-pooled into k segments).
- kernels: ``performer`` (FAVOR+ with m positive orthogonal random features) and ``linear`` (elu+1).
- hard selection: ``topk`` (k largest scores per query, renormalised).
- fewer key/value heads: ``kv`` (G key/value heads by mean-pooling each group's keys and values).
- scaling: ``scale`` (every attention logit multiplied by τ; τ = 1 is the model): why q·k is scaled by 1/√d.

A length-like parameter wider than the text (``window:4096`` on 19 tokens) is accepted: it covers the whole
text, which is full attention, and ``saturation`` says so (the lab then reports KL 0 without re-running).

Shapes follow ``analysis.attention``: query [B, H, q, d] (post-RoPE), key/value [B, KV, k, d] before
grouped-query expansion, masks bool [q, k] (True = may attend). A layer's inputs come as one
``analysis.attention.LayerTensors``.

Learned attention sinks are refused (``ValueError``): every pattern here is a distribution over the keys
(rows sum to 1, and ``coverage_rows`` compares such rows), while a sink takes a learned share of each row
that none of the approximated methods (kernels, low rank, pooled keys) has a place for. Sink models' exact
maps are ``analysis.attention.attention_rows``.

Adding a pattern
----------------
A pattern is one frozen dataclass in this module, registered with ``@register``; everything the lab does
with a pattern is a method or class attribute of it, so nothing else needs to change:

========================  =====================================================================
text and label            ``name``, ``syntax``, ``aliases``; fields declared with ``param`` / ``flag``
                          in the order of the text (``from_values`` and ``label`` read them; override
                          both for anything but whole numbers, as ``Window`` and ``Global`` do)
the Lab page's widgets    the same field declarations (``from_form``; override it as ``Global`` does)
validity for a text       ``check(n, n_heads)``: one ``ValueError`` line saying how to fix it
the map                   ``weights(...)`` (the contract of ``pattern_weights``); a ``SparsePattern``
                          only says which keys it keeps: ``keep(grid, ...)``
cost                      ``cost(n, d)`` -> (FLOPs, memory elements, how); a ``SparsePattern`` gives
                          ``keys_per_query(n)`` instead
sweep                     ``sweep_parameter`` (a field name, or None) and ``sweep_range(n, n_heads)``
what it needs             ``needs_query_key`` (not only the exact maps), ``uses_special_tokens``
========================  =====================================================================

For example, a window that also keeps the first token (StreamingLLM's attention sink)::

    @register
    @dataclass(frozen=True)
    class Sink(SparsePattern):
        name = "sink"
        syntax = "W"
        about = "Sliding window plus the first token (Xiao et al. 2024). O(n·W)."
        sweep_parameter = "width"

        width: int = param("Window W")

        def check(self, n: int, n_heads: int) -> None:
            self._in_range(self.width, "width", n)

        def keep(self, grid: Grid, **_) -> torch.Tensor:
            return (grid.distance < self.width) | (grid.key_pos == 0)

        def keys_per_query(self, n: int) -> float:
            return float(min(n, 2 * self.width))

``parse_pattern("sink:8")``, ``Sink(8).label``, the CLI's ``--pattern sink:8``, the Lab page's selector,
its widgets, the sweep and the cost chart then all work; ``tests/unit/test_patterns_registry.py`` runs every
registered class through its round trips. Only the docs (README's table, the CLI's ``--pattern`` help)
list patterns by hand, and a test says when one is missing.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol

import torch

from attnscope.analysis.attention import LayerTensors, Tensors, attention_scores, mask_rows

__all__ = [
    "COVERS",
    "FAMILIES",
    "PATTERNS",
    "KV",
    "SVD",
    "BigBird",
    "Block",
    "Dilated",
    "Fixed",
    "Form",
    "Full",
    "Global",
    "Grid",
    "Linear",
    "Linformer",
    "Pattern",
    "Performer",
    "Recurrence",
    "Scale",
    "SparsePattern",
    "Strided",
    "TopK",
    "Window",
    "check_pattern",
    "coverage_rows",
    "expand_heads",
    "flag",
    "needs_query_key",
    "param",
    "parse_pattern",
    "pattern_allowed",
    "pattern_output",
    "pattern_weights",
    "register",
    "saturation",
    "sweep_values",
    "SCALE_SWEEP",
]

Family = Literal["exact", "sparse", "recurrence", "low-rank", "kernel", "hard", "kv-heads", "scaling"]
FAMILIES: tuple[Family, ...] = ("exact", "sparse", "recurrence", "low-rank", "kernel", "hard", "kv-heads", "scaling")

# FAVOR+ features are held as float64 [H, n, M] for queries and keys: refuse M that would need more than this.
FEATURE_BUDGET_BYTES = 1 << 30

# Values a sweep tries for a length-like parameter (window width, rank, k, ...), clipped to the text's length.
SWEEP_LENGTHS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

# The page's widgets for a length-like parameter go up to this much even on a short text: a parameter wider than
# the text (Mistral's 4,096-token window on a short prompt) covers all of it, which is full attention.
WIDGET_LENGTH = 4096

# What a pattern whose parameter reaches past the text is (``Pattern.saturation``).
COVERS = "covers the whole text"

# Temperatures the ``scale`` sweep tries: attention logits multiplied by τ (1 = the model).
SCALE_SWEEP = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0)


# -- the parts every pattern is made of -----------------------------------------------------------
class Form(Protocol):
    """How a page asks for a pattern's parameters (``ui/lab.py`` implements it over the sidebar).

    ``key`` names the parameter (a field of the pattern); the page makes it a widget key.
    """

    def number(self, ask: str, low: int, high: int, start: int, *, key: str) -> int: ...

    def flag(self, ask: str, *, key: str) -> bool: ...

    def choice(self, ask: str, options: list, *, key: str, buttons: bool = False) -> Any: ...

    def text(self, ask: str, start: str, *, key: str) -> str: ...


def param(ask: str, *, low: int = 1, high: int | None = None, start: int = 4, default: int | None = None):
    """A whole-number parameter of a pattern: a dataclass field that also says how a page asks for it.

    Args:
        ask: the widget's label ("Width W (keys at distance < W)").
        low, high: the widget's bounds; ``high=None`` is the text's length or ``WIDGET_LENGTH``, whichever is larger
            (a length-like parameter wider than the text covers all of it).
        start: the widget's first value (clipped to the bounds).
        default: makes the parameter optional in the text syntax (``performer:M[,seed]``); None: required.
    """
    metadata = {"ask": ask, "low": low, "high": high, "start": start}
    if default is None:
        return dataclasses.field(metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def flag(ask: str):
    """A yes/no parameter of a pattern (False by default): a checkbox on the page."""
    return dataclasses.field(default=False, metadata={"ask": ask, "flag": True})


@dataclass(frozen=True, eq=False)
class Grid:
    """Positions of a block of queries and keys, in padded coordinates: query i sits at key position
    ``n_keys - n_queries + i``; real tokens are contiguous, so distances are those of the unpadded text."""

    query_pos: torch.Tensor  # [q, 1]
    key_pos: torch.Tensor  # [1, k]
    offset: torch.Tensor  # [q, k] query position - key position (> 0: key to the left)
    distance: torch.Tensor  # [q, k] |offset|

    @classmethod
    def of(cls, n_queries: int, n_keys: int, device) -> Grid:
        query_pos = torch.arange(n_keys - n_queries, n_keys, device=device)[:, None]  # [q, 1]
        key_pos = torch.arange(n_keys, device=device)[None, :]  # [1, k]
        offset = query_pos - key_pos  # [q, k]
        return cls(query_pos, key_pos, offset, offset.abs())


def _ints(name: str, values: list[str], count: int, syntax: str) -> list[int]:
    if len(values) < count:
        msg = f"pattern {name!r} needs {count} number(s): {name}:{syntax}"
        raise ValueError(msg)
    try:
        return [int(v) for v in values[:count]]
    except ValueError:
        msg = f"pattern {name}:{','.join(values)}: parameters must be whole numbers ({name}:{syntax})"
        raise ValueError(msg) from None


def _too_many(cls: type[Pattern], values: list[str], most: int) -> None:
    if len(values) > most:
        msg = (
            f"pattern {cls.name!r} takes no parameters"
            if most == 0
            else f"pattern {cls.name!r} takes at most {most} parameter(s): {cls.usage()}"
        )
        raise ValueError(msg)


def _full_cost(n: int, d: int) -> tuple[float, float]:
    """(FLOPs, memory elements) of full attention for one head: n² scores and n² weights·values."""
    return 4.0 * n * n * d, float(n) * n


@dataclass(frozen=True)
class Pattern:
    """One efficient-attention pattern with its parameters (a subclass per pattern; see the module docstring).

    Class attributes say what the pattern is; fields are its parameters; methods do everything the lab needs.
    """

    name: ClassVar[str]  # the text's ``name:``
    family: ClassVar[Family]
    syntax: ClassVar[str] = ""  # the parameters after ``name:`` as people write them ("W,G,R[,seed]")
    about: ClassVar[str] = ""  # one or two sentences with the reference (the page's caption)
    aliases: ClassVar[tuple[str, ...]] = ()  # other names ``parse_pattern`` accepts
    sweep_parameter: ClassVar[str | None] = None  # the field a sweep varies; None: not swept
    needs_query_key: ClassVar[bool] = False  # True: needs the layer's queries and keys, not only its exact map
    is_sparse: ClassVar[bool] = False  # a mask over keys (exact scores renormalised): coverage = kept mass

    # -- text ---------------------------------------------------------------------------------------
    @classmethod
    def usage(cls) -> str:
        """``name:syntax`` as in the CLI's help (``window:W[,causal|centred]``)."""
        return f"{cls.name}:{cls.syntax}" if cls.syntax else cls.name

    @classmethod
    def from_values(cls, values: list[str]) -> Pattern:
        """The pattern from the text after ``name:``, split at commas: whole numbers in field order, trailing
        fields with a default optional."""
        fields = dataclasses.fields(cls)
        _too_many(cls, values, len(fields))
        required = sum(f.default is dataclasses.MISSING for f in fields)
        return cls(*_ints(cls.name, values, max(required, len(values)), cls.syntax))

    @property
    def label(self) -> str:
        """The pattern in ``parse_pattern``'s syntax (round-trips); trailing parameters at their default are left out."""
        fields = dataclasses.fields(self)
        values = [getattr(self, f.name) for f in fields]
        while fields and fields[-1].default is not dataclasses.MISSING and values[-1] == fields[-1].default:
            fields, values = fields[:-1], values[:-1]
        return f"{self.name}:{','.join(map(str, values))}" if values else self.name

    def __str__(self) -> str:
        return self.label

    # -- the Lab page -------------------------------------------------------------------------------
    @classmethod
    def from_form(cls, form: Form, n: int, n_heads: int) -> Pattern:
        """The pattern from a page's widgets, one per field (``param``: a number, ``flag``: a checkbox)."""
        top = max(1, n)
        values: dict[str, object] = {}
        for f in dataclasses.fields(cls):
            if f.metadata.get("flag"):
                values[f.name] = bool(form.flag(f.metadata["ask"], key=f.name))
                continue
            low, high = f.metadata["low"], f.metadata["high"] or max(top, WIDGET_LENGTH)
            start = min(max(f.metadata["start"], low), high, max(top, low))  # the first value fits the text
            values[f.name] = int(form.number(f.metadata["ask"], low, high, start, key=f.name))
        return cls(**values)

    # -- validity -----------------------------------------------------------------------------------
    def check(self, n: int, n_heads: int) -> None:
        """Refuse parameters that make no sense for ``n`` tokens and ``n_heads`` query heads (one line, how to fix)."""

    def _in_range(self, value: int, what: str, n: int) -> None:
        """A length-like parameter: at least 1; past the text's length it covers the whole text (accepted)."""
        if value <= 0:
            msg = f"{self.label}: {what} {value} must be at least 1 (1..{n} for this text of {n} tokens; more covers the whole text)"
            raise ValueError(msg)

    def saturation(self, n: int, n_heads: int, *, causal: bool = False) -> str | None:
        """Why the pattern is exactly the model's own attention on ``n`` tokens (a parameter wide enough to cover
        the whole text, τ = 1, ...), or None when it changes something. ``causal``: the model's mask is causal, so
        keys to the right are masked anyway."""
        return None

    @property
    def uses_special_tokens(self) -> bool:
        """True when the pattern needs to know which tokens are special (``global:special``)."""
        return False

    # -- the map ------------------------------------------------------------------------------------
    def weights(self, query, key, mask, scaling: float, *, batch: int, softcap=None, special=None) -> torch.Tensor:
        """The approximate map of every head of one layer for one batch item: see ``pattern_weights``."""
        raise NotImplementedError(f"{type(self).__name__} defines no weights; see analysis.patterns' docstring")

    def allowed(self, n_queries: int, n_keys: int, *, real_keys=None, special=None, model_allowed=None, device=None) -> torch.Tensor:
        """The keys a sparse pattern keeps: see ``pattern_allowed``."""
        msg = f"{self.label} is not a sparse pattern (no key mask); use pattern_weights"
        raise ValueError(msg)

    def value_heads(self, value: torch.Tensor, n_heads: int) -> torch.Tensor:
        """The value heads the output reads: [KV, k, dv] as recorded (``KV`` pools them)."""
        return value

    # -- cost and sweeps ----------------------------------------------------------------------------
    def keys_per_query(self, n: int) -> float:
        """Mean number of keys a query scores at ``n`` tokens (bidirectional count)."""
        return float(n)

    def cost(self, n: int, d: int) -> tuple[float, float, str]:
        """(FLOPs, memory in elements, how) of one head of one layer at ``n`` tokens and head size ``d``."""
        msg = f"no cost formula for {self.label}"
        raise ValueError(msg)

    def sweep_range(self, n: int, n_heads: int) -> list[int]:
        """Values of ``sweep_parameter`` a sweep tries, smallest first, all valid for ``n`` tokens."""
        return sorted({min(v, n) for v in (*SWEEP_LENGTHS, n)})

    def swept(self, n: int, n_heads: int) -> list[Pattern]:
        """The pattern at each value of ``sweep_range`` (itself alone when it has no sweep parameter)."""
        if self.sweep_parameter is None:
            return [self]
        return [dataclasses.replace(self, **{self.sweep_parameter: v}) for v in self.sweep_range(n, n_heads)]


@dataclass(frozen=True)
class SparsePattern(Pattern):
    """A mask over keys: the exact scores restricted to the keys ``keep`` returns (and the query's own
    position), renormalised. Subclasses give ``keep`` and ``keys_per_query``."""

    family: ClassVar[Family] = "sparse"
    is_sparse: ClassVar[bool] = True

    def keep(
        self, grid: Grid, *, real_keys: torch.Tensor | None, special: torch.Tensor | None, model_allowed: torch.Tensor | None
    ) -> torch.Tensor:
        """bool [q, k]: the keys each query keeps (see ``pattern_allowed`` for the arguments)."""
        raise NotImplementedError(f"{type(self).__name__} defines no keep; see analysis.patterns' docstring")

    def allowed(self, n_queries: int, n_keys: int, *, real_keys=None, special=None, model_allowed=None, device=None) -> torch.Tensor:
        device = device if device is not None else (model_allowed.device if model_allowed is not None else "cpu")
        grid = Grid.of(n_queries, n_keys, device)
        kept = self.keep(grid, real_keys=real_keys, special=special, model_allowed=model_allowed)
        return kept | (grid.offset == 0)

    def weights(self, query, key, mask, scaling: float, *, batch: int, softcap=None, special=None) -> torch.Tensor:
        n_queries, n_keys = query.shape[2], key.shape[2]
        allowed = _model_allowed(query, key, mask, batch=batch)  # [q, k] the model's own mask
        scores = _scores(query, key, mask, scaling, batch=batch, softcap=softcap)  # [H, q, k]
        real_keys = allowed.any(0)  # [k]
        kept = self.allowed(n_queries, n_keys, real_keys=real_keys, special=special, model_allowed=allowed, device=scores.device)
        keep = kept & allowed  # [q, k]
        return torch.softmax(scores.masked_fill(~keep[None], torch.finfo(scores.dtype).min), dim=-1) * allowed[None]

    def cost(self, n: int, d: int) -> tuple[float, float, str]:
        keys = self.keys_per_query(n)
        return 4.0 * n * keys * d, n * keys, f"{keys:.0f} keys per query instead of n"


PATTERNS: dict[str, type[Pattern]] = {}  # the registry: name -> class, in the order shown to people
_ALIASES: dict[str, str] = {}


def register(cls: type[Pattern]) -> type[Pattern]:
    """Add a pattern class to ``PATTERNS`` (a class decorator); its name and aliases must be new."""
    if "__dataclass_params__" not in vars(cls) or not vars(cls)["__dataclass_params__"].frozen:  # its own fields, not its parent's
        msg = f"{cls.__name__}: a pattern is a frozen dataclass (@dataclass(frozen=True) under @register)"
        raise TypeError(msg)
    if cls.family not in FAMILIES:
        msg = f"{cls.__name__}: family {cls.family!r} is not one of {', '.join(FAMILIES)}"
        raise TypeError(msg)
    fields = {f.name for f in dataclasses.fields(cls)}
    if cls.sweep_parameter is not None and cls.sweep_parameter not in fields:
        msg = f"{cls.__name__}: sweep_parameter {cls.sweep_parameter!r} is not one of its fields ({', '.join(sorted(fields))})"
        raise TypeError(msg)
    for name in (cls.name, *cls.aliases):
        if name in PATTERNS or name in _ALIASES:
            msg = f"{cls.__name__}: the name {name!r} is taken by {PATTERNS[_ALIASES.get(name, name)].__name__}"
            raise TypeError(msg)
    PATTERNS[cls.name] = cls
    _ALIASES.update(dict.fromkeys(cls.aliases, cls.name))
    return cls


# -- the patterns ---------------------------------------------------------------------------------
@register
@dataclass(frozen=True)
class Full(SparsePattern):
    name = "full"
    family = "exact"
    about = "Full softmax attention, what the model was trained with: every query sees every key its mask allows. O(n²)."

    def keep(self, grid: Grid, **_) -> torch.Tensor:
        return torch.ones_like(grid.distance, dtype=torch.bool)

    def cost(self, n: int, d: int) -> tuple[float, float, str]:
        return (*_full_cost(n, d), "n² scores and n² weights·values")


@register
@dataclass(frozen=True)
class Window(SparsePattern):
    name = "window"
    syntax = "W[,causal|centred]"
    aliases = ("sliding",)
    about = (
        "Sliding window: each query sees the keys at distance < W (W keys to its left when causal, up to 2W−1 centred), "
        "as transformers' `sliding_window` and Longformer (Beltagy et al. 2020) do. O(n·W)."
    )
    sweep_parameter = "width"

    width: int = param("Width W (keys at distance < W)")
    causal: bool = flag("Causal (left side only)")

    @classmethod
    def from_values(cls, values: list[str]) -> Window:
        _too_many(cls, values, 2)
        (width,) = _ints(cls.name, values, 1, cls.syntax)
        side = values[1].lower() if len(values) > 1 else "centred"
        side = {"center": "centred", "centered": "centred", "left": "causal"}.get(side, side)
        if side not in ("centred", "causal"):
            msg = f"window side {values[1]!r}: use causal or centred (window:{width},causal)"
            raise ValueError(msg)
        return cls(width, causal=side == "causal")

    @property
    def label(self) -> str:
        return f"window:{self.width}" + (",causal" if self.causal else "")

    def check(self, n: int, n_heads: int) -> None:
        self._in_range(self.width, "width", n)

    def keep(self, grid: Grid, **_) -> torch.Tensor:
        allowed = grid.distance < self.width
        if self.causal:
            allowed &= grid.offset >= 0
        return allowed

    def saturation(self, n: int, n_heads: int, *, causal: bool = False) -> str | None:
        return COVERS if self.width >= n and (causal or not self.causal) else None

    def keys_per_query(self, n: int) -> float:
        return float(min(n, self.width if self.causal else 2 * self.width - 1))


@register
@dataclass(frozen=True)
class Dilated(SparsePattern):
    name = "dilated"
    syntax = "W,D"
    about = (
        "Dilated window: W keys on each side spaced D apart (distance a multiple of D and < W·D), so the reach grows D-fold "
        "at the same cost (Longformer, Beltagy et al. 2020)."
    )
    sweep_parameter = "width"

    width: int = param("Keys per side W")
    dilation: int = param("Dilation D", start=2)

    def check(self, n: int, n_heads: int) -> None:
        self._in_range(self.width, "width", n)
        self._in_range(self.dilation, "dilation", n)

    def keep(self, grid: Grid, **_) -> torch.Tensor:
        return (grid.distance % self.dilation == 0) & (grid.distance < self.width * self.dilation)

    def saturation(self, n: int, n_heads: int, *, causal: bool = False) -> str | None:
        return COVERS if self.dilation == 1 and self.width >= n else None

    def keys_per_query(self, n: int) -> float:
        return float(min(n, 2 * self.width - 1))


@register
@dataclass(frozen=True)
class Strided(SparsePattern):
    name = "strided"
    syntax = "L"
    about = (
        "Strided pattern of the Sparse Transformer (Child et al. 2019): the last L keys plus every L-th key before them "
        "(distance a multiple of L); L ≈ √n gives O(n√n)."
    )
    sweep_parameter = "stride"

    stride: int = param("Stride L")

    def check(self, n: int, n_heads: int) -> None:
        self._in_range(self.stride, "stride", n)

    def keep(self, grid: Grid, **_) -> torch.Tensor:
        return (grid.distance < self.stride) | (grid.distance % self.stride == 0)

    def saturation(self, n: int, n_heads: int, *, causal: bool = False) -> str | None:
        return COVERS if self.stride >= n else None

    def keys_per_query(self, n: int) -> float:
        return float(min(n, 2 * self.stride - 1 + n / self.stride))


@register
@dataclass(frozen=True)
class Fixed(SparsePattern):
    name = "fixed"
    syntax = "L,C"
    about = (
        "Fixed pattern of the Sparse Transformer (Child et al. 2019): keys in the query's own block of L, plus the last C "
        "positions of every block (summary cells)."
    )
    sweep_parameter = "length"

    length: int = param("Block length L")
    summary: int = param("Summary cells C", start=1)

    def check(self, n: int, n_heads: int) -> None:
        self._in_range(self.length, "block length", n)
        if not 1 <= self.summary <= self.length:
            msg = f"{self.label}: summary cells {self.summary} must lie in 1..{self.length} (the block length)"
            raise ValueError(msg)

    def keep(self, grid: Grid, **_) -> torch.Tensor:
        same_block = (grid.query_pos // self.length) == (grid.key_pos // self.length)
        summary = (grid.key_pos % self.length) >= self.length - self.summary
        return same_block | summary.expand_as(same_block)

    def keys_per_query(self, n: int) -> float:
        return float(min(n, self.length + self.summary * n / self.length))

    def saturation(self, n: int, n_heads: int, *, causal: bool = False) -> str | None:
        return COVERS if self.length >= n else None

    def sweep_range(self, n: int, n_heads: int) -> list[int]:
        return [v for v in super().sweep_range(n, n_heads) if v >= self.summary]


def _global_tokens(
    grid: Grid, real_keys, special, *, first: int, use_special: bool = False, positions: tuple[int, ...] = ()
) -> torch.Tensor:
    """bool [k]: the global keys — the first ``first`` real tokens, the special ones, chosen real-token positions."""
    n_keys, device = grid.key_pos.shape[1], grid.key_pos.device
    real = torch.ones(n_keys, dtype=torch.bool, device=device) if real_keys is None else real_keys.to(device)
    real_positions = torch.nonzero(real).flatten()  # [m] padded position of real token t
    is_global = torch.zeros(n_keys, dtype=torch.bool, device=device)
    if use_special:
        if special is None:
            msg = "global:special needs to know which tokens are special"
            raise ValueError(msg)
        is_global |= special.to(device) & real
    chosen = [t for t in positions if t < len(real_positions)]
    is_global[real_positions[chosen]] = True
    is_global[real_positions[:first]] = True
    return is_global


def _window_and_global(grid: Grid, width: int, is_global: torch.Tensor) -> torch.Tensor:
    """bool [q, k]: a centred window of ``width`` plus global tokens that see and are seen by every token."""
    return (grid.distance < width) | is_global[None, :] | is_global[grid.query_pos[:, 0]][:, None]


def _check_first(pattern: Pattern, first: int, n: int) -> None:
    if first < 0:
        msg = (
            f"{pattern.label}: global tokens {first} must be at least 0 (0..{n} for this text of {n} tokens; more makes every token global)"
        )
        raise ValueError(msg)


def _positions(text: str) -> tuple[int, ...]:
    """``0+5+9`` -> (0, 5, 9) (sorted, unique)."""
    try:
        return tuple(sorted({int(v) for v in text.split("+") if v.strip()}))
    except ValueError:
        msg = f"global tokens {text!r}: give a count, 'special' or positions like 0+5+9"
        raise ValueError(msg) from None


@register
@dataclass(frozen=True)
class Global(SparsePattern):
    """Global tokens are one of: the first ``first`` tokens, the special tokens, or chosen ``positions``."""

    name = "global"
    syntax = "G,W"
    about = (
        "Global + window (Longformer, Beltagy et al. 2020): a window W plus global tokens that see and are seen by every "
        "token. G = the first G tokens, `special` (the special tokens) or chosen positions `0+5+9`."
    )
    sweep_parameter = "width"

    width: int
    first: int = 0  # the first G real tokens
    special: bool = False  # the special tokens
    positions: tuple[int, ...] = ()  # chosen real-token positions (0-based)

    def __post_init__(self):
        object.__setattr__(self, "positions", tuple(sorted({int(p) for p in self.positions})))
        if (self.first > 0) + bool(self.special) + bool(self.positions) > 1:
            msg = "global: choose one kind of global token: first=G, special=True or positions=(0, 5, ...)"
            raise ValueError(msg)

    @classmethod
    def from_values(cls, values: list[str]) -> Global:
        if len(values) < 2:
            msg = f"pattern 'global' needs which tokens and a window: global:{cls.syntax} (e.g. global:2,16 or global:special,16)"
            raise ValueError(msg)
        _too_many(cls, values, 2)
        (width,) = _ints(cls.name, values[1:], 1, cls.syntax)
        which = values[0].lower()
        if which == "special":
            return cls(width, special=True)
        if "+" in which:
            return cls(width, positions=_positions(values[0]))
        (count,) = _ints(cls.name, values[:1], 1, cls.syntax)
        return cls(width, first=count)

    @property
    def label(self) -> str:
        if self.special:
            which = "special"
        elif self.positions:
            which = "+".join(map(str, self.positions)) + ("+" if len(self.positions) == 1 else "")  # "5+": one position, not a count
        else:
            which = str(self.first)
        return f"global:{which},{self.width}"

    @classmethod
    def from_form(cls, form: Form, n: int, n_heads: int) -> Global:
        top = max(1, n)
        which = form.choice("Global tokens", ["first G", "special tokens", "chosen positions"], key="global_kind", buttons=True)
        width = form.number("Window W", 1, top, min(2, top), key="width")
        if which == "first G":
            return cls(width, first=form.number("G", 0, top, min(2, top), key="first"))
        if which == "special tokens":
            return cls(width, special=True)
        return cls(width, positions=_positions(form.text("Positions (0-based, e.g. 0+5+9)", "0+5", key="positions").strip() or "0"))

    @property
    def uses_special_tokens(self) -> bool:
        return self.special

    def check(self, n: int, n_heads: int) -> None:
        self._in_range(self.width, "width", n)
        _check_first(self, self.first, n)
        if self.positions and (min(self.positions) < 0 or max(self.positions) >= n):
            msg = f"{self.label}: global positions must lie in 0..{n - 1} (0-based token positions of this text)"
            raise ValueError(msg)

    def keep(self, grid: Grid, *, real_keys, special, **_) -> torch.Tensor:
        is_global = _global_tokens(grid, real_keys, special, first=self.first, use_special=self.special, positions=self.positions)
        return _window_and_global(grid, self.width, is_global)

    def saturation(self, n: int, n_heads: int, *, causal: bool = False) -> str | None:
        return COVERS if self.width >= n or self.first >= n else None

    def keys_per_query(self, n: int) -> float:
        n_global = self.first + len(self.positions) + (2 if self.special else 0)
        # every query: window + global keys; the global rows see all n (spread over queries)
        return float(min(n, 2 * self.width - 1 + n_global + n_global))


@register
@dataclass(frozen=True)
class BigBird(SparsePattern):
    name = "bigbird"
    syntax = "W,G,R[,seed]"
    about = (
        "BigBird (Zaheer et al. 2020): a window W, the first G tokens global, and R random keys per query (seeded, the same in "
        "every layer and head). Linear in n."
    )
    sweep_parameter = "random"

    width: int = param("Window W", start=2)
    first: int = param("Global (first G)", low=0, start=2)
    random: int = param("Random keys R per query", low=0, start=3)
    seed: int = param("Seed", low=0, high=10_000, start=0, default=0)

    def check(self, n: int, n_heads: int) -> None:
        self._in_range(self.width, "width", n)
        _check_first(self, self.first, n)
        if self.random < 0:
            msg = f"{self.label}: random keys {self.random} must be at least 0 (0..{n}; more keeps every key)"
            raise ValueError(msg)

    def keep(self, grid: Grid, *, real_keys, special, model_allowed) -> torch.Tensor:
        allowed = _window_and_global(grid, self.width, _global_tokens(grid, real_keys, special, first=self.first))
        if self.random > 0:
            n_queries, n_keys = allowed.shape
            device = allowed.device
            generator = torch.Generator(device="cpu").manual_seed(self.seed)
            draw = torch.rand(n_queries, n_keys, generator=generator).to(device)  # [q, k]
            candidates = ~allowed
            if model_allowed is not None:
                candidates &= model_allowed.to(device)
            draw = torch.where(candidates, draw, torch.full_like(draw, -1.0))
            top = draw.topk(min(self.random, n_keys), dim=-1)
            picked = torch.zeros_like(allowed).scatter_(1, top.indices, top.values >= 0)
            allowed = allowed | picked
        return allowed

    def keys_per_query(self, n: int) -> float:
        # every query: window + global keys + random keys; the global rows see all n (spread over queries)
        return float(min(n, 2 * self.width - 1 + self.first + self.random + self.first))

    def saturation(self, n: int, n_heads: int, *, causal: bool = False) -> str | None:
        return COVERS if max(self.width, self.first, self.random) >= n else None

    def sweep_range(self, n: int, n_heads: int) -> list[int]:
        return [v for v in (0, 1, 2, 4, 8, 16) if v <= n]


@register
@dataclass(frozen=True)
class Block(SparsePattern):
    name = "block"
    syntax = "B"
    about = "Block-sparse (block-diagonal) attention: queries see only the keys of their own block of B tokens (as in Blockwise/BigBird block layouts)."
    sweep_parameter = "size"

    size: int = param("Block size B")

    def check(self, n: int, n_heads: int) -> None:
        self._in_range(self.size, "block size", n)

    def keep(self, grid: Grid, **_) -> torch.Tensor:
        return (grid.query_pos // self.size) == (grid.key_pos // self.size)

    def keys_per_query(self, n: int) -> float:
        return float(min(n, self.size))

    def saturation(self, n: int, n_heads: int, *, causal: bool = False) -> str | None:
        return COVERS if self.size >= n else None


@register
@dataclass(frozen=True)
class Recurrence(SparsePattern):
    """Transformer-XL's segment recurrence as a key mask: the banded-block mask a single pass needs to give what a
    chunk-by-chunk run with a cache of the M previous segments gives (``models.lab.recurrent_forward`` runs that)."""

    name = "recurrence"
    family = "recurrence"
    syntax = "C[,M]"
    aliases = ("xl", "segments")
    about = (
        "Recurrence with memory (Transformer-XL, Dai et al. 2019): the text is cut into segments of C tokens processed "
        "one after another; each attends to itself and to the M previous segments (default 1) kept in the KV cache, so a "
        "query scores at most (M+1)·C keys and the receptive field grows by M·C tokens per layer. O(n·(M+1)·C)."
    )
    sweep_parameter = "segment"

    segment: int = param("Segment length C", start=4)
    memory: int = param("Memory M (previous segments kept)", low=0, high=64, start=1, default=1)

    def check(self, n: int, n_heads: int) -> None:
        self._in_range(self.segment, "segment length", n)
        if self.memory < 0:
            msg = f"{self.label}: memory {self.memory} must be at least 0 previous segments (0 = each segment alone)"
            raise ValueError(msg)

    def keep(self, grid: Grid, *, real_keys=None, **_) -> torch.Tensor:
        # Segments count from the first real token, so left padding does not move their boundaries.
        start = 0 if real_keys is None or not bool(real_keys.any()) else int(torch.nonzero(real_keys.to(grid.key_pos.device))[0, 0])
        query_segment = (grid.query_pos - start).div(self.segment, rounding_mode="floor")  # [q, 1]
        key_segment = (grid.key_pos - start).div(self.segment, rounding_mode="floor")  # [1, k]
        return (key_segment <= query_segment) & (key_segment >= query_segment - self.memory)

    def keys_per_query(self, n: int) -> float:
        return float(min(n, (self.memory + 1) * self.segment))

    def cached_tokens(self, n: int) -> int:
        """Keys and values held while a segment runs: its own C plus the M·C of the memory (at most n)."""
        return int(min(n, (self.memory + 1) * self.segment))

    def receptive_field(self, layers: int, n: int) -> int:
        """Tokens that can reach the last query of a segment after ``layers`` blocks: (layers·M + 1)·C, at most n.
        Each block reaches M segments further back (Dai et al. 2019, section 3.2: O(N·L))."""
        return int(min(n, (layers * self.memory + 1) * self.segment))

    def saturation(self, n: int, n_heads: int, *, causal: bool = False) -> str | None:
        segments = -(-n // self.segment)  # ceil
        # bidirectional models: the pattern never looks ahead to later segments, so only one segment is full attention
        return COVERS if segments == 1 or (causal and segments <= self.memory + 1) else None


@register
@dataclass(frozen=True)
class SVD(Pattern):
    name = "svd"
    family = "low-rank"
    syntax = "R"
    aliases = ("lowrank",)
    about = (
        "Truncated SVD: per head the best rank-R approximation of the exact map (Eckart–Young), clipped at 0, masked and "
        "renormalised — the ideal any low-rank method (Linformer) can reach; it needs the full map, so it saves nothing."
    )
    sweep_parameter = "rank"

    rank: int = param("Rank R")

    def check(self, n: int, n_heads: int) -> None:
        self._in_range(self.rank, "rank", n)

    def weights(self, query, key, mask, scaling: float, *, batch: int, softcap=None, special=None) -> torch.Tensor:
        allowed = _model_allowed(query, key, mask, batch=batch)  # [q, k] the model's own mask
        scores = _scores(query, key, mask, scaling, batch=batch, softcap=softcap)  # [H, q, k]
        exact = torch.softmax(scores, dim=-1) * allowed[None]  # [H, q, k]
        u, s, vh = torch.linalg.svd(exact.double(), full_matrices=False)  # [H, q, r'], [H, r'], [H, r', k]
        r = min(self.rank, s.shape[-1])
        approx = (u[..., :r] * s[..., None, :r]) @ vh[..., :r, :]  # [H, q, k] best rank-r (Frobenius)
        return _normalise(approx.clamp(min=0), allowed[None]).float()

    def cost(self, n: int, d: int) -> tuple[float, float, str]:
        k = min(self.rank, n)
        return 4.0 * n * k * d + 4.0 * n * k * d, float(n) * k, "if the rank-r factors were known (finding them needs the full map)"

    def saturation(self, n: int, n_heads: int, *, causal: bool = False) -> str | None:
        return COVERS if self.rank >= n else None  # a rank-n SVD of an n x n map is the map


@register
@dataclass(frozen=True)
class Linformer(Pattern):
    name = "linformer"
    family = "low-rank"
    syntax = "K"
    about = (
        "Linformer (Wang et al. 2020): keys and values projected to K rows; here the projection is mean pooling over K "
        "segments (one of the paper's general projections, since an untrained model has no learned one), per query over "
        "the keys its mask allows. O(n·K)."
    )
    sweep_parameter = "rows"
    needs_query_key = True

    rows: int = param("Projected rows K")

    def check(self, n: int, n_heads: int) -> None:
        self._in_range(self.rows, "projected rows", n)

    def weights(self, query, key, mask, scaling: float, *, batch: int, softcap=None, special=None) -> torch.Tensor:
        allowed = _model_allowed(query, key, mask, batch=batch)  # [q, k] the model's own mask
        return _linformer(self.rows, query, key, scaling, batch=batch, allowed=allowed)

    def cost(self, n: int, d: int) -> tuple[float, float, str]:
        k = min(self.rows, n)
        return 4.0 * n * k * d + 4.0 * n * k * d, float(n) * k, "keys and values projected to k rows"

    def saturation(self, n: int, n_heads: int, *, causal: bool = False) -> str | None:
        return COVERS if self.rows >= n else None  # segments of one key each: the keys themselves


@dataclass(frozen=True)
class KernelPattern(Pattern):
    """Softmax replaced by a kernel φ(q)·φ(k) ≥ 0, normalised per row over the allowed keys. Subclasses give ``feature_maps``."""

    family: ClassVar[Family] = "kernel"
    needs_query_key: ClassVar[bool] = True

    def feature_maps(self, q: torch.Tensor, k: torch.Tensor, scaling: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(φ(q) [H, q, M], φ(k) [H, k, M]) from float64 q [H, q, d] and k [H, k, d]."""
        raise NotImplementedError(f"{type(self).__name__} defines no feature_maps")

    def weights(self, query, key, mask, scaling: float, *, batch: int, softcap=None, special=None) -> torch.Tensor:
        allowed = _model_allowed(query, key, mask, batch=batch)  # [q, k] the model's own mask
        n_heads = query.shape[1]
        q = query[batch].double()  # [H, q, d]
        k = expand_heads(key[batch].double(), n_heads)  # [H, k, d]
        phi_q, phi_k = self.feature_maps(q, k, scaling)
        kernel = phi_q @ phi_k.transpose(-1, -2)  # [H, q, k] >= 0
        return _normalise(kernel, allowed[None]).float()


@register
@dataclass(frozen=True)
class Performer(KernelPattern):
    name = "performer"
    syntax = "M[,seed]"
    aliases = ("favor",)
    about = (
        "Performer FAVOR+ (Choromanski et al. 2021): exp(q·k) estimated without bias by M positive orthogonal random "
        "features, so attention is linear in n; the error falls as M grows."
    )
    sweep_parameter = "features"

    features: int = param("Random features M", high=4096, start=64)
    seed: int = param("Seed", low=0, high=10_000, start=0, default=0)

    def check(self, n: int, n_heads: int) -> None:
        if self.features <= 0:
            msg = f"{self.label}: random features {self.features} must be at least 1"
            raise ValueError(msg)
        need = 2 * n_heads * n * self.features * 8  # float64 features of queries and keys
        if need > FEATURE_BUDGET_BYTES:
            top = FEATURE_BUDGET_BYTES // (2 * n_heads * n * 8)
            msg = (
                f"{self.label}: {self.features} random features need {need / 2**30:.1f} GiB for {n} tokens x {n_heads} heads, "
                f"too much memory; use at most {top}"
            )
            raise ValueError(msg)

    def feature_maps(self, q: torch.Tensor, k: torch.Tensor, scaling: float) -> tuple[torch.Tensor, torch.Tensor]:
        projection = _orthogonal_features(self.features, q.shape[-1], self.seed).to(q.device)  # [M, d]
        root = math.sqrt(scaling)  # exp(s·q·k) = exp((√s q)·(√s k))
        phi_q = _favor_features(q * root, projection, per_row=True)  # [H, q, M]
        phi_k = _favor_features(k * root, projection, per_row=False)  # [H, k, M]
        return phi_q, phi_k

    def cost(self, n: int, d: int) -> tuple[float, float, str]:
        m = self.features
        return 4.0 * n * m * d + 4.0 * n * m * d + 4.0 * n * m, float(n) * m + m * d, "φ(Q), φ(K) with m features; φ(K)ᵀV once"

    def sweep_range(self, n: int, n_heads: int) -> list[int]:
        return [8, 16, 32, 64, 128, 256, 512]


@register
@dataclass(frozen=True)
class Linear(KernelPattern):
    name = "linear"
    aliases = ("elu",)
    about = (
        "Linear attention (Katharopoulos et al. 2020): softmax replaced by the kernel φ(q)·φ(k) with φ = elu + 1; "
        "O(n·d²), no temperature, a different function from softmax."
    )

    def feature_maps(self, q: torch.Tensor, k: torch.Tensor, scaling: float) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.nn.functional.elu(q) + 1, torch.nn.functional.elu(k) + 1

    def cost(self, n: int, d: int) -> tuple[float, float, str]:
        return 4.0 * n * d * d + 4.0 * n * d, float(d) * d + n * d, "φ(K)ᵀV is d x d; linear in n"


@register
@dataclass(frozen=True)
class TopK(Pattern):
    name = "topk"
    family = "hard"
    syntax = "K"
    aliases = ("top-k",)
    about = "Top-k (hard, routing-like) attention: each query keeps its K largest scores and renormalises; still computes every score."
    sweep_parameter = "k"

    k: int = param("Keys per query K")

    def check(self, n: int, n_heads: int) -> None:
        self._in_range(self.k, "k", n)

    def weights(self, query, key, mask, scaling: float, *, batch: int, softcap=None, special=None) -> torch.Tensor:
        n_keys = key.shape[2]
        allowed = _model_allowed(query, key, mask, batch=batch)  # [q, k] the model's own mask
        scores = _scores(query, key, mask, scaling, batch=batch, softcap=softcap)  # [H, q, k]
        top = scores.topk(min(self.k, n_keys), dim=-1).indices  # [H, q, K]
        keep = torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, top, True) & allowed[None]
        return torch.softmax(scores.masked_fill(~keep, torch.finfo(scores.dtype).min), dim=-1) * allowed[None]

    def cost(self, n: int, d: int) -> tuple[float, float, str]:
        return 2.0 * n * n * d + 2.0 * n * self.k * d, float(n) * n, "every score is still computed (n²), then k values per query"

    def saturation(self, n: int, n_heads: int, *, causal: bool = False) -> str | None:
        return COVERS if self.k >= n else None


@register
@dataclass(frozen=True)
class KV(Pattern):
    name = "kv"
    family = "kv-heads"
    syntax = "G"
    aliases = ("gqa",)
    about = (
        "Fewer key/value heads: G key/value heads made by mean-pooling the keys and values of each group of query heads, as "
        "Ainslie et al. 2023 convert multi-head into grouped-query (G > 1) or multi-query (G = 1) attention before uptraining. "
        "Cuts the KV cache by H/G."
    )
    sweep_parameter = "groups"
    needs_query_key = True

    groups: int = param("Key/value heads G (1 = multi-query)")

    @staticmethod
    def _divisors(n_heads: int) -> list[int]:
        return [g for g in range(1, n_heads + 1) if n_heads % g == 0]

    @classmethod
    def from_form(cls, form: Form, n: int, n_heads: int) -> KV:
        return cls(int(form.choice("Key/value heads G (1 = multi-query)", cls._divisors(n_heads), key="groups")))

    def check(self, n: int, n_heads: int) -> None:
        if self.groups <= 0 or n_heads % self.groups:
            msg = f"{self.label}: key/value heads must divide the {n_heads} query heads; use one of {', '.join(map(str, self._divisors(n_heads)))}"
            raise ValueError(msg)

    def weights(self, query, key, mask, scaling: float, *, batch: int, softcap=None, special=None) -> torch.Tensor:
        n_heads = query.shape[1]
        allowed = _model_allowed(query, key, mask, batch=batch)  # [q, k] the model's own mask
        pooled = torch.stack([_pooled_heads(key[b].float(), n_heads, self.groups) for b in range(key.shape[0])])  # [B, G, k, d]
        scores = _scores(query, pooled, mask, scaling, batch=batch, softcap=softcap)  # [H, q, k]
        return torch.softmax(scores, dim=-1) * allowed[None]

    def value_heads(self, value: torch.Tensor, n_heads: int) -> torch.Tensor:
        return _pooled_heads(value, n_heads, self.groups)  # [G, k, dv]

    def cost(self, n: int, d: int) -> tuple[float, float, str]:
        return (*_full_cost(n, d), "n² scores and n² weights·values; fewer KV heads change the cache, not the FLOPs")

    def sweep_range(self, n: int, n_heads: int) -> list[int]:
        return self._divisors(n_heads)

    def saturation(self, n: int, n_heads: int, *, causal: bool = False) -> str | None:
        return "keeps every query head's own keys and values" if self.groups == n_heads else None


@register
@dataclass(frozen=True)
class Scale(Pattern):
    """The model's attention logits multiplied by τ: why attention scales q·k by 1/√d (Vaswani et al. 2017)."""

    name = "scale"
    family = "scaling"
    syntax = "τ"
    aliases = ("temperature",)
    about = (
        "Temperature: every attention logit q·k/√d multiplied by τ (τ = 1 is the model). τ > 1 sharpens each row toward "
        "its largest score, τ < 1 flattens it; leaving out the 1/√d scaling is τ = √d, and dot products of d terms grow "
        "like √d, so unscaled logits saturate the softmax (Vaswani et al. 2017, section 3.2.1). Position biases are not scaled."
    )
    sweep_parameter = "tau"

    tau: float = dataclasses.field(default=1.0, metadata={"ask": "Temperature τ (logits × τ; 1 = the model)"})

    LARGEST: ClassVar[float] = 64.0

    @classmethod
    def from_values(cls, values: list[str]) -> Scale:
        _too_many(cls, values, 1)
        if not values:
            msg = f"pattern 'scale' needs τ, the factor on the attention logits: scale:{cls.syntax} (e.g. scale:2 or scale:0.5)"
            raise ValueError(msg)
        try:
            tau = float(values[0])
        except ValueError:
            msg = f"pattern scale:{values[0]}: τ must be a number (scale:0.5, scale:2)"
            raise ValueError(msg) from None
        return cls(tau)

    @property
    def label(self) -> str:
        short = f"{self.tau:g}"
        return f"scale:{short if float(short) == self.tau else repr(float(self.tau))}"

    @classmethod
    def from_form(cls, form: Form, n: int, n_heads: int) -> Scale:
        return cls(float(form.choice(cls.__dataclass_fields__["tau"].metadata["ask"], list(SCALE_SWEEP), key="tau")))

    def check(self, n: int, n_heads: int) -> None:
        if not (math.isfinite(self.tau) and 0 < self.tau <= self.LARGEST):
            msg = f"{self.label}: τ must lie in (0, {self.LARGEST:g}] (1 = the model; 0.25..4 shows the trend)"
            raise ValueError(msg)

    def weights(self, query, key, mask, scaling: float, *, batch: int, softcap=None, special=None) -> torch.Tensor:
        allowed = _model_allowed(query, key, mask, batch=batch)  # [q, k] the model's own mask
        scores = _scores(query, key, mask, scaling * self.tau, batch=batch, softcap=softcap)  # [H, q, k] τ·q·k/√d (+ biases)
        return torch.softmax(scores, dim=-1) * allowed[None]

    def cost(self, n: int, d: int) -> tuple[float, float, str]:
        return (*_full_cost(n, d), "full attention with another temperature: the same work")

    def sweep_range(self, n: int, n_heads: int) -> list[float]:  # type: ignore[override]  # temperatures, not sizes
        return list(SCALE_SWEEP)

    def saturation(self, n: int, n_heads: int, *, causal: bool = False) -> str | None:
        return "is the model itself (τ = 1)" if self.tau == 1.0 else None


# -- what the lab calls ---------------------------------------------------------------------------
def parse_pattern(text: str) -> Pattern:
    """Read ``name:param,param`` (e.g. ``window:64``, ``bigbird:64,2,3``, ``performer:128``, ``kv:1``).

    Raises:
        ValueError: unknown name or malformed parameters (one line naming the syntax).
    """
    if not isinstance(text, str) or not text.strip():
        msg = f"empty pattern; use one of {', '.join(PATTERNS)} (e.g. window:64)"
        raise ValueError(msg)
    name, _, rest = text.strip().partition(":")
    name = name.strip().lower()
    name = _ALIASES.get(name, name)
    if name not in PATTERNS:
        msg = f"unknown pattern {name!r}; use one of {', '.join(PATTERNS)} (e.g. window:64)"
        raise ValueError(msg)
    values = [v.strip() for v in rest.split(",")] if rest.strip() else []
    return PATTERNS[name].from_values(values)


def check_pattern(pattern: Pattern, n: int, n_heads: int) -> None:
    """Refuse parameters that make no sense for ``n`` tokens and ``n_heads`` query heads (one line, how to fix)."""
    if not isinstance(pattern, Pattern):
        msg = f"{pattern!r} is not a pattern; use parse_pattern('window:64') or one of {', '.join(PATTERNS)}"
        raise ValueError(msg)
    pattern.check(n, n_heads)


def saturation(pattern: Pattern, n: int, n_heads: int, *, causal: bool = False) -> str | None:
    """Why ``pattern`` is exactly the model's own attention on ``n`` tokens ("covers the whole text": a window, block,
    rank or k at least as wide as the text; τ = 1; ...), or None when it changes something.

    ``causal``: the model's own mask is causal (keys to the right are masked anyway)."""
    return pattern.saturation(n, n_heads, causal=causal)


def needs_query_key(pattern: Pattern) -> bool:
    """True when the approximation needs the real queries and keys, not only the exact map
    (a materialised model keeps only the map)."""
    return pattern.needs_query_key


def sweep_values(pattern: Pattern, n: int, n_heads: int) -> list[Pattern]:
    """The pattern at a range of its ``sweep_parameter``, smallest first, all valid for ``n``."""
    return pattern.swept(n, n_heads)


# -- masks --------------------------------------------------------------------------------------
def pattern_allowed(
    pattern: Pattern,
    n_queries: int,
    n_keys: int,
    *,
    real_keys: torch.Tensor | None = None,
    special: torch.Tensor | None = None,
    model_allowed: torch.Tensor | None = None,
    device=None,
) -> torch.Tensor:
    """Which keys a sparse pattern lets each query see, before the model's own mask is applied.

    Positions are padded coordinates; query i sits at key position ``n_keys - n_queries + i``. Real
    tokens are contiguous, so distances are the same as in the unpadded text.

    Args:
        pattern: a sparse (or "full") pattern.
        real_keys: bool [n_keys], True for real (non-padding) tokens; "first G" and chosen global
            positions count real tokens. Default: all real.
        special: bool [n_keys], True for special tokens (``global:special``).
        model_allowed: bool [n_queries, n_keys], the model's mask; BigBird draws its random keys among these.
    Returns:
        bool [n_queries, n_keys] (True = the pattern keeps the key). Always keeps the query's own position.
    """
    return pattern.allowed(n_queries, n_keys, real_keys=real_keys, special=special, model_allowed=model_allowed, device=device)


# -- weights and outputs -------------------------------------------------------------------------
def expand_heads(tensor: torch.Tensor, n_heads: int) -> torch.Tensor:
    """[KV, n, d] -> [H, n, d]: query head h reads KV head h // (H / KV)."""
    return tensor.repeat_interleave(n_heads // tensor.shape[0], dim=0)


def _pooled_heads(tensor: torch.Tensor, n_heads: int, groups: int) -> torch.Tensor:
    """[KV, n, d] -> [G, n, d]: the mean over each group of H / G query heads of the keys (or values) they read.

    RoPE is a linear map that depends only on the position and is the same for every head, so the mean of
    post-RoPE keys equals RoPE of the mean of the key projections: pooling here is the same as pooling the
    projection weights (Ainslie et al. 2023).
    """
    per_head = expand_heads(tensor, n_heads)  # [H, n, d]
    return per_head.reshape(groups, n_heads // groups, *per_head.shape[1:]).mean(1)  # [G, n, d]


def _normalise(weights: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Zero the disallowed entries of non-negative [H, q, k] weights and make each row sum to 1
    (a row with no mass left falls back to uniform over its allowed keys)."""
    weights = torch.where(allowed, weights, torch.zeros((), dtype=weights.dtype, device=weights.device))
    sums = weights.sum(-1, keepdim=True)
    uniform = allowed.to(weights.dtype) / allowed.sum(-1, keepdim=True).clamp(min=1)
    return torch.where(sums > 0, weights / sums.clamp(min=torch.finfo(weights.dtype).tiny), uniform.expand_as(weights))


def _orthogonal_features(n_features: int, dim: int, seed: int) -> torch.Tensor:
    """FAVOR+'s random projections: blocks of ``dim`` orthogonal rows, each rescaled to the norm of a Gaussian
    vector (Choromanski et al. 2021, section 2.4). float64 [M, d], the same for a given seed."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    blocks = []
    for _ in range(math.ceil(n_features / dim)):
        gaussian = torch.randn(dim, dim, generator=generator, dtype=torch.float64)
        q, _ = torch.linalg.qr(gaussian)  # [d, d] orthogonal
        blocks.append(q.T)
    rows = torch.cat(blocks)[:n_features]  # [M, d] unit rows
    norms = torch.randn(n_features, dim, generator=generator, dtype=torch.float64).norm(dim=-1)  # chi(d)
    return rows * norms[:, None]


def _favor_features(x: torch.Tensor, projection: torch.Tensor, *, per_row: bool) -> torch.Tensor:
    """Positive random features φ(x) = exp(w·x − |x|²/2) / √M, stabilised by subtracting a maximum that cancels
    in the row normalisation (per row for queries, one per head for keys). x float64 [H, n, d] -> [H, n, M]."""
    logits = x @ projection.T - (x * x).sum(-1, keepdim=True) / 2  # [H, n, M]
    top = logits.amax(dim=-1, keepdim=True) if per_row else logits.amax(dim=(-2, -1), keepdim=True)
    return torch.exp(logits - top) / math.sqrt(projection.shape[0])


def _model_allowed(query: torch.Tensor, key: torch.Tensor, mask, *, batch: int) -> torch.Tensor:
    """bool [q, k]: the keys the model's own mask lets each query of batch item ``batch`` see (queries are the last q keys)."""
    n_queries, n_keys = query.shape[2], key.shape[2]
    rows = torch.arange(n_keys - n_queries, n_keys)
    return mask_rows(mask, batch, rows, n_keys, query.device)


def _scores(query: torch.Tensor, key: torch.Tensor, mask, scaling: float, *, batch: int, softcap: float | None) -> torch.Tensor:
    """float32 [H, q, k]: every head's masked pre-softmax scores (``analysis.attention.attention_scores``)."""
    n_heads, n_queries, n_keys = query.shape[1], query.shape[2], key.shape[2]
    heads = torch.arange(n_heads)
    rows = torch.arange(n_keys - n_queries, n_keys)
    return attention_scores(Tensors(query, key, mask, scaling, softcap=softcap), batch=batch, heads=heads, rows=rows)


def _check_no_sinks(layer: LayerTensors) -> None:
    if layer.sinks is not None:
        msg = (
            "this layer has learned attention sinks, which the efficient-attention patterns do not model "
            "(a pattern's rows sum to 1; a sink takes a learned share of each row)"
        )
        raise ValueError(msg)


def pattern_weights(pattern: Pattern, layer: LayerTensors, *, batch: int, special: torch.Tensor | None = None) -> torch.Tensor:
    """The approximate attention map of every head of one layer for one batch item.

    Args:
        pattern: from ``parse_pattern``.
        layer: the layer's query [B, H, q, d] (post-RoPE), key [B, KV, k, d] (before grouped-query
            expansion), mask as recorded (``models.hook.MaskSpec``), scaling and softcap.
        special: bool [k] special tokens of this batch item (``global:special``).
    Returns:
        float32 [H, q, k] over padded positions; zero wherever the model's mask forbids a key; rows of
        queries with an allowed key sum to 1.
    Raises:
        ValueError: the layer has learned attention sinks (``layer.sinks`` is not None): refused, not
            ignored, since no pattern here models a sink's share (see the module docstring).
    """
    _check_no_sinks(layer)
    return pattern.weights(layer.query, layer.key, layer.mask, layer.scaling, batch=batch, softcap=layer.softcap, special=special)


def _linformer(rank: int, query, key, scaling: float, *, batch: int, allowed: torch.Tensor) -> torch.Tensor:
    """Keys mean-pooled over ``rank`` contiguous segments, per query over its allowed keys only (so causality and
    padding hold). By linearity q·mean(k) = mean(q·k), so segment scores are means of the raw scores.
    Returns float32 [H, q, k]: the segment's softmax weight spread evenly over its allowed keys."""
    n_heads, n_keys = query.shape[1], key.shape[2]
    q = query[batch].float()  # [H, q, d]
    k = expand_heads(key[batch].float(), n_heads)  # [H, k, d]
    raw = (q @ k.transpose(-1, -2)) * scaling  # [H, q, k]
    size = math.ceil(n_keys / rank)
    segment = torch.arange(n_keys, device=raw.device) // size  # [k] segment of each key
    one_hot = torch.nn.functional.one_hot(segment, math.ceil(n_keys / size)).float()  # [k, S]
    mask = allowed.float()  # [q, k]
    counts = mask @ one_hot  # [q, S] allowed keys per segment
    sums = (raw * mask[None]) @ one_hot  # [H, q, S]
    seg_scores = sums / counts.clamp(min=1)[None]
    seg_scores = seg_scores.masked_fill((counts == 0)[None], torch.finfo(raw.dtype).min)
    seg_weights = torch.softmax(seg_scores, dim=-1) / counts.clamp(min=1)[None]  # [H, q, S] weight per allowed key
    return seg_weights @ one_hot.T * mask[None]  # [H, q, k]


def pattern_output(
    pattern: Pattern,
    layer: LayerTensors,
    *,
    value: torch.Tensor | None = None,
    special: torch.Tensor | None = None,
) -> torch.Tensor:
    """The attention output with ``pattern`` imposed, for every batch item.

    Args:
        layer: the layer's inputs as in ``pattern_weights``.
        value: [B, KV, k, dv] before grouped-query expansion; when None, the layer's own ``value``
            (``models.hook.AttentionCall`` and a ``LayerRecord`` recorded with values have one).
        special: optional bool [B, k] special tokens.
    Returns:
        [B, q, H, dv] in ``value``'s dtype: the layout an attention kernel returns (before the output projection).
    Raises:
        ValueError: no value given or held by the layer; the layer has learned attention sinks (refused, as
            in ``pattern_weights``).
    """
    value = getattr(layer, "value", None) if value is None else value
    if value is None:
        msg = "pattern_output needs the layer's values: pass value=[B, KV, k, dv] or a layer that holds them"
        raise ValueError(msg)
    _check_no_sinks(layer)
    query = layer.query
    n_heads = query.shape[1]
    outputs = []
    for b in range(query.shape[0]):
        weights = pattern_weights(pattern, layer, batch=b, special=None if special is None else special[b])  # [H, q, k]
        v = value[b].float()  # [KV, k, dv]
        v = pattern.value_heads(v, n_heads)  # [KV or G, k, dv]
        v = expand_heads(v, n_heads)  # [H, k, dv]
        outputs.append((weights @ v).transpose(0, 1))  # [q, H, dv]
    return torch.stack(outputs).to(value.dtype)


def coverage_rows(exact: torch.Tensor, approx: torch.Tensor) -> torch.Tensor:
    """Share of each query's exact attention mass the approximation keeps: Σ_j min(A_ij, Â_ij) = 1 − TV(A_i, Â_i).

    For a sparse pattern (exact scores renormalised over a kept set) this is exactly the mass of the exact
    row on the kept keys; for top-k, the mass of the k largest weights.

    Args:
        exact, approx: float [..., q, k] rows summing to 1.
    Returns:
        float [..., q] in [0, 1].
    """
    return torch.minimum(exact, approx).sum(-1)
