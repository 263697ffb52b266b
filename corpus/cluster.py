"""Reaching Ray: importing it with a clear message, and checking a cluster address fast. Light: no torch here."""

from __future__ import annotations

import socket
from urllib.parse import urlparse

__all__ = ["check_address", "require_ray"]


def require_ray():
    """Import Ray, or say how to install it."""
    try:
        import ray
    except ImportError:
        msg = "corpus jobs run on Ray, which is not installed here; install it with `pip install ray==2.60.0` (see requirements.txt)"
        raise ValueError(msg) from None
    return ray


def check_address(address: str | None, timeout: float = 5.0) -> None:
    """Fail within ``timeout`` seconds when a cluster address does not answer (Ray itself retries for a minute)."""
    if address is None:
        return
    if address == "auto":
        ray = require_ray()
        try:  # what ray.init(address="auto") does first: find a running cluster on this machine (RAY_ADDRESS or Ray's temp dir)
            from ray._private.services import canonicalize_bootstrap_address
        except ImportError:  # another Ray version: ray.init will say it instead
            return
        try:
            canonicalize_bootstrap_address("auto")
        except ConnectionError:
            msg = "--address auto: no running Ray cluster found on this machine; start one with `ray start --head` or leave --address out for a local Ray"
            raise ValueError(msg) from None
        del ray
        return
    parsed = urlparse(address if "://" in address else f"tcp://{address}")
    try:
        host, port = parsed.hostname, parsed.port
    except ValueError:
        host, port = None, None
    if not host or not port:
        msg = f"--address {address!r}: give auto, host:port or ray://host:port"
        raise ValueError(msg)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError | socket.timeout) else (exc.strerror or type(exc).__name__)
        msg = (
            f"--address {address}: no Ray cluster answers there ({reason} within {timeout:g} s); "
            "start one with `ray start --head` or check host and port"
        )
        raise ValueError(msg) from None
