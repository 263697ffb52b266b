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
