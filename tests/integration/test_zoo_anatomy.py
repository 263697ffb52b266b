"""Anatomy over the zoo: for every architecture tests/zoo.py can build tiny, the parameter total is sum(p.numel()),
and the norm placement and positional scheme ``models.anatomy`` reads equal independent references:

- norm placement: forward hooks on the test's own model record every norm's output; Post-LN when block 0's output
  (the second hidden state) is, row for row, one of them;
- positions: a repeated token's layer-0 states differ by position only if positions are added to the input
  (absolute); the position part is the same under two random initialisations only if it is a fixed formula
  (sinusoidal), else learned. Models without absolute positions are labelled by hand from their papers and model
  files below (rotary unless listed).
"""

from __future__ import annotations

import pytest
import torch

from attnscope.models.anatomy import norm_placement, parameter_counts, positional_scheme
from tests import zoo

pytestmark = pytest.mark.slow

# Not absolute: what each model's paper / model file uses (every other architecture without absolute positions is rotary).
NOT_ABSOLUTE = {
    "bloom": "alibi",  # Le Scao et al. 2022: ALiBi, built in the model file (no config switch)
    "mpt": "alibi",  # attn_config.alibi
    "cpmant": "relative buckets",  # CpmAntSegmentPositionEmbedding: T5-style buckets
    "inkling_text": "relative buckets",  # a learned bias per backward distance, mixed per token (InklingRelativeLogits)
    "inkling2_text": "relative buckets",
    "falcon_mamba": "none",  # state-space models: order comes from the recurrence
    "mamba": "none",
    "rwkv": "none",
    "xlstm": "none",
    "jamba": "none",  # Lieber et al. 2024: no explicit positions, the Mamba layers carry order
    "granitemoehybrid": "none",  # position_embedding_type None: NoPE attention beside Mamba-2
    "nemotron_h": "none",  # attention without RoPE beside Mamba-2
    "kimi_linear": "none",  # NoPE multi-head latent attention beside linear attention
    "funnel": "sinusoidal",  # Dai et al. 2020: Transformer-XL's relative sinusoidal encodings inside attention
}
# Absolute positions on the input and a relative-position bias in attention: reported by the relative bias.
BOTH = {"mpnet": "relative buckets", "prophetnet": "relative buckets"}
# Their first hidden state is the first block's output, not the embeddings (the state-space stack appends after
# each block), so the layer-0 probe cannot see whether positions were added: the hand label above is the reference.
FIRST_STATE_AFTER_A_BLOCK = {"falcon_mamba", "mamba", "rwkv"}
# Funnel pools the sequence between blocks, so its hidden states are not one block's output each (load refuses it).
NO_BLOCK_STATES = {"funnel"}


def _forward(model, ids):
    extra = {"use_cache": False} if model.config.model_type in zoo.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES else {}
    with torch.inference_mode():
        return model(input_ids=ids, output_hidden_states=True, **extra)


def block_output_is_a_norm_output(model, ids) -> tuple[bool, tuple]:
    outputs, hooks = [], []

    def keep(module, args, out):
        out = out[0] if isinstance(out, tuple) else out
        if isinstance(out, torch.Tensor):
            outputs.append(out.detach().clone())

    for module in model.modules():
        if "norm" in type(module).__name__.lower() and not any(True for c in module.children() for _ in c.parameters()):
            hooks.append(module.register_forward_hook(keep))
    try:
        hidden = _forward(model, ids).hidden_states
    finally:
        for hook in hooks:
            hook.remove()
    h = hidden[1].reshape(-1, hidden[1].shape[-1]).float()
    for out in outputs:
        if out.shape[-1] == h.shape[-1]:
            gap = torch.cdist(h, out.reshape(-1, out.shape[-1]).float(), compute_mode="donot_use_mm_for_euclid_dist").min(1).values
            if bool((gap <= 1e-5 * h.norm(dim=-1).clamp(min=1)).all()):
                return True, hidden
    return False, hidden


def reference_positions(model_type: str, model) -> str:
    ids = torch.full((1, 10), 7)  # one token repeated: only positions tell the rows apart
    first = _forward(model, ids).hidden_states[0][0].float()  # [n, d] the layer-0 states
    if model_type in FIRST_STATE_AFTER_A_BLOCK or torch.allclose(first, first[:1].expand_as(first), atol=1e-6, rtol=1e-5):
        return NOT_ABSOLUTE.get(model_type, "rotary")
    if model_type in BOTH:
        return BOTH[model_type]
    other = _forward(zoo.build(model_type, seed=1), ids).hidden_states[0][0].float()
    moved, moved_other = first - first[:1], other - other[:1]  # the position part (the token part cancels)
    return "sinusoidal" if torch.allclose(moved, moved_other, atol=1e-5, rtol=1e-4) else "learned absolute"


def buildable():
    found = []
    for model_type in zoo.architectures():
        try:
            zoo.tiny_config(model_type)
        except Exception:  # noqa: BLE001, S112 - the zoo's own "not buildable" cases
            continue
        found.append(model_type)
    return found


@pytest.fixture(scope="module")
def results(zoo_shelf):
    rows = []
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12, 13, 14]])
    for model_type in buildable():
        try:
            model = zoo_shelf.model(model_type)  # built once per session, shared with test_zoo.py
        except Exception:  # noqa: BLE001, S112 - not buildable tiny (tests/zoo.py says why)
            continue
        expected_norm, hidden = block_output_is_a_norm_output(model, ids)
        got_norm = norm_placement(model, hidden)
        scheme, evidence = positional_scheme(model)
        config = model.config.get_text_config()
        heads = getattr(config, "num_attention_heads", None) or zoo.HEADS
        counts, _ = parameter_counts(model, heads, getattr(config, "num_key_value_heads", None) or heads, zoo.HIDDEN // zoo.HEADS)
        rows.append(
            {
                "model_type": model_type,
                "norm": got_norm.placement,
                "expected_norm": "post" if expected_norm else "pre",
                "norm_evidence": got_norm.evidence,
                "positional": scheme,
                "expected_positional": reference_positions(model_type, model),
                "positional_evidence": evidence,
                "total": counts["total"],
                "numel": sum(p.numel() for p in model.parameters()),
            }
        )
    return rows


def test_the_zoo_was_really_walked(results):
    assert len(results) >= 150
    assert {r["norm"] for r in results} == {"pre", "post"}
    assert {r["positional"] for r in results} == {"learned absolute", "sinusoidal", "rotary", "alibi", "relative buckets", "none"}


def test_parameter_totals_are_sum_numel(results):
    wrong = [r["model_type"] for r in results if r["total"] != r["numel"]]
    assert not wrong, "\n".join(wrong)


def test_norm_placement_equals_the_hooks_on_every_zoo_model(results):
    wrong = [
        f"{r['model_type']}: {r['norm']} ({r['norm_evidence']}), hooks say {r['expected_norm']}"
        for r in results
        if r["model_type"] not in NO_BLOCK_STATES and r["norm"] != r["expected_norm"]
    ]
    assert not wrong, "\n".join(wrong)


def test_positional_scheme_equals_the_reference_on_every_zoo_model(results):
    wrong = [
        f"{r['model_type']}: {r['positional']} ({r['positional_evidence']}), reference {r['expected_positional']}"
        for r in results
        if r["positional"] != r["expected_positional"]
    ]
    assert not wrong, "\n".join(wrong)
