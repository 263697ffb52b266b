"""The test tree keeps its promises: tests/unit/ loads no bundled model and spawns no process; no test module imports another."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

TESTS = ROOT / "tests"
BUNDLED = {"minilm", "smollm2"}
PROCESS_MODULES = {"subprocess", "multiprocessing"}
# A line that carries this comment is let through, with its reason beside it (say why it loads or spawns nothing real).
ALLOWED = "# unit-allowed:"


def _lines_allowed(source: str) -> set[int]:
    return {number for number, line in enumerate(source.splitlines(), 1) if ALLOWED in line}


def _test_modules(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*.py") if path.name.startswith("test_"))


def heavy_uses(source: str) -> list[str]:
    """Where ``source`` loads a bundled model or spawns a process: ``line: what`` for each place found."""
    tree = ast.parse(source)
    allowed = _lines_allowed(source)
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, f"imports {a.name}") for a in node.names if a.name.split(".")[0] in PROCESS_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PROCESS_MODULES:
            found.append((node.lineno, f"imports from {node.module}"))
        elif isinstance(node, ast.Call):
            name = ast.unparse(node.func)
            strings = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
            if name.split(".")[-1] == "load" and strings and strings[0] in BUNDLED:
                found.append((node.lineno, f"{name}({strings[0]!r})"))
            if any(k.arg == "process" and not (isinstance(k.value, ast.Constant) and not k.value.value) for k in node.keywords):
                found.append((node.lineno, f"{name}(process=...)"))  # tests.helpers.run_cli in a fresh interpreter
        elif isinstance(node, ast.List):  # an argv: "--model", "minilm"
            items = [e.value if isinstance(e, ast.Constant) else None for e in node.elts]
            for flag, value in zip(items, items[1:], strict=False):
                if flag == "--model" and value in BUNDLED:
                    found.append((node.lineno, f"--model {value}"))
        elif isinstance(node, ast.FunctionDef) and node.name.startswith("test"):
            found += [(node.lineno, f"fixture {a.arg}") for a in node.args.args if a.arg in BUNDLED]
    return [f"{line}: {what}" for line, what in sorted(found) if line not in allowed]


def test_the_scan_sees_loads_argvs_fixtures_and_processes():
    source = "\n".join(
        [
            "import subprocess",
            "from multiprocessing import Pool",
            "lm = load('minilm')",
            "models.load('smollm2', device='cpu')",
            "cli.main(['heads', '--model', 'minilm'])",
            "def test_x(minilm): pass",
            "run_cli(['--help'], process=True)",
            "load('minilm', backend='fast')  # unit-allowed: refused before any weight is read",
            "load(tiny_dir); cli.main(['heads', '--model', 'tiny'])",
        ]
    )
    assert [entry.split(": ", 1)[1] for entry in heavy_uses(source)] == [
        "imports subprocess",
        "imports from multiprocessing",
        "load('minilm')",
        "models.load('smollm2')",
        "--model minilm",
        "fixture minilm",
        "run_cli(process=...)",
    ]


@pytest.mark.parametrize("path", _test_modules(TESTS / "unit"), ids=lambda p: p.name)
def test_unit_tests_load_no_bundled_model_and_spawn_no_process(path):
    found = heavy_uses(path.read_text(encoding="utf-8"))
    assert not found, f"{path.name} belongs in tests/integration/ (or mark the line {ALLOWED} <why>): {found}"


def test_no_test_module_imports_another():
    offenders = []
    for path in _test_modules(TESTS):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            if any(part.startswith("test_") for name in names for part in name.split(".")):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, f"shared test code belongs in tests/helpers.py or tests/tiny.py: {offenders}"
