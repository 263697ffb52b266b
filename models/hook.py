"""The recording attention backend.

attnscope registers its own attention functions through ``transformers.AttentionInterface``
(one name per delegate kernel) and the matching mask functions through
``AttentionMaskInterface``. Each call records the layer's post-RoPE query, its key before
grouped-query expansion, the mask it really got and the scaling, then hands the output to the
chosen kernel. Maps are recomputed later from these tensors (see ``analysis.attention``), or, when the
run asks for it (``recording(capture=True)``: short inputs, where the weights are small), computed once
inside the call and kept: the call then returns ``weights·V`` itself instead of the kernel's output, so
the forward pays for the weights once and no map is ever recomputed.

Everything a run asks of the hook is one declared ``RunPlan`` (record? keep values? accumulate over a
KV cache? which blocks' outputs to edit? pin the blocks' inputs?) held in one ``contextvars.ContextVar``,
so two threads (two dashboard sessions) sharing one loaded model never see each other's tensors or edits.

Transformer blocks also carry two gated hooks, installed once when the model is prepared at load
(``install_block_hooks``), before it is shared: they do nothing unless the run's plan asks
(``pinned_blocks``: every block's input rows 1.. replaced by row 0's, each block's output collected).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, eager_mask, flash_attention_mask, sdpa_mask

from attnscope.analysis.attention import full_weights
from attnscope.models.architecture import block_index

__all__ = [
    "AttentionCall",
    "BACKENDS",
    "IMPL_NAMES",
    "Intervention",
    "KERNELS",
    "Kernel",
    "LayerRecord",
    "MaskSpec",
    "Recorder",
    "RunPlan",
    "capturable",
    "install_block_hooks",
    "intervening",
    "is_float",
    "pinned_blocks",
    "recording",
    "with_bias",
]


Kernel = Literal["sdpa", "eager", "flash"]
KERNELS: tuple[Kernel, ...] = ("sdpa", "eager", "flash")
# "auto" picks the kernel the architecture supports (SDPA, else the model file's eager function).
BACKENDS: tuple[str, ...] = ("auto", *KERNELS)

# The name each kernel registers under; config._attn_implementation is set to it. No name may
# contain "sdpa" or "flash": transformers checks such names against the class's support flags (and
# tries to import a flash-attn kernel), which would refuse architectures the hook serves fine.
IMPL_NAMES: dict[str, str] = {"sdpa": "attnscope_fast", "eager": "attnscope_eager", "flash": "attnscope_fa"}

# MaskSpec: a bool tensor [batch, 1, query, key] (True = may attend); a float tensor
# [batch or 1, heads or 1, query, key] added to the scores, as eager adds it (relative-position
# biases, ALiBi and other extra terms ride in the mask; disallowed = dtype min); or a named
# pattern for the mask-free fast path (the kernel then applies causality itself).
MaskSpec = torch.Tensor | Literal["causal", "full"]


@dataclass
class LayerRecord:
    """What one attention call saw. Shapes: query [B, H, n, d], key [B, KV, n, d]."""

    query: torch.Tensor
    key: torch.Tensor
    mask: MaskSpec
    scaling: float
    softcap: float | None = None
    module: str = ""  # the attention module's qualified name, e.g. "model.layers.3.self_attn"
    value: torch.Tensor | None = None  # [B, KV, n, dv] before GQA expansion, when the recorder keeps values
    # float32 [B or 1, H, n or 1] learned sink logits: one more softmax term per row (gpt-oss's per-head
    # ``s_aux``; Inkling 2's per-query ``sinks``)
    sinks: torch.Tensor | None = None
    # float32 [B, H, n, n]: the weights, when the call computed them itself (the captured path); None = recompute from q/k
    weights: torch.Tensor | None = None


@dataclass
class Recorder:
    """Collects one forward pass's attention inputs, layer by layer in call order."""

    layers: list[LayerRecord] = field(default_factory=list)
    names: dict[int, str] = field(default_factory=dict)  # id(module) -> qualified name
    keep_values: bool = False  # also keep each call's value tensor (value-weighted norms, knockout)
    # Generation with a KV cache: one record per attention module, its queries growing step by step
    # and its keys the cache's latest (see ``add``); ``None`` = one record per call.
    accumulate: bool = False
    # The captured path: each call whose weights can be formed exactly here (``capturable``) computes them
    # once, keeps them in its record and returns weights·V as the output instead of calling the kernel.
    capture: bool = False
    # Where captured weights go: one [slots, B, H, n, n] buffer for the whole run, filled in call order, so every
    # layer's maps lie side by side (a stack of them is a view); a call that does not fit gets its own tensor.
    capture_into: torch.Tensor | None = None
    _slots_used: int = 0
    _mask_cache: dict[object, tuple[object, torch.Tensor]] = field(default_factory=dict)  # id(mask) -> (mask, spec)
    _pieces: dict[str, list[tuple[MaskSpec, int, int]]] = field(default_factory=dict)  # module -> (mask, q, k) per step

    def add(self, layer: LayerRecord) -> None:
        """Keep one call's record. Accumulating, a call of a module already seen (a decoding step with
        the cache) appends its queries to that module's record and replaces its keys and values with
        the cache's, which hold every position so far; ``merged_mask`` rebuilds the mask afterwards."""
        if not self.accumulate:
            self.layers.append(layer)
            return
        piece = (layer.mask, layer.query.shape[-2], layer.key.shape[-2])
        prev = next((r for r in self.layers if r.module == layer.module), None) if layer.module else None
        if prev is None:
            self.layers.append(layer)
            self._pieces[layer.module] = [piece]
            return
        if prev.sinks is not None and layer.sinks is not None:  # one sink logit per query from here on
            old, new = prev.query.shape[-2], layer.query.shape[-2]
            b = max(prev.sinks.shape[0], layer.sinks.shape[0])
            prev.sinks = torch.cat([prev.sinks.expand(b, -1, old), layer.sinks.expand(b, -1, new)], dim=-1)
        prev.query = torch.cat([prev.query, layer.query], dim=-2)
        prev.key, prev.value = layer.key, layer.value
        self._pieces[layer.module].append(piece)

    def capture_slot(self, shape: tuple[int, ...]) -> torch.Tensor | None:
        """The next free slot of ``capture_into`` for weights of ``shape`` [B, H, q, k], or None (no buffer, full, other shape)."""
        buffer = self.capture_into
        if buffer is None or self._slots_used >= buffer.shape[0] or tuple(buffer.shape[1:]) != tuple(shape):
            return None
        self._slots_used += 1
        return buffer[self._slots_used - 1]

    def merged_mask(self, module: str) -> MaskSpec | None:
        """The full-sequence mask of an accumulated module, or None when the cache dropped keys
        (a sliding-window cache) and the steps cannot be laid side by side."""
        pieces = self._pieces.get(module, [])
        n = sum(q for _, q, _ in pieces)
        if not pieces or any(k != done + q for (_, q, k), done in zip(pieces, _running(q for _, q, _ in pieces))):
            return None
        if all(m == "causal" or (m == "full" and q == 1) for m, q, _ in pieces):
            return "causal"
        additive = any(is_float(m) for m, _, _ in pieces)
        ref = next((m for m, _, _ in pieces if isinstance(m, torch.Tensor)), None)
        batch = max((m.shape[0] for m, _, _ in pieces if isinstance(m, torch.Tensor)), default=1)
        heads = max((m.shape[1] for m, _, _ in pieces if isinstance(m, torch.Tensor) and is_float(m)), default=1)
        device = ref.device if ref is not None else "cpu"
        low = torch.finfo(torch.float32).min
        out = torch.full((batch, heads, n, n), low if additive else False, dtype=torch.float32 if additive else torch.bool, device=device)
        start = 0
        for m, q, k in pieces:
            rows = slice(start, start + q)
            if isinstance(m, str):
                allowed = torch.ones(q, k, dtype=torch.bool, device=device)
                if m == "causal":
                    allowed = torch.arange(k, device=device)[None, :] <= torch.arange(start, start + q, device=device)[:, None]
                out[:, :, rows, :k] = torch.where(allowed, 0.0, low) if additive else allowed
            elif additive and not is_float(m):
                out[:, :, rows, :k] = torch.where(m.to(device), 0.0, low)
            else:
                out[:, :, rows, :k] = m.to(device)
            start += q
        return out

    def mask_spec(self, module: torch.nn.Module, attention_mask, kwargs, query: torch.Tensor, key: torch.Tensor, kernel: str) -> MaskSpec:
        """What the kernel really applies, mirroring its own rules for a missing mask."""
        batch, n_queries, n_keys, device = query.shape[0], query.shape[-2], key.shape[-2], query.device
        is_causal = kwargs.get("is_causal")
        if is_causal is None:
            is_causal = getattr(module, "is_causal", True)
        # SDPA (and flash) apply causality themselves when no mask is given, except to a single query
        # (a decoding step); the model file's eager function applies nothing without a mask.
        is_causal = bool(is_causal) and n_queries > 1 and kernel != "eager"
        window = kwargs.get("sliding_window")  # flash kernels apply it themselves; other masks already hold it
        if attention_mask is None:
            if window is None or n_keys <= window or kernel != "flash":
                return "causal" if is_causal else "full"
            key_ = ("window", batch, n_keys, is_causal, window)
            if key_ not in self._mask_cache:
                ones = torch.ones(batch, n_keys, dtype=torch.bool, device=device)
                self._mask_cache[key_] = (None, _expand_padding_mask(ones, is_causal, window))
            return self._mask_cache[key_][1]
        key_id = id(attention_mask)
        if key_id not in self._mask_cache:
            if attention_mask.ndim == 2:  # flash-attn's [B, kv] padding mask (1/True = real token)
                bool_mask = _expand_padding_mask(attention_mask.bool(), is_causal, window if kernel == "flash" else None)
            elif attention_mask.dtype == torch.bool:
                bool_mask = attention_mask
            else:  # an additive float mask: 0 where allowed and dtype-min elsewhere, or extra terms
                bool_mask = _bool_if_plain(attention_mask.detach())
            if bool_mask.ndim == 4 and bool_mask.shape[-2] == 1 and n_queries > 1:  # [B, 1, 1, kv]: broadcast over queries
                bool_mask = bool_mask.expand(-1, -1, n_queries, -1)
            # The source mask is kept alive with its spec, so its id cannot be reused by a later mask
            # (generation makes a new mask every step) while the entry exists.
            self._mask_cache[key_id] = (attention_mask, bool_mask.detach())
        return self._mask_cache[key_id][1]


