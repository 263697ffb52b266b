"""attnscope.from_model on the user's own model, loaded by accelerate with a device map that offloads layers to disk."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from attnscope import from_model, run
from tests import tiny

TEXT = "The mouse ran to the cheese."


@pytest.fixture(scope="module")
def offloaded(tmp_path_factory):
    """(reference model in memory, the same weights loaded with layers 1.. offloaded to disk)."""
    torch.manual_seed(0)
    config = tiny.config_for("llama_gqa", layers=4)
    reference = AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    root = tmp_path_factory.mktemp("offload")
    reference.save_pretrained(root / "model")
    layer_bytes = sum(p.numel() * 4 for p in reference.model.layers[0].parameters())
    embedding_bytes = reference.model.embed_tokens.weight.numel() * 4
    # room for the embeddings and about one block: accelerate sends the rest to disk
    budget = {"cpu": int(2 * embedding_bytes + 1.5 * layer_bytes)}
    user = AutoModelForCausalLM.from_pretrained(root / "model", device_map="auto", max_memory=budget, offload_folder=str(root / "off"))
    return reference, user


def test_the_device_map_really_offloads(offloaded):
    _, user = offloaded
    placements = set(user.hf_device_map.values())
    assert "disk" in placements and "cpu" in placements, user.hf_device_map


def test_maps_of_an_offloaded_model_are_exact_and_the_model_is_left_as_it_was(offloaded):
    reference, user = offloaded
    tokenizer = tiny.bpe_tokenizer()
    ids = tokenizer(TEXT, return_tensors="pt")
    placement = {name: (p.device, p.dtype) for name, p in user.named_parameters()}
    device_map = dict(user.hf_device_map)
    with torch.no_grad():
        logits_before = user(**ids).logits

    lm = from_model(user, tokenizer, name="offloaded")
    rec = run(lm, TEXT)
    with torch.no_grad():
        eager = reference(**ids, output_attentions=True).attentions  # [layer] -> [1, heads, n, n]
    n_layers, n_heads = reference.config.num_hidden_layers, reference.config.num_attention_heads
    assert lm.spec.n_layers == n_layers and len(rec.tokens[0]) == ids["input_ids"].shape[1]
    worst = max(
        float(np.abs(rec.attention(layer, head) - eager[layer][0, head].numpy()).max())
        for layer in range(n_layers)
        for head in range(n_heads)
    )
    assert worst < 1e-4

    # nothing moved, nothing cast, the device map as it was, and the user's own forward gives the same logits
    assert {name: (p.device, p.dtype) for name, p in user.named_parameters()} == placement
    assert dict(user.hf_device_map) == device_map
    with torch.no_grad():
        logits_after = user(**ids).logits
    assert torch.equal(logits_before, logits_after)
