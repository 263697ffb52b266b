"""Information-flow routes against computations on the models' own modules (tiny random models)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attnscope.analysis.contributions import alti_map, head_terms, token_terms
from attnscope.analysis.routes import build, importances
from attnscope.models import run
from attnscope.models.contributions import blocks
from attnscope.models.routes import check_model, decompose, decompose_text, graph, head_writes, knockout_check, routes
from tests import tiny
from tests.helpers import TEXT, scale_close, subblock_outputs

ARCHS = ["gpt2", "llama_gqa", "llama_mqa", "gpt_neox", "t5_encoder", "bert", "distilbert"]


@pytest.fixture(scope="module", params=ARCHS)
def tiny_model(request):
    return request.param, tiny.build(request.param)


def _block_outputs(lm, text: str) -> list[torch.Tensor]:
    """Every block's output over text (the last one before any final norm), read with forward hooks on this
    test's own model."""
    layers = {
        "gpt2": lambda m: m.transformer.h,
        "llama_gqa": lambda m: m.model.layers,
        "llama_mqa": lambda m: m.model.layers,
        "gpt_neox": lambda m: m.gpt_neox.layers,
        "t5_encoder": lambda m: m.encoder.block,
        "bert": lambda m: m.encoder.layer,
        "distilbert": lambda m: m.transformer.layer,
    }[lm.spec.name.removeprefix("tiny-")](lm.model)
    captured = {}
    handles = [
        block.register_forward_hook(lambda _m, _a, out, i=i: captured.__setitem__(i, (out[0] if isinstance(out, tuple) else out).detach()))
        for i, block in enumerate(layers)
    ]
    try:
        with torch.no_grad():
            lm.model(**lm.tokenizer(text, return_tensors="pt", return_token_type_ids=False))
    finally:
        for handle in handles:
            handle.remove()
    return [captured[i][0].float() for i in range(len(layers))]


