"""Tokenize a batch without writing to the tokenizer every dashboard session shares.

A fast tokenizer's ``__call__`` with ``padding=True`` (or ``truncation=True``) is not read-only:
transformers' ``set_truncation_and_padding`` calls ``enable_padding`` / ``enable_truncation`` on
the Rust backend, so a left-padded request racing a right-padded one can come back with the other
side's padding even when ``padding_side`` is passed per call. Here the text is encoded by a private
copy of the backend with padding and truncation off, truncated per encoding, and padded in Python.
Nothing shared is written after ``seal`` ran once at load time.
"""

from __future__ import annotations

import threading
import weakref

import torch
from transformers import BatchEncoding

__all__ = ["encode_batch", "seal", "token_ids"]


_private: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> its private backend
_private_lock = threading.Lock()


def seal(tokenizer) -> None:
    """At load, before the tokenizer is shared: a pad token, and no padding or truncation left set on the backend.

    With both off, transformers' own calls without padding or truncation (offsets in drift, corpus
    plans) find nothing to switch and so write nothing to the backend either.
    """
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        backend.no_padding()
        backend.no_truncation()
    _backend(tokenizer)


def _backend(tokenizer):
    """The tokenizer's private Rust backend (made once, never padded or truncated), or None for a slow tokenizer."""
    shared = getattr(tokenizer, "backend_tokenizer", None)
    if shared is None:
        return None
    with _private_lock:
        backend = _private.get(tokenizer)
        if backend is None:
            from tokenizers import Tokenizer

            backend = Tokenizer.from_str(shared.to_str())
            backend.no_padding()
            backend.no_truncation()
            backend.encode_special_tokens = bool(getattr(tokenizer, "split_special_tokens", False))
            _private[tokenizer] = backend
    return backend


def _encode_fast(tokenizer, backend, texts: list[str], max_length: int | None) -> list[dict]:
    if max_length is None:
        encodings = backend.encode_batch(texts, add_special_tokens=True)
    else:
        # What the backend's own truncation does: cut the text to leave room for the special tokens, then add them.
        room = max(max_length - backend.num_special_tokens_to_add(False), 0)
        encodings = []
        for encoding in backend.encode_batch(texts, add_special_tokens=False):
            encoding.truncate(room, direction=tokenizer.truncation_side)
            encodings.append(backend.post_process(encoding, None, True))
    return [{"input_ids": e.ids, "token_type_ids": e.type_ids} for e in encodings]


def _encode_slow(tokenizer, texts: list[str], max_length: int | None) -> list[dict]:
    # A Python tokenizer keeps no padding state: without padding its call writes nothing shared.
    kwargs = {"truncation": True, "max_length": max_length} if max_length is not None else {}
    out = tokenizer(texts, padding=False, return_token_type_ids=True, **kwargs)
    return [{"input_ids": ids, "token_type_ids": types} for ids, types in zip(out["input_ids"], out["token_type_ids"])]


def encode_batch(tokenizer, texts: list[str], *, padding_side: str, max_length: int | None = None) -> BatchEncoding:
    """``input_ids``, ``attention_mask`` (and ``token_type_ids`` where the model takes them) as [B, n] tensors.

    Equal to ``tokenizer(texts, padding=True, padding_side=..., truncation=..., max_length=...,
    return_tensors="pt")`` but read-only on the tokenizer.
    """
    backend = _backend(tokenizer)
    rows = _encode_fast(tokenizer, backend, texts, max_length) if backend is not None else _encode_slow(tokenizer, texts, max_length)
    width = max(len(row["input_ids"]) for row in rows)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    pad_type = getattr(tokenizer, "pad_token_type_id", 0) or 0
    ids, mask, types = [], [], []
    for row in rows:
        pad = width - len(row["input_ids"])

        def padded(values, fill, pad=pad):
            return [fill] * pad + list(values) if padding_side == "left" else list(values) + [fill] * pad

        ids.append(padded(row["input_ids"], pad_id))
        mask.append(padded([1] * len(row["input_ids"]), 0))
        types.append(padded(row["token_type_ids"], pad_type))
    data = {"input_ids": torch.tensor(ids, dtype=torch.long)}
    if "token_type_ids" in tokenizer.model_input_names:
        data["token_type_ids"] = torch.tensor(types, dtype=torch.long)
    data["attention_mask"] = torch.tensor(mask, dtype=torch.long)
    return BatchEncoding(data)


def token_ids(tokenizer, text: str) -> list[int]:
    """The ids of ``text`` alone (no special tokens), read-only on the shared tokenizer like ``encode_batch``."""
    backend = _backend(tokenizer)
    if backend is not None:
        return list(backend.encode(text, add_special_tokens=False).ids)
    return list(tokenizer(text, add_special_tokens=False, padding=False)["input_ids"])
