"""Token labels: what the user typed, not the tokenizer's raw pieces.

Byte-level BPE writes "mangé" as ``Ġmang`` + ``Ã©`` and 猫 as ``ç Į «``; a label is instead the slice of the
user's own text a token covers, read from the fast tokenizer's character offsets (computed by a private copy of
its backend, ``models.encoding``: nothing shared is written). A character whose bytes are split across tokens
is shown on each piece with a mark (``猫⁽¹ᐟ³⁾``), whitespace-only tokens are named, special tokens keep their
name. Tokens with no text to point into (generated tokens, ``run_ids``, a slow tokenizer) are decoded instead.
Labels are computed once per record (``ForwardRecord.labels``); charts get label lists, never the tokenizer.
"""

from __future__ import annotations

import re
import string

__all__ = [
    "SPLIT_MARK",
    "candidate_label",
    "decoded_labels",
    "is_punctuation",
    "offset_labels",
    "strip_split_mark",
    "text_labels",
    "unknown_share",
    "unknown_warning",
]

_SUPERSCRIPT = str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")
# A piece of a split character: "猫⁽¹ᐟ³⁾" is the first of three tokens sharing 猫's bytes.
SPLIT_MARK = re.compile("⁽[⁰¹²³⁴⁵⁶⁷⁸⁹]+ᐟ[⁰¹²³⁴⁵⁶⁷⁸⁹]+⁾$")
_WHITESPACE_NAMES = {" ": "space", "\n": "newline", "\t": "tab", "\r": "return", "\u00a0": "nbsp", "\u3000": "ideographic space"}
UNKNOWN_WARN_SHARE = 0.25  # warn when at least this share of a text's tokens is the unknown token


def _mark(chars: str, piece: int, pieces: int) -> str:
    return f"{chars}⁽{str(piece).translate(_SUPERSCRIPT)}ᐟ{str(pieces).translate(_SUPERSCRIPT)}⁾"


def strip_split_mark(label: str) -> tuple[str, bool]:
    """(the label without its split mark, whether it is a later piece of a split character)."""
    match = SPLIT_MARK.search(label)
    if match is None:
        return label, False
    later = not match.group().startswith("⁽¹ᐟ")
    return label[: match.start()], later


def _visible(chars: str) -> str:
    """The characters a label shows: outer whitespace trimmed; whitespace-only tokens named, e.g. "(2 spaces)"."""
    core = chars.strip()
    if core:
        return core.replace("\n", "↵")
    if not chars:
        return "(empty)"
    names = [_WHITESPACE_NAMES.get(c, f"U+{ord(c):04X}") for c in chars]
    if len(set(names)) == 1:
        name = names[0]
        return f"({name})" if len(names) == 1 else f"({len(names)} {name}s)"
    return "(" + " ".join(names) + ")"


def offset_labels(
    text: str, offsets: list[tuple[int, int]], tokens: list[str], special: list[bool], unknown: list[bool] | None = None
) -> list[str]:
    """Labels from character offsets into ``text`` (pure; ``text_labels`` gets the offsets).

    Args:
        text: what the user typed.
        offsets: (start, end) character span of each token.
        tokens: the raw pieces (special tokens keep them as their label).
        special: whether each token is a special token added by the tokenizer ([CLS], </s>, ...).
        unknown: whether each token is the unknown token (its label says so: "猫 [UNK]").
    Returns:
        One label per token.
    """
    n = len(tokens)
    unknown = unknown or [False] * n
    labels = [""] * n
    i = 0
    while i < n:
        if special[i] or offsets[i][0] >= offsets[i][1]:
            labels[i] = str(tokens[i]) if special[i] or not tokens[i] else "(empty)"
            i += 1
            continue
        # tokens whose spans overlap the next one's share a character's bytes: one group, each piece marked
        j = i
        end = offsets[i][1]
        while j + 1 < n and not special[j + 1] and offsets[j + 1][0] < end and offsets[j + 1][1] > offsets[j + 1][0]:
            j += 1
            end = max(end, offsets[j][1])
        if j == i:
            label = _visible(text[offsets[i][0] : offsets[i][1]])
            labels[i] = f"{label} [UNK]" if unknown[i] else label
        else:
            chars = _visible(text[offsets[i][0] : end])
            for k in range(i, j + 1):
                labels[k] = _mark(chars, k - i + 1, j - i + 1)
        i = j + 1
    return labels


