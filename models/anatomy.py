"""Anatomy of a loaded model: facts read from the model itself — its modules, parameters, config and one forward
on a short text — never from a table of known models.

- parameters by component (token / position / token-type embeddings, Q, K, V, O, MLP, norms, LM head), the
  total equal to ``sum(p.numel() for p in model.parameters())`` (a tied or shared tensor counted once);
- heads, KV heads, head size and the KV-cache bytes per token at the model's dtype;
- norm placement: "post" when every block's output is the output of one of the block's own norms (the residual
  stream is normalised after each addition), else "pre" (norms only feed the sublayers). Checked numerically on
  the recorded hidden states by calling the block's norm modules on probe tensors (no hook, nothing changed);
- the positional scheme, one of ``POSITIONAL``, from the instantiated modules first, then the config;
- on the current text: the residual stream's norm by layer, each head's attention by relative distance, and for
  encoders with token types the token / position / segment parts of the layer-0 input;
- the measured time and memory of one layer's attention at n = 128 … 4,096 (``attention_cost``).

Nothing here registers a hook or changes the model: norm modules are called as functions on probe tensors, and
weights are read, never written.
"""

from __future__ import annotations

import math
import re
import sys
from dataclasses import asdict, dataclass, field
from typing import Literal

import pandas as pd
import torch

from attnscope.analysis.anatomy import distance_profile, heads_frame, kv_cache_bytes, part_norm_frame, quadratic_fit, residual_norm_frame
from attnscope.models.loading import LoadedModel
from attnscope.models.profile import timed
from attnscope.models.record import ForwardRecord, run

__all__ = [
    "COMPONENTS",
    "POSITIONAL",
    "Anatomy",
    "anatomy",
    "attention_cost",
    "distance_frame",
    "dtype_bytes",
    "embedding_parts",
    "heads_table",
    "is_norm",
    "norm_placement",
    "parameter_counts",
    "positional_scheme",
    "probe_record",
    "residual_norms",
    "transformer_blocks",
]

Positional = Literal["learned absolute", "sinusoidal", "rotary", "alibi", "relative buckets", "none"]
POSITIONAL: tuple[Positional, ...] = ("learned absolute", "sinusoidal", "rotary", "alibi", "relative buckets", "none")
NormPlacement = Literal["pre", "post"]

# Parameter components, in the order the page shows them (the JSON's "parameters" keys, plus "total").
COMPONENTS = (
    "token_embeddings",
    "position_embeddings",
    "token_type_embeddings",
    "attention_q",
    "attention_k",
    "attention_v",
    "attention_o",
    "attention_other",
    "mlp",
    "norms",
    "lm_head",
    "other",
)

PROBE_TEXT = "The mouse ran, the cat waited: then the mouse hid again."
PROBE_TARGET = "The cat saw the mouse."  # encoder-decoder models read a target too
COST_LENGTHS = (128, 256, 512, 1024, 2048, 4096)
# Relative error below which a block's output counts as one of its norms' outputs: float32 rounding (Post-LN blocks
# measure ~1e-7, Pre-LN ones 1e-4 and up even with near-zero sublayers), or a few steps of a 16-bit dtype.
NORM_MATCH = 1e-5

# Name parts (lower case) that say what a projection inside an attention block is.
_FUSED = re.compile(r"qkv|c_attn|query_key_value|in_proj|w_pack|att_proj")
_QUERY = re.compile(r"(^|_)q(_|$)|query|^wq$|q_lin|q_a_proj|q_b_proj")
_PAIR = re.compile(r"(^|_)kv(_|$)")
_KEY = re.compile(r"(^|_)k(_|$)|key|^wk$|k_lin")
_VALUE = re.compile(r"(^|_)v(_|$)|value|^wv$|v_lin")
_OUT = re.compile(r"(^|_)o(_|$)|o_proj|out_proj|c_proj|dense|out_lin|^wo$|output")
_ATTENTION = re.compile(r"attn|attention")
_OTHER_MIXER = re.compile(r"mamba|mixer|ssm|(^|_)conv|rnn|lstm")
_POSITION_TABLE = re.compile(r"pos|wpe")
_RELATIVE = re.compile(r"relative|(^|_)rel(_|$)|rel_embeddings|rel_logits")
_TOKEN_TYPE = re.compile(r"token_type|segment")


