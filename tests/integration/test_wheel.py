"""attnscope as a user gets it: the wheel, installed into a fresh virtualenv, used from a folder outside the repository.

Builds the wheel, installs it (with the notebook extra; the third-party packages are this environment's, seen through
a .pth line, so nothing is downloaded or copied again) and the bundled models by the documented route
(`attnscope fetch-bundled`), then runs the README's Python, `attnscope --help`, `attnscope extract` and the
example notebook there, and checks that nothing but `attnscope` is installed at the top level.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow

TEXT = "The mouse ate the cheese, then the cat chased the mouse."


def _pins(*names: str) -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    dev = project["project"]["optional-dependencies"]["dev"]
    return [pin for pin in dev if pin.split("==")[0] in names]


class Installed:
    """A fresh virtualenv holding the built wheel, and a working folder outside the repository."""

    def __init__(self, root: Path):
        self.root = root
        self.venv = root / "venv"
        self.work = root / "work"
        self.work.mkdir()
        self.env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
        self.env.update(HF_HUB_OFFLINE="1", PATH=f"{self.venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}", PYTHONNOUSERSITE="1")

    @property
    def python(self) -> str:
        return str(self.venv / "bin" / "python")

    def call(self, *argv: str, timeout: int = 900) -> subprocess.CompletedProcess:
        proc = subprocess.run(list(argv), capture_output=True, text=True, cwd=self.work, env=self.env, timeout=timeout)
        assert proc.returncode == 0, f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
        return proc

    def py(self, code: str, timeout: int = 600) -> str:
        return self.call(self.python, "-c", code, timeout=timeout).stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Installed:
    root = tmp_path_factory.mktemp("wheel")
    dist = root / "dist"
    # A copy of the files git would commit (so the build writes nothing into the checkout), then the same build
    # a user's `pip wheel .` runs (setuptools from this environment).
    source = root / "source"
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, check=True
    )
    for name in filter(None, listed.stdout.decode().split("\0")):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(source), "-w", str(dist)],
        check=True,
        cwd=root,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = dist.glob("attnscope-*.whl")
    box = Installed(root)
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(box.venv)], check=True, timeout=300)
    # The fresh environment sees this one's third-party packages through one .pth line (as --system-site-packages
    # would for a system Python), so pip copies none of torch's gigabytes again. It does not see this checkout:
    # a directory a .pth adds is not a site directory, so the editable install's finder there never runs.
    site = Path(box.py("import sysconfig; print(sysconfig.get_paths()['purelib'])").strip())
    (site / "parent_environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n", encoding="utf-8")
    # The wheel's own files into the fresh environment; then pip's resolver must find every requirement of the wheel
    # and its notebook extra satisfied at the pinned versions (it would fetch any that were missing).
    box.call(box.python, "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", str(wheel), timeout=600)
    box.call(box.python, "-m", "pip", "install", "-q", f"{wheel}[notebook]", *_pins("nbclient", "nbformat"), timeout=1800)
    box.call(str(box.venv / "bin" / "attnscope"), "fetch-bundled", timeout=600)
    return box


def test_only_attnscope_is_installed_at_the_top_level(installed):
    code = "import importlib.metadata as m; print(sorted({f.parts[0] for f in m.files('attnscope')}))"
    tops = set(json.loads(installed.py(code).replace("'", '"')))
    assert {t for t in tops if t not in ("..",) and not t.endswith(".dist-info")} == {"attnscope"}  # ".." is bin/attnscope
    for generic in ("models", "analysis", "viz", "ui", "corpus", "cli", "bench", "app"):
        proc = subprocess.run(
            [installed.python, "-c", f"import {generic}"], capture_output=True, text=True, cwd=installed.work, env=installed.env
        )
        assert proc.returncode != 0 and "ModuleNotFoundError" in proc.stderr, generic
    where = installed.py("import attnscope.models as m; print(m.__file__)")
    assert str(installed.venv) in where and str(ROOT) not in where


def test_the_command_answers_help_with_every_subcommand(installed):
    from attnscope.cli import build_parser

    subcommands = set(build_parser()._subparsers._group_actions[0].choices)
    out = installed.call(str(installed.venv / "bin" / "attnscope"), "--help").stdout
    listed = set(re.search(r"\{([^}]*)\}", out).group(1).split(","))
    assert listed == subcommands and {"serve", "fetch-bundled", "extract"} <= listed


def test_the_readmes_python_runs_and_the_api_gives_the_checkouts_numbers(installed):
    from attnscope import load, run

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```python\n(.*?)^```", readme, re.DOTALL | re.MULTILINE)
    assert blocks, "README.md has no Python block"
    for i, block in enumerate(blocks):
        (installed.work / f"readme_{i}.py").write_text(block, encoding="utf-8")
        installed.call(installed.python, f"readme_{i}.py")
    code = (
        "import attnscope, numpy as np\n"
        "rec = attnscope.run(attnscope.load('minilm'), " + repr(TEXT) + ")\n"
        "np.save('map.npy', rec.attention(2, 3))\n"
    )
    installed.py(code)
    expected = run(load("minilm"), TEXT).attention(2, 3)
    np.testing.assert_allclose(np.load(installed.work / "map.npy"), expected, atol=1e-6)


def test_attnscope_extract_writes_the_maps(installed):
    from attnscope import load, run

    installed.call(str(installed.venv / "bin" / "attnscope"), "extract", "--model", "minilm", "--text", TEXT, "--out", "maps.npz")
    with np.load(installed.work / "maps.npz") as saved:
        stack = saved["attention_0"]  # [layer, head, n, n]
        tokens = list(saved["tokens_0"])
    rec = run(load("minilm"), TEXT)
    assert tokens == rec.tokens[0]
    np.testing.assert_allclose(stack, rec.attention_stack(0), atol=1e-6)


def test_the_example_notebook_runs_in_a_real_kernel_and_draws_offline(installed):
    notebook = ROOT / "examples" / "quickstart.ipynb"
    code = (
        "import json, nbformat, nbclient\n"
        f"nb = nbformat.read({str(notebook)!r}, as_version=4)\n"
        "nbclient.NotebookClient(nb, timeout=600, kernel_name='python3', resources={'metadata': {'path': '.'}}).execute()\n"
        "nbformat.write(nb, 'executed.ipynb')\n"
    )
    installed.py(code, timeout=900)
    nb = json.loads((installed.work / "executed.ipynb").read_text(encoding="utf-8"))
    cells = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert not [o for c in cells for o in c["outputs"] if o["output_type"] == "error"]
    state = nb["metadata"]["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    charts = [c for c in cells if "".join(c["source"]).startswith(("attnscope.show", "attnscope.overview"))]
    assert len(charts) >= 2
    widgets = []
    for cell in charts:  # drawn by the offline widget: the spec is in the widget's state, its JavaScript inlined
        (view,) = [o["data"]["application/vnd.jupyter.widget-view+json"] for o in cell["outputs"] if "data" in o]
        widget = state[view["model_id"]]["state"]
        assert "vega-lite" in widget["spec"].get("$schema", "")
        assert "cdn.jsdelivr.net" not in widget["_esm"]
        widgets.append(widget)
    assert "cheese" in json.dumps(widgets[0]["spec"])  # the user's tokens are in the drawn data
    table = [c for c in cells if "head_table" in "".join(c["source"])][0]
    assert "<table" in "".join(table["outputs"][0]["data"]["text/html"])
    assert (installed.work / "head-2-3.png").read_bytes().startswith(b"\x89PNG")
