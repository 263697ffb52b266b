"""Limits that keep a shared deployment alive: a max-tokens cap, a memory estimate checked before
each run, and an optional model allowlist. Each refuses with a message saying how to get under it.

Settings (environment variables, read at call time):
- ATTNSCOPE_MAX_TOKENS: most padded tokens in one batch (texts x longest); default 16384.
- ATTNSCOPE_MAX_MEMORY_GB: memory one run may use; default 80% of the memory available now.
- ATTNSCOPE_ALLOWED_MODELS: comma-separated aliases / ids / paths; when set, nothing else loads.
"""

from __future__ import annotations

import os

# 16k padded tokens: SmolLM2 at 8,192 tokens x 2 texts records ~1.6 GB of q/k and ~1.2 GB of
# hidden states, comfortably inside a 24 GB machine with the model and the forward's activations.
DEFAULT_MAX_TOKENS = 16384
GB = 1024**3


def max_tokens() -> int:
    raw = os.environ.get("ATTNSCOPE_MAX_TOKENS", "")
    return int(raw) if raw.strip().isdigit() else DEFAULT_MAX_TOKENS


def available_bytes() -> int:
    """MemAvailable from /proc/meminfo (Linux), else a conservative 8 GB."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * GB


def device_available_bytes(device) -> int:
    """Free memory where a run's tensors will live: the GPU's own free memory for CUDA, else host RAM."""
    if device is not None and str(device).startswith("cuda"):
        import torch

        free, _total = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    return available_bytes()


def memory_limit_bytes(device=None) -> int:
    """ATTNSCOPE_MAX_MEMORY_GB, else 80% of what is free on ``device`` (host RAM for the CPU)."""
    raw = os.environ.get("ATTNSCOPE_MAX_MEMORY_GB", "")
    try:
        return int(float(raw) * GB)
    except ValueError:
        return int(0.8 * device_available_bytes(device))


def estimate_run_bytes(config, spec, batch: int, n: int, padded: bool) -> int:
    """Peak extra memory of one recorded run (weights already loaded are not counted).

    The sum of ``estimate_run_parts``.
    """
    return sum(estimate_run_parts(config, spec, batch, n, padded).values())


def estimate_run_parts(config, spec, batch: int, n: int, padded: bool) -> dict[str, int]:
    """The estimate by part, in bytes.

    Returns:
        dict with "attention": the recorded q/k, L·B·(H+KV)·n·d_head with the model's own head size
        ``spec.head_dim`` (a materialised model keeps L·B·H·n² weights as well); "hidden": the hidden states,
        (L+1)·B·n·d_model; "transient": the forward's activations, MLP B·n·d_ff and, with a padding mask on CPU
        (math kernel), one layer's B·H·n² scores and the shared bool mask B·n²; "block": one statistics
        block, ~2 MB. All float32 (4 bytes) but the mask.
    """
    f32 = 4
    d_head = getattr(spec, "head_dim", 0) or spec.d_model // spec.n_heads
    recorded = spec.n_layers * batch * (spec.n_heads + spec.n_kv_heads) * n * d_head * f32
    hidden = (spec.n_layers + 1) * batch * n * spec.d_model * f32
    d_ff = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * spec.d_model
    transient = 3 * batch * n * d_ff * f32
    if padded:
        transient += batch * spec.n_heads * n * n * f32 + batch * n * n
    if getattr(spec, "recording", "hook") == "materialised":
        # eager's weights are kept (as log-weights) for every layer: L·B·H·n² floats, plus the forward's own copy
        recorded += (spec.n_layers + 1) * batch * spec.n_heads * n * n * f32
    return {"attention": recorded, "hidden": hidden, "transient": transient, "block": 2 * 1024**2}


def check_run(lm, batch: int, n: int, padded: bool) -> None:
    """Refuse a run that would exceed the token cap or the memory limit, before it starts."""
    total = batch * n
    cap = max_tokens()
    if total > cap:
        msg = (
            f"{batch} text(s) x {n} tokens = {total} padded tokens exceeds this deployment's limit of {cap}; "
            "use fewer or shorter texts, or raise ATTNSCOPE_MAX_TOKENS"
        )
        raise ValueError(msg)
    need = estimate_run_bytes(lm.model.config, lm.spec, batch, n, padded)
    limit = memory_limit_bytes(_record_device(lm))
    if need > limit:
        msg = (
            f"this run would need about {need / GB:.1f} GB but {limit / GB:.1f} GB is allowed; "
            "use fewer or shorter texts (or one text instead of a padded batch), or raise ATTNSCOPE_MAX_MEMORY_GB"
        )
        raise ValueError(msg)


def _record_device(lm):
    """Where the recorded tensors live: the device of the model's first parameter."""
    try:
        return next(lm.model.parameters()).device
    except (StopIteration, AttributeError):
        return None


def allowed_models() -> list[str] | None:
    raw = os.environ.get("ATTNSCOPE_ALLOWED_MODELS", "").strip()
    return [m.strip() for m in raw.split(",") if m.strip()] or None


def check_allowed(name: str) -> None:
    allowed = allowed_models()
    if allowed is not None and name not in allowed:
        msg = f"model {name!r} is not allowed on this deployment; choose one of: {', '.join(allowed)}"
        raise ValueError(msg)
