"""The lab's syllabus additions on tiny random models: recurrence with memory (Transformer-XL segments, run chunk by
chunk), the attention temperature (``scale:τ``, why √d) and parameters wider than the text (full attention).

References are independent of the code under test: the banded-block mask written out as a 4-D mask passed to the
model itself, transformers' eager ``output_attentions``, a copy of the model with its query projection multiplied
by τ, and boolean reachability written out as a matrix power.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from attnscope import cli
from attnscope.analysis.cost import reach_by_layer, receptive_field_frame, recurrence_memory_frame
from attnscope.analysis.patterns import COVERS, Recurrence, Scale, check_pattern, parse_pattern, pattern_allowed, saturation
from attnscope.analysis.scaling import row_entropy, scale_line, top1_kept
from attnscope.models.forward import tokenize
from attnscope.models.lab import imposing, lab_effect, lab_scale, lab_sweep, lab_table, recurrent_forward
from tests import tiny

TEXT = "The mouse ran, the cat waited by the door and the dog barked at both of them."


@pytest.fixture(scope="module")
def llama():
    return tiny.build("llama_gqa")


@pytest.fixture(scope="module", params=["llama_gqa", "gpt2", "qwen2"])
def decoder(request):
    return tiny.build(request.param)


def banded(n: int, segment: int, memory: int) -> torch.Tensor:
    """bool [n, n]: query i may see key j when j ≤ i and j's segment is i's or one of the ``memory`` before it."""
    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    return (j <= i) & (j // segment >= i // segment - memory)


# -- recurrence ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("segment, memory", [(3, 1), (4, 2), (5, 0)])
def test_chunked_run_equals_the_banded_block_mask_in_one_pass(decoder, segment, memory):
    """Forward only, same positions: segments one after another with a cache of the M previous = one pass whose mask is
    the banded-block matrix (passed to the model itself as a 4-D mask) = the lab's pattern imposed through the hook."""
    enc, _ = tokenize(decoder, [TEXT])
    ids = enc["input_ids"]
    n = ids.shape[1]
    mask = torch.where(banded(n, segment, memory), 0.0, torch.finfo(torch.float32).min)[None, None]  # [1, 1, n, n]
    with torch.inference_mode():
        reference = decoder.model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        full = decoder.model(input_ids=ids, use_cache=False).logits
        with imposing(decoder, Recurrence(segment, memory)):
            imposed = decoder.model(input_ids=ids, use_cache=False).logits
    run = recurrent_forward(decoder, TEXT, f"recurrence:{segment},{memory}")
    scale = float(reference.abs().max())
    torch.testing.assert_close(run.logits, reference, atol=2e-5 * scale, rtol=0)
    torch.testing.assert_close(imposed, reference, atol=2e-5 * scale, rtol=0)
    assert not torch.allclose(reference, full, atol=1e-3)  # the mask really changed something
    # the cache never held more than the memory plus the running segment
    assert max(run.cache_tokens) == min(n, (memory + 1) * segment) and run.cache_tokens[0] == min(n, segment)
    assert len(run.cache_tokens) == -(-n // segment)


def test_lab_effect_runs_recurrence_chunk_by_chunk_and_measures_it(llama):
    effect = lab_effect(llama, TEXT, "recurrence:3")
    assert effect.how.startswith("run chunk by chunk") and effect.cache_tokens and max(effect.cache_tokens) == 6
    enc, _ = tokenize(llama, [TEXT])
    n = enc["input_ids"].shape[1]
    mask = torch.where(banded(n, 3, 1), 0.0, torch.finfo(torch.float32).min)[None, None]
    with torch.inference_mode():
        full = llama.model(**enc, use_cache=False).logits[0].double()
        changed = llama.model(input_ids=enc["input_ids"], attention_mask=mask, use_cache=False).logits[0].double()
    log_p, log_q = full.log_softmax(-1), changed.log_softmax(-1)
    kl = float((log_p.exp() * (log_p - log_q)).sum(-1).mean())
    assert effect.kl == pytest.approx(kl, rel=1e-3)
    assert effect.top1_kept == pytest.approx(float((full.argmax(-1) == changed.argmax(-1)).double().mean()))
    some_layers = lab_effect(llama, TEXT, "recurrence:3", layers=[1])  # a block left with full attention: the mask in one pass
    assert some_layers.how.startswith("its banded-block mask") and not some_layers.cache_tokens


def test_recurrence_mask_is_banded_blocks_counted_from_the_first_real_token():
    pattern = Recurrence(3, 1)
    kept = pattern_allowed(pattern, 8, 8)
    i, j = torch.arange(8)[:, None], torch.arange(8)[None, :]
    expected = (j // 3 <= i // 3) & (j // 3 >= i // 3 - 1)
    assert torch.equal(kept, expected)
    left_padded = pattern_allowed(pattern, 10, 10, real_keys=torch.arange(10) >= 2)  # two pads first
    assert torch.equal(left_padded[2:, 2:], expected)


@pytest.mark.parametrize("segment, memory, layers", [(4, 1, 6), (3, 2, 5), (5, 0, 4)])
def test_receptive_field_grows_by_m_c_per_layer_as_reachability_says(segment, memory, layers):
    n = segment * (layers * memory + 3)
    kept = banded(n, segment, memory)
    last_of_a_segment = segment * (layers * memory + 2) - 1
    reached = reach_by_layer(kept, layers, query=last_of_a_segment)
    pattern = Recurrence(segment, memory)
    assert reached.tolist() == [pattern.receptive_field(layer, n) for layer in range(1, layers + 1)]
    assert np.diff(reached).tolist() == [memory * segment] * (layers - 1)
    frame = receptive_field_frame(pattern, layers, n).pivot(index="layer", columns="method", values="tokens")
    assert frame[pattern.label].tolist() == reached.tolist() and (frame["full"] == n).all()


def test_recurrence_costs_keys_and_kv_memory():
    pattern = Recurrence(64, 2)
    frame = recurrence_memory_frame(pattern, n_layers=30, n_kv_heads=3, head_dim=64, bytes_per_element=2).set_index(["n", "method"])
    assert frame.loc[(4096, "recurrence:64,2"), "keys_per_query"] == 3 * 64
    assert frame.loc[(4096, "recurrence:64,2"), "kv_cache_mb"] == pytest.approx(2 * 30 * 3 * 64 * 2 * 192 / 2**20)
    assert frame.loc[(4096, "full"), "kv_cache_mb"] == pytest.approx(2 * 30 * 3 * 64 * 2 * 4096 / 2**20)
    assert frame.loc[(256, "recurrence:64,2"), "cached_tokens"] == 192 and pattern.keys_per_query(100) == 100


def test_chunked_run_refuses_an_encoder_in_one_line():
    with pytest.raises(ValueError, match="needs a decoder"):
        recurrent_forward(tiny.build("bert"), TEXT, "recurrence:3")
    with pytest.raises(ValueError, match="not a recurrence pattern"):
        recurrent_forward(tiny.build("llama_gqa"), TEXT, "window:3")


# -- scale:τ -------------------------------------------------------------------------------------------
def test_scale_multiplies_the_logits_as_eager_with_another_scaling():
    from transformers.models.llama.modeling_llama import eager_attention_forward

    g = torch.Generator().manual_seed(0)
    query, key, value = torch.randn(1, 4, 9, 8, generator=g), torch.randn(1, 2, 9, 8, generator=g), torch.randn(1, 2, 9, 8, generator=g)
    causal = torch.full((9, 9), torch.finfo(torch.float32).min).triu(1)[None, None]

    class Module(torch.nn.Module):
        num_key_value_groups = 2
        training = False

    from attnscope.analysis.attention import Tensors
    from attnscope.analysis.patterns import pattern_weights

    for tau in (0.25, 1.0, 3.0):
        _, eager = eager_attention_forward(Module(), query, key, value, causal, scaling=tau * 8**-0.5)
        ours = pattern_weights(Scale(tau), Tensors(query, key, "causal", 8**-0.5), batch=0)
        torch.testing.assert_close(ours, eager[0], atol=1e-6, rtol=0)


def test_lab_scale_entropy_kl_and_top1_match_independent_references(llama):
    """Layer 0 sees the embeddings whatever τ is, so its entropy is that of eager's weights A raised to τ and renormalised
    (softmax(τ·s) ∝ Aᵗ); the whole run equals a copy of the model whose query projection is multiplied by τ."""
    sweep = lab_scale(llama, TEXT, taus=(0.5, 1.0, 2.0))
    enc, _ = tokenize(llama, [TEXT])
    eager = copy.deepcopy(llama.model)
    eager.set_attn_implementation("eager")
    with torch.inference_mode():
        out = eager(**enc, output_attentions=True, use_cache=False)
    weights = out.attentions[0][0].double()  # [H, n, n]
    for tau in (0.5, 1.0, 2.0):
        powered = torch.where(weights > 0, weights.clamp(min=1e-300) ** tau, torch.zeros((), dtype=torch.float64))
        powered = powered / powered.sum(-1, keepdim=True)
        entropy = float(-(powered * torch.where(powered > 0, powered.log(), torch.zeros((), dtype=torch.float64))).sum(-1).mean())
        got = sweep.entropy.query("layer == 0 and tau == @tau")["entropy"].item()
        assert got == pytest.approx(entropy, rel=1e-4)
        scaled = copy.deepcopy(llama.model)
        with torch.no_grad():
            for layer in scaled.model.layers:
                layer.self_attn.q_proj.weight.mul_(tau)  # (τq)·k = τ(q·k): RoPE is linear
            reference = scaled(**enc, use_cache=False).logits[0].double()
        full = out.logits[0].double()
        log_p, log_q = full.log_softmax(-1), reference.log_softmax(-1)
        row = sweep.summary.set_index("tau").loc[tau]
        assert row["kl"] == pytest.approx(float((log_p.exp() * (log_p - log_q)).sum(-1).mean()), abs=1e-5, rel=1e-3)
        assert row["top1_kept"] == pytest.approx(float((full.argmax(-1) == reference.argmax(-1)).double().mean()))
    summary = sweep.summary.set_index("tau")
    assert summary.loc[1.0, "kl"] < 1e-5 and summary.loc[1.0, "top1_kept"] == 1.0
    assert summary.loc[0.5, "entropy"] > summary.loc[1.0, "entropy"] > summary.loc[2.0, "entropy"]  # sharper as τ grows
    assert "τ = 0.5" in sweep.line and "√d" in sweep.line and (sweep.entropy["max_entropy"] > sweep.entropy["entropy"]).all()


def test_scale_text_and_refusals():
    assert parse_pattern("scale:0.25") == Scale(0.25) and Scale(0.25).label == "scale:0.25" and Scale(2.0).label == "scale:2"
    assert parse_pattern(Scale(1 / 3).label) == Scale(1 / 3)  # an odd τ round-trips exactly
    assert parse_pattern("temperature:2") == Scale(2.0)
    for bad, needle in (("scale", "needs τ"), ("scale:x", "must be a number"), ("scale:1,2", "at most 1")):
        with pytest.raises(ValueError, match=needle):
            parse_pattern(bad)
    for bad in ("scale:0", "scale:-1", "scale:100", "scale:nan", "scale:inf"):
        with pytest.raises(ValueError, match=r"τ must lie in \(0, 64\]"):
            check_pattern(parse_pattern(bad), 10, 4)


def test_entropy_top1_and_the_line_by_hand():
    rows = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [1 / 3, 1 / 3, 1 / 3]])
    torch.testing.assert_close(row_entropy(rows), torch.tensor([0.0, np.log(2), np.log(3)], dtype=torch.float64))
    a = torch.tensor([[0.0, 2.0], [3.0, 1.0], [1.0, 5.0]])
    b = torch.tensor([[0.0, 1.0], [0.0, 1.0], [1.0, 2.0]])
    assert float(top1_kept(a, b)) == pytest.approx(2 / 3)
    import pandas as pd

    line = scale_line(pd.DataFrame({"tau": [0.25, 4.0], "entropy": [2.0, 0.5], "kl": [0.1, 0.9], "top1_kept": [0.9, 0.25]}), 64)
    assert "2.00 to 0.50 nats" in line and "25%" in line and "√64 ≈ 8.0" in line and "past the right end" in line


