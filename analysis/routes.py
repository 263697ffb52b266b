"""Information-flow routes (Ferrando & Voita 2024): the graph of heads and blocks a prediction went through.

Nodes are residual-stream states: node (layer, position) is the state after block ``layer − 1`` at a
token (layer 0 = the embeddings, ``n_layers`` = the last block's output, before any final norm). The
components that sum to a node's state are its incoming edges, all entering from the block's input:

- ``residual``: the block's input x_P, from node (layer − 1, P);
- ``head``: α^h_Pj W_O^h v^h_j, what head h carries from key j, from node (layer − 1, j);
- ``mlp``: the block's MLP output at P (drawn from node (layer − 1, P): the MLP reads it after the
  attention has added to it, so an MLP edge stands for the MLP, not for one token).

Pre-LN blocks split exactly: y_P = x_P + Σ_h Σ_j α^h_Pj W_O^h v^h_j + b_O + mlp_P. Post-LN blocks
(BERT's family) end in y_P = LN2(mid_P + mlp(mid_P)), mid_P = LN1(x_P + attention_P + b_O): both norms are
linearised with their sums' own statistics (``analysis.contributions.Norm``), so the residual and head
terms pass through both linear parts and the MLP's through LN2's. What no edge owns (the output bias,
the norms' β) is left out of the edges; the parts plus that rest are the node's state.

Importance (the proximity of ALTI, ``analysis.contributions.alti_map``, per component):
imp(e) = max(0, ‖y‖₁ − ‖y − e‖₁), normalised over the edges into the node, so at τ = 0 the
importances into every node sum to 1. The graph is built top-down from the prediction's node
(n_layers, P): a block's edges into the nodes of the frontier are kept when imp > τ, and the nodes they
come from form the next frontier, down to the embeddings.

Encoder-decoder models (``build_seq2seq``): a decoder block adds cross-attention heads, whose edges come
from the encoder's output at the source token they read; the encoder is expanded top-down from those.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from attnscope.analysis.contributions import Block, Norm, head_terms, linear_parts

__all__ = [
    "EDGE_COLUMNS",
    "KINDS",
    "NodeParts",
    "Routes",
    "block_edges",
    "build",
    "build_seq2seq",
    "importances",
    "node_parts",
]

KINDS = ("head", "mlp", "residual")
_ROWS = 16  # queries per chunk: a causal chunk's keys stop at its last query
# One row per edge; head and kv_head are <NA> for mlp and residual edges.
EDGE_COLUMNS = ["layer", "kind", "head", "kv_head", "from_position", "to_position", "importance"]


def importances(y: torch.Tensor, parts: torch.Tensor) -> torch.Tensor:
    """max(0, ‖y‖₁ − ‖y − e‖₁) for each part e, normalised to sum to 1 (a node whose parts are all 0 stays 0).

    Args:
        y: [d] the node's state; parts: [m, d] its components.
    Returns:
        [m] in the parts' dtype.
    """
    close = (y.abs().sum() - (y[None, :] - parts).abs().sum(-1)).clamp_min(0)
    return close / close.sum().clamp_min(torch.finfo(close.dtype).tiny)


@dataclass(frozen=True)
class NodeParts:
    """The additive components of one node's state: heads [H, n, d] (zero where α = 0), residual [d], mlp [d],
    rest [d] (output bias and norm offsets: nobody's edge). Their sum is the state."""

    heads: torch.Tensor
    residual: torch.Tensor
    mlp: torch.Tensor
    rest: torch.Tensor

    @property
    def state(self) -> torch.Tensor:
        return self.heads.sum((0, 1)) + self.residual + self.mlp + self.rest


def node_parts(block: Block, position: int, mlp: torch.Tensor, after: Norm | None = None, parts=None) -> NodeParts:
    """Split the state after ``block`` at one query into residual, per-head-per-key and MLP parts.

    Args:
        block: the attention block (its ``norm`` is LN1 in Post-LN blocks).
        position: the query (0-based over the block's tokens).
        mlp: [d] the MLP's output at the query: Pre-LN, what it adds to the residual stream; Post-LN, mlp(mid).
        after: Post-LN: the norm after the MLP (LN2), applied to mid + mlp; None in Pre-LN blocks.
        parts: ``analysis.contributions.linear_parts(block)`` when the caller splits many queries of the block.
    """
    heads, residual, rest = head_terms(block, position, parts)
    mlp = mlp.to(heads.dtype)
    if after is None:
        return NodeParts(heads, residual, mlp, rest)
    mid = heads.sum((0, 1)) + residual + rest  # LN1's output, exactly as the block computes it
    s = after.divisor(mid + mlp)  # [1]: LN2's statistics of the sum it normalises
    tail = after.scaled(rest) / s + (0 if after.bias is None else after.bias.to(heads.dtype))
    return NodeParts(after.scaled(heads) / s, after.scaled(residual) / s, after.scaled(mlp) / s, tail)


def _closeness(scaled: torch.Tensor, written: torch.Tensor, y: torch.Tensor, own: torch.Tensor, chunk: int) -> torch.Tensor:
    """max(0, ‖y_r‖₁ − ‖y_r − a_hrj U_hj‖₁) for every head h, query r and key j, a chunk of queries at a time.

    Args:
        scaled: [H, r, n] the weights times each query's scale; written: [H, n, d]; y: [r, d]; own: [r] = ‖y‖₁.
    Returns:
        [H, r, n], 0 where a head does not read a key.
    """
    n_heads, r, n = scaled.shape
    close = torch.zeros(n_heads, r, n, dtype=written.dtype)
    step = max(1, min(_ROWS, chunk // max(1, n_heads * n * written.shape[-1])))
    for start in range(0, r, step):
        stop = min(start + step, r)
        keys = torch.nonzero(scaled[:, start:stop].amax((0, 1)) > 0).flatten()  # keys these queries read
        a = scaled[:, start:stop, keys]  # [H, rc, k]
        # ‖y − e‖₁ with e = a·U: one fused pass builds y − e, one takes its L1 norm
        diff = torch.addcmul(y[None, start:stop, None], a[..., None], written[:, keys][:, None], value=-1)  # [H, rc, k, d]
        close[:, start:stop, keys] = (own[None, start:stop, None] - torch.linalg.vector_norm(diff, ord=1, dim=-1)).clamp_min_(0)
    close[scaled == 0] = 0  # a key a head does not read carries nothing
    return close


def _head_rows(close: torch.Tensor, total: torch.Tensor, rows: torch.Tensor, threshold: float) -> tuple:
    """(heads, to positions, from keys, importances) of the head edges above ``threshold``."""
    imp = (close / total[None, :, None]).double()
    h_idx, r_idx, k_idx = torch.nonzero(imp > threshold, as_tuple=True)
    return h_idx.numpy(), rows[r_idx].numpy(), k_idx.numpy(), imp[h_idx, r_idx, k_idx].numpy()


def block_edges(
    block: Block,
    layer: int,
    positions: Iterable[int],
    mlp: torch.Tensor,
    after: Norm | None = None,
    kv_group: int = 1,
    threshold: float = 0.0,
    chunk: int = 1 << 24,
    cross: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None = None,
) -> pd.DataFrame:
    """The edges of one block into the nodes (layer + 1, p), p in ``positions``, with importance > ``threshold``.

    The split of ``node_parts`` for many queries at once: a head's term is α^h_Pj · c_P · U^h_j, U the written
    vectors through the norms' linear parts and c_P the inverse of the norms' divisors at P, so no query's
    [H, n, d] terms outlive their chunk (at most ``chunk`` floats).

    Args:
        mlp: [n, d] the block's MLP output at every token (see ``node_parts``).
        cross: a Pre-LN decoder block's cross-attention: (weights [H, n, m] over the m source tokens, the written
            vectors W_O^h v^h_s [H, m, d], its output bias or None); its heads' edges come from the source.
    Returns:
        DataFrame with ``EDGE_COLUMNS`` (plus ``from_stack``: "cross" for cross-attention heads, "" else, when
        ``cross`` is given), importances normalised per node over all its edges (dropped ones too).
    """
    rows = torch.as_tensor(list(positions), dtype=torch.long)
    if len(rows) == 0:
        return pd.DataFrame(columns=EDGE_COLUMNS)
    u, x, b, s = linear_parts(block)  # Post-LN: through LN1's linear part; mid_P = (Σ + x'_P + b') / s_P (+ β1)
    alpha = block.weights[:, rows].to(u.dtype)  # [H, r, n]
    c = 1.0 / s[rows]  # [r, 1]
    residual = x[rows] * c  # [r, d]
    rest = b[None, :] * c
    if block.norm is not None and block.norm.bias is not None:
        rest = rest + block.norm.bias.to(u.dtype)
    attention = torch.bmm(alpha, u).sum(0) * c  # [r, d]
    if cross is not None:
        if block.norm is not None or after is not None:
            msg = "cross-attention edges are split in Pre-LN decoder blocks only"
            raise ValueError(msg)
        cross_alpha, cross_written = cross[0][:, rows].to(u.dtype), cross[1].to(u.dtype)  # [H, r, m], [H, m, d]
        attention = attention + torch.bmm(cross_alpha, cross_written).sum(0)
        if cross[2] is not None:
            rest = rest + cross[2].to(u.dtype)
    mlp = mlp[rows].to(u.dtype)
    if after is not None:  # LN2(mid + mlp), linearised with its own statistics
        s2 = after.divisor(attention + residual + rest + mlp)  # [r, 1]
        u = after.scaled(u)
        c = c / s2
        attention, residual, mlp = after.scaled(attention) / s2, after.scaled(residual) / s2, after.scaled(mlp) / s2
        rest = after.scaled(rest) / s2 + (0 if after.bias is None else after.bias.to(u.dtype))
    y = attention + residual + mlp + rest  # [r, d]: the node states
    own = y.abs().sum(-1)  # [r]
    close = _closeness(alpha * c[None], u, y, own, chunk)  # [H, r, n]
    close_cross = _closeness(cross_alpha, cross_written, y, own, chunk) if cross is not None else None
    close_res = (own - (y - residual).abs().sum(-1)).clamp_min(0)
    close_mlp = (own - (y - mlp).abs().sum(-1)).clamp_min(0)
    total = close.sum((0, 2)) + close_res + close_mlp
    if close_cross is not None:
        total = total + close_cross.sum((0, 2))
    total = total.clamp_min(torch.finfo(u.dtype).tiny)  # [r]
    heads, to_pos, from_pos, imp = _head_rows(close, total, rows, threshold)
    from_stack = [""] * len(heads)
    if close_cross is not None:
        more = _head_rows(close_cross, total, rows, threshold)
        heads, to_pos, from_pos, imp = (np.concatenate([a, b]) for a, b in zip((heads, to_pos, from_pos, imp), more))
        from_stack += ["cross"] * len(more[0])
    share = (torch.stack([close_res, close_mlp]) / total).double()  # [2, r]
    kind_idx, s_idx = torch.nonzero(share > threshold, as_tuple=True)
    m, extra = len(heads), len(kind_idx)
    missing = np.full(extra, -1)
    head_col = np.concatenate([heads, missing]).astype(np.int64)
    kv_col = np.concatenate([heads // kv_group, missing]).astype(np.int64)
    frame = pd.DataFrame(
        {
            "layer": np.full(m + extra, layer),
            "kind": np.concatenate([np.full(m, "head", dtype=object), np.where(kind_idx.numpy() == 0, "residual", "mlp").astype(object)]),
            "head": pd.arrays.IntegerArray(head_col, head_col < 0),  # <NA> for residual and mlp
            "kv_head": pd.arrays.IntegerArray(kv_col, kv_col < 0),
            "from_position": np.concatenate([from_pos, rows[s_idx].numpy()]).astype(np.int64),
            "to_position": np.concatenate([to_pos, rows[s_idx].numpy()]).astype(np.int64),
            "importance": np.concatenate([imp, share[kind_idx, s_idx].numpy()]),
        }
    )
    if cross is not None:
        frame["from_stack"] = from_stack + [""] * extra
    return frame


@dataclass(frozen=True)
class Routes:
    """The graph of one prediction: nodes (layer, position) and the edges kept into them.

    ``edges``: DataFrame with ``EDGE_COLUMNS``; an edge of block ``layer`` goes from node (layer,
    from_position) to node (layer + 1, to_position). ``nodes``: DataFrame layer, position (hidden-state
    index: 0 = embeddings .. n_layers). At τ = 0 the importances into every node above the embeddings sum to 1.

    Encoder-decoder models (``source_tokens`` set): the prediction is a decoder position; nodes carry a
    ``stack`` ("encoder" | "decoder") and edges ``stack`` (of the node they enter) and ``from_stack``. A
    cross-attention head's edge comes from the encoder's output at its source token, node
    ("encoder", n_source_layers, from_position).
    """

    tokens: list[str]
    position: int
    n_layers: int
    threshold: float
    nodes: pd.DataFrame
    edges: pd.DataFrame
    meta: dict = field(default_factory=dict)
    source_tokens: list[str] | None = None
    n_source_layers: int = 0

    @property
    def seq2seq(self) -> bool:
        return self.source_tokens is not None

    def _stacks(self) -> tuple[np.ndarray, np.ndarray]:
        if self.seq2seq:
            return self.edges["stack"].to_numpy(dtype=object), self.edges["from_stack"].to_numpy(dtype=object)
        blank = np.full(len(self.edges), "", dtype=object)
        return blank, blank

    def flows(self) -> np.ndarray:
        """Each edge's share of the prediction: 1 at the top node, an edge carries its node's share times its
        importance, and a node's share is the sum over its kept outgoing edges. float64 [edges]."""
        flow = np.zeros(len(self.edges))
        if self.edges.empty:
            return flow
        stack, from_stack = self._stacks()
        layers = self.edges["layer"].to_numpy()
        frm = self.edges["from_position"].to_numpy().astype(np.int64)
        to = self.edges["to_position"].to_numpy().astype(np.int64)
        imp = self.edges["importance"].to_numpy(dtype=np.float64)
        top = "decoder" if self.seq2seq else ""
        sizes = {top: (self.n_layers, len(self.tokens))}
        if self.source_tokens is not None:
            sizes["encoder"] = (self.n_source_layers, len(self.source_tokens))
        share = {name: np.zeros((depth + 1, n)) for name, (depth, n) in sizes.items()}  # [layer, position]
        share[top][self.n_layers, self.position] = 1.0
        for name in sizes:  # the decoder before the encoder: cross edges pass shares down to it
            for layer in range(sizes[name][0] - 1, -1, -1):
                rows = np.flatnonzero((layers == layer) & (stack == name))
                flow[rows] = share[name][layer + 1, to[rows]] * imp[rows]
                within = from_stack[rows] == name
                np.add.at(share[name][layer], frm[rows[within]], flow[rows[within]])
                if not within.all():  # cross-attention: from the encoder's last state
                    np.add.at(share["encoder"][self.n_source_layers], frm[rows[~within]], flow[rows[~within]])
        return flow

    def head_scores(self) -> pd.DataFrame:
        """Every head's share of the prediction (the sum of its edges' ``flows``), largest first.

        Returns:
            DataFrame layer, head, kv_head, flow, edges (how many of its edges the graph kept); encoder-decoder
            models add stack and from_stack (a decoder head reading the encoder is a cross-attention head).
        """
        keys = ["stack", "from_stack", "layer", "head", "kv_head"] if self.seq2seq else ["layer", "head", "kv_head"]
        frame = self.edges.assign(flow=self.flows())
        frame = frame[frame["kind"] == "head"]
        if frame.empty:
            return pd.DataFrame(columns=[*keys, "flow", "edges"])
        grouped = frame.groupby(keys, as_index=False).agg(flow=("flow", "sum"), edges=("flow", "size"))
        return grouped.sort_values("flow", ascending=False, kind="stable").reset_index(drop=True)

    def incoming_sums(self) -> pd.Series:
        """Σ importance of the kept edges into each node (layer + 1, to_position): 1 at τ = 0."""
        keys = ["stack", "layer", "to_position"] if self.seq2seq else ["layer", "to_position"]
        return self.edges.groupby(keys)["importance"].sum()

    def to_json(self) -> dict:
        """The graph as the CLI writes it: tokens, position, nodes, edges (``EDGE_COLUMNS``), meta; encoder-decoder
        models add source_tokens, and stack (nodes, edges) and from_stack (edges)."""
        stack, from_stack = self._stacks()
        edges = []
        for row, into, source in zip(self.edges.itertuples(index=False), stack, from_stack):
            edge = {
                "layer": int(row.layer),
                "kind": row.kind,
                "head": None if pd.isna(row.head) else int(row.head),
                "kv_head": None if pd.isna(row.kv_head) else int(row.kv_head),
                "from_position": int(row.from_position),
                "to_position": int(row.to_position),
                "importance": float(row.importance),
            }
            if self.seq2seq:
                edge.update(stack=into, from_stack=source)
            edges.append(edge)
        nodes = [
            {**({"stack": r.stack} if self.seq2seq else {}), "layer": int(r.layer), "position": int(r.position)}
            for r in self.nodes.itertuples(index=False)
        ]
        out = {"tokens": list(self.tokens), "position": int(self.position), "nodes": nodes, "edges": edges, "meta": dict(self.meta)}
        if self.source_tokens is not None:
            out["source_tokens"] = list(self.source_tokens)
        return out


def _check_threshold(threshold) -> None:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.floating)) or not 0 <= threshold < 1:
        msg = f"threshold {threshold!r} out of range; use a number in [0, 1) (0 keeps every edge)"
        raise ValueError(msg)


def _descend(into, frontier: set[int], n_layers: int, threshold: float) -> tuple[list, list[pd.DataFrame], set[int]]:
    """One stack top-down: (nodes (layer, position), kept edges per block, the positions its cross edges read)."""
    nodes: list[tuple[int, int]] = []
    kept: list[pd.DataFrame] = []
    sources: set[int] = set()
    for layer in range(n_layers - 1, -1, -1):
        nodes.extend((layer + 1, p) for p in sorted(frontier))
        edges = into(layer, sorted(frontier))
        edges = edges[edges["importance"] > threshold]
        kept.append(edges)
        crossing = edges["from_stack"] == "cross" if "from_stack" in edges else np.zeros(len(edges), dtype=bool)
        frontier = set(edges.loc[~crossing, "from_position"].astype(int).tolist())
        sources |= set(edges.loc[crossing, "from_position"].astype(int).tolist())
    nodes.extend((0, p) for p in sorted(frontier))
    return nodes, kept, sources


def _sorted_edges(frames: list[pd.DataFrame], columns: list[str]) -> pd.DataFrame:
    frame = _joined(frames)
    for column in columns:
        if column not in frame:
            frame[column] = pd.Series(dtype=object)
    keys, ascending = ["layer", "to_position", "importance"], [False, True, False]
    if "stack" in columns:  # the decoder's edges first
        keys, ascending = ["stack", *keys], [True, *ascending]
    frame = frame.sort_values(keys, ascending=ascending, kind="stable")
    return frame[columns].reset_index(drop=True)


def build(
    into: Callable[[int, list[int]], pd.DataFrame],
    *,
    tokens: list[str],
    position: int,
    n_layers: int,
    threshold: float,
    meta: dict | None = None,
) -> Routes:
    """The graph top-down from node (n_layers, position), keeping edges with importance > ``threshold``.

    Args:
        into: (block, positions) -> every edge of that block into nodes (block + 1, p), p in positions
            (``EDGE_COLUMNS``; normalised per node).
        threshold: τ in [0, 1).
    """
    _check_threshold(threshold)
    nodes, kept, _ = _descend(into, {int(position)}, n_layers, threshold)
    node_frame = pd.DataFrame(nodes, columns=["layer", "position"]).sort_values(["layer", "position"], ascending=[False, True])
    return _routes(tokens, position, n_layers, threshold, node_frame, _sorted_edges(kept, EDGE_COLUMNS), meta)


def build_seq2seq(
    into_decoder: Callable[[int, list[int]], pd.DataFrame],
    into_encoder: Callable[[int, list[int]], pd.DataFrame],
    *,
    tokens: list[str],
    source_tokens: list[str],
    position: int,
    n_layers: int,
    n_source_layers: int,
    threshold: float,
    meta: dict | None = None,
) -> Routes:
    """An encoder-decoder graph: top-down through the decoder from node ("decoder", n_layers, position), then
    through the encoder from the source tokens its kept cross-attention edges read.

    Args:
        into_decoder: like ``build``'s ``into``, its frames with ``from_stack`` ("cross" for cross-attention heads).
        into_encoder: the same for the encoder's blocks.
    """
    _check_threshold(threshold)
    dec_nodes, dec_kept, sources = _descend(into_decoder, {int(position)}, n_layers, threshold)
    enc_nodes, enc_kept, _ = _descend(into_encoder, sources, n_source_layers, threshold)
    for frame in dec_kept:
        frame["stack"] = "decoder"
        frame["from_stack"] = np.where(frame["from_stack"] == "cross", "encoder", "decoder") if len(frame) else []
    for frame in enc_kept:
        frame["stack"] = "encoder"
        frame["from_stack"] = "encoder"
    nodes = [("decoder", *n) for n in dec_nodes] + [("encoder", *n) for n in enc_nodes]
    node_frame = pd.DataFrame(nodes, columns=["stack", "layer", "position"]).sort_values(
        ["stack", "layer", "position"], ascending=[True, False, True]
    )
    edges = _sorted_edges(dec_kept + enc_kept, [*EDGE_COLUMNS, "stack", "from_stack"])
    return _routes(
        tokens,
        position,
        n_layers,
        threshold,
        node_frame,
        edges,
        meta,
        source_tokens=list(source_tokens),
        n_source_layers=int(n_source_layers),
    )


def _routes(tokens, position, n_layers, threshold, node_frame: pd.DataFrame, edges: pd.DataFrame, meta, **seq2seq) -> Routes:
    """The Routes of a descent: plain values, the nodes renumbered 0.., ``seq2seq`` the source side's fields."""
    return Routes(
        tokens=list(tokens),
        position=int(position),
        n_layers=int(n_layers),
        threshold=float(threshold),
        nodes=node_frame.reset_index(drop=True),
        edges=edges,
        meta=dict(meta or {}),
        **seq2seq,
    )


def _joined(frames: Iterable[pd.DataFrame]) -> pd.DataFrame:
    """Edge frames concatenated (none: an empty frame with ``EDGE_COLUMNS``)."""
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=EDGE_COLUMNS)
