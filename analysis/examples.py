"""A head's top examples over a corpus: per-query criterion scores, a text's best queries, an exact merge.

Pure functions over attention maps (numpy, pandas). Criteria, for query i of one head's map A [n, n]:

- ``max-weight``: max over keys j >= 1 of A[i, j] (the largest weight to a key other than the first
  token, so a sink on token 0 does not fill the list); the key is that j. Queries with no such key
  (the first query of a causal model) have no score.
- ``previous-token``: A[i, i-1] for i >= 1; the key is i-1.
- ``induction``: for a query whose token occurred earlier at j <= i-2, Σ A[i, j+1] over those
  occurrences (the attention to the token after an earlier occurrence of the query's token; the
  per-query term of ``analysis.corpus.repeat_induction``); the key is the heaviest such j+1.
- ``low-entropy``: the entropy -Σ_j A[i, j] log A[i, j] (nats) of rows with at least two allowed keys;
  lowest first; the key is the row's heaviest key.

A head's top K over a corpus: every query position ordered by its score (highest first; lowest
entropy first), ties broken by (text_id, segment, query_pos); ``merge_top`` of any partition of the
candidates (texts, batches, shards) equals the top K of them all, so per-worker memory stays K rows
per (layer, head, criterion).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = [
    "CRITERIA",
    "DEFAULT_CRITERION",
    "DEFAULT_TOP",
    "EXAMPLE_COLUMNS",
    "STATISTIC_OF",
    "WINDOW",
    "criterion_scores",
    "merge_top",
    "parse_criteria",
    "text_candidates",
    "window_around",
]

CRITERIA = ("max-weight", "previous-token", "induction", "low-entropy")
DEFAULT_CRITERION = "max-weight"
DEFAULT_TOP = 20
WINDOW = 8  # readable tokens kept on each side of the query and of the key
GAP = "…"  # between the key's and the query's windows when they do not meet
# The per-text head statistic (a column of the heads analysis) that summarises each criterion over a text.
STATISTIC_OF = {"max-weight": "max_weight", "previous-token": "prev_token", "induction": "induction", "low-entropy": "entropy"}
EXAMPLE_COLUMNS = (
    "layer",
    "head",
    "criterion",
    "rank",
    "score",
    "text_id",
    "segment",
    "query_pos",
    "key_pos",
    "window",
    "query_in_window",
    "key_in_window",
)
GROUP = ["layer", "head", "criterion"]


def parse_criteria(criterion: str | None) -> list[str]:
    """``--criterion`` as a list: one of CRITERIA, ``all``, or a comma-separated list (default max-weight)."""
    if criterion is None or not str(criterion).strip():
        return [DEFAULT_CRITERION]
    if criterion.strip() == "all":
        return list(CRITERIA)
    names = [c.strip() for c in criterion.split(",") if c.strip()]
    unknown = [c for c in names if c not in CRITERIA]
    if unknown or not names:
        msg = f"--criterion {criterion!r}: choose one of {', '.join(CRITERIA)} or all"
        raise ValueError(msg)
    return [c for c in CRITERIA if c in names]


def criterion_scores(weights: np.ndarray, token_ids: np.ndarray, criterion: str, causal: bool) -> tuple[np.ndarray, np.ndarray]:
    """Each query's score and key under one criterion, for every head of one layer on one text.

    Args:
        weights: [head, n, n] attention maps over the text's real tokens (rows are queries).
        token_ids: int [n].
        criterion: one of CRITERIA.
        causal: the model attends only to earlier keys (decides which rows have two allowed keys).
    Returns:
        (score float64 [head, n], NaN where the query has no score; key int64 [head, n]).
    """
    w = np.asarray(weights, dtype=np.float64)
    h, n, _ = w.shape
    score = np.full((h, n), np.nan)
    key = np.zeros((h, n), dtype=np.int64)
    if criterion == "max-weight":
        if n < 2:
            return score, key
        rest = w[:, :, 1:]
        key = rest.argmax(-1) + 1
        score = rest.max(-1)
        if causal:
            score[:, 0] = np.nan
    elif criterion == "previous-token":
        if n < 2:
            return score, key
        score[:, 1:] = np.diagonal(w, offset=-1, axis1=-2, axis2=-1)
        key[:, 1:] = np.arange(n - 1)
    elif criterion == "induction":
        ids = np.asarray(token_ids)
        earlier = np.tril(ids[:, None] == ids[None, :], k=-2)  # j <= i - 2
        targets = np.zeros((n, n), dtype=bool)
        targets[:, 1:] = earlier[:, :-1]  # targets[i, j+1] = earlier[i, j]
        queries = np.asarray(targets.any(axis=1), dtype=bool)
        masked = np.where(targets[None], w, -1.0)
        key = masked.argmax(-1)
        score = np.where(queries[None], (w * targets[None]).sum(-1), np.nan)
    elif criterion == "low-entropy":
        from scipy.special import xlogy

        entropy = -xlogy(w, w).sum(-1)
        allowed = np.arange(1, n + 1) if causal else np.full(n, n)
        score = np.where((allowed >= 2)[None], entropy, np.nan)
        key = w.argmax(-1)
    else:
        msg = f"criterion {criterion!r}: choose one of {', '.join(CRITERIA)}"
        raise ValueError(msg)
    return score, key


def _order_value(criterion, score):
    """Higher is better: the score, or minus the entropy."""
    return np.where(np.asarray(criterion) == "low-entropy", -np.asarray(score, dtype=np.float64), np.asarray(score, dtype=np.float64))


def text_candidates(score: np.ndarray, key: np.ndarray, top: int, criterion: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One text's best ``top`` queries per head (ties: the earlier query first).

    Args:
        score, key: ``criterion_scores`` output [head, n].
    Returns:
        (head, query_pos, key_pos, score) int64/float64 arrays, at most ``top`` per head.
    """
    value = np.where(np.isnan(score), -np.inf, -score if criterion == "low-entropy" else score)
    order = np.argsort(-value, axis=-1, kind="stable")[:, :top]  # stable: equal scores keep query order
    heads = np.repeat(np.arange(score.shape[0]), order.shape[1])
    queries = order.reshape(-1)
    keep = ~np.isnan(score[heads, queries])
    heads, queries = heads[keep], queries[keep]
    return heads, queries, key[heads, queries], score[heads, queries]


