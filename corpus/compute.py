"""What one worker does with one batch of texts: ``run`` + per-text results (no Ray here).

The same function serves the Ray actors and a single-process run, so both produce identical rows.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from attnscope.analysis.corpus import repeat_induction
from attnscope.analysis.drift import find_word, word_pieces
from attnscope.models import run

__all__ = ["ANALYSES", "Item", "drift_rows", "head_rows", "process_batch"]

ANALYSES = ("heads", "induction", "drift")
Item = tuple[int, int, str]  # (text_id, segment, text)


def head_rows(rec, b: int, text_id: int, segment: int, *, induction: bool) -> pd.DataFrame:
    """Every statistic of every head of text ``b`` (one row per layer, head)."""
    frame = rec.head_stats(batch=b)
    if induction:
        ids = rec.input_ids[b][rec.real_index(b)]  # [n]
        scores = []
        for layer in range(rec.spec.n_layers):
            maps = rec.layer_attention(layer, b)  # [head, n, n]
            scores.append(repeat_induction(maps, ids))
        frame["induction"] = np.concatenate(scores)  # layer-major, as head_stats orders its rows
    frame.insert(0, "n_tokens", len(rec.tokens[b]))
    frame.insert(0, "segment", segment)
    frame.insert(0, "text_id", text_id)
    return frame


def drift_rows(rec, tokenizer, b: int, text_id: int, segment: int, word: str) -> pd.DataFrame:
    """Every whole-word occurrence of ``word`` in text ``b``: its mean-pooled vector at each hidden layer.

    Returns:
        one row per (occurrence, layer): text_id, segment, occurrence, char_start, char_end, pieces,
        layer (0 = embeddings), vector (float32 [d]). Empty when the text lacks the word.
    """
    text = rec.texts[b]
    spans = find_word(text, word)
    columns = ["text_id", "segment", "occurrence", "char_start", "char_end", "pieces", "layer", "vector"]
    if not spans:
        return pd.DataFrame(columns=columns)
    located = word_pieces(tokenizer, text, spans, ids=rec.input_ids[b][rec.real_index(b)])
    hidden = np.stack([rec.hidden(layer, b) for layer in range(rec.spec.n_layers + 1)])  # [layer+1, n, d]
    rows = []
    for k, (span, (index, tokens)) in enumerate(zip(spans, located)):
        if index.size == 0:
            continue
        pieces = " ".join(tokens)
        vectors = hidden[:, index].mean(axis=1)  # [layer+1, d]
        for layer in range(vectors.shape[0]):
            rows.append((text_id, segment, k, span[0], span[1], pieces, layer, vectors[layer].astype(np.float32)))
    return pd.DataFrame(rows, columns=columns)


def _rows_for(rec, lm, b: int, item: Item, analysis: str, word: str | None) -> pd.DataFrame:
    text_id, segment, _ = item
    if analysis == "drift":
        assert word is not None  # a drift job names its word (``JobConfig`` checks)
        return drift_rows(rec, lm.tokenizer, b, text_id, segment, word)
    return head_rows(rec, b, text_id, segment, induction=analysis == "induction")


def process_batch(lm, items: list[Item], analysis: str, word: str | None = None) -> tuple[pd.DataFrame, list[dict]]:
    """Run one batch of texts and return their per-text rows and the texts that failed.

    A batch the model refuses (too many tokens for the memory guard, say) is retried one text at a
    time, so one bad text costs only itself: it is reported with the reason, never dropped silently.

    Args:
        lm: a loaded model.
        items: (text_id, segment, text) triples.
        analysis: one of ANALYSES.
        word: the word to follow (drift).
    Returns:
        (rows, bad) with bad = [{"text_id", "segment", "reason"}].
    """
    texts = [text for _, _, text in items]
    try:
        rec = run(lm, texts)
        frames = [_rows_for(rec, lm, b, item, analysis, word) for b, item in enumerate(items)]
        bad: list[dict] = []
    except (ValueError, MemoryError, RuntimeError):
        frames, bad = [], []
        for item in items:
            try:
                frames.append(_rows_for(run(lm, [item[2]]), lm, 0, item, analysis, word))
            except (ValueError, MemoryError, RuntimeError) as exc:
                bad.append({"text_id": int(item[0]), "segment": int(item[1]), "reason": f"{type(exc).__name__}: {exc}"})
    frames = [f for f in frames if len(f)]
    rows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return rows, bad
