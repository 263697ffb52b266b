"""Converted-model caches written whole or not at all.

A conversion (the bundled GGUF into safetensors, ~0.5 GB) is written into a temporary directory
next to its target, checked (every tensor's name and shape against the model in memory, the
tokenizer files present), closed with a completion marker, and only then renamed into place. A
later load trusts a directory only when its marker is there and every file it lists has the size
the marker says, so a killed or failing write (disk full, interrupted) is never read back as a
model. Several processes may convert at once: each writes its own temporary directory (named by
pid and a random suffix) and the first rename wins; the others drop theirs.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["MARKER", "MARKER_FORMAT", "Produce", "STALE_AFTER_S", "convert_once", "is_complete", "remove_stale", "verify_written"]


MARKER = "attnscope-complete.json"
MARKER_FORMAT = 1
STALE_AFTER_S = 6 * 3600  # a temporary directory this old is abandoned even if its pid now belongs to another process

Produce = Callable[[], tuple[Any, Any]]  # () -> (model, tokenizer), both with save_pretrained


def is_complete(directory: Path, fingerprint: str) -> bool:
    """Whether ``directory`` holds a finished conversion of ``fingerprint``: marker present, every listed file at its size."""
    try:
        marker = json.loads((Path(directory) / MARKER).read_text())
        files = marker["files"]
        if marker.get("format") != MARKER_FORMAT or marker.get("fingerprint") != fingerprint or not files:
            return False
        if not any(name.endswith(".safetensors") for name in files):
            return False
        return all((Path(directory) / name).stat().st_size == size for name, size in files.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def convert_once(target: Path, produce: Produce, fingerprint: str) -> Path:
    """``target`` holding ``produce()``'s model and tokenizer in safetensors, converting only when no complete copy is there.

    Args:
        target: the cache directory (its parent is created).
        produce: builds the model and tokenizer; called only when a conversion is needed.
        fingerprint: what the cache is of (the source file's hash); a marker with another one is not trusted.
    Returns:
        ``target``, complete. On any failure nothing is left at ``target`` that a later call would trust,
        and this call's temporary directory is removed.
    """
    target = Path(target)
    if is_complete(target, fingerprint):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(target)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        model, tokenizer = produce()
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        verify_written(tmp, model)
        _write_marker(tmp, fingerprint)
        return _publish(tmp, target, fingerprint)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone after a successful rename; a failed write leaves nothing


def verify_written(directory: Path, model) -> None:
    """Read back the safetensors headers: every saved tensor is the model's (same name, shape, dtype), every
    tensor the model has is saved or tied to a saved one, and the tokenizer's files are there.

    Raises:
        OSError: what is on disk is not the model (a write cut short, a missing file).
    """
    from safetensors import safe_open

    directory = Path(directory)
    state = model.state_dict()
    saved: dict[str, tuple[tuple[int, ...], str]] = {}
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise OSError(errno.EIO, f"no safetensors file was written in {directory}")
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as fh:
                for key in fh.keys():
                    sliced = fh.get_slice(key)
                    saved[key] = (tuple(sliced.get_shape()), sliced.get_dtype())
        except Exception as exc:  # safetensors raises its own error type for a cut-short file
            raise OSError(errno.EIO, f"{path.name} does not read back: {exc}") from None
    storage = {t.data_ptr() for k, t in state.items() if k in saved}
    for key, tensor in state.items():
        if key not in saved:
            if tensor.data_ptr() not in storage:  # dropped on save only when tied to a saved tensor
                raise OSError(errno.EIO, f"tensor {key} is missing from the written cache")
            continue
        shape, _dtype = saved[key]
        if shape != tuple(tensor.shape):
            raise OSError(errno.EIO, f"tensor {key} was written with shape {shape}, expected {tuple(tensor.shape)}")
    unknown = sorted(set(saved) - set(state))
    if unknown:
        raise OSError(errno.EIO, f"the written cache has tensors the model does not: {unknown[:3]}")
    for name in ("config.json", "tokenizer_config.json"):
        if not (directory / name).is_file():
            raise OSError(errno.EIO, f"{name} is missing from the written cache")
    if not any((directory / name).is_file() for name in ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model")):
        raise OSError(errno.EIO, "no tokenizer vocabulary was written in the cache")


def _write_marker(directory: Path, fingerprint: str) -> None:
    """Flush every file, then write the marker last (itself through a temporary name)."""
    files = {}
    for path in sorted(Path(directory).iterdir()):
        if path.is_file():
            _fsync(path)
            files[path.name] = path.stat().st_size
    marker = Path(directory) / MARKER
    partial = marker.with_name(MARKER + ".partial")
    partial.write_text(
        json.dumps(
            {"format": MARKER_FORMAT, "fingerprint": fingerprint, "files": files, "written": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=1
        )
    )
    _fsync(partial)
    os.replace(partial, marker)
    _fsync_dir(directory)


def _publish(tmp: Path, target: Path, fingerprint: str) -> Path:
    """Rename ``tmp`` to ``target``; when another process got there first with a complete copy, keep theirs."""
    for _attempt in range(5):
        try:
            os.rename(tmp, target)  # atomic; fails when target exists and is not empty
            _fsync_dir(target.parent)
            return target
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR):
                raise
        if is_complete(target, fingerprint):  # someone else won the race
            return target
        _discard(target, fingerprint)  # an unmarked or broken directory (an older, interrupted write): never trusted
    if is_complete(target, fingerprint):
        return target
    raise OSError(errno.EBUSY, f"could not put the converted model in place at {target}")


def _discard(path: Path, fingerprint: str) -> None:
    """Move ``path`` aside (atomic), then delete it, so no reader sees a half-deleted directory at ``path``."""
    aside = path.with_name(f".{path.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    except NotADirectoryError:
        path.unlink(missing_ok=True)
        return
    if is_complete(aside, fingerprint):  # another process published between our check and the move: put it back
        try:
            os.rename(aside, path)
            return
        except OSError:
            pass
    if aside.is_dir():
        shutil.rmtree(aside, ignore_errors=True)
    else:
        aside.unlink(missing_ok=True)


def remove_stale(target: Path) -> list[Path]:
    """Delete temporary and set-aside directories of ``target`` left by processes that died (or that are very old)."""
    removed = []
    for path in Path(target).parent.glob(f".{Path(target).name}.*-*-*"):
        kind, _, rest = path.name.removeprefix(f".{Path(target).name}.").partition("-")
        pid = rest.split("-")[0]
        if kind not in ("tmp", "old") or not pid.isdigit():
            continue
        try:
            age = time.time() - path.stat().st_mtime
        except OSError:
            continue
        if _alive(int(pid)) and age < STALE_AFTER_S:
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def _fsync(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
