"""What the pages show for tokens: the user's own text (``ForwardRecord.labels``), or the raw pieces one toggle away."""

from __future__ import annotations

import streamlit as st

from attnscope.models.labels import unknown_warning

RAW_KEY = "raw_tokens"


def raw_toggle() -> None:
    """The sidebar switch between readable labels and the tokenizer's raw pieces (every page)."""
    st.sidebar.toggle(
        "Raw token pieces",
        key=RAW_KEY,
        help="Show the tokenizer's own pieces (Ġ for a space, byte stand-ins such as Ã© for é) instead of the text each token covers.",
    )


def raw() -> bool:
    return bool(st.session_state.get(RAW_KEY, False))


def labels(rec, batch: int = 0, target: bool = False) -> list[str]:
    """Text ``batch``'s tokens as the pages show them (its target's for an encoder-decoder's decoder side)."""
    if raw():
        return list(rec.target_tokens[batch] if target else rec.tokens[batch])
    return rec.token_labels(batch, target=target)


def axis_labels(rec, stack: str | None = None, batch: int = 0) -> tuple[list[str], list[str]]:
    """(query labels, key labels) of one attention stack (``ForwardRecord.stack``), as the pages show them."""
    reader = rec.stack(stack)
    return reader.axes(batch) if raw() else reader.axis_labels(batch)


def warn_unknown(rec, batch: int = 0) -> None:
    """One warning line when most of a text's tokens are the unknown token ([UNK])."""
    shares = getattr(rec, "unknown_shares", None) or []
    if batch < len(shares):
        tokenizer_unk = "[UNK]"
        line = unknown_warning(shares[batch], rec.spec.name, tokenizer_unk)
        if line:
            st.warning(line, icon=":material/help:")
