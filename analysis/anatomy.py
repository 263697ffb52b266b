"""The Anatomy page's arithmetic: parameters under MHA / GQA / MQA, residual-stream norms, attention by relative
distance, the parts of an encoder's layer-0 input, and the n² fit of measured attention cost.

Pure: arrays and numbers in, frames out (``models.anatomy`` reads the model and calls these).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

__all__ = [
    "attention_parameters",
    "distance_profile",
    "heads_frame",
    "kv_cache_bytes",
    "part_norm_frame",
    "quadratic_fit",
    "residual_norm_frame",
]


def attention_parameters(
    d_model: int, n_heads: int, n_kv_heads: int, head_dim: int, *, bias: bool = False, out_bias: bool | None = None
) -> dict[str, int]:
    """Parameters of one attention block's projections: Q (d → H·d_h), K and V (d → KV·d_h), O (H·d_h → d).

    Args:
        bias: Q, K and V have biases (one per output feature); out_bias: O has one (default: as ``bias``; Qwen2 has
            biases on Q, K, V only).
    Returns:
        {"q", "k", "v", "o", "total"}.
    """
    out_bias = bias if out_bias is None else out_bias
    q = d_model * n_heads * head_dim + (n_heads * head_dim if bias else 0)
    k = d_model * n_kv_heads * head_dim + (n_kv_heads * head_dim if bias else 0)
    o = n_heads * head_dim * d_model + (d_model if out_bias else 0)
    return {"q": q, "k": k, "v": k, "o": o, "total": q + 2 * k + o}


def kv_cache_bytes(n_layers: int, n_kv_heads: int, head_dim: int, bytes_per_element: int) -> int:
    """KV-cache bytes per token: 2 (K and V) x layers x KV heads x head size x bytes per element."""
    return 2 * n_layers * n_kv_heads * head_dim * bytes_per_element


def heads_frame(
    d_model: int,
    n_heads: int,
    n_kv_heads: int,
    head_dim: int,
    n_layers: int,
    *,
    bias: bool = False,
    out_bias: bool | None = None,
    bytes_per_element: int = 2,
    cache_layers: int | None = None,
) -> pd.DataFrame:
    """The attention block's parameters and KV cache at the same width under one head, H heads, GQA and MQA.

    One head of width H·d_h has exactly the parameters of H heads of width d_h (heads split the projections, they do
    not add to them); fewer key/value heads shrink K and V, and the KV cache, by H / KV.

    Args:
        n_layers: attention blocks (``all_layers`` counts them); cache_layers: blocks whose keys and values a
            generating model caches (default ``n_layers``; an encoder-decoder caches its decoder's self-attention).

    Returns:
        DataFrame, one row per variant: variant, heads, kv_heads, head_dim, q, k, v, o, per_layer, all_layers,
        kv_cache_bytes_per_token, model (True for the model's own grouping; the one-head row is never the model's).
    """
    rows = []
    inner = n_heads * head_dim
    variants = [("1 head", 1, 1, inner)]
    for groups in [g for g in range(n_heads, 0, -1) if n_heads % g == 0]:
        kind = f"MHA ({n_heads} heads)" if groups == n_heads else ("MQA" if groups == 1 else f"GQA-{groups}")
        variants.append((kind, n_heads, groups, head_dim))
    for variant, heads, kv_heads, width in variants:
        counts = attention_parameters(d_model, heads, kv_heads, width, bias=bias, out_bias=out_bias)
        rows.append(
            {
                "variant": variant,
                "heads": heads,
                "kv_heads": kv_heads,
                "head_dim": width,
                "q": counts["q"],
                "k": counts["k"],
                "v": counts["v"],
                "o": counts["o"],
                "per_layer": counts["total"],
                "all_layers": counts["total"] * n_layers,
                "kv_cache_bytes_per_token": kv_cache_bytes(
                    n_layers if cache_layers is None else cache_layers, kv_heads, width, bytes_per_element
                ),
                "model": variant != "1 head" and kv_heads == n_kv_heads,
            }
        )
    return pd.DataFrame(rows)


def residual_norm_frame(hidden: Sequence[np.ndarray]) -> pd.DataFrame:
    """The residual stream's size after every block: per layer the L2 norm of each token's hidden state.

    Args:
        hidden: per hidden layer (0 = embeddings) float [n, d].
    Returns:
        DataFrame, one row per layer: layer, mean_norm, median_norm, max_norm, growth (mean over layer 0's).
    """
    rows = []
    for layer, states in enumerate(hidden):
        norms = np.linalg.norm(np.asarray(states, dtype=np.float64), axis=-1)  # [n]
        rows.append({"layer": layer, "mean_norm": norms.mean(), "median_norm": float(np.median(norms)), "max_norm": norms.max()})
    frame = pd.DataFrame(rows)
    frame["growth"] = frame["mean_norm"] / frame["mean_norm"].iloc[0] if len(frame) and frame["mean_norm"].iloc[0] > 0 else np.nan
    return frame


def distance_profile(maps: np.ndarray) -> pd.DataFrame:
    """Each head's mean attention weight by relative distance (query position − key position).

    Args:
        maps: float [H, n, n], one layer's maps over real tokens.
    Returns:
        DataFrame: head, offset (> 0: a key to the left, < 0: to the right), weight (mean over the queries that have a
        key at that offset), queries (how many).
    """
    maps = np.asarray(maps, dtype=np.float64)
    n_heads, n, _ = maps.shape
    rows = []
    for offset in range(-(n - 1), n):
        # query i, key i - offset: the (-offset)-th diagonal of each map
        diagonal = np.diagonal(maps, offset=-offset, axis1=1, axis2=2)  # [H, n - |offset|]
        for head in range(n_heads):
            rows.append({"head": head, "offset": offset, "weight": float(diagonal[head].mean()), "queries": int(diagonal.shape[1])})
    return pd.DataFrame(rows)


def part_norm_frame(tokens: Sequence[str], parts: dict[str, np.ndarray]) -> pd.DataFrame:
    """L2 norm of each part of the layer-0 input per token (token, position and segment embeddings, their sum).

    Args:
        tokens: n tokens; parts: part name -> float [n, d].
    Returns:
        DataFrame: position, token, part, norm.
    """
    rows = []
    for part, values in parts.items():
        norms = np.linalg.norm(np.asarray(values, dtype=np.float64), axis=-1)
        if len(norms) != len(tokens):
            msg = f"part {part!r} has {len(norms)} rows for {len(tokens)} tokens"
            raise ValueError(msg)
        rows += [{"position": i, "token": token, "part": part, "norm": float(v)} for i, (token, v) in enumerate(zip(tokens, norms))]
    return pd.DataFrame(rows)


def _non_negative_lstsq(design: np.ndarray, y: np.ndarray) -> np.ndarray:
    """argmin ‖design·x − y‖ over x ≥ 0, exactly, for a few columns: the best least-squares fit over every subset
    of columns whose solution is non-negative (2³ subsets for a quadratic)."""
    m, k = design.shape
    scale = np.abs(design).max(axis=0)
    scale[scale == 0] = 1.0
    scaled = design / scale  # columns of comparable size: n² and 1 differ by ~10⁷
    best, best_error = np.zeros(k), float((y**2).sum())
    for subset in range(1, 2**k):
        cols = [j for j in range(k) if subset >> j & 1]
        x, *_ = np.linalg.lstsq(scaled[:, cols], y, rcond=None)
        if (x < 0).any():
            continue
        full = np.zeros(k)
        full[cols] = x
        error = float(((scaled @ full - y) ** 2).sum())
        if error < best_error:
            best, best_error = full, error
    return best / scale


def quadratic_fit(n: Sequence[float], values: Sequence[float]) -> dict[str, float]:
    """Least-squares fit values ≈ a·n² + b·n + c with a, b, c ≥ 0, and the log-log slope (2 for pure n² growth).

    Times and memory grow with n and are positive, so the coefficients are kept non-negative: an unconstrained
    fit of noisy timings can give c < 0, a curve that goes negative at small n (nothing to draw on a log axis).

    Returns:
        {"a", "b", "c", "r2", "slope"} (slope: of log(values) against log(n) over the largest half of n).
    """
    x = np.asarray(n, dtype=np.float64)  # [m] lengths
    y = np.asarray(values, dtype=np.float64)
    if len(x) < 3 or len(x) != len(y):
        msg = f"an n² fit needs at least 3 (n, value) pairs of equal length; got {len(x)} and {len(y)}"
        raise ValueError(msg)
    design = np.stack([x * x, x, np.ones_like(x)], axis=1)  # [m, 3]
    a, b, c = _non_negative_lstsq(design, y)
    fitted = design @ np.array([a, b, c])
    total = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float(((y - fitted) ** 2).sum()) / total if total > 0 else 1.0
    top = x >= np.median(x)
    positive = top & (y > 0)
    slope = float(np.polyfit(np.log(x[positive]), np.log(y[positive]), 1)[0]) if positive.sum() >= 2 else float("nan")
    return {"a": float(a), "b": float(b), "c": float(c), "r2": r2, "slope": slope}
