"""Reading a corpus file into (text_id, text) rows, listing every row that cannot be used.

Formats, by suffix: ``.txt`` one text per line; ``.jsonl`` one JSON object per line with a text
field; ``.parquet`` and ``.csv`` with a text column. ``text_id`` is the 0-based row (line) number
in the file, so ids stay the same when a job is resumed or the file is read again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

__all__ = ["FORMATS", "Corpus", "read_corpus"]

FORMATS = (".txt", ".jsonl", ".parquet", ".csv")
DEFAULT_FIELD = "text"
PREVIEW_CHARS = 80


@dataclass
class Corpus:
    """The usable texts of a file and the rows that were not usable."""

    path: Path
    texts: pd.DataFrame  # text_id (int64), text (str)
    bad: list[dict] = field(default_factory=list)  # {"text_id", "reason", "preview"}
    n_rows: int = 0


class _ReadError(ValueError):
    """A message of ours, raised as is (other ValueErrors come from parsers and are reworded)."""


def _preview(value) -> str:
    text = repr(value) if not isinstance(value, str) else value
    return text if len(text) <= PREVIEW_CHARS else text[: PREVIEW_CHARS - 1] + "…"


def _bad(text_id: int, reason: str, value) -> dict:
    return {"text_id": int(text_id), "reason": reason, "preview": _preview(value)}


def _check_value(text_id: int, value, bad: list[dict]) -> str | None:
    if value is None or (isinstance(value, float) and value != value):
        bad.append(_bad(text_id, "missing (no value)", value))
        return None
    if not isinstance(value, str):
        bad.append(_bad(text_id, f"not text ({type(value).__name__})", value))
        return None
    if not value.strip():
        bad.append(_bad(text_id, "empty", value))
        return None
    return value


def read_corpus(path, text_field: str | None = None) -> Corpus:
    """Read texts from ``path``; rows that are empty or not text are listed in ``bad``, never dropped silently.

    Args:
        path: a .txt, .jsonl, .parquet or .csv file.
        text_field: the JSON field / column holding the text (default "text"; not used for .txt).
    Returns:
        Corpus with texts [text_id, text] in file order.
    Raises:
        ValueError: missing or unreadable file, unknown format, missing column, no usable text at all.
    """
    path = Path(path)
    if not path.is_file():
        msg = f"--data {path}: no such file; give a .txt, .jsonl, .parquet or .csv file of texts"
        raise ValueError(msg)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        msg = f"--data {path}: unknown format {suffix or '(no suffix)'!r}; use one of {', '.join(FORMATS)}"
        raise ValueError(msg)
    if text_field is not None and suffix == ".txt":
        msg = "--text-field applies to .jsonl, .parquet and .csv files; a .txt file has one text per line"
        raise ValueError(msg)
    name = text_field or DEFAULT_FIELD
    bad: list[dict] = []
    ids, texts = [], []
    try:
        if suffix == ".txt":
            lines = path.read_text(encoding="utf-8").splitlines()
            values = list(enumerate(lines))
        elif suffix == ".jsonl":
            values = []
            for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError:
                    bad.append(_bad(i, "not JSON", line))
                    continue
                if not isinstance(obj, dict) or name not in obj:
                    bad.append(_bad(i, f"no field {name!r}", line))
                    continue
                values.append((i, obj[name]))
            if bad and not values and all(b["reason"].startswith("no field") for b in bad):
                msg = f"--data {path}: no line has a field {name!r}; choose the field with --text-field"
                raise _ReadError(msg)
        else:
            frame = pd.read_parquet(path) if suffix == ".parquet" else pd.read_csv(path, dtype=object, keep_default_na=False, na_values=[])
            if name not in frame.columns:
                columns = ", ".join(map(str, frame.columns[:20]))
                msg = f"--data {path}: no column {name!r}; the file has columns {columns}; choose one with --text-field"
                raise _ReadError(msg)
            values = list(enumerate(frame[name].tolist()))
    except _ReadError:
        raise
    except UnicodeDecodeError:
        msg = f"--data {path}: not UTF-8 text; save it as UTF-8"
        raise ValueError(msg) from None
    except (OSError, pd.errors.ParserError) as exc:
        msg = f"--data {path}: cannot read it ({type(exc).__name__}: {exc}); check the file and its permissions"
        raise ValueError(msg) from None
    except Exception as exc:  # noqa: BLE001 - pyarrow raises its own types (some ValueErrors) for a broken Parquet file
        msg = f"--data {path}: cannot read it ({type(exc).__name__}); is it really {suffix}?"
        raise ValueError(msg) from None
    for i, value in values:
        text = _check_value(i, value, bad)
        if text is not None:
            ids.append(i)
            texts.append(text)
    n_rows = len(values) + sum(1 for b in bad if b["reason"] in ("not JSON",) or b["reason"].startswith("no field"))
    if not texts:
        detail = f" ({len(bad)} unusable row(s): {bad[0]['reason']}, …)" if bad else ""
        msg = f"--data {path}: the corpus is empty{detail}; give a file with at least one non-empty text"
        raise ValueError(msg)
    table = pd.DataFrame({"text_id": pd.array(ids, dtype="int64"), "text": texts})
    return Corpus(path=path, texts=table, bad=sorted(bad, key=lambda b: b["text_id"]), n_rows=n_rows)
