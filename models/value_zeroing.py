"""Value zeroing (Mohebbi et al. 2023): how much each token's representation changes when one key's value is removed.

For attention block l and key j, block l is run again from its clean input with token j's value vector
zeroed in every head (queries and keys unchanged, so the weights stay as they were); y_i is block l's
output hidden state for token i, ỹ_i the same with v_j zeroed, and

    C_ij = 1 − cos(y_i, ỹ_i),   rows normalised to sum to 1 over the text's tokens.

One forward serves every block at once: a batch of 1 + k rows (row 0 clean, row r zeroes key j_r) runs
with every block's input pinned to row 0's (``models.hook.pinned_blocks``), so each block of a variant
row starts from the clean state and differs only by its own zeroed value; the zeroing is an edit of
the attention output through the one hook (``models.hook.intervening``): out_r = out_0 − α[:, j_r]·v_{j_r}
per head, with α recomputed from the recorded query and key. The cost is about n plain forwards over
the text (n / k forwards of k + 1 rows each), never L·n. In a causal model zeroing key j leaves every
row before j unchanged, so a forward whose first zeroed key is j runs only positions j.. and reads the
earlier keys and values from a cache of one clean prefix: about half of the n forwards' work.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from attnscope.analysis.attention import attention_rows
from attnscope.models.forward import tokenize
from attnscope.models.hook import AttentionCall, intervening, pinned_blocks
from attnscope.models.limits import check_run, max_tokens
from attnscope.models.loaded import LoadedModel, input_device

__all__ = ["check_supported", "value_zeroing"]


def check_supported(lm: LoadedModel, what: str) -> None:
    """Refuse, in one line, a model that ``what`` cannot run on: materialised or encoder-decoder."""
    spec = lm.spec
    if spec.recording == "materialised":
        msg = f"{what} needs the attention hook; {spec.model_type} is materialised (its attention does not go through the hook)"
        raise ValueError(msg)
    if spec.kind == "encoder-decoder":
        msg = f"{what} works on decoder-only and encoder-only models; {spec.name} is an encoder-decoder model"
        raise ValueError(msg)


def _blocks(lm: LoadedModel) -> list[int]:
    """The attention blocks, in order, each with the gated block hooks that pinning needs."""
    found = sorted(set(lm.layout.blocks.values()))
    expected = list(lm.spec.attention_layers) or list(range(lm.spec.n_layers))
    if found != expected:
        msg = (
            f"value zeroing cannot tell {lm.spec.model_type}'s transformer blocks apart (found blocks {found[:4]}..., "
            f"attention layers {expected[:4]}...)"
        )
        raise ValueError(msg)
    return found


def _zero_values(call: AttentionCall, keys: torch.Tensor) -> torch.Tensor:
    """Row r + 1 of the batch: row 0's attention output with key ``keys[r]``'s value zeroed in every head.

    The rows share one input (pinned), so row 0's weights serve all: o_i^h − α^h_{i j} v^h_j.
    Returns [1 + r, q, H, dv], the shape of ``call.output``.
    """
    out = call.output  # [1 + r, q, H, dv]
    n_heads, n_queries = out.shape[2], out.shape[1]
    group = n_heads // call.value.shape[1]
    heads = torch.arange(n_heads)
    alpha = attention_rows(call, batch=0, heads=heads, rows=torch.arange(n_queries))  # [H, q, k], row 0
    keys = keys.to(alpha.device)
    a = alpha[:, :, keys]  # [H, q, r]
    v = call.value[0].index_select(0, (heads // group).to(call.value.device))[:, keys.to(call.value.device)]  # [H, r, dv]
    removed = torch.einsum("hqr,hrd->rqhd", a, v.float().to(a.device))  # [r, q, H, dv]
    zeroed = out[:1].float() - removed.to(out.device)  # [r, q, H, dv]; q: the queries run (a cached prefix's rows are not)
    return torch.cat([out[:1], zeroed.to(out.dtype)], dim=0)


def _one_minus_cosine(block: int, hidden: torch.Tensor) -> torch.Tensor:
    """1 − cos(row 0, row r) per token, for rows 1..: float64 [r, n].

    As ½‖u − v‖² of the unit vectors (equal to 1 − cos), which is exactly 0 for an unchanged token
    (a key after the query under a causal mask) instead of float rounding noise around 1 − 1.
    """
    h = hidden.detach().double()  # [1 + r, n, d]
    unit = h / h.norm(dim=-1, keepdim=True).clamp_min(1e-300)
    return 0.5 * (unit[1:] - unit[:1]).pow(2).sum(-1).cpu()


def value_zeroing(lm: LoadedModel, text: str, batch_size: int = 32) -> np.ndarray:
    """Value-zeroing context mixing of every attention block (Mohebbi et al. 2023).

    Args:
        lm: from ``load``; a hook-recorded decoder-only or encoder-only model.
        text: one text.
        batch_size: rows per forward: the clean row and ``batch_size − 1`` zeroed keys (fewer when the
            deployment's token cap, ATTNSCOPE_MAX_TOKENS, needs it).
    Returns:
        float32 [L, n, n] over the text's tokens, L = the attention blocks in order (``spec.attention_layers``):
        C[l, i, j] = 1 − cos(y_i, ỹ_i) of block l's output with key j's value zeroed, rows summing to 1
        (a row no key changes stays 0). Under a causal mask C[l, i, j] = 0 for j > i.
    """
    check_supported(lm, "value zeroing")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 2:
        msg = f"batch size must be a whole number >= 2 (the clean row and at least one zeroed key per forward), not {batch_size!r}"
        raise ValueError(msg)
    enc, _ = tokenize(lm, text)
    n = int(enc["input_ids"].shape[1])
    check_run(lm, 1, n, padded=False)
    layers = _blocks(lm)
    rows = max(2, min(batch_size, max_tokens() // n))
    device = input_device(lm.model)
    base = lm.forward_module()
    contributions = np.zeros((len(layers), n, n), dtype=np.float64)  # [L, query, key]
    causal = lm.spec.kind == "decoder"
    for start in range(0, n, rows - 1):
        keys = torch.arange(start, min(start + rows - 1, n))
        size = 1 + len(keys)
        # A causal model's rows before the first zeroed key are the clean ones: their keys and values come from a
        # cache of one clean row, and only positions >= start are run for the 1 + k rows.
        prefix = start if causal else 0
        inputs = {name: value.to(device).expand(size, -1) for name, value in enc.items()}  # [1 + r, n]
        if prefix:
            with torch.inference_mode():
                cache = base(**{name: value.to(device)[:, :prefix] for name, value in enc.items()}, use_cache=True).past_key_values
            cache.batch_repeat_interleave(size)
            inputs = {name: value[:, prefix:] if name != "attention_mask" else value for name, value in inputs.items()}
            inputs["past_key_values"] = cache
            inputs["cache_position"] = torch.arange(prefix, n, device=device)
        edit = functools.partial(_zero_values, keys=keys)
        with (
            torch.inference_mode(),
            pinned_blocks(lm.module_names, reduce=_one_minus_cosine) as changed,
            intervening(dict.fromkeys(layers, edit), lm.module_names),
        ):
            base(**inputs, **({"use_cache": bool(prefix)} if causal else {}))
        missing = [layer for layer in layers if layer not in changed]
        if missing:
            msg = f"value zeroing saw no output from blocks {missing[:4]} of {lm.spec.model_type}; its blocks are not hooked"
            raise ValueError(msg)
        for index, layer in enumerate(layers):
            contributions[index, prefix:, start : start + len(keys)] = changed[layer].numpy().T  # [n - prefix, r]
    if causal:  # a later key cannot reach an earlier query: exactly 0 (rows run in differently shaped batches round apart)
        contributions = np.tril(contributions)
    totals = contributions.sum(-1, keepdims=True)
    normalised = np.divide(contributions, totals, out=np.zeros_like(contributions), where=totals > 0)
    return normalised.astype(np.float32)
