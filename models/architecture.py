"""Where a model keeps things: ``ModelLayout``, read once from the module tree and the config at load.

This is the one module of attnscope that reads module names and class names. Everything else asks the
layout that ``models.loaded.prepare`` puts on ``LoadedModel.layout`` (and ``models.verify`` confirms
numerically on the probe text):

- the transformer blocks that hold attention (qualified name -> block index; an encoder-decoder's two
  stacks give the same indices twice), and the ``ModuleList``s of blocks, outermost first;
- per block: the norm after the attention (Post-LN), the norms on the sublayers' outputs (a sandwich),
  how its MLP reads the residual stream, each with its epsilon;
- the output projection of every attention module (found by name, chosen by width at use);
- the final norm, the LM head, the base model a recorded forward calls, the keyword arguments the
  model's forward takes, the logit and attention softcaps;
- norm placement ("pre", "post" or "sandwich"), confirmed on what the blocks really output;
- for the Anatomy page: parameters by component, the positional scheme, the embedding tables.

Where a fact is unknown the layout keeps a one-line reason, and the features that need the fact refuse
with it. Imports: torch and ``models.spec`` only.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

__all__ = [
    "POSITIONAL",
    "BlockFacts",
    "EmbeddingFacts",
    "QueryKey",
    "MlpFacts",
    "ModelLayout",
    "NormFacts",
    "Placement",
    "attention_blocks",
    "attention_input_norm",
    "attention_stack",
    "block_index",
    "block_lists",
    "confirm",
    "embedding_tables",
    "has_attention_modules",
    "is_norm",
    "is_rms_norm",
    "module_names",
    "norm_placement",
    "output_layer",
    "parameter_counts",
    "positional_scheme",
    "query_key_layers",
    "read_layout",
    "rotary_module",
    "transformer_blocks",
    "COMPONENTS",
    "NormPlacement",
    "Positional",
]

Positional = Literal["learned absolute", "sinusoidal", "rotary", "alibi", "relative buckets", "none"]
POSITIONAL: tuple[Positional, ...] = ("learned absolute", "sinusoidal", "rotary", "alibi", "relative buckets", "none")
NormPlacement = Literal["pre", "post"]
BlockPlacement = Literal["pre", "post", "sandwich"]
AttentionStack = Literal["encoder", "decoder", "cross"]

# Parameter components, in the order the Anatomy page shows them (the JSON's "parameters" keys, plus "total").
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

# Relative error below which a block's output counts as one of its norms' outputs: float32 rounding (Post-LN blocks
# measure ~1e-7, Pre-LN ones 1e-4 and up even with near-zero sublayers), or a few steps of a 16-bit dtype.
NORM_MATCH = 1e-5

# -- names ---------------------------------------------------------------------------------------------
_BLOCK_PREFIX = re.compile(r"^(.*?\.\d+)(?:\.|$)")  # "model.layers.3.self_attn" -> "model.layers.3"
_BLOCK_INDEX = re.compile(r"\.(\d+)(?:\.|$)")
_CROSS = re.compile(r"(encdecattention|encoder_attn|cross_attn|crossattention|cross_attention)", re.IGNORECASE)
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
# Names of the projection that maps the heads' outputs back to the residual stream, most specific first.
_OUTPUT_NAMES = ("o_proj", "out_proj", "c_proj", "out_lin", "output.dense", "dense", "wo", "o")
# A norm after the attention, on x + attention (Post-LN): BERT's family, DistilBERT.
_POST_NORMS = ("attention.output.LayerNorm", "attention.output.layer_norm", "sa_layer_norm")
# A norm on the attention's output before the residual (Gemma 2/3, OLMo 2): a sandwich.
_SANDWICH = ("pre_feedforward_layernorm", "post_feedforward_layernorm")
# A norm on the block's input before the attention (Pre-LN).
_PRE_NORMS = ("input_layernorm", "ln_1", "layer.0.layer_norm", "attention_norm", "ln_attn", "self_attn_layer_norm", "norm1")
_FINAL_NORMS = ("norm", "ln_f", "final_layer_norm", "final_layernorm", "norm_f", "final_norm")


def block_index(module_name: str) -> int | None:
    """The transformer block an attention module belongs to: the first number in its qualified name."""
    match = _BLOCK_INDEX.search(module_name)
    return int(match.group(1)) if match else None


def block_of(module_name: str) -> str | None:
    """The block an attention module sits in: its qualified name up to the block number, or None."""
    match = _BLOCK_PREFIX.match(module_name)
    return match.group(1) if match else None


def attention_stack(module_name: str) -> AttentionStack:
    """Which stack of an encoder-decoder an attention module belongs to, from its qualified name."""
    if "decoder" not in module_name:
        return "encoder"
    return "cross" if _CROSS.search(module_name) else "decoder"


def _named_for_attention(module: torch.nn.Module) -> bool:
    kind = type(module).__name__.lower()
    return "attention" in kind or "attn" in kind


def has_attention_modules(model: torch.nn.Module) -> bool:
    """Whether any module's class is named for attention ("...Attention", "...Attn")."""
    return any(_named_for_attention(module) for module in model.modules())


