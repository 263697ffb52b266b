"""Turning texts into batches: token counts, the per-text token cap (split or refuse), memory-sized batches."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import pandas as pd

from attnscope.corpus.compute import Item

__all__ = ["BatchPlan", "TooLong", "make_plan", "split_text", "DEFAULT_CAP"]

TooLong = Literal["refuse", "split"]
DEFAULT_CAP = 512  # tokens per text when the model declares no position limit


@dataclass
class BatchPlan:
    batches: list[list[Item]]  # every segment of a text sits in the same batch
    bad: list[dict]  # texts refused here (too long), {"text_id", "reason", "preview"}
    cap: int  # tokens per text (segment), special tokens included
    n_segments: int


def _n_special(tokenizer) -> int:
    return len(tokenizer("a")["input_ids"]) - len(tokenizer("a", add_special_tokens=False)["input_ids"])


def split_text(tokenizer, text: str, cap: int) -> list[str]:
    """Consecutive pieces of ``text``, each at most ``cap`` tokens once special tokens are added.

    Cuts fall on token boundaries (character offsets of the tokenizer), a few tokens short of the
    cap so that re-tokenizing a piece cannot push it over.
    """
    room = max(1, cap - _n_special(tokenizer) - 2)
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]

    def starts_word(j: int) -> bool:
        begin = offsets[j][0]
        return begin > 0 and text[begin - 1].isspace()

    pieces, start = [], 0
    while start < len(offsets):
        end = min(start + room, len(offsets))
        if end < len(offsets):  # cut before a token that starts a word, so no word is split in two
            cut = end
            while cut > start + 1 and not starts_word(cut):
                cut -= 1
            end = cut if starts_word(cut) else end
        begin = offsets[start][0] if start else 0
        stop = offsets[end][0] if end < len(offsets) else len(text)
        piece = text[begin:stop].strip()
        if piece:
            pieces.append(piece)
        start = end
    return pieces


def make_plan(
    tokenizer,
    texts: pd.DataFrame,
    *,
    cap: int,
    too_long: TooLong,
    fits: Callable[[int, int], bool],
    max_batch: int,
) -> BatchPlan:
    """Segments and batches for texts [text_id, text].

    Args:
        cap: most tokens per text (special tokens included).
        too_long: "refuse" lists a longer text as a bad row; "split" cuts it into pieces of <= cap tokens.
        fits: fits(batch, padded_tokens) -> bool, the memory guard's verdict for one padded batch.
        max_batch: most texts (segments) per batch.
    Returns:
        BatchPlan; texts sorted by length so that a batch pads little, segments of one text kept together.
    """
    if texts.empty:
        return BatchPlan([], [], cap, 0)
    ids = texts["text_id"].tolist()
    raw = texts["text"].tolist()
    lengths = [len(x) for x in tokenizer(raw)["input_ids"]]
    units: list[tuple[int, list[Item]]] = []  # (longest segment, segments of one text)
    bad = []
    for text_id, text, n in zip(ids, raw, lengths):
        if n <= cap:
            units.append((n, [(int(text_id), 0, text)]))
        elif too_long == "refuse":
            bad.append(
                {
                    "text_id": int(text_id),
                    "reason": f"too long: {n} tokens > cap {cap} (use --too-long split or --max-tokens)",
                    "preview": text[:80],
                }
            )
        else:
            pieces = split_text(tokenizer, text, cap)
            longest = max(len(x) for x in tokenizer(pieces)["input_ids"])
            units.append((longest, [(int(text_id), k, p) for k, p in enumerate(pieces)]))
    units.sort(key=lambda u: u[0])
    batches: list[list[Item]] = []
    current: list[Item] = []
    longest = 0
    for n, segments in units:
        if current and (len(current) + len(segments) > max_batch or not fits(len(current) + len(segments), max(longest, n))):
            batches.append(current)
            current, longest = [], 0
        current = current + segments
        longest = max(longest, n)
    if current:
        batches.append(current)
    return BatchPlan(batches, bad, cap, sum(len(s) for _, s in units))
