"""Context mixing: how much each token's representation draws on each input token, one block at a time.

Attention weights say where a head looks, not how much of what it reads reaches the output: they ignore
the size of what each key writes, the residual stream and layer normalisation. The measures here take
one attention block over one text's real tokens (a ``Block``: the weights, the values, the output
projection, the block's input and, after the attention, its layer norm) and return a [query, key] map
whose rows sum to 1:

- ``weight_map``: the heads' mean weight (what the Attention page shows, averaged).
- ``norm_map``: ‖Σ_h α^h_ij W_O^h v^h_j‖ (Kobayashi et al. 2020): the vector key j adds to query i's
  attention output, summed over heads, by its norm.
- ``norm_res_ln_map``: the same vector with the residual (x_i for j = i) and, in Post-LN blocks, the layer
  norm linearised with the sum's own statistics (Kobayashi et al. 2021).
- ``alti_map``: ALTI (Ferrando et al. 2022): c_ij = max(0, ‖y_i‖₁ − ‖y_i − T_i(x_j)‖₁) over the same
  per-token terms T_i(x_j), y_i the block's real output.

The decomposition of a block's output y_i = Σ_j T_i(x_j) + bias_i:
- Pre-LN (GPT-2, Llama, T5's encoder, ...): y_i = x_i + Σ_h Σ_j α^h_ij W_O^h v^h_j + b_O, v_j read from
  LN(x_j), a function of x_j alone: exact, nothing linearised. T_i(x_j) = Σ_h α^h_ij W_O^h v^h_j + [i = j] x_i;
  the bias b_O is no token's (the value bias rides in v_j).
- Post-LN (BERT and its kin): y_i = LN(z_i), z_i = x_i + Σ_h Σ_j α^h_ij W_O^h v^h_j + b_O. With s_i the
  norm's divisor for z_i (√(var + ε), or the RMS), LN(z_i) = Σ_j γ ⊙ C(T_i(x_j)) / s_i + γ ⊙ C(b_O) / s_i + β
  (C centres a vector; RMS norms do not centre): exact for this z_i, linear in each term.
The MLP that follows mixes nothing across tokens and is not part of these maps.

Rollout over layers (``rolled``): weights and norms, which leave the residual out, take Abnar & Zuidema's
0.5·A + 0.5·I; residual-aware maps already hold it and are multiplied as they are (ALTI's own aggregation).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attnscope.analysis.rollout import rollout

__all__ = [
    "RESIDUAL_AWARE",
    "Block",
    "Norm",
    "alti_map",
    "block_output",
    "head_terms",
    "norm_map",
    "norm_res_ln_map",
    "normalise_rows",
    "rolled",
    "linear_parts",
    "token_terms",
    "weight_map",
    "written",
]

# Maps that already include the residual stream: rolled out as plain products.
RESIDUAL_AWARE = frozenset({"norm_res_ln", "alti", "value_zeroing"})


@dataclass(frozen=True, eq=False)
class Norm:
    """A LayerNorm (or RMSNorm when ``rms``): γ ⊙ C(z) / s(z) + β, s = √(mean(C(z)²) + ε)."""

    weight: torch.Tensor  # [d]
    bias: torch.Tensor | None  # [d]
    eps: float
    rms: bool = False

    def centre(self, t: torch.Tensor) -> torch.Tensor:
        return t if self.rms else t - t.mean(-1, keepdim=True)

    def divisor(self, z: torch.Tensor) -> torch.Tensor:
        """s(z) for each row of z [..., d]: [..., 1]."""
        c = self.centre(z)
        return (c.pow(2).mean(-1, keepdim=True) + self.eps).sqrt()

    def scaled(self, t: torch.Tensor) -> torch.Tensor:
        """γ ⊙ C(t): the linear part before the division by s."""
        return self.weight * self.centre(t)

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        out = self.scaled(z) / self.divisor(z)
        return out if self.bias is None else out + self.bias


@dataclass(frozen=True, eq=False)
class Block:
    """One attention block over one text's real tokens (n of them), float32 or float64.

    weights [H, n, n] (queries x keys); values [H, n, dv] per query head (grouped-query values repeated);
    w_o [d, H·dv] the output projection; b_o [d] or None; residual [n, d] the block's input x;
    norm: the layer norm after the attention (Post-LN), None in Pre-LN blocks.
    """

    weights: torch.Tensor
    values: torch.Tensor
    w_o: torch.Tensor
    b_o: torch.Tensor | None
    residual: torch.Tensor
    norm: Norm | None = None

    @property
    def n(self) -> int:
        return int(self.weights.shape[-1])


def written(block: Block) -> torch.Tensor:
    """U^h_j = W_O^h v^h_j: what key j writes through head h at full weight. [H, n, d]."""
    n_heads, n, dv = block.values.shape
    w = block.w_o.reshape(block.w_o.shape[0], n_heads, dv).permute(1, 2, 0)  # [H, dv, d]
    return torch.bmm(block.values.to(w.dtype), w)  # [H, n, d]


def _linear_parts(block: Block) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(U', x', b', s): the written vectors, residual and bias through the norm's linear part, and each
    query's divisor [n, 1] (ones in Pre-LN blocks); y_i = (Σ_j T''_ij + b'_i) / s_i (+ β)."""
    u = written(block)
    x = block.residual.to(u.dtype)
    b = block.b_o.to(u.dtype) if block.b_o is not None else torch.zeros(u.shape[-1], dtype=u.dtype, device=u.device)
    if block.norm is None:
        return u, x, b, torch.ones(block.n, 1, dtype=u.dtype, device=u.device)
    attention = torch.einsum("hij,hjd->id", block.weights.to(u.dtype), u)
    s = block.norm.divisor(x + attention + b)
    return block.norm.scaled(u), block.norm.scaled(x), block.norm.scaled(b), s