def module_names(model: torch.nn.Module) -> dict[int, str]:
    """id(module) -> qualified name, for every module (the hook names each attention call with it)."""
    return {id(module): qualified for qualified, module in model.named_modules()}


def attention_blocks(model: torch.nn.Module) -> dict[str, int]:
    """The transformer blocks that hold attention: qualified name -> block index.

    A block is the prefix of an attention module's name up to its block number (``model.layers.3``,
    ``transformer.h.3``, ``encoder.layer.3``); attention modules are those whose class is named for
    attention ("...Attention", "...Attn"). An encoder-decoder's two stacks give the same indices twice.
    """
    blocks: dict[str, int] = {}
    for name, module in model.named_modules():
        if not _named_for_attention(module):
            continue
        prefix = block_of(name)
        if prefix is not None:
            blocks.setdefault(prefix, int(prefix.rsplit(".", 1)[1]))
    return blocks


def is_norm(module: torch.nn.Module) -> bool:
    """A normalisation: torch's LayerNorm / RMSNorm, or a module whose class name says Norm and whose children hold
    no parameters (a quantised norm's activation observer is fine; a sublayer wrapping dense + norm is not)."""
    if isinstance(module, (torch.nn.LayerNorm, torch.nn.RMSNorm)):
        return True
    name = type(module).__name__.lower()
    if "norm" not in name or "batchnorm" in name or "groupnorm" in name:
        return False
    return not any(True for child in module.children() for _ in child.parameters())


def block_lists(model: torch.nn.Module) -> list[list[str]]:
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
    lists = block_lists(model)
    return lists[0] if lists else []


def _get(root: torch.nn.Module, path: str) -> torch.nn.Module | None:
    try:
        return root.get_submodule(path)
    except AttributeError:
        return None


def output_layer(model: torch.nn.Module, module_name: str, width: int) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """The output projection's (weight [d_model, width], bias [d_model] or None), or None when not found.

    Looks in the attention module, then its parent (BERT keeps it in ``attention.output.dense``).
    GPT-2's ``Conv1D`` stores [in, out]; it is transposed.
    """
    if not module_name:
        return None
    scopes = [module_name]
    if "." in module_name:
        scopes.append(module_name.rsplit(".", 1)[0])
    for scope in scopes:
        root = _get(model, scope)
        if root is None:
            continue
        modules = dict(root.named_modules())
        for suffix in _OUTPUT_NAMES:
            for name, module in modules.items():
                if not (name == suffix or name.endswith("." + suffix)):
                    continue
                weight = getattr(module, "weight", None)
                if not isinstance(weight, torch.Tensor) or weight.ndim != 2:
                    continue
                if type(module).__name__ == "Conv1D":
                    weight = weight.t()
                if weight.shape[1] == width:
                    bias = getattr(module, "bias", None)
                    return weight.detach(), (bias.detach() if isinstance(bias, torch.Tensor) else None)
    return None


