"""Eager attention's own weights, read exactly: the tolerances every map is checked to, the
architectures whose eager output needs reading (scores instead of weights, local bands), and eager's
weights turned into ``LayerRecord``s for architectures the hook cannot record ("materialised")."""

from __future__ import annotations

import torch

from attnscope.models.hook import LayerRecord
from attnscope.models.spec import ModelSpec, NoEagerWeightsError, RecordingError

__all__ = [
    "EAGER_RETURNS_SCORES",
    "HALF_TOLERANCE",
    "LOCAL_BAND",
    "ROW_SUM_TOLERANCE",
    "TOLERANCE",
    "band_to_full",
    "declared_without_softmax",
    "materialised_layers",
    "tolerance",
]


TOLERANCE = 1e-4  # max |Δ| between a recorded map and eager's, as in the parity tests (float32)
HALF_TOLERANCE = 2e-2  # bfloat16/float16 weights: eager's own softmax rounds at ~8e-3
ROW_SUM_TOLERANCE = 1e-3


def tolerance(dtype: str) -> float:
    """The parity tolerance for a model's weight dtype."""
    return TOLERANCE if dtype == "float32" else HALF_TOLERANCE


# Block types (``config.layer_types``) that are not softmax attention: state-space, linear or recurrent mixers.
_NON_SOFTMAX_TYPES = ("linear", "mamba", "conv", "recurrent", "ssm", "rwkv")


def declared_without_softmax(config, layer: int) -> bool:
    """Whether the config's ``layer_types`` names block ``layer`` a non-softmax mixer (linear attention, Mamba, ...)."""
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    types = getattr(text_config, "layer_types", None)
    if not isinstance(types, (list, tuple)) or not 0 <= layer < len(types) or not isinstance(types[layer], str):
        return False
    return any(word in types[layer].lower() for word in _NON_SOFTMAX_TYPES)


# Architectures whose eager ``output_attentions`` returns the pre-softmax scores (mask added), while the
# forward uses their softmax (read from each model file): the weights are that softmax.
EAGER_RETURNS_SCORES = {"squeezebert"}
# Architectures whose eager weights come as a local band [B, H, n, 2w+1], key i - w + c in column c
# (Longformer's sliding window; no global tokens, as attnscope passes no global_attention_mask).
LOCAL_BAND = {"longformer"}


def band_to_full(weights: torch.Tensor, n: int) -> torch.Tensor:
    """A local band [B, H, n, 2w+1] (query i's key i - w + c in column c) as full maps [B, H, n, n];
    keys outside the band get 0, as the model gives them."""
    cols = weights.shape[-1]
    w = (cols - 1) // 2
    column = torch.arange(n)[None, :] - torch.arange(n)[:, None] + w  # [n, n]: key j of query i
    inside = (column >= 0) & (column < cols)
    index = column.clamp(0, cols - 1).expand(*weights.shape[:2], n, n).to(weights.device)
    return weights.gather(-1, index) * inside.to(weights.device)


def materialised_layers(attentions, spec: ModelSpec, batch: int, n: int, real: torch.Tensor | None = None):
    """Eager's weights as ``LayerRecord``s: log-weights as an additive mask over zero queries and keys,
    so every recomputation (``softmax(0 + log w) = w``) and statistic runs unchanged.

    ``real`` (bool [B, n], True = a real token) limits the row-sum check to real queries: some models
    give padding queries no weight at all, and those rows are never shown.

    Raises:
        RecordingError: the weights are not one softmax distribution per head and query.
    """
    maps = list(attentions or [])
    if len(maps) != spec.n_layers or all(a is None for a in maps):
        present = sum(a is not None for a in maps)
        raise (NoEagerWeightsError if present == 0 else RecordingError)(
            f"eager output_attentions returned weights for {present} of {spec.n_layers} layers, so the maps cannot be placed by layer"
        )
    layers: list[LayerRecord | None] = []
    low = torch.finfo(torch.float32).min
    for layer, weights in enumerate(maps):
        if weights is None:  # a block without attention (hybrid models)
            layers.append(None)
            continue
        if spec.model_type in LOCAL_BAND and weights.ndim == 4 and weights.shape[-1] % 2 == 1 and weights.shape[-2] == n:
            weights = band_to_full(weights.detach().float(), n)
        if weights.ndim != 4 or tuple(weights.shape) != (batch, spec.n_heads, n, n):
            raise RecordingError(
                f"layer {layer}'s eager attention has shape {tuple(weights.shape)}, not [batch, heads, n, n] = "
                f"{[batch, spec.n_heads, n, n]} (local, bucketed or compressed attention is not one map per head)"
            )
        weights = weights.detach().float()
        if spec.model_type in EAGER_RETURNS_SCORES:
            weights = torch.softmax(weights, dim=-1)
        if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()):
            raise RecordingError(f"layer {layer}'s eager weights are not a softmax distribution (negative or non-finite values)")
        sums = weights.sum(-1)  # [B, H, n]
        if real is not None:
            sums = sums.transpose(1, 2)[real.to(sums.device)]  # [real queries, H]
        if bool(((sums - 1).abs() > max(ROW_SUM_TOLERANCE, tolerance(spec.dtype))).any()):
            raise RecordingError(
                f"layer {layer}'s eager weights sum to {float(sums.min()):.3f}..{float(sums.max()):.3f} per query, not 1 "
                "(attention mass goes outside the tokens, e.g. to learned sinks)"
            )
        log_weights = torch.where(weights > 0, weights.log(), torch.full_like(weights, low))  # [B, H, n, n]
        zeros = weights.new_zeros(batch, spec.n_heads, n, 1)
        layers.append(LayerRecord(query=zeros, key=zeros, mask=log_weights, scaling=1.0, module=f"layer {layer} (materialised)"))
    return layers