def test_per_head_terms_sum_to_the_attention_blocks_output(tiny_model):
    """Σ_h Σ_j α^h_Pj W_O^h v^h_j + residual + rest = what the model's own attention sub-block returns at P."""
    arch, lm = tiny_model
    rec = run(lm, TEXT, values=True)
    _, ys = subblock_outputs(lm, TEXT)
    for layer, part in enumerate(blocks(lm, rec)):
        for position in (0, part.n // 2, part.n - 1):
            heads, residual, rest = head_terms(part, position)
            assert heads.shape == (lm.spec.n_heads, part.n, lm.spec.d_model)
            scale_close(heads.sum((0, 1)) + residual + rest, ys[layer][position])
            per_key, _ = token_terms(part, torch.tensor([position]))
            expected = per_key[0].clone()
            expected[position] -= residual
            scale_close(heads.sum(0), expected)  # token_terms' row, split by head


def test_node_states_are_the_blocks_outputs_and_importances_sum_to_one(tiny_model):
    """At τ = 0: every node's parts rebuild the block output the model computed (the last block's before the final
    norm), and the importances into every node sum to 1."""
    arch, lm = tiny_model
    split = decompose(lm, run(lm, TEXT, values=True))
    outputs = _block_outputs(lm, TEXT)
    for layer in range(lm.spec.n_layers):
        scale_close(split.states[layer + 1], outputs[layer])
    full = graph(split, None, 0.0)
    n = len(split.tokens)
    reached = {(int(a), int(b)) for a, b in full.nodes[["layer", "position"]].to_numpy()}
    # at τ = 0 every edge that carries anything is kept (an edge whose importance clamps to 0 is not)
    assert (lm.spec.n_layers, n - 1) in reached and len(reached) >= (lm.spec.n_layers - 1) * n // 2
    sums = full.incoming_sums()
    assert len(sums) == len(full.nodes[full.nodes["layer"] > 0])
    np.testing.assert_allclose(sums.to_numpy(), 1.0, atol=1e-5)
    heads = full.edges[full.edges["kind"] == "head"]
    assert (heads["kv_head"] == heads["head"] // lm.spec.kv_group).all()
    assert heads["head"].max() < lm.spec.n_heads
    if lm.spec.kind == "decoder":
        assert (heads["from_position"] <= heads["to_position"]).all()  # nothing from later tokens


def _explicit_llama(lm, text: str, layer: int, position: int) -> tuple[torch.Tensor, list[tuple], torch.Tensor]:
    """(importances, labels, y) of node (layer + 1, position) written out with eager's weights and the block's modules."""
    eager = tiny.build(lm.spec.name.removeprefix("tiny-"), backend="eager").model  # same seed: same weights
    eager.config._attn_implementation = "eager"
    enc = lm.tokenizer(text, return_tensors="pt")
    block = eager.model.layers[layer]
    captured = {}
    handle = block.register_forward_hook(lambda _m, _a, out: captured.__setitem__("y", out[0] if isinstance(out, tuple) else out))
    with torch.no_grad():
        out = eager.model(input_ids=enc["input_ids"], output_hidden_states=True, output_attentions=True)
    handle.remove()
    x = out.hidden_states[layer][0].double()
    y = captured["y"][0].double()[position]
    n, dv, group = x.shape[0], lm.spec.head_dim, lm.spec.kv_group
    with torch.no_grad():
        v = block.self_attn.v_proj(block.input_layernorm(out.hidden_states[layer][0])).double().view(n, lm.spec.n_kv_heads, dv)
    w_o = block.self_attn.o_proj.weight.double()
    alpha = out.attentions[layer][0].double()  # [H, n, n]
    parts, labels = [], []
    for h in range(lm.spec.n_heads):
        written = v[:, h // group] @ w_o[:, h * dv : (h + 1) * dv].T  # [n, d]
        for j in range(n):
            parts.append(alpha[h, position, j] * written[j])
            labels.append(("head", h, j))
    attention = torch.stack(parts).sum(0)
    parts += [x[position], y - x[position] - attention]  # the residual, and the MLP: the rest of the block's output
    labels += [("residual", None, position), ("mlp", None, position)]
    parts = torch.stack(parts)
    close = (y.abs().sum() - (y - parts).abs().sum(-1)).clamp_min(0)
    return close / close.sum(), labels, y


@pytest.mark.parametrize("arch", ["llama_gqa", "llama_mqa"])
@pytest.mark.parametrize(("layer", "position"), [(1, 11), (0, 6)])
def test_importances_equal_the_formula_on_eager_weights(arch, layer, position):
    lm = tiny.build(arch)
    expected, labels, _ = _explicit_llama(lm, TEXT, layer, position)
    split = decompose(lm, run(lm, TEXT, values=True))
    full = graph(split, None, 0.0)
    edges = full.edges[(full.edges["layer"] == layer) & (full.edges["to_position"] == position)]
    got = {(r.kind, None if r.kind != "head" else int(r.head), int(r.from_position)): r.importance for r in edges.itertuples()}
    for label, value in zip(labels, expected.tolist()):
        assert got.get(label, 0.0) == pytest.approx(value, abs=2e-5), label


def test_post_ln_importances_pass_through_both_norms():
    """BERT: y = LN2(mid + mlp(mid)), mid = LN1(x + Σ e + b_O); both norms linearised with their own statistics."""
    lm = tiny.build("bert")
    enc = lm.tokenizer(TEXT, return_tensors="pt")
    eager = tiny.build("bert", backend="eager").model
    eager.config._attn_implementation = "eager"
    layer, position = 1, 4
    with torch.no_grad():
        out = eager(input_ids=enc["input_ids"], output_hidden_states=True, output_attentions=True)
        block = eager.encoder.layer[layer]
        x = out.hidden_states[layer][0]
        n, dv = x.shape[0], lm.spec.head_dim
        v = block.attention.self.value(x).double().view(n, lm.spec.n_heads, dv)
        w_o, b_o = block.attention.output.dense.weight.double(), block.attention.output.dense.bias.double()
        alpha = out.attentions[layer][0].double()
        e = torch.stack([alpha[h, position, :, None] * (v[:, h] @ w_o[:, h * dv : (h + 1) * dv].T) for h in range(lm.spec.n_heads)])
        ln1, ln2 = block.attention.output.LayerNorm, block.output.LayerNorm
        z1 = x[position].double() + e.sum((0, 1)) + b_o
        s1 = (z1.var(unbiased=False) + ln1.eps).sqrt()
        mid = torch.nn.functional.layer_norm(z1, z1.shape, ln1.weight.double(), ln1.bias.double(), ln1.eps)
        m = block.output.dense(block.intermediate(mid.float()[None]))[0].double()
        z2 = mid + m
        s2 = (z2.var(unbiased=False) + ln2.eps).sqrt()
        y = out.hidden_states[layer + 1][0, position].double()

    def lin(t, norm, s):
        return norm.weight.detach().double() * (t - t.mean(-1, keepdim=True)) / s

    parts = torch.cat([lin(lin(e, ln1, s1), ln2, s2).reshape(-1, y.shape[0]), lin(lin(x[position].double(), ln1, s1), ln2, s2)[None]])
    parts = torch.cat([parts, lin(m, ln2, s2)[None]])
    close = (y.abs().sum() - (y - parts).abs().sum(-1)).clamp_min(0)
    expected = (close / close.sum()).detach().numpy()
    full = graph(decompose(lm, run(lm, TEXT, values=True)), position, 0.0)  # block 1 is the top: its node is at the position
    edges = full.edges[(full.edges["layer"] == layer) & (full.edges["to_position"] == position)]
    got = np.zeros(len(expected))
    for r in edges.itertuples():
        index = {"residual": -2, "mlp": -1}.get(r.kind)
        got[index if index is not None else int(r.head) * n + int(r.from_position)] = r.importance
    np.testing.assert_allclose(got, expected, atol=2e-5)


@pytest.mark.parametrize("arch", ["llama_gqa", "bert"])
def test_routes_and_alti_share_one_proximity(arch):
    """importances() over a row of ALTI's per-token terms is ALTI's row: the two agree where they overlap."""
    lm = tiny.build(arch)
    for part in blocks(lm, run(lm, TEXT, values=True)):
        terms, rest = token_terms(part)
        expected = alti_map(part)
        for i in range(part.n):
            np.testing.assert_allclose(importances(terms[i].sum(0) + rest[i], terms[i]).numpy(), expected[i].numpy(), atol=1e-5)


def test_the_graph_is_built_top_down_and_a_higher_threshold_keeps_a_subgraph():
    lm = tiny.build("llama_gqa")
    split = decompose(lm, run(lm, TEXT, values=True))
    low, high = graph(split, 5, 0.02), graph(split, 5, 0.1)
    for g in (low, high):
        assert (g.edges["importance"] > g.threshold).all()
        assert set(g.nodes[g.nodes["layer"] == lm.spec.n_layers]["position"]) == {5}
        for layer in range(lm.spec.n_layers):  # a node below the top exists iff a kept edge comes from it
            sources = set(g.edges[g.edges["layer"] == layer]["from_position"].astype(int))
            assert set(g.nodes[g.nodes["layer"] == layer]["position"]) == sources
    key = ["layer", "kind", "head", "from_position", "to_position"]
    assert set(map(tuple, high.edges[key].astype(str).to_numpy())) <= set(map(tuple, low.edges[key].astype(str).to_numpy()))
    flows = low.flows()
    assert flows.max() <= 1 + 1e-9 and low.head_scores()["flow"].is_monotonic_decreasing


def test_flows_follow_the_graph():
    """A hand-made graph: shares multiply down the edges and add up at a node."""
    import pandas as pd

    edges = {
        1: pd.DataFrame(
            {
                "layer": 1,
                "kind": ["residual", "head"],
                "head": pd.array([None, 0], dtype="Int64"),
                "kv_head": pd.array([None, 0], dtype="Int64"),
            }
            | {"from_position": [1, 0], "to_position": [1, 1], "importance": [0.6, 0.4]}
        ),
        0: pd.DataFrame(
            {"layer": 0, "kind": ["residual", "head", "residual"], "head": pd.array([None, 1, None], dtype="Int64")}
            | {"kv_head": pd.array([None, 1, None], dtype="Int64"), "from_position": [0, 0, 1], "to_position": [0, 1, 1]}
            | {"importance": [1.0, 0.5, 0.5]}
        ),
    }
    g = build(
        lambda layer, positions: edges[layer][edges[layer]["to_position"].isin(positions)],
        tokens=["a", "b"],
        position=1,
        n_layers=2,
        threshold=0.0,
    )
    flows = dict(zip(zip(g.edges["layer"], g.edges["kind"], g.edges["from_position"], g.edges["to_position"]), g.flows()))
    assert flows[(1, "head", 0, 1)] == pytest.approx(0.4) and flows[(0, "head", 0, 1)] == pytest.approx(0.3)
    assert flows[(0, "residual", 0, 0)] == pytest.approx(0.4)
    scores = g.head_scores()
    assert scores.iloc[0][["layer", "head"]].tolist() == [1, 0] and scores["flow"].tolist() == pytest.approx([0.4, 0.3])


def test_what_a_head_writes_is_its_share_of_the_logits():
    """The head's output through the final RMSNorm (γ ⊙ o / rms of the final state) and the unembedding."""
    lm = tiny.build("llama_gqa")
    rec = run(lm, TEXT, values=True)
    split = decompose(lm, rec)
    layer, head, position = 1, 2, 8
    written = head_terms(split.blocks[layer], position)[0][head].sum(0)  # [d]
    raw = _block_outputs(lm, TEXT)[-1][position]
    norm = lm.model.model.norm
    rms = raw.pow(2).mean().add(norm.variance_epsilon).sqrt()
    logits = lm.model.lm_head.weight.detach() @ (norm.weight.detach() * written / rms)
    writes = head_writes(lm, split, layer, head, position, k=5)
    top = torch.topk(logits, 5)
    promoted = writes[writes["direction"] == "promotes"]
    assert list(promoted["token"]) == lm.tokenizer.convert_ids_to_tokens(top.indices.tolist())
    np.testing.assert_allclose(promoted["logit"], top.values.numpy(), rtol=1e-4)
    suppressed = writes[writes["direction"] == "suppresses"]
    assert (suppressed["logit"] < 0).all() and suppressed["logit"].is_monotonic_increasing
    assert float(suppressed["logit"].iloc[0]) == pytest.approx(float(logits.min()), rel=1e-4)


def _deep(kind: str, kv: int):
    """4 layers x 8 heads: enough heads for a top-4 and a bottom-4 that do not overlap."""
    config = tiny.config_for("gpt2" if kind == "gpt2" else "llama_gqa", layers=4, hidden=64, heads=8, kv_heads=kv)
    return tiny.causal(config, name=f"tiny-{kind}-{kv}")


KNOCKOUT_TEXTS = [
    TEXT,
    "When Mary and John went to the store, John gave a drink to",
    "one two three four five six seven",
    "The capital of France is Paris and the capital of Italy is",
]


@pytest.mark.parametrize(("kind", "kv"), [("gpt2", 8), ("llama", 2), ("llama", 1)])
def test_knocking_out_the_top_heads_moves_the_prediction_more_than_the_bottom_heads(kind, kv):
    lm = _deep(kind, kv)
    checks = [knockout_check(lm, text, k=4) for text in KNOCKOUT_TEXTS]
    assert sum(c.holds for c in checks) >= 3, [(c.top_change, c.bottom_change) for c in checks]
    assert np.mean([c.top_change for c in checks]) > 2 * np.mean([c.bottom_change for c in checks])
    assert not set(checks[0].top) & set(checks[0].bottom)


def test_refusals_in_one_line():
    from tests.zoo import wrap

    with pytest.raises(ValueError, match="materialised") as materialised:
        check_model(wrap("bloom"))
    with pytest.raises(ValueError, match="learned attention sinks") as sinks:
        routes(wrap("gpt_oss"), TEXT)
    for exc in (materialised, sinks):
        assert "\n" not in str(exc.value)
    lm = tiny.build("gpt2")
    with pytest.raises(ValueError, match="position 99 out of range"):
        routes(lm, TEXT, position=99)
    with pytest.raises(ValueError, match=r"threshold 1\.5 out of range"):
        routes(lm, TEXT, threshold=1.5)
    with pytest.raises(ValueError, match="decoder-only model's next-token prediction; tiny-bert is an encoder model"):
        knockout_check(tiny.build("bert"), TEXT)
    with pytest.raises(ValueError, match="decoder-only model's final norm and unembedding; tiny-bert is an encoder"):
        head_writes(tiny.build("bert"), decompose(tiny.build("bert"), run(tiny.build("bert"), TEXT, values=True)), 0, 0)


@pytest.fixture(scope="module")
def tiny_t5():
    return tiny.tiny_t5(decoder_layers=2)


T5_TARGET = "Le chat court vite."


def test_routes_check_the_model_and_run_it_once(monkeypatch):
    import attnscope.models.routes as module

    lm = tiny.build("gpt2")
    calls = {"run": 0, "check": 0}
    real_run, real_check = module.run, module.check_model

    def counted_run(*args, **kwargs):
        calls["run"] += 1
        return real_run(*args, **kwargs)

    def counted_check(model):
        calls["check"] += 1
        return real_check(model)

    monkeypatch.setattr(module, "run", counted_run)
    monkeypatch.setattr(module, "check_model", counted_check)
    fresh = routes(lm, TEXT)
    assert calls == {"run": 1, "check": 1}
    calls.update(run=0, check=0)
    reused = routes(lm, TEXT, rec=real_run(lm, TEXT, values=True))
    assert calls == {"run": 0, "check": 1}  # a record that kept its values is read, not made again
    np.testing.assert_array_equal(fresh.edges["importance"].to_numpy(), reused.edges["importance"].to_numpy())
    assert len(fresh.edges) > 0


def test_t5_decoder_splits_into_self_and_cross_heads_of_its_own_modules(tiny_t5):
    """Self- and cross-attention heads sum to what the decoder's own SelfAttention and EncDecAttention modules
    return; the rebuilt states are the decoder blocks' outputs (the last one before the final norm)."""
    from attnscope.models.routes import decompose_seq2seq

    lm = tiny_t5
    captured: dict = {}
    decoder = lm.model.decoder.block
    names = {"self": lambda b: b.layer[0].SelfAttention, "cross": lambda b: b.layer[1].EncDecAttention, "block": lambda b: b}
    handles = [
        pick(block).register_forward_hook(
            lambda _m, _a, out, key=(key, i): captured.__setitem__(key, out[0] if isinstance(out, tuple) else out)
        )
        for i, block in enumerate(decoder)
        for key, pick in names.items()
    ]
    enc = lm.tokenizer(TEXT, return_tensors="pt")
    dec = lm.tokenizer(T5_TARGET, return_tensors="pt")
    try:
        with torch.no_grad():
            lm.model(input_ids=enc["input_ids"], decoder_input_ids=dec["input_ids"])
    finally:
        for handle in handles:
            handle.remove()
    split = decompose_seq2seq(lm, run(lm, TEXT, target=T5_TARGET, values=True))
    for layer, (block, (cross_weights, cross_written, _)) in enumerate(zip(split.blocks, split.cross)):
        for position in range(len(split.tokens)):
            heads, _, _ = head_terms(block, position)
            scale_close(heads.sum((0, 1)), captured[("self", layer)][0, position].float())
            cross = (cross_weights[:, position, :, None] * cross_written).sum((0, 1))
            scale_close(cross, captured[("cross", layer)][0, position].float())
        scale_close(split.states[layer + 1], captured[("block", layer)][0].float())


def test_t5_routes_run_from_the_decoder_into_the_encoder(tiny_t5):
    full = routes(tiny_t5, TEXT, threshold=0.0, target=T5_TARGET)
    assert full.seq2seq and full.tokens == tiny_t5.tokenizer.convert_ids_to_tokens(tiny_t5.tokenizer(T5_TARGET)["input_ids"])
    np.testing.assert_allclose(full.incoming_sums().to_numpy(), 1.0, atol=1e-5)
    cross = full.edges[(full.edges["from_stack"] == "encoder") & (full.edges["stack"] == "decoder")]
    assert len(cross) and (cross["kind"] == "head").all()
    top_encoder = full.nodes[(full.nodes["stack"] == "encoder") & (full.nodes["layer"] == tiny_t5.spec.n_layers)]
    assert set(top_encoder["position"]) == set(cross["from_position"])  # the encoder is expanded from what is read
    assert (full.edges[full.edges["stack"] == "encoder"]["from_stack"] == "encoder").all()
    flows = full.flows()
    assert flows.max() <= 1 + 1e-9 and flows[full.edges.index[full.edges["stack"] == "encoder"]].sum() > 0
    data = full.to_json()
    assert data["source_tokens"] and {"stack", "from_stack"} <= set(data["edges"][0]) and "stack" in data["nodes"][0]
    with pytest.raises(ValueError, match="give a source text and a target text"):
        routes(tiny_t5, TEXT)
    with pytest.raises(ValueError, match="decoder-only model's final norm and unembedding"):
        head_writes(tiny_t5, decompose_text(tiny_t5, TEXT, T5_TARGET), 0, 0)
