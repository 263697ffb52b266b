"""Comparing two backends' forward passes: the same text, the same weights, different kernels.

Pure functions over arrays (and, in ``compare_records``, over two recorded runs read through their
public methods): per-layer max |difference| of hidden states, of attention maps per head, of logits,
and the benchmark rows that the scaling chart shows. Nothing here runs a model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

__all__ = [
    "BackendComparison",
    "compare_records",
    "hidden_diff_frame",
    "logits_diff",
    "map_diff_frame",
    "max_abs_diff",
]


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Largest |a - b| over all entries, computed in float64.

    Args:
        a, b: arrays of the same shape.
    Returns:
        float (0.0 for empty arrays).
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        msg = f"cannot compare arrays of shapes {a.shape} and {b.shape}; compare the same text through both backends"
        raise ValueError(msg)
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


def hidden_diff_frame(hidden_a: Sequence[np.ndarray], hidden_b: Sequence[np.ndarray]) -> pd.DataFrame:
    """Per-layer max |difference| of hidden states.

    Args:
        hidden_a, hidden_b: one float array [n, d] per layer (layer 0 = embeddings).
    Returns:
        DataFrame, one row per layer: layer, max_abs_diff, max_abs (largest |value| in ``hidden_a``),
        relative (max_abs_diff / max_abs; 0 when max_abs is 0).
    """
    if len(hidden_a) != len(hidden_b):
        msg = f"{len(hidden_a)} vs {len(hidden_b)} hidden-state layers; compare two runs of the same model"
        raise ValueError(msg)
    rows = []
    for layer, (a, b) in enumerate(zip(hidden_a, hidden_b)):
        diff = max_abs_diff(a, b)
        scale = float(np.max(np.abs(np.asarray(a, dtype=np.float64)))) if np.size(a) else 0.0
        rows.append({"layer": layer, "max_abs_diff": diff, "max_abs": scale, "relative": diff / scale if scale > 0 else 0.0})
    return pd.DataFrame(rows, columns=["layer", "max_abs_diff", "max_abs", "relative"])


def map_diff_frame(maps_a: np.ndarray, maps_b: np.ndarray) -> pd.DataFrame:
    """Max |difference| of attention maps for every (layer, head).

    Args:
        maps_a, maps_b: float [layer, head, query, key] attention maps of the same text.
    Returns:
        DataFrame, one row per (layer, head): layer, head, max_abs_diff.
    """
    a, b = np.asarray(maps_a), np.asarray(maps_b)
    if a.ndim != 4 or a.shape != b.shape:
        msg = f"attention maps must both be [layer, head, query, key] of one shape, got {a.shape} and {b.shape}"
        raise ValueError(msg)
    diff = np.abs(a.astype(np.float64) - b.astype(np.float64)).max(axis=(2, 3)) if a.size else np.zeros(a.shape[:2])  # [layer, head]
    layers, heads = np.meshgrid(np.arange(a.shape[0]), np.arange(a.shape[1]), indexing="ij")
    return pd.DataFrame({"layer": layers.ravel(), "head": heads.ravel(), "max_abs_diff": diff.ravel()})


def logits_diff(logits_a: np.ndarray, logits_b: np.ndarray) -> dict[str, float]:
    """How much two backends' next-token logits differ.

    Args:
        logits_a, logits_b: float [n, vocab] logits at every position.
    Returns:
        dict: max_abs_diff, max_abs (largest |logit| in ``logits_a``), top1_agreement (share of
        positions whose most likely next token is the same).
    """
    a, b = np.asarray(logits_a), np.asarray(logits_b)
    diff = max_abs_diff(a, b)
    if a.ndim != 2 or a.shape[0] == 0:
        msg = f"logits must be [positions, vocab] with at least one position, got shape {a.shape}"
        raise ValueError(msg)
    agree = float(np.mean(a.argmax(-1) == b.argmax(-1)))
    return {"max_abs_diff": diff, "max_abs": float(np.abs(a).max()), "top1_agreement": agree}


class BackendComparison:
    """The result of ``compare_records``: frames and headline numbers (all read-only)."""

    def __init__(self, hidden: pd.DataFrame, maps: pd.DataFrame, logits: dict[str, float] | None):
        self.hidden = hidden  # one row per hidden-state layer
        self.maps = maps  # one row per (layer, head)
        self.logits = logits  # None for encoders

    @property
    def max_hidden_diff(self) -> float:
        return float(self.hidden["max_abs_diff"].max())

    @property
    def max_map_diff(self) -> float:
        return float(self.maps["max_abs_diff"].max()) if len(self.maps) else 0.0

    def per_layer(self) -> pd.DataFrame:
        """One row per hidden-state layer: layer, hidden_max_abs_diff, hidden_relative, map_max_abs_diff
        (over all heads of the attention layer that produced it; NaN for the embeddings)."""
        maps = self.maps.groupby("layer")["max_abs_diff"].max()
        frame = pd.DataFrame(
            {
                "layer": self.hidden["layer"],
                "hidden_max_abs_diff": self.hidden["max_abs_diff"],
                "hidden_relative": self.hidden["relative"],
            }
        )
        # Hidden layer l (l >= 1) is the output of attention layer l - 1.
        frame["map_max_abs_diff"] = [float(maps.get(layer - 1, np.nan)) if layer >= 1 else np.nan for layer in frame["layer"]]
        return frame


def compare_records(rec_a, rec_b, batch: int = 0, layers: Sequence[int] | None = None, models=None) -> BackendComparison:
    """Compare two recorded runs of the same text (e.g. ``backend="eager"`` vs ``"flash"``).

    Args:
        rec_a, rec_b: ForwardRecords of the same model and text (real tokens of ``batch`` compared).
        batch: which text of the batch.
        layers: attention layers whose maps to compare (default all; every head of each).
        models: (lm_a, lm_b), the loaded models that made the two runs: with them, a decoder's next-token
            logits are compared too (a record keeps no model to read them with).
    Returns:
        BackendComparison with per-layer hidden-state differences, per-(layer, head) map differences,
        and logits differences for decoders.
    """
    if rec_a.tokens[batch] != rec_b.tokens[batch]:
        msg = "the two runs saw different tokens; compare the same text through both backends"
        raise ValueError(msg)
    n_layers = rec_a.spec.n_layers
    if rec_b.spec.n_layers != n_layers or rec_b.spec.n_heads != rec_a.spec.n_heads:
        msg = "the two runs come from models of different shapes; load the same model with two backends"
        raise ValueError(msg)
    hidden = hidden_diff_frame(
        [rec_a.hidden(layer, batch) for layer in range(n_layers + 1)],
        [rec_b.hidden(layer, batch) for layer in range(n_layers + 1)],
    )
    layers = list(range(n_layers)) if layers is None else list(layers)
    frames = []
    for layer in layers:
        a = rec_a.layer_attention(layer, batch)[None]  # [1, head, n, n]
        b = rec_b.layer_attention(layer, batch)[None]
        frame = map_diff_frame(a, b)
        frame["layer"] = layer
        frames.append(frame)
    maps = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["layer", "head", "max_abs_diff"])
    logits = None
    if models is not None and rec_a.spec.kind == "decoder":
        lm_a, lm_b = models
        logits = logits_diff(rec_a.logits(lm_a, batch), rec_b.logits(lm_b, batch))
    return BackendComparison(hidden, maps, logits)
