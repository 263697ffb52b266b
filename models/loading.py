"""The way in: ``load`` opens a model (``models.loaded.open_model``: files, kernel, spec, layout), then checks
every head's map against eager on a probe text (``models.verify``); ``from_model`` does the same for a model
already built. What the rest of the package passes around is the ``models.loaded.LoadedModel`` these return."""

from __future__ import annotations

import threading

import torch

from attnscope.models.hook import BACKENDS
from attnscope.models.loaded import LoadedModel, open_model, prepare
from attnscope.models.verify import verified

__all__ = ["from_model", "load"]

# transformers' from_pretrained swaps class attributes for the duration of a load (PreTrainedModel.tie_weights
# among them): two loads in two threads at once can leave tie_weights switched off for the whole process, and
# every later load of a tied model (SmolLM2) then fails on meta tensors. One load at a time, for every caller.
_loading = threading.Lock()


def load(
    name_or_path: str,
    backend: str = "auto",
    device: str = "auto",
    dtype: torch.dtype | str | None = None,
    *,
    allow_pickle: bool = False,
    device_map: dict | str | None = None,
    verify: bool = True,
    shared: bool = False,
) -> LoadedModel:
    """Load a model for recording, and check its maps against eager on a probe text.

    Args:
        name_or_path: a bundled alias ("minilm", "smollm2"), a Hugging Face id, or a local directory.
        backend: "auto" (SDPA where the architecture supports it, else its own eager function),
            "sdpa", "eager" or "flash" (FlashAttention, CUDA only); maps are exact with any.
        device: "cpu", "cuda" or "auto" (CUDA when present; with several devices, accelerate's
            ``device_map="auto"`` shards the model).
        dtype: torch dtype or its name; default float32 on CPU, bfloat16 for flash.
        allow_pickle: accept PyTorch pickle weights (``.bin``); off by default because unpickling runs code.
        device_map: an explicit accelerate device map (overrides ``device``).
        verify: compare every head's recorded map with eager ``output_attentions`` on a probe text
            (``spec.verification``); an architecture the hook cannot record exactly falls back to
            eager's own weights (``spec.recording == "materialised"``) or is refused.
        shared: the caller serves visitors from other machines (the dashboard not bound to loopback): only
            bundled aliases and ATTNSCOPE_ALLOWED_MODELS load (``models.limits.check_allowed``).
    Returns:
        LoadedModel with ``spec``, ``model`` and ``tokenizer``.
    """
    with _loading:
        lm, hookable = open_model(name_or_path, backend, device, dtype, allow_pickle=allow_pickle, device_map=device_map, shared=shared)
        return verified(lm, verify=verify, hookable=hookable)


def from_model(model: torch.nn.Module, tokenizer, name: str = "custom", backend: str = "auto", verify: bool = True) -> LoadedModel:
    """Wrap an already built model (e.g. a tiny random-init one in tests) for recording; checked like ``load``."""
    if backend not in BACKENDS:
        msg = f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}"
        raise ValueError(msg)
    with _loading:
        lm, hookable = prepare(model, tokenizer, name=name, source=name, backend=backend)
        return verified(lm, verify=verify, hookable=hookable)
