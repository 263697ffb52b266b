"""Probes that run the model on made-up inputs (the induction probe).

Record-level views of several heads at once (head similarity, rollout) live in ``models/aggregates.py``.

The induction probe (Olsson et al. 2022; TransformerLens demo): T random token ids, repeated
twice, run through the recorder; a head's score is the mean of its attention diagonal at offset
-(T-1) (``analysis.probes.induction_score``), averaged over a few random sequences.

Special tokens: the sequence is wrapped the way the tokenizer wraps ordinary text
(the special tokens it puts around any text): [CLS] ... [SEP] for BERT, nothing for SmolLM2, whose
tokenizer adds no BOS. The model thus sees what it sees for any text; the diagonal stripe is the
same shift-invariant formula, and the one or two wrapper rows on it weigh ~1/T.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from attnscope.analysis.probes import layer_induction_scores
from attnscope.models.forward import run_ids
from attnscope.models.loaded import LoadedModel

__all__ = [
    "PROBES",
    "add_probe_scores",
    "induction_ids",
    "induction_scores",
]

PROBES = ("induction",)


def induction_ids(lm: LoadedModel, seq_len: int = 50, batch: int = 4, seed: int = 0) -> tuple[np.ndarray, int]:
    """Probe inputs: ``batch`` rows of ``seq_len`` random non-special ids repeated twice, tokenizer-wrapped.

    Returns:
        (int64 [batch, n] ids, offset of the first random token in each row).
    """
    if not isinstance(seq_len, int) or seq_len < 2:
        msg = f"seq_len must be an integer >= 2, got {seq_len!r}"
        raise ValueError(msg)
    if not isinstance(batch, int) or batch < 1:
        msg = f"batch must be an integer >= 1, got {batch!r}"
        raise ValueError(msg)
    tok = lm.tokenizer
    table: Any = lm.model.get_input_embeddings()
    vocab = min(len(tok), int(table.num_embeddings))
    allowed = np.setdiff1d(np.arange(vocab), np.array(sorted(tok.all_special_ids), dtype=np.int64))
    rng = np.random.default_rng(seed)
    segments = allowed[rng.integers(0, len(allowed), size=(batch, seq_len))]  # [batch, T]
    prefix_ids, suffix_ids = _special_wrapper(tok)
    rows = [prefix_ids + np.concatenate([seg, seg]).tolist() + suffix_ids for seg in segments]
    limit = lm.spec.max_positions
    if limit is not None and len(rows[0]) > limit:
        msg = f"seq_len {seq_len} gives {len(rows[0])} tokens but {lm.spec.name} takes {limit}; use seq_len <= {(limit - 2) // 2}"
        raise ValueError(msg)
    return np.array(rows, dtype=np.int64), len(prefix_ids)


def _special_wrapper(tok) -> tuple[list[int], list[int]]:
    """The special ids the tokenizer puts before and after any text ([CLS] / [SEP]; none for SmolLM2)."""
    content = tok("a", add_special_tokens=False)["input_ids"]
    full = tok("a", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(content) + 1):
        if full[start : start + len(content)] == content:
            return list(full[:start]), list(full[start + len(content) :])
    return [], []


def induction_scores(lm: LoadedModel, seq_len: int = 50, batch: int = 4, seed: int = 0) -> pd.DataFrame:
    """Induction score of every head: mean attention on the token after the earlier occurrence.

    Args:
        lm: from ``load``; meaningful for decoders (encoders see both copies at once).
        seq_len: T, the random segment length (the model sees ~2T tokens).
        batch: random sequences averaged over.
        seed: random seed of the token ids.
    Returns:
        DataFrame [layer, head, induction], one row per head.
    """
    ids, _ = induction_ids(lm, seq_len=seq_len, batch=batch, seed=seed)
    rec = run_ids(lm, ids)
    frames = []
    for layer, r in enumerate(rec.layers):
        if r is None:  # a block without attention (hybrid models)
            continue
        scores = layer_induction_scores(r, period=seq_len)
        frames.append(pd.DataFrame({"layer": layer, "head": np.arange(len(scores)), "induction": scores}))
    return pd.concat(frames, ignore_index=True)


def add_probe_scores(lm: LoadedModel, table: pd.DataFrame, probe: str, **kwargs) -> pd.DataFrame:
    """``table`` (one row per layer, head, maybe per text) with the probe's score column joined on.

    Args:
        probe: one of PROBES ("induction").
        kwargs: passed to the probe (seq_len, batch, seed).
    """
    if probe not in PROBES:
        msg = f"unknown probe {probe!r}; choose one of {', '.join(PROBES)}"
        raise ValueError(msg)
    scores = induction_scores(lm, **kwargs)
    base = table.drop(columns=[probe]) if probe in table.columns else table
    return base.merge(scores, on=["layer", "head"], how="left")
