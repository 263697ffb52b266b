"""A head's circuit over a whole text: which earlier components feed its queries, keys and values.

``circuit(lm, text, layer, head)`` splits the residual stream entering the head's block at every position
(``models.why.stream_at``: embeddings, every earlier head, every earlier MLP, norms linearised), projects each
component through the head's W_Q, its KV head's W_K (RoPE per position) and W_V, and aggregates over the cells the
head attends to, weighted by α (``analysis.why.attended_spread``):

- keys: component c' moves the scores by scale · q_i · k_j^c'; its share is Σ_ij α_ij |that − its α-mean over the
  row| (what is the same for every key of a row changes no weight), normalised over components;
- queries: the same with scale · q_i^c · k_j;
- values: Σ_i ‖W_O^h Σ_j α_ij v_j^c‖, normalised.

Beside them, Elhage et al.'s weight-only composition scores of every earlier head with this one
(``analysis.why.composition_scores``). ``induction_check`` finds the strongest induction head on a repeated
random-token sequence, its strongest key-side feeder, and compares knocking that feeder out with knocking out
earlier heads at random.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from attnscope.analysis.probes import layer_induction_scores
from attnscope.analysis.why import attended_spread, composition_scores, rotate, shares
from attnscope.models.architecture import output_layer
from attnscope.models.forward import run
from attnscope.models.loaded import LoadedModel
from attnscope.models.record import ForwardRecord
from attnscope.models.why import TOLERANCE, Reader, check_why_model, relative_miss, stream_at, whole_index

__all__ = ["Circuit", "InductionCheck", "circuit", "induction_check", "induction_feeders", "induction_record"]


@dataclass(frozen=True)
class Circuit:
    """One head's feeders over a text: component -> share (each side sums to 1), and the weight-only scores."""

    model: str
    layer: int
    head: int
    tokens: list[str]
    keys: dict[str, float]
    queries: dict[str, float]
    values: dict[str, float]
    weight_only: dict[str, dict[str, float]]  # "L{l}H{h}" -> {"q", "k", "v"} composition
    meta: dict = field(default_factory=dict)

    def top(self, side: str, k: int = 5, heads_only: bool = False) -> list[tuple[str, float]]:
        """The k largest shares of one side ("keys", "queries", "values")."""
        items = getattr(self, side).items()
        if heads_only:
            items = [(c, v) for c, v in items if c.startswith("L") and not c.endswith("MLP")]
        return sorted(items, key=lambda cv: -cv[1])[:k]

    def to_json(self) -> dict:
        return {
            "model": self.model,
            "layer": self.layer,
            "head": self.head,
            "tokens": self.tokens,
            "keys": self.keys,
            "queries": self.queries,
            "values": self.values,
            "weight_only": self.weight_only,
            "meta": self.meta,
        }


def _rows(t: torch.Tensor | None, index: int, size: int) -> torch.Tensor | None:
    return None if t is None else t[index * size : (index + 1) * size].double().cpu()


