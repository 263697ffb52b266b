"""Loading the bundled models: the allowlist, dtypes, no remote code (moved here from tests/unit/: each loads a
bundled model)."""

from __future__ import annotations

import pytest
import transformers

from attnscope.models import load
from attnscope.models.limits import check_allowed
from attnscope.models.loaded import BUNDLED
from tests import tiny

pytestmark = pytest.mark.slow

ALIASES = tuple(BUNDLED)


@pytest.fixture
def saved(tmp_path_factory):
    """A tiny model saved as a local directory, as a visitor could type it."""
    return tiny.save("bert", tmp_path_factory.mktemp("models") / "tiny-bert")


def test_allowlist(monkeypatch):
    monkeypatch.setenv("ATTNSCOPE_ALLOWED_MODELS", "minilm")
    with pytest.raises(ValueError, match="not allowed on this deployment; choose one of: minilm"):
        load("gpt2")
    assert load("minilm").spec.name == "minilm"


def test_unknown_dtype():
    with pytest.raises(ValueError, match="unknown dtype 'nonsense'"):
        load("minilm", dtype="nonsense")
    assert load("minilm", dtype="bfloat16", device="cpu").spec.dtype == "bfloat16"


def test_a_shared_server_loads_only_bundled_aliases_without_an_allowlist(monkeypatch, saved):
    monkeypatch.delenv("ATTNSCOPE_ALLOWED_MODELS", raising=False)
    for name in ("some-org/some-model", str(saved), "/etc", "~"):
        with pytest.raises(ValueError, match=r"not allowed: this server is reachable from other machines.*ATTNSCOPE_ALLOWED_MODELS"):
            check_allowed(name, shared=True, bundled=ALIASES)
    with pytest.raises(ValueError, match="ATTNSCOPE_ALLOWED_MODELS"):
        load(str(saved), device="cpu", shared=True)
    assert load("minilm", device="cpu", shared=True).spec.name == "minilm"


def test_loading_never_passes_trust_remote_code_true(monkeypatch, saved):
    """Every from_pretrained that load() makes, seen from transformers' side."""
    calls = []

    def spy(owner):
        real = owner.from_pretrained

        def from_pretrained(*args, **kwargs):
            calls.append((owner.__name__, kwargs.get("trust_remote_code")))
            return real(*args, **kwargs)

        monkeypatch.setattr(owner, "from_pretrained", from_pretrained)

    for owner in (transformers.AutoConfig, transformers.AutoTokenizer, transformers.AutoModel, transformers.AutoModelForCausalLM):
        spy(owner)
    load(str(saved), device="cpu", verify=False)
    load("minilm", device="cpu", verify=False)
    assert {name for name, _ in calls} >= {"AutoConfig", "AutoTokenizer", "AutoModel"}
    assert all(value is False for _, value in calls), calls
