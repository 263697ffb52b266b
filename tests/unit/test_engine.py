"""Engine behaviour beyond parity: statistics, concurrency, recorder isolation, bad input."""

import numpy as np
import pandas as pd
import pytest

from attnscope.models import run
from attnscope.models.labels import is_punctuation
from tests.helpers import in_threads
from tests.parity import brute_stats

TEXTS = ["The mouse ate the cheese.", "Click the mouse, then the button."]


def brute_force_stats(rec, layer, head, batch=0):
    special, punct = rec.token_classes(batch)
    return brute_stats(rec.attention(layer, head, batch).astype(np.float64), special, punct)


@pytest.mark.parametrize("path", ["captured", "recomputed"])
@pytest.mark.parametrize("arch", ["bert", "llama_gqa"])
def test_head_stats_equal_brute_force(tiny_factory, arch, path):
    """Both paths: statistics of all layers at once from the captured weights, and per layer from q/k."""
    lm = tiny_factory(arch)
    rec = run(lm, TEXTS, padding_side="left", path=path)
    assert rec.path == path
    assert rec.attention_mask[0].min() == 0 and rec.attention_mask[1].min() == 1  # padded, and not (other code paths)
    for batch in (0, 1):
        stats = rec.head_stats(batch=batch)
        assert len(stats) == lm.spec.n_layers * lm.spec.n_heads
        for row in stats.itertuples():
            expected = brute_force_stats(rec, row.layer, row.head, batch)
            for name, value in expected.items():
                assert getattr(row, name) == pytest.approx(value, abs=1e-5), (name, batch, row.layer, row.head)


def test_stats_stream_in_small_blocks(tiny_factory):
    import torch

    from attnscope.analysis.heads import layer_head_stats

    rec = run(tiny_factory("gpt2"), TEXTS[1])
    layer = rec.layers[1]
    special, punct = rec.token_classes(0)
    args = dict(
        batch=0,
        real_index=torch.from_numpy(rec.real_index(0)),
        special_keys=torch.from_numpy(special),
        punctuation_keys=torch.from_numpy(punct),
    )
    small = layer_head_stats(layer, chunk=2, **args)
    big = layer_head_stats(layer, chunk=512, **args)
    for name in small:
        np.testing.assert_allclose(small[name], big[name], atol=1e-6)


def test_special_tokens_counted_for_encoder(tiny_factory):
    rec = run(tiny_factory("bert"), TEXTS[0])
    special, punct = rec.token_classes(0)
    assert rec.tokens[0][0] == "[CLS]" and rec.tokens[0][-1] == "[SEP]"
    assert special.tolist() == [True] + [False] * (len(special) - 2) + [True]
    assert punct[-2] and not punct[1]


def test_is_punctuation():
    assert is_punctuation(".") and is_punctuation("Ġ,") and is_punctuation("##!")
    assert not is_punctuation("mouse") and not is_punctuation("Ġ") and not is_punctuation("a.")


def test_two_threads_get_their_own_records(tiny_factory):
    lm = tiny_factory("llama_gqa")
    texts = ["The cat sat on the mat.", "A completely different and longer sentence about computers."]
    sequential = [run(lm, t) for t in texts]
    results = in_threads(*[(lambda text=text: run(lm, text), 5) for text in texts])
    for i in range(2):
        for rec in results[i]:
            assert rec.tokens == sequential[i].tokens
            assert len(rec.layers) == lm.spec.n_layers
            for layer in range(lm.spec.n_layers):
                np.testing.assert_array_equal(rec.attention(layer, 1), sequential[i].attention(layer, 1))


