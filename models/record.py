"""``ForwardRecord``: what one recorded forward pass kept (made by ``models.forward.run``), and its readers.

The record is data: tokens, masks, each block's recorded attention inputs (``LayerRecord``), hidden states.
Its maps are read through ``AttentionStack``, one per attention stack the model has: a model's own
self-attention ("self"), or an encoder-decoder's encoder self-attention ("encoder"), decoder self-attention
("decoder") and cross-attention ("cross"). A stack knows its layers and which sequence its queries and keys
run over, and it is the one place that reads a map from weights the forward captured or recomputes it from
the recorded query and key. ``rec.attention(layer, head)`` and the record's other readers use the model's own
stack (an encoder-decoder's encoder); ``rec.stack("cross").attention(layer, head)`` reads another.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, cast

import numpy as np
import pandas as pd
import torch

from attnscope.analysis.attention import attention_map, attention_rows, captured, iter_row_chunks, map_rows, mask_rows, real_weight_chunks
from attnscope.analysis.heads import STAT_COLUMNS, captured_stats, layer_head_stats
from attnscope.models import readout
from attnscope.models.hook import LayerRecord
from attnscope.models.labels import is_punctuation
from attnscope.models.norms import written_norms
from attnscope.models.spec import ModelSpec

if TYPE_CHECKING:
    from attnscope.models.generation import Generation
    from attnscope.models.loaded import LoadedModel

__all__ = ["STACK_NAMES", "AttentionStack", "ForwardRecord", "StackName"]

StackName = Literal["self", "encoder", "decoder", "cross"]
STACK_NAMES: tuple[str, ...] = ("self", "encoder", "decoder", "cross")
# Each stack: (the record's field holding its layers, queries over the target, keys over the target).
_STACKS: dict[str, tuple[str, bool, bool]] = {
    "self": ("layers", False, False),
    "encoder": ("layers", False, False),
    "decoder": ("decoder_layers", True, True),
    "cross": ("cross_layers", True, False),
}
# Recomputed maps of all heads in chunks of [heads, rows, keys] near this size: they stay in cache through the
# few passes over them (as head_stats' chunks; 256 rows of every SmolLM2 head at 1,024 tokens would be 9 MB).
MAP_CHUNK_BYTES = 4 * 1024**2
NORM_COLUMNS = ("first_token_norm", "prev_token_norm", "special_token_norm", "output_norm", "output_share")
# Statistics of captured layers in calls over as many layers as keep the stacked weights this small.
STACK_STATS_BYTES = 8 * 1024**2


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
    _weights_buffer: torch.Tensor | None = field(default=None, repr=False)

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

    @property
    def attention_layers(self) -> list[int]:
        """Blocks that have attention maps (all of them except in hybrid models)."""
        return [i for i, layer in enumerate(self.layers) if layer is not None]

    @property
    def has_values(self) -> bool:
        """Whether the run kept the attention values (``run(..., values=True)``): norms and decompositions need them."""
        return any(layer is not None and layer.value is not None for layer in self.layers)

    def target_index(self, batch: int = 0) -> np.ndarray:
        """Padded positions of target ``batch``'s real tokens (encoder-decoder models). int64 [t_b]."""
        self.check_batch(batch)
        if self.target_attention_mask is None:
            msg = f"{self.spec.name} is not an encoder-decoder model: it has no target text"
            raise ValueError(msg)
        return np.flatnonzero(self.target_attention_mask[batch]).astype(np.int64)

    def check_head(self, head: int) -> None:
        if not isinstance(head, (int, np.integer)) or not 0 <= head < self.spec.n_heads:
            msg = f"head {head} out of range; {self.spec.name} has heads 0..{self.spec.n_heads - 1} (0-based)"
            raise ValueError(msg)

    def kv_head(self, head: int) -> int:
        """The KV head a query head reads under grouped-query attention."""
        self.check_head(head)
        return head // self.spec.kv_group

    # -- the attention stacks ------------------------------------------------------------------------
    @property
    def stack_names(self) -> tuple[str, ...]:
        """The attention stacks this record has: ("self",), or ("encoder", "decoder", "cross") for an encoder-decoder."""
        return ("encoder", "decoder", "cross") if self.spec.kind == "encoder-decoder" else ("self",)

    def stack(self, name: str | None = None) -> AttentionStack:
        """The reader of one attention stack: None = the model's own self-attention ("self"; an encoder-decoder's
        is its encoder's, and "self" names it too), "encoder", "decoder" or "cross" for an encoder-decoder."""
        allowed = self.stack_names
        if name is None or (name == "self" and allowed[0] == "encoder"):
            name = allowed[0]
        if name not in allowed:
            msg = f"attention stack {name!r} does not exist for {self.spec.name} ({self.spec.kind}); use one of {', '.join(allowed)}"
            raise ValueError(msg)
        return AttentionStack(self, cast(StackName, name))

    @property
    def encoder(self) -> AttentionStack:
        """An encoder-decoder's encoder self-attention (refused for other models: their stack is ``stack()``)."""
        return self.stack("encoder")

    @property
    def decoder(self) -> AttentionStack:
        """An encoder-decoder's causal decoder self-attention over the target."""
        return self.stack("decoder")

    @property
    def cross(self) -> AttentionStack:
        """An encoder-decoder's cross-attention: target queries over source keys."""
        return self.stack("cross")

    # -- the model's own stack (an encoder-decoder's encoder): DESIGN.md's readers ---------------------
    def layer_record(self, layer: int) -> LayerRecord:
        """The recorded attention of a block; a block without attention (hybrid models) is refused."""
        return self.stack().layer_record(layer)

    def axes(self, batch: int = 0) -> tuple[list[str], list[str]]:
        """(query tokens, key tokens) of text ``batch``."""
        return self.stack().axes(batch)

    def axis_labels(self, batch: int = 0) -> tuple[list[str], list[str]]:
        """(query labels, key labels) of text ``batch``: ``axes`` made readable."""
        return self.stack().axis_labels(batch)

    def attention(self, layer: int, head: int, batch: int = 0, include_padding: bool = False, measure: str = "weight") -> np.ndarray:
        """One head's attention map (``AttentionStack.attention``). float32 [n_b, n_b] over real tokens (rows sum
        to 1 when the mask was applied), or [n_padded, n_padded] with ``include_padding=True``."""
        return self.stack().attention(layer, head, batch, include_padding, measure)

    def layer_attention(self, layer: int, batch: int = 0, include_padding: bool = False, heads=None) -> np.ndarray:
        """The maps of one layer's ``heads`` (default all), in one vectorised call. float32 [H, n_b, n_b]."""
        return self.stack().layer_attention(layer, batch, include_padding, heads)

    def attention_stack(self, batch: int = 0, layers=None, heads=None) -> np.ndarray:
        """The maps of ``layers`` (default every layer with attention) x ``heads`` (default all). float32 [L, H, n_b, n_b];
        a read-only view of the captured weights where it can be (``AttentionStack.maps``)."""
        return self.stack().maps(batch, layers, heads)

    def allowed(self, layer: int, batch: int = 0) -> np.ndarray:
        """The mask this layer really applied, over real tokens. bool [n_b, n_b]; True = may attend."""
        return self.stack().allowed(layer, batch)

    def right_shares(self, batch: int = 0) -> np.ndarray:
        """Per layer and head, the mean attention mass right of the query (``AttentionStack.right_shares``). float64 [L, H]."""
        return self.stack().right_shares(batch)

    def head_stats(self, batch: int = 0, layers: list[int] | None = None) -> pd.DataFrame:
        """Statistics of every head (``AttentionStack.head_stats``). DataFrame per (layer, head)."""
        return self.stack().head_stats(batch, layers)

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
        for weights in real_weight_chunks(rec, batch=batch, real_index=real):
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
        """``norm_stats``'s columns for one layer, over chunks of query rows of recomputed weights: {column: float64 [H]}."""
        rec = self.layer_record(layer)
        norms = self.value_norms(layer, batch)[:, real]  # [H, m]
        first, prev, spec_mass = (torch.zeros(self.spec.n_heads, dtype=torch.float64) for _ in range(3))
        start = 0
        for weights in real_weight_chunks(rec, batch=batch, real_index=real):
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

    def query_row(self, query: int, layer: int | None = None, head: int | None = None, batch: int = 0) -> np.ndarray:
        """What one token attends to: its row of one head's map, or the mean over a layer's heads
        (``head=None``), or over every attention layer and head (``layer=None``). Only that row is computed.

        Returns:
            float32 [n_b] over real tokens (sums to 1).
        """
        self.check_batch(batch)
        rows, cols = self.stack().positions(batch, False)
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

    def logit_lens(self, lm: LoadedModel, batch: int = 0, top_k: int = 5, chunk: int = 256) -> pd.DataFrame:
        """The logit lens over this record, read with ``lm``'s final norm and unembedding (``models.readout.logit_lens``)."""
        return readout.logit_lens(lm, self, batch=batch, top_k=top_k, chunk=chunk)

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


