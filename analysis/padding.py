"""What padding a batch changes and what it does not.

Texts of different lengths are run as one padded batch, with right and with left padding, each
with the attention mask and without it (an all-ones mask, so real tokens may attend to pads). For
every setting and layer this measures

- pad attention mass: over heads and real query tokens of the texts that got padding, the attention
  weight that lands on pad keys (mean and max). With the mask it is exactly 0;
- max hidden difference: max |h_batch - h_alone| over the real tokens of every text and all hidden
  dimensions, against the same text run on its own (no padding at all), after each block;
- max relative difference: max over real tokens of ||h_batch - h_alone|| / ||h_alone|| (L2 over the
  hidden dimensions). float32 carries about 7 significant digits, and some models (SmolLM2) have
  hidden values in the hundreds ("massive activations"), where a differently shaped matmul already
  rounds to ~1e-3 in absolute terms while the token's vector is unchanged to ~1e-5 relative.

With the mask, real tokens must match the unpadded run within ``TOLERANCE``: the relative
difference is the criterion; the absolute one is reported next to it. Without it they
diverge, except where causality already hides the pads: a decoder's real tokens never see pads
placed after them (right padding).

Nothing here imports transformers: records come from a ``run``-like callable passed in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from attnscope.analysis.attention import attention_rows, mask_rows
from attnscope.analysis.record_view import RecordView

__all__ = [
    "LAYER_COLUMNS",
    "PaddingSetting",
    "PaddingStudy",
    "SIDES",
    "TOLERANCE",
    "allowed_keys",
    "hidden_difference",
    "measure",
    "pad_attention",
    "padded_texts",
    "padding_study",
    "positions_frame",
    "study_json",
    "summary_frame",
    "verdict",
]


TOLERANCE = 1e-4  # max |difference| allowed between padded-with-mask and unpadded hidden states
SIDES = ("right", "left")
LAYER_COLUMNS = (
    "padding_side",
    "attention_mask",
    "layer",
    "pad_attention_mass",
    "pad_attention_max",
    "max_hidden_diff",
    "max_relative_diff",
)


@dataclass
class PaddingSetting:
    """One padded run and how far it is from the unpadded runs."""

    padding_side: str
    attention_mask: bool
    record: RecordView  # ForwardRecord of the padded batch
    layers: pd.DataFrame  # one row per block: LAYER_COLUMNS
    embedding_diff: float  # max |difference| of the embeddings (hidden layer 0)
    embedding_relative_diff: float

    @property
    def name(self) -> str:
        return f"{self.padding_side} padding, {'with' if self.attention_mask else 'without'} mask"

    @property
    def max_hidden_diff(self) -> float:
        return float(max(self.embedding_diff, self.layers["max_hidden_diff"].max()))

    @property
    def max_relative_diff(self) -> float:
        return float(max(self.embedding_relative_diff, self.layers["max_relative_diff"].max()))

    @property
    def matches_unpadded(self) -> bool:
        """Whether every real token matches the unpadded run within TOLERANCE (relative difference)."""
        return self.max_relative_diff <= TOLERANCE


@dataclass
class PaddingStudy:
    """Every setting of one batch of texts, and the unpadded reference runs."""

    texts: list[str]
    kind: str
    singles: list  # ForwardRecord of each text alone
    settings: list[PaddingSetting]

    def frame(self) -> pd.DataFrame:
        """All settings' per-layer rows stacked (the data behind the depth charts)."""
        return pd.concat([s.layers for s in self.settings], ignore_index=True)

    def setting(self, padding_side: str, attention_mask: bool) -> PaddingSetting:
        for s in self.settings:
            if s.padding_side == padding_side and s.attention_mask == attention_mask:
                return s
        msg = f"no setting with {padding_side} padding and attention_mask={attention_mask}; run it with that side"
        raise ValueError(msg)


def padded_texts(record: RecordView) -> list[int]:
    """Batch indices of the texts that got at least one pad position."""
    return [b for b in range(record.batch_size) if int(record.attention_mask[b].sum()) < record.n_padded]


def pad_attention(record: RecordView, layer: int) -> tuple[float, float]:
    """Attention mass that real query tokens put on pad keys at one layer.

    Args:
        record: a ForwardRecord of a padded batch.
        layer: 0-based block.
    Returns:
        (mean, max) over padded texts, heads and real queries of Σ_pad-keys A[query, key]; (0, 0)
        when nothing was padded.
    """
    rec = record.layer_record(layer)  # a block without attention: one clear error
    heads = torch.arange(record.spec.n_heads)
    sums = []
    for b in padded_texts(record):
        real = torch.from_numpy(record.real_index(b))
        pads = torch.from_numpy(record.attention_mask[b] == 0)
        weights = attention_rows(rec, batch=b, heads=heads, rows=real)  # [H, r, n]
        sums.append(weights[:, :, pads.to(weights.device)].sum(-1).flatten().double().cpu())  # [H * r]
    if not sums:
        return 0.0, 0.0
    mass = torch.cat(sums)
    return float(mass.mean()), float(mass.max())


