"""The reference: transformers' own eager attention with output_attentions=True."""

from __future__ import annotations

import copy

import numpy as np
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
