"""FlashAttention on CUDA: flash-attn's kernel when installed, else PyTorch SDPA with the flash kernel forced.

The recorder (``models.hook``) calls ``flash_forward`` for the output of every attention call
of a model loaded with ``backend="flash"``; the attention maps themselves are recomputed from the
recorded query/key, exactly as with the other backends.
"""

from __future__ import annotations

import torch

__all__ = ["FLASH_DTYPES", "flash_forward", "flash_kernel_name", "flash_unavailable_reason", "has_flash_attn_package"]


# FlashAttention kernels take only half-precision inputs.
FLASH_DTYPES = (torch.float16, torch.bfloat16)


def has_flash_attn_package() -> bool:
    """Whether flash-attn (>= 2.3.3, FlashAttention-2) is installed and usable here (needs CUDA)."""
    from transformers.utils import is_flash_attn_2_available

    return bool(is_flash_attn_2_available())


def flash_kernel_name() -> str:
    """The kernel ``backend="flash"`` runs here, for display."""
    if has_flash_attn_package():
        return "flash-attn (flash_attention_2)"
    return "PyTorch SDPA, FLASH_ATTENTION kernel forced"


def flash_unavailable_reason(device: str | None = None, dtype: torch.dtype | None = None) -> str | None:
    """Why backend="flash" cannot run here (or with this device/dtype), or None when it can.

    Args:
        device: the requested device ("cpu", "cuda", "auto"; None = not yet chosen).
        dtype: the requested dtype (None = the default, bfloat16).
    Returns:
        One line saying what is wrong and what to do, or None.
    """
    if not torch.cuda.is_available():
        return (
            "backend 'flash' needs a CUDA GPU and none is available here; "
            "use backend='sdpa' (same attention maps, exact) or run on a machine with a GPU"
        )
    if device == "cpu":
        return "backend 'flash' runs on the GPU only; use device='cuda' (or 'auto'), or backend='sdpa' on the CPU"
    if dtype is not None and dtype not in FLASH_DTYPES:
        name = str(dtype).removeprefix("torch.")
        return f"backend 'flash' needs float16 or bfloat16 weights, not {name}; pass dtype='bfloat16' (the default) or use backend='sdpa'"
    return None


def flash_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """One attention call through FlashAttention.

    Args:
        module: the model's attention module (reads ``is_causal``).
        query: [B, H, n, d]; key, value: [B, KV, n, d] (grouped-query heads not expanded).
        attention_mask: None (no padding), a bool [B, kv] padding mask (flash-attn's mask function),
            or a bool [B, 1, n, n] mask (SDPA's mask function).
    Returns:
        (output [B, n, H, d], None), the layout transformers' kernels return.
    """
    if has_flash_attn_package():
        return _flash_attn_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
    if kwargs.get("s_aux") is not None:
        msg = (
            "this model's attention has learned sinks, which PyTorch's flash kernel cannot apply (it would "
            "compute a different output); install flash-attn, or use backend='auto' (the model's own eager kernel)"
        )
        raise ValueError(msg)
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    # The flash kernel takes no mask: padded batches fall back to the memory-efficient kernel,
    # which is also O(n) in memory.
    kernels = [SDPBackend.FLASH_ATTENTION] if attention_mask is None else [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]
    with sdpa_kernel(kernels):
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)


def _flash_attn_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """flash-attn through transformers' helper, naming the implementation explicitly.

    ``transformers.integrations.flash_attention.flash_attention_forward`` would look the kernel up
    by ``module.config._attn_implementation`` (our recorder's name), which transformers cannot map
    to a flash-attn build; so the same steps are done here with "flash_attention_2".
    """
    from transformers.integrations.flash_attention import _use_top_left_mask, get_target_dtype
    from transformers.modeling_flash_attention_utils import _flash_attention_forward

    kwargs.pop("output_attentions", None)
    is_causal = kwargs.pop("is_causal", None)
    is_causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
    n = query.shape[2]
    q = query.transpose(1, 2)  # [B, n, H, d]
    k = key.transpose(1, 2)  # [B, n, KV, d]
    v = value.transpose(1, 2)  # [B, n, KV, d]
    if kwargs.get("s_aux") is not None:  # flash-attn takes the sink logits in half precision only
        kwargs["s_aux"] = kwargs["s_aux"].to(query.dtype)
    output = _flash_attention_forward(
        q,
        k,
        v,
        attention_mask,
        query_length=n,
        is_causal=is_causal,
        dropout=dropout,
        softmax_scale=scaling,
        use_top_left_mask=_use_top_left_mask,
        target_dtype=get_target_dtype(q, module),
        attn_implementation="flash_attention_2",
        layer_idx=getattr(module, "layer_idx", None),
        **kwargs,
    )
    return output, None  # [B, n, H, d]
