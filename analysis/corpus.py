"""Corpus aggregation: per-head statistics over many texts, a text against the corpus, word clusters.

Pure functions over frames and arrays (numpy, pandas, scikit-learn); running models over a corpus
lives in the ``corpus`` package. Definitions:

- mean and standard deviation over texts (sample std, ddof=1) of one statistic of one head;
- 95% confidence interval of the mean from Student's t distribution:
  mean ± t(0.975, n-1) · std / √n (n = texts with a value; no interval for n < 2);
- how unusual a head is on one text: z = (value - corpus mean) / corpus std;
- repeated-token induction on natural text: for each query i whose token occurred earlier at j < i-1,
  the attention mass on the tokens right after those earlier occurrences (A[i, j+1]), averaged over
  such queries (Olsson et al. 2022's prefix-matching pattern measured on real text; NaN when no
  token repeats);
- word clusters: k-means on the unit-normalised occurrence vectors, k in 2..max_k picked by the
  highest silhouette (cosine) score.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats as _stats

from attnscope.analysis.drift import self_similarity

__all__ = [
    "AGGREGATE_COLUMNS",
    "CONFIDENCE",
    "KEY_COLUMNS",
    "aggregate",
    "cluster_occurrences",
    "compare_to_corpus",
    "drift_summary",
    "long_stats",
    "occurrence_points",
    "repeat_induction",
    "self_similarity",
    "t_interval",
]

CONFIDENCE = 0.95
SILHOUETTE_SAMPLE = 2000
KEY_COLUMNS = ("layer", "head", "statistic")
AGGREGATE_COLUMNS = ("layer", "head", "statistic", "mean", "std", "ci_low", "ci_high", "n")
# Per-text columns that identify a row or describe the text, never statistics to aggregate.
ID_COLUMNS = ("text_id", "segment", "n_tokens", "layer", "head", "kv_head")


def t_interval(mean: np.ndarray, std: np.ndarray, n: np.ndarray, confidence: float = CONFIDENCE) -> tuple[np.ndarray, np.ndarray]:
    """Student-t confidence interval of a mean: mean ± t((1+c)/2, n-1)·std/√n; NaN where n < 2.

    Args:
        mean, std, n: arrays of the same shape (std with ddof=1).
    Returns:
        (low, high) float64 arrays.
    """
    mean, std, n = (np.asarray(a, dtype=np.float64) for a in (mean, std, n))
    with np.errstate(invalid="ignore", divide="ignore"):
        half = _stats.t.ppf((1 + confidence) / 2, np.maximum(n - 1, 1)) * std / np.sqrt(n)
    half = np.where(n >= 2, half, np.nan)
    return mean - half, mean + half


def long_stats(per_text: pd.DataFrame) -> pd.DataFrame:
    """Per-text head rows in long form: text_id, segment, layer, head, statistic, value.

    Args:
        per_text: one row per (text, segment, layer, head) with numeric statistic columns.
    """
    value_columns = [c for c in per_text.columns if c not in ID_COLUMNS and pd.api.types.is_numeric_dtype(per_text[c])]
    keep = [c for c in ("text_id", "segment", "layer", "head") if c in per_text.columns]
    return per_text.melt(id_vars=keep, value_vars=value_columns, var_name="statistic", value_name="value")


def aggregate(per_text: pd.DataFrame, confidence: float = CONFIDENCE) -> pd.DataFrame:
    """Mean, std, confidence interval and count over texts, per (layer, head, statistic).

    Args:
        per_text: one row per (text, segment, layer, head) (from the corpus shards).
    Returns:
        DataFrame with AGGREGATE_COLUMNS; NaN values (a statistic undefined on a text) are left out
        of that head's n.
    """
    if per_text.empty:
        msg = "no per-text rows to aggregate; the corpus produced no results (see the bad-rows report)"
        raise ValueError(msg)
    long = long_stats(per_text)
    grouped = long.groupby(list(KEY_COLUMNS), sort=True)["value"]
    out = grouped.agg(mean="mean", std=lambda v: v.std(ddof=1), n="count").reset_index()
    low, high = t_interval(out["mean"], out["std"], out["n"], confidence)
    out["ci_low"], out["ci_high"] = low, high
    out["n"] = out["n"].astype(np.int64)
    return out[list(AGGREGATE_COLUMNS)]


def compare_to_corpus(text_stats: pd.DataFrame, summary: pd.DataFrame) -> pd.DataFrame:
    """How unusual each head is on one text: z = (value - corpus mean) / corpus std.

    Args:
        text_stats: one text's head table (layer, head, statistic columns), e.g. ``rec.head_stats()``.
        summary: ``aggregate`` output for the same model.
    Returns:
        DataFrame: layer, head, statistic, value, mean, std, ci_low, ci_high, n, z (NaN where std is 0 or missing).
    """
    long = long_stats(text_stats.assign(text_id=0))
    merged = long.drop(columns=[c for c in ("text_id", "segment") if c in long.columns]).merge(summary, on=list(KEY_COLUMNS), how="inner")
    if merged.empty:
        msg = "this text's heads do not match the corpus result (different model?); open a result of the same model"
        raise ValueError(msg)
    std = merged["std"].to_numpy(dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        merged["z"] = np.where(std > 0, (merged["value"] - merged["mean"]) / std, np.nan)
    return merged


def repeat_induction(weights: np.ndarray, token_ids: np.ndarray) -> np.ndarray:
    """Repeated-token induction score of each head on one natural text.

    Args:
        weights: [head, n, n] attention maps over the text's real tokens (rows are queries).
        token_ids: int [n] the text's token ids.
    Returns:
        float64 [head]: mean over queries i with an earlier occurrence of token i at j < i-1 of
        Σ_j A[i, j+1]; NaN for every head when no token repeats that way.
    """
    w = np.asarray(weights, dtype=np.float64)  # [head, n, n]
    ids = np.asarray(token_ids)
    n = ids.shape[0]
    if w.shape[-1] != n or w.shape[-2] != n:
        msg = f"maps of {w.shape[-2]}x{w.shape[-1]} tokens do not match {n} token ids"
        raise ValueError(msg)
    same = ids[:, None] == ids[None, :]  # [query, key]
    earlier = np.tril(same, k=-2)  # j <= i - 2, so the token after the occurrence, j+1, is before i
    targets = np.zeros((n, n), dtype=bool)  # targets[i, j+1] = earlier[i, j]
    targets[:, 1:] = earlier[:, :-1]
    queries = targets.any(axis=1)
    if not queries.any():
        return np.full(w.shape[0], np.nan)
    mass = (w * targets[None]).sum(-1)  # [head, query]
    return mass[:, queries].mean(-1)


def cluster_occurrences(vectors: np.ndarray, max_k: int = 8, seed: int = 0) -> tuple[np.ndarray, int, float, dict[int, float]]:
    """k-means clusters of a word's occurrences, k chosen by the silhouette score.

    Args:
        vectors: [occurrence, d] at one layer.
        max_k: largest k tried (capped at occurrences - 1).
        seed: k-means initialisation seed (results are deterministic for a seed).
    Returns:
        (labels int [occurrence], k, silhouette of that k, {k: silhouette} for every k tried).
        Fewer than 3 distinct points: one cluster, silhouette NaN.
    """
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    x = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    unit = np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)
    distinct = np.unique(np.round(unit, 6), axis=0).shape[0]
    top = min(max_k, distinct - 1)
    if top < 2:
        return np.zeros(x.shape[0], dtype=np.int64), 1, float("nan"), {}
    scores: dict[int, float] = {}
    labels_for: dict[int, np.ndarray] = {}
    for k in range(2, top + 1):
        labels = KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(unit)
        if len(np.unique(labels)) < 2:
            continue
        sample = min(len(unit), SILHOUETTE_SAMPLE)  # silhouette is O(n²); a seeded sample keeps it cheap
        scores[k] = float(silhouette_score(unit, labels, metric="cosine", sample_size=sample, random_state=seed))
        labels_for[k] = labels
    if not scores:
        return np.zeros(x.shape[0], dtype=np.int64), 1, float("nan"), {}
    best = max(scores, key=lambda k: (scores[k], -k))
    return labels_for[best].astype(np.int64), best, scores[best], scores


def drift_summary(rows: pd.DataFrame, max_k: int = 8, seed: int = 0) -> pd.DataFrame:
    """Per hidden layer: occurrences, texts, self-similarity and the silhouette-chosen k-means clustering.

    Args:
        rows: per-occurrence rows (text_id, occurrence, layer, vector float [d]) from a drift job.
    Returns:
        DataFrame: layer, n_occurrences, n_texts, self_similarity, k, silhouette.
    """
    if rows.empty:
        msg = "the word occurs in no text of the corpus; choose another --word or a corpus that uses it"
        raise ValueError(msg)
    out = []
    for layer, group in rows.groupby("layer", sort=True):
        vectors = np.stack(group["vector"].to_numpy())  # [occurrence, d]
        _, k, silhouette, _ = cluster_occurrences(vectors, max_k=max_k, seed=seed)
        out.append(
            {
                "layer": int(layer),
                "n_occurrences": len(group),
                "n_texts": int(group["text_id"].nunique()),
                "self_similarity": self_similarity(vectors),
                "k": k,
                "silhouette": silhouette,
            }
        )
    return pd.DataFrame(out)


def occurrence_points(rows: pd.DataFrame, layer: int, max_k: int = 8, seed: int = 0) -> pd.DataFrame:
    """2-D PCA of a word's occurrences at one layer with their k-means cluster (k by silhouette).

    Args:
        rows: per-occurrence rows of a drift job (text_id, segment, occurrence, pieces, layer, vector).
        layer: hidden layer (0 = embeddings).
    Returns:
        DataFrame: text_id, segment, occurrence, pieces, pc1, pc2, cluster, k, silhouette, explained_pc1, explained_pc2.
    """
    from attnscope.analysis.drift import pca_2d

    at = rows[rows["layer"] == layer]
    if at.empty:
        layers = sorted(rows["layer"].unique().tolist())
        msg = f"no occurrences at layer {layer}; this result has layers {layers[0]}..{layers[-1]} (0 = embeddings)"
        raise ValueError(msg)
    vectors = np.stack(at["vector"].to_numpy())  # [occurrence, d]
    coords, ratio = pca_2d(vectors)
    labels, k, silhouette, _ = cluster_occurrences(vectors, max_k=max_k, seed=seed)
    keep = [c for c in ("text_id", "segment", "occurrence", "pieces") if c in at.columns]
    frame = at[keep].reset_index(drop=True).copy()
    frame["pc1"], frame["pc2"] = coords[:, 0], coords[:, 1]
    frame["cluster"] = labels
    frame["k"], frame["silhouette"] = k, silhouette
    frame["explained_pc1"], frame["explained_pc2"] = ratio[0], ratio[1]
    return frame
