"""FlashAttention on CUDA: flash-attn's kernel when installed, else PyTorch SDPA with the flash kernel forced.

The recorder (``models.hook``) calls ``flash_forward`` for the output of every attention call
of a model loaded with ``backend="flash"``; the attention maps themselves are recomputed from the
recorded query/key, exactly as with the other backends.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

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


# -- measuring a forward pass (the Backends page and bench/backends.py) ---------------------------


@dataclass(frozen=True)
class ForwardCost:
    """What one forward pass cost."""

    seconds: float  # median wall time of one forward
    peak_bytes: int | None  # peak memory above the level just before the forward; None if unmeasurable
    memory: str  # how peak_bytes was measured


def _proc_status_kb(field_name: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset this process's peak-RSS mark (Linux: write 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def measure_forward(forward: Callable[[], object], device: str = "cpu", repeats: int = 3) -> ForwardCost:
    """Time a forward pass and measure its peak memory.

    Memory is read on the first call: on CUDA ``torch.cuda.max_memory_allocated`` above what was
    allocated before; on the CPU the process's peak resident set (VmHWM, reset just before) above its
    resident set before. Then ``repeats`` more calls are timed (median).

    Args:
        forward: runs one forward pass (its result is dropped).
        device: "cpu" or a CUDA device ("cuda", "cuda:0").
        repeats: timed calls after the first.
    Returns:
        ForwardCost.
    """
    cuda = str(device).startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        forward()
        torch.cuda.synchronize()
        peak, memory = torch.cuda.max_memory_allocated() - before, "CUDA max_memory_allocated above the weights"
    else:
        reset = _reset_peak_rss()
        before = _proc_status_kb("VmRSS")
        forward()
        after = _proc_status_kb("VmHWM") if reset else None
        peak = None if before is None or after is None else max(0, after - before) * 1024
        memory = "peak RSS of the process above its RSS before the forward"
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        forward()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return ForwardCost(seconds=float(statistics.median(times)), peak_bytes=None if peak is None else int(peak), memory=memory)
