"""Which input tokens a representation or a prediction drew on: every context-mixing and gradient method, one call.

``contributions(lm, text, method)`` returns per-layer maps (mixing methods), their rollout and one
input-token attribution for a target:

- decoders with an LM head: the model's top next token at ``position`` (default the last token); a
  mixing method's attribution is that query's row of the rollout after the last layer;
- encoders: the sentence embedding (the mean of the last hidden states, as sentence-transformers'
  MiniLM is trained), or token ``position``'s representation; a mixing method's attribution is the mean
  of the rollout's rows (or row ``position``).

The decomposition-based maps (``norm``, ``norm_res_ln``, ``alti``) are computed from one recorded forward
with values kept (``analysis.contributions``); the block layout (Pre-LN or Post-LN, and the norm after
the attention) is read from the model's layout (``models.architecture``). ``value_zeroing`` and the gradient methods need
extra passes (``models.value_zeroing``, ``models.attribution``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from attnscope.analysis.attention import real_weight_chunks
from attnscope.analysis.contributions import Block, Norm, alti_map, norm_map, norm_res_ln_map, rolled, weight_map
from attnscope.models.architecture import NormFacts, output_layer
from attnscope.models.forward import run, tokenize
from attnscope.models.labels import text_labels
from attnscope.models.loaded import LoadedModel
from attnscope.models.record import ForwardRecord
from attnscope.models.spec import GRADIENT_METHODS, MIXING_METHODS

if TYPE_CHECKING:
    from attnscope.models.attribution import Target
    from attnscope.models.faithfulness import Faithfulness

__all__ = [
    "as_norm",
    "block_layout",
    "blocks",
    "check_method",
    "Contributions",
    "contributions",
    "DESCRIPTIONS",
    "explain",
    "explain_texts",
    "Explanation",
    "GRADIENT",
    "METHODS",
    "MIXING",
    "mixing_maps",
]


MIXING = MIXING_METHODS
GRADIENT = GRADIENT_METHODS
METHODS = MIXING + GRADIENT

# One line per method: what it computes, and where it comes from (pages and docs show these).
DESCRIPTIONS = {
    "weights": ("mean attention weight over heads", "https://arxiv.org/abs/2005.00928"),
    "norm": ("‖Σ_h α·W_O·v_j‖: the vector each key adds, by its norm (Kobayashi et al. 2020)", "https://arxiv.org/abs/2004.10102"),
    "norm_res_ln": ("the same with the residual and layer norm (Kobayashi et al. 2021)", "https://arxiv.org/abs/2109.07152"),
    "alti": ("ALTI: how close each token's term is to the block's output, L1 (Ferrando et al. 2022)", "https://arxiv.org/abs/2203.04212"),
    "value_zeroing": (
        "1 − cos of the block's output when a token's value is zeroed (Mohebbi et al. 2023)",
        "https://arxiv.org/abs/2301.12971",
    ),
    "input_x_gradient": ("gradient × input embedding, summed over dimensions", "https://arxiv.org/abs/1605.01713"),
    "integrated_gradients": (
        "integrated gradients from pad embeddings, steps doubled until they add up within 5% (Sundararajan et al. 2017)",
        "https://arxiv.org/abs/1703.01365",
    ),
    "grad_attention": ("attention × gradient, rolled out (Chefer et al. 2021)", "https://arxiv.org/abs/2103.15679"),
}


@dataclass(frozen=True)
class Contributions:
    """One method's view of one text. Token axes are the text's real tokens."""

    method: str
    tokens: list[str]
    attribution: np.ndarray  # float32 [n]: the input-token shares for the target
    target: str  # what the attribution explains, in one line
    position: int | None  # the target's position (None: an encoder's sentence embedding)
    maps: np.ndarray | None = None  # float32 [L, n, n] per layer (mixing methods), rows sum to 1
    rolled: np.ndarray | None = None  # float32 [L, n, n] rollout after each layer
    meta: dict = field(default_factory=dict)


def check_method(method: str) -> str:
    if method not in METHODS:
        msg = f"unknown method {method!r}; use one of {', '.join(METHODS)}"
        raise ValueError(msg)
    return method


def block_layout(lm: LoadedModel, module: str) -> Norm | None:
    """The norm after a block's attention (Post-LN), or None (Pre-LN: the values read normalised inputs).

    Read from ``lm.layout`` (``models.architecture``).

    Raises:
        ValueError: for blocks this decomposition does not cover (norms on the attention output, unknown layouts),
            with the layout's reason.
    """
    facts = lm.layout.block(module)
    if facts is None:
        msg = f"{lm.spec.model_type}: attention module {module!r} names no block, so its residual stream cannot be split by token"
        raise ValueError(msg)
    if facts.placement == "post" and facts.attention_norm is not None:
        return as_norm(lm, facts.attention_norm)
    if facts.placement == "pre":
        return None
    raise ValueError(facts.norm_reason)


def as_norm(lm: LoadedModel, facts: NormFacts) -> Norm:
    """A LayerNorm or RMSNorm of the model (``NormFacts`` from its layout) as a linearisable ``Norm``, on the CPU."""
    if not facts.has_weight or facts.eps is None:
        msg = f"attnscope cannot read the norm {facts.kind} (no weight or epsilon), so it cannot linearise it"
        raise ValueError(msg)
    module = lm.module(facts.name)
    bias = getattr(module, "bias", None)
    weight = getattr(module, "weight")  # noqa: B009  (a parameter, not a submodule, to the checker)
    return Norm(weight.detach().float().cpu(), None if bias is None else bias.detach().float().cpu(), facts.eps, rms=facts.rms)


def blocks(lm: LoadedModel, rec: ForwardRecord, batch: int = 0, *, layout: bool = True) -> list[Block]:
    """Every attention block of one recorded text (``run(..., values=True)``), over its real tokens.

    Args:
        layout: read the norm after each attention (needed by norm_res_ln and alti; ``norm`` does without).
    """
    spec = lm.spec
    real = torch.from_numpy(rec.real_index(batch))
    out = []
    for layer in rec.attention_layers:
        record = rec.layer_record(layer)
        if record.value is None:
            msg = "this record keeps no values; run it with run(..., values=True)"
            raise ValueError(msg)
        device = record.value.device
        heads = torch.arange(spec.n_heads, device=device) // spec.kv_group
        values = record.value[batch].index_select(0, heads)[:, real.to(device)].float()  # [H, n, dv]
        found = output_layer(lm.model, record.module, spec.n_heads * values.shape[-1])
        if found is None:
            msg = (
                f"attnscope could not find layer {layer}'s output projection in {spec.model_type}, so it cannot split what the heads write"
            )
            raise ValueError(msg)
        w_o, b_o = found
        weights = torch.cat(list(real_weight_chunks(record, batch=batch, real_index=real)), dim=1)  # [H, n, n]
        residual = rec.hidden_states[layer][batch][real.to(rec.hidden_states[layer].device)].float()
        out.append(
            Block(
                weights=weights.float().cpu(),
                values=values.cpu(),
                w_o=w_o.float().cpu(),
                b_o=None if b_o is None else b_o.float().cpu(),
                residual=residual.cpu(),
                norm=block_layout(lm, record.module) if layout else None,
            )
        )
    return out


_MAPS = {"weights": weight_map, "norm": norm_map, "norm_res_ln": norm_res_ln_map, "alti": alti_map}


def _check_model(lm: LoadedModel, method: str) -> None:
    spec = lm.spec
    if spec.kind == "encoder-decoder":
        msg = f"{spec.name} is an encoder-decoder model; contributions work on decoder-only and encoder-only models"
        raise ValueError(msg)
    if method != "weights" and spec.recording == "materialised":
        msg = f"{spec.model_type} is materialised (no recording hook): only the weights method works on it"
        raise ValueError(msg)


def mixing_maps(
    lm: LoadedModel, text: str, method: str, *, rec: ForwardRecord | None = None
) -> tuple[np.ndarray, np.ndarray, list[str], str]:
    """Per-layer maps and their rollout for a mixing method.

    Returns:
        (maps float32 [L, n, n], rolled float32 [L, n, n], tokens, what each map includes in one line).
    """
    check_method(method)
    if method not in MIXING:
        msg = f"{method} is a gradient method: it gives one attribution per target, not per-layer maps"
        raise ValueError(msg)
    _check_model(lm, method)
    post = False
    if method == "value_zeroing":
        from attnscope.models.value_zeroing import value_zeroing

        maps = torch.from_numpy(np.asarray(value_zeroing(lm, text), dtype=np.float32))
        tokens = run(lm, text).tokens[0] if rec is None else rec.tokens[0]
    else:
        rec = rec if rec is not None and (method == "weights" or rec.has_values) else None
        rec = rec or run(lm, text, values=method != "weights")
        tokens = rec.tokens[0]
        if method == "weights":
            real = torch.from_numpy(rec.real_index(0))
            maps = torch.stack(
                [
                    torch.cat(list(real_weight_chunks(rec.layer_record(layer), batch=0, real_index=real)), dim=1).mean(0).cpu()
                    for layer in rec.attention_layers
                ]
            )
        else:
            fn = _MAPS[method]
            parts = blocks(lm, rec, layout=method != "norm")
            post = any(part.norm is not None for part in parts)
            maps = torch.stack([fn(part) for part in parts])
    return maps.float().numpy(), rolled(maps, method).float().numpy(), tokens, _decomposed(method, post)


def _target_row(lm: LoadedModel, n: int, position: int | None) -> int | None:
    """The query row a mixing method's attribution reads (None: the mean of all rows)."""
    if position is None:
        return n - 1 if lm.spec.kind == "decoder" else None
    if isinstance(position, bool) or not isinstance(position, (int, np.integer)) or not 0 <= position < n:
        msg = f"position {position} out of range; this text has tokens 0..{n - 1} (0-based)"
        raise ValueError(msg)
    return int(position)


