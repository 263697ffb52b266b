"""A head's query/key geometry over a corpus: sampled q and k vectors projected to 2-D, with token classes.

Pure functions (numpy, pandas). Queries and keys of a head live in the same d-dimensional space (the
score is q·k/√d), so both are projected by one PCA fitted on them together: ``analysis.drift.pca_2d``,
numpy's SVD of the centred points. Each point carries its token class (first token, special,
punctuation, word), its position bucket and its token, so that "this head's keys separate by
position" shows as colour.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from attnscope.analysis.drift import pca_2d

__all__ = ["MAX_POINTS", "POSITION_BUCKETS", "position_bucket", "qk_points"]

MAX_POINTS = 6000  # points projected at most (queries + keys); the first texts' samples are kept
POSITION_BUCKETS = ((0, 0, "0"), (1, 3, "1-3"), (4, 15, "4-15"), (16, 63, "16-63"), (64, 255, "64-255"), (256, None, "256+"))


def position_bucket(position) -> np.ndarray:
    """Labels of POSITION_BUCKETS for token positions (0-based)."""
    pos = np.asarray(position, dtype=np.int64)
    out = np.empty(pos.shape, dtype=object)
    for low, high, label in POSITION_BUCKETS:
        out[(pos >= low) & (pos <= (high if high is not None else np.iinfo(np.int64).max))] = label
    return out


def qk_points(rows: pd.DataFrame, max_points: int = MAX_POINTS) -> pd.DataFrame:
    """2-D PCA of a head's sampled query and key vectors (one projection fitted on both).

    Args:
        rows: text_id, segment, position, role ("query"/"key"), token, token_class, vector float [d]
            (``corpus.compute.geometry_rows``).
        max_points: keep the first ``max_points`` rows in (text_id, segment, position) order.
    Returns:
        DataFrame: text_id, segment, position, position_bucket, role, token, token_class, pc1, pc2,
        explained_pc1, explained_pc2 (the variance ratios of the two components).
    """
    if rows.empty:
        msg = "no query/key vectors to project; the corpus gave no result for this head"
        raise ValueError(msg)
    rows = rows.sort_values(["text_id", "segment", "position", "role"], kind="stable").head(max_points).reset_index(drop=True)
    vectors = np.stack(rows["vector"].to_numpy()).astype(np.float64)  # [points, d]
    coords, ratio = pca_2d(vectors)
    out = rows.drop(columns=["vector"]).copy()
    out.insert(3, "position_bucket", position_bucket(out["position"]))
    out["pc1"], out["pc2"] = coords[:, 0], coords[:, 1]
    out["explained_pc1"], out["explained_pc2"] = ratio[0], ratio[1]
    return out
