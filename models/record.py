"""``run``: one recorded forward pass, and ``ForwardRecord``: what it recorded.

Two exact paths, chosen per run by ``choose_path`` and named in ``ForwardRecord.path``:
- "captured" (short inputs): each attention call computes its weights once, as eager does, keeps them
  and returns weights·V instead of calling the fast kernel; maps and statistics are then read, not
  recomputed, and every layer's statistics come from one vectorised call.
- "recomputed" (long inputs): only the query and key are kept; ``ForwardRecord.attention`` recomputes
  just the map asked for, in query blocks, and statistics stream (O(n·d) memory per layer, not O(n²)).
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np
import pandas as pd
import torch

from attnscope.analysis.attention import attention_map, attention_rows, captured, iter_blocks, map_block, mask_rows, real_weight_blocks
from attnscope.analysis.heads import STAT_COLUMNS, captured_stats, layer_head_stats
from attnscope.models import readout
from attnscope.models.architecture import attention_stack, block_index
from attnscope.models.eager import materialised_layers
from attnscope.models.encoding import encode_batch
from attnscope.models.hook import IMPL_NAMES, LayerRecord, recording
from attnscope.models.labels import text_labels, unknown_share
from attnscope.models.limits import check_run, estimate_run_bytes, memory_limit_bytes
from attnscope.models.loading import LoadedModel, input_device
from attnscope.models.norms import head_grams, output_projection, written_norms
from attnscope.models.spec import ModelSpec, RecordingError

PaddingSide = Literal["left", "right"]
AttentionKind = Literal["self", "encoder", "decoder", "cross"]
MapPath = Literal["auto", "captured", "recomputed"]
PATHS: tuple[str, ...] = ("auto", "captured", "recomputed")

# The captured path while one layer's weights [B, H, n, n] stay under this many bytes (float32), measured with
# bench/peers.py on a 2-core CPU: forming the weights plus weights·V in the call costs about what the fast kernel
# costs while a layer's weights stay near the CPU's caches, and several times more beyond (2,048 tokens: 4-5x the
# kernel's time, memory-bound), where recomputing only the maps asked for is the cheaper way. MiniLM (12 heads,
# bidirectional) still gains at 512 tokens (12.6 MB a layer): all maps, the loop and head_stats all cheaper.
CAPTURE_LAYER_BYTES = 16 * 1024**2
# Causal models: SDPA skips the masked half of every map and capturing forms all of it, so the crossover comes
# sooner. SmolLM2 (9 heads): captured wins at 128 tokens (0.6 MB a layer), loses head_stats at 256 and 512.
CAPTURE_CAUSAL_LAYER_BYTES = 1024**2
# Recomputed maps of all heads in blocks of [heads, rows, keys] near this size: they stay in cache through the
# few passes over them (as head_stats' blocks; 256 rows of every SmolLM2 head at 1,024 tokens would be 9 MB).
MAP_BLOCK_BYTES = 4 * 1024**2
NORM_COLUMNS = ("first_token_norm", "prev_token_norm", "special_token_norm", "output_norm", "output_share")
# Statistics of captured layers in calls over as many layers as keep the stacked weights this small.
STACK_STATS_BYTES = 8 * 1024**2

_PIECE_MARKERS = ("Ġ", "▁", "##", "Ċ")


def is_punctuation(token: str) -> bool:
    """True for tokens made only of punctuation once subword markers are stripped."""
    core = token
    for marker in _PIECE_MARKERS:
        core = core.replace(marker, "")
    return bool(core) and all(ch in string.punctuation for ch in core)


@dataclass(frozen=True)
class Generation:
    """What ``generate`` produced, step by step. Arrays have one row per generated token."""

    prompt_length: int
    positions: np.ndarray  # int64 [T]: positions of the generated tokens in the record
    token_ids: np.ndarray  # int64 [T]
    tokens: list[str]
    top_ids: np.ndarray  # int64 [T, k]: the most likely next tokens of the distribution drawn from
    top_tokens: list[list[str]]
    top_probs: np.ndarray  # float32 [T, k]
    chosen_probs: np.ndarray  # float32 [T]: probability of the token that was produced
    entropy: np.ndarray  # float32 [T], in nats
    do_sample: bool
    seed: int | None
    temperature: float
    top_k: int | None
    stopped: str  # "eos", "max_new_tokens", or why it was cut short
    recording: str  # "cache": steps recorded against the KV cache; "teacher-forced": one pass afterwards
    labels: list[str] = field(default_factory=list)  # the generated tokens decoded (models.labels.candidate_label)
    top_labels: list[list[str]] = field(default_factory=list)

    @property
    def cut_short(self) -> bool:
        return self.stopped not in ("eos", "max_new_tokens")

    def frame(self) -> pd.DataFrame:
        """One row per generated token: step, position, token, its probability, entropy, top-k."""
        return pd.DataFrame(
            {
                "step": np.arange(len(self.positions)),
                "position": self.positions,
                "token": self.tokens,
                **({"label": self.labels} if self.labels else {}),
                "prob": self.chosen_probs,
                "entropy": self.entropy,
                "top_tokens": self.top_tokens,
                "top_probs": [list(map(float, row)) for row in self.top_probs],
            }
        )


@dataclass
class ForwardRecord:
    """Everything one ``run`` recorded. Axis order everywhere: [layer, batch, head, query, key]."""

    spec: ModelSpec
    texts: list[str]
    tokens: list[list[str]]  # real tokens of each text, no padding
    input_ids: np.ndarray  # int64 [B, n_padded]
    attention_mask: np.ndarray  # int64 [B, n_padded]; 1 = real token
    position_ids: np.ndarray | None  # int64 [B, n_padded] when passed explicitly
    padding_side: str
    mask_applied: bool  # False when run(attention_mask=False): pads are attended to
    layers: list[LayerRecord | None] = field(repr=False)  # per block; None where a block has no attention
    hidden_states: tuple[torch.Tensor, ...] = field(repr=False)  # n_layers + 1 of [B, n_padded, d]
    special_ids: frozenset[int] = frozenset()
    inputs: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    # run(values=True): per block, G_h = W_O^hᵀ W_O^h [H, dv, dv] of the output projection (models.norms)
    _grams: list[torch.Tensor | None] = field(default_factory=list, repr=False)
    all_tokens: list[list[str]] = field(default_factory=list, repr=False)  # every padded position's token, pads included
    # What charts show for ``tokens``: the user's text each token covers (``models.labels``), one per real token.
    labels: list[list[str]] = field(default_factory=list)
    target_labels: list[list[str]] | None = None
    # Share of each text's tokens that are the unknown token ([UNK]): a vocabulary that does not cover the text.
    unknown_shares: list[float] = field(default_factory=list)
    # Encoder-decoder models: the target side (decoder input) and its two kinds of attention.
    targets: list[str] | None = None
    target_tokens: list[list[str]] | None = None
    target_input_ids: np.ndarray | None = None  # int64 [B, t_padded]
    target_attention_mask: np.ndarray | None = None  # int64 [B, t_padded]; 1 = real token
    decoder_layers: list[LayerRecord | None] = field(default_factory=list, repr=False)  # causal self-attention
    cross_layers: list[LayerRecord | None] = field(default_factory=list, repr=False)  # target queries x source keys
    # n_decoder_layers + 1 of [B, t_padded, d]: the decoder's residual stream (the last after its final norm)
    decoder_hidden_states: tuple[torch.Tensor, ...] = field(default=(), repr=False)
    # Records made by ``models.generation.generate``: which positions were generated, and how.
    generation: Generation | None = None
    # How the maps are obtained: "captured" (computed once inside the forward and kept), "recomputed" (from
    # the recorded q/k on demand), "materialised" (eager's own weights), or "mixed" (some layers captured).
    path: str = "recomputed"
    # The captured path: every attention layer's weights in one float32 [L, B, H, n_padded, n_padded] buffer (each
    # layer's ``weights`` is a slot of it), so ``attention_stack`` of an unpadded text is a view, not a copy.
    _stack: torch.Tensor | None = field(default=None, repr=False)

    @property
    def generated(self) -> np.ndarray:
        """Positions of the generated tokens (empty for a plain run). int64 [T]."""
        return np.zeros(0, dtype=np.int64) if self.generation is None else self.generation.positions

    # -- indexing -------------------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return len(self.texts)

    @property
    def n_padded(self) -> int:
        return int(self.input_ids.shape[1])

    def real_index(self, batch: int = 0) -> np.ndarray:
        """Padded positions of text ``batch``'s real tokens, in order. int64 [n_b]."""
        self.check_batch(batch)
        return np.flatnonzero(self.attention_mask[batch]).astype(np.int64)

    def token_labels(self, batch: int = 0, target: bool = False) -> list[str]:
        """Readable labels of text ``batch``'s real tokens (or its target's): ``labels`` where recorded, else the pieces."""
        self.check_batch(batch)
        if target:
            if self.target_labels:
                return list(self.target_labels[batch])
            if self.target_tokens is None:
                msg = "this record has no target text (only encoder-decoder runs have one)"
                raise ValueError(msg)
            return list(self.target_tokens[batch])
        return list(self.labels[batch] if self.labels else self.tokens[batch])

    def axis_labels(self, kind: str | None = None, batch: int = 0) -> tuple[list[str], list[str]]:
        """(query labels, key labels) of a kind of attention for text ``batch``: ``axes`` made readable."""
        kind = self.check_kind(kind)
        source = self.token_labels(batch)
        target = self.token_labels(batch, target=True) if self.target_tokens is not None else source
        return {"self": (source, source), "encoder": (source, source), "decoder": (target, target), "cross": (target, source)}[kind]

    def padded_tokens(self, batch: int = 0) -> list[str]:
        """All tokens of the padded row, pads included."""
        self.check_batch(batch)
        return list(self.all_tokens[batch])

    def check_batch(self, batch: int) -> None:
        if not isinstance(batch, (int, np.integer)) or not 0 <= batch < self.batch_size:
            msg = f"batch index {batch} out of range; this run has {self.batch_size} text(s) (0..{self.batch_size - 1})"
            raise ValueError(msg)

    def check_layer(self, layer: int, *, hidden: bool = False) -> None:
        top = self.spec.n_layers if hidden else self.spec.n_layers - 1
        if not isinstance(layer, (int, np.integer)) or not 0 <= layer <= top:
            what = "hidden-state layer" if hidden else "layer"
            extra = " (0 = embeddings)" if hidden else ""
            msg = f"{what} {layer} out of range; {self.spec.name} has {what}s 0..{top}{extra} (0-based)"
            raise ValueError(msg)

    def layer_record(self, layer: int, kind: AttentionKind | None = None) -> LayerRecord:
        """The recorded attention of a block; a block without attention (hybrid models) is refused."""
        kind = self.check_kind(kind)
        if kind in ("decoder", "cross"):
            top = self.spec.n_decoder_layers - 1
            if not isinstance(layer, (int, np.integer)) or not 0 <= layer <= top:
                msg = f"decoder layer {layer} out of range; {self.spec.name} has decoder layers 0..{top} (0-based)"
                raise ValueError(msg)
            record = (self.decoder_layers if kind == "decoder" else self.cross_layers)[layer]
        else:
            self.check_layer(layer)
            record = self.layers[layer]
        if record is None:
            listed = ", ".join(map(str, self.attention_layers))
            msg = (
                f"layer {layer} of {self.spec.name} has no softmax attention (a recurrent, state-space or linear block); "
                f"its attention layers are {listed}"
            )
            raise ValueError(msg)
        return record

    @property
    def attention_layers(self) -> list[int]:
        """Blocks that have attention maps (all of them except in hybrid models)."""
        return [i for i, layer in enumerate(self.layers) if layer is not None]

    @property
    def has_values(self) -> bool:
        """Whether the run kept the attention values (``run(..., values=True)``): norms and decompositions need them."""
        return any(layer is not None and layer.value is not None for layer in self.layers)

    def check_kind(self, kind: str | None) -> AttentionKind:
        """None = the model's own self-attention ("self"; an encoder-decoder's is its encoder's)."""
        encdec = self.spec.kind == "encoder-decoder"
        kind = kind or ("encoder" if encdec else "self")
        allowed = ("encoder", "decoder", "cross") if encdec else ("self",)
        if kind == "self" and encdec:
            kind = "encoder"
        if kind not in allowed:
            msg = f"attention kind {kind!r} does not exist for {self.spec.name} ({self.spec.kind}); use one of {', '.join(allowed)}"
            raise ValueError(msg)
        return cast(AttentionKind, kind)

    def _self_attention(self, kind: str | None, batch: int, cross_refusal: str) -> tuple[AttentionKind, list, torch.Tensor]:
        """(kind, the layer stack, its real positions) of one sequence's self-attention: the decoder's over
        the target, else the encoder's (or the model's own). "cross" is refused with ``cross_refusal``."""
        kind = self.check_kind(kind)
        if kind == "cross":
            raise ValueError(cross_refusal)
        decoder = kind == "decoder"
        real = self.target_index(batch) if decoder else self.real_index(batch)
        return kind, (self.decoder_layers if decoder else self.layers), torch.from_numpy(real)

    def target_index(self, batch: int = 0) -> np.ndarray:
        """Padded positions of target ``batch``'s real tokens (encoder-decoder models). int64 [t_b]."""
        self.check_batch(batch)
        if self.target_attention_mask is None:
            msg = f"{self.spec.name} is not an encoder-decoder model: it has no target text"
            raise ValueError(msg)
        return np.flatnonzero(self.target_attention_mask[batch]).astype(np.int64)

    def axes(self, kind: str | None = None, batch: int = 0) -> tuple[list[str], list[str]]:
        """(query tokens, key tokens) of a kind of attention for text ``batch``."""
        kind = self.check_kind(kind)
        source = self.tokens[batch]
        target = self.target_tokens[batch] if self.target_tokens is not None else source
        return {"self": (source, source), "encoder": (source, source), "decoder": (target, target), "cross": (target, source)}[kind]

    def check_head(self, head: int) -> None:
        if not isinstance(head, (int, np.integer)) or not 0 <= head < self.spec.n_heads:
            msg = f"head {head} out of range; {self.spec.name} has heads 0..{self.spec.n_heads - 1} (0-based)"
            raise ValueError(msg)

    def kv_head(self, head: int) -> int:
        """The KV head a query head reads under grouped-query attention."""
        self.check_head(head)
        return head // self.spec.kv_group

    # -- values ---------------------------------------------------------------------------------
    def attention(
        self,
        layer: int,
        head: int,
        batch: int = 0,
        include_padding: bool = False,
        kind: AttentionKind | None = None,
        measure: str = "weight",
    ) -> np.ndarray:
        """One head's attention map, recomputed exactly from the recorded query/key.

        ``measure="norm"``: the value-weighted norm map α_ij · ‖W_O^h v_j‖ (Kobayashi et al. 2020; needs
        ``run(..., values=True)``): how much each key really moves the query's residual stream.

        Args:
            kind: encoder-decoder models: "encoder" (default), "decoder" (causal self-attention over
                the target) or "cross" (target queries over source keys); others: "self" (default).
        Returns:
            float32 [n_b, n_b] over real tokens (rows sum to 1 when the mask was applied), or
            [n_padded, n_padded] with ``include_padding=True``; "cross": [t_b, n_b].
        """
        kind = self.check_kind(kind)
        rec = self.layer_record(layer, kind)
        self.check_head(head)
        self.check_batch(batch)
        if measure not in ("weight", "norm"):
            msg = f"measure must be 'weight' or 'norm', not {measure!r}"
            raise ValueError(msg)
        if measure == "weight" and captured(rec) is not None:
            return self._captured_maps(rec, kind, batch, include_padding, [int(head)])[0]
        rows, cols = self.positions(kind, batch, include_padding)
        weights = attention_map(rec, batch=batch, head=int(head), rows=rows, cols=cols)
        if measure == "norm":
            if kind != "self":
                msg = "value-weighted norms are shown for decoder-only and encoder-only models"
                raise ValueError(msg)
            weights = weights * self.value_norms(layer, batch)[int(head)][cols.to(weights.device)].to(weights.device)
        return weights.cpu().numpy().astype(np.float32)

    def _captured_maps(self, rec: LayerRecord, kind: str, batch: int, include_padding: bool, heads: list[int] | None) -> np.ndarray:
        """Maps read from a layer's captured weights: float32 [h, q, k], a fresh array (the record's stay unchanged).

        Cheap enough to call once per head in a loop over every layer and head: numpy indexing of the
        kept weights, and no index built for an unpadded text."""
        maps, fresh = self._captured_view(rec, kind, batch, include_padding, heads)
        return maps if fresh else maps.copy()

    def _captured_view(
        self, rec: LayerRecord, kind: str, batch: int, include_padding: bool, heads: list[int] | None
    ) -> tuple[np.ndarray, bool]:
        """(the captured maps asked for, float32 [h, q, k]; whether that array is a fresh copy rather than a view
        of the record's weights, which it is wherever no index is needed)."""
        weights = captured(rec)  # [B, H, q_padded, k_padded]
        assert weights is not None  # callers read captured records only
        maps = weights.numpy()[batch] if weights.device.type == "cpu" else weights[batch].cpu().numpy()  # [H, q, k]
        fresh = weights.device.type != "cpu"
        if heads is not None and len(heads) == 1:
            maps = maps[heads[0] : heads[0] + 1]  # a view
        elif heads is not None and heads != list(range(maps.shape[0])):
            maps, fresh = maps[heads], True
        if include_padding or (kind in ("self", "encoder") and len(self.tokens[batch]) == maps.shape[-1]):
            return maps, fresh
        rows, cols = self.positions(kind, batch, include_padding)
        return maps[:, rows.numpy()][:, :, cols.numpy()], True

    def layer_attention(
        self, layer: int, batch: int = 0, kind: AttentionKind | None = None, include_padding: bool = False, heads=None
    ) -> np.ndarray:
        """The maps of one layer's ``heads`` (default all), in one vectorised call. float32 [H, q, k] (axes as ``attention``)."""
        return self._layer_maps(layer, batch, kind, include_padding, heads, out=None)

    def _layer_maps(self, layer: int, batch: int, kind, include_padding: bool, heads, out: np.ndarray | None) -> np.ndarray:
        """``layer_attention``, written into ``out`` (float32 [h, q, k]) when given: one copy of each map, no more."""
        kind = self.check_kind(kind)
        rec = self.layer_record(layer, kind)
        self.check_batch(batch)
        heads = list(range(self.spec.n_heads)) if heads is None else [int(h) for h in heads]
        for head in heads:
            self.check_head(head)
        if captured(rec) is not None:
            if out is None:
                return self._captured_maps(rec, kind, batch, include_padding, heads)
            out[...] = self._captured_view(rec, kind, batch, include_padding, heads)[0]
            return out
        rows, cols = self.positions(kind, batch, include_padding)
        index = torch.tensor(heads, dtype=torch.long)
        n_keys = rec.key.shape[-2]
        dense = len(cols) == n_keys and bool((cols == torch.arange(len(cols))).all())
        cols = cols.to(rec.query.device)
        if out is None:
            out = np.empty((len(heads), len(rows), len(cols)), dtype=np.float32)
        target = torch.from_numpy(out)  # [h, q, k], shares memory with ``out``
        start = 0
        for block in iter_blocks(rows, min(256, max(16, MAP_BLOCK_BYTES // (4 * len(heads) * n_keys)))):
            weights = map_block(rec, batch=batch, heads=index, rows=block, all_keys=dense)  # [h, r, k_padded]
            target[:, start : start + len(block)] = weights if dense else weights[:, :, cols]
            start += len(block)
        return out

    def attention_stack(self, batch: int = 0, kind: AttentionKind | None = None, layers=None, heads=None) -> np.ndarray:
        """The maps of ``layers`` (default: every layer with attention) x ``heads`` (default all). float32 [L, H, q, k].

        Every layer and head of an unpadded text on the captured path is a read-only view of the weights the
        forward kept (no copy; ``np.array(...)`` makes a writable one); anything else is a new array.
        """
        if layers is None:
            decoder = self.check_kind(kind) in ("decoder", "cross")
            layers = range(self.spec.n_decoder_layers) if decoder else self.attention_layers
        layers = list(layers)
        if not layers:
            msg = "no layers to stack; pass layers=[...] with at least one layer that has attention"
            raise ValueError(msg)
        view = self._stack_view(batch, kind, layers, heads)
        if view is not None:
            return view
        first = self.layer_attention(layers[0], batch, kind, heads=heads)
        out = np.empty((len(layers), *first.shape), dtype=np.float32)  # each layer written in place: one copy of each map
        out[0] = first
        for i, layer in enumerate(layers[1:], start=1):
            self._layer_maps(layer, batch, kind, False, heads, out=out[i])
        return out

    def _stack_view(self, batch: int, kind, layers: list[int], heads) -> np.ndarray | None:
        """Every layer and head of an unpadded text's captured weights as a read-only view of the record's own
        buffer (nothing copied), or None where that is not what was asked for."""
        stack = self._stack
        if stack is None or stack.device.type != "cpu" or self.check_kind(kind) not in ("self", "encoder"):
            return None
        self.check_batch(batch)
        if layers != self.attention_layers or (heads is not None and list(heads) != list(range(self.spec.n_heads))):
            return None
        if len(self.tokens[batch]) != stack.shape[-1]:  # padded: real rows and columns are gathered (a copy)
            return None
        view = stack.numpy()[:, batch]  # [L, H, n, n]
        view.flags.writeable = False  # the record's weights: copy (np.array(...)) to write into them
        return view

    def _values(self, layer: int) -> torch.Tensor:
        """The recorded values of a layer [B, KV, n, dv], refused when the record keeps none."""
        value = self.layer_record(layer).value
        if value is None:
            msg = "this record keeps no values; run it with run(..., values=True) to see value-weighted norms"
            raise ValueError(msg)
        return value

    def _grams_of(self, layer: int) -> torch.Tensor:
        rec = self.layer_record(layer)
        if rec.value is None:
            msg = "this record keeps no values; run it with run(..., values=True) to see value-weighted norms"
            raise ValueError(msg)
        grams = self._grams[layer] if layer < len(self._grams) else None
        if grams is None:
            msg = f"attnscope could not find layer {layer}'s output projection in {self.spec.model_type}, so it cannot weigh values"
            raise ValueError(msg)
        return grams

    def value_norms(self, layer: int, batch: int = 0) -> torch.Tensor:
        """‖W_O^h v_j‖ for every head h and (padded) key j: how much key j can write through head h. float32 [H, n_padded]."""
        grams = self._grams_of(layer)
        value = self._values(layer)[batch]  # [KV, n, dv]
        heads = torch.arange(self.spec.n_heads, device=value.device) // self.spec.kv_group
        return written_norms(value.index_select(0, heads), grams.to(value.device)).cpu()

    def head_outputs(self, layer: int, batch: int = 0) -> np.ndarray:
        """‖W_O^h o_i^h‖ per head and real query: the norm each head adds to the residual stream (before
        the projection's bias), o_i^h = Σ_j α_ij v_j. float32 [H, n_b]."""
        grams = self._grams_of(layer)
        rec, value = self.layer_record(layer), self._values(layer)
        real = torch.from_numpy(self.real_index(batch))
        heads = torch.arange(self.spec.n_heads) // self.spec.kv_group
        values = value[batch].index_select(0, heads.to(value.device))[:, real.to(value.device)].float().cpu()  # [H, m, dv]
        parts = []
        for weights in real_weight_blocks(rec, batch=batch, real_index=real):
            parts.append(written_norms(weights.cpu() @ values, grams.cpu()))  # [H, r]
        return torch.cat(parts, dim=1).numpy().astype(np.float32)

    def norm_stats(self, batch: int = 0) -> pd.DataFrame:
        """Head statistics under the value-weighted norm map N_ij = α_ij ‖W_O^h v_j‖ (Kobayashi et al. 2020),
        each row's norms taken as shares of the row's total, plus what each head writes.

        Returns:
            DataFrame per (layer, head): first_token_norm (mean over queries i ≥ 1 of the share on the first
            token), prev_token_norm (share on i − 1), special_token_norm ([CLS]/[SEP]/BOS/EOS), output_norm
            (mean ‖W_O^h o_i^h‖ over queries) and output_share (mean over queries of that head's norm over the
            sum of all heads' norms in its layer).
        """
        self.check_batch(batch)
        real = torch.from_numpy(self.real_index(batch))
        special = torch.from_numpy(self.token_classes(batch)[0])
        layers = self.attention_layers
        records = [self.layer_record(layer) for layer in layers]
        for layer in layers:
            self._grams_of(layer)  # refuses a record without values, or a layer without its projection
        columns: dict[str, list[np.ndarray]] = {name: [] for name in NORM_COLUMNS}
        first = captured(records[0]) if records else None
        if first is not None and all(captured(rec) is not None for rec in records):
            # Weights kept by the forward: several layers per call (chunks of STACK_STATS_BYTES), in double like below.
            chunk = max(1, STACK_STATS_BYTES // (8 * first[batch].numel()))
            for start in range(0, len(layers), chunk):
                part = self._captured_norm_stats(layers[start : start + chunk], batch, real, special)
                for name in NORM_COLUMNS:
                    columns[name].append(part[name].reshape(-1))
        else:
            for layer in layers:
                part = self._streamed_norm_stats(layer, batch, real, special)
                for name in NORM_COLUMNS:
                    columns[name].append(part[name])
        heads = np.arange(self.spec.n_heads)
        frame = {"layer": np.repeat(np.asarray(layers, dtype=np.int64), len(heads)), "head": np.tile(heads, len(layers))}
        return pd.DataFrame(frame | {name: np.concatenate(values) for name, values in columns.items()})

    def _captured_norm_stats(self, layers: list[int], batch: int, real: torch.Tensor, special: torch.Tensor) -> dict[str, np.ndarray]:
        """``norm_stats``'s columns for several captured layers at once: {column: float64 [len(layers), H]}."""
        m = len(real)
        dense = m == self.n_padded
        heads = torch.arange(self.spec.n_heads) // self.spec.kv_group  # the KV head each query head reads
        weights, values, grams = [], [], []
        for layer in layers:
            w = captured(self.layer_record(layer))
            assert w is not None  # called when every layer kept its weights
            w = w[batch]  # [H, n, n]
            weights.append(w if dense else w[:, real][:, :, real])
            value = self._values(layer)
            v = value[batch].index_select(0, heads.to(value.device))  # [H, n, dv]
            values.append((v if dense else v[:, real]).float().cpu())
            grams.append(self._grams_of(layer).cpu())
        w, v, g = torch.stack(weights).cpu(), torch.stack(values), torch.stack(grams)  # [L, H, m, m], [L, H, m, dv], [L, H, dv, dv]
        norms = written_norms(v, g)  # [L, H, m]: ‖W_O^h v_j‖ of every real key
        shares = w.double() * norms[:, :, None, :].double()  # [L, H, m, m]
        shares = shares / shares.sum(-1, keepdim=True).clamp_min(1e-30)
        outputs = written_norms(w @ v, g).double()  # [L, H, m]: ‖W_O^h o_i^h‖, o_i^h = Σ_j α_ij v_j
        return {
            "first_token_norm": (shares[:, :, 1:, 0].sum(-1) / max(m - 1, 1)).numpy(),
            "prev_token_norm": (shares.diagonal(offset=-1, dim1=-2, dim2=-1).sum(-1) / max(m - 1, 1)).numpy(),
            "special_token_norm": (shares[..., special].sum(-1).sum(-1) / m).numpy(),
            "output_norm": outputs.mean(-1).numpy(),
            "output_share": (outputs / outputs.sum(1, keepdim=True).clamp_min(1e-30)).mean(-1).numpy(),
        }

    def _streamed_norm_stats(self, layer: int, batch: int, real: torch.Tensor, special: torch.Tensor) -> dict[str, np.ndarray]:
        """``norm_stats``'s columns for one layer, over query blocks of recomputed weights: {column: float64 [H]}."""
        rec = self.layer_record(layer)
        norms = self.value_norms(layer, batch)[:, real]  # [H, m]
        first, prev, spec_mass = (torch.zeros(self.spec.n_heads, dtype=torch.float64) for _ in range(3))
        start = 0
        for weights in real_weight_blocks(rec, batch=batch, real_index=real):
            shares = weights.cpu().double() * norms[:, None, :].double()  # [H, r, m]
            shares = shares / shares.sum(-1, keepdim=True).clamp_min(1e-30)
            r = shares.shape[1]
            q = torch.arange(start, start + r)
            later = q >= 1
            first += shares[:, later, 0].sum(-1)
            prev += shares[:, later.nonzero()[:, 0], (q[later] - 1)].sum(-1) if later.any() else 0.0
            spec_mass += shares[:, :, special].sum(-1).sum(-1)
            start += r
        m = len(real)
        outputs = torch.from_numpy(self.head_outputs(layer, batch)).double()  # [H, m]
        share = outputs / outputs.sum(0, keepdim=True).clamp_min(1e-30)
        return {
            "first_token_norm": (first / max(m - 1, 1)).numpy(),
            "prev_token_norm": (prev / max(m - 1, 1)).numpy(),
            "special_token_norm": (spec_mass / m).numpy(),
            "output_norm": outputs.mean(1).numpy(),
            "output_share": share.mean(1).numpy(),
        }

    def allowed(self, layer: int, batch: int = 0, kind: AttentionKind | None = None) -> np.ndarray:
        """The mask this layer really applied, over real tokens: what figures grey out (causal,
        sliding windows, prefix masks, padding) — read from the record, never guessed from the model type.

        Returns:
            bool [n_q, n_k] (the shape of ``attention``); True = the query may attend to the key.
        """
        kind = self.check_kind(kind)
        rec = self.layer_record(layer, kind)
        self.check_batch(batch)
        rows, cols = self.positions(kind, batch, False)
        n_keys = int(rec.key.shape[-2])
        return mask_rows(rec.mask, batch, rows, n_keys, torch.device("cpu"))[:, cols].numpy()

    def right_shares(self, batch: int = 0, kind: AttentionKind | None = None) -> np.ndarray:
        """Per layer and head, the mean over queries (all but the last) of the attention mass on keys to
        the right of the query (``analysis.masks.right_share``), streamed over query blocks like
        ``head_stats``; exactly 0 without computation where a layer's recorded mask is causal.

        Args:
            kind: encoder-decoder models: "encoder" (default) or "decoder" self-attention.
        Returns:
            float64 [n_layers, n_heads] (NaN for blocks without attention).
        """
        self.check_batch(batch)
        kind, stack, real = self._self_attention(
            kind, batch, "attention to the right of the query is defined for self-attention; use kind='encoder' or 'decoder'"
        )
        n = len(real)
        if n < 2:
            msg = "need at least 2 tokens to measure attention to the right of a query"
            raise ValueError(msg)
        out = np.full((len(stack), self.spec.n_heads), np.nan)
        for layer, rec in enumerate(stack):
            if rec is None:  # a block without attention
                continue
            if isinstance(rec.mask, str) and rec.mask == "causal":
                out[layer] = 0.0
                continue
            total = torch.zeros(self.spec.n_heads, dtype=torch.float64)
            start = 0
            for weights in real_weight_blocks(rec, batch=batch, real_index=real):
                r = weights.shape[1]  # [H, r, n]: rows start..start+r of the real tokens
                right = torch.arange(n)[None, :] > torch.arange(start, start + r)[:, None]
                total += (weights.cpu().double() * right).sum(-1)[:, : max(0, min(r, n - 1 - start))].sum(-1)
                start += r
            out[layer] = (total / (n - 1)).numpy()
        return out

    def query_row(self, query: int, layer: int | None = None, head: int | None = None, batch: int = 0) -> np.ndarray:
        """What one token attends to: its row of one head's map, or the mean over a layer's heads
        (``head=None``), or over every attention layer and head (``layer=None``). Only that row is computed.

        Returns:
            float32 [n_b] over real tokens (sums to 1).
        """
        self.check_batch(batch)
        rows, cols = self.positions(self.check_kind(None), batch, False)
        if not isinstance(query, (int, np.integer)) or not 0 <= query < len(rows):
            msg = f"token {query} out of range; this text has tokens 0..{len(rows) - 1} (0-based)"
            raise ValueError(msg)
        if head is not None:
            self.check_head(head)
        layers = self.attention_layers if layer is None else [layer]
        total = torch.zeros(len(cols))
        for l in layers:
            rec = self.layer_record(l)
            heads = torch.arange(self.spec.n_heads) if head is None else torch.tensor([int(head)])
            weights = attention_rows(rec, batch=batch, heads=heads, rows=rows[query : query + 1])  # [h, 1, n_padded]
            total += weights[:, 0, cols.to(weights.device)].mean(0).cpu()
        return (total / len(layers)).numpy().astype(np.float32)

    def positions(self, kind: str, batch: int, include_padding: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(query rows, key columns) in padded coordinates for a kind of attention."""
        if include_padding:
            source = torch.arange(self.n_padded)
            target = torch.arange(self.target_input_ids.shape[1]) if self.target_input_ids is not None else source
        else:
            source = torch.from_numpy(self.real_index(batch))
            target = torch.from_numpy(self.target_index(batch)) if self.target_input_ids is not None else source
        return {"self": (source, source), "encoder": (source, source), "decoder": (target, target), "cross": (target, source)}[kind]

    def hidden(self, layer: int, batch: int = 0, include_padding: bool = False) -> np.ndarray:
        """Hidden state after ``layer`` blocks (0 = embeddings, n_layers = last). float32 [n_b, d]."""
        self.check_layer(layer, hidden=True)
        self.check_batch(batch)
        states = self.hidden_states[layer][batch].float()
        if not include_padding:
            states = states[torch.from_numpy(self.real_index(batch)).to(states.device)]
        return states.cpu().numpy().astype(np.float32)

    def logits(self, lm: LoadedModel, batch: int = 0) -> np.ndarray:
        """Next-token logits of a decoder at every real position (``models.readout.logits``). float32 [n_b, vocab]."""
        return readout.logits(lm, self, batch)

    def logit_lens(self, lm: LoadedModel, batch: int = 0, top_k: int = 5, block: int = 256) -> pd.DataFrame:
        """The logit lens over this record, read with ``lm``'s final norm and unembedding (``models.readout.logit_lens``)."""
        return readout.logit_lens(lm, self, batch=batch, top_k=top_k, block=block)

    def token_classes(self, batch: int = 0, target: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(special, punctuation) bool [n_b] for the real tokens of text ``batch`` (or of its target)."""
        if target:
            if self.target_input_ids is None or self.target_tokens is None:
                msg = f"{self.spec.name}'s record has no target text; run an encoder-decoder model with target=..."
                raise ValueError(msg)
            ids, tokens = self.target_input_ids[batch][self.target_index(batch)], self.target_tokens[batch]
        else:
            ids, tokens = self.input_ids[batch][self.real_index(batch)], self.tokens[batch]
        special = np.array([int(i) in self.special_ids for i in ids], dtype=bool)
        punctuation = np.array([is_punctuation(t) for t in tokens], dtype=bool)
        return special, punctuation

    def head_stats(self, batch: int = 0, layers: list[int] | None = None, kind: AttentionKind | None = None) -> pd.DataFrame:
        """Statistics of every head (see ``analysis.heads``), streamed over query blocks.

        Args:
            kind: encoder-decoder models: "encoder" (default) or "decoder" self-attention; the
                statistics are defined over one sequence, so "cross" is refused.
        Returns:
            DataFrame, one row per (layer, head): layer, head, kv_head, and STAT_COLUMNS.
        """
        self.check_batch(batch)
        kind, stack, real = self._self_attention(
            kind,
            batch,
            (
                "head statistics are defined over one sequence; use kind='encoder' or 'decoder' "
                "(cross-attention maps are in attention(kind='cross'))"
            ),
        )
        layers = [i for i, layer in enumerate(stack) if layer is not None] if layers is None else layers
        for layer in layers:
            self.layer_record(layer, kind)
        special, punctuation = (torch.from_numpy(keys) for keys in self.token_classes(batch, target=kind == "decoder"))
        records = [stack[layer] for layer in layers]
        per_layer = []
        first = captured(records[0]) if records else None
        if first is not None and all(captured(rec) is not None for rec in records):
            # Weights kept by the forward: every layer in a few calls (chunks of STACK_STATS_BYTES), none recomputed.
            chunk = max(1, STACK_STATS_BYTES // (4 * first[batch].numel()))
            side_by_side = self._stack is not None and kind in ("self", "encoder") and layers == self.attention_layers
            for start in range(0, len(records), chunk):
                stats = captured_stats(
                    records[start : start + chunk],
                    batch=batch,
                    real_index=real,
                    special_keys=special,
                    punctuation_keys=punctuation,
                    weights=self._stack[start : start + chunk, batch]
                    if self._stack is not None and side_by_side
                    else None,  # [chunk, H, n, n], a view
                )  # {stat: [chunk, H]}
                per_layer += [{name: values[i] for name, values in stats.items()} for i in range(len(records[start : start + chunk]))]
        else:
            for rec in records:
                per_layer.append(layer_head_stats(rec, batch=batch, real_index=real, special_keys=special, punctuation_keys=punctuation))
        heads = np.tile(np.arange(self.spec.n_heads), len(layers))
        columns: dict[str, np.ndarray] = {
            "layer": np.repeat(np.asarray(layers, dtype=np.int64), self.spec.n_heads),
            "head": heads,
            "kv_head": heads // self.spec.kv_group,
        }
        for name in STAT_COLUMNS:  # one frame at the end: building one per layer cost more than small inputs' statistics
            columns[name] = np.concatenate([stats[name] for stats in per_layer]) if per_layer else np.zeros(0)
        return pd.DataFrame(columns)


def _which(i: int, texts) -> str:
    """A text named as the dashboard and the CLI number them: 0-based, and only when there are several."""
    return "the text" if len(texts) == 1 else f"text {i} (0-based)"


def validate_texts(texts) -> list[str]:
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, (list, tuple)) or not texts:
        msg = "no text given; type a sentence (or pass a list of texts)"
        raise ValueError(msg)
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            msg = f"{_which(i, texts)} is empty or only whitespace; type a sentence"
            raise ValueError(msg)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:  # a lone surrogate: bytes that were not UTF-8 (argv, a mis-decoded file)
            msg = f"{_which(i, texts)} is not valid Unicode (character {exc.start + 1} is a lone surrogate); retype it or save it as UTF-8"
            raise ValueError(msg) from None
    return list(texts)


def tokenize(lm: LoadedModel, texts, *, padding_side: str | None = None, max_length: int | None = None):
    """Tokenize and pad a batch, validating length. Returns (encoding, padding_side)."""
    texts = validate_texts(texts)
    tok = lm.tokenizer
    side = padding_side or tok.padding_side or "right"
    if side not in ("left", "right"):
        msg = f"padding_side must be 'left' or 'right', not {side!r}"
        raise ValueError(msg)
    limit = lm.spec.max_positions
    if max_length is not None:
        if not isinstance(max_length, int) or max_length < 2:
            msg = f"max_length must be an integer >= 2, not {max_length!r}"
            raise ValueError(msg)
        if limit is not None and max_length > limit:
            msg = f"max_length {max_length} exceeds {lm.spec.name}'s {limit} positions; use at most {limit}"
            raise ValueError(msg)
    # Read-only on the shared tokenizer: a fast tokenizer's own padding writes to its Rust backend.
    enc = encode_batch(tok, texts, padding_side=side, max_length=max_length)
    specials = set(tok.all_special_ids)
    for i, (row, row_mask) in enumerate(zip(enc["input_ids"].tolist(), enc["attention_mask"].tolist())):
        if not any(m and t not in specials for t, m in zip(row, row_mask)):
            msg = f"{_which(i, texts)} has no tokens {lm.spec.name} can read (only control or unknown characters?); type a sentence"
            raise ValueError(msg)
    if max_length is None and limit is not None:
        lengths = enc["attention_mask"].sum(-1)
        longest = int(lengths.max())
        if longest > limit:
            which = _which(int(lengths.argmax()), texts)
            msg = (
                f"{which} has {longest} tokens but {lm.spec.name} takes at most {limit}; "
                f"shorten it or pass max_length={limit} (--max-length) to truncate"
            )
            raise ValueError(msg)
    return enc, side


def run(
    lm: LoadedModel,
    texts,
    padding_side: str | None = None,
    attention_mask: bool = True,
    max_length: int | None = None,
    target=None,
    values: bool = False,
    path: MapPath = "auto",
) -> ForwardRecord:
    """Run texts through the model as one batch and record every layer's attention inputs.

    Args:
        lm: from ``load``.
        texts: one text or a list of texts (padded into one batch).
        padding_side: "left" or "right"; default the tokenizer's.
        attention_mask: pass the padding mask to the model (False shows what ignoring it does).
        max_length: truncate to this many tokens (otherwise too-long text is refused).
        target: encoder-decoder models only: the decoder's text(s), one per source text, read as
            given (teacher forcing); its self-attention and cross-attention are recorded too.
        values: also keep every layer's values and output projection (value-weighted norms, ``norm_stats``).
        path: how the maps are obtained, all exact: "captured" (computed once during the forward and
            kept), "recomputed" (from the recorded query/key when asked for), or "auto" (``choose_path``:
            captured while the weights are small). ``ForwardRecord.path`` says which ran.
    Returns:
        ForwardRecord.
    """
    if path not in PATHS:
        msg = f"path must be one of {', '.join(PATHS)}, not {path!r}"
        raise ValueError(msg)
    texts = validate_texts(texts)
    enc, side = tokenize(lm, texts, padding_side=padding_side, max_length=max_length)
    target_enc = None
    if lm.spec.kind == "encoder-decoder":
        if target is None:
            msg = (
                f"{lm.spec.name} is an encoder-decoder model: give a source text and a target text "
                "(run(lm, source, target=...); --target in the CLI)"
            )
            raise ValueError(msg)
        targets = validate_texts(target)
        if len(targets) != len(texts):
            msg = f"{len(texts)} source text(s) but {len(targets)} target text(s); give one target per source"
            raise ValueError(msg)
        target_enc, _ = tokenize(lm, targets, padding_side=side, max_length=max_length)
        target_enc["texts"] = targets
    elif target is not None:
        msg = f"{lm.spec.name} is a {lm.spec.kind}, not an encoder-decoder model: it takes no target text"
        raise ValueError(msg)
    return record_forward(lm, texts, enc, side, attention_mask, target_enc, values=values, path=path)


def run_ids(lm: LoadedModel, input_ids) -> ForwardRecord:
    """Record a forward pass over token ids as given (no tokenizer, no special tokens added, no padding).

    For probes that need exact token sequences, e.g. random tokens repeated twice (``models.probes``).

    Args:
        lm: from ``load``.
        input_ids: int [B, n] token ids, every row the same length.
    Returns:
        ForwardRecord whose ``texts`` are the decoded ids.
    """
    ids = torch.as_tensor(np.asarray(input_ids), dtype=torch.long)
    if ids.ndim != 2 or ids.shape[1] < 1:
        msg = f"input_ids must be a 2-D [batch, tokens] array, got shape {tuple(ids.shape)}; wrap one sequence as [ids]"
        raise ValueError(msg)
    vocab = len(lm.tokenizer)
    if int(ids.min()) < 0 or int(ids.max()) >= vocab:
        msg = f"token ids must lie in 0..{vocab - 1} for {lm.spec.name}; got {int(ids.min())}..{int(ids.max())}"
        raise ValueError(msg)
    limit = lm.spec.max_positions
    if limit is not None and ids.shape[1] > limit:
        msg = f"{ids.shape[1]} tokens exceed {lm.spec.name}'s {limit} positions; use at most {limit}"
        raise ValueError(msg)
    enc = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    texts = lm.tokenizer.batch_decode(ids.tolist())
    side = lm.tokenizer.padding_side or "right"
    # no labels: these ids were not typed (probes run hundreds of rows; ``token_labels`` falls back to the pieces)
    return record_forward(lm, texts, enc, side, True, labels=False)


def choose_path(lm: LoadedModel, batch: int, n: int, padded: bool, target_n: int = 0) -> MapPath:
    """ "captured" or "recomputed": the cheaper exact path for a run of ``batch`` texts of ``n`` padded tokens.

    Captured while one layer's weights ``B·H·n²`` floats stay under ``CAPTURE_LAYER_BYTES`` (a decoder's:
    ``CAPTURE_CAUSAL_LAYER_BYTES``; there, forming them inside the call costs about what the fast kernel costs,
    as measured) and the whole record with them fits the memory guard (``models.limits``); recomputed otherwise. Only the SDPA kernel's calls are captured
    (``models.hook.capturable``); eager's and FlashAttention's keep their kernel and are recomputed, and so
    does a model on a GPU (not measured there).
    """
    spec = lm.spec
    if spec.recording != "hook" or lm.model.config._attn_implementation != IMPL_NAMES["sdpa"] or spec.dtype != "float32":
        return "recomputed"
    if input_device(lm.model).type != "cpu":  # measured on CPUs only; a GPU's kernels and memory differ
        return "recomputed"
    longest = max(n, target_n)
    limit = CAPTURE_CAUSAL_LAYER_BYTES if spec.kind == "decoder" else CAPTURE_LAYER_BYTES
    if 4 * batch * spec.n_heads * longest * longest > limit:
        return "recomputed"
    return "captured" if _captured_fits(lm, batch, n, padded, target_n) else "recomputed"


def _captured_fits(lm: LoadedModel, batch: int, n: int, padded: bool, target_n: int = 0) -> bool:
    """Whether the run's estimate plus every layer's weights [B, H, n, n] stays under the memory limit."""
    spec = lm.spec
    longest = max(n, target_n)
    layers = spec.n_layers + (2 * spec.n_decoder_layers if target_n else 0)
    need = estimate_run_bytes(lm.model.config, spec, batch, n, padded) + layers * 4 * batch * spec.n_heads * longest * longest
    return need <= memory_limit_bytes(input_device(lm.model))


def record_forward(
    lm: LoadedModel,
    texts: list[str],
    enc,
    side: str,
    attention_mask: bool,
    target_enc=None,
    values: bool = False,
    path: MapPath = "auto",
    labels: bool = True,
) -> ForwardRecord:
    """The recorded forward pass shared by ``run`` and ``run_ids`` (``enc``: input_ids, attention_mask [B, n]);
    ``labels``: read each token's label from the text (``models.labels``)."""
    model = lm.model
    device = input_device(model)
    mask2d = enc["attention_mask"]  # [B, n]
    inputs = {"input_ids": enc["input_ids"].to(device)}
    if "token_type_ids" in enc:
        inputs["token_type_ids"] = enc["token_type_ids"].to(device)
    inputs["attention_mask"] = (mask2d if attention_mask else torch.ones_like(mask2d)).to(device)
    position_ids = None
    padded = bool((mask2d == 0).any())
    if padded and not lm.pad_aware_positions and lm.layout.declares("position_ids"):
        # Real tokens keep the positions they would have alone, whichever side the padding is on.
        position_ids = (mask2d.cumsum(-1) - 1).clamp(min=0)
        inputs["position_ids"] = position_ids.to(device)
    check_run(lm, int(mask2d.shape[0]), int(mask2d.shape[1]), padded=padded)
    target_n = int(target_enc["input_ids"].shape[1]) if target_enc is not None else 0
    if path == "auto":
        path = choose_path(lm, int(mask2d.shape[0]), int(mask2d.shape[1]), padded, target_n)
    elif path == "captured" and not _captured_fits(lm, int(mask2d.shape[0]), int(mask2d.shape[1]), padded, target_n):
        msg = "path='captured' keeps every layer's [batch, heads, n, n] weights, more than the memory limit allows; use path='auto' or 'recomputed'"
        raise ValueError(msg)
    base = lm.forward_module()
    extra: dict[str, Any] = {"use_cache": False} if lm.spec.kind != "encoder" else {}
    if target_enc is not None:
        extra["decoder_input_ids"] = target_enc["input_ids"].to(device)
        extra["decoder_attention_mask"] = target_enc["attention_mask"].to(device)
    decoder_layers, cross_layers = [], []
    buffer = None  # the captured path's weights of every layer, [L, B, H, n, n]
    if values and lm.spec.recording == "materialised":
        msg = f"{lm.spec.name}: values need the recording hook (this architecture is materialised: it has no hook to read values from)"
        raise ValueError(msg)
    if lm.spec.recording == "materialised":
        with torch.inference_mode():
            out = base(**inputs, output_hidden_states=True, output_attentions=True, **extra)
        if target_enc is not None:
            msg = f"{lm.spec.model_type}: encoder-decoder models are recorded through the hook only"
            raise ValueError(msg)
        layers = materialised_layers(out.attentions, lm.spec, int(mask2d.shape[0]), int(mask2d.shape[1]), real=mask2d.bool())
    else:
        with torch.inference_mode():
            if path == "captured" and target_enc is None:  # every layer's weights side by side: a stack of them is a view
                slots = len(lm.spec.attention_layers) or lm.spec.n_layers
                buffer = capture_buffer((slots, int(mask2d.shape[0]), lm.spec.n_heads, int(mask2d.shape[1]), int(mask2d.shape[1])), device)
            with recording(lm.module_names, keep_values=values, capture=path == "captured", capture_into=buffer) as recorder:
                out = base(**inputs, output_hidden_states=True, **extra)
        if target_enc is not None:
            layers, decoder_layers, cross_layers = _split_encoder_decoder(recorder.layers, lm.spec)
        else:
            layers = one_per_layer(recorder.layers, lm.spec)
    states = out.encoder_hidden_states if target_enc is not None else out.hidden_states
    hidden = tuple(h.detach() for h in states)
    grams: list[torch.Tensor | None] = [None] * len(layers)
    if values:
        for i, layer in enumerate(layers):
            if layer is not None and layer.value is not None:
                width = lm.spec.n_heads * layer.value.shape[-1]
                weight = output_projection(model, layer.module, width)
                grams[i] = None if weight is None else head_grams(weight, lm.spec.n_heads)
    tok = lm.tokenizer
    ids = enc["input_ids"].numpy()
    masks = mask2d.numpy()
    tokens = [tok.convert_ids_to_tokens(ids[b][masks[b] == 1].tolist()) for b in range(len(texts))]
    real_ids = [ids[b][masks[b] == 1].tolist() for b in range(len(texts))]
    return ForwardRecord(
        spec=lm.spec,
        texts=texts,
        tokens=tokens,
        input_ids=ids,
        attention_mask=masks,
        position_ids=None if position_ids is None else position_ids.numpy(),
        padding_side=side,
        mask_applied=attention_mask,
        layers=layers,
        hidden_states=hidden,
        special_ids=special_ids(tok),
        inputs={**inputs, **{k: v for k, v in extra.items() if k.startswith("decoder_")}},
        _grams=grams,
        all_tokens=[tok.convert_ids_to_tokens(row.tolist()) for row in ids],
        labels=[text_labels(tok, text, row) for text, row in zip(texts, real_ids)] if labels else [],
        unknown_shares=[unknown_share(tok, row) for row in real_ids],
        path=_path_taken(lm, [*layers, *decoder_layers, *cross_layers]),
        _stack=_captured_stack(layers, buffer),
        **(_target_fields(tok, target_enc, decoder_layers, cross_layers, out) if target_enc is not None else {}),
    )


if TYPE_CHECKING:  # the type checker holds the record to what analysis/ and viz/ read from it
    from attnscope.analysis.record_view import RecordView

    _RECORD_IS_A_VIEW: type[RecordView] = ForwardRecord


def capture_buffer(shape: tuple[int, ...], device) -> torch.Tensor:
    """An uninitialised float32 tensor for the captured weights of a run.

    On the CPU the memory comes from numpy, which asks Linux for huge pages on large arrays: the forward
    writes every byte once, so first touching fresh memory is most of what keeping the weights costs, and
    on 2 MB pages that is ~4x cheaper than on 4 KB pages (SmolLM2 at 512 tokens: ~40 ms instead of ~200 ms
    for 283 MB on the machine in docs/benchmarks.md, once the process has huge pages to reuse).
    """
    if torch.device(device).type != "cpu":
        return torch.empty(shape, dtype=torch.float32, device=device)
    return torch.from_numpy(np.empty(shape, dtype=np.float32))


def _captured_stack(layers: list[LayerRecord | None], buffer: torch.Tensor | None) -> torch.Tensor | None:
    """The capture buffer [L, B, H, n, n] when it holds every attention layer's weights in layer order, else None."""
    present = [layer for layer in layers if layer is not None]
    if buffer is None or len(present) > buffer.shape[0]:
        return None
    if any(layer.weights is None or layer.weights.data_ptr() != buffer[i].data_ptr() for i, layer in enumerate(present)):
        return None
    return buffer[: len(present)]


def _path_taken(lm: LoadedModel, layers: list[LayerRecord | None]) -> str:
    """What ``ForwardRecord.path`` says: whether every layer, none or some kept their weights."""
    if lm.spec.recording == "materialised":
        return "materialised"
    kept = [captured(layer) is not None for layer in layers if layer is not None]
    return "captured" if kept and all(kept) else "mixed" if any(kept) else "recomputed"


def _target_fields(tok, target_enc, decoder_layers, cross_layers, out) -> dict:
    ids, masks = target_enc["input_ids"].numpy(), target_enc["attention_mask"].numpy()
    return dict(
        decoder_hidden_states=tuple(h.detach() for h in (getattr(out, "decoder_hidden_states", None) or ())),
        targets=target_enc["texts"],
        target_tokens=[tok.convert_ids_to_tokens(ids[b][masks[b] == 1].tolist()) for b in range(len(ids))],
        target_labels=[text_labels(tok, text, ids[b][masks[b] == 1].tolist()) for b, text in enumerate(target_enc["texts"])],
        target_input_ids=ids,
        target_attention_mask=masks,
        decoder_layers=decoder_layers,
        cross_layers=cross_layers,
    )


def _split_encoder_decoder(layers: list[LayerRecord], spec: ModelSpec):
    """An encoder-decoder's calls sorted by module name into encoder self-, decoder self- and cross-attention."""
    import dataclasses

    encoder = [r for r in layers if attention_stack(r.module) == "encoder"]
    cross = [r for r in layers if attention_stack(r.module) == "cross"]
    decoder = [r for r in layers if attention_stack(r.module) == "decoder"]
    n_dec = spec.n_decoder_layers
    if len(encoder) != spec.n_layers or len(decoder) != n_dec or len(cross) != n_dec:
        msg = (
            f"the hook saw {len(encoder)} encoder, {len(decoder)} decoder and {len(cross)} cross-attention calls "
            f"for {spec.n_layers} encoder and {n_dec} decoder layers; cannot tell which is which"
        )
        raise RecordingError(msg)
    decoder_spec = dataclasses.replace(spec, n_layers=n_dec)
    return one_per_layer(encoder, spec), one_per_layer(decoder, decoder_spec), one_per_layer(cross, decoder_spec)


def one_per_layer(layers: list[LayerRecord], spec: ModelSpec) -> list[LayerRecord | None]:
    """The recorded calls placed at their blocks, in block order; None where a block has no attention
    (hybrid models mix attention with recurrent or state-space blocks)."""
    if not layers:
        msg = f"the hook saw no attention call ({spec.model_type}'s attention does not go through transformers' AttentionInterface)"
        raise RecordingError(msg)
    if len(layers) == spec.n_layers and len({layer.module for layer in layers}) < len(layers):
        return list(layers)  # one module reused for every layer (ALBERT): placed by call order
    blocks = [block_index(layer.module) for layer in layers]
    placed: list[LayerRecord | None] = [None] * spec.n_layers
    for layer, block in zip(layers, blocks):
        if block is None or not 0 <= block < spec.n_layers or placed[block] is not None:
            msg = (
                f"the hook saw {len(layers)} attention calls for {spec.n_layers} layers and cannot tell which layer "
                f"made each (modules {sorted({layer.module for layer in layers})[:3]}...)"
            )
            raise RecordingError(msg)
        placed[block] = layer
    return placed


def special_ids(tok) -> frozenset[int]:
    """The ids ``special_token_mass`` counts: [CLS], [SEP], BOS and EOS (Clark et al. 2019's "special
    tokens"), not [UNK], [MASK], padding or chat-template markers."""
    return frozenset(_real_specials(tok))


def _real_specials(tok) -> set[int]:
    """Special ids that mark real positions ([CLS]/[SEP]/BOS/EOS), even when pad shares an id with one."""
    return {i for i in (tok.cls_token_id, tok.sep_token_id, tok.bos_token_id, tok.eos_token_id) if i is not None}