def contributions(
    lm: LoadedModel,
    text: str,
    method: str,
    position: int | None = None,
    *,
    steps: int | None = None,
    target_token: str | None = None,
    contrast: str | None = None,
    rec: ForwardRecord | None = None,
    prediction: Target | None = None,
) -> Contributions:
    """One method's maps (mixing methods) and input-token attribution for a target of ``text``.

    Args:
        method: one of ``METHODS``.
        position: the predicting position (decoders: the next token after it; default the last token) or the
            token whose representation is explained (encoders; default the sentence embedding).
        steps: integrated gradients' steps (None: doubled until the attributions add up, ``models.attribution``).
        rec: a recorded forward of ``text`` (``run(lm, text, values=True)``) for the mixing methods to reuse.
        prediction: a decoder's explained target at ``position`` (``explained_target``) to reuse; None reads it.
        target_token, contrast: a decoder's token to explain instead of the top one, and one to explain it
            against ("A rather than B", the logit difference). Gradient methods explain exactly that; mixing
            methods read the position's row, which is the same whatever token is asked for (``meta`` says so).
    """
    check_method(method)
    _check_model(lm, method)
    if method in GRADIENT:
        from attnscope.models.attribution import gradient_attribution

        att = gradient_attribution(lm, text, method, position=position, steps=steps, target_token=target_token, contrast=contrast)
        relevance = None if att.relevance is None else np.asarray(att.relevance, dtype=np.float32)
        return Contributions(
            method=method,
            tokens=list(att.tokens),
            attribution=np.asarray(att.scores, dtype=np.float32),
            target=att.target.description,
            position=att.target.position,
            rolled=relevance,
            meta={**att.meta, "method": method, "target": att.target.description},
        )
    maps, roll, tokens, decomposed = mixing_maps(lm, text, method, rec=rec)
    row = _target_row(lm, len(tokens), position)
    last = roll[-1]
    attribution = last.mean(0) if row is None else last[row]
    facts = {}
    if row is None:
        target = "the sentence embedding (mean of the last layer's token representations)"
    elif lm.spec.kind == "decoder":
        from attnscope.models.attribution import explained_target

        reusable = prediction is not None and prediction.position == row and prediction.contrast_id is None
        explained = prediction if reusable and prediction is not None else explained_target(lm, text, row)  # the top next token
        target, facts = explained.description, explained.facts()
    else:
        label = text_labels(lm.tokenizer, text, lm.tokenizer.convert_tokens_to_ids(tokens))[row]
        target = f"token {row}'s representation ({label!r})"
        facts = {"target_kind": "token_representation", "target_position": row, "target_input_token": label}
    meta = {"method": method, "target": target, "decomposed": decomposed, **facts}
    if target_token is not None or contrast is not None:
        meta["target_token"] = "mixing methods attribute the position's representation: the same for any token asked for"
    return Contributions(method, tokens, attribution.astype(np.float32), target, row, maps, roll, meta)