# -- facts ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NormFacts:
    """A LayerNorm or RMSNorm module: where it is, its epsilon (None when it keeps none) and whether it is an RMSNorm."""

    name: str  # qualified module name
    kind: str  # its class name
    eps: float | None
    rms: bool
    has_weight: bool


def _norm_facts(model: torch.nn.Module, name: str, module: torch.nn.Module) -> NormFacts:
    eps = getattr(module, "eps", getattr(module, "variance_epsilon", getattr(module, "variance_eps", None)))
    return NormFacts(
        name=name,
        kind=type(module).__name__,
        eps=None if eps is None else float(eps),
        rms=is_rms_norm(module),
        has_weight=getattr(module, "weight", None) is not None,
    )


def _norm_width(module: torch.nn.Module) -> int | None:
    """The width a norm normalises over: its weight's, else its declared ``normalized_shape``; None if neither says."""
    weight = getattr(module, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.ndim == 1:
        return int(weight.shape[0])
    shape = getattr(module, "normalized_shape", None)
    if isinstance(shape, (tuple, list)) and len(shape) == 1:
        return int(shape[0])
    return None


def is_rms_norm(module: torch.nn.Module) -> bool:
    """Whether a norm divides by the root mean square without subtracting the mean (RMSNorm, T5's LayerNorm), read
    from what it computes: a LayerNorm gives the same output for x and x + c (a constant offset on every feature),
    an RMSNorm does not. The module's own forward runs once on a small tensor under ``torch.no_grad`` (nothing in
    it is written); where it cannot run, its class name decides ("RMS" in it)."""
    by_name = "RMS" in type(module).__name__
    width = _norm_width(module)
    if width is None or width < 2 or any(True for _ in module.children()) or any(True for _ in module.buffers()):
        return by_name  # a forward that could update state (an observer, running statistics) is not run
    param = next(module.parameters(), None)
    dtype = param.dtype if param is not None and param.dtype.is_floating_point else torch.float32
    device = param.device if param is not None else torch.device("cpu")
    if device.type == "meta":
        return by_name
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, width, generator=generator)
    try:
        with torch.no_grad():
            plain = module(x.to(device=device, dtype=dtype)).float()
            shifted = module((x + 3.0).to(device=device, dtype=dtype)).float()
    except Exception:  # a norm whose forward wants other inputs: its name is all there is
        return by_name
    if not isinstance(plain, torch.Tensor) or plain.shape != x.shape or float(plain.abs().max()) < 1e-6:
        return by_name  # another signature, or a zero weight: nothing to tell the two apart by
    return bool((plain - shifted).abs().max() / plain.abs().max() > 0.05)


@dataclass(frozen=True)
class MlpFacts:
    """How a block's MLP reads the residual stream.

    ``chain``: the modules applied in turn (qualified names; a Pre-LN block's norm first); ``reads``: what the
    chain is applied to: "x" the block input (GPT-NeoX's parallel residual), "z" = x + attention + b_O (Pre-LN),
    "mid" = LN1(z) (Post-LN); ``after``: LN2 of a Post-LN block.
    """

    layout: Literal["Pre-LN", "Post-LN", "parallel"]
    reads: Literal["x", "z", "mid"]
    chain: tuple[str, ...]
    after: NormFacts | None = None


@dataclass(frozen=True)
class BlockFacts:
    """One transformer block: where its norms sit and how its MLP reads, each with the reason when unknown."""

    name: str
    index: int
    placement: BlockPlacement | None  # by its norms' names; None: not known (``norm_reason``)
    attention_norm: NormFacts | None = None  # the norm after the attention (Post-LN), on x + attention
    norm_reason: str = ""
    mlp: MlpFacts | None = None
    mlp_reason: str = ""


