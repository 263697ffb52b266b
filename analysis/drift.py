"""Contextual embedding drift: how one word's vector changes with its context, layer by layer.

Definitions follow Ethayarajh (2019), "How Contextual are Contextualized Word Representations?":
- self-similarity at a layer: mean cosine over all pairs of the word's occurrences in different contexts;
- anisotropy baseline at a layer: mean cosine of random token pairs drawn from different contexts
  (seeded, so the same pairs at every layer; special tokens and the word's own pieces excluded);
- adjusted self-similarity: self-similarity minus the baseline (how much more alike the word's
  occurrences are than any two tokens at that depth).

Layer 0 is the hidden state entering the first block (``ForwardRecord.hidden(0)``). For a decoder
with rotary positions (Llama, SmolLM2) that is exactly the row of the token-embedding table, so a
word split into the same pieces has one identical layer-0 vector everywhere. For BERT-like encoders
it is word + position + token-type embeddings after LayerNorm, so layer-0 vectors of the same word
differ only through the word's position.

A word split into several subword pieces is represented by the mean of its pieces' vectors.
Nothing here imports transformers: the tokenizer and record are used through their methods only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

__all__ = [
    "BASELINE_PAIRS",
    "BASELINE_SEED",
    "DEFAULT_CONTEXTS",
    "DEFAULT_WORD",
    "DriftResult",
    "Occurrence",
    "SENSE_SEPARATOR",
    "SIMILARITY_COLUMNS",
    "UNLABELLED",
    "anisotropy_baseline",
    "baseline_pairs",
    "cosine_matrix",
    "depth_frame",
    "drift",
    "find_word",
    "layer0_is_static",
    "locate",
    "occurrence_frame",
    "pair_means",
    "parse_contexts",
    "pca_2d",
    "pca_frame",
    "self_similarity",
    "similarity_frame",
    "tokens_in_span",
    "word_pieces",
]


DEFAULT_WORD = "mouse"

# Two senses of "mouse". The words that tell the senses apart come before "mouse", so that a decoder
# (which sees only the left context) can separate them too; "mouse" is always mid-sentence and in
# lower case so that a BPE tokenizer splits it into the same piece (" mouse") everywhere.
DEFAULT_CONTEXTS = (
    "animal | The cat chased a mouse across the barn.",
    "animal | In the field, a tiny grey mouse nibbled on seeds.",
    "animal | The owl swooped down and caught the mouse.",
    "animal | A hungry mouse ate the cheese in the kitchen.",
    "device | She plugged the cable of her wireless mouse into the laptop.",
    "device | To open the file, double-click with the left mouse button.",
    "device | The computer mouse stopped working, so the cursor froze.",
    "device | He bought a new gaming keyboard and mouse for his PC.",
)

SENSE_SEPARATOR = "|"
UNLABELLED = "(none)"
BASELINE_PAIRS = 500  # random token pairs per layer; enough for a stable mean, cheap at any depth
BASELINE_SEED = 0

SIMILARITY_COLUMNS = ("layer", "context_a", "context_b", "sense_a", "sense_b", "cosine")


@dataclass(frozen=True)
class Occurrence:
    """Where the word sits in one context."""

    context: str
    sense: str
    span: tuple[int, int]  # character span of the occurrence used
    token_index: np.ndarray  # int64 [p]: positions of its pieces among the context's real tokens
    pieces: tuple[str, ...]  # the subword tokens, e.g. ("track", "##ball")
    n_matches: int  # how many whole-word occurrences the context has (the first is used)

    @property
    def visible_context(self) -> str:
        """The text a causal (decoder) representation of the word can see: up to the word's end."""
        return self.context[: self.span[1]]


@dataclass
class DriftResult:
    """A word's vectors across contexts and depth, and the statistics built from them."""

    word: str
    kind: str  # "encoder" | "decoder"
    occurrences: list[Occurrence]
    vectors: np.ndarray  # float32 [layer, context, d]; layer 0 = embeddings
    similarity: np.ndarray  # float64 [layer, context, context] cosine
    baseline: np.ndarray  # float64 [layer] anisotropy baseline
    baseline_pairs: int
    notes: list[str] = field(default_factory=list)

    @property
    def contexts(self) -> list[str]:
        return [o.context for o in self.occurrences]

    @property
    def senses(self) -> list[str]:
        return [o.sense for o in self.occurrences]

    @property
    def n_layers(self) -> int:
        """Number of hidden layers including the embeddings (blocks + 1)."""
        return int(self.vectors.shape[0])


