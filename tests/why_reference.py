"""An independent split of one attention score, for tests of ``attnscope.models.why``.

Everything here is read from a test-owned deep copy of the model, by forward hooks on its own modules, family by
family (module names written out, nothing from attnscope's layout): each head's output is the output projection
applied to that head's slice of its input (the other heads zeroed) minus the projection of zeros, each MLP's output
is its module's output, and each norm's statistics are read from the input the norm really got. Queries and keys are
rebuilt by calling the copy's own projections (and, for Llama, transformers' own ``apply_rotary_pos_emb``, GPT-NeoX's partial one included).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

FAMILIES = ("gpt2", "gpt_neox", "llama", "bert", "t5")


@dataclass
class Reference:
    """q_i^c and k_j^c per component (float64 [d_h] each, biases under "bias"), the scaling, the position bias,
    and the eager attention weights of the head's row i (float64 [n])."""

    queries: dict[str, torch.Tensor]
    keys: dict[str, torch.Tensor]
    scaling: float
    position: float
    eager_row: torch.Tensor

    def query_side(self) -> dict[str, float]:
        key = sum(self.keys.values())
        return {c: float(q @ key) * self.scaling for c, q in self.queries.items() if c != "bias"}

    def key_side(self) -> dict[str, float]:
        query = sum(self.queries.values())
        return {c: float(query @ k) * self.scaling for c, k in self.keys.items() if c != "bias"}

    @property
    def score(self) -> float:
        return float(sum(self.queries.values()) @ sum(self.keys.values())) * self.scaling + self.position


def family(lm) -> str:
    model_type = lm.spec.model_type
    for name in FAMILIES:
        if model_type.startswith(name):
            return name
    raise ValueError(model_type)


def _blocks(model, fam):
    return {
        "gpt2": lambda: model.transformer.h,
        "llama": lambda: model.model.layers,
        "gpt_neox": lambda: model.gpt_neox.layers,
        "bert": lambda: model.encoder.layer,
        "t5": lambda: model.encoder.block,
    }[fam]()


def _parts(fam, block):
    """(output projection, MLP module, pre-attention norm or None, LN1 and LN2 for Post-LN, q and k producers)."""
    if fam == "gpt2":
        return block.attn.c_proj, block.mlp, block.ln_1, None, None
    if fam == "llama":
        return block.self_attn.o_proj, block.mlp, block.input_layernorm, None, None
    if fam == "gpt_neox":  # parallel residual: the attention and the MLP both read the block input
        return block.attention.dense, block.mlp, block.input_layernorm, None, None
    if fam == "t5":
        return block.layer[0].SelfAttention.o, block.layer[1].DenseReluDense, block.layer[0].layer_norm, None, None
    return block.attention.output.dense, block.output.dense, None, block.attention.output.LayerNorm, block.output.LayerNorm


