"""Gradient attributions of one prediction to the input tokens.

Three methods, each giving one signed score per input token (positive = supports the target):

- ``input_x_gradient``: Σ_d x_d · ∂f/∂x_d over each token's word embedding x (Captum's ``InputXGradient``).
- ``integrated_gradients`` (Sundararajan et al. 2017): Σ_d (x − x')_d · ∫ ∂f/∂x_d along the straight
  path from the baseline x' to x (Captum's ``IntegratedGradients``, Gauss–Legendre, ``steps`` points).
  The baseline is the pad embedding with special tokens and a decoder's first token kept by default
  (``baseline_embeddings`` offers the mean, UNK and zero embeddings too); position (and token-type) embeddings
  are still added by the model, as they are not part of the word embedding. Completeness: the scores sum to
  f(x) − f(x') up to the integration error, which ``meta`` reports; by default the steps double (32 to 256)
  until that error is at most 5% of |f(x) − f(x')|.
- ``grad_attention`` (Chefer et al. 2021): per attention layer Ā_l = mean_h[(∇A ⊙ A)⁺], rolled out as
  R ← R + Ā_l·R from R₀ = I; the target's row of the last R gives the scores (all ≥ 0).

What f is (``Target``):

- a decoder with a language-model head: the log-probability of the model's top next token after
  ``position`` (default the last token), read at that position;
- an encoder (or a model without a head), ``position=None``: the sentence embedding — the mean of the last
  hidden states over the text's tokens, as sentence-transformers' MiniLM is trained — projected on its own
  unit direction: f(x') = e(x')·ê(x), with ê(x) fixed from the clean text;
- an encoder with ``position=P``: token P's final representation projected on its own unit direction.

The gradients come from ``torch.autograd`` on word embeddings passed as ``inputs_embeds`` (looked up by
calling the embedding module; no hook is registered, no ``.grad`` is written on a parameter, the model
stays in eval mode). ``grad_attention`` gets differentiable attention weights through the one attention
hook (``models.hook.intervening``): each block's edit recomputes the weights from the call's query, key,
mask and scaling exactly as eager does (``analysis.attention``) and returns weights @ values as the
attention output.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, cast

import numpy as np
import torch

from attnscope.analysis.attention import attention_scores, sink_rows
from attnscope.models.forward import tokenize
from attnscope.models.hook import AttentionCall, intervening
from attnscope.models.labels import decoded_labels
from attnscope.models.limits import check_run
from attnscope.models.loaded import LoadedModel, input_device
from attnscope.models.readout import lm_head
from attnscope.models.spec import GRADIENT_METHODS
from attnscope.models.value_zeroing import check_supported

__all__ = [
    "METHODS",
    "Attribution",
    "Method",
    "Target",
    "attention_weights",
    "gradient_attribution",
    "explained_target",
    "prediction_line",
    "prediction_target",
    "final_states",
    "next_token_logits",
]

Method = Literal["input_x_gradient", "integrated_gradients", "grad_attention"]
METHODS: tuple[Method, ...] = cast(tuple[Method, ...], GRADIENT_METHODS)
TargetKind = Literal["next_token", "sentence_embedding", "token_representation"]

# Rows x tokens per backward pass of integrated gradients: bounds the activations kept for the backward
# (SmolLM2: ~1.5 MB per token over its 30 layers, ~1.6 GB per chunk) while batching the interpolation steps.
GRADIENT_TOKENS = 1024


@dataclass(frozen=True)
class Target:
    """What an attribution explains, in one line a page can show."""

    kind: TargetKind
    position: int | None  # a token position (0-based, the text's tokens), or None for the sentence embedding
    token_id: int | None  # next_token: the explained token's id (the model's top token unless one was asked for)
    token: str | None  # next_token: the explained token (the tokenizer's raw piece)
    description: str
    predicted: str | None = None  # next_token: the explained token decoded (" Mary")
    probability: float | None = None  # next_token: its probability at the predicting position
    input_label: str | None = None  # the input token at ``position`` as the user typed it ("to")
    contrast_id: int | None = None  # "token rather than contrast": f is their logit difference (Yin & Neubig 2022)
    contrast: str | None = None  # the contrast token decoded (" John")

    def facts(self) -> dict:
        """What is explained, for a CLI's ``meta`` and exports: the kind, the position and its input token, and for a
        next-token target the token decoded, its probability and the contrast if any."""
        out: dict[str, object] = {"target_kind": self.kind, "target_position": self.position, "target_input_token": self.input_label}
        if self.kind == "next_token":
            out.update(predicted_token=self.predicted, predicted_token_id=self.token_id, predicted_probability=self.probability)
            if self.contrast_id is not None:
                out.update(contrast_token=self.contrast, contrast_token_id=self.contrast_id)
        return out


@dataclass(frozen=True)
class Attribution:
    """One method's input-token attribution of one prediction."""

    tokens: list[str]  # the text's tokens (special tokens included)
    scores: np.ndarray  # float32 [n], signed; positive = supports the target
    target: Target
    relevance: np.ndarray | None = None  # grad_attention: float32 [L, n, n], R after each attention layer
    meta: dict = field(default_factory=dict)  # method, steps, completeness, baseline, target


