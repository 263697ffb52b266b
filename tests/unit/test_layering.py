"""The layering docs/architecture.md's "Layout" section states, checked on the source: imports only go downwards.

ui -> models, analysis, viz;  models -> analysis;  analysis, viz -> neither models nor ui.
Only corpus/ imports Ray; nothing but ui/ and app.py imports Streamlit.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

FORBIDDEN = {
    "analysis": {"models", "ui", "viz", "streamlit", "transformers", "ray", "corpus"},
    "viz": {"models", "ui", "streamlit", "transformers", "ray", "corpus"},
    "models": {"ui", "viz", "streamlit", "ray", "corpus"},
    "corpus": {"ui", "streamlit"},
    "bench": {"streamlit", "ui"},
}
# bench/load.py drives the dashboard from outside and reads its websocket frames: it needs Streamlit's wire
# protocol (the protobuf message classes), never its API. bench/server.py drives it in-process through
# Streamlit's test harness (AppTest, as a browser would from outside) to time the server's script runs alone.
ALLOWED = {"bench": ("streamlit.proto.", "streamlit.testing.")}


def imported(path: Path, allowed: tuple[str, ...] = ()) -> set[str]:
    """Top-level package of every import in a file (function-level imports included), but ``allowed`` modules."""
    modules = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            modules += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.append(node.module)
    return {m.split(".")[0] for m in modules if not (m + ".").startswith(allowed)}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_go_downwards(package):
    allowed = ALLOWED.get(package, ())
    bad = {
        str(path.relative_to(ROOT)): sorted(imported(path, allowed) & FORBIDDEN[package])
        for path in sorted((ROOT / package).rglob("*.py"))
        if imported(path, allowed) & FORBIDDEN[package]
    }
    assert not bad, f"{package}/ imports what it must not: {bad}"


def test_only_corpus_imports_ray():
    users = sorted(
        str(p.relative_to(ROOT))
        for p in ROOT.rglob("*.py")
        if not {".venv", "tests", "js", "build"} & set(p.parts) and "ray" in imported(p)
    )
    assert users and all(u.startswith(("corpus/", "bench/")) for u in users), users