def with_bias(mask: MaskSpec, bias: torch.Tensor, n_queries: int, n_keys: int) -> torch.Tensor:
    """A position bias added to the scores (T5's relative buckets, ...) merged into one additive mask.

    Args:
        mask: the recorded mask; bias: float [B or 1, H, q, k].
    Returns:
        float32 [B or 1, H, q, k]: bias where allowed, dtype min where masked (as eager adds them).
    """
    bias = bias.detach().float()
    low = torch.finfo(torch.float32).min
    if isinstance(mask, str):
        if mask == "full":
            return bias
        causal = torch.arange(n_queries, device=bias.device)[:, None] >= torch.arange(n_keys, device=bias.device)[None, :]
        return torch.where(causal, bias, low)
    if mask.dtype == torch.bool:
        return torch.where(mask.to(bias.device), bias, low)
    return (bias + mask.to(bias.device)).clamp(min=low)


def is_float(mask) -> bool:
    return isinstance(mask, torch.Tensor) and mask.is_floating_point()


def _running(sizes):
    """0, s0, s0+s1, ...: where each step's queries start."""
    total = 0
    for size in sizes:
        yield total
        total += size


def _bool_if_plain(mask: torch.Tensor) -> torch.Tensor:
    """An additive mask that only allows or forbids becomes bool (4x smaller, and the fast paths apply);
    one that carries values (a relative-position bias, ALiBi) stays float and is added to the scores."""
    low = torch.finfo(mask.dtype).min
    if bool(((mask == 0) | (mask <= low / 2)).all()):
        return mask == 0
    return mask.float()


