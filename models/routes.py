"""Information-flow routes of one prediction, gathered from one recorded forward (``analysis.routes``).

``routes(lm, text, position, threshold)`` records the text with values kept, splits every block's output
into residual, per-head-per-key and MLP parts with the decomposition of ``analysis.contributions``
(``models.contributions.blocks``), and builds the graph top-down from the prediction.

The MLP's part of a Pre-LN block is what the block added beyond its attention,
h_{l+1} − (x + attention + b_O), read from the recorded hidden states. The last block's output is not
recorded before the final norm (transformers hands back the normed state), so its MLP is recomputed by
calling the block's own norm and MLP modules (read-only) and checked: the final norm of the rebuilt state
must equal the model's last hidden state. Post-LN blocks (BERT's family) call their MLP modules on every
block's mid-state LN1(x + attention + b_O) and are checked against the recorded states the same way.

Encoder-decoder models (T5: ``routes(lm, source, target=...)``): every decoder block's state is its input
plus self-attention, cross-attention and MLP (``decompose_seq2seq``); a cross-attention head's edge comes from
the encoder's output at the source token it reads, and the encoder is expanded from there.

``head_writes`` is what one head adds at a position, read through the final norm (linearised with the
final state's own statistics) and the unembedding: the tokens it promotes and suppresses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
import torch

from attnscope.analysis.contributions import Block, Norm, block_output, head_terms
from attnscope.analysis.routes import Routes, block_edges, build, build_seq2seq
from attnscope.models.architecture import NormFacts, output_layer
from attnscope.models.contributions import as_norm, blocks
from attnscope.models.forward import run
from attnscope.models.labels import candidate_label
from attnscope.models.loaded import LoadedModel
from attnscope.models.readout import lm_head
from attnscope.models.record import ForwardRecord
from attnscope.models.spec import ROUTES_THRESHOLD

__all__ = [
    "BIAS_NOTE",
    "check_model",
    "decompose",
    "decompose_seq2seq",
    "decompose_text",
    "Decomposition",
    "DEFAULT_THRESHOLD",
    "graph",
    "head_output",
    "head_writes",
    "knockout_check",
    "KnockoutCheck",
    "mlp_reader",
    "routes",
    "Seq2SeqDecomposition",
    "TOLERANCE",
]


DEFAULT_THRESHOLD = ROUTES_THRESHOLD  # LLM-TT's default contribution threshold: a few dozen nodes on a short text
# The rebuilt states must match the recorded ones to this share of their largest entry (float32 sums).
TOLERANCE = 1e-3

BIAS_NOTE = (
    "biases are nobody's edge: the attention output bias and the norms' offsets are left out of the edges "
    "(the MLP's own biases are part of its edge)"
)


@dataclass(frozen=True)
class Decomposition:
    """One text's blocks, split for routes: everything needed to build graphs at any position and threshold.

    blocks: per layer, the attention block over the real tokens (``models.contributions.blocks``);
    mlps: per layer, [n, d] the MLP's output at every token (Pre-LN: what it adds; Post-LN: mlp(mid));
    after: per layer, LN2 (Post-LN) or None; states: n_layers + 1 of [n, d], the residual stream with the
    last one before the final norm; final: the final norm (decoders), as a linearisable ``Norm``.
    """

    tokens: list[str]
    kind: str
    blocks: list[Block] = field(repr=False)
    mlps: list[torch.Tensor] = field(repr=False)
    after: list[Norm | None] = field(repr=False)
    states: list[torch.Tensor] = field(repr=False)
    kv_group: int = 1
    final: Norm | None = field(default=None, repr=False)
    layout: str = ""  # "Pre-LN", "Post-LN" or "parallel" (GPT-NeoX's parallel residual)
    check: float = 0.0  # largest |rebuilt − recorded| of a checked state, relative to the state's scale

    @property
    def n_layers(self) -> int:
        return len(self.blocks)


def _call(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A module of the shared model applied to a copy of x on its device and dtype (read-only, no grad)."""
    weight = next(module.parameters(), None)
    if weight is not None and weight.device.type != "meta":
        x = x.to(weight.device, weight.dtype)
    with torch.inference_mode():
        return module(x).float().cpu()