def block_output(block: Block) -> torch.Tensor:
    """y: the block's output over its real tokens, from the recorded tensors. [n, d]."""
    u = written(block)
    y = block.residual.to(u.dtype) + torch.einsum("hij,hjd->id", block.weights.to(u.dtype), u)
    if block.b_o is not None:
        y = y + block.b_o.to(u.dtype)
    return y if block.norm is None else block.norm(y)


def token_terms(block: Block, rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-token terms T_i(x_j) of some query rows, and what no token owns.

    Returns:
        (terms [r, n, d], rest [r, d]) with Σ_j terms[i, j] + rest[i] = the block's output y_i: rest is the
        output bias (and the norm's β) as the block applies them.
    """
    u, x, b, s = _linear_parts(block)
    rows = torch.arange(block.n, device=u.device) if rows is None else rows.to(u.device)
    terms = torch.einsum("hrj,hjd->rjd", block.weights[:, rows].to(u.dtype), u)  # [r, n, d]
    terms[torch.arange(len(rows), device=u.device), rows] += x[rows]
    terms = terms / s[rows][:, None, :]
    rest = b[None, :] / s[rows]
    if block.norm is not None and block.norm.bias is not None:
        rest = rest + block.norm.bias.to(rest.dtype)
    return terms, rest


# --- per-head terms of one query (information-flow routes, analysis.routes) ------------------------------
def linear_parts(block: Block) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(U' [H, n, d], x' [n, d], b' [d], s [n, 1]): ``_linear_parts``, for callers that split many queries of
    one block and compute these once."""
    return _linear_parts(block)


def head_terms(block: Block, position: int, parts=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What each head carries from each key into one query's block output: token_terms' row split by head.

    Args:
        position: the query (0-based over the block's tokens).
        parts: ``linear_parts(block)``, when the caller already holds them.
    Returns:
        (heads [H, n, d] = α^h_Pj W_O^h v^h_j (through the norm's linear part, / s_P in Post-LN blocks),
        residual [d], rest [d]) with Σ_h Σ_j heads + residual + rest = the block's output y_P.
    """
    u, x, b, s = _linear_parts(block) if parts is None else parts
    alpha = block.weights[:, position].to(u.dtype)  # [H, n]
    heads = alpha[:, :, None] * u / s[position]  # [H, n, d]
    rest = b / s[position]
    if block.norm is not None and block.norm.bias is not None:
        rest = rest + block.norm.bias.to(rest.dtype)
    return heads, x[position] / s[position], rest


# --- end per-head terms ------------------------------------------------------------------------------------


def normalise_rows(m: torch.Tensor) -> torch.Tensor:
    """Rows scaled to sum to 1 (a row of zeros stays zero)."""
    return m / m.sum(-1, keepdim=True).clamp_min(torch.finfo(m.dtype).tiny)


def weight_map(block: Block) -> torch.Tensor:
    """The heads' mean attention weight. [n, n]."""
    return block.weights.mean(0)


def _term_norms(block: Block, residual: bool) -> torch.Tensor:
    """‖T_i(x_j)‖₂ for every query i and key j without building [n, n, d]: per key, the Gram matrix of its
    heads' written vectors; with ``residual`` the norm's linear part and the residual of j = i are in."""
    if residual:
        u, x, _, s = _linear_parts(block)
    else:
        u, x, s = written(block), None, None
    alpha = block.weights.to(u.dtype)  # [H, n, n]
    gram = torch.einsum("hjd,gjd->jhg", u, u)  # [n, H, H]
    sq = torch.einsum("hij,jhg,gij->ij", alpha, gram, alpha)  # [n, n]
    if residual:
        assert x is not None and s is not None  # read by _linear_parts above
        idx = torch.arange(block.n, device=u.device)
        cross = torch.einsum("hi,hid,id->i", alpha[:, idx, idx], u, x)  # Σ_h α^h_ii U^h_i · x_i
        sq[idx, idx] += 2 * cross + x.pow(2).sum(-1)
        return sq.clamp_min(0).sqrt() / s
    return sq.clamp_min(0).sqrt()


def norm_map(block: Block) -> torch.Tensor:
    """Kobayashi et al. 2020: ‖Σ_h α^h_ij W_O^h v^h_j‖, rows normalised. [n, n]."""
    return normalise_rows(_term_norms(block, residual=False))


def norm_res_ln_map(block: Block) -> torch.Tensor:
    """Kobayashi et al. 2021: ‖T_i(x_j)‖ with the residual and the (linearised) layer norm, rows normalised. [n, n]."""
    return normalise_rows(_term_norms(block, residual=True))


def alti_map(block: Block, *, rows: int = 16, keys: int = 32) -> torch.Tensor:
    """ALTI (Ferrando et al. 2022): c_ij = max(0, ‖y_i‖₁ − ‖y_i − T_i(x_j)‖₁), rows normalised. [n, n].

    The terms are built ``rows`` queries x ``keys`` keys at a time (a tile that stays in the CPU's cache),
    never [n, n, d] at once; a tile whose weights are all zero (masked keys: the future of a causal model,
    outside a sliding window) has no terms and is not built.
    """
    u, x, b, s = _linear_parts(block)  # y_i = (Σ_j T''_ij + b') / s_i (+ β)
    alpha = block.weights.to(u.dtype)
    n = block.n
    beta = block.norm.bias.to(u.dtype) if block.norm is not None and block.norm.bias is not None else None
    y = (x + torch.einsum("hij,hjd->id", alpha, u) + b) / s + (0 if beta is None else beta)  # [n, d]
    target = y * s  # ‖y_i − T''_ij / s_i‖₁ = ‖y_i s_i − T''_ij‖₁ / s_i
    by_key = alpha.permute(2, 1, 0).contiguous()  # [n keys, n queries, H]
    written_by_key = u.permute(1, 0, 2).contiguous()  # [n keys, H, d]
    distance = torch.empty(n, n, dtype=u.dtype, device=u.device)
    own = target.abs().sum(-1)  # the distance to a zero term
    for i0 in range(0, n, rows):
        i1 = min(i0 + rows, n)
        for j0 in range(0, n, keys):
            j1 = min(j0 + keys, n)
            a = by_key[j0:j1, i0:i1]  # [k, r, H]
            if not bool(a.any()):
                distance[i0:i1, j0:j1] = own[i0:i1, None]
                continue
            terms = torch.bmm(a, written_by_key[j0:j1])  # [k, r, d]
            distance[i0:i1, j0:j1] = terms.sub_(target[None, i0:i1]).abs_().sum(-1).T
    idx = torch.arange(n, device=u.device)
    diagonal = torch.einsum("hi,hid->id", alpha[:, idx, idx], u) + x  # T''_ii with the residual
    distance[idx, idx] = (target - diagonal).abs().sum(-1)
    contribution = (y.abs().sum(-1, keepdim=True) - distance / s).clamp_min(0)
    return normalise_rows(contribution)


def rolled(maps: torch.Tensor, method: str) -> torch.Tensor:
    """Rollout of per-layer maps [L, n, n]: entry l says how much each input token reaches each token
    after block l. Residual-aware methods are multiplied as they are; weights and norms take
    Abnar & Zuidema's 0.5·A + 0.5·I. float64 [L, n, n]."""
    return rollout(maps, residual=0.0 if method in RESIDUAL_AWARE else 0.5)