def circuit(lm: LoadedModel, text: str, layer: int, head: int, *, rec: ForwardRecord | None = None) -> Circuit:
    """The components feeding head (``layer``, ``head``)'s keys, queries and values over ``text`` (0-based).

    Args:
        rec: a record of the text made with values kept (else one is made).
    Raises:
        ValueError: bad layer or head, models the split does not cover, rebuilt queries or keys that miss the record.
    """
    check_why_model(lm)
    spec = lm.spec
    layer = whole_index(layer, "layer", spec.n_layers, "this model has layers")
    head = whole_index(head, "head", spec.n_heads, "this model has heads")
    first = None if rec is None else rec.layers[rec.attention_layers[0]]
    if rec is None or first is None or first.value is None:
        rec = run(lm, text, values=True)
    kv_head = head // spec.kv_group
    reader = Reader(lm, rec, layer)
    record = reader.record
    n = len(rec.tokens[0])
    positions = torch.arange(n)
    stream = stream_at(lm, rec, layer, positions)  # parts [C, n, d], rest [n, d]
    if stream.check > TOLERANCE:
        msg = f"{spec.model_type}: the split stream entering layer {layer} misses the recorded one by {stream.check:.1e} (relative)"
        raise ValueError(msg)
    norm = reader.norm
    parts, rest = stream.parts, stream.rest
    if norm is not None:  # linearised at every position with its own statistics
        s = norm.divisor(parts.sum(0) + rest)  # [n, 1]
        gamma = norm.weight.double()
        parts = gamma * norm.centre(parts) / s  # [C, n, d]
        rest = gamma * norm.centre(rest) / s + (0 if norm.bias is None else norm.bias.double())
    dh = reader.head_dim
    qk = reader.qk
    w_q, b_q, w_k, b_k = _rows(qk.w_q, head, dh), _rows(qk.b_q, head, dh), _rows(qk.w_k, kv_head, dh), _rows(qk.b_k, kv_head, dh)
    real = torch.from_numpy(rec.real_index(0))
    cos, sin = reader.rotation(real)

    def project(weight, bias):
        comp = rotate(parts @ weight.T, cos, sin)  # [C, n, d_h]
        whole = rotate(rest @ weight.T + (0 if bias is None else bias), cos, sin)  # [n, d_h]
        return comp, comp.sum(0) + whole

    q_parts, q = project(w_q, b_q)
    k_parts, k = project(w_k, b_k)
    recorded_q = record.query[0, head][real.to(record.query.device)].double().cpu()
    recorded_k = record.key[0, kv_head][real.to(record.key.device)].double().cpu()
    checks = {"query": relative_miss(q, recorded_q), "key": relative_miss(k, recorded_k)}
    for what, miss in checks.items():
        if miss > TOLERANCE:
            msg = f"{spec.model_type}: the {what}s rebuilt from layer {layer}'s projections miss the recorded ones by {miss:.1e} (relative)"
            raise ValueError(msg)
    alpha = torch.from_numpy(np.asarray(rec.attention(layer, head), dtype=np.float64))  # [n, n]
    scale = float(record.scaling)
    key_spread = torch.tensor([attended_spread(alpha, scale * (q @ kc.T)) for kc in k_parts], dtype=torch.float64)
    query_spread = torch.tensor([attended_spread(alpha, scale * (qc @ k.T)) for qc in q_parts], dtype=torch.float64)
    values, weight_only, notes = _values_and_composition(lm, rec, reader, layer, head, kv_head, parts, alpha)
    names = stream.names
    meta = {
        "kv_head": kv_head,
        "rope": reader.rotary is not None,
        "layout": "Post-LN" if norm is None else "Pre-LN",
        "shares": (
            "keys: Σ_ij α_ij |scale·q_i·k_j^c − its α-weighted mean over the row|, normalised over components; queries: the same "
            "with scale·q_i^c·k_j; values: Σ_i ‖W_O^h Σ_j α_ij v_j^c‖, normalised; biases are nobody's share"
        ),
        "check": {"stream": stream.check, **checks},
        **notes,
    }
    return Circuit(
        model=spec.name,
        layer=layer,
        head=head,
        tokens=list(rec.tokens[0]),
        keys=dict(zip(names, shares(key_spread).tolist())),
        queries=dict(zip(names, shares(query_spread).tolist())),
        values=dict(zip(names, values.tolist())) if values is not None else {},
        weight_only=weight_only,
        meta=meta,
    )


