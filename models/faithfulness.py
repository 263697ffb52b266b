"""Faithfulness of attribution methods on the user's own text (DeYoung et al. 2020, ERASER).

The metrics are pure (``analysis.faithfulness``); this module runs the model on the reduced inputs.
Removal = the tokens are deleted from the input (later tokens shift left); special tokens (BOS, [CLS],
[SEP], ...) are never removed, nor an encoder's chosen target token. What f is:

- a decoder with a language-model head: the probability of the model's top next token after
  ``position`` (default the last token). The input is the prefix up to that position, and a reduced
  prefix is read at its last remaining token;
- an encoder: cos(representation of the reduced text, representation of the full text), the
  representation being the sentence embedding (mean of the last hidden states over the tokens,
  ``position=None``) or the chosen token's final state (``position=P``) — the targets of
  ``models.attribution``.

All variants go through the model in a few padded forwards (right padding, so each row's real tokens
keep their positions and a row is read at its own last real token).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from attnscope.analysis.faithfulness import FRACTIONS, N_RANDOM, deletion_plan, spearman, summarise
from attnscope.models.attribution import Target, final_states, next_token_logits, prediction_target
from attnscope.models.forward import tokenize
from attnscope.models.limits import check_run
from attnscope.models.loaded import LoadedModel, input_device

__all__ = ["FORWARD_TOKENS", "Faithfulness", "faithfulness", "score_variants", "verdict_subject"]

# Padded tokens per forward over the reduced inputs (rows x longest).
FORWARD_TOKENS = 8192

RULE = (
    "beats random = comprehensiveness above the central 95% of the random rankings' and sufficiency below it "
    "(ERASER AOPC, 10-50% of the removable tokens deleted)"
)


@dataclass(frozen=True)
class Faithfulness:
    """Faithfulness of each method's ranking on one text, against random rankings."""

    table: pd.DataFrame  # one row per method (see analysis.faithfulness.summarise)
    curves: pd.DataFrame  # method, fraction, tokens, comprehensiveness, sufficiency; "random" too
    spearman: pd.DataFrame  # methods x methods rank agreement over the removable tokens
    target: Target  # the prediction (as models.attribution names it)
    tokens: list[str]  # the ranked input: a decoder's prefix up to the position, an encoder's whole text
    removable: np.ndarray  # bool [n]: the tokens rankings may delete
    meta: dict = field(default_factory=dict)  # f, removal, fractions, counts, n_random, seed, rule


