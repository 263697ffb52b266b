"""Value zeroing against the eager model edited directly; the gated block hooks change nothing unless asked."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from transformers import T5EncoderModel

from attnscope.models import from_model, run
from attnscope.models.forward import tokenize
from attnscope.models.hook import pinned_blocks
from attnscope.models.value_zeroing import value_zeroing
from tests import tiny
from tests.helpers import in_threads

TEXT = "The mouse ran, the cat waited under the table."
# Where each architecture computes its value vectors: (module name suffix, slice of its output that is the value).
VALUE_PROJECTIONS = {
    "v_proj": None,  # Llama, Qwen2
    "attention.self.value": None,  # BERT
    "SelfAttention.v": None,  # T5
    "attn.c_attn": "third",  # GPT-2: one fused projection [q | k | v]
}


def t5_encoder():
    torch.manual_seed(0)
    config = tiny.config_for("t5_encoder", vocab_size=49152, initializer_factor=1.0)  # the BPE vocabulary; q, k set below
    model = T5EncoderModel(config)
    with torch.no_grad():  # peaked maps, as tests/tiny.py does for the other families
        for name, param in model.named_parameters():
            if param.ndim == 2 and name.endswith(("q.weight", "k.weight")):
                param.normal_(0.0, 0.3)
    return from_model(model, tiny.bpe_tokenizer(), name="tiny-t5-encoder")


@pytest.fixture(scope="module", params=["bert", "gpt2", "llama_gqa", "t5_encoder"])
def lm(request):
    return t5_encoder() if request.param == "t5_encoder" else tiny.build(request.param)


def unhooked_copy(lm) -> torch.nn.Module:
    """The model as transformers builds it: a deep copy with attnscope's block hooks removed, on eager attention."""
    model = copy.deepcopy(lm.model)
    for module in model.modules():
        module._forward_pre_hooks.clear()
        module._forward_pre_hooks_with_kwargs.clear()
        module._forward_hooks.clear()
    model.set_attn_implementation("eager")
    return model


def base_of(lm, model):
    return model.base_model if lm.spec.kind == "decoder" else model


def block_calls(lm, model, enc) -> dict[str, tuple]:
    """Each block's (args, kwargs) in a clean forward of ``model``: its clean input, as the model passes it."""
    calls, handles = {}, []
    for name in lm.layout.blocks:

        def keep(module, args, kwargs, name=name):
            calls[name] = (args, kwargs)

        handles.append(model.get_submodule(name).register_forward_pre_hook(keep, with_kwargs=True))
    try:
        with torch.inference_mode():
            base_of(lm, model)(**enc, **({"use_cache": False} if lm.spec.kind == "decoder" else {}))
    finally:
        for handle in handles:
            handle.remove()
    return calls