def _block_facts(model: torch.nn.Module, model_type: str, parallel: bool, name: str, index: int) -> BlockFacts:
    block = model.get_submodule(name)
    placement, attention_norm, norm_reason = _block_norms(block, name, model_type)
    mlp = _block_mlp(block, name, parallel)
    mlp_reason = (
        ""
        if mlp is not None
        else (
            f"attnscope does not know where {model_type}'s blocks keep their MLP, so it cannot split a block's output "
            "into attention and MLP parts for routes"
        )
    )
    return BlockFacts(name, index, placement, attention_norm, norm_reason, mlp, mlp_reason)


def _block_norms(block: torch.nn.Module, prefix: str, model_type: str) -> tuple[BlockPlacement | None, NormFacts | None, str]:
    """(placement by the norms' names, the norm after the attention for Post-LN, the reason when unknown)."""
    names = {name: mod for name, mod in block.named_modules() if name}
    if any(name.endswith(s) for name in names for s in _SANDWICH):
        reason = (
            f"{model_type} normalises the attention's output before the residual (a sandwich norm); "
            "norm_res_ln and alti decompose Pre-LN and Post-LN blocks only: use weights, norm, value_zeroing or a gradient method"
        )
        return "sandwich", None, reason
    unknown = (
        f"attnscope does not know where {model_type}'s blocks put their layer norms, so norm_res_ln and alti "
        "are not computed for it: use weights, norm, value_zeroing or a gradient method"
    )
    for name, mod in names.items():
        if any(name == s or name.endswith("." + s) for s in _POST_NORMS):
            facts = _norm_facts(block, f"{prefix}.{name}", mod)
            if not facts.has_weight or facts.eps is None:
                return None, None, unknown
            return "post", facts, ""
    if any(name == s or name.endswith("." + s) for name in names for s in _PRE_NORMS):
        return "pre", None, ""
    return None, None, unknown


def _block_mlp(block: torch.nn.Module, prefix: str, parallel: bool) -> MlpFacts | None:
    def full(path: str) -> str:
        return f"{prefix}.{path}"

    # Post-LN: BERT, RoBERTa, ... (intermediate -> output.dense, then output.LayerNorm(mid + ·)); DistilBERT.
    inter, dense, ln2 = _get(block, "intermediate"), _get(block, "output.dense"), _get(block, "output.LayerNorm")
    if inter is not None and dense is not None and ln2 is not None:
        after = _norm_facts(block, full("output.LayerNorm"), ln2)
        return MlpFacts("Post-LN", "mid", (full("intermediate"), full("output.dense")), after)
    ffn, ln2 = _get(block, "ffn"), _get(block, "output_layer_norm")
    if ffn is not None and ln2 is not None:
        return MlpFacts("Post-LN", "mid", (full("ffn"),), _norm_facts(block, full("output_layer_norm"), ln2))
    # Pre-LN: Llama, Mistral, Qwen2, ... and GPT-NeoX (parallel residual: the MLP reads the block input).
    norm_path = "post_attention_layernorm" if _get(block, "post_attention_layernorm") is not None else "ln_2"  # ln_2: GPT-2
    if _get(block, norm_path) is not None and _get(block, "mlp") is not None:
        return MlpFacts("parallel" if parallel else "Pre-LN", "x" if parallel else "z", (full(norm_path), full("mlp")))
    # T5: the last sub-layer is the feed-forward one, layer norm then DenseReluDense.
    layers = _get(block, "layer")
    if isinstance(layers, torch.nn.ModuleList) and len(layers):
        last = f"layer.{len(layers) - 1}"
        if _get(block, f"{last}.DenseReluDense") is not None and _get(block, f"{last}.layer_norm") is not None:
            return MlpFacts("Pre-LN", "z", (full(f"{last}.layer_norm"), full(f"{last}.DenseReluDense")))
    return None


@dataclass(frozen=True)
class EmbeddingFacts:
    """The input embeddings of a model with a token-type table: the tables' owner, its tables and its norm."""

    owner: str  # the module holding the tables (BERT's ``embeddings``)
    token: str
    position: str
    segment: str
    norm: str | None  # the norm the tables' sum goes through, if any
    padding_idx: int