# -- input ---------------------------------------------------------------------------------------
def parse_contexts(lines) -> tuple[list[str], list[str]]:
    """Contexts and senses from lines like ``"animal | The mouse ate the cheese."``.

    A line without ``|`` is an unlabelled context (sense ``"(none)"``); blank lines are skipped.

    Args:
        lines: one string with one context per line, or a sequence of such lines.
    Returns:
        (contexts, senses), two lists of equal length.
    """
    if isinstance(lines, str):
        lines = lines.splitlines()
    contexts, senses = [], []
    for raw in lines:
        line = str(raw).strip()
        if not line:
            continue
        if SENSE_SEPARATOR in line:
            sense, _, text = line.partition(SENSE_SEPARATOR)
            sense, text = sense.strip() or UNLABELLED, text.strip()
        else:
            sense, text = UNLABELLED, line
        if not text:
            msg = f"line {raw!r} has a sense label but no sentence; write it as 'sense | sentence'"
            raise ValueError(msg)
        contexts.append(text)
        senses.append(sense)
    _check_contexts(contexts)
    return contexts, senses


def _check_contexts(contexts: list[str]) -> None:
    if len(contexts) < 2:
        msg = f"drift needs at least 2 contexts, got {len(contexts)}; add sentences (one per line) that use the word"
        raise ValueError(msg)
    seen: dict[str, int] = {}
    for i, text in enumerate(contexts):
        if text in seen:
            msg = f"context {i + 1} repeats context {seen[text] + 1} ({text!r}); remove the duplicate"
            raise ValueError(msg)
        seen[text] = i


def _check_word(word) -> str:
    if not isinstance(word, str) or not word.strip():
        msg = "the word is empty; type the word to follow across contexts (e.g. mouse)"
        raise ValueError(msg)
    return word.strip()


def find_word(text: str, word: str) -> list[tuple[int, int]]:
    """Character spans of ``word`` in ``text`` as a whole word, case-insensitively, in order."""
    word = _check_word(word)
    pattern = re.compile(rf"(?<!\w){re.escape(word)}(?!\w)", re.IGNORECASE)
    return [m.span() for m in pattern.finditer(text)]


def tokens_in_span(offsets, span: tuple[int, int]) -> np.ndarray:
    """Indices of the tokens whose character offsets overlap ``span``.

    Args:
        offsets: [n] (start, end) character offsets per token; special tokens have (0, 0).
        span: (start, end) of the word.
    Returns:
        int64 [p] token indices, in order (empty when no token overlaps).
    """
    start, end = span
    hits = [i for i, (s, e) in enumerate(offsets) if e > s and e > start and s < end]
    return np.asarray(hits, dtype=np.int64)


def word_pieces(tokenizer, text: str, spans: list[tuple[int, int]], ids=None) -> list[tuple[np.ndarray, tuple[str, ...]]]:
    """The tokens covering each character span of ``text``: (token indices, their pieces) per span.

    One place for locating a word in tokens (the Drift page, ``cli.py drift`` and corpus jobs).

    Args:
        tokenizer: a fast Hugging Face tokenizer (it must return offsets).
        spans: (start, end) character spans, e.g. from ``find_word``.
        ids: the token ids the text had inside a recorded batch; when given, they must equal the
            text's own tokenization (a truncated text would misplace the word).
    Returns:
        per span: (int64 [p] token indices, the p token strings); empty indices when no token covers it.
    Raises:
        ValueError: a slow tokenizer (no offsets), or ``ids`` that differ from the text's tokenization.
    """
    try:
        enc = tokenizer(text, return_offsets_mapping=True)
    except NotImplementedError:
        msg = "this tokenizer cannot report character offsets (not a 'fast' tokenizer); use a model with a fast tokenizer"
        raise ValueError(msg) from None
    own = list(map(int, enc["input_ids"]))
    if ids is not None and [int(i) for i in ids] != own:
        msg = "the text was tokenized differently inside the batch than alone (truncated?); shorten it"
        raise ValueError(msg)
    offsets = [tuple(map(int, pair)) for pair in enc["offset_mapping"]]
    found = []
    for span in spans:
        index = tokens_in_span(offsets, span)
        found.append((index, tuple(tokenizer.convert_ids_to_tokens([own[j] for j in index]))))
    return found