def block_output(block, args, kwargs, zero_key: int | None) -> torch.Tensor:
    """The block called on its clean input, with token ``zero_key``'s value vector zeroed in every head."""
    handles = []
    if zero_key is not None:
        for suffix, part in VALUE_PROJECTIONS.items():
            for name, module in block.named_modules():
                if name.endswith(suffix):

                    def zero(module, inputs, output, part=part):
                        output = output.clone()
                        width = output.shape[-1] // 3 if part == "third" else 0
                        output[:, zero_key, 2 * width :] = 0
                        return output

                    handles.append(module.register_forward_hook(zero))
        assert handles, "no value projection found"
    try:
        with torch.inference_mode():
            out = block(*args, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return (out[0] if isinstance(out, tuple) else out)[0].double()  # [n, d]


def test_value_zeroing_equals_zeroing_the_value_projection_of_the_eager_model(lm):
    got = value_zeroing(lm, TEXT, batch_size=4)  # several chunks of keys
    enc, _ = tokenize(lm, TEXT)
    model = unhooked_copy(lm)
    calls = block_calls(lm, model, dict(enc))
    n = enc["input_ids"].shape[1]
    blocks = sorted(lm.layout.blocks.items(), key=lambda item: item[1])
    assert got.shape == (len(blocks), n, n)
    for name, index in blocks:
        block = model.get_submodule(name)
        args, kwargs = calls[name]
        clean = block_output(block, args, kwargs, None)
        raw = np.zeros((n, n))
        for key in range(n):
            zeroed = block_output(block, args, kwargs, key)
            raw[:, key] = (1 - torch.nn.functional.cosine_similarity(clean, zeroed, dim=-1)).numpy()
        expected = raw / raw.sum(-1, keepdims=True)
        np.testing.assert_allclose(got[index], expected, atol=2e-5, err_msg=f"block {index}")
        np.testing.assert_allclose(got[index].sum(-1), 1.0, atol=1e-5)
        if lm.spec.kind == "decoder":
            assert np.all(np.triu(got[index], k=1) == 0)  # a later key's value cannot reach an earlier query
    assert got.max() > 0.2  # not near-uniform: a wrong key or layer could not pass


def test_a_plain_run_is_unchanged_by_the_block_hooks(lm):
    """Bitwise: the hooked shared model and a copy without the hooks give the same hidden states."""
    assert lm.layout.blocks
    hooked = any(len(m._forward_pre_hooks) for m in lm.model.modules())
    assert hooked
    rec = run(lm, [TEXT, "A cat."])
    model = copy.deepcopy(lm.model)  # same kernel (the hook's), hooks removed
    for module in model.modules():
        module._forward_pre_hooks.clear()
        module._forward_pre_hooks_with_kwargs.clear()
        module._forward_hooks.clear()
    with torch.inference_mode():
        out = base_of(lm, model)(**rec.inputs, output_hidden_states=True, **({"use_cache": False} if lm.spec.kind == "decoder" else {}))
    for layer, state in enumerate(out.hidden_states):
        assert torch.equal(state, rec.hidden_states[layer]), layer


def test_pinning_gives_every_row_row_zeros_input(lm):
    enc, _ = tokenize(lm, TEXT)
    ids = torch.cat([enc["input_ids"], enc["input_ids"].flip(-1)])  # two rows, same length, different tokens
    extra = {"use_cache": False} if lm.spec.kind == "decoder" else {}
    with torch.inference_mode(), pinned_blocks(lm.module_names) as outputs:
        base_of(lm, lm.model)(input_ids=ids, **extra)
    assert sorted(outputs) == list(range(lm.spec.n_layers))
    for hidden in outputs.values():  # every block started from row 0's input: the rows' outputs agree
        torch.testing.assert_close(hidden[1], hidden[0], rtol=0, atol=1e-5)
    with torch.inference_mode(), pinned_blocks(lm.module_names, pin=False) as outputs:
        base_of(lm, lm.model)(input_ids=ids, **extra)
    assert not torch.allclose(outputs[0][1], outputs[0][0])


def test_value_zeroing_and_plain_runs_in_two_threads_do_not_disturb_each_other():
    lm = tiny.build("llama_gqa")
    alone_vz = value_zeroing(lm, TEXT, batch_size=3)
    alone_run = run(lm, "A cat sat on the mat.").hidden(lm.spec.n_layers)
    results_vz, results_run = in_threads(
        (lambda: value_zeroing(lm, TEXT, batch_size=3), 4),
        (lambda: run(lm, "A cat sat on the mat.").hidden(lm.spec.n_layers), 12),
    )
    for got in results_vz:
        np.testing.assert_array_equal(got, alone_vz)
    for got in results_run:
        np.testing.assert_array_equal(got, alone_run)


def test_bad_inputs_are_one_clear_error():
    lm = tiny.build("gpt2")
    with pytest.raises(ValueError, match="batch size"):
        value_zeroing(lm, TEXT, batch_size=1)
    with pytest.raises(ValueError, match="empty"):
        value_zeroing(lm, "  ")