def _check_position(position, n: int) -> None:
    if position is None:
        return
    if isinstance(position, bool) or not isinstance(position, (int, np.integer)) or not 0 <= position < n:
        msg = f"position {position!r} out of range; the text has {n} tokens (0..{n - 1}, 0-based)"
        raise ValueError(msg)


def final_states(lm: LoadedModel, extra: dict[str, torch.Tensor], **inputs) -> torch.Tensor:
    """The model's last hidden states (a decoder's after its final norm) for ``inputs`` (``input_ids`` or
    ``inputs_embeds`` with their ``attention_mask``). [B, n, d]"""
    if lm.spec.kind == "decoder":
        return lm.forward_module()(**inputs, **extra, use_cache=False).last_hidden_state
    return lm.model(**inputs, **extra).last_hidden_state


def next_token_logits(lm: LoadedModel, states: torch.Tensor) -> torch.Tensor:
    """Next-token logits of final states [..., d] through the model's unembedding. [..., vocab]"""
    head = lm_head(lm)
    if head is None:
        msg = f"{lm.spec.name} has no language-model head to read next-token logits from"
        raise ValueError(msg)
    weight = next(head.parameters())
    return lm.layout.softcapped(head(states.to(weight.dtype)).float())


def single_token(lm: LoadedModel, text: str, what: str) -> int:
    """The id of a token the user typed (e.g. " Mary"); one clear error when the text is not one token."""
    from attnscope.models.encoding import token_ids

    if not isinstance(text, str) or not text:
        msg = f"{what} is empty; type the token to explain, e.g. ' Mary' (a leading space matters for most decoders)"
        raise ValueError(msg)
    ids = token_ids(lm.tokenizer, text)
    if len(ids) != 1:
        pieces = lm.tokenizer.convert_ids_to_tokens(ids)
        hint = "without" if text.startswith(" ") else "with"
        msg = f"{what} {text!r} is {len(ids)} tokens for this model ({', '.join(map(repr, pieces))}); give one token (try it {hint} a leading space)"
        raise ValueError(msg)
    return int(ids[0])


