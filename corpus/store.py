"""The result directory: manifest, per-batch Parquet shards, texts, bad rows, summary. No Ray here.

Layout of OUT/:
    manifest.json          the job's settings and the corpus file's fingerprint (a resume must match)
    texts.parquet          text_id, text: the usable texts as read (for drill-down and hover)
    shards/*.parquet       per-text rows of one finished batch; its metadata lists the batch's text ids
    examples/*.parquet     examples analysis: the top K per (layer, head, criterion) of the batch of the same name
    examples.parquet       examples analysis: the top K over the whole corpus (every batch merged)
    geometry.parquet       geometry analysis: the sampled query/key vectors projected to 2-D
    bad_rows.csv           text_id, segment, reason, preview: every row that gave no result, and why
    summary.parquet        the aggregates (heads/induction: per layer, head, statistic; drift: per layer)
    summary.json           counts, timings, workers, peak memory per worker

A shard is written to a temporary name and renamed, so a killed job leaves only whole shards; a
resumed job skips every text a shard already holds.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pandas as pd

__all__ = ["CorpusResult", "load_result", "MANIFEST", "read_examples", "read_shards", "Shards", "SUMMARY", "TEXTS", "write_shard"]

MANIFEST = "manifest.json"
SHARDS = "shards"
EXAMPLES_DIR = "examples"
EXAMPLES = "examples.parquet"
GEOMETRY = "geometry.parquet"
TEXTS = "texts.parquet"
BAD_ROWS = "bad_rows.csv"
SUMMARY = "summary.parquet"
SUMMARY_JSON = "summary.json"
SHARD_META = b"attnscope"
# Settings that must agree for shards of an earlier run to count in this one.
RESUME_KEYS = ("model", "analysis", "word", "data_sha256", "text_field", "cap", "too_long", "top", "criteria", "layer", "head")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _atomic_write(path: Path, write) -> None:
    """Through the one file writer: a temporary name in the same folder, then renamed (a killed job leaves whole files)."""
    from attnscope.viz.export import write_atomic

    write_atomic(path, write)


def check_dir(out: Path, manifest: dict) -> int:
    """Check, writing nothing, that OUT is absent or holds this same job. Returns how many runs wrote into it before."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        msg = f"--out {out}: a file of that name exists; give a directory"
        raise ValueError(msg)
    path = out / MANIFEST
    if not path.exists():
        return 0
    old = json.loads(path.read_text())
    differs = [k for k in RESUME_KEYS if old.get(k) != manifest.get(k)]
    if differs:
        what = ", ".join(f"{k}: {old.get(k)!r} there vs {manifest.get(k)!r} now" for k in differs)
        msg = f"--out {out} holds results of a different job ({what}); use another --out to keep both"
        raise ValueError(msg)
    return int(old.get("runs", 1))


def prepare_dir(out: Path, manifest: dict) -> int:
    """Create OUT (or check that it holds the same job). Returns how many runs wrote into it before."""
    out = Path(out)
    runs = check_dir(out, manifest)
    try:
        (out / SHARDS).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        msg = f"--out {out}: cannot create it ({exc.strerror}); choose a writable directory"
        raise ValueError(msg) from None
    if not os.access(out, os.W_OK) or not os.access(out / SHARDS, os.W_OK):
        msg = f"--out {out}: not writable; choose another directory"
        raise ValueError(msg)
    _atomic_write(out / MANIFEST, lambda p: p.write_text(json.dumps({**manifest, "runs": runs + 1}, indent=1)))
    return runs


def write_texts(out: Path, texts: pd.DataFrame) -> None:
    if not (Path(out) / TEXTS).exists():
        _atomic_write(Path(out) / TEXTS, lambda p: texts.to_parquet(p, index=False))