def locate(tokenizer, contexts: list[str], senses: list[str], word: str) -> tuple[list[Occurrence], list[str]]:
    """Find the word's subword tokens in every context (first whole-word occurrence).

    Args:
        tokenizer: a fast Hugging Face tokenizer (it must return offsets).
        contexts, senses: from ``parse_contexts``.
        word: the word to follow.
    Returns:
        (occurrences, notes); notes say which contexts had several occurrences.
    Raises:
        ValueError naming every context that lacks the word.
    """
    word = _check_word(word)
    _check_contexts(list(contexts))
    if len(senses) != len(contexts):
        msg = f"{len(contexts)} contexts but {len(senses)} senses; give one sense per context (or none)"
        raise ValueError(msg)
    spans = [find_word(text, word) for text in contexts]
    missing = [i for i, found in enumerate(spans) if not found]
    if missing:
        listed = "; ".join(f"{i + 1}: {contexts[i]!r}" for i in missing)
        which = "context" if len(missing) == 1 else "contexts"
        msg = f"{word!r} does not occur as a whole word in {which} {listed}; edit or remove {'it' if len(missing) == 1 else 'them'}"
        raise ValueError(msg)
    occurrences, notes = [], []
    for i, (text, sense, found) in enumerate(zip(contexts, senses, spans)):
        [(index, pieces)] = word_pieces(tokenizer, text, found[:1])
        if index.size == 0:
            msg = f"no token of context {i + 1} covers {word!r} (the tokenizer dropped it?); rephrase that context"
            raise ValueError(msg)
        occurrences.append(Occurrence(text, sense, found[0], index, pieces, len(found)))
        if len(found) > 1:
            notes.append(f"context {i + 1} has {word!r} {len(found)} times; the first occurrence is used")
    return occurrences, notes


# -- statistics ----------------------------------------------------------------------------------
def cosine_matrix(vectors: np.ndarray) -> np.ndarray:
    """Pairwise cosine similarity along the last axis.

    Args:
        vectors: [..., c, d].
    Returns:
        float64 [..., c, c]; a zero vector has cosine 0 with everything.
    """
    v = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(v, axis=-1, keepdims=True)
    unit = np.divide(v, norms, out=np.zeros_like(v), where=norms > 0)
    return np.clip(unit @ np.swapaxes(unit, -1, -2), -1.0, 1.0)


def self_similarity(vectors: np.ndarray) -> float:
    """Mean cosine over all pairs of different occurrences (Ethayarajh 2019); NaN below 2 occurrences.

    Args:
        vectors: [occurrence, d].
    """
    v = np.asarray(vectors, dtype=np.float64)
    if v.shape[0] < 2:
        return float("nan")
    norms = np.linalg.norm(v, axis=-1, keepdims=True)
    unit = np.divide(v, norms, out=np.zeros_like(v), where=norms > 0)
    total = unit.sum(0)
    # Σ_{a≠b} cos(a, b) = |Σ u|² - Σ |u|², without forming the [c, c] matrix.
    pair_sum = float(total @ total - (unit * unit).sum())
    c = v.shape[0]
    return pair_sum / (c * (c - 1))


def pair_means(similarity: np.ndarray, senses: list[str]) -> pd.DataFrame:
    """Within-sense and across-sense mean cosine per layer, and Ethayarajh's self-similarity.

    Args:
        similarity: [layer, c, c] cosine matrices.
        senses: [c] sense label of each context.
    Returns:
        DataFrame: layer, within_sense, across_sense, self_similarity (NaN where no such pair exists).
    """
    sim = np.asarray(similarity, dtype=np.float64)
    c = sim.shape[-1]
    a, b = np.triu_indices(c, k=1)  # every unordered pair of different contexts once
    labels = np.asarray(senses, dtype=object)
    same = labels[a] == labels[b]
    rows = []
    for layer in range(sim.shape[0]):
        values = sim[layer, a, b]
        rows.append(
            {
                "layer": layer,
                "within_sense": float(values[same].mean()) if same.any() else np.nan,
                "across_sense": float(values[~same].mean()) if (~same).any() else np.nan,
                "self_similarity": float(values.mean()),
            }
        )
    return pd.DataFrame(rows)


