"""load(): clear messages for unknown models, bad backends, missing devices, unsafe weights."""

import pytest
import torch

from attnscope.models import BUNDLED, load


def test_unknown_model_offline_names_aliases():
    with pytest.raises(ValueError) as err:
        load("no-such-org/no-such-model-xyz")
    msg = str(err.value)
    for alias in BUNDLED:
        assert alias in msg


def test_bad_backend_and_device():
    with pytest.raises(ValueError, match="unknown backend"):
        load("minilm", backend="fast")  # unit-allowed: refused before any weight is read
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            load("minilm", device="cuda")  # unit-allowed: refused before any weight is read
        with pytest.raises(ValueError, match="needs a CUDA GPU"):
            load("minilm", backend="flash")  # unit-allowed: refused before any weight is read


def test_local_dir_without_weights(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="no weights"):
        load(str(tmp_path))


def test_pickle_only_weights_refused(tmp_path):
    from tests.tiny import build

    lm = build("bert")
    lm.model.config.save_pretrained(tmp_path)
    torch.save(lm.model.state_dict(), tmp_path / "pytorch_model.bin")
    lm.tokenizer.save_pretrained(tmp_path)
    assert not list(tmp_path.glob("*.safetensors"))
    with pytest.raises(ValueError, match="pickle"):
        load(str(tmp_path), device="cpu")
    loaded = load(str(tmp_path), device="cpu", allow_pickle=True)
    assert loaded.spec.kind == "encoder" and loaded.spec.n_layers == 2


def test_local_safetensors_dir_loads(tmp_path):
    from tests.tiny import build

    lm = build("llama_gqa")
    lm.model.save_pretrained(tmp_path)
    lm.tokenizer.save_pretrained(tmp_path)
    loaded = load(str(tmp_path), device="cpu")
    assert (loaded.spec.kind, loaded.spec.n_heads, loaded.spec.n_kv_heads) == ("decoder", 4, 2)