def _values_and_composition(lm, rec, reader, layer, head, kv_head, parts, alpha):
    """(value shares [C] or None, weight-only scores by earlier head, notes for the meta)."""
    spec = lm.spec
    qk = reader.qk
    dh = reader.head_dim
    notes: dict[str, str] = {}
    if qk.w_v is None:
        notes["values"] = f"attnscope could not find layer {layer}'s value projection, so the value side is left out"
        return None, {}, notes
    dv = qk.w_v.shape[0] // spec.n_kv_heads
    found = output_layer(lm.model, reader.record.module, spec.n_heads * dv)
    if found is None:
        notes["values"] = f"attnscope could not find layer {layer}'s output projection, so the value side is left out"
        return None, {}, notes
    w_o = found[0].double().cpu()[:, head * dv : (head + 1) * dv]  # [d, d_v]
    w_v = _rows(qk.w_v, kv_head, dv)  # [d_v, d]
    mixed = torch.einsum("ij,cjd->cid", alpha, parts @ w_v.T)  # [C, n, d_v]
    written = torch.linalg.vector_norm(mixed @ w_o.T, dim=-1).sum(-1)  # [C]
    gain = reader.norm.weight.double() if reader.norm is not None else torch.ones(w_o.shape[0], dtype=torch.float64)
    w_q = _rows(qk.w_q, head, dh) * gain
    w_k = _rows(qk.w_k, kv_head, dh) * gain
    senders, names = [], []
    for m in range(layer):
        sender = Reader(lm, rec, m)
        if sender.qk.w_v is None:
            continue
        found_m = output_layer(lm.model, sender.record.module, spec.n_heads * dv)
        if found_m is None:
            continue
        gain_m = sender.norm.weight.double() if sender.norm is not None else 1.0
        for g in range(spec.n_heads):
            o_s = found_m[0].double().cpu()[:, g * dv : (g + 1) * dv]
            v_s = _rows(sender.qk.w_v, g // spec.kv_group, dv) * gain_m
            senders.append((o_s, v_s))
            names.append(f"L{m}H{g}")
    scores = composition_scores(w_q, w_k, w_v * gain, w_o, senders)
    weight_only = {name: {"q": float(r[0]), "k": float(r[1]), "v": float(r[2])} for name, r in zip(names, scores)}
    approx = []
    if reader.rotary is not None:
        approx.append("RoPE rotates queries and keys by their positions, which weights alone do not see")
    if reader.norm is None:
        approx.append("Post-LN norms sit between the heads and are left out")
    notes["weight_only"] = (
        "Elhage et al. (2021) composition: ‖W_QKᵀ W_OV‖, ‖W_QK W_OV‖, ‖W_OV W_OV‖ over the product of norms, norm gains folded in; "
        + ("approximate: " + "; ".join(approx) if approx else "exact in the weights (the norms' statistics are not)")
    )
    return shares(written), weight_only, notes


@dataclass(frozen=True)
class InductionCheck:
    """The strongest induction head on a repeated random sequence, its top key-side feeder, and knockouts."""

    head: tuple[int, int]
    score: float  # its induction score, untouched
    feeder: str  # its strongest key-side feeder among earlier heads
    feeder_share: float
    top_drop: float  # induction score lost when the feeder is knocked out (zeroed)
    random_drop: float  # mean loss when one random earlier head is knocked out instead
    random_heads: list[str]
    circuit: Circuit = field(repr=False)

    @property
    def holds(self) -> bool:
        return self.top_drop > self.random_drop


def induction_record(lm: LoadedModel, seq_len: int = 20, seed: int = 0) -> tuple[np.ndarray, str, ForwardRecord, np.ndarray]:
    """One repeated random-token sequence (``models.probes.induction_ids``) recorded with values kept.

    Returns:
        (ids [1, n], its text, the record, every head's induction score [layers, heads] on it).
    Raises:
        ValueError: for models that are not decoders (induction heads are a decoder's).
    """
    from attnscope.models.forward import record_forward
    from attnscope.models.probes import induction_ids

    if lm.spec.kind != "decoder":
        msg = f"induction heads are a decoder's; {lm.spec.name} is an {lm.spec.kind} model"
        raise ValueError(msg)
    ids, _ = induction_ids(lm, seq_len=seq_len, batch=1, seed=seed)
    enc = {"input_ids": torch.as_tensor(ids), "attention_mask": torch.ones_like(torch.as_tensor(ids))}
    texts = lm.tokenizer.batch_decode(ids.tolist())
    rec = record_forward(lm, texts, enc, lm.tokenizer.padding_side or "right", True, values=True)
    table = np.stack([layer_induction_scores(rec.layer_record(layer), period=seq_len) for layer in range(lm.spec.n_layers)])
    return ids, texts[0], rec, table


def induction_feeders(
    lm: LoadedModel, heads: list[tuple[int, int]], seq_len: int = 20, seed: int = 0, top: int = 3
) -> list[tuple[tuple[int, int], float, list[tuple[str, float]]]]:
    """The strongest key-side feeders among earlier heads of each head in ``heads`` (induction heads, say), on one
    repeated random-token sequence: per head ((layer, head), its induction score there, [(feeder, share), ...]).
    Layer-0 heads have no earlier head and get no feeders."""
    _, text, rec, table = induction_record(lm, seq_len, seed)
    out = []
    for layer, head in heads:
        feeders = circuit(lm, text, layer, head, rec=rec).top("keys", top, heads_only=True) if layer > 0 else []
        out.append(((int(layer), int(head)), float(table[layer, head]), feeders))
    return out


def induction_check(lm: LoadedModel, seq_len: int = 20, seed: int = 0, samples: int = 8) -> InductionCheck:
    """Find the strongest induction head (``models.probes``) on one repeated random-token sequence, its strongest
    key-side feeder among earlier heads (``circuit``), and compare the induction score lost by knocking that feeder
    out with knocking out ``samples`` random earlier heads, one at a time."""
    from attnscope.models.forward import run_ids
    from attnscope.models.hook import intervening
    from attnscope.models.knockout import Ablation, ablation_edits

    ids, text, rec, table = induction_record(lm, seq_len, seed)
    table[0] = -1  # a layer-0 head has no earlier head to feed it
    layer, head = (int(x) for x in np.unravel_index(int(np.argmax(table)), table.shape))
    found = circuit(lm, text, layer, head, rec=rec)
    feeder, share = found.top("keys", 1, heads_only=True)[0]

    def drop(name: str) -> float:
        m, g = (int(x) for x in name[1:].split("H"))
        with intervening(ablation_edits(Ablation(heads=((m, g),)), lm.spec.kv_group), lm.module_names):
            after = run_ids(lm, ids)
        return float(table[layer, head] - layer_induction_scores(after.layer_record(layer), period=seq_len)[head])

    earlier = [f"L{m}H{g}" for m in range(layer) for g in range(lm.spec.n_heads) if f"L{m}H{g}" != feeder]
    rng = np.random.default_rng(seed)
    picked = [earlier[i] for i in rng.choice(len(earlier), size=min(samples, len(earlier)), replace=False)]
    random_drop = float(np.mean([drop(name) for name in picked])) if picked else 0.0
    return InductionCheck((layer, head), float(table[layer, head]), feeder, share, drop(feeder), random_drop, picked, found)