def baseline_pairs(lengths: list[int], excluded: list[np.ndarray], n_pairs: int = BASELINE_PAIRS, seed: int = BASELINE_SEED):
    """Seeded random pairs of tokens from two different contexts.

    Args:
        lengths: [c] number of real tokens per context.
        excluded: per context, int positions never drawn (special tokens, the word's pieces).
        n_pairs: how many pairs (none when fewer than two contexts have tokens to draw).
    Returns:
        int64 [p, 4]: (context_a, token_a, context_b, token_b).
    """
    pools = [np.setdiff1d(np.arange(n), ex) for n, ex in zip(lengths, excluded)]
    usable = [i for i, pool in enumerate(pools) if pool.size]
    if len(usable) < 2:
        return np.zeros((0, 4), dtype=np.int64)
    rng = np.random.default_rng(seed)
    pairs = np.empty((n_pairs, 4), dtype=np.int64)  # drawn with replacement
    for k in range(len(pairs)):
        ca, cb = rng.choice(usable, size=2, replace=False)
        pairs[k] = (ca, rng.choice(pools[ca]), cb, rng.choice(pools[cb]))
    return pairs


def anisotropy_baseline(token_vectors: list[np.ndarray], pairs: np.ndarray) -> np.ndarray:
    """Mean cosine of the given token pairs at every layer.

    Args:
        token_vectors: per context, [layer, n_c, d] hidden states of its real tokens.
        pairs: int [p, 4] from ``baseline_pairs``.
    Returns:
        float64 [layer]; NaN when there are no pairs.
    """
    n_layers = token_vectors[0].shape[0]
    if len(pairs) == 0:
        return np.full(n_layers, np.nan)
    left = np.stack([token_vectors[ca][:, ta] for ca, ta, _, _ in pairs], axis=1).astype(np.float64)  # [layer, p, d]
    right = np.stack([token_vectors[cb][:, tb] for _, _, cb, tb in pairs], axis=1).astype(np.float64)  # [layer, p, d]
    norms = np.linalg.norm(left, axis=-1) * np.linalg.norm(right, axis=-1)  # [layer, p]
    dots = (left * right).sum(-1)
    cos = np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)
    return cos.mean(axis=1)


