"""Limits that keep a shared deployment alive: a max-tokens cap, a memory estimate checked before
each run, and an optional model allowlist. Each refuses with a message saying how to get under it.

Settings (environment variables, read at call time):
- ATTNSCOPE_MAX_TOKENS: most padded tokens in one batch (texts x longest); default 16384.
- ATTNSCOPE_MAX_MEMORY_GB: memory one run may use; default 80% of the memory available now.
- ATTNSCOPE_ALLOWED_MODELS: comma-separated aliases / ids / paths; when set, nothing else loads but the bundled
  aliases. Unset, a dashboard not bound to loopback loads the bundled aliases only (``check_allowed(shared=True)``).
"""

from __future__ import annotations

import os

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "GB",
    "LOOPBACK_NAMES",
    "allowed_models",
    "available_bytes",
    "check_allowed",
    "check_run",
    "device_available_bytes",
    "estimate_run_bytes",
    "estimate_run_parts",
    "is_loopback",
    "max_tokens",
    "memory_limit_bytes",
]


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


LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback")


def is_loopback(address: str | None) -> bool:
    """Whether a server bound to ``address`` is reachable from this machine only.

    Loopback: 127.0.0.0/8, ::1 (also IPv4-mapped) and localhost. None, "", 0.0.0.0 and :: mean every
    interface (Streamlit's default when no address is set), and any other name may resolve anywhere: not loopback.
    """
    import ipaddress

    host = (address or "").strip().strip("[]").lower()
    if not host:
        return False
    if host in LOOPBACK_NAMES:
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or bool(mapped and mapped.is_loopback)


def _same_model(name: str, entry: str) -> bool:
    if name == entry:
        return True
    # a local directory may be typed differently (trailing slash, ~, ..): compare where it really is
    expanded = os.path.expanduser(name)
    return os.path.isdir(expanded) and os.path.realpath(expanded) == os.path.realpath(os.path.expanduser(entry))


def check_allowed(name: str, shared: bool = False, bundled: tuple[str, ...] = ()) -> None:
    """Refuse a model this deployment does not allow, saying how to allow it.

    Args:
        name: the alias, Hugging Face id or local directory asked for.
        shared: the caller serves visitors from other machines (a dashboard not bound to loopback): then only
            ``bundled`` aliases and ATTNSCOPE_ALLOWED_MODELS load, so a visitor can neither read the server's
            directories nor make it download models.
        bundled: the bundled aliases, always allowed (they are installed packages: nothing is downloaded or read
            from a path a visitor chose).
    Raises:
        ValueError: one line naming ATTNSCOPE_ALLOWED_MODELS.
    """
    if name in bundled:
        return
    allowed = allowed_models()
    if allowed is not None:
        if not any(_same_model(name, entry) for entry in allowed):
            choices = ", ".join(dict.fromkeys([*allowed, *bundled]))
            msg = f"model {name!r} is not allowed on this deployment; choose one of: {choices} (ATTNSCOPE_ALLOWED_MODELS lists the others it allows)"
            raise ValueError(msg)
        return
    if shared:
        msg = (
            f"model {name!r} is not allowed: this server is reachable from other machines (not bound to 127.0.0.1), so only "
            f"the bundled models ({', '.join(bundled)}) load; the operator can allow more in ATTNSCOPE_ALLOWED_MODELS "
            "(comma-separated ids or directories)"
        )
        raise ValueError(msg)