@contextlib.contextmanager
def recording(
    names: dict[int, str] | None = None,
    keep_values: bool = False,
    accumulate: bool = False,
    capture: bool = False,
    capture_into: torch.Tensor | None = None,
):
    """Record every attention call inside the block (this context only), keeping the edits already declared.

    Args:
        names: id(module) -> qualified module name, so each call says which layer made it.
        keep_values: also keep every call's value tensor (``LayerRecord.value``).
        accumulate: one record per module across several forwards (generation with a KV cache).
        capture: compute each call's weights here and keep them (``LayerRecord.weights``) where ``capturable``
            allows; the call's output is then weights·V. For small inputs only: the weights are [B, H, n, n].
        capture_into: float32 [slots, B, H, n, n] the captured weights are written into, one slot per call in
            call order (``Recorder.capture_slot``); None = a tensor per call.
    """
    current = _PLAN.get()
    names = names or (current.names if current else {})
    recorder = Recorder(names=names, keep_values=keep_values, accumulate=accumulate, capture=capture, capture_into=capture_into)
    with _declared(names, recorder=recorder, masks=recorder):
        yield recorder


@dataclass
class AttentionCall:
    """One attention call as an intervention sees it, after the kernel ran.

    Shapes: query [B, H, q, d] (post-RoPE), key [B, KV, k, d] and value [B, KV, k, dv] before
    grouped-query expansion, output [B, q, H, dv] (what the kernel returned, before the output
    projection). ``mask`` is the mask the kernel applied (see ``MaskSpec``); with a KV cache the
    keys are the cache's and ``q < k`` (query i sits at key position ``k - q + i``).
    """

    layer: int | None  # block index from the module name (None when the name has no number)
    order: int  # this call's place among the attention calls since the intervention began
    module: str
    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    mask: MaskSpec
    scaling: float
    softcap: float | None
    output: torch.Tensor
    sinks: torch.Tensor | None = None  # float32 [B or 1, H, q or 1] learned sink logits, as in ``LayerRecord``


