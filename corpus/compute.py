"""What one worker does with one batch of texts: ``run`` + per-text results (no Ray here).

The same function serves the Ray actors and a single-process run, so both produce identical rows.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from attnscope.analysis.corpus import repeat_induction
from attnscope.analysis.drift import find_word, word_pieces
from attnscope.models import run

__all__ = ["ANALYSES", "Item", "drift_rows", "example_rows", "geometry_rows", "head_rows", "process_batch", "process_items"]

ANALYSES = ("heads", "induction", "drift", "examples", "geometry")
GEOMETRY_PER_TEXT = 32  # query and key vectors kept per text (evenly spaced positions) by the geometry analysis
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


def example_rows(rec, b: int, text_id: int, segment: int, top: int, criteria: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Text ``b``'s head statistics (the heads analysis' columns plus ``max_weight`` and ``induction``, the
    per-text means of those criteria) and its best ``top`` queries per (layer, head, criterion) (no windows yet)."""
    from attnscope.analysis.examples import CRITERIA, criterion_scores, text_candidates

    frame = rec.head_stats(batch=b)
    ids = rec.input_ids[b][rec.real_index(b)]
    causal = rec.spec.kind == "decoder"
    means: dict[str, list[np.ndarray]] = {"max-weight": [], "induction": []}
    parts = []
    for layer in range(rec.spec.n_layers):
        maps = rec.layer_attention(layer, b)  # [head, n, n]
        for criterion in CRITERIA:
            if criterion not in criteria and criterion not in means:
                continue
            score, key = criterion_scores(maps, ids, criterion, causal)
            if criterion in means:
                with np.errstate(invalid="ignore"):
                    counted = (~np.isnan(score)).sum(-1)
                    means[criterion].append(np.where(counted > 0, np.nansum(score, -1) / np.maximum(counted, 1), np.nan))
            if criterion in criteria:
                heads, queries, keys, scores = text_candidates(score, key, top, criterion)
                parts.append(
                    pd.DataFrame(
                        {"layer": layer, "head": heads, "criterion": criterion, "score": scores, "query_pos": queries, "key_pos": keys}
                    )
                )
    frame["max_weight"] = np.concatenate(means["max-weight"])  # layer-major, as head_stats orders its rows
    frame["induction"] = np.concatenate(means["induction"])
    frame.insert(0, "n_tokens", len(rec.tokens[b]))
    frame.insert(0, "segment", segment)
    frame.insert(0, "text_id", text_id)
    candidates = pd.concat(parts, ignore_index=True)
    candidates.insert(3, "text_id", text_id)
    candidates.insert(4, "segment", segment)
    return frame, candidates


def add_windows(top: pd.DataFrame, labels: dict[tuple[int, int], list[str]]) -> pd.DataFrame:
    """The readable window around each example's key and query (``labels``: (text_id, segment) -> token labels)."""
    from attnscope.analysis.examples import EXAMPLE_COLUMNS, window_around

    cache: dict[tuple[int, int, int, int], tuple[list[str], int, int]] = {}
    windows, q_at, k_at = [], [], []
    for t, s, q, k in zip(top["text_id"], top["segment"], top["query_pos"], top["key_pos"]):
        where = (int(t), int(s), int(q), int(k))
        if where not in cache:
            cache[where] = window_around(labels[(int(t), int(s))], int(q), int(k))
        window, qi, ki = cache[where]
        windows.append(window)
        q_at.append(qi)
        k_at.append(ki)
    out = top.assign(window=windows, query_in_window=q_at, key_in_window=k_at)
    for column in ("layer", "head", "rank", "text_id", "segment", "query_pos", "key_pos", "query_in_window", "key_in_window"):
        out[column] = out[column].astype(np.int64)
    return out[list(EXAMPLE_COLUMNS)]


def geometry_rows(rec, b: int, text_id: int, segment: int, layer: int, head: int, per_text: int = GEOMETRY_PER_TEXT) -> pd.DataFrame:
    """A sample of one head's query and key vectors on text ``b`` (as the attention call saw them: after
    RoPE where the model rotates them, before the 1/sqrt(d) scaling), with each token's class.

    Returns:
        one row per (position, role): text_id, segment, position, role ("query"/"key"), token, token_class
        ("first token", "special", "punctuation", "word"), vector float32 [d].
    """
    record = rec.layer_record(layer)
    rec.check_head(head)
    real = rec.real_index(b)
    n = len(real)
    picked = np.unique(np.linspace(0, n - 1, min(n, per_text)).round().astype(np.int64))
    index = torch.as_tensor(real[picked])
    queries = record.query[b, head].index_select(0, index.to(record.query.device)).float().cpu().numpy()
    keys = record.key[b, rec.kv_head(head)].index_select(0, index.to(record.key.device)).float().cpu().numpy()
    labels = rec.token_labels(b)
    special, punctuation = rec.token_classes(b)
    classes = np.where(special, "special", np.where(punctuation, "punctuation", "word")).astype(object)
    classes[0] = "first token"
    rows = []
    for role, vectors in (("query", queries), ("key", keys)):
        for k, pos in enumerate(picked):
            rows.append((text_id, segment, int(pos), role, labels[pos], classes[pos], vectors[k].astype(np.float32)))
    return pd.DataFrame(rows, columns=["text_id", "segment", "position", "role", "token", "token_class", "vector"])