def _qk(fam, block, a: torch.Tensor, d_model: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The block's own projections of a [m, d] normalised input: (queries [m, H·d_h], keys [m, KV·d_h])."""
    if fam == "gpt2":
        out = block.attn.c_attn(a)
        return out[..., :d_model], out[..., d_model : 2 * d_model]
    if fam == "llama":
        return block.self_attn.q_proj(a), block.self_attn.k_proj(a)
    if fam == "gpt_neox":  # query_key_value: each head's query, key and value rows in turn
        qkv = block.attention.query_key_value(a)
        by_head = qkv.reshape(*qkv.shape[:-1], -1, 3, block.attention.head_size)  # [m, H, 3, d_h]
        return by_head[..., 0, :].flatten(-2), by_head[..., 1, :].flatten(-2)
    if fam == "t5":
        return block.layer[0].SelfAttention.q(a), block.layer[0].SelfAttention.k(a)
    return block.attention.self.query(a), block.attention.self.key(a)


def _stats(norm, x: torch.Tensor, rms: bool) -> torch.Tensor:
    eps = getattr(norm, "eps", getattr(norm, "variance_epsilon", None))
    c = x if rms else x - x.mean(-1, keepdim=True)
    return (c.pow(2).mean(-1, keepdim=True) + eps).sqrt()


def _through(norm, parts: dict[str, torch.Tensor], rest: torch.Tensor, s: torch.Tensor, rms: bool):
    """Each part through the norm's linear part (γ ⊙ C(·) / s); the rest also gets β."""
    gamma = norm.weight.double()

    def lin(t):
        return gamma * (t if rms else t - t.mean(-1, keepdim=True)) / s

    beta = norm.bias.double() if getattr(norm, "bias", None) is not None else 0
    return {c: lin(t) for c, t in parts.items()}, lin(rest) + beta


def reference(lm, rec, layer: int, head: int, i: int, j: int) -> Reference:
    """Split head (layer, head)'s score of query i, key j (text 0 of ``rec``, unpadded) independently of attnscope."""
    fam = family(lm)
    model = copy.deepcopy(lm.model).double().eval()
    model.config._attn_implementation = "eager"
    blocks = _blocks(model, fam)
    heads_out, mlp_out, norm_in, ln1_in, ln2_in, handles = {}, {}, {}, {}, {}, []
    for m, block in enumerate(blocks):
        o_proj, mlp, pre, ln1, ln2 = _parts(fam, block)

        def take_heads(module, args, m=m):
            heads_out[m] = args[0].detach()

        handles.append(o_proj.register_forward_pre_hook(take_heads))
        handles.append(mlp.register_forward_hook(lambda module, args, out, m=m: mlp_out.__setitem__(m, out.detach())))
        if pre is not None:
            handles.append(pre.register_forward_pre_hook(lambda module, args, m=m: norm_in.__setitem__(m, args[0].detach())))
        else:
            handles.append(ln1.register_forward_pre_hook(lambda module, args, m=m: ln1_in.__setitem__(m, args[0].detach())))
            handles.append(ln2.register_forward_pre_hook(lambda module, args, m=m: ln2_in.__setitem__(m, args[0].detach())))
    emb_in = {}
    if fam == "bert":
        handles.append(model.embeddings.LayerNorm.register_forward_pre_hook(lambda module, args: emb_in.__setitem__(0, args[0].detach())))
    ids = torch.from_numpy(rec.input_ids[:1])
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True, output_attentions=True)
    for handle in handles:
        handle.remove()
    n = ids.shape[1]
    n_heads = lm.spec.n_heads
    width = heads_out[0].shape[-1]
    dh = width // n_heads
    rms = fam in ("llama", "t5")

    def head_outputs(m):
        o_proj = _parts(fam, blocks[m])[0]
        x = heads_out[m][0]  # [n, H·d_h]
        zero = o_proj(torch.zeros_like(x[:1]))[0]
        outs = []
        for h in range(n_heads):
            masked = torch.zeros_like(x)
            masked[:, h * dh : (h + 1) * dh] = x[:, h * dh : (h + 1) * dh]
            outs.append(o_proj(masked) - zero)
        return outs, zero

    with torch.no_grad():
        hidden0 = out.hidden_states[0][0]
        if fam == "bert":
            emb = model.embeddings
            positions = torch.arange(n)
            raw = {
                "embed": emb.word_embeddings(ids[0]),
                "pos": emb.position_embeddings(positions),
                "type": emb.token_type_embeddings(torch.zeros(n, dtype=torch.long)),
            }
            s = _stats(emb.LayerNorm, emb_in[0][0], False)
            parts, rest = _through(emb.LayerNorm, raw, torch.zeros_like(hidden0), s, False)
        elif fam == "gpt2":
            pos = model.transformer.wpe(torch.arange(n))
            parts, rest = {"embed": hidden0 - pos, "pos": pos}, torch.zeros_like(hidden0)
        else:
            parts, rest = {"embed": hidden0}, torch.zeros_like(hidden0)
        for m in range(layer):
            outs, b_o = head_outputs(m)
            new = {f"L{m}H{h}": o for h, o in enumerate(outs)}
            if fam != "bert":
                parts.update(new)
                parts[f"L{m}MLP"] = mlp_out[m][0]
                rest = rest + b_o
                continue
            _, _, _, ln1, ln2 = _parts(fam, blocks[m])
            parts, rest = _through(ln1, {**parts, **new}, rest + b_o, _stats(ln1, ln1_in[m][0], False), False)
            parts[f"L{m}MLP"] = mlp_out[m][0]
            parts, rest = _through(ln2, parts, rest, _stats(ln2, ln2_in[m][0], False), False)
        block = blocks[layer]
        pre = _parts(fam, block)[2]
        if pre is not None:
            s = _stats(pre, norm_in[layer][0], rms)
            parts, rest = _through(pre, parts, rest, s, rms)
        zero = torch.zeros(1, hidden0.shape[-1], dtype=torch.float64)
        q0, k0 = _qk(fam, block, zero, width)
        queries, keys = {}, {}
        for c, t in parts.items():
            q, k = _qk(fam, block, t, width)
            queries[c], keys[c] = q - q0, k - k0
        qb, kb = _qk(fam, block, rest, width)
        queries["bias"], keys["bias"] = qb, kb
        kv = head // (n_heads // lm.spec.n_kv_heads)
        queries = {c: q[i, head * dh : (head + 1) * dh] for c, q in queries.items()}
        keys = {c: k[j, kv * dh : (kv + 1) * dh] for c, k in keys.items()}
        if fam in ("llama", "gpt_neox"):
            if fam == "llama":
                from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

                cos, sin = model.model.rotary_emb(hidden0[None], torch.arange(n)[None])  # [1, n, d_h]
            else:  # NeoX's own: rotates the first rotary_ndims of each head, passes the rest
                from transformers.models.gpt_neox.modeling_gpt_neox import apply_rotary_pos_emb

                cos, sin = model.gpt_neox.rotary_emb(hidden0[None], torch.arange(n)[None])  # [1, n, rotary dims]

            def turn(v, p):
                return apply_rotary_pos_emb(v[None, None, None], v[None, None, None], cos[:, p : p + 1], sin[:, p : p + 1])[0].flatten()

            queries = {c: turn(q, i) for c, q in queries.items()}
            keys = {c: turn(k, j) for c, k in keys.items()}
        scaling = 1.0 if fam == "t5" else dh**-0.5
        position_row = torch.zeros(n, dtype=torch.float64)
        if fam == "t5":
            position_row = blocks[0].layer[0].SelfAttention.compute_bias(n, n)[0, head, i].double()
        weights_row = out.attentions[layer][0, head, i].double()
    return Reference(queries, keys, scaling, float(position_row[j]), weights_row)