def hidden_difference(record: RecordView, singles: list, layer: int) -> tuple[float, float]:
    """Max |difference| of real tokens' hidden states between a padded batch and each text alone.

    Args:
        record: ForwardRecord of the padded batch.
        singles: ForwardRecord of each text run alone, in batch order.
        layer: hidden layer (0 = embeddings, n_layers = last).
    Returns:
        (absolute, relative): max over texts, real tokens and dimensions of |h_batch - h_alone|, and
        max over texts and real tokens of ||h_batch - h_alone|| / ||h_alone|| (L2 over dimensions).
    """
    worst, worst_relative = 0.0, 0.0
    for b, alone in enumerate(singles):
        batch_states = record.hidden(layer, b)  # [n_b, d]
        alone_states = alone.hidden(layer, 0)  # [n_b, d]
        if batch_states.shape != alone_states.shape:
            msg = f"text {b} (0-based) has {batch_states.shape[0]} tokens in the batch but {alone_states.shape[0]} alone; texts must not be truncated"
            raise ValueError(msg)
        reference = alone_states.astype(np.float64)
        diff = np.abs(batch_states.astype(np.float64) - reference)
        worst = max(worst, float(diff.max()))
        norms = np.linalg.norm(reference, axis=-1)  # [n_b]
        relative = np.linalg.norm(diff, axis=-1) / np.maximum(norms, np.finfo(np.float32).tiny)
        worst_relative = max(worst_relative, float(relative.max()))
    return worst, worst_relative


def measure(record: RecordView, singles: list) -> tuple[pd.DataFrame, tuple[float, float]]:
    """Per-block pad attention and hidden differences of one padded run.

    Returns:
        (DataFrame with LAYER_COLUMNS, one row per block l; max_hidden_diff is the output of block l,
        i.e. hidden layer l + 1), and the embeddings' (absolute, relative) max difference.
    """
    rows = []
    for layer in range(record.spec.n_layers):
        mean, top = pad_attention(record, layer)
        absolute, relative = hidden_difference(record, singles, layer + 1)
        rows.append(
            {
                "padding_side": record.padding_side,
                "attention_mask": bool(record.mask_applied),
                "layer": layer,
                "pad_attention_mass": mean,
                "pad_attention_max": top,
                "max_hidden_diff": absolute,
                "max_relative_diff": relative,
            }
        )
    return pd.DataFrame(rows, columns=list(LAYER_COLUMNS)), hidden_difference(record, singles, 0)


def padding_study(run: Callable, texts: list[str], sides=SIDES) -> PaddingStudy:
    """Run texts as one padded batch on each side, with and without the mask, and each text alone.

    Args:
        run: ``run(texts, padding_side, attention_mask) -> ForwardRecord`` (e.g. ``models.run`` bound to a model).
        texts: at least two texts whose token lengths differ.
        sides: padding sides to try ("right", "left").
    Returns:
        PaddingStudy with four settings (two per side).
    """
    if isinstance(texts, str) or len(texts) < 2:
        msg = "padding needs at least 2 texts of different lengths, one per line (--text T --text T)"
        raise ValueError(msg)
    sides = [sides] if isinstance(sides, str) else list(sides)
    for side in sides:
        if side not in SIDES:
            msg = f"padding side must be 'left' or 'right', not {side!r}"
            raise ValueError(msg)
    texts = list(texts)
    singles = [run([text], sides[0], True) for text in texts]
    lengths = [len(s.tokens[0]) for s in singles]
    if len(set(lengths)) == 1:
        msg = f"all texts have {lengths[0]} tokens, so nothing gets padded; make one text longer than the others"
        raise ValueError(msg)
    settings = []
    for side in sides:
        for mask in (True, False):
            record = run(texts, side, mask)
            layers, (embedding_diff, embedding_relative) = measure(record, singles)
            settings.append(PaddingSetting(side, mask, record, layers, embedding_diff, embedding_relative))
    return PaddingStudy(texts=texts, kind=singles[0].spec.kind, singles=singles, settings=settings)


def allowed_keys(record: RecordView, layer: int, batch: int) -> np.ndarray:
    """Which keys each padded slot may attend to under the mask the model applied. bool [n_padded, n_padded]."""
    n = record.n_padded
    return mask_rows(record.layer_record(layer).mask, batch, torch.arange(n), n, "cpu").cpu().numpy()


