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
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from analysis.contributions import Block, Norm, head_terms, linear_parts

__all__ = [
    "EDGE_COLUMNS",
    "KINDS",
    "NodeParts",
    "Routes",
    "block_edges",
    "build",
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


def block_edges(
    block: Block,
    layer: int,
    positions: Iterable[int],
    mlp: torch.Tensor,
    after: Norm | None = None,
    kv_group: int = 1,
    threshold: float = 0.0,
    chunk: int = 1 << 24,
) -> pd.DataFrame:
    """The edges of one block into the nodes (layer + 1, p), p in ``positions``, with importance > ``threshold``.

    The split of ``node_parts`` for many queries at once: a head's term is α^h_Pj · c_P · U^h_j, U the written
    vectors through the norms' linear parts and c_P the inverse of the norms' divisors at P, so no query's
    [H, n, d] terms outlive their chunk (at most ``chunk`` floats).

    Args:
        mlp: [n, d] the block's MLP output at every token (see ``node_parts``).
    Returns:
        DataFrame with ``EDGE_COLUMNS``, importances normalised per node over all its edges (dropped ones too).
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
    mlp = mlp[rows].to(u.dtype)
    if after is not None:  # LN2(mid + mlp), linearised with its own statistics
        s2 = after.divisor(attention + residual + rest + mlp)  # [r, 1]
        u = after.scaled(u)
        c = c / s2
        attention, residual, mlp = after.scaled(attention) / s2, after.scaled(residual) / s2, after.scaled(mlp) / s2
        rest = after.scaled(rest) / s2 + (0 if after.bias is None else after.bias.to(u.dtype))
    y = attention + residual + mlp + rest  # [r, d]: the node states
    own = y.abs().sum(-1)  # [r]
    n_heads, r, n = alpha.shape
    scaled = alpha * c[None]  # [H, r, n]: α^h_Pj c_P
    close = torch.zeros(n_heads, r, n, dtype=u.dtype)
    step = max(1, min(_ROWS, chunk // max(1, n_heads * n * u.shape[-1])))
    for start in range(0, r, step):
        stop = min(start + step, r)
        keys = torch.nonzero(alpha[:, start:stop].amax((0, 1)) > 0).flatten()  # keys these queries read
        a = scaled[:, start:stop, keys]  # [H, rc, k]
        # ‖y − e‖₁ with e = a·U, one fused pass to build y − e and one to take its L1 norm
        diff = torch.addcmul(y[None, start:stop, None], a[..., None], u[:, keys][:, None], value=-1)  # [H, rc, k, d]
        distance = torch.linalg.vector_norm(diff, ord=1, dim=-1)
        close[:, start:stop, keys] = (own[None, start:stop, None] - distance).clamp_min_(0)
    close[alpha == 0] = 0  # a key a head does not read carries nothing
    close_res = (own - (y - residual).abs().sum(-1)).clamp_min(0)
    close_mlp = (own - (y - mlp).abs().sum(-1)).clamp_min(0)
    total = (close.sum((0, 2)) + close_res + close_mlp).clamp_min(torch.finfo(u.dtype).tiny)  # [r]
    imp = (close / total[None, :, None]).double()
    h_idx, r_idx, k_idx = torch.nonzero(imp > threshold, as_tuple=True)
    share = (torch.stack([close_res, close_mlp]) / total).double()  # [2, r]
    kind_idx, s_idx = torch.nonzero(share > threshold, as_tuple=True)
    heads = h_idx.numpy()
    m, extra = len(heads), len(kind_idx)
    missing = np.full(extra, -1)
    head_col = np.concatenate([heads, missing])
    kv_col = np.concatenate([heads // kv_group, missing])
    frame = pd.DataFrame(
        {
            "layer": np.full(m + extra, layer),
            "kind": np.concatenate([np.full(m, "head", dtype=object), np.where(kind_idx.numpy() == 0, "residual", "mlp").astype(object)]),
            "head": pd.arrays.IntegerArray(head_col.astype(np.int64), head_col < 0),  # <NA> for residual and mlp
            "kv_head": pd.arrays.IntegerArray(kv_col.astype(np.int64), kv_col < 0),
            "from_position": np.concatenate([k_idx.numpy(), rows[s_idx].numpy()]),
            "to_position": np.concatenate([rows[r_idx].numpy(), rows[s_idx].numpy()]),
            "importance": np.concatenate([imp[h_idx, r_idx, k_idx].numpy(), share[kind_idx, s_idx].numpy()]),
        }
    )
    return frame


@dataclass(frozen=True)
class Routes:
    """The graph of one prediction: nodes (layer, position) and the edges kept into them.

    ``edges``: DataFrame with ``EDGE_COLUMNS``; an edge of block ``layer`` goes from node (layer,
    from_position) to node (layer + 1, to_position). ``nodes``: DataFrame layer, position (hidden-state
    index: 0 = embeddings .. n_layers). At τ = 0 the importances into every node above the embeddings sum to 1.
    """

    tokens: list[str]
    position: int
    n_layers: int
    threshold: float
    nodes: pd.DataFrame
    edges: pd.DataFrame
    meta: dict = field(default_factory=dict)

    def flows(self) -> np.ndarray:
        """Each edge's share of the prediction: 1 at the top node, an edge carries its node's share times its
        importance, and a node's share is the sum over its kept outgoing edges. float64 [edges]."""
        share = {(self.n_layers, self.position): 1.0}
        flow = np.zeros(len(self.edges))
        if self.edges.empty:
            return flow
        layers = self.edges["layer"].to_numpy()
        frm = self.edges["from_position"].to_numpy()
        to = self.edges["to_position"].to_numpy()
        imp = self.edges["importance"].to_numpy(dtype=np.float64)
        for layer in range(self.n_layers - 1, -1, -1):
            for i in np.flatnonzero(layers == layer):
                flow[i] = share.get((layer + 1, int(to[i])), 0.0) * imp[i]
                key = (layer, int(frm[i]))
                share[key] = share.get(key, 0.0) + flow[i]
        return flow

    def head_scores(self) -> pd.DataFrame:
        """Every head's share of the prediction (the sum of its edges' ``flows``), largest first.

        Returns:
            DataFrame layer, head, kv_head, flow, edges (how many of its edges the graph kept).
        """
        frame = self.edges.assign(flow=self.flows())
        frame = frame[frame["kind"] == "head"]
        if frame.empty:
            return pd.DataFrame(columns=["layer", "head", "kv_head", "flow", "edges"])
        grouped = frame.groupby(["layer", "head", "kv_head"], as_index=False).agg(flow=("flow", "sum"), edges=("flow", "size"))
        return grouped.sort_values("flow", ascending=False, kind="stable").reset_index(drop=True)

    def incoming_sums(self) -> pd.Series:
        """Σ importance of the kept edges into each node (layer + 1, to_position): 1 at τ = 0."""
        return self.edges.groupby(["layer", "to_position"])["importance"].sum()

    def to_json(self) -> dict:
        """The graph as the CLI writes it: tokens, position, nodes, edges (``EDGE_COLUMNS``), meta."""
        edges = [
            {
                "layer": int(row.layer),
                "kind": row.kind,
                "head": None if pd.isna(row.head) else int(row.head),
                "kv_head": None if pd.isna(row.kv_head) else int(row.kv_head),
                "from_position": int(row.from_position),
                "to_position": int(row.to_position),
                "importance": float(row.importance),
            }
            for row in self.edges.itertuples(index=False)
        ]
        nodes = [{"layer": int(r.layer), "position": int(r.position)} for r in self.nodes.itertuples(index=False)]
        return {"tokens": list(self.tokens), "position": int(self.position), "nodes": nodes, "edges": edges, "meta": dict(self.meta)}


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
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.floating)) or not 0 <= threshold < 1:
        msg = f"threshold {threshold!r} out of range; use a number in [0, 1) (0 keeps every edge)"
        raise ValueError(msg)
    frontier = {int(position)}
    nodes: list[tuple[int, int]] = []
    kept: list[pd.DataFrame] = []
    for layer in range(n_layers - 1, -1, -1):
        nodes.extend((layer + 1, p) for p in sorted(frontier))
        edges = into(layer, sorted(frontier))
        edges = edges[edges["importance"] > threshold]
        kept.append(edges)
        frontier = set(edges["from_position"].astype(int).tolist())
    nodes.extend((0, p) for p in sorted(frontier))
    frame = _joined(kept)
    frame = frame.sort_values(["layer", "to_position", "importance"], ascending=[False, True, False], kind="stable")
    node_frame = pd.DataFrame(nodes, columns=["layer", "position"]).sort_values(["layer", "position"], ascending=[False, True])
    return Routes(
        tokens=list(tokens),
        position=int(position),
        n_layers=int(n_layers),
        threshold=float(threshold),
        nodes=node_frame.reset_index(drop=True),
        edges=frame[EDGE_COLUMNS].reset_index(drop=True),
        meta=dict(meta or {}),
    )


def _joined(frames: Iterable[pd.DataFrame]) -> pd.DataFrame:
    """Edge frames concatenated (none: an empty frame with ``EDGE_COLUMNS``)."""
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=EDGE_COLUMNS)
