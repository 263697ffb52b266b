"""The reference: transformers' own eager attention with output_attentions=True."""

from __future__ import annotations

import copy
import math

import numpy as np
import pandas as pd
import torch


def eager_reference(lm, rec):
    """Eager attentions [layer][B, H, n, n] and hidden states for exactly the inputs ``rec`` used."""
    model = copy.deepcopy(lm.model)
    model.set_attn_implementation("eager")
    base = model.base_model if lm.spec.kind == "decoder" else model
    with torch.inference_mode():
        extra = {"use_cache": False} if lm.spec.kind == "decoder" else {}
        out = base(**rec.inputs, output_attentions=True, output_hidden_states=True, **extra)
    attentions = [None if a is None else a.float().numpy() for a in out.attentions]  # None: a block without attention
    return attentions, [h.float().numpy() for h in out.hidden_states]


def softmax_module_outputs(lm, rec) -> list[np.ndarray]:
    """What every ``nn.Softmax`` module of the model returned, in call order, for exactly ``rec``'s inputs:
    the weights the forward really used, for architectures whose ``output_attentions`` returns something else."""
    model = copy.deepcopy(lm.model)
    model.set_attn_implementation("eager")
    outputs = []
    hooks = [
        module.register_forward_hook(lambda _m, _i, out: outputs.append(out.float().numpy()))
        for module in model.modules()
        if isinstance(module, torch.nn.Softmax)
    ]
    try:
        with torch.inference_mode():
            model(**rec.inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return outputs


def strip(attn: np.ndarray, rec, batch: int) -> np.ndarray:
    idx = rec.real_index(batch)
    return attn[batch][:, idx][:, :, idx]  # [H, n_b, n_b]


TEXTS = ["The mouse ate the cheese in the kitchen.", "Click the mouse."]


def assert_matches_eager(lm, rec):
    """Every head's map of every text equals eager's ``output_attentions`` within 1e-4."""
    reference, _ = eager_reference(lm, rec)
    for batch in range(rec.batch_size):
        for layer in range(lm.spec.n_layers):
            expected = strip(reference[layer], rec, batch)
            for head in range(lm.spec.n_heads):
                np.testing.assert_allclose(rec.attention(layer, head, batch=batch), expected[head], atol=1e-4)


def brute_stats(a: np.ndarray, special: np.ndarray, punct: np.ndarray) -> dict[str, float]:
    """The head statistics' definitions in analysis/heads.py, written out over one float64 map [m, m]."""
    m = a.shape[0]
    i = np.arange(m)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.where(a > 0, a * np.log(a), 0.0).sum(-1).mean()
    return {
        "entropy": entropy,
        "first_token_mass": a[1:, 0].mean(),
        "special_token_mass": a[:, special].sum(-1).mean(),
        "punctuation_mass": a[:, punct].sum(-1).mean(),
        "prev_token": a[i[1:], i[1:] - 1].mean(),
        "next_token": a[i[:-1], i[:-1] + 1].mean(),
        "mean_distance": (a * np.abs(i[None, :] - i[:, None])).sum(-1).mean(),
    }


def tokenizer_state(tok) -> dict:
    """Everything a call could switch on the shared tokenizer, Rust backend included."""
    backend = tok.backend_tokenizer
    return {
        "padding": copy.deepcopy(backend.padding),
        "truncation": copy.deepcopy(backend.truncation),
        "encode_special_tokens": backend.encode_special_tokens,
        "backend": backend.to_str(),
        "padding_side": tok.padding_side,
        "truncation_side": tok.truncation_side,
        "pad_token": tok.pad_token,
    }


def corpus_examples_brute_force(lm, texts: list[str], top: int) -> pd.DataFrame:
    """Every query of every head on every text (each run alone), scored by plain loops, sorted, cut at ``top``."""
    causal = lm.spec.kind == "decoder"
    rows = []
    for text_id, text in enumerate(texts):
        from attnscope.models import run

        rec = run(lm, [text])
        ids = [int(i) for i in rec.input_ids[0][rec.real_index(0)]]
        n = len(ids)
        for layer in range(lm.spec.n_layers):
            maps = rec.layer_attention(layer, 0).astype(np.float64)
            for head in range(lm.spec.n_heads):
                a = maps[head]
                for i in range(n):
                    allowed = i + 1 if causal else n
                    keys = range(1, allowed)
                    if len(keys):  # max-weight: the largest weight to a key other than the first
                        j = max(keys, key=lambda j: (a[i, j], -j))
                        rows.append((layer, head, "max-weight", a[i, j], text_id, i, j))
                    if i >= 1:
                        rows.append((layer, head, "previous-token", a[i, i - 1], text_id, i, i - 1))
                    targets = [j + 1 for j in range(i - 1) if ids[j] == ids[i]]
                    if targets:
                        j = max(targets, key=lambda j: (a[i, j], -j))
                        rows.append((layer, head, "induction", sum(a[i, t] for t in set(targets)), text_id, i, j))
                    if allowed >= 2:
                        entropy = -sum(p * math.log(p) for p in a[i] if p > 0)
                        j = max(range(n), key=lambda j: (a[i, j], -j))
                        rows.append((layer, head, "low-entropy", entropy, text_id, i, j))
    frame = pd.DataFrame(rows, columns=["layer", "head", "criterion", "score", "text_id", "query_pos", "key_pos"])
    frame["order"] = np.where(frame["criterion"] == "low-entropy", frame["score"], -frame["score"])
    frame = frame.sort_values(["layer", "head", "criterion", "order", "text_id", "query_pos"])
    frame = frame.groupby(["layer", "head", "criterion"]).head(top)
    frame["rank"] = frame.groupby(["layer", "head", "criterion"]).cumcount() + 1
    return frame.drop(columns="order").reset_index(drop=True)
