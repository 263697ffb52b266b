"""The only file writer: Altair charts to PNG, SVG and HTML (vl-convert), frames to CSV, and every output
file of the CLI and of corpus jobs, each written whole or not at all (``write_atomic`` / ``write_all``)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import pandas as pd

if TYPE_CHECKING:
    import altair as alt

__all__ = ["FORMATS", "Format", "MIME", "Writer", "chart_bytes", "frame_bytes", "save_chart", "write_all", "write_atomic", "write_bytes"]


Format = Literal["png", "svg", "html", "csv", "json"]
FORMATS: tuple[str, ...] = ("png", "svg", "html")
MIME = {"png": "image/png", "svg": "image/svg+xml", "html": "text/html", "csv": "text/csv", "json": "application/json"}


def chart_bytes(chart: alt.TopLevelMixin, fmt: str, *, scale: float = 2.0) -> bytes:
    """Render a chart without a browser. PNG at ``scale`` x for slides and papers."""
    import vl_convert as vlc

    spec = chart.to_dict()
    if fmt == "png":
        return vlc.vegalite_to_png(spec, scale=scale)
    if fmt == "svg":
        return vlc.vegalite_to_svg(spec).encode()
    if fmt == "html":
        return vlc.vegalite_to_html(spec, bundle=True).encode()
    msg = f"unknown figure format {fmt!r}; use png, svg or html"
    raise ValueError(msg)


def frame_bytes(frame: pd.DataFrame) -> bytes:
    """The data behind a chart as CSV."""
    return frame.to_csv(index=False).encode()


def save_chart(chart: alt.TopLevelMixin, path: str | Path, *, scale: float = 2.0) -> Path:
    """Write a chart to ``path``; the suffix (.png, .svg, .html) picks the format."""
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    data = chart_bytes(chart, fmt, scale=scale)
    return write_bytes(path, data)


def write_bytes(path: str | Path, data: bytes, *, root: str | Path | None = None) -> Path:
    """Write bytes whole or not at all, refusing paths outside ``root`` (when given) and unwritable folders, with a clear message."""
    return write_atomic(path, lambda tmp: tmp.write_bytes(data), root=root)


Writer = Callable[[Path], object]  # writes the file's full content to the path it is given


def write_atomic(path: str | Path, write: Writer, *, root: str | Path | None = None) -> Path:
    """Write one file whole or not at all: ``write(tmp)`` into a temporary name in the same folder, then rename.

    A failing or interrupted write (disk full, Ctrl-C, an error in ``write``) leaves neither a partial
    file at ``path`` nor the temporary one; an existing file at ``path`` is kept until the rename.

    Raises:
        ValueError: the path is outside ``root``, its folder does not exist, or the write failed (one line).
    """
    return write_all({path: write}, root=root)[0]


def write_all(writers: dict[str | Path, Writer], *, root: str | Path | None = None) -> list[Path]:
    """Write several files all or none: every file to its temporary name first, then all renamed into place."""
    paths = [_checked_target(Path(path), root) for path in writers]
    temps: list[Path] = []
    current = paths[0] if paths else None
    try:
        for path, write in zip(paths, writers.values()):
            current = path
            # the real suffix last: writers such as numpy's savez add theirs to a name without it
            tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{path.suffix}")
            temps.append(tmp)
            write(tmp)
            _fsync(tmp)
        for tmp, path in zip(temps, paths):
            current = path
            os.replace(tmp, path)
    except OSError as exc:
        msg = f"cannot write {current}: {exc.strerror or exc}; choose a writable path"
        raise ValueError(msg) from None
    finally:
        for tmp in temps:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
    return paths


def _checked_target(path: Path, root: str | Path | None) -> Path:
    if root is not None:
        base = Path(root).resolve()
        if not path.resolve().is_relative_to(base):
            msg = f"refusing to write {path}: exports go under {base}"
            raise ValueError(msg)
    if path.is_dir():
        msg = f"cannot write {path}: it is a folder; give a file name"
        raise ValueError(msg)
    if not path.parent.exists():
        msg = f"cannot write {path}: folder {path.parent} does not exist; create it or choose another path"
        raise ValueError(msg)
    if not path.parent.is_dir():
        msg = f"cannot write {path}: {path.parent} is a file, not a folder; choose another path"
        raise ValueError(msg)
    return path


def _fsync(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())
