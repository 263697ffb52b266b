"""Rule-based head types from per-head statistics (``ForwardRecord.head_stats`` plus probe scores).

Each rule is one threshold on one statistic, so a label can always be explained by a number
shown next to it. A head may carry several labels (a previous-token head is also diagonal);
``primary_type`` picks one, most specific first, for colouring a layer x head grid.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import pandas as pd

__all__ = [
    "HEAD_TYPES",
    "HeadThresholds",
    "HeadType",
    "classify_heads",
    "max_entropy",
    "sink_rate",
]

HeadType = Literal["induction", "previous_token", "next_token", "sink_noop", "sink", "diagonal", "broad"]
# Priority for primary_type: the rarest, most specific pattern first. "sink_noop" (a sink head that
# writes little: Kobayashi et al. 2020) needs the norm columns (run(values=True), norm_stats).
HEAD_TYPES: tuple[HeadType, ...] = ("induction", "previous_token", "next_token", "sink_noop", "sink", "diagonal", "broad")


@dataclass(frozen=True)
class HeadThresholds:
    """Thresholds of the head-type rules; every comparison is ``statistic >= threshold`` unless noted."""

    # prev_token = mean A[i, i-1]: at 0.5 most of each query's mass goes to the token before it
    # (Clark et al. 2019 report BERT heads with > 0.5 on the previous token).
    previous_token: float = 0.5
    # next_token = mean A[i, i+1]; encoders only (a causal mask forbids it).
    next_token: float = 0.5
    # max(first_token_mass, special_token_mass): ε = 0.3 is the sink threshold of Gu et al. 2024
    # (Sink^ε = share of heads with α > ε); special tokens cover BERT's [CLS]/[SEP] "vertical" heads.
    sink: float = 0.3
    # mean_distance <= this many tokens: mass on or beside the diagonal (self, previous, next),
    # Kovaleva et al. 2019's "diagonal" pattern.
    diagonal_distance: float = 1.0
    # entropy / max_entropy: 0.8 of the uniform entropy means attention spread over most keys.
    broad_entropy: float = 0.8
    # induction score (repeated random tokens); 0.4 sits well above random heads (~1/T) and below
    # the clear induction heads of small LMs (> 0.5); decoders only.
    induction: float = 0.4
    # output_share < this x (1 / heads in the layer): a sink head that writes less than half of an
    # even share of its layer's attention output is labelled "sink_noop" (its sink weight moves little).
    noop_share: float = 0.5

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def max_entropy(n_tokens: int, kind: str) -> float:
    """Mean over queries of the largest possible entropy (uniform attention), in nats.

    Encoders: every query sees n keys, log n. Decoders: query i sees i + 1 keys, so the mean of
    log(i + 1) over i = 0..n-1, which is log(n!) / n.
    """
    if n_tokens < 1:
        msg = f"n_tokens must be >= 1, got {n_tokens}"
        raise ValueError(msg)
    if kind == "encoder":
        return math.log(n_tokens)
    if kind == "decoder":
        return math.lgamma(n_tokens + 1) / n_tokens
    msg = f"kind must be 'encoder' or 'decoder', not {kind!r}"
    raise ValueError(msg)


def classify_heads(table: pd.DataFrame, *, kind: str, n_tokens, thresholds: HeadThresholds | None = None) -> pd.DataFrame:
    """Label every head by the rules in ``HeadThresholds``.

    Args:
        table: one row per head with entropy, first_token_mass, special_token_mass, prev_token,
            next_token, mean_distance, and optionally induction.
        kind: "encoder" or "decoder" (next-token needs an encoder, induction a decoder).
        n_tokens: tokens of the text the statistics came from: an int, or one per row.
        thresholds: defaults to ``HeadThresholds()``.
    Returns:
        A copy of ``table`` plus normalised_entropy, sink_mass, one bool column per type
        (``is_previous_token``, ...), ``types`` ("previous_token, diagonal"; "" for none) and
        ``primary_type`` (the first matching type in HEAD_TYPES order, else "other").
    """
    th = thresholds or HeadThresholds()
    needed = ["entropy", "first_token_mass", "special_token_mass", "prev_token", "next_token", "mean_distance"]
    missing = [c for c in needed if c not in table.columns]
    if missing:
        msg = f"head table lacks {', '.join(missing)}; pass the frame from ForwardRecord.head_stats()"
        raise ValueError(msg)
    out = table.copy()
    counts = np.broadcast_to(np.asarray(n_tokens), (len(out),))
    out["normalised_entropy"] = out["entropy"].to_numpy() / np.array([max(max_entropy(int(n), kind), 1e-12) for n in counts])
    out["sink_mass"] = np.maximum(out["first_token_mass"].to_numpy(), out["special_token_mass"].to_numpy())
    rules = {
        "previous_token": out["prev_token"] >= th.previous_token,
        "next_token": (out["next_token"] >= th.next_token) & (kind == "encoder"),
        "sink": out["sink_mass"] >= th.sink,
        "diagonal": out["mean_distance"] <= th.diagonal_distance,
        "broad": out["normalised_entropy"] >= th.broad_entropy,
    }
    if "output_share" in out.columns:
        heads_per_layer = out.groupby("layer")["head"].transform("count").to_numpy()
        rules["sink_noop"] = rules["sink"] & (out["output_share"] < th.noop_share / heads_per_layer)
    else:
        rules["sink_noop"] = pd.Series(False, index=out.index)
    if "induction" in out.columns and kind == "decoder":
        rules["induction"] = out["induction"] >= th.induction
    else:
        rules["induction"] = pd.Series(False, index=out.index)
    for name in HEAD_TYPES:
        out[f"is_{name}"] = rules[name].to_numpy(dtype=bool)
    flags = out[[f"is_{name}" for name in HEAD_TYPES]].to_numpy()  # [heads, types]
    out["types"] = [", ".join(t for t, f in zip(HEAD_TYPES, row) if f) for row in flags]
    out["primary_type"] = [next((t for t, f in zip(HEAD_TYPES, row) if f), "other") for row in flags]
    return out


def sink_rate(table: pd.DataFrame, epsilon: float = 0.3) -> float:
    """Sink^ε of Gu et al. 2024: the share of heads whose first-token mass α exceeds ε."""
    alpha = table["first_token_mass"].to_numpy()
    return float((alpha > epsilon).mean()) if len(alpha) else float("nan")
