"""Efficient-attention patterns and approximations, imposed on recorded (or live) query/key/value tensors.

Every pattern here turns a layer's exact inputs into an *approximate* attention map over the same keys,
``Â [H, q, k]`` (rows sum to 1), and the output ``Â·V``. All of them compose with the model's own mask:
a key the model forbids (future keys of a causal model, padding) is never attended to, so a causal model
stays causal and padding stays masked. They are simulations of the methods on a model trained with full
attention, computed densely so they can be compared cell by cell with the exact map; their cost is the
formula of ``analysis.cost``, not the time this module takes.

Families (``parse_pattern`` reads ``name:param,param``):

- sparse masks (the exact scores restricted to a set of keys, renormalised): ``window``, ``dilated``,
  ``strided``, ``fixed``, ``global``, ``bigbird``, ``block``; every sparse pattern keeps each query's own
  position, so no real query is left without a key.
- low rank: ``svd`` (the best rank-r approximation of each head's map, the ideal) and ``linformer``
  (keys and values mean-pooled into k segments).
- kernels: ``performer`` (FAVOR+ with m positive orthogonal random features) and ``linear`` (elu+1).
- hard selection: ``topk`` (k largest scores per query, renormalised).
- fewer key/value heads: ``kv`` (G key/value heads by mean-pooling each group's keys and values).

Shapes follow ``analysis.attention``: query [B, H, q, d] (post-RoPE), key/value [B, KV, k, d] before
grouped-query expansion, masks bool [q, k] (True = may attend). A layer's inputs come as one
``analysis.attention.LayerTensors``.

Learned attention sinks are refused (``ValueError``): every pattern here is a distribution over the keys
(rows sum to 1, and ``coverage_rows`` compares such rows), while a sink takes a learned share of each row
that none of the approximated methods (kernels, low rank, pooled keys) has a place for. Sink models' exact
maps are ``analysis.attention.attention_rows``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

import torch

from analysis.attention import LayerTensors, Tensors, attention_scores, mask_rows

__all__ = [
    "FAMILIES",
    "PATTERNS",
    "SWEEP_PARAMETER",
    "Pattern",
    "PatternName",
    "check_pattern",
    "coverage_rows",
    "expand_heads",
    "needs_query_key",
    "parse_pattern",
    "pattern_allowed",
    "pattern_output",
    "pattern_weights",
    "sweep_values",
]

PatternName = Literal[
    "full", "window", "dilated", "strided", "fixed", "global", "bigbird", "block",
    "svd", "linformer", "performer", "linear", "topk", "kv",
]

# name -> (family, parameters in the ``name:...`` syntax, one or two sentences with the reference).
PATTERNS: dict[str, tuple[str, str, str]] = {
    "full": ("exact", "", "Full softmax attention, what the model was trained with: every query sees every key its mask allows. O(n²)."),
    "window": (
        "sparse", "W[,causal|centred]",
        "Sliding window: each query sees the keys at distance < W (W keys to its left when causal, up to 2W−1 centred), "
        "as transformers' `sliding_window` and Longformer (Beltagy et al. 2020) do. O(n·W).",
    ),
    "dilated": (
        "sparse", "W,D",
        "Dilated window: W keys on each side spaced D apart (distance a multiple of D and < W·D), so the reach grows D-fold "
        "at the same cost (Longformer, Beltagy et al. 2020).",
    ),
    "strided": (
        "sparse", "L",
        "Strided pattern of the Sparse Transformer (Child et al. 2019): the last L keys plus every L-th key before them "
        "(distance a multiple of L); L ≈ √n gives O(n√n).",
    ),
    "fixed": (
        "sparse", "L,C",
        "Fixed pattern of the Sparse Transformer (Child et al. 2019): keys in the query's own block of L, plus the last C "
        "positions of every block (summary cells).",
    ),
    "global": (
        "sparse", "G,W",
        "Global + window (Longformer, Beltagy et al. 2020): a window W plus global tokens that see and are seen by every "
        "token. G = the first G tokens, `special` (the special tokens) or chosen positions `0+5+9`.",
    ),
    "bigbird": (
        "sparse", "W,G,R[,seed]",
        "BigBird (Zaheer et al. 2020): a window W, the first G tokens global, and R random keys per query (seeded, the same in "
        "every layer and head). Linear in n.",
    ),
    "block": ("sparse", "B", "Block-sparse (block-diagonal) attention: queries see only the keys of their own block of B tokens (as in Blockwise/BigBird block layouts)."),
    "svd": (
        "low-rank", "R",
        "Truncated SVD: per head the best rank-R approximation of the exact map (Eckart–Young), clipped at 0, masked and "
        "renormalised — the ideal any low-rank method (Linformer) can reach; it needs the full map, so it saves nothing.",
    ),
    "linformer": (
        "low-rank", "K",
        "Linformer (Wang et al. 2020): keys and values projected to K rows; here the projection is mean pooling over K "
        "segments (one of the paper's general projections, since an untrained model has no learned one), per query over "
        "the keys its mask allows. O(n·K).",
    ),
    "performer": (
        "kernel", "M[,seed]",
        "Performer FAVOR+ (Choromanski et al. 2021): exp(q·k) estimated without bias by M positive orthogonal random "
        "features, so attention is linear in n; the error falls as M grows.",
    ),
    "linear": (
        "kernel", "",
        "Linear attention (Katharopoulos et al. 2020): softmax replaced by the kernel φ(q)·φ(k) with φ = elu + 1; "
        "O(n·d²), no temperature, a different function from softmax.",
    ),
    "topk": ("hard", "K", "Top-k (hard, routing-like) attention: each query keeps its K largest scores and renormalises; still computes every score."),
    "kv": (
        "kv-heads", "G",
        "Fewer key/value heads: G key/value heads made by mean-pooling the keys and values of each group of query heads, as "
        "Ainslie et al. 2023 convert multi-head into grouped-query (G > 1) or multi-query (G = 1) attention before uptraining. "
        "Cuts the KV cache by H/G.",
    ),
}
FAMILIES = ("exact", "sparse", "low-rank", "kernel", "hard", "kv-heads")

# The parameter a sweep varies for each pattern (field of ``Pattern``); patterns without one are not swept.
SWEEP_PARAMETER: dict[str, str] = {
    "window": "width", "dilated": "width", "strided": "width", "fixed": "width", "global": "width", "bigbird": "random",
    "block": "width", "svd": "rank", "linformer": "rank", "performer": "features", "topk": "rank", "kv": "groups",
}

# FAVOR+ features are held as float64 [H, n, M] for queries and keys: refuse M that would need more than this.
FEATURE_BUDGET_BYTES = 1 << 30


@dataclass(frozen=True)
class Pattern:
    """A pattern and its parameters (unused fields keep their defaults). See ``PATTERNS``."""

    name: str = "full"
    width: int = 0  # window reach W, block size B, stride L
    side: Literal["centred", "causal"] = "centred"  # window: keys on both sides, or only to the left
    dilation: int = 1  # dilated: spacing D; fixed: summary cells C
    n_global: int = 0  # first G tokens global
    global_special: bool = False  # the special tokens are global
    global_positions: tuple[int, ...] = ()  # chosen real-token positions (0-based) are global
    random: int = 0  # bigbird: random keys per query
    seed: int = 0  # bigbird's random keys, performer's random features
    rank: int = 0  # svd rank R, linformer rows K, top-k K
    features: int = 0  # performer: random features M
    groups: int = 0  # kv: key/value heads G

    @property
    def label(self) -> str:
        """The pattern in ``parse_pattern``'s syntax (round-trips)."""
        n = self.name
        if n in ("full", "linear"):
            return n
        if n == "window":
            return f"window:{self.width}" + (",causal" if self.side == "causal" else "")
        if n == "dilated":
            return f"dilated:{self.width},{self.dilation}"
        if n in ("strided", "block"):
            return f"{n}:{self.width}"
        if n == "fixed":
            return f"fixed:{self.width},{self.dilation}"
        if n == "global":
            which = "special" if self.global_special else ("+".join(map(str, self.global_positions)) if self.global_positions else str(self.n_global))
            return f"global:{which},{self.width}"
        if n == "bigbird":
            return f"bigbird:{self.width},{self.n_global},{self.random}" + (f",{self.seed}" if self.seed else "")
        if n in ("svd", "linformer", "topk"):
            return f"{n}:{self.rank}"
        if n == "performer":
            return f"performer:{self.features}" + (f",{self.seed}" if self.seed else "")
        return f"kv:{self.groups}"

    @property
    def family(self) -> str:
        return PATTERNS[self.name][0]

    @property
    def is_sparse(self) -> bool:
        """A mask over keys (exact scores, renormalised): coverage is then exactly the kept mass."""
        return self.family in ("exact", "sparse")


