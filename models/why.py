"""Why a head attends: one cell's pre-softmax score split by the components that wrote its query and its key.

``why(lm, text, layer, head, query, key)`` records the text once with values kept, splits the residual stream
entering block ``layer`` at the two positions into its components with the decomposition routes use
(``models.routes.decompose``: each head's Σ_j α W_O v_j, each MLP's output, the embeddings), linearises each norm on
the way with that position's own statistics, and hands the two splits to ``analysis.why.split_score`` with the
head's W_Q / W_K rows (from ``models.architecture.query_key_layers``) and RoPE's rotation at each position.

Components, in this order: ``embed`` (token embedding), ``pos`` (a learned position table, where the model has
one), ``type`` (token types), then per earlier layer l its heads ``L{l}H{h}`` and its MLP ``L{l}MLP`` (0-based).
What no component owns (output biases, norm offsets, the projections' biases) is the bias; a relative-position
bias (T5, ALiBi) is its own term.

Every rebuilt piece is checked against what the forward recorded: the stream entering the block, the query and
the key, and the score itself; a model whose layout attnscope reads wrongly is refused, not mis-split.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from attnscope.analysis.attention import attention_rows
from attnscope.analysis.contributions import Norm
from attnscope.analysis.why import HeadReader, ScoreSplit, Side, split_score
from attnscope.models.architecture import attention_input_norm, embedding_tables, output_layer, query_key_layers, rotary_module
from attnscope.models.contributions import as_norm, block_layout
from attnscope.models.forward import run
from attnscope.models.loaded import LoadedModel
from attnscope.models.record import ForwardRecord
from attnscope.models.routes import check_model, mlp_reader

__all__ = [
    "Reader",
    "Split",
    "Stream",
    "TOLERANCE",
    "check_why_model",
    "component_names",
    "relative_miss",
    "stream_at",
    "whole_index",
    "why",
]

# Rebuilt streams, queries and keys must match the recorded ones to this share of their largest entry (float32 sums).
TOLERANCE = 1e-3
DEFAULT_TOP = 10


def component_names(n_layers_before: int, n_heads: int, embeddings: tuple[str, ...]) -> list[str]:
    """The fixed order: the embeddings, then per layer its heads and its MLP."""
    names = list(embeddings)
    for layer in range(n_layers_before):
        names += [f"L{layer}H{h}" for h in range(n_heads)] + [f"L{layer}MLP"]
    return names


@dataclass(frozen=True)
class Stream:
    """The residual stream entering one block at some positions, split: parts [C, P, d], rest [P, d]."""

    names: list[str]
    parts: torch.Tensor
    rest: torch.Tensor
    check: float  # largest |Σ parts + rest − recorded| relative to the recorded state's largest entry
    linearised: list[str] = field(default_factory=list)  # the norms linearised on the way


def _norm_module(lm: LoadedModel, name: str) -> Norm:
    module = lm.module(name)
    bias = getattr(module, "bias", None)
    eps = getattr(module, "eps", getattr(module, "variance_epsilon", None))
    return Norm(module.weight.detach().float().cpu(), None if bias is None else bias.detach().float().cpu(), float(eps))  # type: ignore[operator,arg-type]


def relative_miss(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest |a − b| relative to b's largest entry: how far a rebuilt tensor misses the recorded one."""
    return float((a.double() - b.double()).abs().max()) / max(float(b.abs().max()), 1e-6)