def mlp_reader(lm: LoadedModel, module: str) -> tuple[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor], Norm | None]:
    """How a block's MLP reads the residual stream, from the model's layout (``BlockFacts.mlp``).

    Returns:
        (layout, mlp(x, z) -> its output given the block input x and z = x + attention + b_O (Pre-LN) or
        mid = LN1(z) (Post-LN), LN2 for Post-LN blocks else None).
    Raises:
        ValueError: for block layouts attnscope does not know (the layout's reason).
    """
    facts = lm.layout.block(module)
    mlp = facts.mlp if facts is not None else None
    if mlp is None:
        raise ValueError(
            facts.mlp_reason
            if facts is not None
            else (
                f"attnscope does not know where {lm.spec.model_type}'s blocks keep their MLP, so it cannot split a block's output "
                "into attention and MLP parts for routes"
            )
        )
    chain = [lm.module(name) for name in mlp.chain]

    def apply(x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        out = x if mlp.reads == "x" else z
        for part in chain:
            out = _call(part, out)
        return out

    return mlp.layout, apply, None if mlp.after is None else as_norm(lm, mlp.after)


def _stack_final_norm(lm: LoadedModel) -> NormFacts | None:
    """The norm after the last block: a decoder's final norm, T5's encoder ``final_layer_norm``; None for Post-LN encoders."""
    return lm.layout.final_norm or lm.layout.encoder_final_norm


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max()) / max(float(b.abs().max()), 1.0)


def check_model(lm: LoadedModel) -> None:
    """Refuse, in one line, the models routes cannot split exactly."""
    spec = lm.spec
    if spec.recording == "materialised":
        msg = f"{spec.model_type} is materialised (no recording hook): routes need each head's values, which only the hook records"
        raise ValueError(msg)
    if spec.attention_sinks:
        msg = f"{spec.model_type} has learned attention sinks: part of each row goes to a sink with no value, which routes do not split"
        raise ValueError(msg)


def decompose(lm: LoadedModel, rec: ForwardRecord) -> Decomposition:
    """Split every block of text 0 of a record made with ``run(..., values=True)``.

    Raises:
        ValueError: models routes cannot split (see ``check_model``), unknown block layouts, or rebuilt states
            that do not match the recorded ones.
    """
    check_model(lm)
    return _decompose(lm, rec)


def _decompose(lm: LoadedModel, rec: ForwardRecord) -> Decomposition:
    """``decompose`` of a model ``check_model`` already passed."""
    if len(rec.attention_layers) != lm.spec.n_layers:
        msg = f"{lm.spec.model_type} mixes attention with other blocks; routes need an attention block in every layer"
        raise ValueError(msg)
    parts = blocks(lm, rec)
    real = torch.from_numpy(rec.real_index(0))
    recorded = [h[0][real.to(h.device)].float().cpu() for h in rec.hidden_states]  # n_layers + 1 of [n, d]
    layout = mlp_reader(lm, rec.layer_record(0).module)[0]
    mlps: list[torch.Tensor] = []
    after: list[Norm | None] = []
    states = [recorded[0]]
    check = 0.0
    last = lm.spec.n_layers - 1
    final_facts = _stack_final_norm(lm) if layout != "Post-LN" else None
    final_module = None if final_facts is None else lm.module(final_facts.name)
    for layer, block in enumerate(parts):
        _, mlp_of, ln2 = mlp_reader(lm, rec.layer_record(layer).module)
        z = block_output(block)  # Pre-LN: x + attention + b_O; Post-LN: LN1 of it
        if layout == "Post-LN":
            m = mlp_of(block.residual, z)
            assert ln2 is not None  # a Post-LN block's MLP comes with its LN2
            state = ln2(z + m)
            check = max(check, _relative(state, recorded[layer + 1]))
            mlps.append(m)
            after.append(ln2)
            states.append(recorded[layer + 1])
            continue
        after.append(None)
        if layer < last or final_module is None:
            mlps.append(recorded[layer + 1] - z)  # exact: what the block added beyond its attention
            states.append(recorded[layer + 1])
            continue
        m = mlp_of(block.residual, z)
        raw = z + m
        check = max(check, _relative(_call(final_module, raw), recorded[layer + 1]))
        mlps.append(m)
        states.append(raw)
    if check > TOLERANCE:
        msg = (
            f"{lm.spec.model_type}: rebuilding the blocks' outputs from their parts missed the recorded states by {check:.1e} "
            "(relative); attnscope does not know this block layout well enough for routes"
        )
        raise ValueError(msg)
    final = as_norm(lm, final_facts) if final_facts is not None and lm.spec.kind == "decoder" else None
    return Decomposition(
        tokens=list(rec.tokens[0]),
        kind=lm.spec.kind,
        blocks=parts,
        mlps=mlps,
        after=after,
        states=states,
        kv_group=lm.spec.kv_group,
        final=final,
        layout=layout,
        check=check,
    )


