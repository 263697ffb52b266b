"""generate(): maps recorded step by step against the KV cache equal one teacher-forced pass; the logit lens."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attnscope.models.generation import generate
from tests import tiny
from tests.helpers import max_map_diff, teacher_forced

PROMPT = "The mouse ran, the cat"


@pytest.fixture(scope="module", params=["llama_gqa", "llama_mqa", "gpt2"])
def lm(request):
    return tiny.build(request.param)  # initializer_range 0.3: peaked maps, a decisive next-token distribution


@pytest.mark.parametrize("sample", [False, True])
def test_step_maps_equal_a_teacher_forced_pass(lm, sample):
    rec = generate(lm, PROMPT, max_new_tokens=6, do_sample=sample, seed=1 if sample else None, stop_at_eos=False)
    gen = rec.generation
    n = rec.input_ids.shape[1]
    assert gen.recording == "cache" and len(gen.positions) == 6 and gen.positions[-1] == n - 1
    assert list(rec.generated) == list(range(gen.prompt_length, n))
    ref = teacher_forced(lm, rec)
    assert max_map_diff(lm, rec, ref) <= 1e-4
    # causal: nothing recorded lets a prompt token see a generated one
    assert np.allclose(np.triu(rec.attention(1, 0), 1), 0)
    if not sample:  # greedy: each token is the argmax of the teacher-forced logits before it
        logits = ref.logits(lm)
        assert np.array_equal(logits[gen.prompt_length - 1 : -1].argmax(-1), gen.token_ids)


def test_the_same_seed_gives_the_same_tokens_and_the_global_rng_is_untouched(lm):
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = generate(lm, PROMPT, max_new_tokens=8, do_sample=True, seed=7, stop_at_eos=False)
    after = torch.rand(1)
    b = generate(lm, PROMPT, max_new_tokens=8, do_sample=True, seed=7, stop_at_eos=False)
    c = generate(lm, PROMPT, max_new_tokens=8, do_sample=True, seed=8, stop_at_eos=False)
    assert torch.equal(before, after)
    assert a.generation.tokens == b.generation.tokens
    assert a.generation.tokens != c.generation.tokens


def test_step_distributions(lm):
    rec = generate(lm, PROMPT, max_new_tokens=4, do_sample=True, seed=0, top_k=3, temperature=0.7, stop_at_eos=False)
    gen = rec.generation
    # top-k 3: every drawn token is among the step's 3 candidates, whose probabilities sum to 1
    assert all(t in row[:3] for t, row in zip(gen.token_ids, gen.top_ids))
    np.testing.assert_allclose(gen.top_probs[:, :3].sum(-1), 1, atol=1e-5)
    assert np.all(gen.top_probs[:, 3:] == 0)
    assert np.all(gen.entropy <= np.log(3) + 1e-5)
    frame = gen.frame()
    assert list(frame["position"]) == list(gen.positions) and list(frame["token"]) == gen.tokens


def test_sliding_window_cache_falls_back_to_one_teacher_forced_pass():
    lm = tiny.build("mistral_window")
    rec = generate(lm, PROMPT, max_new_tokens=6, stop_at_eos=False)
    ref = teacher_forced(lm, rec)
    assert max_map_diff(lm, rec, ref) <= 1e-4
    n = rec.input_ids.shape[1]
    assert n > 4 and rec.generation.recording in ("cache", "teacher-forced")
    assert rec.attention(0, 0)[n - 1, : n - 4].max() == 0  # the window: the last query sees only 4 keys


def test_logit_lens_last_layer_is_the_models_own_prediction(lm):
    rec = generate(lm, PROMPT, max_new_tokens=3, stop_at_eos=False)
    lens = rec.logit_lens(lm, top_k=4)
    n, layers = rec.input_ids.shape[1], lm.spec.n_layers
    assert len(lens) == n * (layers + 1) and set(lens["layer"]) == set(range(layers + 1))
    last = lens[lens["layer"] == layers]
    with torch.inference_mode():  # the reference: the model's own forward, not attnscope's readout
        probs = torch.softmax(lm.model(torch.as_tensor(rec.input_ids)).logits[0].float(), -1).numpy()
    np.testing.assert_allclose(last["top_prob"].to_numpy(), probs.max(-1), atol=1e-5)
    ids = rec.input_ids[0]
    np.testing.assert_allclose(last["next_prob"].to_numpy()[:-1], probs[np.arange(n - 1), ids[1:]], atol=1e-5)
    ranks = (probs[np.arange(n - 1)] > probs[np.arange(n - 1), ids[1:]][:, None]).sum(-1) + 1
    assert np.array_equal(last["next_rank"].to_numpy()[:-1], ranks)
    # greedy: each generated token is the lens's top choice at the last layer, one position earlier
    gen = rec.generation
    assert list(last["top_token"].iloc[gen.positions - 1]) == gen.tokens
    assert last["next_rank"].iloc[-1] == 0 and last["next_token"].iloc[-1] == ""


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(max_new_tokens=0), "max_new_tokens must be"),
        (dict(max_new_tokens=500), "positions"),
        (dict(temperature=0.5), "only apply when sampling"),
        (dict(do_sample=True, temperature=0), "temperature must be > 0"),
        (dict(do_sample=True, top_k=0), "top_k must be"),
    ],
)
def test_bad_options_are_one_clear_error(lm, kwargs, match):
    with pytest.raises(ValueError, match=match):
        generate(lm, PROMPT, **kwargs)


def test_empty_prompt_and_encoder_are_refused(lm):
    with pytest.raises(ValueError, match="empty"):
        generate(lm, "   ")
    with pytest.raises(ValueError, match="needs a decoder"):
        generate(tiny.build("bert"), PROMPT)


def test_token_cap_cuts_short_and_says_so(lm, monkeypatch):
    monkeypatch.setenv("ATTNSCOPE_MAX_TOKENS", "12")
    rec = generate(lm, PROMPT, max_new_tokens=20, stop_at_eos=False)
    assert rec.input_ids.shape[1] == 12 and rec.generation.cut_short and "token cap" in rec.generation.stopped


def test_seeded_samples_drawn_at_once_equal_the_same_seeds_drawn_alone(lm):
    """Sampling reads torch's one global generator: concurrent seeded generations must not shift each other's draws."""
    from concurrent.futures import ThreadPoolExecutor

    def draw(seed):
        rec = generate(lm, PROMPT, max_new_tokens=12, do_sample=True, seed=seed, temperature=3.0, stop_at_eos=False)
        return rec.generation.tokens

    alone = {seed: draw(seed) for seed in range(8)}
    assert len({tuple(tokens) for tokens in alone.values()}) > 1  # the seeds do draw differently
    for _ in range(3):
        with ThreadPoolExecutor(max_workers=8) as pool:
            together = dict(zip(range(8), pool.map(draw, range(8))))
        assert together == alone