def _embeddings(lm: LoadedModel, rec: ForwardRecord, state: torch.Tensor, rows: torch.Tensor, post: bool):
    """The embedding components at positions ``rows`` (over the real tokens): (names, parts [E, P, d], rest [P, d],
    norms linearised). ``state``: the recorded embedding output at those rows [P, d]."""
    tables = embedding_tables(lm.model)
    real = torch.from_numpy(rec.real_index(0))
    ids = torch.from_numpy(rec.input_ids[0])[real][rows]  # [P]
    found: dict[str, torch.Tensor] = {}
    if "position" in tables:
        if rec.position_ids is not None:
            positions = torch.from_numpy(rec.position_ids[0])[real][rows]
        else:
            facts = lm.layout.embeddings
            offset = (facts.padding_idx + 1) if lm.pad_aware_positions and facts is not None else 0
            positions = rows + offset
        found["pos"] = _lookup(lm, tables["position"], positions)
    if "type" in tables:
        types = rec.inputs.get("token_type_ids")
        types = torch.zeros_like(ids) if types is None else types[0].cpu()[real][rows]
        found["type"] = _lookup(lm, tables["type"], types)
    if not post:
        # The embedding output is the stream: the token embedding is what the position and type rows leave.
        embed = state - sum(found.values(), torch.zeros_like(state))
        return ["embed", *found], [embed, *found.values()], torch.zeros_like(state), []
    if "norm" not in tables:
        msg = f"{lm.spec.model_type}: attnscope does not know the norm over its embeddings, so it cannot split a Post-LN stream"
        raise ValueError(msg)
    norm = _norm_module(lm, tables["norm"])
    parts = [_lookup(lm, tables["token"], ids), *found.values()]
    s = norm.divisor(torch.stack(parts).sum(0))  # [P, 1]
    rest = (norm.bias.double() if norm.bias is not None else 0) + torch.zeros_like(state)
    normed = [norm.weight.double() * norm.centre(p) / s for p in parts]
    if relative_miss(sum(normed) + rest, state) > TOLERANCE:
        msg = (
            f"{lm.spec.model_type}: the embedding tables do not rebuild the recorded embeddings (positions or token types "
            "are set up in a way attnscope does not know), so the stream cannot be split"
        )
        raise ValueError(msg)
    return ["embed", *found], normed, rest, [tables["norm"]]


def _lookup(lm: LoadedModel, name: str, ids: torch.Tensor) -> torch.Tensor:
    table = lm.module(name).weight.detach()  # type: ignore[operator]
    return table[ids.to(table.device)].double().cpu()  # [P, d]


