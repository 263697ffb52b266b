"""Generation that records: transformers' own ``generate`` with the KV cache and the fast kernel,
every step's new query recorded against the cache's keys through the one attention hook.

The record covers prompt + generated tokens and is a ``ForwardRecord`` like ``run``'s, so every
map, statistic and page works on it; ``rec.generation`` says which positions were generated and
what distribution each was drawn from.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from typing import Any, cast

import numpy as np
import pandas as pd
import torch

from attnscope.models.forward import one_per_layer, record_forward, special_ids, tokenize, validate_texts
from attnscope.models.hook import recording
from attnscope.models.labels import candidate_label, text_labels, unknown_share
from attnscope.models.limits import GB, estimate_run_bytes, max_tokens, memory_limit_bytes
from attnscope.models.loaded import LoadedModel, input_device
from attnscope.models.record import ForwardRecord

__all__ = ["Generation", "MAX_SEED", "MAX_TEMPERATURE", "MIN_TEMPERATURE", "TOP_K", "generate"]


@dataclasses.dataclass(frozen=True)
class Generation:
    """What ``generate`` produced, step by step. Arrays have one row per generated token."""

    prompt_length: int
    positions: np.ndarray  # int64 [T]: positions of the generated tokens in the record
    token_ids: np.ndarray  # int64 [T]
    tokens: list[str]
    top_ids: np.ndarray  # int64 [T, k]: the most likely next tokens of the distribution drawn from
    top_tokens: list[list[str]]
    top_probs: np.ndarray  # float32 [T, k]
    chosen_probs: np.ndarray  # float32 [T]: probability of the token that was produced
    entropy: np.ndarray  # float32 [T], in nats
    do_sample: bool
    seed: int | None
    temperature: float
    top_k: int | None
    stopped: str  # "eos", "max_new_tokens", or why it was cut short
    recording: str  # "cache": steps recorded against the KV cache; "teacher-forced": one pass afterwards
    labels: list[str] = dataclasses.field(default_factory=list)  # the generated tokens decoded (models.labels.candidate_label)
    top_labels: list[list[str]] = dataclasses.field(default_factory=list)

    @property
    def cut_short(self) -> bool:
        return self.stopped not in ("eos", "max_new_tokens")

    def frame(self) -> pd.DataFrame:
        """One row per generated token: step, position, token, its probability, entropy, top-k."""
        return pd.DataFrame(
            {
                "step": np.arange(len(self.positions)),
                "position": self.positions,
                "token": self.tokens,
                **({"label": self.labels} if self.labels else {}),
                "prob": self.chosen_probs,
                "entropy": self.entropy,
                "top_tokens": self.top_tokens,
                "top_probs": [list(map(float, row)) for row in self.top_probs],
            }
        )


_global_rng = threading.Lock()  # held by a sampled generation for its whole draw

TOP_K = 5  # candidates kept per step


MIN_TEMPERATURE = 1e-3
MAX_TEMPERATURE = 1e3
MAX_SEED = 2**64 - 1  # torch.manual_seed's range


def _check_options(lm: LoadedModel, max_new_tokens, do_sample, seed, temperature, top_k) -> None:
    if lm.spec.kind != "decoder":
        msg = f"generation needs a decoder (a GPT-like model); {lm.spec.name} is an {lm.spec.kind}"
        raise ValueError(msg)
    if lm.spec.recording == "materialised":
        msg = f"{lm.spec.model_type} has no recording hook (materialised fallback), so its generation steps cannot be recorded"
        raise ValueError(msg)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
        msg = f"max_new_tokens must be a whole number >= 1, not {max_new_tokens!r}"
        raise ValueError(msg)
    if not do_sample and (temperature != 1.0 or top_k is not None):
        msg = "temperature and top_k only apply when sampling; pass do_sample=True (--sample) or leave them unset"
        raise ValueError(msg)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not MIN_TEMPERATURE <= temperature <= MAX_TEMPERATURE:
        # below the floor the scaled logits overflow to inf (and sampling is greedy anyway); past the ceiling it is uniform
        msg = f"temperature must be > 0 and finite, from {MIN_TEMPERATURE:g} to {MAX_TEMPERATURE:g}, not {temperature!r}"
        raise ValueError(msg)
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1):
        msg = f"top_k must be a whole number >= 1 (or unset for the whole vocabulary), not {top_k!r}"
        raise ValueError(msg)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= MAX_SEED):
        msg = f"seed must be a whole number from 0 to {MAX_SEED} (2**64 - 1), not {seed!r}"
        raise ValueError(msg)


def _budget(lm: LoadedModel, prompt_length: int, max_new_tokens: int) -> tuple[int, str]:
    """How many tokens may be generated, and why fewer than asked when so."""
    limit = lm.spec.max_positions
    if limit is not None and prompt_length + max_new_tokens > limit:
        msg = (
            f"the prompt has {prompt_length} tokens; {max_new_tokens} more would pass {lm.spec.name}'s {limit} positions; "
            f"ask for at most {max(limit - prompt_length, 0)} new tokens"
        )
        raise ValueError(msg)
    cap = max_tokens()
    if prompt_length >= cap:
        msg = f"the prompt has {prompt_length} tokens, at or past this deployment's limit of {cap}; shorten it"
        raise ValueError(msg)
    allowed, why = max_new_tokens, "max_new_tokens"
    if prompt_length + allowed > cap:
        allowed, why = cap - prompt_length, f"cut short at the token cap ({cap} tokens, ATTNSCOPE_MAX_TOKENS)"
    memory = memory_limit_bytes(input_device(lm.model))
    while allowed > 0 and estimate_run_bytes(lm.model.config, lm.spec, 1, prompt_length + allowed, False) > memory:
        allowed, why = allowed // 2, f"cut short by the memory guard ({memory / GB:.1f} GB allowed)"
    if allowed < 1:
        msg = f"the prompt alone would need more than the {memory / GB:.1f} GB allowed; shorten it or raise ATTNSCOPE_MAX_MEMORY_GB"
        raise ValueError(msg)
    return allowed, why


def generate(
    lm: LoadedModel,
    prompt: str,
    max_new_tokens: int = 32,
    do_sample: bool = False,
    seed: int | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    stop_at_eos: bool = True,
) -> ForwardRecord:
    """Generate from a prompt with the KV cache and record every step's attention.

    Args:
        lm: a decoder from ``load``.
        prompt: the text to continue.
        max_new_tokens: how many tokens to add (fewer when an end-of-sequence token comes first).
        do_sample: draw from the distribution (with ``temperature``, ``top_k``) instead of taking its maximum.
        seed: the sampling seed (the same seed gives the same tokens); the global RNG is left as it was.
        stop_at_eos: stop at the tokenizer's end-of-sequence token.
    Returns:
        ForwardRecord over prompt + generated tokens, with ``generation`` (a ``Generation``). Its maps
        equal those of one teacher-forced ``run`` over the final sequence.
    """
    _check_options(lm, max_new_tokens, do_sample, seed, temperature, top_k)
    prompts = validate_texts(prompt)
    if len(prompts) != 1:
        msg = "generate takes one prompt"
        raise ValueError(msg)
    enc, side = tokenize(lm, prompts)
    prompt_length = int(enc["input_ids"].shape[1])
    allowed, stopped = _budget(lm, prompt_length, int(max_new_tokens))

    model, tok = lm.model, lm.tokenizer
    device = input_device(model)
    eos = tok.eos_token_id if stop_at_eos else None
    from transformers import GenerationConfig

    config = GenerationConfig(
        max_new_tokens=allowed,
        min_new_tokens=0,
        do_sample=do_sample,
        temperature=float(temperature) if do_sample else None,
        top_k=int(top_k) if top_k is not None else (0 if do_sample else None),
        top_p=1.0 if do_sample else None,
        eos_token_id=eos,
        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
        output_scores=True,
        output_hidden_states=True,
        return_dict_in_generate=True,
        use_cache=True,
    )
    inputs = {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
    # Sampling draws from torch's one global generator: a seeded draw holds it (seeded, then restored) so
    # that another session's sampling can neither read nor shift its sequence. Greedy runs draw nothing.
    rng = _global_rng if do_sample else contextlib.nullcontext()
    with torch.inference_mode(), rng, torch.random.fork_rng(devices=[]), recording(lm.module_names, accumulate=True) as recorder:
        if seed is not None:
            torch.manual_seed(int(seed))
        out = cast(Any, model).generate(**inputs, generation_config=config)  # GenerationMixin, untyped
        sequence = out.sequences  # [1, P + T]
        # The last token was drawn but never read: one more step gives its query, key and hidden states.
        last = model(
            input_ids=sequence[:, -1:],
            attention_mask=torch.ones_like(sequence),
            past_key_values=out.past_key_values,
            use_cache=True,
            output_hidden_states=True,
        )
    if int(sequence.shape[1]) - prompt_length < allowed:
        stopped = "eos"  # the only way transformers stops before max_new_tokens here

    steps = [*out.hidden_states, last.hidden_states]  # per forward: (L + 1) of [1, q, D]
    hidden = tuple(torch.cat([step[i] for step in steps], dim=1).detach() for i in range(len(steps[0])))
    merged = [dataclasses.replace(r, mask=recorder.merged_mask(r.module)) for r in recorder.layers]
    recording_mode = "cache"
    if any(r.mask is None for r in merged) or any(r.query.shape[-2] != sequence.shape[1] for r in merged):
        # A cache that drops keys (sliding window) cannot be laid out as one sequence: record one
        # teacher-forced pass over the final tokens instead (the same maps, one more forward).
        teacher = record_forward(lm, prompts, {"input_ids": sequence.cpu(), "attention_mask": torch.ones_like(sequence).cpu()}, side, True)
        layers, hidden, recording_mode = teacher.layers, teacher.hidden_states, "teacher-forced"
    else:
        layers = one_per_layer(merged, lm.spec)

    generation = _steps(tok, out.scores, sequence[0].cpu(), prompt_length, do_sample, seed, temperature, top_k, stopped, recording_mode)
    ids = sequence.cpu().numpy()
    text = tok.decode(ids[0], skip_special_tokens=False)
    return ForwardRecord(
        spec=lm.spec,
        texts=[text],
        tokens=[tok.convert_ids_to_tokens(ids[0].tolist())],
        input_ids=ids,
        attention_mask=np.ones_like(ids),
        position_ids=None,
        padding_side=side,
        mask_applied=True,
        layers=layers,
        hidden_states=hidden,
        special_ids=special_ids(tok),
        inputs={"input_ids": sequence, "attention_mask": torch.ones_like(sequence)},
        all_tokens=[tok.convert_ids_to_tokens(ids[0].tolist())],
        labels=[text_labels(tok, text, ids[0].tolist())],
        unknown_shares=[unknown_share(tok, ids[0].tolist())],
        generation=generation,
    )


def _steps(tok, scores, sequence, prompt_length, do_sample, seed, temperature, top_k, stopped, recording_mode) -> Generation:
    """Per generated token: the distribution it was drawn from (after temperature and top-k), its top-k and entropy."""
    chosen = sequence[prompt_length:]
    probs = torch.softmax(torch.stack([s[0] for s in scores]).float(), dim=-1)  # [T, V]
    logp = torch.log(probs.clamp_min(1e-45))
    entropy = -(probs * logp).sum(-1)
    k = min(TOP_K, probs.shape[-1])
    top_probs, top_ids = probs.topk(k, dim=-1)
    chosen_probs = probs.gather(-1, chosen[:, None]).squeeze(-1)
    return Generation(
        prompt_length=prompt_length,
        positions=np.arange(prompt_length, prompt_length + len(chosen), dtype=np.int64),
        token_ids=chosen.numpy().astype(np.int64),
        tokens=tok.convert_ids_to_tokens(chosen.tolist()),
        top_ids=top_ids.numpy().astype(np.int64),
        top_tokens=[tok.convert_ids_to_tokens(row) for row in top_ids.tolist()],
        top_probs=top_probs.numpy().astype(np.float32),
        chosen_probs=chosen_probs.numpy().astype(np.float32),
        entropy=entropy.numpy().astype(np.float32),
        do_sample=do_sample,
        seed=seed,
        temperature=float(temperature),
        top_k=top_k,
        stopped=stopped,
        recording=recording_mode,
        labels=[candidate_label(tok, i) for i in chosen.tolist()],
        top_labels=[[candidate_label(tok, i) for i in row] for row in top_ids.tolist()],
    )
