"""The recording attention backend.

attnscope registers its own attention functions through ``transformers.AttentionInterface``
(one name per delegate kernel) and the matching mask functions through
``AttentionMaskInterface``. Each call records the layer's post-RoPE query, its key before
grouped-query expansion, the mask it really got and the scaling, then hands the output to the
chosen kernel. Maps are recomputed later from these tensors (see ``analysis.attention``).

Recording is per run: a ``contextvars.ContextVar`` holds the active recorder, so two threads
(two dashboard sessions) sharing one loaded model never see each other's tensors.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
from dataclasses import dataclass, field
from typing import Callable, Literal

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, eager_mask, flash_attention_mask, sdpa_mask

Backend = Literal["sdpa", "eager", "flash"]
BACKENDS: tuple[Backend, ...] = ("sdpa", "eager", "flash")

# The name each backend registers under; config._attn_implementation is set to it. The flash
# one must not contain "flash": transformers treats any such name as a flash-attn kernel to import.
IMPL_NAMES: dict[str, str] = {"sdpa": "attnscope_sdpa", "eager": "attnscope_eager", "flash": "attnscope_fa"}

# MaskSpec: a bool tensor [batch, 1, query, key] (True = may attend), or a named pattern for the
# mask-free fast path (the kernel then applies causality itself).
MaskSpec = torch.Tensor | Literal["causal", "full"]


@dataclass
class LayerRecord:
    """What one attention call saw. Shapes: query [B, H, n, d], key [B, KV, n, d]."""

    query: torch.Tensor
    key: torch.Tensor
    mask: MaskSpec
    scaling: float
    softcap: float | None = None


@dataclass
class Recorder:
    """Collects one forward pass's attention inputs, layer by layer in call order."""

    layers: list[LayerRecord] = field(default_factory=list)
    _mask_cache: dict[object, torch.Tensor] = field(default_factory=dict)  # by id(mask), or a window key

    def mask_spec(
        self, module: torch.nn.Module, attention_mask, kwargs, batch: int = 1, n_keys: int | None = None, device=None
    ) -> MaskSpec:
        is_causal = kwargs.get("is_causal")
        if is_causal is None:
            is_causal = getattr(module, "is_causal", True)
        window = kwargs.get("sliding_window")  # flash kernels apply it themselves; other masks already hold it
        if attention_mask is None:
            if window is None or n_keys is None or n_keys <= window:
                return "causal" if is_causal else "full"
            key = ("window", batch, n_keys, is_causal, window)
            if key not in self._mask_cache:
                ones = torch.ones(batch, n_keys, dtype=torch.bool, device=device)
                self._mask_cache[key] = _expand_padding_mask(ones, is_causal, window)
            return self._mask_cache[key]
        key = id(attention_mask)
        if key not in self._mask_cache:
            if attention_mask.ndim == 2:  # flash-attn's [B, kv] padding mask (1/True = real token)
                bool_mask = _expand_padding_mask(attention_mask.bool(), is_causal, window)
            elif attention_mask.dtype == torch.bool:
                bool_mask = attention_mask
            else:  # eager's additive float mask: 0 where allowed, dtype-min elsewhere
                bool_mask = attention_mask == 0
            self._mask_cache[key] = bool_mask.detach()
        return self._mask_cache[key]


_ACTIVE: contextvars.ContextVar[Recorder | None] = contextvars.ContextVar("attnscope_recorder", default=None)


@contextlib.contextmanager
def recording():
    """Activate a fresh recorder for the code inside the block (this context only)."""
    recorder = Recorder()
    token = _ACTIVE.set(recorder)
    try:
        yield recorder
    finally:
        _ACTIVE.reset(token)


def _expand_padding_mask(padding: torch.Tensor, is_causal: bool, window: int | None = None) -> torch.Tensor:
    """[B, kv] bool padding mask -> [B, 1, q, kv] with causality (and a sliding window) applied (q == kv here)."""
    n = padding.shape[-1]
    full = padding[:, None, None, :].expand(-1, 1, n, n)
    offset = torch.arange(n, device=padding.device)[:, None] - torch.arange(n, device=padding.device)[None, :]  # q - k
    if is_causal:
        full = full & (offset >= 0)
    if window is not None:  # transformers' sliding window: key within the last `window` positions
        full = full & (offset.abs() < window)
    return full


def _model_eager(module: torch.nn.Module) -> Callable:
    """The model file's own eager attention, so eager keeps each architecture's quirks."""
    fn = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if fn is None:
        from transformers.models.llama.modeling_llama import eager_attention_forward as fn
    return fn


def _flash_forward(module, query, key, value, attention_mask, **kwargs):
    """FlashAttention: flash-attn's kernel when installed, else SDPA with the flash kernel forced."""
    from models.flash import flash_forward

    return flash_forward(module, query, key, value, attention_mask, **kwargs)


_DELEGATES: dict[str, Callable] = {
    "sdpa": sdpa_attention_forward,
    "flash": _flash_forward,
}


def _make_attention(backend: str) -> Callable:
    def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        recorder = _ACTIVE.get()
        if scaling is None:
            scaling = query.shape[-1] ** -0.5
        if recorder is not None:
            recorder.layers.append(
                LayerRecord(
                    query=query.detach(),  # [B, H, n, d], post-RoPE
                    key=key.detach(),  # [B, KV, n, d], before GQA expansion
                    mask=recorder.mask_spec(module, attention_mask, kwargs, query.shape[0], key.shape[-2], query.device),
                    scaling=float(scaling),
                    softcap=kwargs.get("softcap"),
                )
            )
        kwargs.pop("output_attentions", None)
        delegate = _model_eager(module) if backend == "eager" else _DELEGATES[backend]
        output, _weights = delegate(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
        return output, None  # weights are recomputed on demand, never materialised here

    attention.__name__ = f"attnscope_{backend}_attention"
    return attention


def _flash_mask(*args, **kwargs):
    """flash-attn's [B, kv] padding mask (or None) when it is installed, else SDPA's; chosen per call so
    importing attnscope never probes CUDA."""
    from models.flash import has_flash_attn_package

    return (flash_attention_mask if has_flash_attn_package() else sdpa_mask)(*args, **kwargs)


_MASKS: dict[str, Callable] = {"sdpa": sdpa_mask, "eager": eager_mask, "flash": _flash_mask}

for _backend in BACKENDS:
    AttentionInterface.register(IMPL_NAMES[_backend], _make_attention(_backend))
    AttentionMaskInterface.register(IMPL_NAMES[_backend], _MASKS[_backend])