# -- structure -----------------------------------------------------------------------------------------
def is_norm(module: torch.nn.Module) -> bool:
    """A normalisation: torch's LayerNorm / RMSNorm, or a module whose class name says Norm and whose children hold
    no parameters (a quantised norm's activation observer is fine; a sublayer wrapping dense + norm is not)."""
    if isinstance(module, (torch.nn.LayerNorm, torch.nn.RMSNorm)):
        return True
    name = type(module).__name__.lower()
    if "norm" not in name or "batchnorm" in name or "groupnorm" in name:
        return False
    return not any(True for child in module.children() for _ in child.parameters())


def _block_lists(model: torch.nn.Module) -> list[list[str]]:
    """Every ``ModuleList`` of transformer blocks, outermost first (an encoder-decoder has two), none inside another:
    lists whose members hold parameters and one of which holds an attention (or other token-mixing) module."""
    found: list[list[str]] = []
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.ModuleList) or len(module) == 0:
            continue
        if any(name.startswith(member + ".") for members in found for member in members):
            continue  # inside a block already found (T5's per-block list of sublayers)
        members = list(module.named_children())
        if not all(any(True for _ in child.parameters()) for _, child in members):
            continue
        mixes = any(
            _ATTENTION.search(sub.lower()) or _OTHER_MIXER.search(sub.lower()) or _ATTENTION.search(type(m).__name__.lower())
            for _, child in members
            for sub, m in child.named_modules()
            if sub
        )
        if mixes:
            found.append([f"{name}.{child}" if name else child for child, _ in members])
    return found


def transformer_blocks(model: torch.nn.Module) -> list[str]:
    """Qualified names of the transformer blocks whose outputs are the model's hidden states: the elements of the
    first ``ModuleList`` (outermost first) whose members hold parameters and one of which holds an attention (or
    other token-mixing) module. An encoder-decoder's encoder blocks; a model sharing one block across layers
    (ALBERT) has one."""
    lists = _block_lists(model)
    return lists[0] if lists else []


def _module(model: torch.nn.Module, name: str) -> torch.nn.Module:
    return model.get_submodule(name)


def _embeddings(model: torch.nn.Module) -> tuple[torch.nn.Module | None, torch.nn.Module | None]:
    def get(method: str):
        try:
            return getattr(model, method)()
        except (NotImplementedError, AttributeError):
            return None

    return get("get_input_embeddings"), get("get_output_embeddings")


def _out_features(module: torch.nn.Module, weight: torch.Tensor) -> int:
    """Output features of a projection: Linear [out, in]; transformers' Conv1D [in, out] (``nf``)."""
    return int(getattr(module, "nf", None) or weight.shape[0])