def _decomposed(method: str, post: bool) -> str:
    """What the method's per-layer map includes, for this model (the meta line the CLI writes)."""
    if method == "weights":
        return "softmax weights averaged over heads; rollout 0.5·A + 0.5·I"
    if method == "norm":
        return "attention output split by key: Σ_h α·W_O·v_j; residual and norms left out; rollout 0.5·A + 0.5·I"
    if method == "value_zeroing":
        return "each block rerun from its clean input with one token's value zeroed in every head; 1 − cos of the block output; rollout by product"
    where = (
        "Post-LN: the norm after the attention linearised with each sum's own statistics"
        if post
        else "Pre-LN: values read LN(x_j), nothing linearised"
    )
    return f"attention block incl. residual and output bias ({where}); the MLP is not part of it; rollout by product"


@dataclass(frozen=True)
class Explanation:
    """Every method's attribution of one prediction, and how faithful each is on this text."""

    tokens: list[str]
    target: str
    methods: dict[str, Contributions]  # method -> its result, in METHODS order
    faithfulness: Faithfulness  # .table, .curves, .spearman
    skipped: dict[str, str] = field(default_factory=dict)  # method -> why it does not run on this model
    prediction: Target | None = None  # models.attribution.Target: what is explained (a decoder: the predicted token, decoded)