def _ints(name: str, values: list[str], count: int, syntax: str) -> list[int]:
    if len(values) < count:
        msg = f"pattern {name!r} needs {count} number(s): {name}:{syntax}"
        raise ValueError(msg)
    try:
        return [int(v) for v in values[:count]]
    except ValueError:
        msg = f"pattern {name}:{','.join(values)}: parameters must be whole numbers ({name}:{syntax})"
        raise ValueError(msg) from None


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
    aliases = {"lowrank": "svd", "gqa": "kv", "favor": "performer", "sliding": "window", "elu": "linear", "top-k": "topk"}
    name = aliases.get(name, name)
    if name not in PATTERNS:
        msg = f"unknown pattern {name!r}; use one of {', '.join(PATTERNS)} (e.g. window:64)"
        raise ValueError(msg)
    values = [v.strip() for v in rest.split(",")] if rest.strip() else []
    syntax = PATTERNS[name][1]
    if name in ("full", "linear"):
        if values:
            msg = f"pattern {name!r} takes no parameters"
            raise ValueError(msg)
        return Pattern(name)
    if name == "window":
        (width,) = _ints(name, values, 1, syntax)
        side = values[1].lower() if len(values) > 1 else "centred"
        side = {"center": "centred", "centered": "centred", "left": "causal"}.get(side, side)
        if side not in ("centred", "causal"):
            msg = f"window side {values[1]!r}: use causal or centred (window:{width},causal)"
            raise ValueError(msg)
        return Pattern(name, width=width, side=side)
    if name in ("dilated", "fixed"):
        width, second = _ints(name, values, 2, syntax)
        return Pattern(name, width=width, dilation=second)
    if name in ("strided", "block"):
        (width,) = _ints(name, values, 1, syntax)
        return Pattern(name, width=width)
    if name == "global":
        if len(values) < 2:
            msg = f"pattern 'global' needs which tokens and a window: global:{syntax} (e.g. global:2,16 or global:special,16)"
            raise ValueError(msg)
        (width,) = _ints(name, values[1:], 1, syntax)
        which = values[0].lower()
        if which == "special":
            return Pattern(name, width=width, global_special=True)
        if "+" in which:
            try:
                positions = tuple(sorted({int(v) for v in which.split("+") if v}))
            except ValueError:
                msg = f"global tokens {values[0]!r}: give a count, 'special' or positions like 0+5+9"
                raise ValueError(msg) from None
            return Pattern(name, width=width, global_positions=positions)
        (count,) = _ints(name, values[:1], 1, syntax)
        return Pattern(name, width=width, n_global=count)
    if name == "bigbird":
        width, n_global, random = _ints(name, values, 3, syntax)
        seed = _ints(name, values[3:], 1, syntax)[0] if len(values) > 3 else 0
        return Pattern(name, width=width, n_global=n_global, random=random, seed=seed)
    if name in ("svd", "linformer", "topk"):
        (rank,) = _ints(name, values, 1, syntax)
        return Pattern(name, rank=rank)
    if name == "performer":
        (features,) = _ints(name, values, 1, syntax)
        seed = _ints(name, values[1:], 1, syntax)[0] if len(values) > 1 else 0
        return Pattern(name, features=features, seed=seed)
    (groups,) = _ints(name, values, 1, syntax)
    return Pattern(name, groups=groups)


