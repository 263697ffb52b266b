"""The intervention hook (models.hook.intervening): sees every attention call, may replace its output."""

from __future__ import annotations

import pytest
import torch

from attnscope.models import run
from attnscope.models.forward import tokenize
from attnscope.models.hook import intervening, recording
from tests import tiny

TEXT = "The mouse ran, the cat waited."


@pytest.fixture(scope="module", params=["llama_gqa", "bert"])
def lm(request):
    return tiny.build(request.param)


def logits(lm, edits=None):
    enc, _ = tokenize(lm, [TEXT])
    with torch.inference_mode():
        if edits is None:
            return lm.model(**enc).last_hidden_state if lm.spec.kind == "encoder" else lm.model(**enc).logits
        with intervening(edits, lm.module_names):
            out = lm.model(**enc)
    return out.last_hidden_state if lm.spec.kind == "encoder" else out.logits


def test_keeping_every_output_is_bit_identical(lm):
    seen = []

    def keep(call):
        seen.append((call.layer, call.order, call.module, tuple(call.output.shape)))
        return call.output.clone()

    assert torch.equal(logits(lm, dict.fromkeys(range(lm.spec.n_layers), keep)), logits(lm))
    assert [s[0] for s in seen] == list(range(lm.spec.n_layers))  # block index from the module name
    assert [s[1] for s in seen] == list(range(lm.spec.n_layers))
    n = len(tokenize(lm, [TEXT])[0]["input_ids"][0])
    assert {s[3][:3] for s in seen} == {(1, n, lm.spec.n_heads)}


def test_zeroing_one_head_equals_zeroing_its_slice_of_the_output_projection(lm):
    """Knocking a head out through the hook = removing its columns from the layer's output projection."""
    layer, head = 1, 2
    modules = {}

    def knock(call):
        assert call.layer == layer  # an edit sees only the block it is declared for
        modules["name"], modules["d"] = call.module, call.output.shape[-1]
        out = call.output.clone()
        out[:, :, head] = 0
        return out

    hooked = logits(lm, {layer: knock})
    attn, d = lm.model.get_submodule(modules["name"]), modules["d"]
    # The layer's output projection: its input is the heads' outputs side by side (head h = columns h·d..).
    parent = lm.model.get_submodule(modules["name"].rsplit(".", 1)[0])
    candidates = [*attn.named_modules(), *parent.named_modules()]  # llama: o_proj; BERT: attention.output.dense
    proj = next(m for n, m in candidates if n.endswith(("o_proj", "output.dense")) and isinstance(m, torch.nn.Linear))
    saved = proj.weight.detach().clone()
    with torch.no_grad():
        proj.weight[:, head * d : (head + 1) * d] = 0
    try:
        manual = logits(lm)
    finally:
        with torch.no_grad():
            proj.weight.copy_(saved)
    assert not torch.allclose(hooked, logits(lm), atol=1e-4)  # the knockout changed something
    torch.testing.assert_close(hooked, manual, atol=1e-5, rtol=1e-5)


def test_wrong_shape_is_refused(lm):
    with pytest.raises(ValueError, match="intervention returned shape"):
        logits(lm, {0: lambda call: call.output[:, :1]})


def test_edits_are_declared_by_block_index(lm):
    with pytest.raises(TypeError, match="block index"):
        logits(lm, lambda call: None)


def test_nested_edits_compose_and_an_inner_block_wins(lm):
    seen = []
    outer = {0: lambda call: seen.append(("outer", call.layer)), 1: lambda call: seen.append(("outer", call.layer))}
    inner = {1: lambda call: seen.append(("inner", call.layer))}
    enc, _ = tokenize(lm, [TEXT])
    with torch.inference_mode(), intervening(outer, lm.module_names), intervening(inner):
        lm.model(**enc)
    assert seen == [("outer", 0), ("inner", 1)]


def test_recording_inside_an_intervention_keeps_values(lm):
    with intervening({0: lambda call: None}, lm.module_names), recording(lm.module_names, keep_values=True) as rec:
        enc, _ = tokenize(lm, [TEXT])
        with torch.inference_mode():
            lm.model(**enc)
    assert len(rec.layers) == lm.spec.n_layers
    value = rec.layers[0].value
    assert value is not None and value.shape[1] == lm.spec.n_kv_heads and value.shape[2] == len(enc["input_ids"][0])
    assert run(lm, TEXT).layers[0].value is None  # a plain run keeps no values
