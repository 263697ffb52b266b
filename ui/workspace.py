"""The dashboard's one workspace: model, backend, text(s) and selection, shared by every page and kept in the URL.

Pure (no Streamlit): ``ui.common.prelude`` keeps one ``Workspace`` per session and mirrors it in
``st.query_params``; this module only converts it to and from query parameters and checks it against a
loaded model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

DEFAULT_MODEL = "minilm"  # bundled: loads offline in seconds
DEFAULT_TEXT = "The mouse ate the cheese, then the cat chased the mouse."
BACKENDS = ("auto", "sdpa", "eager", "flash")
AttentionKind = Literal["encoder", "decoder", "cross"]  # encoder-decoder models only; None elsewhere
KINDS = ("encoder", "decoder", "cross")
# The query parameters the workspace owns; any others in the URL (e.g. Heads' ?corpus=) are left alone.
PARAMS = ("model", "backend", "text", "layer", "head", "token", "kind")


@dataclass
class Workspace:
    """What every page shows: one model on one text (or a few texts), and one selected head and token.

    ``token`` None means the page's own default (token 0 on Attention, the last position where a prediction is made).
    Layers, heads and tokens are 0-based.
    """

    model: str = DEFAULT_MODEL
    backend: str = "auto"
    texts: tuple[str, ...] = (DEFAULT_TEXT,)  # Padding uses them all; single-text pages read texts[0]
    layer: int = 0
    head: int = 0
    token: int | None = None
    kind: AttentionKind | None = None
    notes: list[str] = field(default_factory=list, compare=False, repr=False)  # what from_params/fit changed, to show once

    @property
    def text(self) -> str:
        return self.texts[0] if self.texts else ""

    def with_text(self, text: str) -> Workspace:
        """The same workspace with its first text replaced (the other texts stay, for Padding)."""
        return dataclasses.replace(self, texts=(text, *self.texts[1:]), notes=[])

    def to_params(self) -> dict[str, str | list[str]]:
        """Query parameters that reproduce this workspace (``text`` repeats for several texts)."""
        params: dict[str, str | list[str]] = {
            "model": self.model,
            "backend": self.backend,
            "text": list(self.texts) if len(self.texts) > 1 else self.text,
            "layer": str(self.layer),
            "head": str(self.head),
        }
        if self.token is not None:
            params["token"] = str(self.token)
        if self.kind is not None:
            params["kind"] = self.kind
        return params

    @classmethod
    def from_params(cls, params: Mapping[str, str | list[str]], base: Workspace | None = None) -> Workspace:
        """The workspace a URL describes, over ``base`` for what it leaves out; unreadable values are noted, not raised.

        Args:
            params: query parameters; a value may be a list (a repeated parameter), whose last item counts
                except for ``text``, where every item is one text.
        """
        ws = dataclasses.replace(base or cls(), notes=[])

        def last(name: str) -> str | None:
            value = params.get(name)
            if isinstance(value, (list, tuple)):
                return value[-1] if value else None
            return value

        def one_of(name: str, allowed, otherwise: str):
            """The link's ``name`` if it is one of ``allowed``; else None, with a note when the link gave another value."""
            value = last(name)
            if value and value not in allowed:
                ws.notes.append(f"The link's {name} {value!r} is not one of {', '.join(allowed)}: {otherwise}.")
            return value if value and value in allowed else None

        if last("model"):
            ws.model = last("model").strip()
        if last("backend"):
            ws.backend = one_of("backend", BACKENDS, "using auto") or "auto"
        text = params.get("text")
        if text:
            ws.texts = tuple(text) if isinstance(text, (list, tuple)) else (text,)
        for name in ("layer", "head", "token"):
            value = last(name)
            if value is None or value == "":
                continue
            try:
                number = int(value)
                if number < 0:
                    raise ValueError
            except ValueError:
                ws.notes.append(f"The link's {name} {value!r} is not a 0-based index: ignored.")
                continue
            setattr(ws, name, number)
        kind = one_of("kind", KINDS, "ignored")
        if kind:
            ws.kind = kind
        return ws

    def fit(self, n_layers: int, n_heads: int, name: str, kinds: tuple[str, ...] = ()) -> Workspace:
        """This workspace with layer and head clamped into the model's range; each clamp leaves one line in ``notes``.

        Args:
            n_layers, n_heads: the model's (for encoder-decoder models, of the stack ``kind`` selects).
            kinds: the attention kinds the model has (encoder-decoder: encoder, decoder, cross); empty otherwise.
        """
        ws = dataclasses.replace(self, notes=list(self.notes))
        if ws.layer > n_layers - 1:
            ws.notes.append(f"Layer {ws.layer} does not exist in {name} (layers 0–{n_layers - 1}): showing layer {n_layers - 1}.")
            ws.layer = n_layers - 1
        if ws.head > n_heads - 1:
            ws.notes.append(f"Head {ws.head} does not exist in {name} (heads 0–{n_heads - 1}): showing head {n_heads - 1}.")
            ws.head = n_heads - 1
        if ws.kind is not None and ws.kind not in kinds:
            ws.kind = None  # a single-stack model has one kind of self-attention
        return ws

    def fit_token(self, n_tokens: int) -> Workspace:
        """This workspace with the token clamped to the text's ``n_tokens`` tokens (noted when it moved)."""
        ws = dataclasses.replace(self, notes=list(self.notes))
        if ws.token is not None and ws.token > n_tokens - 1:
            ws.notes.append(
                f"Token {ws.token} does not exist in this text ({n_tokens} tokens, 0–{n_tokens - 1}): showing token {n_tokens - 1}."
            )
            ws.token = max(0, n_tokens - 1)
        return ws


__all__ = ["BACKENDS", "DEFAULT_MODEL", "DEFAULT_TEXT", "KINDS", "PARAMS", "Workspace"]