def positions_frame(record: RecordView) -> pd.DataFrame:
    """Token, pad flag and the position id each padded slot got: batch, slot, token, is_pad, position_id.

    ``position_id`` is what the model was given (``record.position_ids``), or the default 0..n-1 when
    the run passed none (no padding, or a model that derives positions from the pad token itself).
    """
    rows = []
    ids = record.position_ids
    for b in range(record.batch_size):
        tokens = record.padded_tokens(b)
        for slot, token in enumerate(tokens):
            given = ids is not None
            rows.append(
                {
                    "batch": b,
                    "slot": slot,
                    "token": token,
                    "is_pad": bool(record.attention_mask[b, slot] == 0),
                    "position_id": int(ids[b, slot]) if ids is not None else slot,
                    "position_ids_passed": given,
                }
            )
    return pd.DataFrame(rows)


def study_json(study: PaddingStudy, model: str) -> dict:
    """The JSON export: per setting and layer, pad attention mass and max hidden difference."""
    return {
        "model": model,
        "kind": study.kind,
        "texts": study.texts,
        "tokens": [s.tokens[0] for s in study.singles],
        "tolerance": TOLERANCE,
        "tolerance_applies_to": "max_relative_diff = max over real tokens of ||h_batch - h_alone|| / ||h_alone||",
        "layer_meaning": "layer l = block l (0-based); max_hidden_diff compares the output of block l",
        "settings": [
            {
                "padding_side": s.padding_side,
                "attention_mask": s.attention_mask,
                "matches_unpadded": s.matches_unpadded,
                "max_hidden_diff": s.max_hidden_diff,
                "max_relative_diff": s.max_relative_diff,
                "embedding_max_diff": s.embedding_diff,
                "position_ids": None if s.record.position_ids is None else s.record.position_ids.tolist(),
                "layers": [
                    {
                        "layer": int(row.layer),
                        "pad_attention_mass": float(row.pad_attention_mass),
                        "pad_attention_max": float(row.pad_attention_max),
                        "max_hidden_diff": float(row.max_hidden_diff),
                        "max_relative_diff": float(row.max_relative_diff),
                    }
                    for row in s.layers.itertuples()
                ],
            }
            for s in study.settings
        ],
    }


def summary_frame(study: PaddingStudy) -> pd.DataFrame:
    """One row per setting: whether real tokens match the unpadded runs, by how much, and the pad attention."""
    return pd.DataFrame(
        [
            {
                "setting": s.name,
                f"matches unpadded (relative ≤ {TOLERANCE:g})": s.matches_unpadded,
                "max relative difference": s.max_relative_diff,
                "max |difference|": s.max_hidden_diff,
                "max pad attention": float(s.layers["pad_attention_max"].max()),
            }
            for s in study.settings
        ]
    )


def verdict(setting: PaddingSetting, model: str) -> tuple[str, str]:
    """(level, one line) saying what padding did in one setting; level is "ok", "expected" (no mask, but
    causal attention keeps pads out of reach), "broken" (the mask did not make padding harmless) or
    "changed" (no mask: real tokens attended to pads)."""
    s = setting
    pad_max = float(s.layers["pad_attention_max"].max())
    if s.attention_mask and s.matches_unpadded:
        line = (
            f"**{s.name}**: real tokens match the unpadded runs (max relative difference {s.max_relative_diff:.1e} ≤ "
            f"{TOLERANCE:g}); attention on pads is exactly {pad_max:g}."
        )
        if s.max_hidden_diff > TOLERANCE:
            line += (
                f" The absolute difference reaches {s.max_hidden_diff:.1e}: this model has hidden values in the hundreds, "
                "where float32 rounding alone (a differently shaped matmul) is that large."
            )
        return "ok", line
    if s.attention_mask:
        return "broken", (
            f"**{s.name}**: {model} does NOT reproduce the unpadded run: max relative difference "
            f"{s.max_relative_diff:.2e} > {TOLERANCE:g}. Padding changes this model's output even with the mask."
        )
    if s.matches_unpadded:
        return "expected", (
            f"**{s.name}**: still matches (relative {s.max_relative_diff:.1e}): causal attention never lets a real token see "
            "pads placed after it, so right padding is harmless for a decoder even without the mask."
        )
    return "changed", (
        f"**{s.name}**: real tokens diverge from the unpadded run by up to {s.max_relative_diff:.2f} (relative), "
        f"{s.max_hidden_diff:.3g} absolute; they put up to {pad_max:.0%} of their attention on pads."
    )
