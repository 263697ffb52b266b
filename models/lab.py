"""The efficient-attention lab: impose a pattern on a real model through the one attention hook, and measure it.

Two measurements per pattern (``analysis.patterns`` has the patterns):

- coverage, from a record (the model unchanged): per head, the share of each query's exact attention mass
  the pattern keeps (``analysis.patterns.coverage_rows``);
- effect, by running the model with the pattern imposed on chosen layers (``imposing``) and comparing with
  full attention: KL of next-token distributions (decoders), the share of positions whose top-1 next token
  is kept, cosine of the last hidden states, the relative hidden-state error after every block, and the
  model's loss on the text.

A pattern whose parameter covers the whole text (``window:4096`` on 19 tokens, ``scale:1``; see
``analysis.patterns.saturation``) is the model itself: its effect is the full forward (KL 0), said in the note.
``recurrence:C[,M]`` on a decoder is run for real, chunk by chunk with a KV cache holding only the memory
(``recurrent_forward``); a test checks it equals the banded-block mask imposed in one pass. ``lab_scale``
sweeps the attention temperature (``scale:τ``): entropy per layer, top-1 kept and KL.

The imposed forward is a plan for ``models.hook.intervening``: each attention call on a chosen layer
has its output recomputed from its own query, key and value with the pattern combined with the model's
mask. No model module or forward method is touched.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from attnscope.analysis.effects import kl_divergence, mean_cosine, next_token_loss, relative_error
from attnscope.analysis.patterns import (
    PATTERNS,
    SCALE_SWEEP,
    Full,
    Pattern,
    Recurrence,
    Scale,
    check_pattern,
    coverage_rows,
    needs_query_key,
    parse_pattern,
    pattern_allowed,
    pattern_output,
    pattern_weights,
    saturation,
    sweep_values,
)
from attnscope.analysis.scaling import row_entropy, scale_line, top1_kept
from attnscope.models.forward import run, special_ids, tokenize, validate_texts
from attnscope.models.hook import AttentionCall, intervening
from attnscope.models.limits import check_run
from attnscope.models.loaded import LoadedModel, input_device
from attnscope.models.profile import timed
from attnscope.models.record import ForwardRecord

__all__ = [
    "LabEffect",
    "RecurrentRun",
    "ScaleSweep",
    "as_pattern",
    "imposing",
    "lab_coverage",
    "lab_effect",
    "lab_maps",
    "lab_scale",
    "lab_sweep",
    "lab_table",
    "recurrent_forward",
]


def as_pattern(pattern: Pattern | str) -> Pattern:
    """A ``Pattern`` from itself (``Window(8)``) or from ``name:params`` text (``"window:8"``)."""
    return pattern if isinstance(pattern, Pattern) else parse_pattern(pattern)


def _check_runnable(lm: LoadedModel, pattern: Pattern) -> None:
    if lm.spec.recording == "materialised":
        msg = (
            f"{lm.spec.name} ({lm.spec.model_type}) has no attention hook (materialised fallback), so {pattern.label} "
            "cannot be imposed on its forward; its coverage is still measured from the exact maps"
        )
        raise ValueError(msg)


def _changes(lm: LoadedModel, module: str) -> bool:
    """Whether an attention call is one the lab changes: every call of an encoder or decoder; of an encoder-decoder,
    the encoder's self-attention only (its decoder's self- and cross-attention keep full attention)."""
    return lm.spec.kind != "encoder-decoder" or "encoder" in module.split(".")


def _check_no_sinks(sinks, name: str) -> None:
    """Refuse a sink model by name, before any work (``analysis.patterns`` refuses sinks too, without the name)."""
    if sinks is not None:
        msg = f"{name} has learned attention sinks, which the lab's patterns do not model; its maps are exact on the other pages"
        raise ValueError(msg)


def _check_layers(lm: LoadedModel, layers) -> list[int]:
    top = lm.spec.n_layers - 1
    if layers is None:
        return list(lm.spec.attention_layers or range(lm.spec.n_layers))
    layers = sorted({int(layer) for layer in layers})
    if not layers:
        msg = "no layers chosen; pick at least one layer to impose the pattern on (default: all)"
        raise ValueError(msg)
    bad = [layer for layer in layers if not 0 <= layer <= top]
    if bad:
        msg = f"layer {bad[0]} out of range; {lm.spec.name} has layers 0..{top} (0-based)"
        raise ValueError(msg)
    return layers


@contextlib.contextmanager
def imposing(lm: LoadedModel, pattern: Pattern | str, layers=None, special: torch.Tensor | None = None):
    """Run the model with ``pattern`` imposed on ``layers`` (default all) inside the block (this context only).

    Args:
        lm: from ``load``; its recording must be the hook (not the materialised fallback).
        pattern: a ``Pattern`` (``Window(64)``) or ``name:params`` text (``"window:64"``).
        layers: 0-based blocks to change; the others keep full attention.
        special: bool [B, n] special tokens of the inputs (needed by ``global:special``).

    An encoder-decoder model gets the pattern on its encoder's self-attention (layers are encoder blocks).

    Raises:
        ValueError: a materialised model, bad layers.
    """
    pattern = as_pattern(pattern)
    _check_runnable(lm, pattern)
    chosen = set(_check_layers(lm, layers))
    if pattern.uses_special_tokens and special is None:
        msg = f"{pattern.label} needs to know which input tokens are special: pass special=bool [batch, tokens] (lab_effect does)"
        raise ValueError(msg)

    def impose(call: AttentionCall) -> torch.Tensor | None:
        if not _changes(lm, call.module):
            return None
        _check_no_sinks(call.sinks, lm.spec.name)
        with torch.no_grad():
            return pattern_output(pattern, call, special=None if special is None else special.to(call.query.device))

    with intervening(dict.fromkeys(chosen, impose), lm.module_names):
        yield


@dataclass
class LabEffect:
    """What imposing a pattern did to one text's forward pass, compared with full attention."""

    pattern: str
    layers: list[int]
    n_tokens: int
    kl: float | None  # mean over positions of KL(full ‖ imposed) of next-token distributions (nats); None: no LM head
    kl_max: float | None
    cosine: float  # mean over tokens of the cosine between the last hidden states
    loss_full: float | None  # mean next-token cross-entropy on the text (nats)
    loss_imposed: float | None
    layer_error: pd.DataFrame = field(repr=False)  # hidden_layer (0 = embeddings), relative_error
    seconds_full: float = 0.0
    seconds_imposed: float = 0.0
    note: str = ""
    top1_kept: float | None = None  # share of positions whose most likely next token is unchanged; None: no LM head
    saturated: str | None = None  # why the pattern is the model itself on this text ("covers the whole text"), else None
    how: str = "imposed through the attention hook"  # how the changed forward was run
    cache_tokens: list[int] = field(default_factory=list)  # recurrence run chunk by chunk: keys held while each chunk ran

    def row(self) -> dict:
        """One flat row for tables (the CLI's CSV)."""
        return {
            "pattern": self.pattern,
            "layers": len(self.layers),
            "n_tokens": self.n_tokens,
            "kl": self.kl,
            "kl_max": self.kl_max,
            "top1_kept": self.top1_kept,
            "cosine_last": self.cosine,
            "hidden_error_last": float(self.layer_error["relative_error"].iloc[-1]),
            "loss_full": self.loss_full,
            "loss_imposed": self.loss_imposed,
            "seconds_full": self.seconds_full,
            "seconds_imposed": self.seconds_imposed,
            "covers_whole_text": self.saturated is not None,
        }


