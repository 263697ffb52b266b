"""SmolLM2 (GQA, 30 layers): generate's step-by-step maps equal one teacher-forced pass, greedy and sampled."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attnscope.models.forward import record_forward
from attnscope.models.generation import generate

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("sample", [False, True])
def test_smollm2_generation_maps_equal_a_teacher_forced_run(smollm2, sample):
    rec = generate(smollm2, "The mouse ate the cheese, then the cat", max_new_tokens=10, do_sample=sample, seed=3, stop_at_eos=False)
    ids = torch.as_tensor(rec.input_ids)
    ref = record_forward(smollm2, rec.texts, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, "left", True)
    assert rec.generation.recording == "cache" and len(rec.generated) == 10
    worst = max(
        float(np.abs(rec.attention(l, h) - ref.attention(l, h)).max())
        for l in range(smollm2.spec.n_layers)
        for h in range(smollm2.spec.n_heads)
    )
    assert worst <= 1e-4
    if not sample:
        assert np.array_equal(ref.logits(smollm2)[rec.generation.prompt_length - 1 : -1].argmax(-1), rec.generation.token_ids)
    else:
        again = generate(smollm2, "The mouse ate the cheese, then the cat", max_new_tokens=10, do_sample=True, seed=3, stop_at_eos=False)
        assert again.generation.tokens == rec.generation.tokens