def _attention_part(relative: str, module: torch.nn.Module, parameter: torch.Tensor, shape: tuple[int, int, int]) -> dict[str, int]:
    """Split one attention parameter into Q / K / V / O / other counts from its module's name (fused QKV split by
    the head counts: H·d_h query rows, KV·d_h key rows, KV·d_h value rows)."""
    leaf = relative.split(".")[-1].lower() if relative else ""
    count = parameter.numel()
    n_heads, n_kv_heads, head_dim = shape
    if _FUSED.search(leaf):
        out = _out_features(module, parameter) if parameter.ndim > 1 else parameter.shape[0]
        rows = {"attention_q": n_heads * head_dim, "attention_k": n_kv_heads * head_dim, "attention_v": n_kv_heads * head_dim}
        if sum(rows.values()) != out:  # not laid out by heads as configured: equal thirds
            rows = dict.fromkeys(rows, out // 3)
            rows["attention_q"] += out - 3 * (out // 3)
        per_row = count // out
        return {part: per_row * n for part, n in rows.items()}
    if _PAIR.search(leaf):
        return {"attention_k": count - count // 2, "attention_v": count // 2}
    for part, pattern in (("attention_q", _QUERY), ("attention_k", _KEY), ("attention_v", _VALUE), ("attention_o", _OUT)):
        if pattern.search(leaf):
            return {part: count}
    return {"attention_other": count}


def parameter_counts(model: torch.nn.Module, n_heads: int, n_kv_heads: int, head_dim: int) -> tuple[dict[str, int], bool | None]:
    """Parameters by component; the counts add up to ``sum(p.numel() for p in model.parameters())``.

    Each parameter tensor is counted once, under the first module that holds it (a tied LM head shares the token
    embeddings' tensor and adds nothing). Inside a transformer block, parameters under a module whose name says
    attention are attention (split into Q, K, V, O by their modules' names), norms are norms, and the rest is the
    MLP (or "other" for state-space and convolution mixers); outside blocks, the input and output embeddings,
    position and token-type tables and norms are named, and anything else (poolers, head transforms) is "other".

    Returns:
        ({component: count for ``COMPONENTS``} plus "total", lm_head_tied: True / False, None without an LM head).
    """
    counts = dict.fromkeys(COMPONENTS, 0)
    token_table, head = _embeddings(model)
    tied = None if head is None or token_table is None else head.weight is token_table.weight
    blocks = [block for members in _block_lists(model) for block in members]
    seen: set[int] = set()
    for name, module in model.named_modules():
        block = next((b for b in blocks if name == b or name.startswith(b + ".")), None)
        for _, parameter in module.named_parameters(recurse=False):
            if id(parameter) in seen:
                continue
            seen.add(id(parameter))
            for part, count in _component(name, module, parameter, block, token_table, head, (n_heads, n_kv_heads, head_dim)).items():
                counts[part] += count
    counts["total"] = sum(counts[c] for c in COMPONENTS)
    return counts, tied


def _is_table(module: torch.nn.Module) -> bool:
    """An embedding table: ``nn.Embedding`` or a module whose class says Embedding and holds one 2-D weight."""
    weight = getattr(module, "weight", None)
    return isinstance(module, torch.nn.Embedding) or (
        "embedding" in type(module).__name__.lower() and isinstance(weight, torch.Tensor) and weight.ndim == 2
    )


def _component(name, module, parameter, block, token_table, head, shape) -> dict[str, int]:
    count = parameter.numel()
    leaf = name.split(".")[-1].lower()
    if module is token_table:
        return {"token_embeddings": count}
    if module is head:
        return {"lm_head": count}
    if is_norm(module):
        return {"norms": count}
    if _is_table(module):
        if _TOKEN_TYPE.search(leaf):
            return {"token_type_embeddings": count}
        if _POSITION_TABLE.search(leaf) or _RELATIVE.search(leaf):
            return {"position_embeddings": count}
    if _RELATIVE.search(leaf):
        return {"position_embeddings": count}  # a relative-position table or bias (T5's buckets, DeBERTa's rel_embeddings)
    relative = name[len(block) + 1 :] if block is not None and name != block else ("" if block is not None else name)
    path = relative.lower()
    if _ATTENTION.search(path) or _ATTENTION.search(type(module).__name__.lower()):
        return _attention_part(relative.split(".")[-1] if relative else "", module, parameter, shape)
    if block is not None:
        return {"other": count} if _OTHER_MIXER.search(path) else {"mlp": count}
    # outside blocks: parallel lists of sublayers (XLM's attentions / ffns) still say what they are
    return {"mlp": count} if re.search(r"ffn|mlp|feed_?forward", path) else {"other": count}


# -- norm placement ------------------------------------------------------------------------------------
def _norm_image(norm: torch.nn.Module, states: torch.Tensor) -> float | None:
    """How far ``states`` [m, d] are from anything ``norm`` can output: relative error of norm((h − b)/a) against h,
    where b = norm(0) and a = (norm(u) − b)/u for a standardised probe u (±1). 0 for the norm's own outputs."""
    parameter = next(norm.parameters(), None)
    dtype = parameter.dtype if parameter is not None else states.dtype
    device = parameter.device if parameter is not None else states.device
    d = states.shape[-1]
    if d % 2:
        return None
    try:
        with torch.no_grad():
            zero = _first(norm(torch.zeros(1, 1, d, dtype=dtype, device=device)))
            probe = torch.ones(1, 1, d, dtype=dtype, device=device)
            probe[..., 1::2] = -1  # mean 0, variance 1, root mean square 1
            if not isinstance(zero, torch.Tensor) or zero.shape[-1] != d:
                return None
            shift = zero.float().reshape(d)
            gain = ((_first(norm(probe)).float().reshape(d) - shift) / probe.float().reshape(d)).clamp(min=-1e30, max=1e30)
            h = states.to(device).float()  # [m, d]
            usable = gain.abs() > 1e-6
            z = torch.where(usable, (h - shift) / torch.where(usable, gain, torch.ones_like(gain)), torch.zeros_like(h))
            again = _first(norm(z.to(dtype)[None])).float()[0]  # [m, d]
    except (RuntimeError, TypeError, ValueError):
        return None
    error = (again - h)[:, usable].norm() / h[:, usable].norm().clamp(min=1e-12)
    return float(error)


def _first(output):
    """A module's tensor output (quantised norms return (tensor, scale))."""
    return output[0] if isinstance(output, tuple) else output


@dataclass
class Placement:
    placement: NormPlacement
    evidence: str
    errors: dict[str, float] = field(default_factory=dict)  # block: smallest error of its norms against its output


def norm_placement(model: torch.nn.Module, hidden_states, blocks: list[str] | None = None, real: torch.Tensor | None = None) -> Placement:
    """Pre-LN or Post-LN, from what the blocks really output.

    Post-LN blocks end with a norm after the residual addition, so each block's output is a norm's output; Pre-LN
    blocks add the sublayers' outputs to an unnormalised stream. For every block but the last (whose output some
    models pass through the final norm), the block's output is tested against each of its norm modules
    (``_norm_image``): "post" when all blocks match one of theirs, else "pre".

    Args:
        hidden_states: the model's ``output_hidden_states``: n_layers + 1 of [B, n, d] (0 = embeddings).
        blocks: ``transformer_blocks(model)`` (default).
        real: bool [B, n] real tokens (default all).
    """
    blocks = transformer_blocks(model) if blocks is None else blocks
    layers = len(hidden_states) - 1
    tested = range(max(1, layers - 1))
    # Blocks that line up with the hidden states (or one block applied at every layer, ALBERT) are tested against their
    # own norms; otherwise (parallel lists of sublayers, XLM; nested groups, Funnel) against every norm of the model.
    aligned = len(blocks) in (layers, 1)
    everywhere = [(n, m) for n, m in model.named_modules() if is_norm(m)]
    errors: dict[str, float] = {}
    matches = []
    for i in tested:
        block = blocks[min(i, len(blocks) - 1)] if aligned else f"layer {i}"
        norms = [(f"{block}.{n}", m) for n, m in _module(model, block).named_modules() if is_norm(m)] if aligned else everywhere
        states = hidden_states[i + 1]
        states = states[real.to(states.device)] if real is not None else states.reshape(-1, states.shape[-1])
        scored = [(error, n) for n, m in norms if (error := _norm_image(m, states)) is not None]
        best = min(scored, default=(math.inf, ""))
        errors[block] = best[0]
        matches.append(best)
    parameter = next(model.parameters(), None)
    tolerance = (
        max(NORM_MATCH, 8 * torch.finfo(parameter.dtype).eps) if parameter is not None and parameter.is_floating_point() else NORM_MATCH
    )
    if all(error < tolerance for error, _ in matches):
        where = matches[0][1]
        return Placement("post", f"each block's output is a norm's output ({where}): the stream is normalised after every sublayer", errors)
    if blocks:
        norms = [n for n, m in _module(model, blocks[0]).named_modules() if is_norm(m)]
        said = f"{blocks[0]} has {', '.join(norms[:4])}, which feed its sublayers" if norms else f"{blocks[0]} has no norm"
    else:
        said = "its norms feed the sublayers"
    return Placement("pre", f"no block's output is a norm's output; {said}", errors)


# -- positional scheme ---------------------------------------------------------------------------------
def _looks_sinusoidal(table: torch.Tensor) -> bool:
    """A table of sines and cosines: position 0 is half zeros (sin 0) and half ones (cos 0), every entry in [−1, 1]."""
    if table.ndim != 2 or table.shape[0] < 2 or table.shape[1] < 2:
        return False
    table = table.detach().float()
    first = table[0]
    ones, zeros = int((first - 1).abs().lt(1e-4).sum()), int(first.abs().lt(1e-4).sum())
    return ones + zeros == first.numel() and abs(ones - zeros) <= 1 and bool(table.abs().le(1 + 1e-4).all())


Found = tuple[Positional, str] | None  # a scheme and its evidence, or None: look further


def _rotary(modules, config) -> Found:
    rotary = sorted({type(m).__name__ for _, m in modules if "rotary" in type(m).__name__.lower()})
    if rotary:
        return "rotary", f"rotary embedding module {rotary[0]}"
    for key in ("rotary_dim", "rotary_value"):  # GPT-J / CodeGen rotate inside attention; RoFormer's switch for values
        if hasattr(config, key) and getattr(config, key) is not None:
            return "rotary", f"config sets {key} (queries and keys rotated inside attention)"
    return None


def _alibi(model, config) -> Found:
    flag = getattr(config, "alibi", None)
    nested = getattr(getattr(config, "attn_config", None), "alibi", None)
    if flag is True or nested is True:
        return "alibi", "config enables ALiBi (a linear distance penalty added to the logits)"
    if flag is None and nested is None:  # no switch at all: does the model file build ALiBi biases?
        source = vars(sys.modules.get(type(model).__module__, object()))
        builders = sorted(k for k, v in source.items() if "alibi" in k.lower() and callable(v))
        if builders:
            return "alibi", f"the model file builds ALiBi biases ({builders[0]}) and the config has no switch for them"
    return None


def _relative(modules, config) -> Found:
    relative = [n for n, _ in modules if n and _RELATIVE.search(n.split(".")[-1].lower())]
    relative += [n for n, m in modules if n and re.search(r"relative|segmentposition", type(m).__name__.lower())]
    if relative or getattr(config, "relative_attention", False) is True:
        return "relative buckets", f"relative-position bias in attention ({relative[0] if relative else 'config relative_attention'})"
    if getattr(config, "attention_type", None) in ("relative_shift", "factorized"):  # Funnel: Transformer-XL's sinusoids
        return "sinusoidal", f"relative sinusoidal encodings in attention (attention_type={config.attention_type})"
    return None


def _absolute(modules, config) -> Found:
    tables = []
    for name, module in modules:
        leaf = name.split(".")[-1].lower()
        if _is_table(module) and _POSITION_TABLE.search(leaf) and not _TOKEN_TYPE.search(leaf):
            tables.append((name, type(module).__name__, module.weight))
        elif "sinusoid" in type(module).__name__.lower():
            tables.append((name, type(module).__name__, next(iter(module.buffers()), torch.zeros(0))))
        tables += [
            (f"{name}.{key}" if name else key, "buffer", buffer)
            for key, buffer in module.named_buffers(recurse=False)
            if _POSITION_TABLE.search(key.lower()) and buffer.is_floating_point() and buffer.ndim == 2
        ]
    for name, kind, table in tables:
        if "sinusoid" in kind.lower() or _looks_sinusoidal(table):
            return "sinusoidal", f"fixed sine/cosine position table ({name})"
    for flag in ("sinusoidal_embeddings", "sinusoidal_pos_embds"):
        if getattr(config, flag, False) is True:
            return "sinusoidal", f"config sets {flag}"
    if tables:
        name, _, table = tables[0]
        return "learned absolute", f"trained position table {name} ({table.shape[0]} positions)"
    return None


def positional_scheme(model: torch.nn.Module) -> tuple[Positional, str]:
    """How the model knows where a token is: one of ``POSITIONAL`` and the evidence, read from its modules
    (instantiated, so a class defined but unused does not count) and its config.

    Order: rotary (a rotary-embedding module, or a config that sets a rotary width), ALiBi (a config flag, or a
    model file that builds ALiBi biases and has no flag), relative buckets (a relative-position table or bias in
    attention), sinusoidal (a position table of sines and cosines), learned absolute (a trained position table),
    none. A model with both absolute positions and a relative bias (MPNet) is reported by its relative bias.
    """
    config = getattr(model, "config", None)
    config = config.get_text_config() if config is not None and hasattr(config, "get_text_config") else config
    modules = list(model.named_modules())
    for read in (
        lambda: _rotary(modules, config),
        lambda: _alibi(model, config),
        lambda: _relative(modules, config),
        lambda: _absolute(modules, config),
    ):
        found = read()
        if found is not None:
            return found
    return "none", "no position table, rotary module or position bias: attention sees no positions (causality alone orders tokens)"


# -- the Anatomy ---------------------------------------------------------------------------------------
def dtype_bytes(dtype: str | torch.dtype) -> int:
    """Bytes per element of a dtype given as ``torch.float32`` or its name ("float32", "torch.bfloat16")."""
    if isinstance(dtype, str):
        resolved = getattr(torch, dtype.removeprefix("torch."), None)
        if not isinstance(resolved, torch.dtype):
            msg = f"unknown dtype {dtype!r}"
            raise ValueError(msg)
        dtype = resolved
    return torch.empty((), dtype=dtype).element_size()


@dataclass
class Anatomy:
    """What the loaded model is made of; ``to_json`` gives the CLI's contract."""

    name: str
    model_type: str
    kind: str
    parameters: dict[str, int]  # COMPONENTS -> count, plus "total"
    numel: int  # sum(p.numel() for p in model.parameters()), read apart from the components: equals parameters["total"]
    lm_head_tied: bool | None
    norm_placement: NormPlacement
    norm_evidence: str
    positional: Positional
    positional_evidence: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_model: int
    dtype: str
    bytes_per_element: int
    kv_cache_bytes_per_token: int
    attention_blocks: int  # attention modules counted in ``parameters`` (an encoder-decoder: encoder, decoder and cross)
    cache_layers: int  # blocks whose keys and values a generating model caches
    attention_bias: bool  # Q, K and V projections have biases
    output_bias: bool  # the output projection has one

    def to_json(self) -> dict:
        """The JSON the CLI writes: the contract keys (parameters, norm_placement, positional, heads,
        kv_cache_bytes_per_token) and the evidence behind them."""
        data = asdict(self)
        return {
            "model": self.name,
            "model_type": self.model_type,
            "kind": self.kind,
            "parameters": dict(self.parameters),
            "lm_head_tied": self.lm_head_tied,
            "norm_placement": self.norm_placement,
            "norm_evidence": self.norm_evidence,
            "positional": self.positional,
            "positional_evidence": self.positional_evidence,
            "heads": {"n_heads": self.n_heads, "n_kv_heads": self.n_kv_heads, "head_dim": self.head_dim},
            "n_layers": data["n_layers"],
            "attention_blocks": self.attention_blocks,
            "d_model": data["d_model"],
            "dtype": self.dtype,
            "kv_cache_bytes_per_token": self.kv_cache_bytes_per_token,
        }


def probe_record(lm: LoadedModel, text: str | None = None) -> ForwardRecord:
    """A record of ``text`` (default a short probe), with a target for encoder-decoder models."""
    target = PROBE_TARGET if lm.spec.kind == "encoder-decoder" else None
    return run(lm, text or PROBE_TEXT, target=target)


def _head_dim(lm: LoadedModel) -> int:
    return lm.spec.head_dim or lm.spec.d_model // lm.spec.n_heads


def _cache_layers(lm: LoadedModel) -> int:
    """Blocks whose keys and values a generating model caches (an encoder-decoder's decoder)."""
    if lm.spec.kind == "encoder-decoder":
        return lm.spec.n_decoder_layers or lm.spec.n_layers
    return len(lm.spec.attention_layers or range(lm.spec.n_layers))


def anatomy(lm: LoadedModel, rec: ForwardRecord | None = None) -> Anatomy:
    """Everything the Anatomy page states about the model, read from it (``rec``: a record to read the norm placement
    from; default one run over a short probe text).

    Raises:
        ValueError: the record is of another model.
    """
    if rec is not None and rec.spec.name != lm.spec.name:
        msg = f"the record is of {rec.spec.name}, not {lm.spec.name}; run the model on the text first"
        raise ValueError(msg)
    rec = rec if rec is not None else probe_record(lm)
    spec, head_dim = lm.spec, _head_dim(lm)
    counts, tied = parameter_counts(lm.model, spec.n_heads, spec.n_kv_heads, head_dim)
    real = torch.from_numpy(rec.attention_mask == 1)
    placement = norm_placement(lm.model, rec.hidden_states, real=real)
    positional, evidence = positional_scheme(lm.model)
    size = dtype_bytes(spec.dtype)
    layers = len(spec.attention_layers or range(spec.n_layers))
    if spec.kind == "encoder-decoder":  # decoder self-attention and cross-attention in every decoder block
        layers += 2 * (spec.n_decoder_layers or spec.n_layers)
    plain = layers * spec.d_model * spec.n_heads * head_dim  # the query (or output) projections without biases
    return Anatomy(
        name=spec.name,
        model_type=spec.model_type,
        kind=spec.kind,
        parameters=counts,
        numel=sum(p.numel() for p in lm.model.parameters()),
        lm_head_tied=tied,
        norm_placement=placement.placement,
        norm_evidence=placement.evidence,
        positional=positional,
        positional_evidence=evidence,
        n_layers=spec.n_layers,
        n_heads=spec.n_heads,
        n_kv_heads=spec.n_kv_heads,
        head_dim=head_dim,
        d_model=spec.d_model,
        dtype=str(spec.dtype).removeprefix("torch."),
        bytes_per_element=size,
        kv_cache_bytes_per_token=kv_cache_bytes(_cache_layers(lm), spec.n_kv_heads, head_dim, size),
        attention_blocks=layers,
        cache_layers=_cache_layers(lm),
        attention_bias=counts["attention_q"] > plain,
        output_bias=counts["attention_o"] > plain,
    )


def heads_table(facts: Anatomy) -> pd.DataFrame:
    """``analysis.anatomy.heads_frame`` for the model: one head, its H heads, every GQA grouping and MQA."""
    return heads_frame(
        facts.d_model,
        facts.n_heads,
        facts.n_kv_heads,
        facts.head_dim,
        facts.attention_blocks,
        bias=facts.attention_bias,
        out_bias=facts.output_bias,
        bytes_per_element=facts.bytes_per_element,
        cache_layers=facts.cache_layers,
    )


def residual_norms(rec: ForwardRecord, batch: int = 0) -> pd.DataFrame:
    """The residual stream's norm after every block on the recorded text (``analysis.anatomy.residual_norm_frame``);
    an encoder-decoder's encoder. Layer n_layers is the last hidden state (after the final norm in most models)."""
    return residual_norm_frame([rec.hidden(layer, batch) for layer in range(len(rec.hidden_states))])


def distance_frame(rec: ForwardRecord, layers=None, batch: int = 0) -> pd.DataFrame:
    """Each head's mean attention by relative distance on the recorded text, for ``layers`` (default all with attention).

    Returns:
        DataFrame: layer, head, offset (query − key), weight, queries.
    """
    layers = rec.attention_layers if layers is None else list(layers)
    frames = []
    for layer in layers:
        frame = distance_profile(rec.layer_attention(layer, batch))
        frame.insert(0, "layer", layer)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def embedding_parts(lm: LoadedModel, rec: ForwardRecord, batch: int = 0) -> tuple[pd.DataFrame, float] | None:
    """Norms of the token, position and segment (token-type) parts of the layer-0 input, per token, for a model
    with a token-type table; None for others.

    The parts are read from the model's own embedding tables at the recorded ids, positions and token types, and
    checked: their sum through the embeddings' norm must give the recorded layer-0 state.

    Returns:
        (DataFrame: position, token, part ("token", "position", "segment", "sum"), norm; the check's max |Δ|
        relative to the layer-0 state's scale).
    """
    token_table, _ = _embeddings(lm.model)
    owner = next((name for name, m in lm.model.named_modules() if token_table is not None and m is token_table), None)
    if owner is None or "." not in owner:
        return None
    parent = _module(lm.model, owner.rsplit(".", 1)[0])
    tables = {name: m for name, m in parent.named_children() if isinstance(m, torch.nn.Embedding)}
    segment = next((m for name, m in tables.items() if _TOKEN_TYPE.search(name.lower())), None)
    position = next(
        (m for name, m in tables.items() if _POSITION_TABLE.search(name.lower()) and not _TOKEN_TYPE.search(name.lower())), None
    )
    if segment is None or position is None:
        return None
    real = rec.real_index(batch)
    ids = torch.as_tensor(rec.input_ids[batch][real])
    types = rec.inputs.get("token_type_ids")
    types = torch.zeros_like(ids) if types is None else types[batch].cpu()[torch.as_tensor(real)]
    start = (int(getattr(parent, "padding_idx", 0) or 0) + 1) if lm.pad_aware_positions else 0
    positions = torch.arange(start, start + len(real))
    with torch.no_grad():
        parts = {
            "token": token_table.weight[ids.to(token_table.weight.device)].float(),
            "position": position.weight[positions.to(position.weight.device)].float(),
            "segment": segment.weight[types.to(segment.weight.device)].float(),
        }
        total = parts["token"] + parts["position"] + parts["segment"]
        norms = [m for m in parent.children() if is_norm(m)]
        layer0 = torch.as_tensor(rec.hidden(0, batch))
        rebuilt = norms[0](total.to(norms[0].weight.dtype)).float() if norms else total
        check = float((rebuilt.cpu() - layer0).abs().max() / layer0.abs().max().clamp(min=1e-12))
    frame = part_norm_frame(rec.tokens[batch], {**{k: v.cpu().numpy() for k, v in parts.items()}, "sum": total.cpu().numpy()})
    return frame, check


def attention_cost(
    n_heads: int,
    n_kv_heads: int,
    head_dim: int,
    *,
    lengths=COST_LENGTHS,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    repeats: int = 3,
    causal: bool = True,
) -> tuple[pd.DataFrame, dict[str, dict[str, float]]]:
    """Time and memory of one layer's attention (one sequence) measured on this machine at each n, with n² fits.

    Two kernels on random query/key/value of the model's shape: "eager" (scores and weights materialised,
    softmax(q·kᵀ/√d)·V as eager attention computes it) and "sdpa" (PyTorch's fused kernel). Time is the best of
    ``repeats``. Memory: on CUDA the peak allocated above the inputs; on the CPU the bytes of the score and weight
    tensors eager allocates (read from the tensors), and none for SDPA, which allocates no n x n tensor.

    Returns:
        (DataFrame: n, kernel, seconds, memory_mb, memory_how; {kernel: quadratic_fit of seconds against n}).
    """
    if not lengths or min(lengths) < 1:
        msg = "attention cost needs token counts of at least 1, e.g. 128,256,...,4096"
        raise ValueError(msg)
    generator = torch.Generator(device="cpu").manual_seed(0)
    rows = []
    cuda = str(device).startswith("cuda")
    for n in lengths:
        q = torch.randn(1, n_heads, n, head_dim, generator=generator).to(device=device, dtype=dtype)
        k = torch.randn(1, n_kv_heads, n, head_dim, generator=generator).to(device=device, dtype=dtype)
        v = torch.randn(1, n_kv_heads, n, head_dim, generator=generator).to(device=device, dtype=dtype)
        group = n_heads // n_kv_heads
        k_all, v_all = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)  # [1, H, n, d]
        mask = torch.ones(n, n, dtype=torch.bool, device=device).tril() if causal else None
        held = {}

        def eager(q=q, k_all=k_all, v_all=v_all, mask=mask, held=held):
            scores = (q @ k_all.transpose(-1, -2)) * head_dim**-0.5  # [1, H, n, n]
            if mask is not None:
                scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
            weights = torch.softmax(scores, dim=-1)  # [1, H, n, n]
            held["bytes"] = scores.numel() * scores.element_size() + weights.numel() * weights.element_size()
            return weights @ v_all

        def sdpa(q=q, k_all=k_all, v_all=v_all):
            return torch.nn.functional.scaled_dot_product_attention(q, k_all, v_all, is_causal=causal)

        for kernel, call in (("eager", eager), ("sdpa", sdpa)):
            with torch.inference_mode():
                call()  # warm up (allocator, kernel choice)
                if cuda:
                    torch.cuda.synchronize(device)
                    torch.cuda.reset_peak_memory_stats(device)
                    base = torch.cuda.memory_allocated(device)
                best = math.inf
                for _ in range(max(1, repeats)):
                    _, seconds = timed(call, "cuda" if cuda else "cpu")
                    best = min(best, seconds)
            if cuda:
                memory, how = (torch.cuda.max_memory_allocated(device) - base) / 2**20, "CUDA peak above the inputs"
            elif kernel == "eager":
                memory, how = held["bytes"] / 2**20, "score and weight tensors eager allocates"
            else:
                memory, how = float("nan"), "no n x n tensor (not measurable on the CPU)"
            rows.append({"n": int(n), "kernel": kernel, "seconds": best, "memory_mb": memory, "memory_how": how})
    frame = pd.DataFrame(rows)
    fits = {}
    if len(lengths) >= 3:
        for kernel, part in frame.groupby("kernel"):
            fits[str(kernel)] = quadratic_fit(part["n"], part["seconds"])
    return frame, fits