def explain(
    lm: LoadedModel,
    text: str,
    methods=None,
    position: int | None = None,
    *,
    steps: int | None = None,
    target_token: str | None = None,
    contrast: str | None = None,
) -> Explanation:
    """Run ``methods`` (default: every method that applies to the model) on one prediction and score each
    ranking's faithfulness (``models.faithfulness``), for the top next token, a token asked for
    (``target_token``) or one token rather than another (``contrast``).

    A method named explicitly that cannot run on the model raises ValueError; with the default, it is listed
    in ``skipped`` with the reason. One recorded forward (values kept) serves every mixing method, and a
    decoder's explained prediction is read once for all of them.
    """
    from attnscope.models.faithfulness import faithfulness

    explicit = methods is not None
    methods = list(METHODS) if methods is None else list(methods)
    if not methods:
        msg = f"no method given; use some of {', '.join(METHODS)}"
        raise ValueError(msg)
    for method in methods:
        check_method(method)
    enc, _ = tokenize(lm, text)  # bad text and positions are refused here, before any method runs
    _target_row(lm, int(enc["attention_mask"].sum()), position)
    results: dict[str, Contributions] = {}
    skipped: dict[str, str] = {}
    shared: ForwardRecord | None = None
    if any(m in MIXING for m in methods) and lm.spec.kind != "encoder-decoder":
        recorded = any(m in MIXING and m not in ("weights", "value_zeroing") for m in methods) and lm.spec.recording != "materialised"
        shared = run(lm, text, values=recorded)
    prediction = None
    if lm.spec.kind == "decoder" and any(m in MIXING for m in methods):
        from attnscope.models.attribution import explained_target

        prediction = explained_target(lm, text, _target_row(lm, int(enc["attention_mask"].sum()), position))
    for method in methods:
        try:
            results[method] = contributions(
                lm,
                text,
                method,
                position=position,
                steps=steps,
                target_token=target_token,
                contrast=contrast,
                rec=shared,
                prediction=prediction,
            )
        except ValueError as exc:
            if explicit:
                raise
            skipped[method] = str(exc)
    if not results:
        msg = f"no method runs on {lm.spec.name}: " + "; ".join(f"{m}: {why}" for m, why in skipped.items())
        raise ValueError(msg)
    first = next(iter(results.values()))
    scores = {method: result.attribution for method, result in results.items()}
    faith = faithfulness(lm, text, scores, position=position, target_token=target_token, contrast=contrast)
    return Explanation(first.tokens, faith.target.description, results, faith, skipped, faith.target)


@dataclass(frozen=True)
class OverTexts:
    """The faithfulness table over a set of texts (``analysis.faithfulness.over_texts``) and what was left out."""

    table: pd.DataFrame  # one row per method, means over texts with 95% intervals, beats_random_share
    scored: int  # texts that were scored
    skipped: list[str]  # "text i: why" for each text that could not be scored (too short, too long, ...)


def explain_texts(
    lm: LoadedModel,
    texts: list[str],
    methods=None,
    position: int | None = None,
    *,
    target_token: str | None = None,
    contrast: str | None = None,
    on_text=None,
) -> OverTexts:
    """``explain`` on every text of a set, summarised per method over the texts.

    Args:
        texts: the texts, in order (a text that cannot be scored is skipped with its reason).
        on_text: called as ``on_text(done, total)`` after each text (a progress line).
    Raises:
        ValueError: no texts, or none could be scored (with the first reason).
    """
    from attnscope.analysis.faithfulness import over_texts

    texts = list(texts)
    if not texts:
        msg = "no texts given; give at least one"
        raise ValueError(msg)
    tables, skipped = [], []
    for i, text in enumerate(texts):
        try:
            explained = explain(lm, text, methods=methods, position=position, target_token=target_token, contrast=contrast)
            tables.append(explained.faithfulness.table)
        except ValueError as exc:  # too short to delete 2 tokens, too long for the model, ...
            skipped.append(f"text {i}: {exc}")
        if on_text is not None:
            on_text(i + 1, len(texts))
    if not tables:
        msg = f"no text could be scored ({skipped[0]})"
        raise ValueError(msg)
    return OverTexts(over_texts(tables), len(tables), skipped)
