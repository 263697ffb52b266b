"""What analysis/ and viz/ read from a recorded forward: ``RecordView``, a Protocol the type checker holds
``models.record.ForwardRecord`` to (``analysis`` never imports ``models``; the record is typed structurally).

Functions that take a whole record (``heads.head_table``, ``padding.padding_study``'s settings,
``viz.overview.thumbnails``) annotate it with ``RecordView``; a member they start to read that the Protocol
lacks, or one the record drops, is then a type error (``make test`` runs mypy). ``StackView`` is one
attention stack's reader (``ForwardRecord.stack``: encoder self, decoder self or cross-attention).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol

import numpy as np
import pandas as pd
import torch

from attnscope.analysis.attention import LayerTensors

__all__ = ["RecordView", "RecordedLayer", "SpecView", "StackName", "StackView"]

StackName = Literal["self", "encoder", "decoder", "cross"]


class RecordedLayer(LayerTensors, Protocol):
    """A recorded layer: its attention inputs and, when the run kept them, its values."""

    @property
    def value(self) -> torch.Tensor | None:
        """[B, KV, n, dv] before grouped-query expansion, or None."""


class SpecView(Protocol):
    """The model facts a record carries (``models.spec.ModelSpec``)."""

    @property
    def name(self) -> str: ...

    @property
    def kind(self) -> str:
        """ "encoder", "decoder" or "encoder-decoder"."""

    @property
    def n_layers(self) -> int: ...

    @property
    def n_heads(self) -> int: ...

    @property
    def kv_group(self) -> int:
        """Query heads per KV head (grouped-query attention)."""


class StackView(Protocol):
    """One attention stack of a record: its layers, which tokens its queries and keys are, and its maps."""

    @property
    def name(self) -> StackName: ...

    @property
    def layers(self) -> Sequence[RecordedLayer | None]:
        """Per block; None where a block has no attention."""

    @property
    def attention_layers(self) -> list[int]: ...

    def layer_record(self, layer: int) -> RecordedLayer: ...

    def positions(self, batch: int = 0, include_padding: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(query rows, key columns) in padded coordinates."""

    def axes(self, batch: int = 0) -> tuple[list[str], list[str]]: ...

    def axis_labels(self, batch: int = 0) -> tuple[list[str], list[str]]: ...

    def attention(self, layer: int, head: int, batch: int = 0, include_padding: bool = False, measure: str = "weight") -> np.ndarray:
        """float32 [q, k]."""

    def layer_attention(self, layer: int, batch: int = 0, include_padding: bool = False, heads=None) -> np.ndarray: ...

    def maps(self, batch: int = 0, layers=None, heads=None) -> np.ndarray:
        """float32 [L, H, q, k]."""

    def allowed(self, layer: int, batch: int = 0) -> np.ndarray: ...

    def right_shares(self, batch: int = 0) -> np.ndarray: ...

    def head_stats(self, batch: int = 0, layers: list[int] | None = None) -> pd.DataFrame: ...


class RecordView(Protocol):
    """One recorded forward over a batch of texts: tokens, masks, per-layer attention inputs, hidden states.

    Axes: ``[batch, n_padded]`` for ids and masks; a layer's tensors as ``LayerTensors`` describes them.
    """

    @property
    def spec(self) -> SpecView: ...

    @property
    def tokens(self) -> list[list[str]]:
        """Real tokens of each text, no padding."""

    @property
    def layers(self) -> Sequence[RecordedLayer | None]:
        """Per block; None where a block has no attention (hybrid models)."""

    @property
    def attention_mask(self) -> np.ndarray:
        """int64 [B, n_padded]; 1 = real token."""

    @property
    def position_ids(self) -> np.ndarray | None:
        """int64 [B, n_padded] when passed explicitly."""

    @property
    def padding_side(self) -> str: ...

    @property
    def mask_applied(self) -> bool: ...

    @property
    def attention_layers(self) -> list[int]: ...

    @property
    def has_values(self) -> bool:
        """Whether the run kept the attention values."""

    @property
    def batch_size(self) -> int: ...

    @property
    def n_padded(self) -> int: ...

    def check_batch(self, batch: int) -> None: ...

    def stack(self, name: str | None = None) -> StackView:
        """One attention stack's reader; None = the model's own (an encoder-decoder's encoder)."""

    def layer_record(self, layer: int) -> RecordedLayer:
        """A block's recorded attention (a block without attention is refused)."""

    def allowed(self, layer: int, batch: int = 0) -> np.ndarray:
        """bool [q, k] over real tokens: the mask the layer really applied."""

    def token_labels(self, batch: int = 0, target: bool = False) -> list[str]:
        """What charts show for the real tokens: the text each covers (or the pieces)."""

    def attention(self, layer: int, head: int, batch: int = 0, include_padding: bool = False, measure: str = "weight") -> np.ndarray:
        """float32 [n_b, n_b] of the model's own stack (an encoder-decoder's encoder)."""

    def right_shares(self, batch: int = 0) -> np.ndarray:
        """float64 [L, H]: mean attention mass right of the query."""

    def real_index(self, batch: int = 0) -> np.ndarray:
        """int64 [n_b]: padded positions of text ``batch``'s real tokens."""

    def padded_tokens(self, batch: int = 0) -> list[str]: ...

    def hidden(self, layer: int, batch: int = 0, include_padding: bool = False) -> np.ndarray:
        """float32 [n_b, d]; layer 0 = embeddings."""

    def head_stats(self, batch: int = 0, layers: list[int] | None = None) -> pd.DataFrame: ...

    def norm_stats(self, batch: int = 0) -> pd.DataFrame: ...
