"""Readouts through the model's own unembedding: next-token logits and the logit lens.

They take the loaded model explicitly: a ``ForwardRecord`` is data and keeps no module or tokenizer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from attnscope.models.labels import candidate_label, decoded_labels

if TYPE_CHECKING:
    from attnscope.models.loaded import LoadedModel
    from attnscope.models.record import ForwardRecord

__all__ = ["final_norm", "lm_head", "logit_lens", "logits"]


def final_norm(lm: LoadedModel) -> torch.nn.Module | None:
    """The norm a decoder applies before its unembedding (``model.norm``, GPT-2's ``ln_f``, ...), or None."""
    facts = lm.layout.final_norm
    return None if facts is None else lm.module(facts.name)


def lm_head(lm: LoadedModel) -> torch.nn.Module | None:
    """A decoder's unembedding, or None (encoders, and decoders loaded without a language-model head)."""
    name = lm.layout.lm_head
    return lm.module(name) if lm.spec.kind == "decoder" and name is not None else None


def _same_model(lm: LoadedModel, rec: ForwardRecord) -> None:
    if rec.spec.name != lm.spec.name or rec.spec.model_type != lm.spec.model_type:
        msg = f"this record was made by {rec.spec.name}, not {lm.spec.name}; read it with the model that made it"
        raise ValueError(msg)


def _to_head(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    # An offloaded head's weight is on "meta"; accelerate's hook then moves the input itself.
    return x.to(weight.dtype) if weight.device.type == "meta" else x.to(weight.device, weight.dtype)


def logits(lm: LoadedModel, rec: ForwardRecord, batch: int = 0) -> np.ndarray:
    """Next-token logits of a decoder at every real position of text ``batch``. float32 [n_b, vocab]."""
    _same_model(lm, rec)
    head = lm_head(lm)
    if head is None:
        msg = f"{lm.spec.name} is an encoder without a language-model head; compare hidden states instead"
        raise ValueError(msg)
    last = torch.from_numpy(rec.hidden(lm.spec.n_layers, batch))
    with torch.inference_mode():
        return lm.layout.softcapped(head(_to_head(last, next(head.parameters()))).float().cpu()).numpy()


def logit_lens(lm: LoadedModel, rec: ForwardRecord, batch: int = 0, top_k: int = 5, chunk: int = 256) -> pd.DataFrame:
    """The logit lens (nostalgebraist 2020): what the final norm + unembedding read from the residual
    stream after every layer, at every real position.

    The last layer's row is the model's own next-token distribution (transformers' last hidden state
    already has the final norm applied, so it is not applied twice).

    Returns:
        DataFrame, one row per (layer, position): layer (0 = embeddings .. n_layers), position, token,
        next_token (the token that follows, "" at the end), top_token, top_prob, top_tokens, top_probs
        (the ``top_k`` most likely), next_prob and next_rank (1 = the lens's top choice; 0 at the end); and as
        readable text (``models.labels``): label, next_label, top_label, top_labels (candidates decoded, "␣Mary").
    """
    _same_model(lm, rec)
    head, norm = lm_head(lm), final_norm(lm)
    if head is None:
        msg = f"the logit lens needs a decoder with a language-model head; {lm.spec.name} is an {lm.spec.kind}"
        raise ValueError(msg)
    if norm is None:
        msg = f"{lm.spec.model_type}: attnscope does not know this architecture's final norm, so the logit lens cannot read its layers"
        raise ValueError(msg)
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
        msg = f"top_k must be a whole number >= 1, not {top_k!r}"
        raise ValueError(msg)
    weight_of_head = getattr(head, "weight", None)
    vocabulary = weight_of_head.shape[0] if isinstance(weight_of_head, torch.Tensor) else None
    if vocabulary is not None and top_k > vocabulary:  # not clamped: the whole vocabulary per cell is a huge table
        msg = f"top_k {top_k} exceeds {lm.spec.name}'s vocabulary of {vocabulary} tokens; use at most {vocabulary}"
        raise ValueError(msg)
    index = torch.from_numpy(rec.real_index(batch))
    ids = torch.from_numpy(rec.input_ids[batch])[index]
    names = lm.tokenizer.convert_ids_to_tokens
    tokens = rec.tokens[batch] if rec.generation is None or batch else names(ids.tolist())
    n = len(index)
    nxt = torch.cat([ids[1:], torch.tensor([-1])])  # the token that follows each position
    weight = next(head.parameters())
    frames = []
    with torch.inference_mode():
        for layer in range(lm.spec.n_layers + 1):
            states = rec.hidden_states[layer][batch][index.to(rec.hidden_states[layer].device)]
            for start in range(0, n, chunk):
                x = _to_head(states[start : start + chunk], weight)
                if layer < lm.spec.n_layers:
                    x = norm(x)
                scores = lm.layout.softcapped(head(x).float().cpu())  # [r, V]
                probs = torch.softmax(scores, dim=-1)
                top_p, top_i = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
                follow = nxt[start : start + chunk]
                has_next = follow >= 0
                safe = follow.clamp(min=0)
                rank = (scores > scores.gather(-1, safe[:, None])).sum(-1) + 1
                frames.append(
                    pd.DataFrame(
                        {
                            "layer": layer,
                            "position": np.arange(start, start + len(x)),
                            "top_token": names(top_i[:, 0].tolist()),
                            "top_prob": top_p[:, 0].numpy(),
                            "top_tokens": [names(row) for row in top_i.tolist()],
                            "top_probs": top_p.numpy().tolist(),
                            "next_prob": torch.where(has_next, probs.gather(-1, safe[:, None])[:, 0], 0.0).numpy(),
                            "next_rank": torch.where(has_next, rank, 0).numpy(),
                        }
                    )
                )
    frame = pd.concat(frames, ignore_index=True)
    next_tokens = [*names(ids[1:].tolist()), ""]
    frame.insert(2, "token", [tokens[p] for p in frame["position"]])
    frame.insert(3, "next_token", [next_tokens[p] for p in frame["position"]])
    labels = rec.token_labels(batch) if rec.labels else decoded_labels(lm.tokenizer, ids.tolist())
    next_labels = [*labels[1:], ""]
    decoded: dict[str, str] = {}  # raw piece -> candidate label, decoded once per call

    def readable(piece: str) -> str:
        if piece not in decoded:
            decoded[piece] = candidate_label(lm.tokenizer, lm.tokenizer.convert_tokens_to_ids(piece))
        return decoded[piece]

    frame["label"] = [labels[p] for p in frame["position"]]
    frame["next_label"] = [next_labels[p] for p in frame["position"]]
    frame["top_label"] = [readable(t) for t in frame["top_token"]]
    frame["top_labels"] = [[readable(t) for t in row] for row in frame["top_tokens"]]
    return frame
