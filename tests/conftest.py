"""Shared fixtures: tiny random-init models of each architecture, and the bundled models (loaded once)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Tests never reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pytest  # noqa: E402
import torch  # noqa: E402

from tests import tiny  # noqa: E402

# Tests that must not run beside each other under pytest-xdist (`--dist loadgroup` keeps a group on one worker):
# the browser tests each start a dashboard and Chromium and time page loads; the Ray tests start a local cluster.
XDIST_GROUPS = {"browser": "tests/browser/", "ray": "tests/integration/test_corpus_ray.py"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        where = Path(str(item.path)).relative_to(ROOT).as_posix()
        for group, prefix in XDIST_GROUPS.items():
            if where.startswith(prefix):
                item.add_marker(pytest.mark.xdist_group(group))


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu", help="device for engine tests: cpu or cuda")


@pytest.fixture(scope="session")
def device(request):
    return request.config.getoption("--device")


@pytest.fixture(scope="session")
def minilm():
    from attnscope.models import load

    return load("minilm", device="cpu")


@pytest.fixture(scope="session")
def smollm2():
    from attnscope.models import load

    return load("smollm2", device="cpu")


@pytest.fixture(scope="session")
def tiny_factory():
    """tiny_factory(arch, backend="sdpa") -> LoadedModel with random weights (cached per arch/backend)."""
    cache = {}

    def make(arch: str, backend: str = "sdpa"):
        if (arch, backend) not in cache:
            torch.manual_seed(0)
            cache[(arch, backend)] = tiny.build(arch, backend=backend)
        return cache[(arch, backend)]

    return make


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
    """A tiny random T5 saved as a local model directory (``tests.tiny.save_t5``)."""
    from tests.tiny import save_t5

    return save_t5(tmp_path_factory.mktemp("encdec") / "t5")


@pytest.fixture(scope="session")
def zoo_shelf(tmp_path_factory):
    """Every zoo architecture built tiny once per session and saved (``tests.zoo.Shelf``), shared by the zoo tests."""
    from tests.zoo import Shelf

    return Shelf(tmp_path_factory.mktemp("zoo"), tiny.bpe_tokenizer())