@dataclass(frozen=True)
class Seq2SeqDecomposition:
    """An encoder-decoder text split for routes: the encoder's ``Decomposition`` and the decoder's blocks, each with its
    cross-attention (weights [H, t, s] over the source tokens, the written vectors [H, s, d], the output bias)."""

    encoder: Decomposition
    tokens: list[str]  # the target (decoder) tokens
    blocks: list[Block] = field(repr=False)
    cross: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = field(repr=False)
    mlps: list[torch.Tensor] = field(repr=False)
    states: list[torch.Tensor] = field(repr=False)
    kv_group: int = 1
    check: float = 0.0

    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    layout = "Pre-LN"
    kind = "encoder-decoder"
    final = None


def _decoder_blocks(lm: LoadedModel, rec: ForwardRecord) -> tuple[list[Block], list[tuple], list[str]]:
    """Every decoder block of text 0 over the target's real tokens: (self-attention ``Block``s, cross-attention
    parts, the blocks' module names)."""
    from attnscope.analysis.attention import attention_rows, real_weight_chunks
    from attnscope.analysis.contributions import written
    from attnscope.models.contributions import block_layout

    spec = lm.spec
    target = torch.from_numpy(rec.target_index(0))
    source = torch.from_numpy(rec.real_index(0))
    heads = torch.arange(spec.n_heads) // spec.kv_group
    selfs, crosses, modules = [], [], []
    for layer in range(spec.n_decoder_layers):
        parts = []
        stacks: tuple[tuple[Literal["decoder", "cross"], torch.Tensor], ...] = (("decoder", target), ("cross", source))
        for kind, keys in stacks:
            record = rec.stack(kind).layer_record(layer)
            if record.value is None:
                msg = "this record keeps no values; run it with run(..., values=True)"
                raise ValueError(msg)
            device = record.value.device
            values = record.value[0].index_select(0, heads.to(device))[:, keys.to(device)].float().cpu()  # [H, k, dv]
            found = output_layer(lm.model, record.module, spec.n_heads * values.shape[-1])
            if found is None:
                msg = f"attnscope could not find decoder layer {layer}'s {kind} output projection in {spec.model_type}"
                raise ValueError(msg)
            if kind == "decoder":
                weights = torch.cat(list(real_weight_chunks(record, batch=0, real_index=target)), dim=1)  # [H, t, t]
            else:
                rows = attention_rows(record, batch=0, heads=torch.arange(spec.n_heads), rows=target.to(record.query.device))
                weights = rows[:, :, keys.to(rows.device)]  # [H, t, s]
            parts.append((record, weights.float().cpu(), values, found))
        (self_rec, w, v, (w_o, b_o)), (_, cw, cv, (cw_o, cb_o)) = parts
        if block_layout(lm, self_rec.module) is not None:
            msg = f"{spec.model_type}'s decoder normalises after its attention (Post-LN); routes split Pre-LN decoders (T5) only"
            raise ValueError(msg)
        residual = rec.decoder_hidden_states[layer][0][target.to(rec.decoder_hidden_states[layer].device)].float().cpu()
        block = Block(w, v, w_o.float().cpu(), None if b_o is None else b_o.float().cpu(), residual)
        cross_block = Block(cw, cv, cw_o.float().cpu(), None, torch.zeros_like(residual))
        selfs.append(block)
        crosses.append((cw, written(cross_block), None if cb_o is None else cb_o.float().cpu()))
        modules.append(self_rec.module)
    return selfs, crosses, modules