def pca_2d(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project points onto their first two principal components.

    Args:
        vectors: [c, d].
    Returns:
        (coords float64 [c, 2], explained variance ratio [2]). Signs are fixed so that the point with
        the largest |coordinate| on each component is positive (stable across runs).
    """
    x = np.asarray(vectors, dtype=np.float64)
    x = x - x.mean(axis=0, keepdims=True)
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    k = min(2, s.size)
    coords = np.zeros((x.shape[0], 2))
    coords[:, :k] = u[:, :k] * s[:k]
    for j in range(2):
        top = np.argmax(np.abs(coords[:, j]))
        if coords[top, j] < 0:
            coords[:, j] = -coords[:, j]
    total = float((s**2).sum())
    ratio = np.zeros(2)
    if total > 0:
        ratio[:k] = s[:k] ** 2 / total
    return coords, ratio


# -- the whole study -----------------------------------------------------------------------------
def drift(
    record, tokenizer, word: str, senses: list[str] | None = None, *, n_pairs: int = BASELINE_PAIRS, seed: int = BASELINE_SEED
) -> DriftResult:
    """A word's contextual drift from one recorded batch of contexts.

    Args:
        record: ``ForwardRecord`` of ``run(lm, contexts)`` (one text per context, mask applied).
        tokenizer: the same model's fast tokenizer (for character offsets).
        word: the word to follow (whole word, case-insensitive; the first occurrence per context).
        senses: one label per context (default: all unlabelled).
        n_pairs, seed: the anisotropy baseline's random token pairs.
    Returns:
        DriftResult with vectors [layer, context, d], cosine matrices [layer, context, context] and the baseline [layer].
    """
    contexts = list(record.texts)
    senses = [UNLABELLED] * len(contexts) if senses is None else list(senses)
    occurrences, notes = locate(tokenizer, contexts, senses, word)
    n_hidden = record.spec.n_layers + 1
    token_vectors, excluded = [], []
    for b, occ in enumerate(occurrences):
        try:
            word_pieces(tokenizer, occ.context, [], ids=record.input_ids[b][record.real_index(b)])
        except ValueError:
            msg = f"context {b + 1} was tokenized differently in the batch (truncated?); shorten it"
            raise ValueError(msg) from None
        token_vectors.append(np.stack([record.hidden(layer, b) for layer in range(n_hidden)]))  # [layer, n_b, d]
        special, _ = record.token_classes(b)
        excluded.append(np.union1d(np.flatnonzero(special), occ.token_index))
    vectors = np.stack([tv[:, occ.token_index].mean(axis=1) for tv, occ in zip(token_vectors, occurrences)], axis=1)  # [layer, c, d]
    pairs = baseline_pairs([tv.shape[1] for tv in token_vectors], excluded, n_pairs=n_pairs, seed=seed)
    if record.spec.kind == "decoder":
        notes.append("decoder: each occurrence sees only the text up to the word (its left context)")
    return DriftResult(
        word=_check_word(word),
        kind=record.spec.kind,
        occurrences=occurrences,
        vectors=vectors.astype(np.float32),
        similarity=cosine_matrix(vectors),
        baseline=anisotropy_baseline(token_vectors, pairs),
        baseline_pairs=len(pairs),
        notes=notes,
    )


def layer0_is_static(result: DriftResult, atol: float = 1e-6) -> bool | None:
    """Whether layer 0 is context-free: occurrences with the same pieces have cosine 1 there.

    True for models that add nothing position-dependent to the input embedding (rotary positions,
    e.g. Llama/SmolLM2); False where position embeddings are added (BERT, GPT-2). None when no two
    contexts split the word into the same pieces.
    """
    pieces = [o.pieces for o in result.occurrences]
    pairs = [(i, j) for i in range(len(pieces)) for j in range(i + 1, len(pieces)) if pieces[i] == pieces[j]]
    if not pairs:
        return None
    return bool(min(result.similarity[0, i, j] for i, j in pairs) >= 1 - atol)


# -- frames (what the charts and the CSV show) ----------------------------------------------------
def similarity_frame(result: DriftResult, layers: list[int] | None = None) -> pd.DataFrame:
    """Long form of the cosine matrices: layer, context_a, context_b, sense_a, sense_b, cosine."""
    layers = list(range(result.n_layers)) if layers is None else layers
    contexts, senses = result.contexts, result.senses
    c = len(contexts)
    grid_a, grid_b = np.meshgrid(np.arange(c), np.arange(c), indexing="ij")
    a, b = grid_a.ravel(), grid_b.ravel()
    frames = [
        pd.DataFrame(
            {
                "layer": layer,
                "context_a": [contexts[i] for i in a],
                "context_b": [contexts[j] for j in b],
                "sense_a": [senses[i] for i in a],
                "sense_b": [senses[j] for j in b],
                "cosine": result.similarity[layer, a, b],
            }
        )
        for layer in layers
    ]
    return pd.concat(frames, ignore_index=True)


def depth_frame(result: DriftResult) -> pd.DataFrame:
    """Per layer: within_sense, across_sense, self_similarity, anisotropy_baseline, adjusted_self_similarity."""
    frame = pair_means(result.similarity, result.senses)
    frame["anisotropy_baseline"] = result.baseline
    frame["adjusted_self_similarity"] = frame["self_similarity"] - frame["anisotropy_baseline"]
    return frame


def pca_frame(result: DriftResult, layer: int) -> pd.DataFrame:
    """2D PCA of the occurrences at one layer: context, sense, pc1, pc2 (and the variance explained)."""
    if not 0 <= layer < result.n_layers:
        msg = f"layer {layer} out of range; this result has hidden layers 0..{result.n_layers - 1} (0 = embeddings)"
        raise ValueError(msg)
    coords, ratio = pca_2d(result.vectors[layer])
    return pd.DataFrame(
        {
            "layer": layer,
            "context": result.contexts,
            "sense": result.senses,
            "pieces": [" ".join(o.pieces) for o in result.occurrences],
            "pc1": coords[:, 0],
            "pc2": coords[:, 1],
            "explained_pc1": ratio[0],
            "explained_pc2": ratio[1],
        }
    )


def occurrence_frame(result: DriftResult) -> pd.DataFrame:
    """One row per context (numbered from 1, as in the charts): its sense, the pieces used, token positions, what the word can see."""
    return pd.DataFrame(
        {
            "number": np.arange(1, len(result.occurrences) + 1),
            "context": result.contexts,
            "sense": result.senses,
            "pieces": [" ".join(o.pieces) for o in result.occurrences],
            "token_positions": [",".join(map(str, o.token_index.tolist())) for o in result.occurrences],
            "occurrences": [o.n_matches for o in result.occurrences],
            "seen_by_word": [o.visible_context if result.kind == "decoder" else o.context for o in result.occurrences],
        }
    )
