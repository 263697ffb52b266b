"""attnscope headless: the same library calls as the dashboard pages, writing files.

Every subcommand has --help. Bad input exits with status 2 and one line on stderr.
"""

from __future__ import annotations

import sys

from attnscope.cli import (
    anatomy,
    bundled,
    circuit,
    contributions,
    corpus,
    drift,
    extract,
    figure,
    generate,
    heads,
    knockout,
    lab,
    lens,
    padding,
    routes,
    serve,
    why,
)
from attnscope.cli.common import Parser, UsageError, one_line

# One module per subcommand (parser + run); each registers its parsers here, in the order --help lists them.
# A module imports the engine (torch, transformers) inside its run function only, so --help stays fast.
SUBCOMMANDS = (
    extract,
    heads,
    drift,
    padding,
    figure,
    corpus,
    generate,
    lens,
    lab,
    knockout,
    contributions,
    anatomy,
    routes,
    why,
    circuit,
    serve,
    bundled,
)

__all__ = ["SUBCOMMANDS", "UsageError", "build_parser", "main", "one_line"]


def build_parser() -> Parser:
    """The `attnscope` parser with every subcommand."""
    parser = Parser(prog="attnscope", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for module in SUBCOMMANDS:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; return the exit status (0, 2 on bad input, 130 on Ctrl-C)."""
    try:
        args = build_parser().parse_args(argv)
        message = args.func(args)
    except (ValueError, UsageError) as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    except MemoryError:
        print("error: out of memory; use a shorter text or --max-length", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    if message:
        print(message)
    for spec in getattr(args, "loaded_specs", []):
        print(f"{spec.name}: {spec.recording_label}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