# An intervention returns a replacement output [B, q, H, dv] (same dtype and device) or None to keep it.
Intervention = Callable[[AttentionCall], "torch.Tensor | None"]


@dataclass
class RunPlan:
    """What attnscope does inside one forward, declared before it runs; one context variable holds it.

    ``recorder`` keeps every call's inputs (``recording``); ``edits`` replace the attention output of
    the blocks they name (``intervening``): the hook reads each call's block index once and applies the
    edit declared for that block, so no edit sees another block's calls.
    """

    names: dict[int, str]  # id(module) -> qualified module name
    recorder: Recorder | None = None
    edits: Mapping[int, Intervention] = field(default_factory=dict)  # block index -> edit of its output
    masks: Recorder | None = None  # the mask cache (the recorder's, or one of its own)
    calls: int = 0  # attention calls seen so far (``AttentionCall.order``)
    # Block hooks (``pinned_blocks``): replace rows 1.. of every block's input hidden states with row 0's, and
    # collect each block's output hidden states by block index (through ``block_reduce`` when given).
    pin: bool = False
    block_outputs: dict[int, object] | None = None
    block_reduce: Callable[[int, torch.Tensor], object] | None = None


_PLAN: contextvars.ContextVar[RunPlan | None] = contextvars.ContextVar("attnscope_plan", default=None)