# -- parameters wider than the text --------------------------------------------------------------------
SATURATING = ["window:4096", "window:4096,causal", "topk:999", "svd:999", "block:999", "linformer:999", "strided:999", "fixed:999,1"]
SATURATING += ["global:2,999", "global:999,1", "bigbird:999,0,0", "bigbird:1,0,999", "recurrence:999", "recurrence:4,99", "dilated:999,1"]


@pytest.mark.parametrize("label", SATURATING)
def test_parameters_wider_than_the_text_are_full_attention(llama, label):
    """Accepted, said to cover the whole text, KL 0 — and really full attention: imposing it reproduces the model."""
    pattern = parse_pattern(label)
    enc, _ = tokenize(llama, [TEXT])
    n = enc["input_ids"].shape[1]
    check_pattern(pattern, n, llama.spec.n_heads)
    assert saturation(pattern, n, llama.spec.n_heads, causal=True) == COVERS
    with torch.inference_mode():
        full = llama.model(**enc, use_cache=False).logits
        with imposing(llama, pattern):
            imposed = llama.model(**enc, use_cache=False).logits
    torch.testing.assert_close(imposed, full, atol=1e-4 * float(full.abs().max()), rtol=0)
    effect = lab_effect(llama, TEXT, pattern)
    assert effect.kl == 0.0 and effect.top1_kept == 1.0 and effect.saturated == COVERS
    assert f"{pattern.label} covers the whole text ({n} tokens)" in effect.note