def prediction_target(
    lm: LoadedModel,
    input_ids: torch.Tensor,
    position: int | None,
    extra: dict | None = None,
    *,
    target_token: str | None = None,
    contrast: str | None = None,
):
    """The prediction to explain, read from one clean forward of ``input_ids`` [1, n].

    Args:
        target_token: a decoder's token to explain instead of its top next token (as typed, e.g. " Mary").
        contrast: explain ``target_token`` (or the top token) *rather than* this one: f becomes their logit
            difference.
    Returns:
        (Target, reference): ``reference`` is the clean representation [d] an encoder's f projects on
        (the sentence embedding, or token ``position``'s final state); None for a decoder's next token.
    """
    spec = lm.spec
    if spec.kind == "encoder-decoder":
        msg = f"attributions work on decoder-only and encoder-only models; {spec.name} is an encoder-decoder model"
        raise ValueError(msg)
    n = int(input_ids.shape[1])
    _check_position(position, n)
    ids = input_ids[0].tolist()
    labels = decoded_labels(lm.tokenizer, ids)
    extra = extra or {}
    mask = torch.ones_like(input_ids)
    asked = target_token is not None or contrast is not None
    if asked and lm_head(lm) is None:
        msg = "a target token or a contrast applies to a decoder's next-token prediction; this model has no language-model head"
        raise ValueError(msg)
    chosen = None if target_token is None else single_token(lm, target_token, "the target token")
    against = None if contrast is None else single_token(lm, contrast, "the contrast token")
    with torch.inference_mode():
        states = final_states(lm, extra, input_ids=input_ids, attention_mask=mask)[0]  # [n, d]
        if lm_head(lm) is not None:
            at = n - 1 if position is None else int(position)
            logits = next_token_logits(lm, states[at]).float()  # [V]
            best = int(logits.argmax()) if chosen is None else chosen
            probability = float(torch.softmax(logits, dim=-1)[best])
            token = lm.tokenizer.convert_ids_to_tokens(best)
            predicted = lm.tokenizer.decode([best], skip_special_tokens=False, clean_up_tokenization_spaces=False)
            description = prediction_line(predicted, probability, at, labels[at])
            if chosen is not None and chosen != int(logits.argmax()):
                description = description.replace("predicts", "explains the asked-for", 1)
            if against is None:
                return Target("next_token", at, best, token, description, predicted, probability, labels[at]), None
            if against == best:
                msg = f"the contrast {contrast!r} is the explained token itself; choose another token to contrast with"
                raise ValueError(msg)
            other = lm.tokenizer.decode([against], skip_special_tokens=False, clean_up_tokenization_spaces=False)
            description += f", rather than {other!r} (f = the logit difference)"
            target = Target("next_token", at, best, token, description, predicted, probability, labels[at], against, other)
            return target, None
        if position is None:
            description = (
                "the sentence embedding (mean of the last hidden states over the text's tokens) projected on its own direction, e(x')·ê(x)"
            )
            return Target("sentence_embedding", None, None, None, description), states.mean(0).float()
        description = f"token {position} ({labels[position]!r})'s final representation projected on its own direction, h(x')·ĥ(x)"
        return Target("token_representation", int(position), None, None, description, input_label=labels[position]), states[
            int(position)
        ].float()


def explained_target(lm: LoadedModel, text: str, position: int | None) -> Target:
    """``prediction_target`` of a text: what a method explains at ``position`` (one clean forward)."""
    enc, _ = tokenize(lm, text)
    device = input_device(lm.model)
    extra = {name: value.to(device) for name, value in enc.items() if name == "token_type_ids"}
    return prediction_target(lm, enc["input_ids"].to(device), position, extra)[0]


def prediction_line(predicted: str, probability: float, position: int, input_label: str) -> str:
    """What a next-token target is, in one line: "predicts ' Mary' (p = 0.41) after position 13 ('to')"."""
    return f"predicts {predicted!r} (p = {probability:.2f}) after position {position} ({input_label!r})"


def _objective(lm: LoadedModel, target: Target, reference: torch.Tensor | None, extra: dict) -> Callable[[torch.Tensor], torch.Tensor]:
    """f(word embeddings [B, n, d]) -> [B]: the target's value for each row."""
    direction = None if reference is None else reference / reference.norm().clamp_min(1e-12)

    def f(embeds: torch.Tensor) -> torch.Tensor:
        batch = embeds.shape[0]
        rows = {name: value.expand(batch, -1) for name, value in extra.items()}
        mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
        states = final_states(lm, rows, inputs_embeds=embeds, attention_mask=mask)  # [B, n, d]
        if target.kind == "next_token":
            logits = next_token_logits(lm, states[:, target.position])  # [B, vocab]
            if target.contrast_id is not None:  # "A rather than B": the logit difference
                return logits[:, target.token_id] - logits[:, target.contrast_id]
            return torch.log_softmax(logits, dim=-1)[:, target.token_id]
        pooled = states.mean(1) if target.kind == "sentence_embedding" else states[:, target.position]  # [B, d]
        assert direction is not None  # an encoder's target has its clean representation
        return pooled.float() @ direction.to(pooled.device)

    return f