@contextlib.contextmanager
def intervening(edits: Mapping[int, Intervention], names: dict[int, str] | None = None):
    """Edit the attention output of the blocks ``edits`` names inside the block (this context only).

    The one hook that knockout, importance and imposed attention patterns build on: the kernel runs
    as usual, then ``edits[layer](call)`` may return a new output (``AttentionCall.output``'s shape) that
    the model's output projection reads instead. Composes with ``recording`` (the recorder keeps the
    inputs as the kernel saw them) and with an outer ``intervening`` (its edits are kept unless a block
    is named again).

    Args:
        edits: block index (0-based, as in the module name) -> edit; blocks not named run unchanged.
        names: id(module) -> qualified module name (``LoadedModel.module_names``).
    """
    if not isinstance(edits, Mapping) or not all(isinstance(k, int) and callable(v) for k, v in edits.items()):
        msg = "intervening takes {block index: edit} (an int for each block to change, a callable for each edit)"
        raise TypeError(msg)
    current = _PLAN.get()
    names = names or (current.names if current else {})
    recorder = current.recorder if current else None
    merged = {**(current.edits if current else {}), **edits}
    with _declared(names, edits=merged, masks=recorder or Recorder(names=names), calls=0):
        yield


@contextlib.contextmanager
def _declared(names: dict[int, str], **changes):
    """The active plan (or an empty one) with ``changes``, active inside the block."""
    current = _PLAN.get() or RunPlan(names=names)
    token = _PLAN.set(dataclasses.replace(current, names=names, **changes))
    try:
        yield
    finally:
        _PLAN.reset(token)


@contextlib.contextmanager
def pinned_blocks(
    names: dict[int, str] | None = None,
    *,
    pin: bool = True,
    reduce: Callable[[int, torch.Tensor], object] | None = None,
):
    """Pin every transformer block's input to batch row 0 and collect each block's output (this context only).

    With ``pin``, rows 1.. of each block's input hidden states are replaced by row 0's before the block
    runs, so every row of a batch starts each block from the same (row 0's) state and differs only by
    what an edit (``intervening``) changes inside that block: one forward gives every block's edited
    output at once. Needs the hooks ``install_block_hooks`` put on the model at load; composes with
    ``recording`` and ``intervening``.

    Args:
        names: id(module) -> qualified module name (kept for an ``intervening`` inside the block).
        pin: replace the input rows (False: only collect outputs).
        reduce: ``reduce(block, hidden [B, n, d])`` -> what to keep for that block (default: the
            detached hidden states), so a caller can keep a summary instead of every layer's states.
    Yields:
        dict block index -> the block's output (or ``reduce``'s result), filled as the forward runs.
    """
    current = _PLAN.get()
    names = names or (current.names if current else {})
    outputs: dict[int, object] = {}
    with _declared(names, pin=pin, block_outputs=outputs, block_reduce=reduce):
        yield outputs


_HOOK_MARK = "_attnscope_block_hook"


def install_block_hooks(model: torch.nn.Module, blocks: Mapping[str, int]) -> None:
    """Put the gated block hooks on every transformer block, once (at load, before the model is shared).

    A forward pre-hook (pins the input rows when the run's plan says ``pin``) and a forward hook
    (collects the output when the plan has ``block_outputs``); with no such plan both return at once
    and change nothing. A block that already has them (a deep copy of a prepared model) is skipped.

    Args:
        blocks: qualified name -> block index (``ModelLayout.blocks``).
    """
    for name, index in blocks.items():
        module = model.get_submodule(name)
        if any(getattr(hook, _HOOK_MARK, False) for hook in module._forward_pre_hooks.values()):
            continue
        module.register_forward_pre_hook(_pin_block_input, with_kwargs=True)
        collect = functools.partial(_collect_block_output, index)
        setattr(collect, _HOOK_MARK, True)
        module.register_forward_hook(collect)


