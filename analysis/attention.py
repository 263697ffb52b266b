"""Attention maps recomputed from recorded query/key tensors, one query chunk at a time.

``softmax(q·kᵀ·scale + mask)`` exactly as transformers' eager kernel computes it, for just the
heads and rows asked for. Nothing here imports transformers.

Attention sinks (gpt-oss and its kin): a learned logit per head (or, in some models, per head and
query) joins each row's softmax as one more key with no value, then is dropped, so a row's weights
over the tokens sum to less than 1 — the rest went to the sink. ``sinks`` (float [B or 1, H, n or 1])
carries those logits wherever a softmax is taken.

Every function here, and every function of ``analysis`` that recomputes weights, takes one layer's
inputs as a ``LayerTensors`` (query, key, mask, scaling, softcap, sinks) first, then keyword arguments
for what to compute (batch, heads, rows, ...). ``models.hook.LayerRecord`` (a recorded layer) and
``models.hook.AttentionCall`` (a call an intervention sees) fit it as they are; ``Tensors`` builds one
from raw tensors.

Two exact paths to the weights. A layer that carries ``weights`` (float32 [B, H, q, k], kept by the hook
while the forward ran: ``full_weights`` computed once instead of the fast kernel) is read from them;
any other layer is recomputed from its query and key, in query chunks. Both are the same formula.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol, TypeGuard

import torch

__all__ = [
    "DEFAULT_CHUNK",
    "LayerTensors",
    "Tensors",
    "attention_map",
    "attention_rows",
    "attention_scores",
    "captured",
    "full_weights",
    "is_additive",
    "iter_row_chunks",
    "map_rows",
    "mask_rows",
    "normalise",
    "real_weight_chunks",
    "sink_rows",
    "softmax_rows",
]

# Rows per chunk: one chunk of all heads of a 30-layer model at 8k keys stays ~75 MB (fp32).
DEFAULT_CHUNK = 256


class LayerTensors(Protocol):
    """One attention layer's inputs, all that is needed to recompute its weights.

    Read-only members, so a frozen dataclass fits as well as ``models.hook.LayerRecord`` and
    ``models.hook.AttentionCall`` (whose queries may be fewer than their keys: decoding with a cache).
    """

    @property
    def query(self) -> torch.Tensor:
        """[B, H, n, d] post-RoPE queries."""

    @property
    def key(self) -> torch.Tensor:
        """[B, KV, n, d] keys before grouped-query expansion; query head h reads KV head h // (H / KV)."""

    @property
    def mask(self) -> object:
        """bool [B or 1, 1, n, n], an additive float [B or 1, H or 1, n, n], or "causal" / "full"."""

    @property
    def scaling(self) -> float:
        """The factor applied to q·kᵀ."""

    @property
    def softcap(self) -> float | None:
        """Logit soft-capping (scores → tanh(scores / c)·c), or None."""

    @property
    def sinks(self) -> torch.Tensor | None:
        """float [B or 1, H, n or 1] learned sink logits, or None."""


@dataclass(frozen=True, eq=False)
class Tensors:
    """A ``LayerTensors`` from raw tensors (tests, parity checks, callers holding no record).

    ``value`` ([B, KV, n, dv]) is optional; only ``analysis.patterns.pattern_output`` reads it.
    """

    query: torch.Tensor
    key: torch.Tensor
    mask: object
    scaling: float
    softcap: float | None = None
    sinks: torch.Tensor | None = None
    value: torch.Tensor | None = None
    weights: torch.Tensor | None = None  # float32 [B, H, q, k] when already computed (see ``captured``)


def captured(layer) -> torch.Tensor | None:
    """The layer's weights computed while the forward ran (float32 [B, H, q, k]), or None: recompute from q/k.

    Any ``LayerTensors`` may carry them as ``weights``; ``models.hook.LayerRecord`` does on the captured path.
    """
    return getattr(layer, "weights", None)


@functools.lru_cache(maxsize=16)
def _later_keys(n_queries: int, n_keys: int, device: torch.device) -> torch.Tensor:
    """bool [q, k]: True where the key comes after the query (what a causal mask forbids). Cached, never written to."""
    return torch.ones(n_queries, n_keys, dtype=torch.bool, device=device).triu_(1)


# The causal mask as an additive term is kept for inputs up to this size (float32 [group·q, k]); larger ones are masked in place.
_CAUSAL_BIAS_BYTES = 16 * 1024**2


