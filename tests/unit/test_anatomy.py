"""Anatomy on tiny random models (GPT-2, Llama with GQA, Qwen2, BERT, RoBERTa, DistilBERT, T5): parameter counts,
heads and KV cache, norm placement, positional scheme, residual norms, attention by distance, the layer-0 input's
parts, and the measured attention cost (small n only).

References: counts written out from each config (the papers' formulas), sum(p.numel()), forward hooks on the test's
own private copy of the model (which module produced a block's output), direct indexing of the embedding tables.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest
import torch

from attnscope import cli
from attnscope.analysis.anatomy import attention_parameters, distance_profile, heads_frame, quadratic_fit, residual_norm_frame
from attnscope.models import from_model, run
from attnscope.models.anatomy import (
    COMPONENTS,
    POSITIONAL,
    anatomy,
    attention_cost,
    distance_frame,
    embedding_parts,
    heads_table,
    parameter_counts,
    positional_scheme,
    probe_record,
    residual_norms,
)
from tests import tiny, zoo

ARCHS = ["gpt2", "llama_gqa", "qwen2", "bert", "roberta", "distilbert", "gpt_neox"]


@pytest.fixture(scope="module", params=[*ARCHS, "t5"])
def lm(request):
    return tiny.tiny_t5() if request.param == "t5" else tiny.build(request.param)


def test_parameter_total_is_sum_numel_and_every_component_is_named(lm):
    facts = anatomy(lm)
    assert facts.parameters["total"] == sum(p.numel() for p in lm.model.parameters()) == facts.numel
    assert set(facts.parameters) == {*COMPONENTS, "total"} and all(v >= 0 for v in facts.parameters.values())
    assert facts.parameters["token_embeddings"] == lm.model.get_input_embeddings().weight.numel()
    assert facts.positional in POSITIONAL and facts.norm_placement in ("pre", "post")


def test_gpt2_counts_written_out_from_its_config():
    lm = tiny.build("gpt2")
    c = lm.model.config
    d, layers, inner = c.n_embd, c.n_layer, c.n_inner or 4 * c.n_embd
    counts, tied = parameter_counts(lm.model, c.n_head, c.n_head, d // c.n_head)
    assert tied is True and counts["lm_head"] == 0  # the LM head is the token table
    assert counts["token_embeddings"] == c.vocab_size * d and counts["position_embeddings"] == c.n_positions * d
    for part in ("attention_q", "attention_k", "attention_v"):
        assert counts[part] == layers * (d * d + d)  # a third of c_attn's weight [d, 3d] and bias [3d]
    assert counts["attention_o"] == layers * (d * d + d)
    assert counts["mlp"] == layers * (d * inner + inner + inner * d + d)
    assert counts["norms"] == (2 * layers + 1) * 2 * d


def test_llama_gqa_counts_written_out_from_its_config():
    lm = tiny.build("llama_gqa")
    c = lm.model.config
    d, h, kv, hd, layers = c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.hidden_size // c.num_attention_heads, 2
    counts, tied = parameter_counts(lm.model, h, kv, hd)
    assert tied is False and counts["lm_head"] == c.vocab_size * d
    assert counts["attention_q"] == layers * d * h * hd and counts["attention_o"] == layers * h * hd * d
    assert counts["attention_k"] == counts["attention_v"] == layers * d * kv * hd
    assert counts["mlp"] == layers * 3 * d * c.intermediate_size and counts["norms"] == (2 * layers + 1) * d
    assert counts["position_embeddings"] == 0


def test_bert_counts_written_out_from_its_config():
    lm = tiny.build("bert")
    c = lm.model.config
    d, layers = c.hidden_size, c.num_hidden_layers
    counts, tied = parameter_counts(lm.model, c.num_attention_heads, c.num_attention_heads, d // c.num_attention_heads)
    assert tied is None  # AutoModel: no LM head
    assert counts["position_embeddings"] == c.max_position_embeddings * d and counts["token_type_embeddings"] == c.type_vocab_size * d
    assert all(counts[p] == layers * (d * d + d) for p in ("attention_q", "attention_k", "attention_v", "attention_o"))
    assert counts["norms"] == (2 * layers + 1) * 2 * d and counts["other"] == d * d + d  # the pooler


def test_heads_table_rows_match_the_measured_projections(lm):
    facts = anatomy(lm)
    table = heads_table(facts)
    own = table[table["model"]]
    assert len(own) == 1
    for part in ("q", "k", "v", "o"):
        assert int(own[part].iloc[0]) * facts.attention_blocks == facts.parameters[f"attention_{part}"], part
    one, mha = table.iloc[0], table[table["variant"].str.startswith("MHA")].iloc[0]
    assert one["per_layer"] == mha["per_layer"]  # heads split the projections; they do not add parameters
    mqa = table[table["variant"] == "MQA"].iloc[0]
    assert mqa["k"] == facts.d_model * facts.head_dim + (facts.head_dim if facts.attention_bias else 0)
    size = torch.empty((), dtype=next(lm.model.parameters()).dtype).element_size()
    cache_layers = lm.spec.n_decoder_layers if lm.spec.kind == "encoder-decoder" else lm.spec.n_layers
    assert facts.kv_cache_bytes_per_token == 2 * cache_layers * lm.spec.n_kv_heads * facts.head_dim * size
    assert int(own["kv_cache_bytes_per_token"].iloc[0]) == facts.kv_cache_bytes_per_token


def test_attention_parameters_by_hand():
    assert attention_parameters(8, 2, 1, 4) == {"q": 64, "k": 32, "v": 32, "o": 64, "total": 192}
    assert attention_parameters(8, 2, 2, 4, bias=True, out_bias=False)["total"] == 4 * 64 + 3 * 8
    frame = heads_frame(64, 4, 2, 16, 3, bytes_per_element=2)
    assert frame["variant"].tolist() == ["1 head", "MHA (4 heads)", "GQA-2", "MQA"]
    assert frame.set_index("variant").loc["GQA-2", "kv_cache_bytes_per_token"] == 2 * 3 * 2 * 16 * 2
    assert frame["model"].tolist() == [False, False, True, False]


def block_output_is_a_norm_output(model: torch.nn.Module, inputs: dict) -> bool:
    """The reference: forward hooks on a private copy record every norm's output; post-LN when the second hidden state
    (block 0's output) is, row for row, some norm's output."""
    model = copy.deepcopy(model)
    outputs = []

    def keep(module, args, out):
        out = out[0] if isinstance(out, tuple) else out
        outputs.append(out.detach().clone())

    norms = [
        m for m in model.modules() if "norm" in type(m).__name__.lower() and not any(True for c in m.children() for _ in c.parameters())
    ]
    for m in norms:
        m.register_forward_hook(keep)
    with torch.inference_mode():
        hidden = model(**inputs, output_hidden_states=True)
    states = (getattr(hidden, "encoder_hidden_states", None) or hidden.hidden_states)[1]
    h = states.reshape(-1, states.shape[-1]).float()
    for out in outputs:
        if out.shape[-1] != h.shape[-1]:
            continue
        gap = torch.cdist(h, out.reshape(-1, out.shape[-1]).float(), compute_mode="donot_use_mm_for_euclid_dist").min(1).values
        if bool((gap <= 1e-5 * h.norm(dim=-1).clamp(min=1)).all()):
            return True
    return False


EXPECTED_POSITIONS = {
    "gpt2": "learned absolute",
    "llama_gqa": "rotary",
    "qwen2": "rotary",
    "gpt_neox": "rotary",
    "bert": "learned absolute",
    "roberta": "learned absolute",
    "distilbert": "learned absolute",
    "tiny-t5": "relative buckets",
}


def test_norm_placement_and_positions_agree_with_hooks_on_a_private_copy(lm):
    rec = probe_record(lm)
    facts = anatomy(lm, rec)
    inputs = {k: v for k, v in rec.inputs.items() if k in ("input_ids", "attention_mask", "decoder_input_ids")}
    expected = "post" if block_output_is_a_norm_output(lm.model, inputs) else "pre"
    assert facts.norm_placement == expected, facts.norm_evidence
    assert facts.norm_placement == ("post" if lm.spec.model_type in ("bert", "roberta", "distilbert") else "pre")
    assert facts.positional == EXPECTED_POSITIONS[lm.spec.name.removeprefix("tiny-") if lm.spec.name != "tiny-t5" else "tiny-t5"]


def test_alibi_and_sinusoidal_and_none_are_read_from_modules_and_config():
    assert positional_scheme(zoo.build("bloom"))[0] == "alibi"  # no module, no flag: the model file builds the biases
    assert positional_scheme(zoo.build("mpt"))[0] == "alibi"  # attn_config.alibi
    assert positional_scheme(zoo.build("marian"))[0] == "sinusoidal"
    assert positional_scheme(zoo.build("gptj"))[0] == "rotary"  # no rotary module: config rotary_dim
    falcon = zoo.build("falcon")
    assert falcon.config.alibi is False and positional_scheme(falcon)[0] == "rotary"  # a flag saying no is read as no
    assert positional_scheme(zoo.build("jamba"))[0] == "none"


def test_post_ln_detection_follows_the_block_not_the_class_name():
    """The same BERT with its blocks' final norms made Pre-LN-like (the norm's output no longer the block output) is
    read as pre: the check is numeric, on what the blocks output."""
    lm = tiny.build("bert")
    facts = anatomy(lm)
    assert facts.norm_placement == "post"
    changed = copy.deepcopy(lm.model)
    for layer in changed.encoder.layer:
        layer.output.LayerNorm = torch.nn.Identity()  # residual sum left unnormalised
    other = from_model(changed, lm.tokenizer, name="bert-no-output-norm")
    assert anatomy(other).norm_placement == "pre"


def test_residual_norms_and_distance_profile_are_the_written_out_means():
    lm = tiny.build("llama_gqa")
    rec = run(lm, "The mouse ran, the cat waited by the door.")
    frame = residual_norms(rec)
    for layer in (0, 1, 2):
        assert frame.loc[layer, "mean_norm"] == pytest.approx(float(np.linalg.norm(rec.hidden(layer), axis=-1).mean()), rel=1e-6)
    assert frame.loc[0, "growth"] == 1.0
    distances = distance_frame(rec, layers=[1])
    maps = rec.layer_attention(1)
    n = maps.shape[-1]
    for head, offset in ((0, 0), (2, 1), (3, 4), (1, -2)):
        cells = [maps[head, i, i - offset] for i in range(n) if 0 <= i - offset < n]
        got = distances.query("head == @head and offset == @offset")["weight"].item()
        assert got == pytest.approx(float(np.mean(cells)), abs=1e-7)
    assert distances.query("offset < 0")["weight"].abs().max() < 1e-7  # a causal model never looks right
    with pytest.raises(ValueError, match="3 rows for 2 tokens"):
        from attnscope.analysis.anatomy import part_norm_frame

        part_norm_frame(["a", "b"], {"token": np.zeros((3, 4))})


def test_distance_profile_and_residual_frame_by_hand():
    maps = np.array([[[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.2, 0.3, 0.5]]])
    frame = distance_profile(maps).set_index("offset")
    assert frame.loc[0, "weight"] == pytest.approx((1 + 0.5 + 0.5) / 3) and frame.loc[1, "weight"] == pytest.approx((0.5 + 0.3) / 2)
    assert frame.loc[2, "weight"] == pytest.approx(0.2) and frame.loc[2, "queries"] == 1
    growth = residual_norm_frame([np.ones((2, 4)), 3 * np.ones((2, 4))])
    assert growth["mean_norm"].tolist() == [2.0, 6.0] and growth["growth"].tolist() == [1.0, 3.0]


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_embedding_parts_are_the_models_own_tables_and_rebuild_layer_0(arch):
    lm = tiny.build(arch)
    rec = run(lm, "The mouse ran to the door.")
    frame, check = embedding_parts(lm, rec)
    assert check < 1e-5  # token + position + segment through the embeddings' LayerNorm = the recorded layer 0
    embeddings = lm.model.embeddings
    ids = torch.as_tensor(rec.input_ids[0])
    token = frame[frame["part"] == "token"]["norm"].to_numpy()
    np.testing.assert_allclose(token, embeddings.word_embeddings.weight[ids].norm(dim=-1).detach().numpy(), rtol=1e-5)
    offset = lm.model.config.pad_token_id + 1 if arch == "roberta" else 0
    position = frame[frame["part"] == "position"]["norm"].to_numpy()
    expected = embeddings.position_embeddings.weight[offset : offset + len(ids)].norm(dim=-1).detach().numpy()
    np.testing.assert_allclose(position, expected, rtol=1e-5)
    assert set(frame["part"]) == {"token", "position", "segment", "sum"}
    assert embedding_parts(tiny.build("gpt2"), run(tiny.build("gpt2"), "The mouse ran.")) is None  # no token types


def test_attention_cost_at_small_n_measures_and_fits():
    measured, fits = attention_cost(4, 2, 8, lengths=(16, 32, 64, 128), repeats=1)
    assert len(measured) == 8 and set(measured["kernel"]) == {"eager", "sdpa"} and (measured["seconds"] > 0).all()
    eager = measured[measured["kernel"] == "eager"].set_index("n")
    assert eager.loc[64, "memory_mb"] == pytest.approx(2 * 4 * 64 * 64 * 4 / 2**20)  # scores and weights, float32
    assert measured[measured["kernel"] == "sdpa"]["memory_mb"].isna().all()
    assert set(fits) == {"eager", "sdpa"} and all({"a", "b", "c", "r2", "slope"} <= set(f) for f in fits.values())
    with pytest.raises(ValueError, match="at least 1"):
        attention_cost(4, 2, 8, lengths=(0, 4, 8))


def test_quadratic_fit_recovers_a_quadratic():
    n = np.array([128, 256, 512, 1024, 2048, 4096], dtype=float)
    fit = quadratic_fit(n, 3e-9 * n * n + 2e-6 * n + 1e-4)
    assert fit["a"] == pytest.approx(3e-9, rel=1e-6) and fit["b"] == pytest.approx(2e-6, rel=1e-4) and fit["r2"] == pytest.approx(1.0)
    assert 1.5 < fit["slope"] < 2.0  # the linear term still shows at these n
    assert quadratic_fit(n, 5e-9 * n * n)["slope"] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="at least 3"):
        quadratic_fit([1, 2], [1, 4])


def test_anatomy_refuses_a_record_of_another_model():
    with pytest.raises(ValueError, match="the record is of"):
        anatomy(tiny.build("gpt2"), run(tiny.build("bert"), "The mouse ran."))


# -- the CLI ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("anatomy")
    lm = tiny.build("llama_gqa")
    lm.model.save_pretrained(root / "llama")
    lm.tokenizer.save_pretrained(root / "llama")
    return str(root / "llama")


def test_cli_anatomy_writes_the_contract(saved, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "anatomy.json"
    assert cli.main(["anatomy", "--model", saved, "--cost", "8,16,32", "--out", str(out)]) == 0, capsys.readouterr().err
    data = json.loads(out.read_text())
    assert {"parameters", "norm_placement", "positional", "heads", "kv_cache_bytes_per_token"} <= set(data)
    model = AutoModelForCausalLM.from_pretrained(saved)
    assert data["parameters"]["total"] == sum(p.numel() for p in model.parameters())
    assert sum(v for k, v in data["parameters"].items() if k != "total") == data["parameters"]["total"]
    assert data["norm_placement"] == "pre" and data["positional"] == "rotary"
    assert data["heads"] == {"n_heads": 4, "n_kv_heads": 2, "head_dim": 8}
    assert data["kv_cache_bytes_per_token"] == 2 * 2 * 2 * 8 * 4  # float32
    assert [row["n"] for row in data["attention_cost"]["measured"]] == [8, 8, 16, 16, 32, 32]
    assert "wrote" in capsys.readouterr().out


def test_the_frames_are_plain_tables():
    facts = anatomy(tiny.build("gpt2"))
    assert isinstance(heads_table(facts), pd.DataFrame) and json.dumps(facts.to_json())


def test_quadratic_fit_of_noisy_times_stays_non_negative_and_prints_without_plus_minus():
    from attnscope.viz.anatomy import cost_fit_frame, polynomial

    n = np.array([128, 256, 512, 1024, 2048, 4096], dtype=float)
    # timings whose unconstrained fit has a negative constant (the Anatomy page drew nothing on its log axis)
    y = np.array([7.241e-4, 2.048e-3, 5.7926e-3, 1.6384e-2, 4.6341e-2, 0.131072])  # ~n^1.5
    design = np.stack([n * n, n, np.ones_like(n)], axis=1)
    assert np.linalg.lstsq(design, y, rcond=None)[0][2] < 0
    fit = quadratic_fit(n, y)
    assert min(fit["a"], fit["b"], fit["c"]) >= 0 and fit["r2"] > 0.99
    text = polynomial(fit)
    assert "+ -" not in text and "−" not in text
    assert polynomial({"a": 1e-9, "b": 0.0, "c": -2e-3}) == "1e-09·n² − 0.002"
    measured = pd.DataFrame({"n": n, "kernel": "eager", "seconds": y})
    curve = cost_fit_frame(measured, {"eager": fit})
    assert len(curve) == 48 and (curve["fitted_seconds"] > 0).all()
