"""Why a head attends: one pre-softmax score split into what wrote the query and what wrote the key.

The residual stream entering block l at a position p is a sum of components (token, position and type
embeddings, every earlier head's output, every earlier MLP) plus a rest no component owns (output biases,
the offsets β of norms already applied): x_p = Σ_c x_p^c + r_p. The attention reads
a_p = N(x_p), N the block's norm before the attention (Pre-LN) or nothing (Post-LN: the stream is already
a norm's output). Linearised with x_p's own statistics (exact for this input),

    N(x_p) = Σ_c γ ⊙ C(x_p^c) / s_p + (γ ⊙ C(r_p) / s_p + β),    C centres (LayerNorm) or not (RMSNorm),

so q_i = R_i (W_Q a_i + b_Q) = Σ_c q_i^c + q_i^bias with q_i^c = R_i W_Q γ ⊙ C(x_i^c) / s_i and R_i the
rotation RoPE applies at position i (identity without RoPE); the key likewise with W_K of the head's KV head.
The scaled score

    s_ij = scale · q_i · k_j + b_ij = Σ_c Σ_c' scale · q_i^c · k_j^c' + (the terms with q^bias or k^bias) + b_ij,

b_ij a relative-position bias (T5's buckets, ALiBi) where the model adds one. ``split_score`` returns the
(C + 1) x (C' + 1) matrix of these terms (the last row and column are the biases), from which the query-side
marginals (scale · q_i^c · k_j), the key-side marginals (scale · q_i · k_j^c') and the strongest pairs follow.
Only the two positions' [C, d] components are read: nothing is [components, n, n].
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from attnscope.analysis.contributions import Norm

__all__ = [
    "HeadReader",
    "ScoreSplit",
    "Side",
    "attended_spread",
    "component_label",
    "component_layer",
    "composition_scores",
    "head_of",
    "project",
    "rotate",
    "shares",
    "split_score",
]


@dataclass(frozen=True, eq=False)
class HeadReader:
    """What one head's query (or key) reads: its projection rows and the norm before the attention.

    weight [d_h, d], bias [d_h] or None: the head's rows of W_Q (or of its KV head's W_K);
    norm: the block's norm before the attention (Pre-LN), None when the attention reads the stream as it is.
    """

    weight: torch.Tensor
    bias: torch.Tensor | None
    norm: Norm | None


@dataclass(frozen=True, eq=False)
class Side:
    """The residual stream at one position, split: parts [C, d] (one row per component), rest [d] (no one's).

    cos, sin [d_h]: RoPE's rotation at this position (rotate-half convention), None without RoPE.
    """

    parts: torch.Tensor
    rest: torch.Tensor
    cos: torch.Tensor | None = None
    sin: torch.Tensor | None = None


def rotate(x: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None) -> torch.Tensor:
    """RoPE at one position, transformers' rotate-half convention: x·cos + rotate_half(x)·sin. x [..., d_h].

    Partial RoPE (GPT-NeoX's ``rotary_pct``): cos and sin shorter than d_h rotate the first dimensions only."""
    if cos is None:
        return x
    rotated = cos.shape[-1]
    if rotated < x.shape[-1]:
        return torch.cat([rotate(x[..., :rotated], cos, sin), x[..., rotated:]], dim=-1)
    half = x.shape[-1] // 2
    turned = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos.to(x.dtype) + turned * sin.to(x.dtype)  # type: ignore[union-attr]  # cos and sin come together


def project(side: Side, reader: HeadReader) -> tuple[torch.Tensor, torch.Tensor]:
    """The query (or key) of one position split by component.

    Returns:
        (per component [C, d_h], the bias part [d_h]); their sum is R (W (N(x)) + b), the head's query (or key).
    """
    dtype = torch.float64
    parts, rest = side.parts.to(dtype), side.rest.to(dtype)
    weight = reader.weight.to(dtype)
    norm = reader.norm
    if norm is None:
        normed, normed_rest = parts, rest
    else:
        state = parts.sum(0) + rest  # [d]: the stream the norm sees
        s = norm.divisor(state.to(dtype))  # [1]: its own statistics
        gamma = norm.weight.to(dtype)
        normed = gamma * norm.centre(parts) / s  # [C, d]
        normed_rest = gamma * norm.centre(rest) / s + (0 if norm.bias is None else norm.bias.to(dtype))
    projected = normed @ weight.T  # [C, d_h]
    bias = normed_rest @ weight.T + (0 if reader.bias is None else reader.bias.to(dtype))  # [d_h]
    return rotate(projected, side.cos, side.sin), rotate(bias, side.cos, side.sin)


@dataclass(frozen=True)
class ScoreSplit:
    """One score split. terms [C + 1, C' + 1] float64: scale · q_i^c · k_j^c', the last row the query's bias part,
    the last column the key's; position: the relative-position bias b_ij (0 without one)."""

    terms: torch.Tensor
    position: float

    @property
    def score(self) -> float:
        """The scaled pre-softmax score: every term plus the position bias."""
        return float(self.terms.sum()) + self.position

    @property
    def query_side(self) -> torch.Tensor:
        """[C]: scale · q_i^c · k_j, each query component against the whole key."""
        return self.terms[:-1].sum(1)

    @property
    def key_side(self) -> torch.Tensor:
        """[C']: scale · q_i · k_j^c', the whole query against each key component."""
        return self.terms[:, :-1].sum(0)

    @property
    def query_bias(self) -> float:
        """scale · q_i^bias · k_j: what the query-side marginals leave out (with ``position``)."""
        return float(self.terms[-1].sum())

    @property
    def key_bias(self) -> float:
        """scale · q_i · k_j^bias: what the key-side marginals leave out (with ``position``)."""
        return float(self.terms[:, -1].sum())

    def pairs(self, k: int) -> list[tuple[int, int, float]]:
        """The k component pairs (query component, key component) with the largest |term|, biases left out."""
        inner = self.terms[:-1, :-1]
        k = int(min(k, inner.numel()))
        if k <= 0:
            return []
        top = torch.topk(inner.abs().flatten(), k).indices
        cols = inner.shape[1]
        return [(int(t) // cols, int(t) % cols, float(inner.flatten()[t])) for t in top]


def split_score(
    query: Side, key: Side, query_reader: HeadReader, key_reader: HeadReader, scale: float, position: float = 0.0
) -> ScoreSplit:
    """Split one head's scaled score between query i and key j by the components that wrote each side.

    Args:
        query, key: the stream at i and at j, split (``Side``); C and C' components.
        query_reader, key_reader: the head's query rows and its KV head's key rows, with the block's norm.
        scale: the attention's scaling (1/√d_h, or 1 in T5).
        position: the relative-position bias the model adds to this cell (T5's buckets, ALiBi), else 0.
    Returns:
        ``ScoreSplit`` with terms [C + 1, C' + 1].
    """
    q_parts, q_bias = project(query, query_reader)  # [C, d_h], [d_h]
    k_parts, k_bias = project(key, key_reader)  # [C', d_h], [d_h]
    q_all = torch.cat([q_parts, q_bias[None]])  # [C + 1, d_h]
    k_all = torch.cat([k_parts, k_bias[None]])  # [C' + 1, d_h]
    return ScoreSplit(terms=(q_all @ k_all.T) * float(scale), position=float(position))


# --- readable names -----------------------------------------------------------------------------------------
EMBEDDING_LABELS = {"embed": "token embedding", "pos": "position embedding", "type": "token-type embedding"}


def _parsed(name: str) -> tuple[int, int | None] | None:
    """(layer, head) of "L3H2", (layer, None) of "L5MLP", None for anything else (the embeddings)."""
    if not name.startswith("L"):
        return None
    if name.endswith("MLP"):
        layer = name[1:-3]
        return (int(layer), None) if layer.isdigit() else None
    layer, found, head = name[1:].partition("H")
    return (int(layer), int(head)) if found and layer.isdigit() and head.isdigit() else None


def component_label(name: str, types: Mapping[str, str] | None = None) -> str:
    """A component's name as people read it: "L3H2" -> "L3 H2 (previous-token)" with its head type from
    ``types`` ("L3H2" -> "previous_token"; "other" or "" adds nothing), "L5MLP" -> "MLP 5", "embed" -> "token
    embedding"; anything else is returned as it is."""
    if name in EMBEDDING_LABELS:
        return EMBEDDING_LABELS[name]
    found = _parsed(name)
    if found and found[1] is None:
        return f"MLP {found[0]}"
    if found:
        label = f"L{found[0]} H{found[1]}"
        kind = (types or {}).get(name, "")
        return f"{label} ({kind.replace('_', '-')})" if kind and kind != "other" else label
    return name


def component_layer(name: str) -> int | None:
    """The block a component comes out of (0-based): "L3H2" and "L3MLP" -> 3; the embeddings -> None."""
    found = _parsed(name)
    return found[0] if found else None


def head_of(name: str) -> tuple[int, int] | None:
    """(layer, head) of a head component ("L3H2" -> (3, 2)); None for MLPs and embeddings."""
    found = _parsed(name)
    return (found[0], found[1]) if found and found[1] is not None else None


# --- a head's circuit over a whole text ----------------------------------------------------------------------
def attended_spread(alpha: torch.Tensor, scores: torch.Tensor) -> float:
    """How much one component moves a head's attention over the cells it attends to:
    Σ_i Σ_j α_ij |M_ij − Σ_j' α_ij' M_ij'|, M the component's share of the scores.

    A component that adds the same amount to every key of a row changes no weight (softmax ignores it), so each
    row is centred on its α-weighted mean before the α-weighted absolute value is taken.

    Args:
        alpha: [n, n] the head's weights (rows sum to 1; 0 where masked); scores: [n, n] the component's terms.
    """
    scores = scores.to(torch.float64)
    alpha = alpha.to(torch.float64)
    mean = (alpha * scores).sum(-1, keepdim=True)  # [n, 1]
    return float((alpha * (scores - mean).abs()).sum())


def shares(values: torch.Tensor) -> torch.Tensor:
    """Non-negative values normalised to sum to 1 (all zeros stay zeros). [C]."""
    total = values.sum()
    return values / total if float(total) > 0 else values


def _frobenius(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """‖left · right‖_F for left [d, r], right [r, e] without forming the product: √tr((leftᵀleft)(right rightᵀ))."""
    return ((left.T @ left) * (right @ right.T)).sum().clamp_min(0).sqrt()


def composition_scores(
    w_q: torch.Tensor, w_k: torch.Tensor, w_v: torch.Tensor, w_o: torch.Tensor, senders: list[tuple[torch.Tensor, torch.Tensor]]
) -> torch.Tensor:
    """Elhage et al.'s (2021) weight-only composition of one receiving head with earlier (sending) heads.

    With the receiver's W_QK = W_Qᵀ W_K [d, d] (a_iᵀ W_QK a_j is its unscaled score) and W_OV = W_O W_V [d, d] for
    each head: Q-composition ‖W_QKᵀ W_OV^s‖_F / (‖W_QK‖_F ‖W_OV^s‖_F), K-composition ‖W_QK W_OV^s‖_F / (...),
    V-composition ‖W_OV W_OV^s‖_F / (‖W_OV‖_F ‖W_OV^s‖_F). Every norm is taken through the low-rank factors
    (d_h x d_h Gram matrices), never a [d, d] product.

    Args:
        w_q, w_k: [d_h, d] the receiver's query and key rows (any norm gain folded in); w_v [d_v, d], w_o [d, d_v].
        senders: per sending head (W_O^s [d, d_v], W_V^s [d_v, d]).
    Returns:
        float64 [S, 3]: (q, k, v) composition per sender.
    """
    w_q, w_k, w_v, w_o = (t.to(torch.float64) for t in (w_q, w_k, w_v, w_o))
    qk_norm = _frobenius(w_q.T, w_k)
    ov_norm = _frobenius(w_o, w_v)
    rows = []
    for o_s, v_s in senders:
        o_s, v_s = o_s.to(torch.float64), v_s.to(torch.float64)
        sender = _frobenius(o_s, v_s)
        q = _frobenius(w_k.T @ (w_q @ o_s), v_s)  # W_QKᵀ W_OV^s = W_Kᵀ W_Q O_s V_s
        k = _frobenius(w_q.T @ (w_k @ o_s), v_s)  # W_QK W_OV^s = W_Qᵀ W_K O_s V_s
        v = _frobenius(w_o @ (w_v @ o_s), v_s)
        rows.append(torch.stack([q / (qk_norm * sender), k / (qk_norm * sender), v / (ov_norm * sender)]))
    return torch.stack(rows) if rows else torch.zeros(0, 3, dtype=torch.float64)
