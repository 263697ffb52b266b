"""``__all__`` says what each module offers: every public name another module (or a test) imports from a module
of the package is in that module's ``__all__``, every name in an ``__all__`` resolves, and the packages that list
their modules list all of them."""

from __future__ import annotations

import ast
import importlib

import pytest

from tests.conftest import ROOT

PACKAGES = ("models", "analysis", "viz", "corpus", "cli")
IMPORTERS = (*PACKAGES, "ui", "attnscope", "bench", "tests")
MODULE_LISTS = ("analysis", "viz")  # packages whose __all__ names their modules


def declared_all(path) -> list[str] | None:
    """The literal ``__all__`` of a source file, or None when it has none."""
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
            return list(ast.literal_eval(node.value))
    return None


def imported_names() -> dict[tuple[str, str], set[str]]:
    """{(package, module): public names other files import from ``attnscope.<package>.<module>``}."""
    found: dict[tuple[str, str], set[str]] = {}
    files = [p for d in IMPORTERS for p in (ROOT / d).rglob("*.py") if "node_modules" not in p.parts]
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.ImportFrom) and node.level == 0 and node.module):
                continue
            parts = node.module.split(".")
            if len(parts) != 3 or parts[0] != "attnscope" or parts[1] not in PACKAGES:
                continue
            if path == ROOT / parts[1] / f"{parts[2]}.py":
                continue
            found.setdefault((parts[1], parts[2]), set()).update(a.name for a in node.names if not a.name.startswith("_"))
    return found


def test_the_scan_sees_imports():
    names = imported_names()
    assert "ForwardRecord" in names[("models", "record")] and "run" in names[("models", "forward")]


@pytest.mark.parametrize("package", PACKAGES)
def test_every_imported_name_is_in_its_modules_all(package):
    missing = {}
    for (pkg, module), names in imported_names().items():
        path = ROOT / pkg / f"{module}.py"
        if pkg != package or not path.exists():
            continue
        declared = declared_all(path)
        if declared is None:
            missing[module] = "no __all__"
        elif names - set(declared):
            missing[module] = sorted(names - set(declared))
    assert not missing, f"{package}/: names imported from a module but missing from its __all__: {missing}"


@pytest.mark.parametrize("package", PACKAGES)
def test_every_name_in_an_all_resolves(package):
    unresolved = []
    for path in sorted((ROOT / package).glob("*.py")):
        name = f"attnscope.{package}" if path.stem == "__init__" else f"attnscope.{package}.{path.stem}"
        module = importlib.import_module(name)
        for item in getattr(module, "__all__", ()):
            try:
                getattr(module, item)
            except AttributeError:
                if not (path.stem == "__init__" and (ROOT / package / f"{item}.py").exists()):
                    unresolved.append(f"{name}.{item}")
    assert not unresolved


@pytest.mark.parametrize("package", MODULE_LISTS)
def test_a_package_that_lists_its_modules_lists_all_of_them(package):
    modules = sorted(p.stem for p in (ROOT / package).glob("*.py") if p.stem != "__init__")
    assert sorted(declared_all(ROOT / package / "__init__.py") or []) == modules
