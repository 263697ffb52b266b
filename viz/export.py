"""The only file writer for figures: Altair charts to PNG, SVG and HTML (vl-convert), frames to CSV."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import altair as alt
import pandas as pd

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
    """Write bytes, refusing paths outside ``root`` (when given) and unwritable folders, with a clear message."""
    path = Path(path)
    if root is not None:
        base = Path(root).resolve()
        if not path.resolve().is_relative_to(base):
            msg = f"refusing to write {path}: exports go under {base}"
            raise ValueError(msg)
    if not path.parent.exists():
        msg = f"cannot write {path}: folder {path.parent} does not exist; create it or choose another path"
        raise ValueError(msg)
    try:
        path.write_bytes(data)
    except OSError as exc:
        msg = f"cannot write {path}: {exc.strerror}; choose a writable path"
        raise ValueError(msg) from None
    return path