def _rows(states: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    return states[torch.arange(states.shape[0], device=states.device), last.to(states.device)]


def score_variants(
    lm: LoadedModel,
    input_ids: torch.Tensor,
    keeps: np.ndarray,
    target: Target,
    reference: torch.Tensor | None,
    token_type_ids: torch.Tensor | None = None,
) -> np.ndarray:
    """f of each reduced input: ``input_ids`` [n] with only the tokens ``keeps`` [V, n] marks.

    Returns:
        float64 [V]: a decoder's probability of ``target.token_id`` read at each variant's last token,
        or an encoder's cosine between the variant's representation and ``reference``.
    """
    device = input_device(lm.model)
    lengths = keeps.sum(1)
    order = np.argsort(-lengths, kind="stable")  # longest first: each forward pads little
    out = np.zeros(len(keeps), dtype=np.float64)
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    start = 0
    with torch.inference_mode():
        while start < len(order):
            width = int(lengths[order[start]])
            rows = order[start : start + max(1, FORWARD_TOKENS // width)]
            ids = torch.full((len(rows), width), pad, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            types = torch.zeros((len(rows), width), dtype=torch.long)
            for r, variant in enumerate(rows):
                kept = torch.from_numpy(np.flatnonzero(keeps[variant]))
                ids[r, : len(kept)] = input_ids[kept]
                mask[r, : len(kept)] = 1
                if token_type_ids is not None:
                    types[r, : len(kept)] = token_type_ids[kept]
            extra = {"token_type_ids": types.to(device)} if token_type_ids is not None else {}
            states = final_states(lm, extra, input_ids=ids.to(device), attention_mask=mask.to(device))  # [r, width, d]
            last = torch.from_numpy(lengths[rows] - 1)
            if target.kind == "next_token" and target.contrast_id is not None:  # "A rather than B"
                logits = next_token_logits(lm, _rows(states, last)).double()  # [r, vocab]
                values = logits[:, target.token_id] - logits[:, target.contrast_id]
            elif target.kind == "next_token":
                probs = torch.softmax(next_token_logits(lm, _rows(states, last)).double(), dim=-1)  # [r, vocab]
                values = probs[:, target.token_id]
            else:
                if target.kind == "sentence_embedding":
                    weights = mask.to(states.device, states.dtype)[..., None]
                    pooled = (states * weights).sum(1) / weights.sum(1)  # [r, d]: mean over real tokens
                else:  # the target token's new place: how many kept tokens precede it
                    new_place = torch.from_numpy(keeps[rows][:, : target.position].sum(1))
                    pooled = _rows(states, new_place)
                assert reference is not None  # an encoder's target always has its clean representation
                values = torch.nn.functional.cosine_similarity(pooled.double(), reference.double().to(pooled.device)[None], dim=-1)
            out[rows] = values.cpu().numpy()
            start += len(rows)
    return out


def faithfulness(
    lm: LoadedModel,
    text: str,
    scores: Mapping[str, np.ndarray],
    position: int | None = None,
    fractions: Sequence[float] = FRACTIONS,
    n_random: int = N_RANDOM,
    seed: int = 0,
    *,
    target_token: str | None = None,
    contrast: str | None = None,
) -> Faithfulness:
    """Comprehensiveness and sufficiency (AOPC) of each method's token ranking, against random rankings.

    Args:
        lm: from ``load``; a decoder-only or encoder-only model.
        text: one text.
        scores: method name -> float [n] over the text's tokens (``Attribution.scores``; higher = more
            important). For a decoder only the tokens before ``position`` are ranked and deleted: the token
            at ``position`` is the one the prediction is read at (the query, not evidence), and stays.
        position: the prediction, as in ``models.attribution.gradient_attribution``.
        fractions: shares of the removable tokens deleted, each in (0, 1).
        n_random: random rankings in the baseline (a ``numpy.random.Generator`` seeded with ``seed``).
        target_token, contrast: a decoder's token to explain and one to explain it against (f becomes their
            logit difference), as ``models.attribution.prediction_target``.
    Returns:
        Faithfulness: table (beats_random per method: see ``analysis.faithfulness``), curves, spearman, target.
    """
    if not isinstance(scores, Mapping) or not scores:
        msg = "no rankings given; pass {method name: scores [n]} for at least one method"
        raise ValueError(msg)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        msg = f"seed must be a whole number (it seeds the random rankings), not {seed!r}"
        raise ValueError(msg)
    enc, _ = tokenize(lm, text)
    device = input_device(lm.model)
    ids = enc["input_ids"]  # [1, n]
    n = int(ids.shape[1])
    check_run(lm, 1, n, padded=False)
    extra = {"token_type_ids": enc["token_type_ids"].to(device)} if "token_type_ids" in enc else {}
    target, reference = prediction_target(lm, ids.to(device), position, extra, target_token=target_token, contrast=contrast)
    tokens = lm.tokenizer.convert_ids_to_tokens(ids[0].tolist())
    for name, values in scores.items():
        if np.asarray(values).shape != (n,):
            msg = f"scores of {name!r} must have one value per token of the text ({n}), not shape {np.asarray(values).shape}"
            raise ValueError(msg)
    width = n
    if target.kind == "next_token":
        width = target.position + 1  # the prefix the prediction reads
        scores = {name: np.asarray(values)[:width] for name, values in scores.items()}
    specials = set(lm.tokenizer.all_special_ids)
    removable = np.array([int(t) not in specials for t in ids[0, :width].tolist()])
    if target.kind in ("token_representation", "next_token"):
        removable[target.position] = False  # the predicting token / the explained token is the question, not evidence
    plan = deletion_plan(scores, removable, fractions, n_random, seed)
    token_types = enc["token_type_ids"][0, :width] if "token_type_ids" in enc else None
    values = score_variants(lm, ids[0, :width], plan.keeps, target, reference, token_types)
    table, curves = summarise(plan, values)
    if target.kind == "next_token" and target.contrast_id is not None:
        f = f"logit of {target.token!r} minus logit of {target.contrast!r} read at the last remaining token of the prefix 0..{target.position}"
    elif target.kind == "next_token":
        f = f"probability of {target.token!r} read at the last remaining token of the prefix 0..{target.position}"
    elif target.kind == "sentence_embedding":
        f = "cosine between the reduced text's sentence embedding (mean of last hidden states) and the full text's"
    else:
        f = f"cosine between token {target.position}'s final representation in the reduced text and in the full text"
    meta = {
        "f": f,
        "f_full": float(values[0]),
        "removal": "tokens deleted from the input (later tokens shift left); special tokens"
        + (" and the target token" if target.kind == "token_representation" else "")
        + (f" and the predicting token (position {target.position})" if target.kind == "next_token" else "")
        + " are never removed",
        "fractions": list(plan.fractions),
        "counts": list(plan.counts),
        "removable": int(removable.sum()),
        "n_random": int(n_random),
        "seed": seed,
        "variants": len(plan.keeps),
        "rule": RULE,
    }
    return Faithfulness(
        table=table,
        curves=curves,
        spearman=spearman(scores, removable),
        target=target,
        tokens=tokens[:width],
        removable=removable,
        meta=meta,
    )


def verdict_subject(target: Target) -> str:
    """What the deletion test's f is, in a few words for ``analysis.faithfulness.verdict_words``: "p(' Mary')",
    "the logit difference ' Mary' − ' John'", or the cosine to the clean representation."""
    if target.kind == "next_token" and target.contrast_id is not None:
        return f"the logit difference {target.predicted!r} − {target.contrast!r}"
    if target.kind == "next_token":
        return f"p({target.predicted!r})"
    if target.kind == "sentence_embedding":
        return "the cosine to the full text's sentence embedding"
    return f"the cosine to token {target.position}'s full-text representation"