def decompose_seq2seq(lm: LoadedModel, rec: ForwardRecord) -> Seq2SeqDecomposition:
    """Split an encoder-decoder record (``run(lm, source, target=..., values=True)``): the encoder as ``decompose``
    does, and every decoder block into residual, self-attention heads, cross-attention heads and MLP.

    Raises:
        ValueError: Post-LN decoders (BART's family), unknown layouts, rebuilt states that miss the recorded ones.
    """
    check_model(lm)
    return _decompose_seq2seq(lm, rec)


def _decompose_seq2seq(lm: LoadedModel, rec: ForwardRecord) -> Seq2SeqDecomposition:
    """``decompose_seq2seq`` of a model ``check_model`` already passed."""
    encoder = _decompose(lm, rec)
    selfs, crosses, modules = _decoder_blocks(lm, rec)
    target = torch.from_numpy(rec.target_index(0))
    recorded = [h[0][target.to(h.device)].float().cpu() for h in rec.decoder_hidden_states]
    mlps, states, check = [], [recorded[0]], 0.0
    final_facts = lm.layout.decoder_final_norm
    final_module = None if final_facts is None else lm.module(final_facts.name)
    for layer, (block, (cw, cu, cb)) in enumerate(zip(selfs, crosses)):
        z = block_output(block) + torch.einsum("hts,hsd->td", cw, cu) + (0 if cb is None else cb)  # x + self + cross
        if layer < len(selfs) - 1 or final_module is None:
            mlps.append(recorded[layer + 1] - z)
            states.append(recorded[layer + 1])
            continue
        _, mlp_of, _ = mlp_reader(lm, modules[layer])
        m = mlp_of(block.residual, z)
        check = max(check, _relative(_call(final_module, z + m), recorded[layer + 1]))
        mlps.append(m)
        states.append(z + m)
    check = max(check, encoder.check)
    if check > TOLERANCE:
        msg = (
            f"{lm.spec.model_type}: rebuilding the decoder blocks' outputs from their parts missed the recorded states by "
            f"{check:.1e} (relative); attnscope does not know this block layout well enough for routes"
        )
        raise ValueError(msg)
    return Seq2SeqDecomposition(
        encoder, list(rec.target_tokens[0] if rec.target_tokens else []), selfs, crosses, mlps, states, lm.spec.kv_group, check
    )


def _position(split: Decomposition | Seq2SeqDecomposition, position: int | None) -> int:
    n = len(split.tokens)
    if position is None:
        return n - 1
    if isinstance(position, bool) or not isinstance(position, (int, np.integer)) or not 0 <= position < n:
        msg = f"position {position} out of range; this text has tokens 0..{n - 1} (0-based)"
        raise ValueError(msg)
    return int(position)


def _about(split: Decomposition | Seq2SeqDecomposition, p: int, threshold: float) -> dict:
    seq2seq = isinstance(split, Seq2SeqDecomposition)
    top = f"(decoder, {split.n_layers}, {p})" if seq2seq else f"({split.n_layers}, {p})"
    about = {
        "layout": split.layout,
        "node_layer": "hidden-state index: 0 = embeddings, n_layers = the last block's output before the final norm",
        "edge_layer": "the block the edge enters (0-based): from node (layer, from_position) to node (layer + 1, to_position)",
        "importance": "max(0, |y|_1 - |y - e|_1) normalised over the edges into the node (the proximity of ALTI)",
        "kept": f"edges with importance > {threshold}, top-down from node {top}",
        "mlp_edges": "an MLP edge is drawn from the block's input at its own position",
        "biases": BIAS_NOTE,
        "check": f"states rebuilt from their parts match the recorded ones within {split.check:.1e} (relative)",
    }
    if seq2seq:
        about["cross_edges"] = (
            "a decoder head edge with from_stack 'encoder' is cross-attention: it reads the encoder's output at "
            "from_position, node (encoder, n_source_layers, from_position); the encoder is expanded from there"
        )
    return about


