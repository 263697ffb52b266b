"""Every code block in README.md and docs/*.md runs.

- ```python blocks run in order, one fresh namespace per file, as a reader would paste them;
  ```python notebook blocks run in that order too, and like Jupyter their last bare expression is the
  cell's output, which must be a chart Jupyter can draw.
- ```bash / ```sh blocks: every command is ``python cli.py ...`` (or ``.venv/bin/python cli.py ...``),
  run with this interpreter from the repository root, its --out redirected into a temporary folder,
  and it must exit 0 and write that file. The same command in two places runs once.
- ```<lang> norun blocks cannot run in a test (make, a Ray cluster, a GPU, an example path): only a
  handful may be marked so. ```text blocks are output, not code.
"""

from __future__ import annotations

import ast
import functools
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)
RUN = {"python", "python notebook", "bash", "sh"}
NOT_RUN = {"bash norun", "sh norun", "python norun", "text", ""}
MAX_NORUN = 7  # make run, a cluster, a GPU, an example path, Ray jobs: a handful, not a way out of the test
CLI = ("python", ".venv/bin/python")
OUTPUT_FLAGS = {"--out"}
OUTPUT_FLAGS_OF = {"figure": {"--data"}}  # --data is the figure's CSV there, an input file elsewhere


@dataclass(frozen=True)
class Block:
    path: Path
    line: int
    info: str
    source: str

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks(path: Path) -> list[Block]:
    text = path.read_text(encoding="utf-8")
    return [Block(path, text.count("\n", 0, m.start()) + 1, m.group(1).strip(), m.group(2)) for m in FENCE.finditer(text)]


ALL = [block for path in DOCS for block in blocks(path)]


# -- python blocks ---------------------------------------------------------------------------------
def run_cell(source: str, namespace: dict, name: str):
    """exec the cell; like Jupyter, return the value of a final bare expression (what it displays)."""
    tree = ast.parse(source)
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    exec(compile(tree, name, "exec"), namespace)  # noqa: S102 - the docs' own code
    return eval(compile(ast.Expression(last.value), name, "eval"), namespace) if last else None  # noqa: S307


@functools.cache
def executed(path: Path) -> tuple:
    """Run a file's python blocks in order: (output, names after the cell) per notebook cell."""
    namespace: dict = {"__name__": "__docs__"}
    shown = []
    for block in blocks(path):
        if block.info in ("python", "python notebook"):
            value = run_cell(block.source, namespace, f"<{block.where}>")
            if block.info == "python notebook":
                shown.append((value, dict(namespace)))
    return tuple(shown)


PY_FILES = [p for p in DOCS if any(b.info.startswith("python") and b.info != "python norun" for b in blocks(p))]


def test_every_block_is_run_or_marked():
    unknown = [f"{b.where}: ```{b.info}" for b in ALL if b.info not in RUN | NOT_RUN]
    assert not unknown, f"fence info strings the docs test does not know (run them or mark them norun): {unknown}"
    untagged = [b.where for b in ALL if b.info == "" and b.source.strip()]
    assert not untagged, f"code blocks without a language (```text for output): {untagged}"


def test_only_a_handful_of_blocks_are_not_run():
    norun = [b.where for b in ALL if b.info.endswith("norun")]
    assert len(norun) <= MAX_NORUN, norun
    assert sum(b.info in RUN for b in ALL) >= 10, "the docs lost their runnable examples"


@pytest.mark.parametrize("path", PY_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_python_blocks_run(path):
    shown = executed(path)
    import altair as alt

    for value, _ in shown:
        assert isinstance(value, alt.TopLevelMixin), type(value)
        bundle = value._repr_mimebundle_()  # what Jupyter calls to draw the cell's output
        bundle = bundle[0] if isinstance(bundle, tuple) else bundle
        assert any("vegalite" in mime or mime == "text/html" or "widget-view" in mime for mime in bundle), list(
            bundle
        )  # widget: attnscope.show


def test_notebook_cells_draw_the_records_maps():
    api = ROOT / "docs" / "api.md"
    assert sum(b.info == "python notebook" for b in blocks(api)) >= 3  # attnscope.show, then the builders underneath
    (heatmap, names), (grid_chart, _) = executed(api)[-2:]
    rec, frame, lm = names["rec"], names["frame"], names["lm"]
    values = heatmap.to_dict()["datasets"]
    values = values[next(iter(values))]  # the heatmap's inline data
    grid = np.zeros((len(rec.tokens[0]),) * 2)
    for row in values:
        grid[row["query_pos"], row["key_pos"]] = row["weight"]
    np.testing.assert_allclose(grid, rec.attention(2, 3), atol=1e-6)
    assert len(frame) == len(rec.tokens[0]) ** 2
    rows = grid_chart.to_dict()["datasets"]
    assert len(rows[next(iter(rows))]) == lm.spec.n_layers * lm.spec.n_heads


# -- command-line blocks ---------------------------------------------------------------------------
def commands(block: Block) -> list[str]:
    """The block's commands: continuation lines joined, comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", block.source)
    lines = [line.split(" #", 1)[0].strip() for line in joined.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def cli_argv(command: str, where: str, out_dir: Path) -> list[str]:
    """The command as argv for this interpreter, every output path moved into ``out_dir``."""
    rest = subcommand_words(command)
    assert rest, (
        f"{where}: {command!r} is not `attnscope ...` or `python cli.py ...`; mark the block ```bash norun if it cannot run in a test"
    )
    outputs = OUTPUT_FLAGS | OUTPUT_FLAGS_OF.get(rest[0], set())
    argv = [sys.executable, "cli.py", *rest]
    for i, word in enumerate(argv[:-1]):
        if word in outputs:
            argv[i + 1] = str(out_dir / argv[i + 1])
    return argv


def subcommand_words(command: str) -> list[str]:
    """`attnscope SUB ...` and `python cli.py SUB ...` (or .venv/bin/python) are one command: its words from SUB on."""
    words = shlex.split(command)
    if len(words) >= 2 and words[0] in ("attnscope", ".venv/bin/attnscope"):
        return words[1:]
    if len(words) >= 3 and words[0] in CLI and words[1] == "cli.py":
        return words[2:]
    return []


def _key(command: str) -> tuple[str, ...]:
    return ("attnscope", *(subcommand_words(command) or shlex.split(command)))


CLI_COMMANDS: dict[tuple[str, ...], tuple[str, str]] = {}
for _block in ALL:
    if _block.info in ("bash", "sh"):
        for _command in commands(_block):
            CLI_COMMANDS.setdefault(_key(_command), (_block.where, _command))


@pytest.mark.parametrize("where,command", list(CLI_COMMANDS.values()), ids=[w for w, _ in CLI_COMMANDS.values()])
def test_cli_command_runs(where, command, tmp_path):
    argv = cli_argv(command, where, tmp_path)
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{where}: {command}\n{proc.stderr[-2000:]}"
    written = [Path(argv[i + 1]) for i, word in enumerate(argv[:-1]) if word == "--out"]
    assert written and all(p.exists() for p in written), f"{where}: {command} wrote no {written}"
