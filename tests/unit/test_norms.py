"""Value-weighted norms (Kobayashi et al. 2020) against a direct computation from eager's weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attnscope.models import run
from attnscope.models.norms import output_projection
from tests import tiny
from tests.parity import eager_reference, strip

TEXT = "The mouse ran, the cat waited under the table."


@pytest.fixture(scope="module", params=["bert", "gpt2", "llama_gqa", "qwen2", "distilbert"])
def lm(request):
    return tiny.build(request.param)


def test_norm_map_equals_alpha_times_the_written_vector(lm):
    rec = run(lm, [TEXT, "A cat."], padding_side="right", values=True)
    eager, _ = eager_reference(lm, rec)
    spec = lm.spec
    for layer in range(spec.n_layers):
        value = rec.layers[layer].value  # [B, KV, n, dv]
        dv = value.shape[-1]
        w_o = output_projection(lm.model, rec.layers[layer].module, spec.n_heads * dv).float()  # [d_model, H·dv]
        for batch in (0, 1):
            alpha = strip(eager[layer], rec, batch)  # [H, m, m]
            real = rec.real_index(batch)
            for head in range(spec.n_heads):
                v = value[batch, head // spec.kv_group][real].float()  # [m, dv]
                written = v @ w_o[:, head * dv : (head + 1) * dv].T  # [m, d_model]: W_O^h v_j
                direct = alpha[head] * written.norm(dim=-1).numpy()[None, :]  # ‖α_ij W_O^h v_j‖
                np.testing.assert_allclose(rec.attention(layer, head, batch, measure="norm"), direct, rtol=1e-4, atol=1e-5)
            # what each head writes: ‖W_O^h Σ_j α_ij v_j‖
            outputs = rec.head_outputs(layer, batch)
            for head in range(spec.n_heads):
                v = value[batch, head // spec.kv_group][real].float()
                o = torch.from_numpy(alpha[head]) @ v
                expected = (o @ w_o[:, head * dv : (head + 1) * dv].T).norm(dim=-1).numpy()
                np.testing.assert_allclose(outputs[head], expected, rtol=1e-4, atol=1e-5)


def test_norm_stats_are_shares(lm):
    rec = run(lm, TEXT, values=True)
    stats = rec.norm_stats()
    assert len(stats) == lm.spec.n_layers * lm.spec.n_heads
    for col in ("first_token_norm", "prev_token_norm", "special_token_norm", "output_share"):
        assert stats[col].between(0, 1).all()
    per_layer = stats.groupby("layer")["output_share"].sum()
    np.testing.assert_allclose(per_layer.to_numpy(), 1.0, atol=1e-6)  # each query's shares sum to 1 over a layer's heads
    # a head whose output norm is zero has zero share: consistent ordering within layers
    assert (stats["output_norm"] > 0).all()


def test_norms_need_values_and_the_hook(lm):
    with pytest.raises(ValueError, match="values=True"):
        run(lm, TEXT).attention(0, 0, measure="norm")
    with pytest.raises(ValueError, match="measure must be"):
        run(lm, TEXT).attention(0, 0, measure="mass")


@pytest.mark.parametrize("path", ["captured", "recomputed"])
def test_norm_stats_equal_a_direct_computation(lm, path):
    """Every column of ``norm_stats``, on both paths (all layers at once from the captured weights, or layer by
    layer over recomputed blocks), against the definitions over eager's weights and the output projection."""
    rec = run(lm, [TEXT, "A cat."], padding_side="right", values=True, path=path)
    assert rec.path == path
    eager, _ = eager_reference(lm, rec)
    spec = lm.spec
    for batch in (0, 1):
        stats = rec.norm_stats(batch)
        special = rec.token_classes(batch)[0]
        real = rec.real_index(batch)
        m = len(real)
        for layer in range(spec.n_layers):
            value = rec.layers[layer].value
            dv = value.shape[-1]
            w_o = output_projection(lm.model, rec.layers[layer].module, spec.n_heads * dv).double()
            alpha = strip(eager[layer], rec, batch).astype(np.float64)  # [H, m, m]
            outputs = []
            for head in range(spec.n_heads):
                v = value[batch, head // spec.kv_group][real].double()  # [m, dv]
                w_h = w_o[:, head * dv : (head + 1) * dv]
                written = (v @ w_h.T).norm(dim=-1).numpy()  # ‖W_O^h v_j‖
                shares = alpha[head] * written[None, :]
                shares = shares / shares.sum(-1, keepdims=True)
                row = stats[(stats["layer"] == layer) & (stats["head"] == head)].iloc[0]
                assert row["first_token_norm"] == pytest.approx(shares[1:, 0].mean(), abs=1e-5)
                assert row["prev_token_norm"] == pytest.approx(shares[np.arange(1, m), np.arange(m - 1)].mean(), abs=1e-5)
                assert row["special_token_norm"] == pytest.approx(shares[:, special].sum(-1).mean(), abs=1e-5)
                outputs.append(((torch.from_numpy(alpha[head]) @ v) @ w_h.T).norm(dim=-1).numpy())  # ‖W_O^h o_i‖
            outputs = np.stack(outputs)  # [H, m]
            rows = stats[stats["layer"] == layer].sort_values("head")
            np.testing.assert_allclose(rows["output_norm"], outputs.mean(1), rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(rows["output_share"], (outputs / outputs.sum(0)).mean(1), rtol=1e-4, atol=1e-5)