def check_pattern(pattern: Pattern, n: int, n_heads: int) -> None:
    """Refuse parameters that make no sense for ``n`` tokens and ``n_heads`` query heads (one line, how to fix)."""
    p = pattern
    if p.name not in PATTERNS:
        msg = f"unknown pattern {p.name!r}; use one of {', '.join(PATTERNS)}"
        raise ValueError(msg)

    def in_range(value: int, what: str, top: int = n) -> None:
        if value <= 0 or value > top:
            msg = f"{p.label}: {what} {value} must lie in 1..{top} for this text of {n} tokens"
            raise ValueError(msg)

    if p.name in ("window", "dilated", "strided", "fixed", "block", "global", "bigbird"):
        in_range(p.width, {"block": "block size", "strided": "stride", "fixed": "block length"}.get(p.name, "width"))
    if p.name == "dilated":
        in_range(p.dilation, "dilation")
    if p.name == "fixed" and not 1 <= p.dilation <= p.width:
        msg = f"{p.label}: summary cells {p.dilation} must lie in 1..{p.width} (the block length)"
        raise ValueError(msg)
    if p.name in ("global", "bigbird") and not 0 <= p.n_global <= n:
        msg = f"{p.label}: global tokens {p.n_global} must lie in 0..{n} for this text of {n} tokens"
        raise ValueError(msg)
    if p.global_positions and (min(p.global_positions) < 0 or max(p.global_positions) >= n):
        msg = f"{p.label}: global positions must lie in 0..{n - 1} (0-based token positions of this text)"
        raise ValueError(msg)
    if p.name == "bigbird" and not 0 <= p.random <= n:
        msg = f"{p.label}: random keys {p.random} must lie in 0..{n}"
        raise ValueError(msg)
    if p.name in ("svd", "linformer", "topk"):
        in_range(p.rank, {"svd": "rank", "linformer": "projected rows", "topk": "k"}[p.name])
    if p.name == "performer":
        if p.features <= 0:
            msg = f"{p.label}: random features {p.features} must be at least 1"
            raise ValueError(msg)
        need = 2 * n_heads * n * p.features * 8  # float64 features of queries and keys
        if need > FEATURE_BUDGET_BYTES:
            top = FEATURE_BUDGET_BYTES // (2 * n_heads * n * 8)
            msg = (
                f"{p.label}: {p.features} random features need {need / 2**30:.1f} GiB for {n} tokens x {n_heads} heads, "
                f"too much memory; use at most {top}"
            )
            raise ValueError(msg)
    if p.name == "kv" and (p.groups <= 0 or n_heads % p.groups):
        divisors = [g for g in range(1, n_heads + 1) if n_heads % g == 0]
        msg = f"{p.label}: key/value heads must divide the {n_heads} query heads; use one of {', '.join(map(str, divisors))}"
        raise ValueError(msg)


