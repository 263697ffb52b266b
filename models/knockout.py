"""Knock heads or single query→key edges out through the attention hook, and see what changes.

A plan is a list of heads ``(layer, head)`` and edges ``(layer, head, query, key)`` (real-token
positions of text 0, 0-based). Through ``models.hook.intervening`` the head's output at the chosen
layer is replaced: ``"zero"`` removes it (head) or zeroes the edge's weight and renormalises the row;
``"mean"`` replaces the head's output by its mean over the text's positions (mean ablation), or the
edge's weight by the row's mean weight over its allowed keys, renormalised. Nothing else changes: an
empty plan reproduces the model's outputs bit for bit.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from attnscope.analysis.attention import attention_rows
from attnscope.analysis.effects import kl_divergence, mean_cosine, next_token_loss
from attnscope.models.forward import run, tokenize
from attnscope.models.hook import AttentionCall, intervening
from attnscope.models.loaded import LoadedModel, input_device
from attnscope.models.readout import lm_head
from attnscope.models.record import ForwardRecord

__all__ = ["Ablation", "ablation_edits", "check_plan", "head_importance", "knockout", "KnockoutResult", "MODES"]


MODES = ("zero", "mean")


@dataclass(frozen=True)
class Ablation:
    """What to knock out. heads: (layer, head); edges: (layer, head, query, key) over padded positions."""

    heads: tuple[tuple[int, int], ...] = ()
    edges: tuple[tuple[int, int, int, int], ...] = ()
    mode: str = "zero"
    rows: tuple[int, ...] | None = None  # batch rows the plan applies to (None: all)


def ablation_edits(plan: Ablation, kv_group: int) -> dict[int, Callable[[AttentionCall], torch.Tensor]]:
    """The edits, by block: each replaces the chosen heads' outputs (and edges) of its block."""
    heads: dict[int, list[int]] = {}
    for layer, head in plan.heads:
        heads.setdefault(layer, []).append(head)
    edges: dict[int, list[tuple[int, int, int]]] = {}
    for layer, head, q, k in plan.edges:
        edges.setdefault(layer, []).append((head, q, k))

    def edit(call: AttentionCall, heads: list[int], edges: list[tuple[int, int, int]]) -> torch.Tensor:
        out = call.output.clone()  # [B, q, H, dv]
        rows = slice(None) if plan.rows is None else list(plan.rows)
        for head in heads:
            if plan.mode == "zero":
                out[rows, :, head] = 0
            else:
                out[rows, :, head] = call.output[rows, :, head].mean(dim=1, keepdim=True)
        for head, q, k in edges:
            for b in range(out.shape[0]) if plan.rows is None else plan.rows:
                w = attention_rows(call, batch=b, heads=torch.tensor([head]), rows=torch.tensor([q]))[0, 0]  # [k]
                allowed = w > 0
                w = w.clone()
                w[k] = 0.0 if plan.mode == "zero" else 1.0 / max(int(allowed.sum()), 1)
                w = w / w.sum().clamp_min(1e-30)
                v = call.value[b, head // kv_group].float()  # [k, dv]
                out[b, q, head] = (w @ v).to(out.dtype)
        return out

    return {layer: functools.partial(edit, heads=heads.get(layer, []), edges=edges.get(layer, [])) for layer in sorted({*heads, *edges})}


@dataclass
class KnockoutResult:
    """Before and after one knockout on one text."""

    plan: Ablation
    before: ForwardRecord
    after: ForwardRecord
    kl: float | None  # KL(before || after) of the next-token distribution at the last position (decoders)
    top_before: pd.DataFrame | None  # token, prob (top 5)
    top_after: pd.DataFrame | None
    target: str | None  # the token the model predicted before (its probability before and after)
    target_prob_before: float | None
    target_prob_after: float | None
    hidden_cosine: float  # cosine of the last layer's hidden state, last position (decoders) or mean over tokens
    layer_change: np.ndarray = field(default_factory=lambda: np.zeros(0))  # per layer: 1 - mean cosine of hidden states

    def summary(self) -> dict:
        return {
            "heads": [list(h) for h in self.plan.heads],
            "edges": [list(e) for e in self.plan.edges],
            "mode": self.plan.mode,
            "kl": self.kl,
            "target": self.target,
            "target_prob_before": self.target_prob_before,
            "target_prob_after": self.target_prob_after,
            "hidden_cosine": self.hidden_cosine,
            "top_before": None if self.top_before is None else self.top_before.to_dict("records"),
            "top_after": None if self.top_after is None else self.top_after.to_dict("records"),
            "layer_change": [float(x) for x in self.layer_change],
        }


def check_plan(lm: LoadedModel, rec: ForwardRecord, heads=(), edges=(), mode: str = "zero") -> Ablation:
    """Validate a plan against a record of text 0; edges given over real tokens become padded positions."""
    spec = lm.spec
    if spec.recording == "materialised":
        msg = f"{spec.model_type} is materialised (no recording hook), so attnscope cannot intervene on its heads"
        raise ValueError(msg)
    if spec.kind == "encoder-decoder":
        msg = "knockout works on decoder-only and encoder-only models"
        raise ValueError(msg)
    if mode not in MODES:
        msg = f"mode must be one of {', '.join(MODES)}, not {mode!r}"
        raise ValueError(msg)
    if not heads and not edges:
        msg = "nothing to knock out: give heads (layer.head) or edges (layer.head:query>key)"
        raise ValueError(msg)
    for layer, head in [(h[0], h[1]) for h in heads] + [(e[0], e[1]) for e in edges]:
        if not 0 <= layer < spec.n_layers or layer not in rec.attention_layers:
            msg = f"layer {layer} out of range; {spec.name} has attention layers 0..{spec.n_layers - 1} (0-based)"
            raise ValueError(msg)
        if not 0 <= head < spec.n_heads:
            msg = f"head {head} out of range; {spec.name} has heads 0..{spec.n_heads - 1} (0-based)"
            raise ValueError(msg)
    real = rec.real_index(0)
    padded_edges = []
    for layer, head, q, k in edges:
        if not (0 <= q < len(real) and 0 <= k < len(real)):
            msg = f"edge {q}>{k}: positions must lie in 0..{len(real) - 1} (0-based tokens of the text)"
            raise ValueError(msg)
        if not rec.allowed(layer)[q, k]:
            msg = f"edge {q}>{k} in layer {layer}: the mask forbids token {q} to attend to token {k} (its weight is already 0)"
            raise ValueError(msg)
        padded_edges.append((int(layer), int(head), int(real[q]), int(real[k])))
    return Ablation(heads=tuple((int(a), int(b)) for a, b in heads), edges=tuple(padded_edges), mode=mode)


def _top(probs: np.ndarray, tok, k: int = 5) -> pd.DataFrame:
    ids = np.argsort(-probs)[:k]
    return pd.DataFrame({"token": tok.convert_ids_to_tokens(ids.tolist()), "prob": probs[ids].astype(float)})


def knockout(lm: LoadedModel, text: str, heads=(), edges=(), mode: str = "zero") -> KnockoutResult:
    """Run ``text`` with chosen heads or edges knocked out and compare with the untouched run.

    Args:
        heads: (layer, head) pairs. edges: (layer, head, query, key), token positions of the text (0-based).
        mode: "zero" (remove / zero and renormalise) or "mean" (mean-ablate).
    Returns:
        KnockoutResult: next-token KL and top-5 before/after (decoders), the last hidden state's cosine, per-layer
        change, and both records (``after`` holds the maps downstream of the knockout).
    """
    before = run(lm, text)
    plan = check_plan(lm, before, heads, edges, mode)
    with intervening(ablation_edits(plan, lm.spec.kv_group), lm.module_names):
        after = run(lm, text)
    kl = top_b = top_a = target = p_b = p_a = None
    if lm_head(lm) is not None:
        logits_b, logits_a = torch.from_numpy(before.logits(lm)[-1]), torch.from_numpy(after.logits(lm)[-1])
        kl = float(kl_divergence(logits_b, logits_a))
        pb, pa = torch.softmax(logits_b.double(), -1).numpy(), torch.softmax(logits_a.double(), -1).numpy()
        top_b, top_a = _top(pb, lm.tokenizer), _top(pa, lm.tokenizer)
        best = int(pb.argmax())
        target, p_b, p_a = lm.tokenizer.convert_ids_to_tokens(best), float(pb[best]), float(pa[best])
    change = []
    for layer in range(lm.spec.n_layers + 1):
        hb, ha = torch.from_numpy(before.hidden(layer)), torch.from_numpy(after.hidden(layer))
        change.append(float(1 - mean_cosine(hb, ha)))
    hb, ha = torch.from_numpy(before.hidden(lm.spec.n_layers)), torch.from_numpy(after.hidden(lm.spec.n_layers))
    if lm.spec.kind == "decoder":
        cosine = float(mean_cosine(hb[-1:], ha[-1:]))  # the last token: the one the next prediction reads
    else:
        cosine = float(mean_cosine(hb, ha))
    return KnockoutResult(plan, before, after, kl, top_b, top_a, target, p_b, p_a, cosine, np.array(change))


def head_importance(lm: LoadedModel, text: str, batch_size: int = 32) -> pd.DataFrame:
    """For every head, what knocking it out (zeroing its output) does to the text.

    Decoders: the change in the text's next-token loss (mean cross-entropy of each next token), positive =
    the head helps. Encoders: 1 − mean cosine of the last hidden states. Heads are knocked out one per batch
    row, ``batch_size`` variants per forward.

    Returns:
        DataFrame per (layer, head): layer, head, loss (after; decoders), delta.
    """
    spec = lm.spec
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        msg = f"batch size must be a whole number >= 1 (knocked-out variants per forward), not {batch_size!r}"
        raise ValueError(msg)
    if spec.recording == "materialised":
        msg = f"{spec.model_type} is materialised (no recording hook), so attnscope cannot intervene on its heads"
        raise ValueError(msg)
    if spec.kind not in ("decoder", "encoder"):
        msg = "head importance works on decoder-only and encoder-only models"
        raise ValueError(msg)
    enc, _ = tokenize(lm, text)
    device = input_device(lm.model)
    ids = enc["input_ids"].to(device)
    if ids.shape[1] < 2:
        msg = "the text needs at least 2 tokens"
        raise ValueError(msg)
    layers = [layer for layer, rec in enumerate(run(lm, text).layers) if rec is not None]
    pairs = [(layer, head) for layer in layers for head in range(spec.n_heads)]

    def forward(batch_ids: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            if spec.kind == "decoder":
                return next_token_loss(lm.model(input_ids=batch_ids, use_cache=False).logits, batch_ids)  # [b]
            return lm.model(input_ids=batch_ids).last_hidden_state.float()  # [b, n, d]

    base = forward(ids)
    rows = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        by_layer: dict[int, list[tuple[int, int]]] = {}
        for row, (layer, head) in enumerate(chunk):
            by_layer.setdefault(layer, []).append((row, head))

        def zero(call: AttentionCall, cells: list[tuple[int, int]]) -> torch.Tensor:
            out = call.output.clone()
            for row, head in cells:  # each batch row knocks out its own head
                out[row, :, head] = 0
            return out

        edits = {layer: functools.partial(zero, cells=cells) for layer, cells in by_layer.items()}
        with intervening(edits, lm.module_names):
            result = forward(ids.expand(len(chunk), -1))
        for row, (layer, head) in enumerate(chunk):
            if spec.kind == "decoder":
                loss = float(result[row])
                rows.append({"layer": layer, "head": head, "loss": loss, "delta": loss - float(base[0])})
            else:
                cos = mean_cosine(result[row], base[0])
                rows.append({"layer": layer, "head": head, "loss": math.nan, "delta": float(1 - cos)})
    return pd.DataFrame(rows)