def test_what_saturates_depends_on_the_text_and_the_mask():
    assert saturation(parse_pattern("window:10"), 10, 4) == COVERS and saturation(parse_pattern("window:9"), 10, 4) is None
    assert saturation(parse_pattern("window:99,causal"), 10, 4) is None  # an encoder still sees to the right
    assert saturation(parse_pattern("recurrence:4,2"), 12, 4, causal=True) == COVERS  # 3 segments, 2 remembered
    assert saturation(parse_pattern("recurrence:4,2"), 12, 4) is None  # bidirectional: never looks ahead a segment
    assert saturation(parse_pattern("kv:4"), 10, 4) and saturation(parse_pattern("kv:2"), 10, 4) is None
    assert saturation(parse_pattern("scale:1"), 10, 4) and saturation(parse_pattern("scale:2"), 10, 4) is None
    assert saturation(parse_pattern("dilated:99,2"), 10, 4) is None and saturation(parse_pattern("performer:4096"), 10, 4) is None
    for bad in ("window:0", "topk:-1", "recurrence:0", "recurrence:2,-1", "global:-1,2", "bigbird:2,1,-1"):
        with pytest.raises(ValueError, match="at least"):
            check_pattern(parse_pattern(bad), 10, 4)


def test_sweeps_and_tables_accept_saturation(llama):
    sweep = lab_sweep(llama, TEXT, "recurrence:2")
    assert sweep["value"].iloc[-1] >= len(tokenize(llama, [TEXT])[0]["input_ids"][0]) and sweep["kl"].iloc[-1] == 0.0
    table, note = lab_table(llama, TEXT, ["window:4096", "window:2"])
    assert note is None and table["covers_whole_text"].tolist() == [True, False] and table["kl"].iloc[0] == 0.0


