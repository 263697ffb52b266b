"""What every subcommand shares: the parser class, the --model options, output paths, loading, one-line errors."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

__all__ = [
    "add_head_options",
    "add_model_options",
    "indices",
    "load_model",
    "MAX_ERROR_CHARS",
    "one_line",
    "one_text",
    "out_path",
    "Parser",
    "UsageError",
    "write_json",
    "write_out",
]


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# What str.splitlines() breaks on: a message echoing the user's input must still be one line.
_LINE_BREAKS = "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"
MAX_ERROR_CHARS = 1000


class UsageError(ValueError):
    """Bad command-line input."""


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, no usage dump
        raise UsageError(f"{self.prog}: {message} (see --help)")


def out_path(path: str, suffixes: tuple[str, ...]) -> Path:
    out = Path(path)
    if out.suffix.lower() not in suffixes:
        msg = f"--out {path}: use a file name ending in {' or '.join(suffixes)}"
        raise UsageError(msg)
    parent = out.parent if str(out.parent) else Path(".")
    if out.is_dir():
        msg = f"--out {path}: that is a folder; give a file name inside it"
        raise UsageError(msg)
    if not parent.exists():
        msg = f"--out {path}: folder {parent} does not exist; create it or choose another path"
        raise UsageError(msg)
    if not parent.is_dir():
        msg = f"--out {path}: {parent} is a file, not a folder; choose another path"
        raise UsageError(msg)
    if not os.access(parent, os.W_OK):
        msg = f"--out {path}: folder {parent} is not writable; choose another path"
        raise UsageError(msg)
    return out


def load_model(args):
    from attnscope.models import load
    from attnscope.models.forward import validate_texts

    if getattr(args, "text", None) is not None:
        validate_texts(args.text)  # refuse bad text before spending seconds on a load

    lm = load(
        args.model,
        backend=getattr(args, "backend", "auto"),
        device=getattr(args, "device", "auto"),
        verify=not getattr(args, "no_verify", False),
    )
    args.loaded_specs = [*getattr(args, "loaded_specs", []), lm.spec]  # main() reports how each was checked
    return lm


def add_model_options(p, texts: bool = True, max_length: bool = True, target: bool = False):
    """The options every model command takes; --max-length and --target only where the command uses them
    (an option that is accepted and then ignored would be a silent surprise)."""
    p.add_argument("--model", required=True, help="bundled alias (minilm, smollm2), Hugging Face id or local directory")
    if texts:
        p.add_argument("--text", action="append", required=True, help="input text; repeat for a padded batch")
    p.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "sdpa", "eager", "flash"],
        help="attention kernel (auto: SDPA where the architecture has it, else eager; maps are exact with any)",
    )
    p.add_argument("--no-verify", action="store_true", help="skip the load-time check of every head against eager on a probe text")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    if max_length:
        p.add_argument("--max-length", type=int, default=None, help="truncate to this many tokens (else too-long text is refused)")
    if target:
        p.add_argument(
            "--target", action="append", default=None, help="encoder-decoder models (T5, BART, ...): the decoder's text, one per --text"
        )


def indices(spec: str | None, limit: int, what: str, flag: str | None = None) -> list[int]:
    flag = flag or f"--{what}s"
    if spec is None:
        return list(range(limit))
    try:
        values = [int(v) for v in spec.split(",") if v.strip()]
    except ValueError:
        msg = f"{flag} {spec!r}: give comma-separated 0-based numbers, e.g. 0,3"
        raise UsageError(msg) from None
    if not values:
        msg = f"{flag} {spec!r}: give at least one 0-based number, e.g. 0,3 (or leave {flag} out for all)"
        raise UsageError(msg)
    bad = [v for v in values if not 0 <= v < limit]
    if bad:
        msg = f"{flag}: {bad[0]} out of range; this model has {what}s 0..{limit - 1} (0-based)"
        raise UsageError(msg)
    return values


def write_out(out: Path, write) -> None:
    """Every output file goes through here: written whole (temporary name, then renamed) or not at all."""
    from attnscope.viz.export import write_atomic

    write_atomic(out, write)


def write_json(out: Path, data, **dumps) -> None:
    """``data`` as a UTF-8 JSON file through ``write_out`` (serialised first: a value JSON cannot hold leaves no file)."""
    import json

    payload = json.dumps(data, **dumps)
    write_out(out, lambda path: path.write_text(payload, encoding="utf-8"))


def add_head_options(p) -> None:
    """--layer and --head: the one head a command is about."""
    p.add_argument("--layer", type=int, required=True, help="0-based layer of the head")
    p.add_argument("--head", type=int, required=True, help="0-based query head")


def one_text(args) -> str:
    if len(args.text) != 1:
        msg = f"--text given {len(args.text)} times; this command explains one text"
        raise UsageError(msg)
    return args.text[0]


def one_line(message: object) -> str:
    """An error message as one printable line: line breaks escaped, a very long echo of the input shortened."""
    text = "".join(repr(c)[1:-1] if c in _LINE_BREAKS else c for c in str(message))
    if len(text) > MAX_ERROR_CHARS:  # keep the start (what was wrong) and the end (what to do)
        text = text[: MAX_ERROR_CHARS * 2 // 3] + " … " + text[-MAX_ERROR_CHARS // 3 :]
    return text