def attention_weights(call: AttentionCall) -> torch.Tensor:
    """The call's attention weights, differentiable: softmax(q·kᵀ·scale + mask) as eager computes it
    (soft-capping, grouped-query heads, learned sinks in the denominator). float32 [B, H, q, k].

    Queries are the keys' positions (a forward without a KV cache).
    """
    n_batch, n_heads, n_queries = call.query.shape[0], call.query.shape[1], call.query.shape[2]
    heads, rows = torch.arange(n_heads), torch.arange(n_queries)
    out = []
    for batch in range(n_batch):
        scores = attention_scores(call, batch=batch, heads=heads, rows=rows)  # [H, q, k]
        if call.sinks is None:
            out.append(torch.softmax(scores, dim=-1))
        else:  # the sink joins the softmax as one more logit, then is dropped
            sink = sink_rows(call.sinks, batch=batch, heads=heads, rows=rows).to(scores.device)  # [H, q, 1]
            out.append(torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1)[..., :-1])
    return torch.stack(out)


def _reattend(call: AttentionCall, kept: list[torch.Tensor]) -> torch.Tensor:
    """An edit: the attention output recomputed as weights @ values from differentiable weights (kept)."""
    weights = attention_weights(call)  # [B, H, q, k]
    kept.append(weights)
    group = weights.shape[1] // call.value.shape[1]
    value = call.value.repeat_interleave(group, dim=1)  # [B, H, k, dv]
    return torch.matmul(weights.to(value.dtype), value).transpose(1, 2)  # [B, q, H, dv]


def _grad_attention(lm, f, embeds, target: Target) -> tuple[np.ndarray, np.ndarray]:
    check_supported(lm, "attention × gradient")
    layers = list(lm.spec.attention_layers) or list(range(lm.spec.n_layers))
    kept: list[torch.Tensor] = []

    def edit(call: AttentionCall) -> torch.Tensor:
        return _reattend(call, kept)

    with intervening(dict.fromkeys(layers, edit), lm.module_names):
        value = f(embeds.requires_grad_(True))  # [1]
    grads = torch.autograd.grad(value.sum(), kept)
    n = embeds.shape[1]
    rollout = torch.eye(n, dtype=torch.float32)  # R₀ = I
    relevance = []
    for weights, grad in zip(kept, grads):
        mixed = (grad[0].float() * weights[0].detach().float()).clamp(min=0).mean(0).cpu()  # Ā_l [n, n]
        rollout = rollout + mixed @ rollout
        relevance.append(rollout)
    stack = torch.stack(relevance).numpy().astype(np.float32)  # [L, n, n]
    last = stack[-1]
    scores = last.mean(0) if target.kind == "sentence_embedding" else last[target.position]
    return scores.astype(np.float32), stack


Baseline = Literal["pad", "mean", "unk", "zero"]
BASELINES: tuple[Baseline, ...] = ("pad", "mean", "unk", "zero")
# The default: Captum's BERT tutorial's reference (special tokens kept, pad elsewhere), with a decoder's first token
# kept too (its attention sink): on SmolLM2 the path from zero or all-UNK embeddings crosses the thresholds where the
# first token's massive activations switch on, which no practical number of steps integrates (docs/explain.md).
DEFAULT_BASELINE: Baseline = "pad"
# Integrated gradients' steps by default: start at STEPS_START, double while the completeness gap is above
# COMPLETENESS_TARGET of |f(x) − f(x')|, stop at STEPS_MAX (meta says how many were used and whether it added up).
STEPS_START = 32
STEPS_MAX = 256
COMPLETENESS_TARGET = 0.05