def _inputs(lm: LoadedModel, text: str, max_length: int | None, target: str | None = None):
    validate_texts([text])
    enc, _ = tokenize(lm, [text], max_length=max_length)
    device = input_device(lm.model)
    inputs = {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    if lm.spec.kind == "encoder-decoder":
        if target is None:
            msg = f"{lm.spec.name} is an encoder-decoder model: give the decoder's text too (target=...; --target in the CLI)"
            raise ValueError(msg)
        validate_texts([target])
        decoded, _ = tokenize(lm, [target], max_length=max_length)
        inputs["decoder_input_ids"] = decoded["input_ids"].to(device)  # read as given (teacher forcing), as run() does
        inputs["decoder_attention_mask"] = decoded["attention_mask"].to(device)
    elif target is not None:
        msg = f"{lm.spec.name} is a {lm.spec.kind}, not an encoder-decoder model: it takes no target text"
        raise ValueError(msg)
    check_run(lm, 1, int(enc["input_ids"].shape[1]), padded=False)
    # The record's special tokens ([CLS]/[SEP]/BOS/EOS), not [UNK] or [MASK]: one meaning everywhere.
    specials = torch.tensor(sorted(special_ids(lm.tokenizer)), dtype=torch.long)
    special = torch.isin(enc["input_ids"], specials)  # [1, n]
    return inputs, special


def _forward(lm: LoadedModel, inputs: dict):
    """(hidden states per layer — an encoder-decoder's encoder —, next-token logits or None, seconds)."""
    extra = {"use_cache": False} if lm.spec.kind != "encoder" else {}
    out: Any
    with torch.inference_mode():
        out, seconds = timed(lambda: lm.model(**inputs, output_hidden_states=True, **extra), lm.spec.device)
    logits = out.logits.float() if lm.spec.kind != "encoder" and getattr(out, "logits", None) is not None else None
    hidden = out.encoder_hidden_states if lm.spec.kind == "encoder-decoder" else out.hidden_states
    return [h.float() for h in hidden], logits, seconds


def _chunked(lm: LoadedModel, pattern: Pattern, layers) -> bool:
    """Whether a recurrence pattern runs for real, chunk by chunk: a decoder, every block chosen (a block left with
    full attention would need every earlier key in its cache)."""
    every = list(lm.spec.attention_layers or range(lm.spec.n_layers))
    return isinstance(pattern, Recurrence) and lm.spec.kind == "decoder" and sorted(layers) == every == list(range(lm.spec.n_layers))


def _effect_from(lm, pattern: Pattern, layers, inputs, special, full) -> LabEffect:
    hidden_full, logits_full, seconds_full = full
    n = int(inputs["input_ids"].shape[1])
    why = saturation(pattern, n, lm.spec.n_heads, causal=lm.spec.kind == "decoder")
    how, cache_tokens = "imposed through the attention hook", []
    if why is not None:  # the pattern is the model itself on this text: nothing to change, nothing to re-run
        hidden, logits, seconds = hidden_full, logits_full, seconds_full
        how = "the model itself (the pattern covers the whole text)"
    elif isinstance(pattern, Recurrence) and _chunked(lm, pattern, layers):
        chunked = _recurrent(lm, inputs, pattern)
        hidden, logits, seconds, cache_tokens = chunked.hidden, chunked.logits, chunked.seconds, chunked.cache_tokens
        how = f"run chunk by chunk: segments of {pattern.segment} tokens, a KV cache holding the {pattern.memory} previous segment(s)"
    else:
        with imposing(lm, pattern, layers, special=special):
            hidden, logits, seconds = _forward(lm, inputs)
        if isinstance(pattern, Recurrence):
            how = "its banded-block mask imposed in one pass (the chunked run needs a decoder and every layer)"
    errors = [float(relative_error(a[0], b[0])) for a, b in zip(hidden_full, hidden)]  # per hidden layer
    cosine = float(mean_cosine(hidden_full[-1][0], hidden[-1][0]))
    kl = kl_max = loss_full = loss_imposed = top1 = None
    note = ""
    if logits_full is not None:
        per_position = kl_divergence(logits_full[0], logits[0])  # [n]
        kl, kl_max = float(per_position.mean()), float(per_position.max())
        top1 = float(top1_kept(logits_full[0], logits[0]))
        ids = inputs.get("decoder_input_ids", inputs["input_ids"])[0]  # an encoder-decoder predicts its target
        if len(ids) > 1:
            loss_full, loss_imposed = float(next_token_loss(logits_full[0], ids)), float(next_token_loss(logits[0], ids))
    else:
        note = f"{lm.spec.name} has no language-model head here: the effect is measured on hidden states only"
    if why is not None:
        said = f"{pattern.label} {why} ({n} tokens): it is full attention, KL 0"
        note = f"{said}; {note}" if note else said
    frame = pd.DataFrame({"hidden_layer": np.arange(len(errors)), "relative_error": errors})
    return LabEffect(
        pattern=pattern.label,
        layers=list(layers),
        n_tokens=n,
        kl=kl,
        kl_max=kl_max,
        cosine=cosine,
        loss_full=loss_full,
        loss_imposed=loss_imposed,
        layer_error=frame,
        seconds_full=seconds_full,
        seconds_imposed=seconds,
        note=note,
        top1_kept=top1,
        saturated=why,
        how=how,
        cache_tokens=cache_tokens,
    )


def lab_effect(
    lm: LoadedModel, text: str, pattern: Pattern | str, layers=None, max_length: int | None = None, target: str | None = None
) -> LabEffect:
    """Run ``text`` with full attention and with ``pattern`` imposed on ``layers`` (default all); compare.

    ``target``: encoder-decoder models only, the decoder's text (read as given); the pattern goes on the encoder's
    self-attention and KL / top-1 / loss are over the decoder's next-token predictions.

    Returns:
        LabEffect (KL, loss only for decoders; hidden-state measures for every model).
    Raises:
        ValueError: bad pattern parameters for this text, a materialised model, bad layers or text.
    """
    pattern = as_pattern(pattern)
    inputs, special = _inputs(lm, text, max_length, target)
    check_pattern(pattern, int(inputs["input_ids"].shape[1]), lm.spec.n_heads)
    _check_runnable(lm, pattern)
    layers = _check_layers(lm, layers)
    return _effect_from(lm, pattern, layers, inputs, special, _forward(lm, inputs))


def _special_padded(rec: ForwardRecord, batch: int) -> torch.Tensor:
    """bool [n_padded] special tokens of text ``batch`` (padding excluded)."""
    ids = rec.input_ids[batch]
    return torch.from_numpy(np.isin(ids, list(rec.special_ids)) & (rec.attention_mask[batch] == 1))


def _check_coverage(rec: ForwardRecord, pattern: Pattern, batch: int) -> None:
    rec.check_batch(batch)
    check_pattern(pattern, len(rec.tokens[batch]), rec.spec.n_heads)
    if rec.spec.recording == "materialised" and needs_query_key(pattern):
        msg = (
            f"{pattern.label} needs the layer's queries and keys, and {rec.spec.name} keeps only its maps (materialised "
            "fallback); choose a sparse, svd or topk pattern"
        )
        raise ValueError(msg)


def _layer_maps(rec: ForwardRecord, pattern: Pattern, layer: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(exact, approximate) maps of every head of a layer over real tokens: float32 [H, n_b, n_b] each."""
    layer_rec = rec.layer_record(layer)
    _check_no_sinks(layer_rec.sinks, rec.spec.name)
    real = torch.from_numpy(rec.real_index(batch))
    full = pattern_weights(Full(), layer_rec, batch=batch)
    approx = pattern_weights(pattern, layer_rec, batch=batch, special=_special_padded(rec, batch).to(layer_rec.query.device))
    index = real.to(full.device)
    return full[:, index][:, :, index], approx[:, index][:, :, index]


def lab_coverage(rec: ForwardRecord, pattern: Pattern | str, batch: int = 0, layers=None) -> pd.DataFrame:
    """Coverage of every head: the share of each query's exact attention mass the pattern keeps.

    Computed from the record (the model is not changed); works on materialised models for patterns that
    need only the maps.

    Returns:
        DataFrame, one row per (layer, head): layer, head, kv_head, coverage (mean over queries),
        min_coverage (the worst query), lost (1 - coverage).
    """
    pattern = as_pattern(pattern)
    _check_coverage(rec, pattern, batch)
    layers = rec.attention_layers if layers is None else list(layers)
    frames = []
    for layer in layers:
        exact, approx = _layer_maps(rec, pattern, layer, batch)
        per_query = coverage_rows(exact, approx).clamp(max=1.0)  # [H, n]
        heads = np.arange(rec.spec.n_heads)
        frames.append(
            pd.DataFrame(
                {
                    "layer": layer,
                    "head": heads,
                    "kv_head": heads // rec.spec.kv_group,
                    "coverage": per_query.mean(-1).cpu().numpy(),
                    "min_coverage": per_query.min(-1).values.cpu().numpy(),
                }
            )
        )
    table = pd.concat(frames, ignore_index=True)
    table["lost"] = 1.0 - table["coverage"]
    return table


def lab_maps(rec: ForwardRecord, pattern: Pattern | str, layer: int, head: int, batch: int = 0) -> dict[str, np.ndarray]:
    """One head's exact and approximate maps over real tokens, and which cells a sparse pattern keeps.

    Returns:
        {"exact": float32 [n, n], "approx": float32 [n, n], "kept": bool [n, n] (sparse patterns: the pattern's
        mask combined with the model's; others: approx > 0), "allowed": bool [n, n] (the model's own mask)}.
    """
    pattern = as_pattern(pattern)
    _check_coverage(rec, pattern, batch)
    rec.check_head(head)
    exact, approx = _layer_maps(rec, pattern, layer, batch)
    exact_map, approx_map = exact[head].cpu().numpy(), approx[head].cpu().numpy()
    n_padded = rec.n_padded
    layer_rec = rec.layer_record(layer)
    real = rec.real_index(batch)
    from attnscope.analysis.attention import mask_rows

    allowed = mask_rows(layer_rec.mask, batch, torch.arange(n_padded), n_padded, "cpu")  # [n_padded, n_padded]
    if pattern.is_sparse:
        kept = (
            pattern_allowed(
                pattern, n_padded, n_padded, real_keys=allowed.any(0), special=_special_padded(rec, batch), model_allowed=allowed
            )
            & allowed
        )
    else:
        kept = allowed
    allowed, kept = allowed.numpy()[np.ix_(real, real)], kept.numpy()[np.ix_(real, real)]
    if not pattern.is_sparse:
        kept = kept & (approx_map > 0)
    return {"exact": exact_map, "approx": approx_map, "kept": kept, "allowed": allowed}


def lab_sweep(
    lm: LoadedModel,
    text: str,
    pattern: Pattern | str,
    layers=None,
    rec: ForwardRecord | None = None,
    max_length: int | None = None,
    target: str | None = None,
) -> pd.DataFrame:
    """The pattern at a range of its main parameter (window width, rank, features, ...): error against the value.

    Args:
        rec: a record of ``text`` (for coverage); made here when None.
    Returns:
        DataFrame, one row per value: parameter (its name), value, pattern (label), coverage (mean over heads and
        layers), kl (decoders; else NaN), one_minus_cosine, hidden_error_last, loss_imposed, loss_full.
    """
    pattern = as_pattern(pattern)
    field_name = pattern.sweep_parameter
    if field_name is None:
        swept = [name for name, kind in PATTERNS.items() if kind.sweep_parameter is not None]
        msg = f"{pattern.label} has no parameter to sweep; choose {', '.join(swept[:-1])} or {swept[-1]}"
        raise ValueError(msg)
    inputs, special = _inputs(lm, text, max_length, target)
    n = int(inputs["input_ids"].shape[1])
    _check_runnable(lm, pattern)
    layers = _check_layers(lm, layers)
    rec = rec if rec is not None else run(lm, text, max_length=max_length, target=target)
    full = _forward(lm, inputs)
    rows = []
    for value in sweep_values(pattern, n, lm.spec.n_heads):
        effect = _effect_from(lm, value, layers, inputs, special, full)
        coverage = lab_coverage(rec, value, layers=layers)
        rows.append(
            {
                "parameter": field_name,
                "value": getattr(value, field_name),
                "pattern": value.label,
                "coverage": float(coverage["coverage"].mean()),
                "kl": np.nan if effect.kl is None else effect.kl,
                "one_minus_cosine": 1.0 - effect.cosine,
                "hidden_error_last": float(effect.layer_error["relative_error"].iloc[-1]),
                "loss_imposed": np.nan if effect.loss_imposed is None else effect.loss_imposed,
                "loss_full": np.nan if effect.loss_full is None else effect.loss_full,
            }
        )
    return pd.DataFrame(rows)


def lab_table(
    lm: LoadedModel, text: str, patterns, layers=None, max_length: int | None = None, effect: bool = True, target: str | None = None
) -> tuple[pd.DataFrame, str | None]:
    """Coverage and effect of several patterns on one text, one row each (the CLI's table).

    Args:
        effect: also run the model with each pattern imposed (False: coverage only, no note).
    Returns:
        (DataFrame: pattern, coverage, min_head_coverage, worst_head (layer.head), and ``LabEffect.row`` columns;
        a note naming what could not be measured, or None). On a materialised model the effect columns are empty
        and the note says why; coverage is still measured.
    """
    parsed = [as_pattern(p) for p in patterns]
    if not parsed:
        msg = "no pattern given; pass at least one, e.g. window:64"
        raise ValueError(msg)
    rec = run(lm, text, max_length=max_length, target=target)
    n = len(rec.tokens[0])
    for pattern in parsed:
        check_pattern(pattern, n, lm.spec.n_heads)
    layers = _check_layers(lm, layers)
    note = None
    runnable = effect
    if effect:
        try:
            _check_runnable(lm, parsed[0])
        except ValueError as exc:
            runnable, note = False, str(exc)
    inputs, special = _inputs(lm, text, max_length, target)
    full = _forward(lm, inputs) if runnable else None
    rows = []
    for pattern in parsed:
        coverage = lab_coverage(rec, pattern, layers=layers)
        worst = coverage.loc[coverage["coverage"].idxmin()]
        row = {
            "pattern": pattern.label,
            "coverage": float(coverage["coverage"].mean()),
            "min_head_coverage": float(worst["coverage"]),
            "worst_head": f"{int(worst['layer'])}.{int(worst['head'])}",
        }
        if runnable:
            row.update({k: v for k, v in _effect_from(lm, pattern, layers, inputs, special, full).row().items() if k != "pattern"})
        rows.append(row)
    return pd.DataFrame(rows), note


# -- recurrence with memory, run for real -----------------------------------------------------------
@dataclass
class RecurrentRun:
    """A decoder run chunk by chunk (Transformer-XL): each segment sees itself and a KV cache of the previous ones."""

    pattern: str
    logits: torch.Tensor | None  # float32 [1, n, vocab] (None: no LM head)
    hidden: list[torch.Tensor] = field(repr=False)  # n_layers + 1 of float32 [1, n, d], the segments' states joined
    cache_tokens: list[int] = field(default_factory=list)  # keys (memory + the segment) each chunk's attention held
    seconds: float = 0.0


def _check_chunkable(lm: LoadedModel, pattern: Recurrence) -> None:
    if lm.spec.kind != "decoder":
        msg = (
            f"{pattern.label}: the chunk-by-chunk run needs a decoder (segments read a KV cache of earlier ones); "
            f"{lm.spec.name} is an {lm.spec.kind}: the lab imposes the recurrence's banded-block mask in one pass instead"
        )
        raise ValueError(msg)
    if list(lm.spec.attention_layers or range(lm.spec.n_layers)) != list(range(lm.spec.n_layers)):
        msg = f"{pattern.label}: {lm.spec.name} mixes attention with other blocks, whose state a segment cache does not hold"
        raise ValueError(msg)
    if not lm.layout.accepts("position_ids") or not lm.layout.accepts("cache_position"):
        msg = f"{pattern.label}: {lm.spec.name}'s forward takes no position_ids/cache_position, so segments cannot keep their positions"
        raise ValueError(msg)


def _recurrent(lm: LoadedModel, inputs: dict, pattern: Recurrence) -> RecurrentRun:
    """Segments of ``pattern.segment`` tokens, one forward each, at their own positions; between forwards the cache
    is cut to the last ``pattern.memory`` segments, so no segment's attention ever holds more than (M+1)·C keys."""
    from transformers import DynamicCache

    _check_chunkable(lm, pattern)
    ids = inputs["input_ids"]  # [1, n]
    n, device = int(ids.shape[1]), ids.device
    keep = pattern.memory * pattern.segment  # tokens of memory carried to the next segment
    memory: list[tuple[torch.Tensor, torch.Tensor]] = []  # per layer: keys, values [1, KV, m, d]
    logits, hidden, cache_tokens = [], [], []

    def forward():
        nonlocal memory
        for start in range(0, n, pattern.segment):
            chunk = ids[:, start : start + pattern.segment]  # [1, c]
            c, m = int(chunk.shape[1]), (int(memory[0][0].shape[2]) if memory else 0)
            cache = DynamicCache()
            for layer, (k, v) in enumerate(memory):
                cache.update(k, v, layer)
            out = lm.model(
                input_ids=chunk,
                position_ids=torch.arange(start, start + c, device=device)[None],  # the segment's real positions
                cache_position=torch.arange(m, m + c, device=device),  # where it sits in this cache: after the memory
                attention_mask=torch.ones(1, m + c, dtype=torch.long, device=device),
                past_key_values=cache,
                use_cache=True,
                output_hidden_states=True,
            )
            held = out.past_key_values.layers
            cache_tokens.append(int(held[0].keys.shape[2]))
            memory = [(layer.keys[:, :, -keep:], layer.values[:, :, -keep:]) for layer in held] if keep else []
            logits.append(out.logits.float() if getattr(out, "logits", None) is not None else None)
            hidden.append([h.float() for h in out.hidden_states])

    with torch.inference_mode():
        _, seconds = timed(forward, lm.spec.device)
    joined = [torch.cat([chunk[i] for chunk in hidden], dim=1) for i in range(len(hidden[0]))]
    all_logits = None if logits[0] is None else torch.cat(logits, dim=1)
    return RecurrentRun(pattern.label, all_logits, joined, cache_tokens, seconds)


def recurrent_forward(lm: LoadedModel, text: str, pattern: Recurrence | str, max_length: int | None = None) -> RecurrentRun:
    """Run a decoder over ``text`` the Transformer-XL way: segments of C tokens one after another, each attending to
    itself and to a KV cache that holds only the M previous segments (forward only; positions as in one pass).

    Equals one pass with the pattern's banded-block mask imposed (``imposing(lm, pattern)``), which the tests check.

    Returns:
        RecurrentRun: logits [1, n, vocab], hidden states per layer, the keys each chunk held (≤ (M+1)·C), the time.
    Raises:
        ValueError: not a recurrence pattern, an encoder, a hybrid model, bad text or parameters.
    """
    chosen = as_pattern(pattern)
    if not isinstance(chosen, Recurrence):
        msg = f"{chosen.label} is not a recurrence pattern; use recurrence:C[,M] (segments of C tokens, M of them kept)"
        raise ValueError(msg)
    inputs, _ = _inputs(lm, text, max_length)
    check_pattern(chosen, int(inputs["input_ids"].shape[1]), lm.spec.n_heads)
    return _recurrent(lm, inputs, chosen)


# -- why √d: the attention temperature ---------------------------------------------------------------
@dataclass
class ScaleSweep:
    """The model with every attention logit multiplied by τ, for each τ (τ = 1 is the model)."""

    summary: pd.DataFrame  # tau, kl, kl_max, top1_kept, one_minus_cosine, entropy (mean over layers), loss_imposed, loss_full
    entropy: pd.DataFrame  # layer, tau, entropy (nats, mean over heads and queries), max_entropy (uniform rows)
    head_dim: int
    line: str  # one sentence: what the sweep shows


def lab_scale(
    lm: LoadedModel, text: str, taus=SCALE_SWEEP, layers=None, max_length: int | None = None, target: str | None = None
) -> ScaleSweep:
    """Attention logits multiplied by τ on ``layers`` (default all), for each τ: what the softmax's temperature does.

    Each τ is one forward through the attention hook; the entropy of every changed layer's rows is measured in that
    same forward (the maps the model really used), KL and top-1 against the unchanged model.

    Returns:
        ScaleSweep (``summary`` one row per τ, ``entropy`` one row per layer and τ, ``line`` one sentence).
    Raises:
        ValueError: τ outside (0, 64], bad text or layers, a materialised model, an encoder-decoder without a target.
    """
    patterns = [Scale(float(tau)) for tau in taus]
    if not patterns:
        msg = "no τ given; pass at least one, e.g. taus=(0.5, 1, 2)"
        raise ValueError(msg)
    inputs, _ = _inputs(lm, text, max_length, target)
    n = int(inputs["input_ids"].shape[1])
    for pattern in patterns:
        check_pattern(pattern, n, lm.spec.n_heads)
    _check_runnable(lm, patterns[0])
    layers = _check_layers(lm, layers)
    hidden_full, logits_full, _ = _forward(lm, inputs)
    rows, entropy_rows = [], []
    causal = lm.spec.kind == "decoder"
    for pattern in patterns:
        seen: dict[int, float] = {}

        def edit(call: AttentionCall, pattern=pattern, seen=seen) -> torch.Tensor | None:
            if not _changes(lm, call.module):
                return None
            _check_no_sinks(call.sinks, lm.spec.name)
            with torch.no_grad():
                weights = pattern_weights(pattern, call, batch=0)  # [H, q, k] the rows this forward really uses
                seen[call.layer] = float(row_entropy(weights).mean())
                return pattern_output(pattern, call)

        with intervening(dict.fromkeys(layers, edit), lm.module_names):
            hidden, logits, _ = _forward(lm, inputs)
        for layer, value in sorted(seen.items()):
            entropy_rows.append({"layer": layer, "tau": pattern.tau, "entropy": value})
        row = {
            "tau": pattern.tau,
            "pattern": pattern.label,
            "one_minus_cosine": 1.0 - float(mean_cosine(hidden_full[-1][0], hidden[-1][0])),
            "entropy": float(np.mean(list(seen.values()))),
            "kl": np.nan,
            "kl_max": np.nan,
            "top1_kept": np.nan,
            "loss_imposed": np.nan,
            "loss_full": np.nan,
        }
        if logits_full is not None:
            per_position = kl_divergence(logits_full[0], logits[0])
            row.update(
                kl=float(per_position.mean()), kl_max=float(per_position.max()), top1_kept=float(top1_kept(logits_full[0], logits[0]))
            )
            ids = inputs.get("decoder_input_ids", inputs["input_ids"])[0]
            if len(ids) > 1:
                row.update(loss_imposed=float(next_token_loss(logits[0], ids)), loss_full=float(next_token_loss(logits_full[0], ids)))
        rows.append(row)
    entropy = pd.DataFrame(entropy_rows)
    # uniform rows over the keys each query may see: log n (bidirectional) or the mean of log(i + 1) (causal)
    entropy["max_entropy"] = float(np.mean(np.log(np.arange(1, n + 1)))) if causal else float(np.log(n))
    summary = pd.DataFrame(rows)
    return ScaleSweep(summary, entropy, lm.spec.head_dim or lm.spec.d_model // lm.spec.n_heads, scale_line(summary, lm.spec.head_dim))