@functools.lru_cache(maxsize=8)
def _causal_bias(n_queries: int, n_keys: int, group: int, device: torch.device) -> torch.Tensor | None:
    """float32 [1, group·q, k]: 0 where a query may see the key, dtype min after it (eager's additive causal mask),
    once per query head of a KV group; None when larger than ``_CAUSAL_BIAS_BYTES``. Cached, never written to."""
    if 4 * group * n_queries * n_keys > _CAUSAL_BIAS_BYTES:
        return None
    low = torch.finfo(torch.float32).min
    bias = torch.zeros(n_queries, n_keys, device=device).masked_fill_(_later_keys(n_queries, n_keys, device), low)
    return bias.repeat(group, 1)[None]


def full_weights(layer: LayerTensors, out: torch.Tensor | None = None) -> torch.Tensor:
    """Every batch item's and head's weights at once, ``softmax(q·kᵀ·scale + mask)`` as eager computes it.

    The captured path's one computation (``models.hook`` calls it inside the attention call, then takes
    the output as ``weights·V``), vectorised over batch and heads: no query chunks, so only for layers whose
    ``[B, H, q, k]`` is small. Same masking, soft-capping and sink rules as ``attention_rows``.

    Args:
        out: a contiguous float32 [B, H, q, k] to write the weights into (a slot of a buffer for every layer).
    Returns:
        float32 [B, H, q, k] (``out`` when given); masked entries 0, allowed entries of a row sum to 1 (1 minus
        the sink's share).
    """
    query, key, mask, scaling, softcap = layer.query, layer.key, layer.mask, layer.scaling, layer.softcap
    n_batch, n_heads, n_queries, d = query.shape
    n_kv, n_keys = key.shape[1], key.shape[2]
    group = n_heads // n_kv
    # Each KV head's keys times its whole group of queries at once (no grouped-query copy of the keys).
    q = query.float().reshape(n_batch * n_kv, group * n_queries, d)  # [B·KV, group·q, d]
    k = key.float().transpose(-1, -2).reshape(n_batch * n_kv, d, n_keys)  # [B·KV, d, k]
    shape = (n_batch * n_kv, group * n_queries, n_keys)
    scores = torch.empty(shape, device=q.device) if out is None else out.view(shape)
    causal = isinstance(mask, str) and mask == "causal"
    bias = _causal_bias(n_queries, n_keys, group, q.device) if causal and softcap is None else None
    if bias is not None:  # the scaling and the causal mask applied in the product's epilogue: no pass over the scores
        torch.baddbmm(bias, q, k, alpha=scaling, out=scores)
    else:  # beta = 0: the uninitialised scores are ignored (NaN included), then overwritten
        scores.baddbmm_(q, k, beta=0.0, alpha=scaling)
    scores = scores.view(n_batch, n_heads, n_queries, n_keys)  # [B, H, q, k]
    if softcap is not None:
        scores = scores.div_(softcap).tanh_().mul_(softcap)
    low = torch.finfo(scores.dtype).min
    if is_additive(mask):
        scores.add_(mask[..., :n_keys].to(scores.device, scores.dtype)).clamp_(min=low)
    elif causal and bias is None:  # key position <= query position, as ``mask_rows``
        scores.masked_fill_(_later_keys(n_queries, n_keys, scores.device), low)
    elif isinstance(mask, torch.Tensor):  # bool [B or 1, 1, q, kv], True = may attend
        scores.masked_fill_(~mask[..., :n_keys].to(scores.device), low)
    sinks = layer.sinks
    if sinks is None:
        return torch.softmax(scores, dim=-1, out=scores)  # in place: no second [B, H, q, k] buffer
    weights = normalise(scores, sinks.float()[..., None].to(scores.device))[0]  # [B or 1, H, q or 1, 1] joins each row's Z
    return weights if out is None else out.copy_(weights)


def is_additive(mask: object) -> TypeGuard[torch.Tensor]:
    """A float mask is added to the scores (it carries a bias); a bool one only allows or forbids."""
    return isinstance(mask, torch.Tensor) and mask.is_floating_point()


def mask_rows(mask, batch: int, rows: torch.Tensor, n_keys: int, device) -> torch.Tensor:
    """The allowed keys for some query rows. Returns bool [len(rows), n_keys] (True = may attend).

    An additive mask allows a key where any head's term is above half the dtype minimum.
    """
    if isinstance(mask, str):
        if mask == "full":
            return torch.ones(len(rows), n_keys, dtype=torch.bool, device=device)
        keys = torch.arange(n_keys, device=device)
        return keys[None, :] <= rows.to(device)[:, None]  # causal: key position <= query position
    if is_additive(mask):
        m = mask[batch if mask.shape[0] > 1 else 0]  # [H or 1, q, kv]
        allowed = (m[:, rows.to(m.device), :n_keys] > torch.finfo(m.dtype).min / 2).any(0)
        return allowed.to(device)
    m = mask[batch if mask.shape[0] > 1 else 0, 0]  # [q, kv]
    return m[rows.to(m.device), :n_keys].to(device)