@dataclass
class Placement:
    placement: NormPlacement
    evidence: str
    errors: dict[str, float] = field(default_factory=dict)  # block: smallest error of its norms against its output


@dataclass(frozen=True)
class ModelLayout:
    """Where a loaded model keeps its parts (qualified module names) and what its config says about them.

    Read once by ``read_layout`` at load; ``confirm`` adds the norm placement measured on the probe text.
    """

    model_type: str
    blocks: dict[str, int]  # every block holding attention (all stacks): qualified name -> block index
    stacks: tuple[tuple[str, ...], ...]  # the ModuleLists of blocks, outermost first (an encoder-decoder has two)
    block_facts: dict[str, BlockFacts] = field(repr=False)  # by block name, for every block in ``blocks``
    body: str  # the base model a decoder's recorded forward calls (no LM head); "" = the model itself
    lm_head: str | None  # the output embeddings, if the model has them
    final_norm: NormFacts | None  # the norm before a decoder's unembedding
    encoder_final_norm: NormFacts | None  # the norm after an encoder-decoder's encoder stack (T5)
    decoder_final_norm: NormFacts | None  # the norm after an encoder-decoder's decoder stack (T5)
    forward_parameters: frozenset[str] = field(repr=False)  # the model's forward's named parameters
    forward_var_keyword: bool  # the forward also takes **kwargs
    logit_softcap: float | None  # Gemma 2's tanh softcap of the final logits
    attention_softcap: float | None  # ... and of the attention logits
    embeddings: EmbeddingFacts | None = field(default=None, repr=False)
    norms: Placement | None = field(default=None, repr=False)  # measured on the probe text (``confirm``)
    sinks: bool = False  # learned attention sinks, seen on the probe text (``confirm``)
    unknown: dict[str, str] = field(default_factory=dict)  # fact -> why it is not known, one line

    @property
    def placement(self) -> BlockPlacement | None:
        """Norm placement: "post" when every block's output is a norm's output (measured), "sandwich" when the
        blocks also normalise their sublayers' outputs, else "pre"; None before ``confirm``."""
        if self.norms is None:
            return None
        if self.norms.placement == "post":
            return "post"
        return "sandwich" if any(facts.placement == "sandwich" for facts in self.block_facts.values()) else "pre"

    def block(self, attention_module: str) -> BlockFacts | None:
        """The facts of the block an attention module (a recorded call's qualified name) sits in, or None."""
        prefix = block_of(attention_module)
        return None if prefix is None else self.block_facts.get(prefix)

    def declares(self, name: str) -> bool:
        """The model's forward names ``name`` as a parameter (so a value passed for it is used, not swallowed)."""
        return name in self.forward_parameters

    def accepts(self, name: str) -> bool:
        """The model's forward takes ``name``: a named parameter, or one a **kwargs passes on."""
        return name in self.forward_parameters or self.forward_var_keyword

    def softcapped(self, logits: torch.Tensor) -> torch.Tensor:
        """Gemma 2's final tanh soft-capping of the logits, where the config has it."""
        cap = self.logit_softcap
        return torch.tanh(logits / cap) * cap if cap else logits

    def summary(self) -> str:
        """One line: the blocks, the placement, and what is not known (the zoo table's layout column)."""
        known = f"{len(self.blocks)} attention blocks, {self.placement or 'unconfirmed'} norms"
        return "; ".join([known, *(f"{fact}: {why}" for fact, why in sorted(self.unknown.items()))])


