"""Views of a record across heads and layers: how alike a layer's heads are, and attention rollout."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from attnscope.analysis.probes import group_similarity, layer_head_similarity
from attnscope.analysis.rollout import record_rollout
from attnscope.models.record import ForwardRecord

__all__ = ["group_similarity_table", "head_similarity", "rollout_of"]


def head_similarity(rec: ForwardRecord, layer: int, batch: int = 0) -> np.ndarray:
    """Pairwise pattern similarity (1 - Jensen-Shannon, bits) of all heads of one layer. float64 [H, H]."""
    rec.check_layer(layer)
    rec.check_batch(batch)
    r = rec.layer_record(layer)
    real = torch.from_numpy(rec.real_index(batch))
    return layer_head_similarity(r, batch=batch, real_index=real)


def group_similarity_table(rec: ForwardRecord, batch: int = 0, layers: list[int] | None = None) -> pd.DataFrame:
    """Per layer: how alike query heads sharing a KV head are, versus heads of different KV groups.

    Returns:
        DataFrame [layer, within_group, across_groups, gap] (gap = within - across; NaN without GQA).
    """
    layers = rec.attention_layers if layers is None else layers
    rows = []
    for layer in layers:
        sims = group_similarity(head_similarity(rec, layer, batch), rec.spec.kv_group)
        rows.append({"layer": layer, **sims, "gap": sims["within_group"] - sims["across_groups"]})
    return pd.DataFrame(rows, columns=["layer", "within_group", "across_groups", "gap"])


def rollout_of(rec: ForwardRecord, batch: int = 0, residual: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Head-averaged maps and attention rollout of every layer for text ``batch`` (real tokens).

    Returns:
        (mean_maps float32 [L, n, n], rollout float64 [L, n, n]).
    """
    rec.check_batch(batch)
    if len(rec.attention_layers) < rec.spec.n_layers:
        msg = (
            f"rollout multiplies every layer's attention, but {rec.spec.name} has blocks without attention "
            f"(attention layers: {', '.join(map(str, rec.attention_layers))}); use the per-layer maps instead"
        )
        raise ValueError(msg)
    real = torch.from_numpy(rec.real_index(batch))
    maps, rolled = record_rollout(
        [rec.layer_record(layer) for layer in rec.attention_layers], batch=batch, real_index=real, residual=residual
    )
    return maps.numpy(), rolled.numpy()