def _add_bias(scores: torch.Tensor, mask: torch.Tensor, batch: int, heads: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """scores [h, r, n] + the additive mask's terms for those heads and rows (as eager adds them)."""
    m = mask[batch if mask.shape[0] > 1 else 0]  # [H or 1, q, kv]
    m = m[:, rows.to(m.device), : scores.shape[-1]]
    if m.shape[0] > 1:
        m = m.index_select(0, heads.to(m.device))
    low = torch.finfo(scores.dtype).min
    return scores.add_(m.to(scores.device, scores.dtype)).clamp_(min=low)


def attention_scores(
    layer: LayerTensors,
    *,
    batch: int,
    heads: torch.Tensor,
    rows: torch.Tensor,
    key_limit: int | None = None,
) -> torch.Tensor:
    """Masked pre-softmax scores q·kᵀ·scale, soft-capped (disallowed = dtype min). float32 [h, r, n]; see
    ``attention_rows``. The layer's sinks are not a key: they join the softmax (``softmax_rows``).

    ``key_limit`` keeps only keys [0, key_limit): callers pass it under a causal mask, where later keys are masked anyway.
    """
    query, key, mask, scaling, softcap = layer.query, layer.key, layer.mask, layer.scaling, layer.softcap
    n_heads, n_kv = query.shape[1], key.shape[1]
    group = n_heads // n_kv
    heads = heads.to(query.device)
    rows_dev = rows.to(query.device)
    if len(heads) == n_heads and bool((heads == torch.arange(n_heads, device=heads.device)).all()):
        # All heads: multiply each KV head's keys by its whole group of queries at once, so the keys are
        # read in place instead of copied once per query head (that copy dominated long inputs).
        q = query[batch][:, rows_dev].float()  # [H, r, d]
        r, d = q.shape[1], q.shape[2]
        k = key[batch][:, :key_limit].float()  # [KV, n, d], a view when already float32
        scores = torch.matmul(q.reshape(n_kv, group * r, d), k.transpose(-1, -2))  # [KV, group·r, n]
        scores = scores.view(n_heads, r, k.shape[1]).mul_(scaling)  # [H, r, n]
    else:
        q = query[batch].index_select(0, heads)[:, rows_dev].float()  # [h, r, d]
        k = key[batch].index_select(0, heads // group)[:, :key_limit].float()  # [h, n, d]
        scores = torch.matmul(q, k.transpose(-1, -2)).mul_(scaling)  # [h, r, n]
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if is_additive(mask):
        return _add_bias(scores, mask, batch, heads, rows)
    allowed = mask_rows(mask, batch, rows, scores.shape[-1], scores.device)  # [r, n]
    return scores.masked_fill_(~allowed[None], torch.finfo(scores.dtype).min)


def sink_rows(sinks: torch.Tensor, *, batch: int, heads: torch.Tensor | None, rows: torch.Tensor) -> torch.Tensor:
    """The sink logits of some heads and query rows of one batch item: float32 [h, r, 1].

    Args:
        sinks: float [B or 1, H, n or 1] (one logit per head, or per head and query).
        heads: int64 [h] query heads (all when None); rows: int64 [r] query positions (padded coordinates).
    """
    s = sinks[batch if sinks.shape[0] > 1 else 0]  # [H, n or 1]
    if heads is not None:
        s = s.index_select(0, heads.to(s.device))
    s = s[:, rows.to(s.device)] if s.shape[-1] > 1 else s.expand(-1, len(rows))
    return s.float()[..., None]


def normalise(scores: torch.Tensor, sinks: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax over keys with one exp pass, keeping log Z; the rows' sink logits join Z when given.

    Args:
        scores: float32 [h, r, n] masked scores (left unchanged).
        sinks: float32 [h, r, 1] the rows' sink logits (``sink_rows``), or None.
    Returns:
        (weights [h, r, n], log_norm [h, r]); with sinks a row sums to 1 - its sink's share.
    """
    row_max = scores.amax(-1, keepdim=True)
    sink = None
    if sinks is not None:
        sink = sinks.to(scores.device, scores.dtype)
        row_max = torch.maximum(row_max, sink)
    weights = (scores - row_max).exp_()
    norm = weights.sum(-1, keepdim=True)
    if sink is not None:
        norm = norm + (sink - row_max).exp()
    weights.div_(norm)
    return weights, (row_max + norm.log())[..., 0]


def softmax_rows(
    scores: torch.Tensor, sinks: torch.Tensor | None, *, batch: int, heads: torch.Tensor | None, rows: torch.Tensor
) -> torch.Tensor:
    """The weights of masked scores [h, r, n]: a plain softmax, or with the rows' learned sinks in the
    denominator (``heads``: which heads ``scores`` holds, all when None; ``rows``: their query positions)."""
    if sinks is None:
        return torch.softmax(scores, dim=-1)
    return normalise(scores, sink_rows(sinks, batch=batch, heads=heads, rows=rows))[0]


def attention_rows(layer: LayerTensors, *, batch: int, heads: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Attention weights of some heads for some query rows of one batch item.

    Args:
        layer: the layer's query [B, H, n, d] (post-RoPE), key [B, KV, n, d] (before grouped-query
            expansion), mask, scaling, softcap and sinks (``LayerTensors``).
        heads: int64 [h] query-head indices; head h reads KV head h // (H / KV).
        rows: int64 [r] query positions (padded coordinates).
    Returns:
        float32 [h, r, n] weights over all (padded) key positions; allowed entries of a row sum to 1
        (to 1 minus the sink's share, with sinks).
    """
    weights = captured(layer)
    if weights is not None:  # computed while the forward ran: read, not recomputed
        w = weights[batch]  # [H, q, k]
        if len(heads) != w.shape[0] or bool((heads != torch.arange(w.shape[0])).any()):
            w = w.index_select(0, heads.to(w.device))
        return w[:, rows.to(w.device)]
    scores = attention_scores(layer, batch=batch, heads=heads, rows=rows)
    if layer.sinks is None:
        return torch.softmax(scores, dim=-1, out=scores)  # in place: the scores are this call's own
    return softmax_rows(scores, layer.sinks, batch=batch, heads=heads, rows=rows)


def iter_row_chunks(rows: torch.Tensor, chunk: int = DEFAULT_CHUNK) -> Iterator[torch.Tensor]:
    """Split query positions into chunks of at most ``chunk`` rows."""
    for start in range(0, len(rows), chunk):
        yield rows[start : start + chunk]


def real_weight_chunks(
    layer: LayerTensors,
    *,
    batch: int,
    real_index: torch.Tensor,
    chunk: int = DEFAULT_CHUNK,
) -> Iterator[torch.Tensor]:
    """All heads' weights over one text's real tokens, one chunk of query rows at a time.

    Yields:
        float32 [H, r, m]: rows are the next ``r`` real queries, columns all ``m`` real keys
        (normalised over the padded row, as eager is).
    """
    heads = torch.arange(layer.query.shape[1])
    cols = real_index.to(layer.query.device)
    for rows in iter_row_chunks(real_index, chunk):
        weights = attention_rows(layer, batch=batch, heads=heads, rows=rows)
        yield weights[:, :, cols]


def map_rows(layer: LayerTensors, *, batch: int, heads: torch.Tensor, rows: torch.Tensor, all_keys: bool) -> torch.Tensor:
    """Weights of some heads for a chunk of query rows: float32 [h, r, k] over every key when ``all_keys``,
    else over all padded keys (the caller picks its columns).

    Under a named causal mask the keys after the chunk's last query are masked for every row, so only
    the keys up to it are scored (half the work over a whole map); the rest are 0, as eager gives them.
    """
    n_keys = layer.key.shape[-2]
    if not (all_keys and isinstance(layer.mask, str) and layer.mask == "causal" and layer.sinks is None and captured(layer) is None):
        return attention_rows(layer, batch=batch, heads=heads, rows=rows)
    limit = int(rows.max()) + 1
    scores = attention_scores(layer, batch=batch, heads=heads, rows=rows, key_limit=limit)  # [h, r, limit]
    weights = torch.softmax(scores, dim=-1, out=scores)
    return weights if limit == n_keys else torch.nn.functional.pad(weights, (0, n_keys - limit))


def attention_map(
    layer: LayerTensors,
    *,
    batch: int,
    head: int,
    rows: torch.Tensor,
    cols: torch.Tensor,
    chunk: int = DEFAULT_CHUNK,
) -> torch.Tensor:
    """One head's map restricted to ``rows`` x ``cols`` (padded coordinates). Returns float32 [r, c]."""
    heads = torch.tensor([head])
    n_keys = layer.key.shape[-2]
    all_keys = len(cols) == n_keys and bool((cols == torch.arange(n_keys)).all())
    cols = cols.to(layer.query.device)
    parts = []
    for part in iter_row_chunks(rows, chunk):
        weights = map_rows(layer, batch=batch, heads=heads, rows=part, all_keys=all_keys)[0]  # [r, k]
        parts.append(weights if all_keys else weights[:, cols])
    return torch.cat(parts, dim=0)