def read_layout(model: torch.nn.Module) -> ModelLayout:
    """The layout of a model, read from its module tree, its forward's signature and its config (no forward)."""
    config: Any = model.config
    model_type = str(getattr(config, "model_type", type(model).__name__))
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    names = module_names(model)
    blocks = attention_blocks(model)
    parallel = bool(getattr(config, "use_parallel_residual", False))
    facts = {name: _block_facts(model, model_type, parallel, name, index) for name, index in blocks.items()}
    unknown: dict[str, str] = {}
    if not blocks:
        unknown["blocks"] = f"no module of {model_type} is named for attention inside a numbered block"
    for fact, why in (("norms", "norm_reason"), ("mlp", "mlp_reason")):
        reasons = [getattr(f, why) for f in facts.values() if getattr(f, why)]
        if reasons:
            unknown[fact] = reasons[0]
    base = getattr(model, "base_model", model)
    base_name = names.get(id(base), "")
    head = _output_embeddings(model)
    lm_head = names.get(id(head)) if head is not None else None
    parameters = inspect.signature(model.forward).parameters
    return ModelLayout(
        model_type=model_type,
        blocks=blocks,
        stacks=tuple(tuple(members) for members in block_lists(model)),
        block_facts=facts,
        body=base_name,
        lm_head=lm_head,
        final_norm=_final_norm(model, base, names),
        encoder_final_norm=_stack_norm(model, "encoder", names),
        decoder_final_norm=_stack_norm(model, "decoder", names),
        forward_parameters=frozenset(parameters),
        forward_var_keyword=any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()),
        logit_softcap=getattr(config, "final_logit_softcapping", None),
        attention_softcap=getattr(text_config, "attn_logit_softcapping", None),
        embeddings=_embedding_facts(model, names),
        unknown=unknown,
    )


def confirm(layout: ModelLayout, model: torch.nn.Module, hidden_states, real: torch.Tensor | None, sinks: bool) -> ModelLayout:
    """``layout`` with the norm placement measured on one forward's hidden states, and whether it has sinks.

    A model whose blocks cannot be measured keeps ``norms=None`` and the reason under ``unknown["placement"]``:
    the measurement never refuses a model the hook records exactly.
    """
    try:
        norms = norm_placement(model, hidden_states, real=real)
    except Exception as exc:  # noqa: BLE001 - any failure of a norm module on the probe tensors: say why, in one line
        why = f"the norm placement of {layout.model_type} could not be measured ({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''})"
        return dataclasses.replace(layout, sinks=sinks, unknown={**layout.unknown, "placement": why})
    return dataclasses.replace(layout, norms=norms, sinks=sinks)


def _output_embeddings(model: Any) -> torch.nn.Module | None:
    try:
        return model.get_output_embeddings()
    except (NotImplementedError, AttributeError):
        return None


def _final_norm(model: torch.nn.Module, base: torch.nn.Module, names: dict[int, str]) -> NormFacts | None:
    """The norm a decoder applies before its unembedding (``model.norm``, GPT-2's ``ln_f``, ...), or None."""
    for name in _FINAL_NORMS:
        module = getattr(base, name, None)
        if isinstance(module, torch.nn.Module):
            return _norm_facts(model, names.get(id(module), name), module)
    return None


def _stack_norm(model: torch.nn.Module, stack: str, names: dict[int, str]) -> NormFacts | None:
    module = getattr(getattr(model, stack, None), "final_layer_norm", None)
    return _norm_facts(model, names[id(module)], module) if isinstance(module, torch.nn.Module) and id(module) in names else None


def _embedding_facts(model: Any, names: dict[int, str]) -> EmbeddingFacts | None:
    token_table = None
    try:
        token_table = model.get_input_embeddings()
    except (NotImplementedError, AttributeError):
        pass
    owner = names.get(id(token_table)) if token_table is not None else None
    if owner is None or "." not in owner:
        return None
    parent_name = owner.rsplit(".", 1)[0]
    parent = model.get_submodule(parent_name)
    tables = {name: m for name, m in parent.named_children() if isinstance(m, torch.nn.Embedding)}
    segment = next((name for name in tables if _TOKEN_TYPE.search(name.lower())), None)
    position = next((name for name in tables if _POSITION_TABLE.search(name.lower()) and not _TOKEN_TYPE.search(name.lower())), None)
    if segment is None or position is None:
        return None
    norm = next((name for name, m in parent.named_children() if is_norm(m)), None)
    return EmbeddingFacts(
        owner=parent_name,
        token=owner,
        position=f"{parent_name}.{position}",
        segment=f"{parent_name}.{segment}",
        norm=None if norm is None else f"{parent_name}.{norm}",
        padding_idx=int(getattr(parent, "padding_idx", 0) or 0),
    )