def _pin_block_input(module, args, kwargs):
    """Forward pre-hook: rows 1.. of the block's input hidden states := row 0 (only when the plan pins)."""
    plan = _PLAN.get()
    if plan is None or not plan.pin:
        return None
    hidden = args[0] if args else kwargs.get("hidden_states")
    if not isinstance(hidden, torch.Tensor) or hidden.ndim < 2 or hidden.shape[0] < 2:
        return None
    pinned = hidden[:1].expand_as(hidden).contiguous()  # [B, n, d]: every row is row 0
    if args:
        return (pinned, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": pinned}


setattr(_pin_block_input, _HOOK_MARK, True)


def _collect_block_output(index: int, module, args, output):
    """Forward hook: keep the block's output hidden states (or ``block_reduce`` of them) when the plan asks."""
    plan = _PLAN.get()
    if plan is None or plan.block_outputs is None:
        return None
    hidden = output[0] if isinstance(output, (tuple, list)) else output  # [B, n, d]
    if isinstance(hidden, torch.Tensor):
        plan.block_outputs[index] = plan.block_reduce(index, hidden) if plan.block_reduce else hidden.detach()
    return None


def _expand_padding_mask(padding: torch.Tensor, is_causal: bool, window: int | None = None) -> torch.Tensor:
    """[B, kv] bool padding mask -> [B, 1, q, kv] with causality (and a sliding window) applied (q == kv here)."""
    n = padding.shape[-1]
    full = padding[:, None, None, :].expand(-1, 1, n, n)
    offset = torch.arange(n, device=padding.device)[:, None] - torch.arange(n, device=padding.device)[None, :]  # q - k
    if is_causal:
        full = full & (offset >= 0)
    if window is not None:  # transformers' sliding window: key within the last `window` positions
        full = full & (offset.abs() < window)
    return full


def _model_eager(module: torch.nn.Module) -> Callable:
    """The model file's own eager attention, so eager keeps each architecture's quirks."""
    fn: Callable | None = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if fn is None:
        from transformers.models.llama.modeling_llama import eager_attention_forward

        return eager_attention_forward
    return fn


def _flash_forward(module, query, key, value, attention_mask, **kwargs):
    """FlashAttention: flash-attn's kernel when installed, else SDPA with the flash kernel forced."""
    from attnscope.models.flash import flash_forward

    return flash_forward(module, query, key, value, attention_mask, **kwargs)


_DELEGATES: dict[str, Callable] = {
    "sdpa": sdpa_attention_forward,
    "flash": _flash_forward,
}


def _sink_logits(s_aux, sinks, query: torch.Tensor) -> torch.Tensor | None:
    """Learned sink logits as float32 [B or 1, H, q or 1]: gpt-oss's ``s_aux`` (one per head) or a
    per-query ``sinks`` tensor [B, H, q, 1] (Inkling 2); None when the call has neither."""
    n_batch, n_heads, n_queries = query.shape[0], query.shape[1], query.shape[2]
    if s_aux is not None:
        out = s_aux.detach().float().reshape(1, -1, 1)
    elif isinstance(sinks, torch.Tensor):
        out = sinks.detach().float()
        out = out[..., 0] if out.ndim == 4 and out.shape[-1] == 1 else out
    else:
        return None
    if out.ndim != 3 or out.shape[0] not in (1, n_batch) or out.shape[1] != n_heads or out.shape[2] not in (1, n_queries):
        msg = (
            f"attention sinks of shape {tuple(out.shape)} do not fit {n_heads} heads and {n_queries} queries; "
            "attnscope expects one logit per head, or per head and query"
        )
        raise ValueError(msg)
    return out


def capturable(backend: str, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, dropout: float, sinks, kwargs) -> bool:
    """Whether a call's weights·V is exactly what its kernel would return: the SDPA kernel (plain
    ``softmax(q·kᵀ·scale + mask)·V``; the eager and flash delegates keep their own rules), float32, no
    dropout, sinks, soft-capping or extra position bias, and one query per key (no KV cache)."""
    return (
        backend == "sdpa"
        and query.dtype == key.dtype == value.dtype == torch.float32
        and not dropout
        and sinks is None
        and kwargs.get("softcap") is None
        and kwargs.get("position_bias") is None
        and query.shape[-2] == key.shape[-2]
        and value.shape[-2] == key.shape[-2]
        and query.shape[1] % key.shape[1] == 0
        and value.shape[1] == key.shape[1]
    )


def _captured_output(weights: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """weights [B, H, q, k] times value [B, KV, k, dv] (query head h reads KV head h // (H / KV)), laid out
    as the SDPA delegate returns it: [B, q, H, dv], contiguous."""
    n_batch, n_heads, n_queries, n_keys = weights.shape
    n_kv = value.shape[1]
    out = torch.matmul(weights.view(n_batch, n_kv, (n_heads // n_kv) * n_queries, n_keys), value)  # [B, KV, group·q, dv]
    return out.view(n_batch, n_heads, n_queries, -1).transpose(1, 2).contiguous()


def _make_attention(backend: str) -> Callable:
    def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        plan = _PLAN.get()
        recorder = plan.recorder if plan is not None else None
        name = plan.names.get(id(module), "") if plan is not None else ""
        layer = block_index(name) if plan is not None and plan.edits else None
        edit = plan.edits.get(layer) if layer is not None else None
        if scaling is None:
            scaling = query.shape[-1] ** -0.5
        mask = None
        sinks = _sink_logits(kwargs.get("s_aux"), kwargs.get("sinks"), query)
        if recorder is not None or edit is not None:
            mask = plan.masks.mask_spec(module, attention_mask, kwargs, query, key, backend)
            if kwargs.get("position_bias") is not None:
                mask = with_bias(mask, kwargs["position_bias"], query.shape[-2], key.shape[-2])
        output = None
        if recorder is not None:
            record = LayerRecord(
                query=query.detach(),  # [B, H, n, d], post-RoPE
                key=key.detach(),  # [B, KV, n, d], before GQA expansion
                mask=mask,
                scaling=float(scaling),
                softcap=kwargs.get("softcap"),
                module=name,
                value=value.detach() if recorder.keep_values else None,
                sinks=sinks,
            )
            if recorder.capture and not recorder.accumulate and capturable(backend, query, key, value, dropout, sinks, kwargs):
                shape = (query.shape[0], query.shape[1], query.shape[2], key.shape[2])
                record.weights = full_weights(record, out=recorder.capture_slot(shape))  # [B, H, n, n], as eager forms them
                output = _captured_output(record.weights, value.detach())
            recorder.add(record)
        if output is None:
            kwargs.pop("output_attentions", None)
            delegate = _model_eager(module) if backend == "eager" else _DELEGATES[backend]
            output, _weights = delegate(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
        if plan is not None:
            order, plan.calls = plan.calls, plan.calls + 1
            if edit is not None:
                call = AttentionCall(
                    layer=layer,
                    order=order,
                    module=name,
                    query=query,
                    key=key,
                    value=value,
                    mask=mask,
                    scaling=float(scaling),
                    softcap=kwargs.get("softcap"),
                    output=output,
                    sinks=sinks,
                )
                replaced = edit(call)
                if replaced is not None:
                    if replaced.shape != output.shape:
                        msg = f"an intervention returned shape {tuple(replaced.shape)} for an output of shape {tuple(output.shape)}"
                        raise ValueError(msg)
                    output = replaced.to(output.dtype)
        return output, None  # weights are kept in the record (captured) or recomputed on demand, never returned

    attention.__name__ = f"attnscope_{backend}_attention"
    return attention


def _flash_mask(*args, **kwargs):
    """flash-attn's [B, kv] padding mask (or None) when it is installed, else SDPA's; chosen per call so
    importing attnscope never probes CUDA."""
    from attnscope.models.flash import has_flash_attn_package

    return (flash_attention_mask if has_flash_attn_package() else sdpa_mask)(*args, **kwargs)


_MASKS: dict[str, Callable] = {"sdpa": sdpa_mask, "eager": eager_mask, "flash": _flash_mask}

for _kernel in KERNELS:
    AttentionInterface.register(IMPL_NAMES[_kernel], _make_attention(_kernel))
    AttentionMaskInterface.register(IMPL_NAMES[_kernel], _MASKS[_kernel])