def graph(
    split: Decomposition | Seq2SeqDecomposition, position: int | None = None, threshold: float = DEFAULT_THRESHOLD, meta: dict | None = None
) -> Routes:
    """The routes graph of one position of a split text (default the last token; encoder-decoder models: a
    target position)."""
    p = _position(split, position)
    about = {**_about(split, p, threshold), **(meta or {})}

    def into(part: Decomposition | Seq2SeqDecomposition, cross=None):
        def edges(layer: int, positions: list[int]) -> pd.DataFrame:
            args = part.blocks[layer], layer, positions, part.mlps[layer], part.after[layer] if isinstance(part, Decomposition) else None
            return block_edges(*args, kv_group=part.kv_group, threshold=threshold, cross=None if cross is None else cross[layer])

        return edges

    if isinstance(split, Seq2SeqDecomposition):
        encoder = split.encoder
        return build_seq2seq(
            into(split, split.cross),
            into(encoder),
            tokens=split.tokens,
            source_tokens=encoder.tokens,
            position=p,
            n_layers=split.n_layers,
            n_source_layers=encoder.n_layers,
            threshold=threshold,
            meta=about,
        )
    return build(into(split), tokens=split.tokens, position=p, n_layers=split.n_layers, threshold=threshold, meta=about)


def decompose_text(
    lm: LoadedModel, text: str, target: str | None = None, *, rec: ForwardRecord | None = None
) -> Decomposition | Seq2SeqDecomposition:
    """Record ``text`` with values (unless ``rec`` already holds them) and split every block for routes.

    Args:
        target: encoder-decoder models: the decoder's text (teacher-forced), required there and refused elsewhere.
    """
    check_model(lm)
    return _split(lm, _valued(lm, text, target, rec))


def _valued(lm: LoadedModel, text: str, target: str | None, rec: ForwardRecord | None) -> ForwardRecord:
    """``rec`` when it kept the values, else the one run of ``text`` that does."""
    return rec if rec is not None and rec.has_values else run(lm, text, values=True, target=target)


def _split(lm: LoadedModel, rec: ForwardRecord) -> Decomposition | Seq2SeqDecomposition:
    """The record split for routes, by the model's kind (``check_model`` already passed)."""
    return _decompose_seq2seq(lm, rec) if lm.spec.kind == "encoder-decoder" else _decompose(lm, rec)


def routes(
    lm: LoadedModel,
    text: str,
    position: int | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    *,
    target: str | None = None,
    rec: ForwardRecord | None = None,
) -> Routes:
    """The information-flow routes of the prediction at ``position`` (decoders: the next token after it;
    encoders: that token's last representation; encoder-decoder models: the next target token after target
    position ``position``). Default: the last token.

    Args:
        threshold: τ: edges with importance ≤ τ are dropped (0 keeps every edge that carries anything).
        target: encoder-decoder models: the decoder's text.
        rec: a record of ``text`` made with ``run(..., values=True)`` (else one is made).
    """
    check_model(lm)  # once: the run and the split below reuse it
    rec = _valued(lm, text, target, rec)
    split = _split(lm, rec)
    p = _position(split, position)
    meta = {"model": lm.spec.name, "text": text, "threshold": threshold}
    if target is not None:
        meta["target"] = target
    if lm.spec.kind == "decoder" and lm_head(lm) is not None:
        logits = rec.logits(lm)[p]
        best = int(np.argmax(logits))
        meta["prediction"] = lm.tokenizer.convert_ids_to_tokens(best)
    return graph(split, p, threshold, meta)


def head_output(split: Decomposition, layer: int, head: int, position: int) -> torch.Tensor:
    """Σ_j α^h_Pj W_O^h v^h_j: what one head adds to the residual stream at a position (Pre-LN). [d]."""
    if split.layout == "Post-LN":
        msg = "in Post-LN blocks a head's output passes through the block's norms; read it with the block's edges instead"
        raise ValueError(msg)
    if not 0 <= layer < split.n_layers:
        msg = f"layer {layer} out of range; this model has layers 0..{split.n_layers - 1} (0-based)"
        raise ValueError(msg)
    n_heads = split.blocks[layer].values.shape[0]
    if not 0 <= head < n_heads:
        msg = f"head {head} out of range; this model has heads 0..{n_heads - 1} (0-based)"
        raise ValueError(msg)
    heads, _, _ = head_terms(split.blocks[layer], _position(split, position))
    return heads[head].sum(0)


