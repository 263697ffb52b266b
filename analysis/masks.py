"""Mask matrices and how much attention goes to the right of each query. Pure numpy.

A model masks attention by adding a large negative number (the dtype's minimum) to the score of
every forbidden query/key pair before the softmax, so those weights come out exactly 0 and the
allowed ones renormalise. An encoder forbids only padding keys (bidirectional); a decoder also
forbids every key to the right of the query (causal).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

__all__ = [
    "MASK_CATEGORIES",
    "MaskKind",
    "allowed_matrix",
    "mask_categories",
    "recorded_allowed",
    "right_share",
    "right_share_per_query",
]

MaskKind = Literal["bidirectional", "causal"]

# Category codes of ``mask_categories``, in drawing order.
MASK_CATEGORIES = ("visible", "masked: future key (causal)", "masked: padding key", "padding query (output unused)")


def _pad_vector(n: int, attention_mask) -> np.ndarray:
    if attention_mask is None:
        return np.ones(n, dtype=bool)
    real = np.asarray(attention_mask).astype(bool).reshape(-1)  # [n]
    if real.shape[0] != n:
        msg = f"attention_mask has {real.shape[0]} positions but the map has {n}; pass the row of the same text"
        raise ValueError(msg)
    return real


def allowed_matrix(kind: MaskKind, n: int, attention_mask=None) -> np.ndarray:
    """Which keys each query may attend to.

    Args:
        kind: "bidirectional" (encoder) or "causal" (decoder).
        n: sequence length (padded length when ``attention_mask`` is given).
        attention_mask: optional int/bool [n], 1 = real token, 0 = padding.
    Returns:
        bool [n, n] (query, key); True = the score is kept, False = a large negative is added.
    """
    if kind not in ("bidirectional", "causal"):
        msg = f"mask kind must be 'bidirectional' or 'causal', not {kind!r}"
        raise ValueError(msg)
    if n < 1:
        msg = f"sequence length must be >= 1, not {n}"
        raise ValueError(msg)
    real = _pad_vector(n, attention_mask)
    allowed = np.broadcast_to(real[None, :], (n, n)).copy()  # padding keys are masked for every query
    if kind == "causal":
        allowed &= np.tri(n, dtype=bool)  # key position <= query position
    return allowed


def recorded_allowed(mask, batch: int, n: int) -> np.ndarray:
    """The mask a layer actually applied, as a bool [n, n] matrix (padded coordinates).

    Args:
        mask: what the recorder stored for a layer: bool [B or 1, 1, n, n] (numpy or torch), or the
            strings "causal" / "full" for unpadded inputs.
        batch: which text of the batch.
        n: padded sequence length.
    Returns:
        bool [n, n]; True = allowed.
    """
    if isinstance(mask, str):
        if mask == "full":
            return np.ones((n, n), dtype=bool)
        if mask == "causal":
            return np.tri(n, dtype=bool)
        msg = f"unknown recorded mask {mask!r}; expected 'causal', 'full' or a boolean array"
        raise ValueError(msg)
    array = mask.detach().cpu().numpy() if hasattr(mask, "detach") else np.asarray(mask)
    row = array[batch if array.shape[0] > 1 else 0]  # [H or 1, q, kv]
    if np.issubdtype(row.dtype, np.floating):  # additive: allowed where any head's term is not the dtype minimum
        return (row[:, :n, :n] > np.finfo(row.dtype).min / 2).any(0)
    return row[0, :n, :n].astype(bool)


def mask_categories(allowed: np.ndarray, attention_mask=None) -> np.ndarray:
    """Name why each cell is visible or masked (index into ``MASK_CATEGORIES``).

    Args:
        allowed: bool [n, n] from ``allowed_matrix`` or ``recorded_allowed``.
        attention_mask: optional int/bool [n], 1 = real token.
    Returns:
        int8 [n, n]: 0 visible, 1 future key (causal), 2 padding key, 3 padding query row.
    """
    allowed = np.asarray(allowed, dtype=bool)
    n = allowed.shape[0]
    real = _pad_vector(n, attention_mask)
    future = np.triu(np.ones((n, n), dtype=bool), k=1)  # key to the right of the query
    out = np.zeros((n, n), dtype=np.int8)
    out[~allowed & future] = 1
    out[~allowed & ~real[None, :]] = 2  # a padding key wins over "future": padding is the reason
    out[~real, :] = 3
    return out


def right_share_per_query(weights: np.ndarray) -> np.ndarray:
    """Attention mass each query puts on keys to its right (key position > query position).

    Args:
        weights: float [..., n, n] attention maps (query, key) over real tokens.
    Returns:
        float [..., n]; the last query has nothing to its right, so its share is 0.
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim < 2 or w.shape[-1] != w.shape[-2]:
        msg = f"need square attention maps [..., n, n], got shape {w.shape}"
        raise ValueError(msg)
    n = w.shape[-1]
    right = np.triu(np.ones((n, n), dtype=bool), k=1)
    return np.where(right, w, 0.0).sum(-1)


def right_share(weights: np.ndarray) -> np.ndarray:
    """Mean over queries (all but the last, which has no right-hand keys) of the mass to the right.

    0 for a causal model, clearly above 0 for a bidirectional one.

    Args:
        weights: float [..., n, n] with n >= 2.
    Returns:
        float [...] (a scalar array for one map).
    """
    per_query = right_share_per_query(weights)  # [..., n]
    if per_query.shape[-1] < 2:
        msg = "need at least 2 tokens to measure attention to the right of a query"
        raise ValueError(msg)
    return per_query[..., :-1].mean(-1)
