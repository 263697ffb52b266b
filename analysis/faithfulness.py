"""Faithfulness of input-token rankings (DeYoung et al. 2020, ERASER), as pure functions over arrays.

A method ranks the input tokens (higher score = more important). For each fraction k of the removable
tokens (10–50% by default), the top-k tokens are deleted from the input (the tokens after them shift
left), and the model's score f of the prediction is read again:

- comprehensiveness = f(x) − f(x ∖ top-k): how much the prediction loses without the top tokens
  (higher = the ranking found what the model used);
- sufficiency = f(x) − f(top-k only): how much it loses with only the top tokens left
  (lower = the top tokens suffice).

Each is averaged over the fractions (AOPC, area over the perturbation curve). The baseline is
``n_random`` random rankings (50 by default; a seeded ``numpy.random.Generator``, never the global RNG):
their mean and the central 95% of their AOPCs (2.5th to 97.5th percentile). The rule: a method **beats
random** on this text only when its comprehensiveness is above that interval **and** its sufficiency
below it; inside the interval it does no better than a random ranking would by chance.

Deleting ``k = round(fraction · m)`` of the ``m`` removable tokens, at least 1 and at most m − 1, so a
reduced input always keeps a token it can be read at. Tokens that are never removed (special tokens,
the target position) stay in every variant. The model side (``models.faithfulness``) evaluates f on
the variants a ``DeletionPlan`` lists and hands the values back to ``summarise``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = [
    "FRACTIONS",
    "INTERVAL",
    "N_RANDOM",
    "RANDOM",
    "DeletionPlan",
    "aopc",
    "deletion_plan",
    "random_orders",
    "ranking",
    "removal_counts",
    "spearman",
    "over_texts",
    "summarise",
    "verdict_words",
]

FRACTIONS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5)
RANDOM = "random"  # the baseline's name in the curves
N_RANDOM = 50  # random rankings: enough for the 2.5th and 97.5th percentiles of their AOPCs to mean something
INTERVAL = (0.025, 0.975)  # the random rankings' central 95%


def ranking(scores: np.ndarray, removable: np.ndarray) -> np.ndarray:
    """The removable positions, most important first (higher score first; equal scores by position).

    Args:
        scores: float [n]; removable: bool [n].
    Returns:
        int64 [m], m = removable.sum().
    """
    positions = np.flatnonzero(removable)
    order = np.lexsort((positions, -np.asarray(scores, dtype=np.float64)[positions]))  # last key sorts first
    return positions[order].astype(np.int64)


def removal_counts(m: int, fractions: Sequence[float]) -> list[int]:
    """Tokens to delete at each fraction of ``m`` removable tokens: round(f·m), at least 1, at most m − 1."""
    return [int(min(max(int(np.floor(f * m + 0.5)), 1), m - 1)) for f in fractions]


def random_orders(removable: np.ndarray, n_random: int, seed: int) -> list[np.ndarray]:
    """``n_random`` random rankings of the removable positions, reproducible from ``seed``. int64 [m] each."""
    generator = np.random.default_rng(seed)
    positions = np.flatnonzero(removable).astype(np.int64)
    return [generator.permutation(positions) for _ in range(n_random)]


def aopc(full: float, reduced: np.ndarray) -> float:
    """Area over the perturbation curve: the mean over fractions of f(x) − f(reduced input)."""
    return float(np.mean(full - np.asarray(reduced, dtype=np.float64)))


@dataclass(frozen=True)
class DeletionPlan:
    """Every reduced input a faithfulness measurement needs, each listed once.

    ``keeps`` row 0 is the full input; ``comprehensive[name]`` / ``sufficient[name]`` give, per fraction,
    the row of ``keeps`` with that ranking's top-k deleted / with only its top-k (and the tokens never
    removed) kept. Random rankings are named ``random:0``, ``random:1``, ...
    """

    keeps: np.ndarray  # bool [V, n]: the tokens each variant keeps
    comprehensive: dict[str, list[int]]
    sufficient: dict[str, list[int]]
    fractions: tuple[float, ...]
    counts: tuple[int, ...]  # tokens deleted (comprehensiveness) / kept (sufficiency) at each fraction
    methods: tuple[str, ...]  # the ranked methods, in the order given
    n_random: int


def _check(scores: Mapping[str, np.ndarray], removable: np.ndarray, fractions: Sequence[float], n_random: int) -> None:
    if not isinstance(scores, Mapping) or not scores:
        msg = "no rankings given; pass {method name: scores [n]} for at least one method"
        raise ValueError(msg)
    n = len(removable)
    for name, values in scores.items():
        if not isinstance(name, str) or not name or name == RANDOM or name.startswith(f"{RANDOM}:"):
            msg = f"method names must be non-empty strings other than {RANDOM!r}, not {name!r}"
            raise ValueError(msg)
        array = np.asarray(values)
        if array.shape != (n,) or not np.issubdtype(array.dtype, np.number):
            msg = f"scores of {name!r} must be a numeric array of shape ({n},) (one per token), not {array.shape}"
            raise ValueError(msg)
        if not np.isfinite(array.astype(np.float64)).all():
            msg = f"scores of {name!r} contain NaN or infinity; give a finite score per token"
            raise ValueError(msg)
    if int(np.sum(removable)) < 2:
        msg = f"only {int(np.sum(removable))} token(s) can be removed from this input; faithfulness needs at least 2 (use a longer text)"
        raise ValueError(msg)
    if not fractions or any(isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f < 1 for f in fractions):
        msg = f"fractions must be numbers strictly between 0 and 1 (shares of tokens removed), not {list(fractions)!r}"
        raise ValueError(msg)
    if isinstance(n_random, bool) or not isinstance(n_random, (int, np.integer)) or n_random < 1:
        msg = f"n_random must be a whole number >= 1 (random rankings in the baseline), not {n_random!r}"
        raise ValueError(msg)


def deletion_plan(
    scores: Mapping[str, np.ndarray],
    removable: np.ndarray,
    fractions: Sequence[float] = FRACTIONS,
    n_random: int = N_RANDOM,
    seed: int = 0,
) -> DeletionPlan:
    """The reduced inputs for every method's ranking and for ``n_random`` random rankings.

    Args:
        scores: method name -> float [n] (higher = more important).
        removable: bool [n]: the tokens a ranking may delete (not special tokens, not the target position).
        fractions: shares of the removable tokens to delete, each in (0, 1).
    Raises:
        ValueError: no method, wrong shapes, non-finite scores, fewer than 2 removable tokens, bad fractions.
    """
    removable = np.asarray(removable, dtype=bool)
    _check(scores, removable, fractions, n_random)
    counts = removal_counts(int(removable.sum()), fractions)
    orders = {name: ranking(np.asarray(values, dtype=np.float64), removable) for name, values in scores.items()}
    orders.update({f"{RANDOM}:{i}": order for i, order in enumerate(random_orders(removable, n_random, seed))})
    rows: dict[bytes, int] = {}
    keeps: list[np.ndarray] = []

    def row_of(keep: np.ndarray) -> int:
        key = np.packbits(keep).tobytes()
        if key not in rows:
            rows[key] = len(keeps)
            keeps.append(keep)
        return rows[key]

    row_of(np.ones(len(removable), dtype=bool))
    comprehensive: dict[str, list[int]] = {}
    sufficient: dict[str, list[int]] = {}
    for name, order in orders.items():
        comprehensive[name], sufficient[name] = [], []
        for k in counts:
            without = np.ones(len(removable), dtype=bool)
            without[order[:k]] = False
            only = ~removable
            only[order[:k]] = True
            comprehensive[name].append(row_of(without))
            sufficient[name].append(row_of(only))
    return DeletionPlan(
        keeps=np.stack(keeps),
        comprehensive=comprehensive,
        sufficient=sufficient,
        fractions=tuple(float(f) for f in fractions),
        counts=tuple(counts),
        methods=tuple(scores),
        n_random=int(n_random),
    )


def summarise(plan: DeletionPlan, values: np.ndarray) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Comprehensiveness and sufficiency of each method against the random baseline.

    Args:
        plan: from ``deletion_plan``.
        values: float [V]: f of each of ``plan.keeps``' variants (row 0 = the full input).
    Returns:
        (table, curves). table: one row per method — method, comprehensiveness, sufficiency (AOPC),
        comprehensiveness_random and sufficiency_random (the random rankings' mean), their 95% intervals
        (``*_random_low``, ``*_random_high``), beats_random (outside both intervals, on the right side).
        curves: method, fraction, tokens (how many deleted / kept), comprehensiveness, sufficiency at each
        fraction; "random" is the mean over the random rankings.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.shape != (len(plan.keeps),):
        msg = f"values must be one f per variant of the plan ({len(plan.keeps)}), not shape {values.shape}"
        raise ValueError(msg)
    full = values[0]

    def curve(rows: dict[str, list[int]], name: str) -> np.ndarray:
        return full - values[rows[name]]  # [F]

    randoms = [f"{RANDOM}:{i}" for i in range(plan.n_random)]
    random_comps = np.stack([curve(plan.comprehensive, name) for name in randoms])  # [R, F]
    random_suffs = np.stack([curve(plan.sufficient, name) for name in randoms])
    random_comp, random_suff = random_comps.mean(axis=0), random_suffs.mean(axis=0)  # [F]
    comp_low, comp_high = np.quantile(random_comps.mean(axis=1), INTERVAL)  # of the random rankings' AOPCs
    suff_low, suff_high = np.quantile(random_suffs.mean(axis=1), INTERVAL)
    comp_random, suff_random = float(random_comp.mean()), float(random_suff.mean())
    table_rows, curve_rows = [], []
    for name in plan.methods:
        comp, suff = curve(plan.comprehensive, name), curve(plan.sufficient, name)
        table_rows.append(
            {
                "method": name,
                "comprehensiveness": float(comp.mean()),
                "sufficiency": float(suff.mean()),
                "comprehensiveness_random": comp_random,
                "comprehensiveness_random_low": float(comp_low),
                "comprehensiveness_random_high": float(comp_high),
                "sufficiency_random": suff_random,
                "sufficiency_random_low": float(suff_low),
                "sufficiency_random_high": float(suff_high),
                "beats_random": bool(comp.mean() > comp_high and suff.mean() < suff_low),
            }
        )
        curve_rows += _curve_rows(name, plan, comp, suff)
    curve_rows += _curve_rows(RANDOM, plan, random_comp, random_suff)
    return pd.DataFrame(table_rows), pd.DataFrame(curve_rows)


def _curve_rows(name: str, plan: DeletionPlan, comp: np.ndarray, suff: np.ndarray) -> list[dict]:
    return [
        {"method": name, "fraction": f, "tokens": k, "comprehensiveness": float(c), "sufficiency": float(s)}
        for f, k, c, s in zip(plan.fractions, plan.counts, comp, suff)
    ]


def spearman(scores: Mapping[str, np.ndarray], removable: np.ndarray) -> pd.DataFrame:
    """Spearman rank correlation between the methods' scores over the removable tokens.

    Returns:
        Square DataFrame (methods x methods); NaN where a method gives every token the same score.
    """
    removable = np.asarray(removable, dtype=bool)
    frame = pd.DataFrame({name: np.asarray(values, dtype=np.float64)[removable] for name, values in scores.items()})
    return frame.corr(method="spearman")


def verdict_words(row: Mapping, full: float, what: str) -> tuple[str, str]:
    """One method's two measures in plain words, with the random rankings' 95% interval.

    Args:
        row: a row of ``summarise``'s table.
        full: f(x) on the whole input.
        what: what f measures, e.g. "p(' Mary')" or "the cosine to the full sentence embedding".
    Returns:
        (comprehensiveness, sufficiency) sentences.
    """
    comp, suff = float(row["comprehensiveness"]), float(row["sufficiency"])
    comp_words = (
        f"deleting the top tokens lowers {what} by {comp:.3g} on average (of {full:.3g}); random deletions lower it by "
        f"{row['comprehensiveness_random_low']:.3g} to {row['comprehensiveness_random_high']:.3g} (95%): higher is better"
    )
    kept = 1 - suff / full if full else float("nan")
    suff_words = (
        f"keeping only the top tokens keeps {kept:.0%} of {what} (a loss of {suff:.3g}); keeping random ones loses "
        f"{row['sufficiency_random_low']:.3g} to {row['sufficiency_random_high']:.3g} (95%): lower loss is better"
    )
    return comp_words, suff_words


def over_texts(tables: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Each method's faithfulness over a set of texts: means with 95% intervals, and how often it beats random.

    Args:
        tables: one ``summarise`` table per text (a method missing from a text is left out there).
    Returns:
        One row per method: texts, comprehensiveness (mean over texts) with ``_low`` / ``_high`` (Student-t 95%
        interval of that mean), the same for sufficiency and for the random baselines, beats_random_share
        (the share of texts on which the method beat random) and beats_random_texts.
    """
    from attnscope.analysis.corpus import t_interval  # scipy's t-distribution, imported when a set is scored

    if not tables:
        msg = "no texts were scored; give a file with at least one usable text"
        raise ValueError(msg)
    frame = pd.concat([t.assign(text_index=i) for i, t in enumerate(tables)], ignore_index=True)
    measures = ["comprehensiveness", "sufficiency", "comprehensiveness_random", "sufficiency_random"]
    rows = []
    for method, group in frame.groupby("method", sort=False):
        row: dict = {"method": method, "texts": len(group)}
        for measure in measures:
            values = group[measure].to_numpy(dtype=np.float64)
            mean, std = values.mean(), values.std(ddof=1) if len(values) > 1 else np.nan
            low, high = t_interval(np.array(mean), np.array(std), np.array(len(values)))
            row.update({measure: float(mean), f"{measure}_low": float(low), f"{measure}_high": float(high)})
        row["beats_random_texts"] = int(group["beats_random"].sum())
        row["beats_random_share"] = float(group["beats_random"].mean())
        rows.append(row)
    return pd.DataFrame(rows)