class AttentionStack:
    """One attention stack of a record: its layers (one ``LayerRecord`` per block, None where a block has no
    attention), which sequence its queries and keys run over (the source text, or an encoder-decoder's target),
    and every reader of its maps. Made by ``ForwardRecord.stack``; holds views of the record, copies nothing.

    Axes: maps are [query, key] over real tokens (or padded positions with ``include_padding=True``); for
    "cross" the queries are the target's tokens and the keys the source's.
    """

    def __init__(self, record: ForwardRecord, name: StackName) -> None:
        attribute, queries_on_target, keys_on_target = _STACKS[name]
        self.record = record
        self.name: StackName = name
        self.layers: list[LayerRecord | None] = getattr(record, attribute)
        self._queries_on_target = queries_on_target
        self._keys_on_target = keys_on_target

    def __repr__(self) -> str:
        return f"AttentionStack({self.name!r}, {len(self.layers)} layers of {self.record.spec.name})"

    @property
    def attention_layers(self) -> list[int]:
        """Blocks of this stack that have attention maps (all of them except in hybrid models)."""
        return [i for i, layer in enumerate(self.layers) if layer is not None]

    @property
    def over_one_sequence(self) -> bool:
        """Whether queries and keys are the same tokens (self-attention), not target over source ("cross")."""
        return self._queries_on_target == self._keys_on_target

    def layer_record(self, layer: int) -> LayerRecord:
        """The recorded attention of a block; a block without attention (hybrid models) is refused."""
        rec = self.record
        if self._queries_on_target:
            top = rec.spec.n_decoder_layers - 1
            if not isinstance(layer, (int, np.integer)) or not 0 <= layer <= top:
                msg = f"decoder layer {layer} out of range; {rec.spec.name} has decoder layers 0..{top} (0-based)"
                raise ValueError(msg)
        else:
            rec.check_layer(layer)
        found = self.layers[layer]
        if found is None:
            listed = ", ".join(map(str, self.attention_layers))
            msg = (
                f"layer {layer} of {rec.spec.name} has no softmax attention (a recurrent, state-space or linear block); "
                f"its attention layers are {listed}"
            )
            raise ValueError(msg)
        return found

    # -- positions and labels -------------------------------------------------------------------------
    def _side(self, on_target: bool, batch: int, include_padding: bool) -> torch.Tensor:
        """Padded positions of the source's (or the target's) tokens: the real ones, or all with ``include_padding``."""
        rec = self.record
        if not include_padding:
            return torch.from_numpy(rec.target_index(batch) if on_target else rec.real_index(batch))
        if on_target and rec.target_input_ids is not None:
            return torch.arange(rec.target_input_ids.shape[1])
        return torch.arange(rec.n_padded)

    def positions(self, batch: int = 0, include_padding: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(query rows, key columns) in padded coordinates: int64 [q], [k]."""
        rec = self.record
        rec.check_batch(batch)
        return self._side(self._queries_on_target, batch, include_padding), self._side(self._keys_on_target, batch, include_padding)

    def axes(self, batch: int = 0) -> tuple[list[str], list[str]]:
        """(query tokens, key tokens) of text ``batch``: the tokenizer's pieces."""
        rec = self.record
        rec.check_batch(batch)
        source = rec.tokens[batch]
        target = rec.target_tokens[batch] if rec.target_tokens is not None else source
        return (target if self._queries_on_target else source), (target if self._keys_on_target else source)

    def axis_labels(self, batch: int = 0) -> tuple[list[str], list[str]]:
        """(query labels, key labels) of text ``batch``: ``axes`` made readable (``ForwardRecord.token_labels``)."""
        rec = self.record
        source = rec.token_labels(batch)
        target = rec.token_labels(batch, target=True) if rec.target_tokens is not None else source
        return (target if self._queries_on_target else source), (target if self._keys_on_target else source)

    def _unpadded(self, batch: int, width: int) -> bool:
        """Whether this stack's maps of text ``batch`` are over every padded position of the source (no index needed)."""
        return not self._queries_on_target and not self._keys_on_target and len(self.record.tokens[batch]) == width

    # -- maps: the one place that reads captured weights or recomputes them --------------------------
    def _captured_view(self, layer: LayerRecord, batch: int, include_padding: bool, heads: list[int] | None) -> tuple[np.ndarray, bool]:
        """(the captured maps asked for, float32 [h, q, k]; whether that array is a fresh copy rather than a view
        of the record's weights, which it is wherever no index is needed). Numpy indexing of the kept weights:
        cheap enough to call once per head in a loop over every layer and head."""
        weights = captured(layer)  # [B, H, q_padded, k_padded]
        assert weights is not None  # callers read captured layers only
        maps = weights.numpy()[batch] if weights.device.type == "cpu" else weights[batch].cpu().numpy()  # [H, q, k]
        fresh = weights.device.type != "cpu"
        if heads is not None and len(heads) == 1:
            maps = maps[heads[0] : heads[0] + 1]  # a view
        elif heads is not None and heads != list(range(maps.shape[0])):
            maps, fresh = maps[heads], True
        if include_padding or self._unpadded(batch, maps.shape[-1]):
            return maps, fresh
        rows, cols = self.positions(batch, include_padding)
        return maps[:, rows.numpy()][:, :, cols.numpy()], True

    def _maps_into(self, layer: int, batch: int, include_padding: bool, heads: list[int], out: np.ndarray | None) -> np.ndarray:
        """The maps of one layer's ``heads``, float32 [h, q, k], written into ``out`` when given (one copy of each
        map, no more); a fresh array otherwise (the record's own weights stay unchanged)."""
        rec = self.layer_record(layer)
        if captured(rec) is not None:
            maps, fresh = self._captured_view(rec, batch, include_padding, heads)
            if out is None:
                return maps if fresh else maps.copy()
            out[...] = maps
            return out
        rows, cols = self.positions(batch, include_padding)
        index = torch.tensor(heads, dtype=torch.long)
        n_keys = rec.key.shape[-2]
        dense = len(cols) == n_keys and bool((cols == torch.arange(len(cols))).all())
        cols = cols.to(rec.query.device)
        if out is None:
            out = np.empty((len(heads), len(rows), len(cols)), dtype=np.float32)
        target = torch.from_numpy(out)  # [h, q, k], shares memory with ``out``
        start = 0
        for chunk in iter_row_chunks(rows, min(256, max(16, MAP_CHUNK_BYTES // (4 * len(heads) * n_keys)))):
            weights = map_rows(rec, batch=batch, heads=index, rows=chunk, all_keys=dense)  # [h, r, k_padded]
            target[:, start : start + len(chunk)] = weights if dense else weights[:, :, cols]
            start += len(chunk)
        return out

    def _heads(self, heads) -> list[int]:
        heads = list(range(self.record.spec.n_heads)) if heads is None else [int(h) for h in heads]
        for head in heads:
            self.record.check_head(head)
        return heads

    def attention(self, layer: int, head: int, batch: int = 0, include_padding: bool = False, measure: str = "weight") -> np.ndarray:
        """One head's attention map: read from the weights the forward captured, or recomputed exactly from the
        recorded query/key.

        ``measure="norm"``: the value-weighted norm map α_ij · ‖W_O^h v_j‖ (Kobayashi et al. 2020; needs
        ``run(..., values=True)``; a decoder-only or encoder-only model's own stack): how much each key really
        moves the query's residual stream.

        Returns:
            float32 [q, k] over real tokens (rows sum to 1 when the mask was applied), or over padded positions
            with ``include_padding=True``.
        """
        rec = self.record
        layer_rec = self.layer_record(layer)
        rec.check_head(head)
        rec.check_batch(batch)
        if measure not in ("weight", "norm"):
            msg = f"measure must be 'weight' or 'norm', not {measure!r}"
            raise ValueError(msg)
        if measure == "weight":
            if captured(layer_rec) is not None:
                return self._maps_into(layer, batch, include_padding, [int(head)], None)[0]
        elif self.name != "self":
            msg = "value-weighted norms are shown for decoder-only and encoder-only models"
            raise ValueError(msg)
        rows, cols = self.positions(batch, include_padding)
        weights = attention_map(layer_rec, batch=batch, head=int(head), rows=rows, cols=cols)
        if measure == "norm":
            weights = weights * rec.value_norms(layer, batch)[int(head)][cols.to(weights.device)].to(weights.device)
        return weights.cpu().numpy().astype(np.float32)

    def layer_attention(self, layer: int, batch: int = 0, include_padding: bool = False, heads=None) -> np.ndarray:
        """The maps of one layer's ``heads`` (default all), in one vectorised call. float32 [H, q, k] (axes as ``attention``)."""
        self.layer_record(layer)
        self.record.check_batch(batch)
        return self._maps_into(layer, batch, include_padding, self._heads(heads), None)

    def maps(self, batch: int = 0, layers=None, heads=None) -> np.ndarray:
        """The maps of ``layers`` (default: every layer with attention) x ``heads`` (default all). float32 [L, H, q, k].

        Every layer and head of an unpadded text on the captured path is a read-only view of the weights the
        forward kept (no copy; ``np.array(...)`` makes a writable one); anything else is a new array.
        """
        layers = self.attention_layers if layers is None else list(layers)
        if not layers:
            msg = "no layers to stack; pass layers=[...] with at least one layer that has attention"
            raise ValueError(msg)
        for layer in layers:
            self.layer_record(layer)
        self.record.check_batch(batch)
        chosen = self._heads(heads)
        view = self._buffer_view(batch, layers, chosen)
        if view is not None:
            return view
        first = self._maps_into(layers[0], batch, False, chosen, None)
        out = np.empty((len(layers), *first.shape), dtype=np.float32)  # each layer written in place: one copy of each map
        out[0] = first
        for i, layer in enumerate(layers[1:], start=1):
            self._maps_into(layer, batch, False, chosen, out[i])
        return out

    def _buffer(self) -> torch.Tensor | None:
        """The captured weights of every attention layer side by side [L, B, H, n, n] (the source's stack only)."""
        return None if self._queries_on_target else self.record._weights_buffer

    def _buffer_view(self, batch: int, layers: list[int], heads: list[int]) -> np.ndarray | None:
        """Every layer and head of an unpadded text's captured weights as a read-only view of the record's own
        buffer (nothing copied), or None where that is not what was asked for."""
        buffer = self._buffer()
        if buffer is None or buffer.device.type != "cpu":
            return None
        if layers != self.attention_layers or heads != list(range(self.record.spec.n_heads)):
            return None
        if not self._unpadded(batch, buffer.shape[-1]):  # padded: real rows and columns are gathered (a copy)
            return None
        view = buffer.numpy()[:, batch]  # [L, H, n, n]
        view.flags.writeable = False  # the record's weights: copy (np.array(...)) to write into them
        return view

    def allowed(self, layer: int, batch: int = 0) -> np.ndarray:
        """The mask this layer really applied, over real tokens: what figures grey out (causal,
        sliding windows, prefix masks, padding) — read from the record, never guessed from the model type.

        Returns:
            bool [q, k] (the shape of ``attention``); True = the query may attend to the key.
        """
        rec = self.layer_record(layer)
        rows, cols = self.positions(batch, False)
        n_keys = int(rec.key.shape[-2])
        return mask_rows(rec.mask, batch, rows, n_keys, torch.device("cpu"))[:, cols].numpy()

    # -- statistics over one sequence ------------------------------------------------------------------
    def _one_sequence(self, batch: int, refusal: str) -> torch.Tensor:
        """The real positions of text ``batch`` this stack's queries and keys both run over; "cross" is refused."""
        self.record.check_batch(batch)
        if not self.over_one_sequence:
            raise ValueError(refusal)
        return self.positions(batch, False)[0]

    def right_shares(self, batch: int = 0) -> np.ndarray:
        """Per layer and head, the mean over queries (all but the last) of the attention mass on keys to
        the right of the query (``analysis.masks.right_share``), streamed over chunks of query rows like
        ``head_stats``; exactly 0 without computation where a layer's recorded mask is causal.

        Returns:
            float64 [n_layers, n_heads] (NaN for blocks without attention).
        """
        real = self._one_sequence(
            batch, "attention to the right of the query is defined for self-attention; use the encoder or decoder stack"
        )
        n = len(real)
        if n < 2:
            msg = "need at least 2 tokens to measure attention to the right of a query"
            raise ValueError(msg)
        out = np.full((len(self.layers), self.record.spec.n_heads), np.nan)
        for layer, rec in enumerate(self.layers):
            if rec is None:  # a block without attention
                continue
            if isinstance(rec.mask, str) and rec.mask == "causal":
                out[layer] = 0.0
                continue
            total = torch.zeros(self.record.spec.n_heads, dtype=torch.float64)
            start = 0
            for weights in real_weight_chunks(rec, batch=batch, real_index=real):
                r = weights.shape[1]  # [H, r, n]: rows start..start+r of the real tokens
                right = torch.arange(n)[None, :] > torch.arange(start, start + r)[:, None]
                total += (weights.cpu().double() * right).sum(-1)[:, : max(0, min(r, n - 1 - start))].sum(-1)
                start += r
            out[layer] = (total / (n - 1)).numpy()
        return out

    def head_stats(self, batch: int = 0, layers: list[int] | None = None) -> pd.DataFrame:
        """Statistics of every head (see ``analysis.heads``), streamed over chunks of query rows; defined over one
        sequence, so the cross-attention stack is refused.

        Returns:
            DataFrame, one row per (layer, head): layer, head, kv_head, and STAT_COLUMNS.
        """
        spec = self.record.spec
        real = self._one_sequence(
            batch,
            "head statistics are defined over one sequence; use the encoder or decoder stack "
            "(cross-attention maps are in rec.stack('cross').attention)",
        )
        layers = self.attention_layers if layers is None else layers
        records = [self.layer_record(layer) for layer in layers]
        special, punctuation = (torch.from_numpy(keys) for keys in self.record.token_classes(batch, target=self._keys_on_target))
        per_layer = []
        first = captured(records[0]) if records else None
        if first is not None and all(captured(rec) is not None for rec in records):
            # Weights kept by the forward: every layer in a few calls (chunks of STACK_STATS_BYTES), none recomputed.
            step = max(1, STACK_STATS_BYTES // (4 * first[batch].numel()))
            buffer = self._buffer() if layers == self.attention_layers else None
            for start in range(0, len(records), step):
                stats = captured_stats(
                    records[start : start + step],
                    batch=batch,
                    real_index=real,
                    special_keys=special,
                    punctuation_keys=punctuation,
                    weights=None if buffer is None else buffer[start : start + step, batch],  # [step, H, n, n], a view
                )  # {stat: [step, H]}
                per_layer += [{name: values[i] for name, values in stats.items()} for i in range(len(records[start : start + step]))]
        else:
            for rec in records:
                per_layer.append(layer_head_stats(rec, batch=batch, real_index=real, special_keys=special, punctuation_keys=punctuation))
        heads = np.tile(np.arange(spec.n_heads), len(layers))
        columns: dict[str, np.ndarray] = {
            "layer": np.repeat(np.asarray(layers, dtype=np.int64), spec.n_heads),
            "head": heads,
            "kv_head": heads // spec.kv_group,
        }
        for name in STAT_COLUMNS:  # one frame at the end: building one per layer cost more than small inputs' statistics
            columns[name] = np.concatenate([stats[name] for stats in per_layer]) if per_layer else np.zeros(0)
        return pd.DataFrame(columns)


if TYPE_CHECKING:  # the type checker holds the record to what analysis/ and viz/ read from it
    from attnscope.analysis.record_view import RecordView, StackView

    _RECORD_IS_A_VIEW: type[RecordView] = ForwardRecord
    _STACK_IS_A_VIEW: type[StackView] = AttentionStack