def write_shard(out: Path, name: str, rows: pd.DataFrame, text_ids: list[int], failed: list[dict]) -> Path:
    """One finished batch as ``shards/NAME.parquet``: its rows, and in the file's metadata every text id it covers."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(rows, preserve_index=False) if len(rows.columns) else pa.table({})
    meta = {"text_ids": sorted({int(i) for i in text_ids}), "failed": failed}
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), SHARD_META: json.dumps(meta).encode()})
    path = Path(out) / SHARDS / f"{name}.parquet"
    _atomic_write(path, lambda p: pq.write_table(table, p))
    return path


def write_examples_shard(out: Path, name: str, examples: pd.DataFrame) -> None:
    """A batch's top examples as ``examples/NAME.parquet``, written before the batch's shard (which marks its texts done)."""
    (Path(out) / EXAMPLES_DIR).mkdir(exist_ok=True)
    _atomic_write(Path(out) / EXAMPLES_DIR / f"{name}.parquet", lambda p: examples.to_parquet(p, index=False))


def merge_examples(out: Path, top: int) -> pd.DataFrame:
    """Every batch's top examples merged into the corpus' top ``top`` per (layer, head, criterion).

    Only batches whose shard was written count (a killed job's orphan is redone under another name),
    and a text found in several shards counts once, from the first shard, as ``read_shards`` does.
    """
    import pyarrow.parquet as pq

    from attnscope.analysis.examples import EXAMPLE_COLUMNS, merge_top

    shard_dir, example_dir = Path(out) / SHARDS, Path(out) / EXAMPLES_DIR
    paths = sorted(p for p in shard_dir.glob("*.parquet") if not p.name.startswith("."))
    frames, done = [], cast(set[Any], set())
    for path in paths:
        meta = json.loads((pq.read_schema(path).metadata or {}).get(SHARD_META, b"{}"))
        ids = set(meta.get("text_ids", []))
        examples = example_dir / path.name
        if examples.exists():
            frame = pd.read_parquet(examples)
            frame = frame[~frame["text_id"].isin(done)] if len(frame) else frame
            if len(frame):
                frames.append(frame)
        done |= ids
    if not frames:
        return pd.DataFrame(columns=list(EXAMPLE_COLUMNS))
    return merge_top(pd.concat(frames, ignore_index=True).drop(columns="rank"), top)[list(EXAMPLE_COLUMNS)]


def read_examples(path) -> pd.DataFrame:
    """DIR/examples.parquet of an examples job; while the job runs, the batches finished so far, merged."""
    path = Path(str(path).strip()).expanduser()
    if (path / EXAMPLES).is_file():
        return pd.read_parquet(path / EXAMPLES)
    manifest = json.loads((path / MANIFEST).read_text()) if (path / MANIFEST).is_file() else {}
    return merge_examples(path, int(manifest.get("top") or 20))


@dataclass
class Shards:
    rows: pd.DataFrame  # per-text rows, each (text_id, segment, ...) once
    done: set[int]  # text ids finished (with or without rows)
    failed: list[dict]  # texts a worker could not process
    files: int
    duplicates: int  # rows of texts that were found in more than one shard and dropped


def read_shards(out: Path) -> Shards:
    """Every shard in OUT; a text found in several shards (a batch re-run after a crash) counts once."""
    import pyarrow.parquet as pq

    # a dot-name is a write in progress (or one a killed job left): never a shard
    paths = sorted(p for p in (Path(out) / SHARDS).glob("*.parquet") if not p.name.startswith("."))
    frames, done, failed, duplicates = [], cast(set[Any], set()), [], 0
    for path in paths:
        table = pq.read_table(path)
        meta = json.loads((table.schema.metadata or {}).get(SHARD_META, b"{}"))
        ids = set(meta.get("text_ids", []))
        again = ids & done
        frame = table.to_pandas()
        if again and len(frame):
            before = len(frame)
            frame = frame[~frame["text_id"].isin(again)]
            duplicates += before - len(frame)
        done |= ids
        failed += [f for f in meta.get("failed", []) if f["text_id"] not in again]
        if len(frame):
            frames.append(frame)
    rows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if len(rows):
        rows = rows.sort_values(
            [c for c in ("text_id", "segment", "occurrence", "layer", "head") if c in rows.columns], kind="stable"
        ).reset_index(drop=True)
    return Shards(rows, done, failed, len(paths), duplicates)


def write_bad_rows(out: Path, bad: list[dict]) -> None:
    frame = pd.DataFrame(bad, columns=["text_id", "segment", "reason", "preview"]).sort_values("text_id", kind="stable")
    _atomic_write(Path(out) / BAD_ROWS, lambda p: frame.to_csv(p, index=False))


def write_summary(out: Path, summary: pd.DataFrame, info: dict) -> None:
    _atomic_write(Path(out) / SUMMARY, lambda p: summary.to_parquet(p, index=False))
    _atomic_write(Path(out) / SUMMARY_JSON, lambda p: p.write_text(json.dumps(info, indent=1, default=str)))


@dataclass
class CorpusResult:
    """A finished corpus result directory, as the dashboard and tests read it."""

    path: Path
    manifest: dict
    info: dict
    summary: pd.DataFrame
    rows: pd.DataFrame
    texts: pd.DataFrame
    bad: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def analysis(self) -> str:
        return self.manifest["analysis"]


def load_result(path) -> CorpusResult:
    """Read a corpus result directory written by ``corpus.run_corpus`` (or ``cli.py corpus``)."""
    path = Path(str(path).strip()).expanduser()
    if not (path / MANIFEST).is_file():
        msg = f"{path}: not a corpus result (no {MANIFEST}); give the --out directory of `cli.py corpus`"
        raise ValueError(msg)
    if not (path / SUMMARY).is_file():
        msg = f"{path}: the job has not finished (no {SUMMARY}); run `cli.py corpus` again with the same --out to complete it"
        raise ValueError(msg)
    shards = read_shards(path)
    bad = pd.read_csv(path / BAD_ROWS) if (path / BAD_ROWS).exists() else pd.DataFrame()
    return CorpusResult(
        path=path,
        manifest=json.loads((path / MANIFEST).read_text()),
        info=json.loads((path / SUMMARY_JSON).read_text()),
        summary=pd.read_parquet(path / SUMMARY),
        rows=shards.rows,
        texts=pd.read_parquet(path / TEXTS),
        bad=bad,
    )