def kept_positions(lm: LoadedModel, ids: torch.Tensor) -> torch.Tensor:
    """bool [n]: the positions the "pad" baseline keeps at their own embedding: special tokens ([CLS], [SEP], BOS, ...)
    and a decoder's first token (the attention sink every later token leans on)."""
    specials = set(lm.tokenizer.all_special_ids)
    kept = torch.tensor([int(t) in specials for t in ids[0].tolist()], dtype=torch.bool)
    if lm.spec.kind == "decoder" and len(kept):
        kept[0] = True
    return kept


def baseline_embeddings(lm: LoadedModel, ids: torch.Tensor, embeds: torch.Tensor, baseline: str) -> tuple[torch.Tensor, str]:
    """Integrated gradients' baseline x' for word embeddings ``embeds`` [1, n, d], and what it is in words.

    "pad" (the default): the padding token's embedding, with special tokens and a decoder's first token kept as they
    are (Captum's BERT tutorial builds its reference so; a tokenizer without a pad token uses the mean embedding);
    "mean": the mean of the embedding matrix at every position; "unk": the unknown token's embedding at every
    position (inseq's default); "zero": all-zero embeddings (Captum's default; with a scale-invariant norm the
    model's output jumps near the origin). ``meta["completeness_share"]`` says how far the attributions are from
    adding up, whichever is chosen.
    """
    if baseline not in BASELINES:
        msg = f"unknown baseline {baseline!r}; use one of {', '.join(BASELINES)}"
        raise ValueError(msg)
    table = torch.as_tensor(lm.model.get_input_embeddings().weight).detach()  # [vocab, d]
    if baseline == "zero":
        return torch.zeros_like(embeds), "all-zero word embeddings"
    mean = table.mean(0).to(embeds.dtype)
    if baseline == "mean":
        return mean.expand_as(embeds).clone(), "the mean word embedding at every position"
    if baseline == "unk":
        if lm.tokenizer.unk_token_id is None:
            msg = "this tokenizer has no unk token; use baseline='pad' or 'mean'"
            raise ValueError(msg)
        return table[lm.tokenizer.unk_token_id].to(embeds.dtype).expand_as(embeds).clone(), "the unk token's embedding at every position"
    pad = lm.tokenizer.pad_token_id
    fill, what = (mean, "the mean word embedding") if pad is None else (table[pad].to(embeds.dtype), "the pad token's embedding")
    start = fill.expand_as(embeds).clone()
    kept = kept_positions(lm, ids).to(embeds.device)
    start[:, kept] = embeds[:, kept]
    where = "special tokens" + (" and the first token" if lm.spec.kind == "decoder" else "")
    return start, f"{what} at every position but the {where}, kept as they are"


