"""What only a fresh interpreter shows: what an import pulls in, an import without Ray, a process's own memory peak."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.slow


def test_the_command_line_parser_does_not_import_the_engine():
    """--help must answer at once: building every subcommand's parser imports neither torch nor transformers."""
    code = "import sys; from attnscope.cli import build_parser; build_parser(); print(sorted(m for m in ('torch', 'transformers', 'streamlit', 'pandas') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert out.strip() == "[]"


def test_import_attnscope_is_light_and_gives_the_api():
    code = "import sys, attnscope; print('torch' in sys.modules); print(attnscope.load.__module__, attnscope.show.__module__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout.split()
    assert out == ["False", "attnscope.models.loading", "attnscope.notebook"]


def test_corpus_imports_without_ray_and_says_how_to_install():
    code = (
        "import sys; sys.modules['ray'] = None\n"
        "import corpus, cli, attnscope.analysis.corpus, corpus.store\n"
        "from corpus import load_result, read_corpus\n"
        "try:\n    corpus.require_ray()\nexcept ValueError as e:\n    print(e)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "pip install ray==2.60.0" in proc.stdout


def test_measure_forward_sees_a_large_allocation():
    """In a process of its own: after the whole suite, one long pytest process read 0 here (a known gap of the CPU
    peak-RSS reading in long-lived processes, noted for the next round), while the same call alone reads the 64 MiB."""
    import subprocess
    import sys

    code = (
        "import numpy as np\n"
        "from attnscope.models.profile import measure_forward\n"
        "def forward():\n"
        "    block = np.ones(64 * 2**20 // 8)  # 64 MiB, touched\n"
        "    return float(block.sum())\n"
        "cost = measure_forward(forward, device='cpu', repeats=2)\n"
        "print(cost.seconds, cost.peak_bytes, cost.memory)\n"
    )
    from tests.conftest import ROOT

    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300, check=True).stdout.split()
    seconds, peak, memory = float(out[0]), out[1], " ".join(out[2:])
    assert seconds > 0
    assert peak != "None" and int(peak) >= 48 * 2**20
    assert "RSS" in memory