def merge_top(candidates: pd.DataFrame, top: int) -> pd.DataFrame:
    """The top ``top`` rows per (layer, head, criterion), ranked 1.. (ties: text_id, segment, query_pos).

    Exact for any partition: merge_top(concat(merge_top(a), merge_top(b))) == merge_top(concat(a, b)).
    """
    if candidates.empty:
        return candidates.assign(rank=pd.Series(dtype="int64"))
    frame = candidates.assign(_order=-_order_value(candidates["criterion"].to_numpy(), candidates["score"].to_numpy()))
    frame = frame.sort_values([*GROUP, "_order", "text_id", "segment", "query_pos"], kind="stable")
    frame = frame.groupby(GROUP, sort=False).head(top)
    frame["rank"] = frame.groupby(GROUP, sort=False).cumcount().astype(np.int64) + 1
    return frame.drop(columns="_order").reset_index(drop=True)


def window_around(labels: list[str], query: int, key: int, width: int = WINDOW) -> tuple[list[str], int, int]:
    """Readable tokens around the key and the query: one span when they are close, else two joined by "…".

    Returns:
        (window, query_in_window, key_in_window).
    """
    n = len(labels)
    first, second = sorted((query, key))
    a0, a1 = max(0, first - width), min(n, first + width + 1)
    b0, b1 = max(0, second - width), min(n, second + width + 1)
    if b0 <= a1:  # the two spans meet: one window
        window = list(labels[a0:b1])
        return window, query - a0, key - a0
    window = [*labels[a0:a1], GAP, *labels[b0:b1]]
    offset = a1 - a0 + 1 - b0

    def at(pos: int) -> int:
        return pos - a0 if pos < a1 else pos + offset

    return window, at(query), at(key)
