"""FlashAttention on CUDA: flash-attn's kernel when installed, else PyTorch SDPA with the flash kernel forced."""

from __future__ import annotations

import importlib.util

import torch


def has_flash_attn_package() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def flash_unavailable_reason() -> str | None:
    """Why backend="flash" cannot run here, or None when it can."""
    if not torch.cuda.is_available():
        return (
            "backend 'flash' needs a CUDA GPU and none is available here; "
            "use backend='sdpa' (same attention maps, exact) or run on a machine with a GPU"
        )
    return None


def flash_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    if has_flash_attn_package():
        from transformers.integrations.flash_attention import flash_attention_forward

        return flash_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    # The flash kernel takes no mask: padded batches fall back to the memory-efficient kernel.
    kernels = [SDPBackend.FLASH_ATTENTION] if attention_mask is None else [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]
    with sdpa_kernel(kernels):
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