def _byte_decoder() -> dict[str, int]:
    """Byte-level BPE's printable stand-ins back to bytes (GPT-2's table: printable bytes map to themselves,
    the rest to code points from 256 up)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            table[chr(byte)] = byte
        else:
            table[chr(256 + extra)] = byte
            extra += 1
    return table


_BYTES = _byte_decoder()


def decoded_labels(tokenizer, ids: list[int]) -> list[str]:
    """Labels by decoding each id (for tokens with no text to point into); a character whose bytes span several
    tokens is decoded once and shown on each piece with a mark."""
    ids = [int(i) for i in ids]
    specials = set(tokenizer.all_special_ids)
    pieces = [tokenizer.decode([i], skip_special_tokens=False, clean_up_tokenization_spaces=False) for i in ids]
    labels = [""] * len(ids)
    i = 0
    while i < len(ids):
        if ids[i] in specials:
            labels[i] = pieces[i] or str(tokenizer.convert_ids_to_tokens(ids[i]))
            i += 1
            continue
        if "\ufffd" not in pieces[i]:
            labels[i] = _visible(pieces[i])
            i += 1
            continue
        # incomplete bytes: extend until the group decodes without a replacement character (at most 4 bytes' worth)
        j = i
        while j + 1 < len(ids) and j - i < 3 and ids[j + 1] not in specials:
            whole = tokenizer.decode(ids[i : j + 1], skip_special_tokens=False, clean_up_tokenization_spaces=False)
            if not whole.endswith("\ufffd"):
                break
            j += 1
        whole = tokenizer.decode(ids[i : j + 1], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if j == i:
            labels[i] = candidate_label(tokenizer, ids[i])
        else:
            for k in range(i, j + 1):
                labels[k] = _mark(_visible(whole), k - i + 1, j - i + 1)
        i = j + 1
    return labels


def candidate_label(tokenizer, token_id: int) -> str:
    """One vocabulary entry as readable text (a logit lens candidate, a predicted token): decoded, with its leading
    space kept visible as "␣"; a piece of a character's bytes shown as its bytes, e.g. "‹e7 8c›"."""
    text = tokenizer.decode([int(token_id)], skip_special_tokens=False, clean_up_tokenization_spaces=False)
    if "\ufffd" in text:
        raw = str(tokenizer.convert_ids_to_tokens(int(token_id)))
        if raw and all(c in _BYTES for c in raw):
            return "‹" + " ".join(f"{_BYTES[c]:02x}" for c in raw) + "›"
        return raw
    if text and not text.strip():
        return _visible(text)
    lead = "␣" if text[:1] == " " else ""
    return lead + _visible(text)


def _offsets(tokenizer, text: str):
    """The private backend's encoding of ``text`` with special tokens (offsets and ids), or None (slow tokenizer)."""
    from attnscope.models.encoding import _backend

    backend = _backend(tokenizer)
    return None if backend is None else backend.encode(text, add_special_tokens=True)


def text_labels(tokenizer, text: str, ids: list[int]) -> list[str]:
    """Labels of the real token ``ids`` a text was encoded to (special tokens included, in order).

    Read from the character offsets of the same encoding when its ids match (truncated encodings match as a
    prefix plus the closing special tokens); decoded otherwise.
    """
    ids = [int(i) for i in ids]
    encoding = _offsets(tokenizer, text)
    if encoding is not None:
        full = list(encoding.ids)
        offsets = list(encoding.offsets)
        special = [bool(s) for s in encoding.special_tokens_mask]
        index = None
        if full == ids:
            index = list(range(len(ids)))
        else:  # truncated: the ids are a prefix of the text's tokens plus the trailing special tokens
            tail = 0
            while (
                tail < len(ids)
                and tail < len(full)
                and special[len(full) - 1 - tail]
                and full[len(full) - 1 - tail] == ids[len(ids) - 1 - tail]
            ):
                tail += 1
            head = len(ids) - tail
            if full[:head] == ids[:head]:
                index = list(range(head)) + list(range(len(full) - tail, len(full)))
        if index is not None:
            unk = tokenizer.unk_token_id
            tokens = tokenizer.convert_ids_to_tokens(ids)
            return offset_labels(
                text,
                [offsets[k] for k in index],
                tokens,
                [special[k] for k in index],
                [unk is not None and i == unk for i in ids],
            )
    return decoded_labels(tokenizer, ids)


def unknown_share(tokenizer, ids: list[int]) -> float:
    """Share of the non-special tokens that are the unknown token ([UNK]); 0 for tokenizers without one."""
    unk = tokenizer.unk_token_id
    specials = set(tokenizer.all_special_ids) - {unk}
    real = [int(i) for i in ids if int(i) not in specials]
    if unk is None or not real:
        return 0.0
    return sum(i == unk for i in real) / len(real)


def unknown_warning(share: float, model: str, unk_token: str = "[UNK]") -> str | None:
    """One line when a text is mostly unknown tokens, else None."""
    if share < UNKNOWN_WARN_SHARE:
        return None
    return (
        f"{share:.0%} of this text's tokens are {unk_token}: {model}'s vocabulary does not cover its characters, "
        "so the model sees them as one unknown token each (try a model with a byte-level tokenizer, e.g. smollm2)"
    )


_PIECE_MARKERS = ("Ġ", "▁", "##", "Ċ")


def is_punctuation(token: str) -> bool:
    """True for tokens made only of punctuation once subword markers are stripped."""
    core = token
    for marker in _PIECE_MARKERS:
        core = core.replace(marker, "")
    return bool(core) and all(ch in string.punctuation for ch in core)