def test_cli_lab_accepts_a_window_wider_than_the_text(tmp_path, capsys):
    import pandas as pd

    lm = tiny.build("llama_gqa")
    directory = tmp_path / "llama"
    lm.model.save_pretrained(directory)
    lm.tokenizer.save_pretrained(directory)
    out = tmp_path / "lab.csv"
    argv = ["lab", "--model", str(directory), "--text", TEXT, "--pattern", "window:4096", "--pattern", "recurrence:3"]
    assert cli.main([*argv, "--pattern", "scale:2", "--out", str(out)]) == 0, capsys.readouterr().err
    table = pd.read_csv(out)
    assert table["pattern"].tolist() == ["window:4096", "recurrence:3", "scale:2"]
    assert table["kl"].iloc[0] == 0.0 and bool(table["covers_whole_text"].iloc[0]) and table["kl"].iloc[1] > 0
    assert 0 <= table["top1_kept"].iloc[2] <= 1


# -- encoder-decoder models: the encoder's self-attention gets the pattern -------------------------------
@pytest.fixture(scope="module")
def t5():
    from tests.tiny import tiny_t5

    return tiny_t5()


TARGET = "The cat saw the mouse."


def test_encoder_decoder_gets_the_pattern_on_its_encoder_only(t5):
    """Imposed on the whole forward = imposed on the encoder alone, the decoder then run untouched on its output."""
    enc, _ = tokenize(t5, [TEXT])
    dec, _ = tokenize(t5, [TARGET])
    with torch.inference_mode():
        full = t5.model(**enc, decoder_input_ids=dec["input_ids"], use_cache=False).logits
        with imposing(t5, "full"):
            same = t5.model(**enc, decoder_input_ids=dec["input_ids"], use_cache=False).logits
        with imposing(t5, "window:2"):
            changed = t5.model(**enc, decoder_input_ids=dec["input_ids"], use_cache=False).logits
            encoded = t5.model.encoder(**enc)
        reference = t5.model(
            encoder_outputs=encoded, attention_mask=enc["attention_mask"], decoder_input_ids=dec["input_ids"], use_cache=False
        ).logits
    scale = float(full.abs().max())
    torch.testing.assert_close(same, full, atol=2e-5 * scale, rtol=0)  # T5's relative-position bias is kept
    torch.testing.assert_close(changed, reference, atol=2e-5 * scale, rtol=0)
    assert not torch.allclose(changed, full, atol=1e-4)


def test_the_lab_additions_run_on_t5(t5):
    with pytest.raises(ValueError, match="give the decoder's text"):
        lab_effect(t5, TEXT, "recurrence:3")
    effect = lab_effect(t5, TEXT, "recurrence:3", target=TARGET)
    assert effect.kl > 0 and 0 <= effect.top1_kept <= 1 and effect.how.startswith("its banded-block mask")
    wide = lab_effect(t5, TEXT, "window:4096", target=TARGET)
    assert wide.kl == 0.0 and wide.saturated == COVERS
    sweep = lab_scale(t5, TEXT, taus=(0.5, 1.0, 2.0), target=TARGET)
    summary = sweep.summary.set_index("tau")
    assert summary.loc[1.0, "kl"] < 1e-5 and summary.loc[2.0, "kl"] > 0
    assert sorted(sweep.entropy["layer"].unique()) == list(range(t5.spec.n_layers))  # the encoder's layers
    table, note = lab_table(t5, TEXT, ["scale:2", "recurrence:3,2"], target=TARGET)
    assert note is None and (table["coverage"] < 1).all()