# -- parameters by component ---------------------------------------------------------------------------
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
    blocks = [block for members in block_lists(model) for block in members]
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
        norms = [(f"{block}.{n}", m) for n, m in model.get_submodule(block).named_modules() if is_norm(m)] if aligned else everywhere
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
        names = [n for n, m in model.get_submodule(blocks[0]).named_modules() if is_norm(m)]
        said = f"{blocks[0]} has {', '.join(names[:4])}, which feed its sublayers" if names else f"{blocks[0]} has no norm"
    else:
        said = "its norms feed the sublayers"
    return Placement("pre", f"no block's output is a norm's output; {said}", errors)


# -- what an attention score reads (the "why" split, ``models.why``) ------------------------------------
@dataclass(frozen=True)
class QueryKey:
    """The query and key projections of one attention module, rows laid out by head: q = W_Q·a + b_Q, k = W_K·a + b_K."""

    w_q: torch.Tensor  # [H·d_h, d]
    b_q: torch.Tensor | None  # [H·d_h]
    w_k: torch.Tensor  # [KV·d_h, d]
    b_k: torch.Tensor | None  # [KV·d_h]
    names: tuple[str, ...]  # the modules they came from
    w_v: torch.Tensor | None = None  # [KV·d_v, d], where found (the circuit's value side)
    b_v: torch.Tensor | None = None