def gradient_attribution(
    lm: LoadedModel,
    text: str,
    method: str,
    position: int | None = None,
    steps: int | None = None,
    baseline: str = DEFAULT_BASELINE,
    *,
    target_token: str | None = None,
    contrast: str | None = None,
) -> Attribution:
    """Attribute one prediction of ``text`` to its input tokens with a gradient method.

    Args:
        lm: from ``load``; a decoder-only or encoder-only model (``grad_attention`` also needs the attention
            hook, so a materialised model is refused).
        text: one text.
        method: "input_x_gradient", "integrated_gradients" or "grad_attention".
        position: decoders: the prediction after this token (0-based; default the last token); encoders:
            None = the sentence embedding, P = token P's representation (see the module docstring).
        steps: integrated gradients' interpolation points (Gauss–Legendre); None (the default): STEPS_START,
            doubled while the completeness gap is above COMPLETENESS_TARGET of |f(x) − f(x')|, at most STEPS_MAX
            (``meta`` gives the steps used and whether the target was reached).
        baseline: integrated gradients' baseline (``baseline_embeddings``: pad, mean, unk or zero).
        target_token, contrast: a decoder's token to explain instead of the top one, and one to explain it
            against (f = their logit difference); see ``prediction_target``.
    Returns:
        Attribution: tokens, scores float32 [n] (tokens after a decoder's position score 0: a causal model
        cannot read them), target, relevance (grad_attention: [L, n, n]), meta.
    """
    if method not in METHODS:
        msg = f"unknown attribution method {method!r}; use one of {', '.join(METHODS)}"
        raise ValueError(msg)
    if method == "integrated_gradients" and steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        msg = f"steps must be a whole number >= 1 (integrated gradients' interpolation points), not {steps!r}"
        raise ValueError(msg)
    enc, _ = tokenize(lm, text)
    device = input_device(lm.model)
    ids = enc["input_ids"].to(device)  # [1, n]
    n = int(ids.shape[1])
    check_run(lm, 1, n, padded=False)
    extra = {name: value.to(device) for name, value in enc.items() if name == "token_type_ids"}
    target, reference = prediction_target(lm, ids, position, extra, target_token=target_token, contrast=contrast)
    if method == "grad_attention":
        check_supported(lm, "attention × gradient")
    f = _objective(lm, target, reference, extra)
    tokens = lm.tokenizer.convert_ids_to_tokens(ids[0].tolist())
    meta: dict = {"method": method, "target": target.description, **target.facts()}
    with torch.no_grad():
        embeds = lm.model.get_input_embeddings()(ids).detach()  # [1, n, d] word embeddings
    relevance = None
    with torch.inference_mode(False), torch.enable_grad():
        if method == "grad_attention":
            scores, relevance = _grad_attention(lm, f, embeds.clone(), target)
        elif method == "input_x_gradient":
            from captum.attr import InputXGradient

            attr = InputXGradient(f).attribute(embeds.clone().requires_grad_(True))  # [1, n, d]
            scores = attr[0].sum(-1).detach().float().cpu().numpy()
        else:
            start, described = baseline_embeddings(lm, ids, embeds, baseline)
            scores, facts = _integrated_gradients(f, embeds, start, steps, n)
            meta.update(baseline=f"{described} (position and token-type embeddings still added by the model)", **facts)
    return Attribution(tokens=tokens, scores=np.asarray(scores, dtype=np.float32), target=target, relevance=relevance, meta=meta)


def _integrated_gradients(f, embeds: torch.Tensor, start: torch.Tensor, steps: int | None, n: int) -> tuple[np.ndarray, dict]:
    """Captum's integrated gradients from ``start`` to ``embeds`` [1, n, d]: scores [n] and the completeness facts.

    ``steps`` None: adaptive (STEPS_START doubled while the gap is above COMPLETENESS_TARGET, at most STEPS_MAX)."""
    from captum.attr import IntegratedGradients

    with torch.no_grad():
        ends = f(torch.cat([embeds, start])).double().cpu()  # f(x), f(baseline)
    gap = float(ends[0] - ends[1])
    chunk = max(1, GRADIENT_TOKENS // n)
    tried: list[int] = []
    count = STEPS_START if steps is None else steps
    while True:
        attr = IntegratedGradients(f).attribute(
            embeds.clone().requires_grad_(True), baselines=start, n_steps=count, method="gausslegendre", internal_batch_size=chunk
        )
        total = float(attr.detach().double().sum())
        share = abs(total - gap) / abs(gap) if gap else float("inf")
        tried.append(count)
        if steps is not None or share <= COMPLETENESS_TARGET or count * 2 > STEPS_MAX:
            break
        count *= 2
    facts = {
        "steps": count,
        "steps_tried": tried,
        "steps_rule": "fixed"
        if steps is not None
        else f"doubled from {STEPS_START} while the gap was above {COMPLETENESS_TARGET:.0%}, at most {STEPS_MAX}",
        "integration": "Gauss-Legendre",
        "f_input": float(ends[0]),
        "f_baseline": float(ends[1]),
        "f_difference": gap,
        "completeness": abs(total - gap),
        "completeness_share": share,
        "adds_up": bool(share <= COMPLETENESS_TARGET),
        "attribution_sum": total,
    }
    return attr[0].sum(-1).detach().float().cpu().numpy(), facts