def _rows_for(rec, lm, b: int, item: Item, analysis: str, word: str | None, options: dict | None = None) -> pd.DataFrame:
    text_id, segment, _ = item
    if analysis == "geometry":
        assert options is not None  # a geometry job names its layer and head (``CorpusConfig`` checks)
        return geometry_rows(rec, b, text_id, segment, options["layer"], options["head"])
    if analysis == "drift":
        assert word is not None  # a drift job names its word (``JobConfig`` checks)
        return drift_rows(rec, lm.tokenizer, b, text_id, segment, word)
    return head_rows(rec, b, text_id, segment, induction=analysis == "induction")


def _examples_batch(lm, items: list[Item], options: dict) -> tuple[pd.DataFrame, pd.DataFrame, list[dict]]:
    from attnscope.analysis.examples import merge_top

    top, criteria = int(options["top"]), list(options["criteria"])

    def one(rec, b, item):
        stats, candidates = example_rows(rec, b, item[0], item[1], top, criteria)
        return stats, candidates, rec.token_labels(b)

    results, bad = [], []
    try:
        rec = run(lm, [text for _, _, text in items])
        results = [(item, *one(rec, b, item)) for b, item in enumerate(items)]
    except (ValueError, MemoryError, RuntimeError):
        results = []
        for item in items:
            try:
                results.append((item, *one(run(lm, [item[2]]), 0, item)))
            except (ValueError, MemoryError, RuntimeError) as exc:
                bad.append({"text_id": int(item[0]), "segment": int(item[1]), "reason": f"{type(exc).__name__}: {exc}"})
    if not results:
        return pd.DataFrame(), pd.DataFrame(), bad
    stats = pd.concat([r[1] for r in results], ignore_index=True)
    best = merge_top(pd.concat([r[2] for r in results], ignore_index=True), top)  # K rows per head and criterion: bounded
    labels = {(int(item[0]), int(item[1])): lab for item, _, _, lab in results}
    return stats, add_windows(best, labels), bad


def process_items(lm, items: list[Item], analysis: str, word: str | None = None, options: dict | None = None) -> dict:
    """``process_batch`` for every analysis: {"rows", "bad"} and, for ``examples``, "examples" (the batch's top K)."""
    if analysis == "examples":
        rows, examples, bad = _examples_batch(lm, items, options or {})
        return {"rows": rows, "bad": bad, "examples": examples}
    rows, bad = process_batch(lm, items, analysis, word, options)
    return {"rows": rows, "bad": bad}


def process_batch(
    lm, items: list[Item], analysis: str, word: str | None = None, options: dict | None = None
) -> tuple[pd.DataFrame, list[dict]]:
    """Run one batch of texts and return their per-text rows and the texts that failed.

    A batch the model refuses (too many tokens for the memory guard, say) is retried one text at a
    time, so one bad text costs only itself: it is reported with the reason, never dropped silently.

    Args:
        lm: a loaded model.
        items: (text_id, segment, text) triples.
        analysis: one of ANALYSES.
        word: the word to follow (drift).
        options: examples: {"top", "criteria"}; geometry: {"layer", "head"}.
    Returns:
        (rows, bad) with bad = [{"text_id", "segment", "reason"}].
    """
    if analysis == "examples":
        result = process_items(lm, items, analysis, word, options)
        return result["rows"], result["bad"]
    texts = [text for _, _, text in items]
    try:
        rec = run(lm, texts)
        frames = [_rows_for(rec, lm, b, item, analysis, word, options) for b, item in enumerate(items)]
        bad: list[dict] = []
    except (ValueError, MemoryError, RuntimeError):
        frames, bad = [], []
        for item in items:
            try:
                frames.append(_rows_for(run(lm, [item[2]]), lm, 0, item, analysis, word, options))
            except (ValueError, MemoryError, RuntimeError) as exc:
                bad.append({"text_id": int(item[0]), "segment": int(item[1]), "reason": f"{type(exc).__name__}: {exc}"})
    frames = [f for f in frames if len(f)]
    rows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return rows, bad