def test_no_recording_outside_run(tiny_factory):
    """A forward outside ``run`` records nothing, and one run's recorder is gone after it (no leak)."""
    import torch

    from attnscope.models import hook as recorder

    lm = tiny_factory("gpt2")
    made = []
    real = recorder.Recorder.add

    def counting(self, layer):
        made.append(layer)
        return real(self, layer)

    recorder.Recorder.add = counting
    try:
        with torch.inference_mode():
            lm.model(**lm.tokenizer(["hello"], return_tensors="pt"))
        assert made == []  # the hook ran (the model uses it) but no recorder was active
        run(lm, "hello there")
        assert len(made) == lm.spec.n_layers
        with torch.inference_mode():
            lm.model(**lm.tokenizer(["hello"], return_tensors="pt"))
        assert len(made) == lm.spec.n_layers  # nothing recorded after the run ended
    finally:
        recorder.Recorder.add = real


@pytest.mark.parametrize("texts", ["", "   \n\t", [], ["fine", ""]])
def test_empty_text_is_refused(tiny_factory, texts):
    with pytest.raises(ValueError, match="empty|no text"):
        run(tiny_factory("bert"), texts)


def test_too_long_text_names_the_limit_and_truncates_on_request(tiny_factory):
    lm = tiny_factory("gpt2")  # 128 positions
    long_text = "word " * 300
    with pytest.raises(ValueError, match=r"at most 128.*max_length"):
        run(lm, long_text)
    rec = run(lm, long_text, max_length=64)
    assert len(rec.tokens[0]) == 64
    with pytest.raises(ValueError, match="exceeds"):
        run(lm, long_text, max_length=500)


def test_out_of_range_indices(tiny_factory):
    rec = run(tiny_factory("bert"), TEXTS)
    with pytest.raises(ValueError, match=r"layer 2 out of range.*0\.\.1"):
        rec.attention(2, 0)
    with pytest.raises(ValueError, match=r"head 4 out of range.*0\.\.3"):
        rec.attention(0, 4)
    with pytest.raises(ValueError, match="batch index 2"):
        rec.attention(0, 0, batch=2)
    with pytest.raises(ValueError, match="hidden-state layer 3"):
        rec.hidden(3)
    assert rec.hidden(2).shape == (len(rec.tokens[0]), 32)


def test_include_padding_shape(tiny_factory):
    rec = run(tiny_factory("bert"), TEXTS, padding_side="right")
    full = rec.attention(0, 0, batch=0, include_padding=True)
    n = rec.n_padded
    assert full.shape == (n, n)
    real = rec.real_index(0)
    # the same rows computed over a wider key block: equal to float32 rounding (the kernel may block differently)
    np.testing.assert_allclose(full[np.ix_(real, real)], rec.attention(0, 0, batch=0), rtol=1e-5, atol=1e-7)
    pads = np.setdiff1d(np.arange(n), real)
    assert len(pads) > 0 and np.all(full[np.ix_(real, pads)] == 0)


def test_special_token_mass_counts_cls_sep_bos_eos_only():
    """[UNK] and [MASK] are special to the tokenizer but not the [CLS]/[SEP]/BOS/EOS the statistic names."""
    from tests import tiny

    lm = tiny.build("bert")
    tok = lm.tokenizer
    rec = run(lm, "the [MASK] sat on [UNK] mat")
    assert rec.special_ids == {tok.cls_token_id, tok.sep_token_id}
    special, _ = rec.token_classes()
    tokens = rec.tokens[0]
    assert [t for t, s in zip(tokens, special) if s] == ["[CLS]", "[SEP]"]


def test_head_table_adds_norm_columns_only_where_values_were_kept(tiny_factory):
    """One builder for the Heads page and ``cli.py heads``: weights always, norms where the run kept values."""
    from attnscope.analysis.heads import head_table

    lm = tiny_factory("llama_gqa")
    plain, valued = run(lm, TEXTS[0]), run(lm, TEXTS[0], values=True)
    assert list(head_table(plain).columns) == list(plain.head_stats().columns)
    with_norms = head_table(valued)
    expected = valued.head_stats().merge(valued.norm_stats(), on=["layer", "head"])
    pd.testing.assert_frame_equal(with_norms, expected)
    assert "first_token_norm" in with_norms.columns
    with pytest.raises(ValueError):
        head_table(plain, norms=True)  # asked for norms, but the run kept no values
