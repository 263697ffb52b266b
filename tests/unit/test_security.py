"""Who may load what: loopback vs a shared server, the allowlist, no remote code, XSRF on (docs/security.md)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from attnscope.models import load
from attnscope.models.limits import check_allowed, is_loopback
from attnscope.models.loaded import BUNDLED
from tests import tiny

ROOT = Path(__file__).resolve().parents[2]
ALIASES = tuple(BUNDLED)


@pytest.mark.parametrize(
    "address, loopback",
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("::ffff:127.0.0.1", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        (None, False),
        ("  ", False),
        ("192.168.1.5", False),
        ("10.0.0.1", False),
        ("example.org", False),
        ("127.0.0.1.example.org", False),
        ("localhost.evil.org", False),
    ],
)
def test_loopback_addresses(address, loopback):
    assert is_loopback(address) is loopback


@pytest.fixture
def saved(tmp_path_factory):
    """A tiny model saved as a local directory, as a visitor could type it."""
    path = tmp_path_factory.mktemp("models") / "tiny-bert"
    lm = tiny.build("bert")
    lm.model.save_pretrained(path)
    lm.tokenizer.save_pretrained(path)
    return path


def test_loopback_allows_everything_as_before(monkeypatch, saved):
    monkeypatch.delenv("ATTNSCOPE_ALLOWED_MODELS", raising=False)
    for name in ("minilm", "some-org/some-model", str(saved)):
        check_allowed(name, shared=False, bundled=ALIASES)  # no error
    assert load(str(saved), device="cpu", verify=False).spec.n_layers == 2


def test_the_allowlist_admits_its_models_and_the_bundled_aliases(monkeypatch, saved):
    monkeypatch.setenv("ATTNSCOPE_ALLOWED_MODELS", f"minilm, {saved}")
    for shared in (False, True):
        check_allowed(str(saved), shared=shared, bundled=ALIASES)
        check_allowed(f"{saved}/", shared=shared, bundled=ALIASES)  # the same directory typed differently
        check_allowed(f"{saved}/../{saved.name}", shared=shared, bundled=ALIASES)
        check_allowed("smollm2", shared=shared, bundled=ALIASES)  # bundled: always
        with pytest.raises(
            ValueError, match=r"not allowed on this deployment; choose one of: minilm, .*tiny-bert.*ATTNSCOPE_ALLOWED_MODELS"
        ):
            check_allowed("some-org/some-model", shared=shared, bundled=ALIASES)
        with pytest.raises(ValueError, match="not allowed"):
            check_allowed(str(saved.parent), shared=shared, bundled=ALIASES)  # the folder above is not the model
    assert load(str(saved), device="cpu", verify=False, shared=True).spec.kind == "encoder"


def test_source_never_turns_trust_remote_code_on():
    uses = []
    for path in sorted(ROOT.rglob("*.py")):
        if {".venv", "js", "tests"} & set(path.relative_to(ROOT).parts):
            continue
        for match in re.finditer(r"trust_remote_code\s*=\s*([^,)\s]+)", path.read_text(encoding="utf-8")):
            uses.append((str(path.relative_to(ROOT)), match.group(1)))
    assert uses, "loading should pass trust_remote_code=False explicitly"
    assert {value for _, value in uses} == {"False"}, uses


def test_streamlit_config_keeps_xsrf_on_with_cors_and_loopback():
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    server = config["server"]
    assert server["enableXsrfProtection"] is True
    assert server.get("enableCORS", True) is True  # Streamlit refuses XSRF protection with CORS off
    assert server["address"] == "127.0.0.1" and config["browser"]["gatherUsageStats"] is False


def test_docs_security_python_blocks_run():
    """Every Python block of docs/security.md runs (docs' code blocks are tests)."""
    text = (ROOT / "docs" / "security.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks
    for block in blocks:
        exec(compile(block, "docs/security.md", "exec"), {})
    assert "[docs/security.md](docs/security.md)" in (ROOT / "README.md").read_text(encoding="utf-8")