def needs_query_key(pattern: Pattern) -> bool:
    """True when the approximation needs the real queries and keys, not only the exact map
    (a materialised model keeps only the map)."""
    return pattern.name in ("linformer", "performer", "linear", "kv")


def sweep_values(pattern: Pattern, n: int, n_heads: int) -> list[Pattern]:
    """The pattern at a range of its main parameter (``SWEEP_PARAMETER``), smallest first, all valid for ``n``."""
    field = SWEEP_PARAMETER.get(pattern.name)
    if field is None:
        return [pattern]
    if field == "groups":
        values = [g for g in range(1, n_heads + 1) if n_heads % g == 0]
    elif field == "features":
        values = [8, 16, 32, 64, 128, 256, 512]
    elif field == "random":
        values = [0, 1, 2, 4, 8, 16]
        values = [v for v in values if v <= n]
    else:
        values = sorted({min(v, n) for v in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, n)})
    if pattern.name == "fixed":
        values = [v for v in values if v >= pattern.dilation]
    return [dataclasses.replace(pattern, **{field: v}) for v in values]


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
    device = device if device is not None else (model_allowed.device if model_allowed is not None else "cpu")
    q_pos = torch.arange(n_keys - n_queries, n_keys, device=device)[:, None]  # [q, 1]
    k_pos = torch.arange(n_keys, device=device)[None, :]  # [1, k]
    offset = q_pos - k_pos  # [q, k] = query position - key position (> 0: key to the left)
    distance = offset.abs()
    p = pattern
    if p.name == "full":
        return torch.ones(n_queries, n_keys, dtype=torch.bool, device=device)
    if p.name == "window":
        allowed = distance < p.width
        if p.side == "causal":
            allowed &= offset >= 0
    elif p.name == "dilated":
        allowed = (distance % p.dilation == 0) & (distance < p.width * p.dilation)
    elif p.name == "strided":
        allowed = (distance < p.width) | (distance % p.width == 0)
    elif p.name == "fixed":
        same_block = (q_pos // p.width) == (k_pos // p.width)
        summary = (k_pos % p.width) >= p.width - p.dilation
        allowed = same_block | summary.expand(n_queries, n_keys)
    elif p.name == "block":
        allowed = (q_pos // p.width) == (k_pos // p.width)
    elif p.name in ("global", "bigbird"):
        real = torch.ones(n_keys, dtype=torch.bool, device=device) if real_keys is None else real_keys.to(device)
        real_positions = torch.nonzero(real).flatten()  # [m] padded position of real token t
        is_global = torch.zeros(n_keys, dtype=torch.bool, device=device)
        if p.global_special:
            if special is None:
                msg = "global:special needs to know which tokens are special"
                raise ValueError(msg)
            is_global |= special.to(device) & real
        chosen = [t for t in p.global_positions if t < len(real_positions)]
        is_global[real_positions[chosen]] = True
        is_global[real_positions[: p.n_global]] = True
        allowed = (distance < p.width) | is_global[None, :] | is_global[q_pos[:, 0]][:, None]
        if p.name == "bigbird" and p.random > 0:
            generator = torch.Generator(device="cpu").manual_seed(p.seed)
            draw = torch.rand(n_queries, n_keys, generator=generator).to(device)  # [q, k]
            candidates = ~allowed
            if model_allowed is not None:
                candidates &= model_allowed.to(device)
            draw = torch.where(candidates, draw, torch.full_like(draw, -1.0))
            top = draw.topk(min(p.random, n_keys), dim=-1)
            picked = torch.zeros_like(allowed).scatter_(1, top.indices, top.values >= 0)
            allowed = allowed | picked
    else:
        msg = f"{p.label} is not a sparse pattern (no key mask); use pattern_weights"
        raise ValueError(msg)
    return allowed | (offset == 0)


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


def _check_no_sinks(layer: LayerTensors) -> None:
    if layer.sinks is not None:
        msg = (
            "this layer has learned attention sinks, which the efficient-attention patterns do not model "
            "(a pattern's rows sum to 1; a sink takes a learned share of each row)"
        )
        raise ValueError(msg)


def pattern_weights(
    pattern: Pattern, layer: LayerTensors, *, batch: int, special: torch.Tensor | None = None
) -> torch.Tensor:
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
    query, key, mask, scaling = layer.query, layer.key, layer.mask, layer.scaling
    n_heads, n_queries, n_keys = query.shape[1], query.shape[2], key.shape[2]
    heads = torch.arange(n_heads)
    rows = torch.arange(n_keys - n_queries, n_keys)
    p = pattern
    allowed = mask_rows(mask, batch, rows, n_keys, query.device)  # [q, k] the model's own mask
    if p.name == "kv":
        pooled = torch.stack([_pooled_heads(key[b].float(), n_heads, p.groups) for b in range(key.shape[0])])  # [B, G, k, d]
        pooled_layer = Tensors(query, pooled, mask, scaling, softcap=layer.softcap)
        scores = attention_scores(pooled_layer, batch=batch, heads=heads, rows=rows)
        return torch.softmax(scores, dim=-1) * allowed[None]
    if p.name in ("performer", "linear"):
        q = query[batch].double()  # [H, q, d]
        k = expand_heads(key[batch].double(), n_heads)  # [H, k, d]
        if p.name == "linear":
            phi_q, phi_k = torch.nn.functional.elu(q) + 1, torch.nn.functional.elu(k) + 1
        else:
            projection = _orthogonal_features(p.features, q.shape[-1], p.seed).to(q.device)  # [M, d]
            root = math.sqrt(scaling)  # exp(s·q·k) = exp((√s q)·(√s k))
            phi_q = _favor_features(q * root, projection, per_row=True)  # [H, q, M]
            phi_k = _favor_features(k * root, projection, per_row=False)  # [H, k, M]
        kernel = phi_q @ phi_k.transpose(-1, -2)  # [H, q, k] >= 0
        return _normalise(kernel, allowed[None]).float()
    scores = attention_scores(layer, batch=batch, heads=heads, rows=rows)  # [H, q, k]
    if p.name == "linformer":
        return _linformer(p.rank, query, key, scaling, batch=batch, allowed=allowed)
    if p.name == "topk":
        top = scores.topk(min(p.rank, n_keys), dim=-1).indices  # [H, q, K]
        keep = torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, top, True) & allowed[None]
        return torch.softmax(scores.masked_fill(~keep, torch.finfo(scores.dtype).min), dim=-1) * allowed[None]
    exact = torch.softmax(scores, dim=-1) * allowed[None]  # [H, q, k]
    if p.name == "svd":
        u, s, vh = torch.linalg.svd(exact.double(), full_matrices=False)  # [H, q, r'], [H, r'], [H, r', k]
        r = min(p.rank, s.shape[-1])
        approx = (u[..., :r] * s[..., None, :r]) @ vh[..., :r, :]  # [H, q, k] best rank-r (Frobenius)
        return _normalise(approx.clamp(min=0), allowed[None]).float()
    real_keys = allowed.any(0)  # [k]
    kept = pattern_allowed(p, n_queries, n_keys, real_keys=real_keys, special=special, model_allowed=allowed, device=scores.device)
    keep = kept & allowed  # [q, k]
    return torch.softmax(scores.masked_fill(~keep[None], torch.finfo(scores.dtype).min), dim=-1) * allowed[None]


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
        v = _pooled_heads(v, n_heads, pattern.groups) if pattern.name == "kv" else v
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