def head_writes(lm: LoadedModel, split: Decomposition, layer: int, head: int, position: int | None = None, k: int = 10) -> pd.DataFrame:
    """The tokens one head's output at a position promotes and suppresses, through the final norm and the
    unembedding (direct logit attribution: the final norm linearised with the final state's own statistics).

    Returns:
        DataFrame of 2k rows: direction ("promotes" | "suppresses"), rank (1 = strongest), token, label (decoded,
        ``models.labels.candidate_label``), logit (the
        head's additive share of that token's logit).
    """
    head_module = lm_head(lm)
    if lm.spec.kind != "decoder":
        msg = f"what a head writes is read through a decoder-only model's final norm and unembedding; {lm.spec.name} is an {lm.spec.kind} model"
        raise ValueError(msg)
    if head_module is None or split.final is None:
        msg = f"{lm.spec.name} has no language-model head with a known final norm, so what a head writes cannot be read as tokens"
        raise ValueError(msg)
    p = _position(split, position)
    out = head_output(split, layer, head, p)
    final = split.final
    s = final.divisor(split.states[-1][p])  # the final state's own statistics
    vector = final.scaled(out) / s  # [d]
    weight = getattr(head_module, "weight").detach()  # noqa: B009  (a parameter, to the checker)
    logits = (weight.float().cpu() @ vector.float()).double()  # [V]; the head's bias (if any) is nobody's
    k = int(min(k, logits.numel()))
    top, low = torch.topk(logits, k), torch.topk(-logits, k)
    names = lm.tokenizer.convert_ids_to_tokens

    def row(direction: str, rank: int, token_id: int, value: float) -> tuple:
        return (direction, rank, names(token_id), candidate_label(lm.tokenizer, token_id), value)

    rows = [row("promotes", r + 1, int(i), float(v)) for r, (v, i) in enumerate(zip(top.values, top.indices))]
    rows += [row("suppresses", r + 1, int(i), -float(v)) for r, (v, i) in enumerate(zip(low.values, low.indices))]
    return pd.DataFrame(rows, columns=["direction", "rank", "token", "label", "logit"])


@dataclass(frozen=True)
class KnockoutCheck:
    """The graph's ranking of heads against interventions on one prediction (decoders)."""

    target: str  # the token predicted at the position
    k: int
    top: list[tuple[int, int]]  # the k heads with the largest flow, (layer, head)
    bottom: list[tuple[int, int]]  # the k with the smallest
    logprob: float  # log p(target) untouched
    top_change: float  # |Δ log p(target)| with the top k knocked out (zeroed)
    bottom_change: float  # the same for the bottom k

    @property
    def holds(self) -> bool:
        return self.top_change > self.bottom_change


def knockout_check(lm: LoadedModel, text: str, k: int = 5, position: int | None = None) -> KnockoutCheck:
    """Knock out (zero) the k heads the graph at τ = 0 ranks highest for the prediction at ``position``, then the k
    it ranks lowest, and compare how much each moves the predicted token's log-probability."""
    from attnscope.models.knockout import knockout

    if lm.spec.kind != "decoder" or lm_head(lm) is None:
        what = "a decoder without a language-model head" if lm.spec.kind == "decoder" else f"an {lm.spec.kind} model"
        msg = f"the knockout check reads a decoder-only model's next-token prediction; {lm.spec.name} is {what}"
        raise ValueError(msg)
    rec = run(lm, text, values=True)
    split = decompose(lm, rec)
    p = _position(split, position)
    n_heads = split.blocks[0].values.shape[0]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= split.n_layers * n_heads // 2:
        msg = f"k must be a whole number in 1..{split.n_layers * n_heads // 2} (half of the model's heads), not {k!r}"
        raise ValueError(msg)
    scores = graph(split, p, 0.0).head_scores()
    flow = {(int(r.layer), int(r.head)): float(r.flow) for r in scores.itertuples()}
    every = [(layer, head) for layer in range(split.n_layers) for head in range(n_heads)]
    ranked = sorted(every, key=lambda lh: -flow.get(lh, 0.0))  # stable: ties keep layer/head order
    top, bottom = ranked[:k], ranked[-k:]
    logits = torch.from_numpy(rec.logits(lm)[p]).double()
    target = int(logits.argmax())
    before = float(torch.log_softmax(logits, -1)[target])

    def change(heads: list[tuple[int, int]]) -> float:
        after = torch.from_numpy(knockout(lm, text, heads=heads).after.logits(lm)[p]).double()
        return abs(float(torch.log_softmax(after, -1)[target]) - before)

    name = lm.tokenizer.convert_ids_to_tokens(target)
    return KnockoutCheck(name, k, top, bottom, before, change(top), change(bottom))