def _weight_bias(module: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.ndim != 2:
        return None
    if type(module).__name__ == "Conv1D":  # GPT-2 stores [in, out]
        weight = weight.t()
    bias = getattr(module, "bias", None)
    return weight.detach(), (bias.detach() if isinstance(bias, torch.Tensor) else None)


def query_key_layers(model: torch.nn.Module, module_name: str, n_heads: int, n_kv_heads: int, head_dim: int) -> QueryKey | None:
    """The query and key projections of the attention module ``module_name`` (a recorded call's name), or None.

    Separate projections (``q_proj``/``k_proj``, BERT's ``query``/``key``, T5's ``q``/``k``) are found by their names
    and widths; a fused one (GPT-2's ``c_attn``, ``qkv``, ``in_proj``) is split into [queries; keys; values] rows by the
    head counts, GPT-NeoX's ``query_key_value`` (rows grouped by head: each head's query, key, value) by head. Nothing here says the layout is right: ``models.why`` rebuilds the recorded queries and keys from
    these and refuses when they miss.
    """
    root = _get(model, module_name) if module_name else None
    if root is None:
        return None
    q_rows, k_rows = n_heads * head_dim, n_kv_heads * head_dim
    found: dict[str, tuple[str, tuple[torch.Tensor, torch.Tensor | None]]] = {}
    for name, module in root.named_modules():
        leaf = name.split(".")[-1].lower() if name else ""
        read = _weight_bias(module) if leaf else None
        if read is None:
            continue
        rows = read[0].shape[0]
        if _FUSED.search(leaf) and "query_key_value" not in leaf and rows == q_rows + 2 * k_rows:
            weight, bias = read
            split = (weight[:q_rows], weight[q_rows : q_rows + k_rows])
            biases = (None, None, None) if bias is None else (bias[:q_rows], bias[q_rows : q_rows + k_rows], bias[q_rows + k_rows :])
            w_v = weight[q_rows + k_rows :]
            return QueryKey(split[0], biases[0], split[1], biases[1], (f"{module_name}.{name}",), w_v, biases[2])
        if "query_key_value" in leaf and n_heads == n_kv_heads and rows == 3 * q_rows:
            # GPT-NeoX (and Bloom): rows grouped by head, each head's [query; key; value] in turn
            weight, bias = read
            by_head = weight.reshape(n_heads, 3, head_dim, -1)
            pieces = [by_head[:, part].reshape(q_rows, -1) for part in range(3)]
            b = [None] * 3 if bias is None else [bias.reshape(n_heads, 3, head_dim)[:, part].reshape(q_rows) for part in range(3)]
            return QueryKey(pieces[0], b[0], pieces[1], b[1], (f"{module_name}.{name}",), pieces[2], b[2])
        if "query" not in found and _QUERY.search(leaf) and rows == q_rows:
            found["query"] = (f"{module_name}.{name}", read)
        elif "key" not in found and _KEY.search(leaf) and not _QUERY.search(leaf) and rows == k_rows:
            found["key"] = (f"{module_name}.{name}", read)
        elif "value" not in found and _VALUE.search(leaf) and not _KEY.search(leaf) and not _QUERY.search(leaf):
            found["value"] = (f"{module_name}.{name}", read)
    if "query" not in found or "key" not in found:
        return None
    (q_name, (w_q, b_q)), (k_name, (w_k, b_k)) = found["query"], found["key"]
    w_v, b_v = found["value"][1] if "value" in found else (None, None)  # type: ignore[assignment]
    return QueryKey(w_q, b_q, w_k, b_k, (q_name, k_name), w_v, b_v)


def _centres(module: torch.nn.Module, d: int) -> bool | None:
    """Whether a norm subtracts the mean (LayerNorm) or not (RMSNorm, T5's LayerNorm): a constant input is 0 after
    centring, so the output is the offset alone."""
    parameter = next(module.parameters(), None)
    if parameter is None:
        return None
    with torch.no_grad():
        ones = torch.ones(1, 1, d, dtype=parameter.dtype, device=parameter.device)
        zeros = torch.zeros_like(ones)
        return bool(torch.allclose(_first(module(ones)).float(), _first(module(zeros)).float(), atol=1e-4))


def attention_input_norm(model: torch.nn.Module, block_name: str) -> NormFacts | None:
    """The norm a Pre-LN block applies to its input before the attention (``input_layernorm``, ``ln_1``, T5's
    ``layer.0.layer_norm``), with ``rms`` measured (whether it centres), or None."""
    block = _get(model, block_name)
    if block is None:
        return None
    for name, module in block.named_modules():
        if name and is_norm(module) and any(name == s or name.endswith("." + s) for s in _PRE_NORMS):
            facts = _norm_facts(model, f"{block_name}.{name}", module)
            weight = getattr(module, "weight", None)
            centres = _centres(module, int(weight.shape[-1])) if isinstance(weight, torch.Tensor) else None
            return facts if centres is None else dataclasses.replace(facts, rms=not centres)
    return None


def embedding_tables(model: torch.nn.Module) -> dict[str, str]:
    """The input embedding tables: {"token": name, "position": name, "type": name, "norm": name}, the last three where
    the model has them beside the token table (learned absolute positions, BERT's token types, the norm over their
    sum in Post-LN encoders)."""
    try:
        token = model.get_input_embeddings()  # type: ignore[operator]
    except (NotImplementedError, AttributeError):
        return {}
    names = module_names(model)
    owner = names.get(id(token)) if token is not None else None
    if owner is None:
        return {}
    tables = {"token": owner}
    if "." in owner:
        parent_name = owner.rsplit(".", 1)[0]
        for name, module in model.get_submodule(parent_name).named_children():
            if is_norm(module):
                tables.setdefault("norm", f"{parent_name}.{name}")
            if not isinstance(module, torch.nn.Embedding) or module is token:
                continue
            if _TOKEN_TYPE.search(name.lower()):
                tables.setdefault("type", f"{parent_name}.{name}")
            elif _POSITION_TABLE.search(name.lower()):
                tables.setdefault("position", f"{parent_name}.{name}")
    return tables


def rotary_module(model: torch.nn.Module) -> str | None:
    """The model's rotary-embedding module (called with (x, position_ids) it gives (cos, sin)), or None."""
    for name, module in model.named_modules():
        if "rotary" in type(module).__name__.lower():
            return name
    return None


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