def _head_outputs(lm: LoadedModel, rec: ForwardRecord, layer: int, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What each head of block ``layer`` adds at ``rows``: Σ_j α^h_pj W_O^h v^h_j, and the output bias.

    Returns:
        (heads [H, P, d] float64, b_O [d] float64, zeros without one); only the rows' weights are formed ([H, P, n]).
    """
    spec = lm.spec
    record = rec.layer_record(layer)
    if record.value is None:
        msg = "this record keeps no values; run it with run(..., values=True)"
        raise ValueError(msg)
    real = torch.from_numpy(rec.real_index(0))
    device = record.query.device
    heads = torch.arange(spec.n_heads)
    alpha = attention_rows(record, batch=0, heads=heads.to(device), rows=real[rows].to(device))[:, :, real.to(device)]  # [H, P, n]
    values = record.value[0].index_select(0, (heads // spec.kv_group).to(record.value.device))[
        :, real.to(record.value.device)
    ]  # [H, n, dv]
    mixed = torch.bmm(alpha.double().cpu(), values.double().cpu())  # [H, P, dv]
    found = output_layer(lm.model, record.module, spec.n_heads * values.shape[-1])
    if found is None:
        msg = f"attnscope could not find layer {layer}'s output projection in {spec.model_type}, so it cannot split what the heads write"
        raise ValueError(msg)
    w_o, b_o = found
    d = w_o.shape[0]
    w = w_o.double().cpu().reshape(d, spec.n_heads, -1).permute(1, 2, 0)  # [H, dv, d]
    out = torch.bmm(mixed, w)  # [H, P, d]
    return out, (torch.zeros(d, dtype=torch.float64) if b_o is None else b_o.double().cpu())


def stream_at(lm: LoadedModel, rec: ForwardRecord, layer: int, rows: torch.Tensor) -> Stream:
    """The residual stream entering block ``layer`` at positions ``rows`` (0-based over the real tokens), split into
    the embeddings, every earlier head and every earlier MLP, each norm linearised with its own statistics.

    Pre-LN blocks add their heads and MLP to the stream as they are (an MLP's part is what the block added beyond
    its attention, read from the recorded states); Post-LN blocks (BERT) pass the stream and the new parts through
    LN1 (statistics of x + attention + b_O) and LN2 (of mid + mlp(mid), the MLP called on the rows), as routes do.
    Only the rows' weights and states are read: memory O(C·P·d).
    """
    real = torch.from_numpy(rec.real_index(0))

    def recorded(m: int) -> torch.Tensor:
        h = rec.hidden_states[m][0]
        return h[real[rows].to(h.device)].double().cpu()  # [P, d]

    module = rec.layer_record(0).module
    post = block_layout(lm, module) is not None
    names, pieces, rest, linearised = _embeddings(lm, rec, recorded(0), rows, post)
    n_heads = lm.spec.n_heads
    for m in range(layer):
        heads, b_o = _head_outputs(lm, rec, m, rows)  # [H, P, d], [d]
        x = recorded(m)
        if not post:  # Pre-LN (and parallel): everything adds
            mlp = recorded(m + 1) - (x + heads.sum(0) + b_o)  # exact: what the block added beyond its attention
            pieces += [*heads, mlp]
            rest = rest + b_o
        else:
            _, mlp_of, norm2 = mlp_reader(lm, rec.layer_record(m).module)
            norm1 = block_layout(lm, rec.layer_record(m).module)
            assert norm1 is not None and norm2 is not None  # a Post-LN block has both norms (block_layout refuses otherwise)
            z = x + heads.sum(0) + b_o  # x + attention + b_O
            s1 = norm1.divisor(z)
            g1 = norm1.weight.double()
            pieces = [g1 * norm1.centre(p) / s1 for p in [*pieces, *heads]]
            rest = g1 * norm1.centre(rest + b_o) / s1 + (0 if norm1.bias is None else norm1.bias.double())
            mid = norm1(z.float()).double()
            mlp = mlp_of(x.float(), mid.float()).double()  # [P, d]
            s2 = norm2.divisor(mid + mlp)
            g2 = norm2.weight.double()
            pieces = [g2 * norm2.centre(p) / s2 for p in [*pieces, mlp]]
            rest = g2 * norm2.centre(rest) / s2 + (0 if norm2.bias is None else norm2.bias.double())
            linearised += [f"layer {m} attention norm", f"layer {m} output norm"]
        names += [f"L{m}H{h}" for h in range(n_heads)] + [f"L{m}MLP"]
    parts = torch.stack(pieces)  # [C, P, d]
    check = relative_miss(parts.sum(0) + rest, recorded(layer))
    return Stream(names, parts, rest, check, linearised)


@dataclass(frozen=True)
class Split:
    """One cell's score split (``why``). Component contributions are floats in the scaled score's units."""

    model: str
    text: str
    tokens: list[str]
    layer: int
    head: int
    query: int
    key: int
    score: float  # the recorded scaled pre-softmax score
    weight: float  # α_ij
    components: list[str]
    query_side: dict[str, float]
    key_side: dict[str, float]
    bias: dict[str, float]
    pairs: list[dict]
    meta: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "model": self.model,
            "text": self.text,
            "layer": self.layer,
            "head": self.head,
            "query": self.query,
            "key": self.key,
            "score": self.score,
            "weight": self.weight,
            "components": self.components,
            "query_side": self.query_side,
            "key_side": self.key_side,
            "bias": self.bias,
            "pairs": self.pairs,
            "tokens": self.tokens,
            "meta": self.meta,
        }


def whole_index(value, name: str, upper: int, what: str) -> int:
    """``value`` as an int in 0..upper-1, or one ValueError line naming ``name`` and the range (0-based)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value < upper:
        msg = f"{name} {value!r} out of range; {what} 0..{upper - 1} (0-based)"
        raise ValueError(msg)
    return int(value)


def check_why_model(lm: LoadedModel) -> None:
    """Refuse, in one line, the models the split does not cover (those routes refuse, and more)."""
    check_model(lm)
    if lm.spec.kind == "encoder-decoder":
        msg = f"{lm.spec.name} is an encoder-decoder model; the score split works on decoder-only and encoder-only models"
        raise ValueError(msg)
    if lm.layout.attention_softcap:
        msg = f"{lm.spec.model_type} soft-caps its attention scores (tanh); the split is of an uncapped score and would not add up"
        raise ValueError(msg)


class Reader:
    """The head-side pieces of one block: W_Q and W_K rows by head, the norm before the attention, RoPE."""

    def __init__(self, lm: LoadedModel, rec: ForwardRecord, layer: int):
        spec = lm.spec
        record = rec.layer_record(layer)
        self.record = record
        head_dim = record.query.shape[-1]
        found = query_key_layers(lm.model, record.module, spec.n_heads, spec.n_kv_heads, head_dim)
        if found is None:
            msg = (
                f"attnscope could not find layer {layer}'s query and key projections in {spec.model_type} (it reads separate "
                "ones, or one fused [queries; keys; values] projection), so it cannot split the score"
            )
            raise ValueError(msg)
        self.qk = found
        self.head_dim = head_dim
        facts = lm.layout.block(record.module)
        self.norm = None
        self.norm_name = None
        if facts is not None and facts.placement == "pre":
            norm_facts = attention_input_norm(lm.model, facts.name)
            if norm_facts is None:
                msg = f"attnscope could not find the norm before layer {layer}'s attention in {spec.model_type}"
                raise ValueError(msg)
            self.norm = as_norm(lm, norm_facts)
            self.norm_name = norm_facts.name
        elif facts is None or facts.placement != "post":
            raise ValueError(facts.norm_reason if facts is not None else f"{spec.model_type}: layer {layer} names no block")
        self.rotary = rotary_module(lm.model)
        self.lm = lm

    def rows(self, head: int, kv_head: int) -> tuple[HeadReader, HeadReader]:
        d = self.head_dim
        qk = self.qk

        def part(t, h):
            return None if t is None else t[h * d : (h + 1) * d].float().cpu()

        return (
            HeadReader(part(qk.w_q, head), part(qk.b_q, head), self.norm),
            HeadReader(part(qk.w_k, kv_head), part(qk.b_k, kv_head), self.norm),
        )

    def rotation(self, positions: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """RoPE's (cos, sin) [P, d_h] at the given positions, from the model's rotary module; (None, None) without one."""
        if self.rotary is None:
            return None, None
        module = self.lm.module(self.rotary)
        buffer = next(module.buffers(), None)
        device = buffer.device if buffer is not None else "cpu"
        probe = torch.zeros(1, len(positions), self.head_dim, dtype=torch.float32, device=device)
        with torch.inference_mode():
            cos, sin = module(probe, positions.to(device)[None])
        return cos[0].double().cpu(), sin[0].double().cpu()


def why(
    lm: LoadedModel,
    text: str,
    layer: int,
    head: int,
    query: int,
    key: int,
    top: int = DEFAULT_TOP,
    *,
    rec: ForwardRecord | None = None,
) -> Split:
    """Split head (``layer``, ``head``)'s scaled pre-softmax score of query ``query`` and key ``key`` by the
    components that wrote each side (all 0-based; positions over the text's real tokens).

    Args:
        top: how many of the strongest (query component, key component) pairs to keep.
        rec: a record of ``text`` made with ``run(..., values=True)`` (else one is made).
    Raises:
        ValueError: bad layer, head or positions, a masked cell, models the split does not cover, or rebuilt
            queries, keys or scores that miss the recorded ones.
    """
    check_why_model(lm)
    spec = lm.spec
    layer = whole_index(layer, "layer", spec.n_layers, "this model has layers")
    head = whole_index(head, "head", spec.n_heads, "this model has heads")
    if isinstance(top, bool) or not isinstance(top, (int, np.integer)) or top < 0:
        msg = f"top must be a whole number ≥ 0, not {top!r}"
        raise ValueError(msg)
    first = None if rec is None else rec.layers[rec.attention_layers[0]]
    if rec is None or first is None or first.value is None:
        rec = run(lm, text, values=True)
    n = len(rec.tokens[0])
    query = whole_index(query, "query", n, "this text has tokens")
    key = whole_index(key, "key", n, "this text has tokens")
    allowed = rec.allowed(layer)[query, key]
    if not allowed:
        msg = f"key {key} is masked for query {query} in this model (causal: a query sees keys 0..itself); choose key ≤ query"
        raise ValueError(msg)
    if len(rec.attention_layers) != spec.n_layers:
        msg = f"{spec.model_type} mixes attention with other blocks; the split needs an attention block in every layer"
        raise ValueError(msg)
    return split_cell(lm, rec, layer, head, query, key, top)


def split_cell(lm: LoadedModel, rec: ForwardRecord, layer: int, head: int, query: int, key: int, top: int) -> Split:
    """``why`` on a record made with values kept, cell already checked."""
    spec = lm.spec
    kv_head = head // spec.kv_group
    reader = Reader(lm, rec, layer)
    record = reader.record
    rows = torch.tensor([query, key])
    stream = stream_at(lm, rec, layer, rows)
    if stream.check > TOLERANCE:
        msg = f"{spec.model_type}: the split stream entering layer {layer} misses the recorded one by {stream.check:.1e} (relative)"
        raise ValueError(msg)
    real = torch.from_numpy(rec.real_index(0))
    padded = real[rows]
    cos, sin = reader.rotation(padded if rec.position_ids is None else torch.from_numpy(rec.position_ids[0])[padded])
    sides = [Side(stream.parts[:, p], stream.rest[p], None if cos is None else cos[p], None if sin is None else sin[p]) for p in range(2)]
    q_reader, k_reader = reader.rows(head, kv_head)
    bias = _position_bias(record, head, int(padded[0]), int(padded[1]))
    result = split_score(sides[0], sides[1], q_reader, k_reader, record.scaling, bias)
    recorded_q = record.query[0, head, padded[0]].double().cpu()
    recorded_k = record.key[0, kv_head, padded[1]].double().cpu()
    checks = {
        "query": relative_miss(result_vector(sides[0], q_reader), recorded_q),
        "key": relative_miss(result_vector(sides[1], k_reader), recorded_k),
    }
    for what, miss in checks.items():
        if miss > TOLERANCE:
            msg = (
                f"{spec.model_type}: the {what} rebuilt from layer {layer}'s projections misses the recorded one by {miss:.1e} "
                "(relative); attnscope does not read this attention's layout (fused or interleaved projections, partial RoPE)"
            )
            raise ValueError(msg)
    score = float(record.scaling) * float(recorded_q @ recorded_k) + bias
    return _assemble(lm, rec, stream, reader, result, layer, head, kv_head, query, key, score, top, checks)


def result_vector(side: Side, reader: HeadReader) -> torch.Tensor:
    from attnscope.analysis.why import project

    parts, bias = project(side, reader)
    return parts.sum(0) + bias


def _position_bias(record, head: int, i: int, j: int) -> float:
    """The additive term the model puts on the cell besides q·k (T5's relative buckets, ALiBi), from the recorded mask."""
    mask = record.mask
    if isinstance(mask, torch.Tensor) and mask.is_floating_point():
        return float(mask[0, min(head, mask.shape[1] - 1), i, j])
    return 0.0


def _assemble(lm, rec, stream, reader, result: ScoreSplit, layer, head, kv_head, query, key, score, top, checks) -> Split:
    names = stream.names
    pairs = [{"query": names[a], "key": names[b], "value": v} for a, b, v in result.pairs(top)]
    weight = float(rec.attention(layer, head)[query, key])
    tokens = list(rec.tokens[0])
    linearised = list(stream.linearised)
    if reader.norm_name is not None:
        linearised.append(f"{reader.norm_name} (the norm before layer {layer}'s attention)")
    meta = {
        "kv_head": kv_head,
        "kv_group": lm.spec.kv_group,
        "rope": reader.rotary is not None,
        "layout": "Post-LN" if reader.norm is None else "Pre-LN",
        "linearised": linearised or ["nothing: no norm between the components and the projections"],
        "scaling": float(reader.record.scaling),
        "split_score": result.score,
        "split_error": abs(result.score - score),
        "check": {"stream": stream.check, **checks},
        "sums": (
            "score = Σ query_side + bias.query + bias.position = Σ key_side + bias.key + bias.position; "
            "bias.both (query bias · key bias) is inside bias.query and bias.key"
        ),
        "query_token": tokens[query],
        "key_token": tokens[key],
    }
    return Split(
        model=lm.spec.name,
        text=rec.texts[0],
        tokens=tokens,
        layer=layer,
        head=head,
        query=query,
        key=key,
        score=score,
        weight=weight,
        components=names,
        query_side=dict(zip(names, result.query_side.tolist())),
        key_side=dict(zip(names, result.key_side.tolist())),
        bias={
            "query": result.query_bias,
            "key": result.key_bias,
            "both": float(result.terms[-1, -1]),
            "position": result.position,
        },
        pairs=pairs,
        meta=meta,
    )
