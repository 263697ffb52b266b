"""Contextual drift on hand-made arrays and tiny random models (analysis.drift, viz.drift)."""

import numpy as np
import pytest

from attnscope.analysis.drift import (
    DEFAULT_CONTEXTS,
    SIMILARITY_COLUMNS,
    anisotropy_baseline,
    baseline_pairs,
    cosine_matrix,
    depth_frame,
    drift,
    find_word,
    layer0_is_static,
    occurrence_frame,
    pair_means,
    parse_contexts,
    pca_2d,
    pca_frame,
    similarity_frame,
    tokens_in_span,
)
from attnscope.models import run
from attnscope.viz.drift import depth_chart, pca_chart, similarity_heatmap
from attnscope.viz.export import chart_bytes

CONTEXTS = ["The cat chased the mouse.", "A mouse ate seeds in the barn.", "Click the mouse button.", "My mouse needs batteries now."]
SENSES = ["animal", "animal", "device", "device"]


# -- parsing and locating ------------------------------------------------------------------------
def test_parse_contexts_labels_and_blank_lines():
    contexts, senses = parse_contexts("animal | The mouse ran.\n\n  Click the mouse.  \ndevice|My mouse broke.")
    assert contexts == ["The mouse ran.", "Click the mouse.", "My mouse broke."]
    assert senses == ["animal", "(none)", "device"]


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("The mouse ran.", "at least 2 contexts"),
        ("a | The mouse ran.\nb | The mouse ran.", "repeats context 1"),
        ("animal |\nThe mouse ran.", "no sentence"),
    ],
)
def test_parse_contexts_refuses_bad_input(text, fragment):
    with pytest.raises(ValueError, match=fragment):
        parse_contexts(text)


def test_find_word_whole_word_case_insensitive():
    text = "Mouse traps catch a mouse; the mousetrap and MOUSE's tail."
    upper = text.index("MOUSE")
    assert find_word(text, "mouse") == [(0, 5), (20, 25), (upper, upper + 5)]
    assert find_word("a computer-mouse", "mouse") == [(11, 16)]
    assert find_word("mice only", "mouse") == []
    with pytest.raises(ValueError, match="word is empty"):
        find_word("x", "  ")


def test_tokens_in_span_uses_offsets_and_skips_specials():
    offsets = [(0, 0), (0, 3), (3, 9), (9, 13), (13, 14), (0, 0)]  # [CLS] The Ġmouse Ġate . [SEP]
    assert tokens_in_span(offsets, (4, 9)).tolist() == [2]
    assert tokens_in_span(offsets, (4, 13)).tolist() == [2, 3]
    assert tokens_in_span(offsets, (20, 25)).tolist() == []


# -- statistics on hand-made arrays --------------------------------------------------------------
def test_cosine_matrix_known_values():
    v = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, -2.0], [0.0, 0.0]])
    sim = cosine_matrix(v)
    assert sim[0, 1] == pytest.approx(1 / np.sqrt(2))
    assert sim[0, 2] == pytest.approx(0.0)
    assert sim[1, 2] == pytest.approx(-1 / np.sqrt(2))
    assert sim[3].tolist() == [0.0, 0.0, 0.0, 0.0]  # a zero vector is similar to nothing
    assert np.diag(sim)[:3] == pytest.approx([1, 1, 1])


def test_pair_means_split_by_sense():
    sim = np.array(
        [
            [1.0, 0.9, 0.2, 0.4],
            [0.9, 1.0, 0.3, 0.1],
            [0.2, 0.3, 1.0, 0.7],
            [0.4, 0.1, 0.7, 1.0],
        ]
    )[None]
    frame = pair_means(sim, SENSES)
    assert frame.loc[0, "within_sense"] == pytest.approx((0.9 + 0.7) / 2)
    assert frame.loc[0, "across_sense"] == pytest.approx((0.2 + 0.4 + 0.3 + 0.1) / 4)
    assert frame.loc[0, "self_similarity"] == pytest.approx((0.9 + 0.2 + 0.4 + 0.3 + 0.1 + 0.7) / 6)
    one_sense = pair_means(sim, ["x"] * 4)
    assert np.isnan(one_sense.loc[0, "across_sense"])


def test_baseline_pairs_deterministic_cross_context_and_excluding():
    lengths = [5, 6, 4]
    excluded = [np.array([0, 4]), np.array([0, 2, 5]), np.array([0, 3])]
    pairs = baseline_pairs(lengths, excluded, n_pairs=300, seed=3)
    assert pairs.shape == (300, 4)
    assert np.array_equal(pairs, baseline_pairs(lengths, excluded, n_pairs=300, seed=3))
    assert (pairs[:, 0] != pairs[:, 2]).all()
    for c, t in np.concatenate([pairs[:, :2], pairs[:, 2:]]):
        assert t not in excluded[c] and 0 <= t < lengths[c]
    assert len(baseline_pairs([3, 3], [np.arange(3), np.array([0])])) == 0  # one context has nothing to draw


def test_anisotropy_baseline_equals_brute_force():
    rng = np.random.default_rng(1)
    vectors = [rng.normal(size=(3, n, 8)) for n in (5, 7, 4)]
    pairs = baseline_pairs([5, 7, 4], [np.array([0])] * 3, n_pairs=50)
    expected = [
        np.mean(
            [
                vectors[ca][layer, ta]
                @ vectors[cb][layer, tb]
                / np.linalg.norm(vectors[ca][layer, ta])
                / np.linalg.norm(vectors[cb][layer, tb])
                for ca, ta, cb, tb in pairs
            ]
        )
        for layer in range(3)
    ]
    assert anisotropy_baseline(vectors, pairs) == pytest.approx(expected)


def test_pca_recovers_a_planar_layout():
    points2d = np.array([[3.0, 0.0], [-3.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    basis = np.linalg.qr(np.random.default_rng(0).normal(size=(10, 2)))[0]  # [10, 2] orthonormal
    coords, ratio = pca_2d(points2d @ basis.T + 5.0)
    # Distances are preserved and the larger spread lands on PC1.
    dist = lambda x: np.linalg.norm(x[:, None] - x[None], axis=-1)  # noqa: E731
    assert dist(coords) == pytest.approx(dist(points2d), abs=1e-9)
    assert np.abs(coords[:, 0]).max() == pytest.approx(3.0)
    assert ratio == pytest.approx([18 / 20, 2 / 20])


# -- drift on tiny models -------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["bert", "llama_gqa", "gpt2"])
def test_drift_vectors_are_mean_of_the_word_pieces(tiny_factory, arch):
    lm = tiny_factory(arch)
    contexts = ["The trackball rolled away.", "I cleaned my trackball today, twice."]
    rec = run(lm, contexts)
    result = drift(rec, lm.tokenizer, "trackball", ["a", "b"])
    for b, occ in enumerate(result.occurrences):
        tokens = rec.tokens[b]
        # Independently: the pieces spell "trackball" and are the record's tokens at those positions.
        assert "".join(p.replace("##", "").replace("Ġ", "") for p in occ.pieces).lower() == "trackball"
        assert [tokens[i] for i in occ.token_index] == list(occ.pieces)
        for layer in (0, lm.spec.n_layers):
            expected = rec.hidden(layer, b)[occ.token_index].mean(axis=0)
            assert np.allclose(result.vectors[layer, b], expected, atol=1e-6)
    assert result.similarity.shape == (lm.spec.n_layers + 1, 2, 2)


def test_multi_piece_word_splits_in_wordpiece(tiny_factory):
    lm = tiny_factory("bert")
    result = drift(run(lm, ["The trackball rolled.", "A trackball broke."]), lm.tokenizer, "trackball")
    assert len(result.occurrences[0].pieces) >= 2


def test_missing_word_names_the_context(tiny_factory):
    lm = tiny_factory("bert")
    rec = run(lm, ["The mouse ran.", "Click the button.", "A cat slept."])
    with pytest.raises(ValueError, match=r"contexts 2: 'Click the button.'; 3: 'A cat slept.'"):
        drift(rec, lm.tokenizer, "mouse")


def test_several_occurrences_use_the_first_and_say_so(tiny_factory):
    lm = tiny_factory("bert")
    rec = run(lm, ["The mouse saw another mouse.", "A mouse ran."])
    result = drift(rec, lm.tokenizer, "mouse")
    assert result.occurrences[0].token_index.tolist() == [2]  # [CLS] the mouse …
    assert result.occurrences[0].n_matches == 2
    assert any("context 1 has 'mouse' 2 times" in note for note in result.notes)


def test_decoder_word_sees_only_left_context(tiny_factory):
    contexts = ["The big mouse ate the cheese.", "The big mouse clicked twice on the icon."]
    decoder = tiny_factory("llama_gqa")
    result = drift(run(decoder, contexts), decoder.tokenizer, "mouse")
    # Same left context -> the same vector at every layer.
    assert np.abs(result.vectors[:, 0] - result.vectors[:, 1]).max() < 1e-5
    assert np.allclose(result.similarity[:, 0, 1], 1.0, atol=1e-6)
    assert [o.visible_context for o in result.occurrences] == ["The big mouse", "The big mouse"]
    assert any("left context" in note for note in result.notes)
    encoder = tiny_factory("bert")
    bidirectional = drift(run(encoder, contexts), encoder.tokenizer, "mouse")
    # An encoder sees the right context too (random tiny weights: small but clear differences).
    assert np.abs(bidirectional.vectors[-1, 0] - bidirectional.vectors[-1, 1]).max() > 1e-3


def test_layer0_static_for_rotary_not_for_learned_positions(tiny_factory):
    contexts = ["A mouse ran.", "The small grey mouse ran."]  # the word at different positions
    llama = tiny_factory("llama_gqa")
    assert layer0_is_static(drift(run(llama, contexts), llama.tokenizer, "mouse")) is True
    gpt2 = tiny_factory("gpt2")  # learned absolute positions are added to the input embedding
    assert layer0_is_static(drift(run(gpt2, contexts), gpt2.tokenizer, "mouse")) is False


def test_frames_and_charts(tiny_factory):
    lm = tiny_factory("bert")
    contexts, senses = parse_contexts(DEFAULT_CONTEXTS)
    result = drift(run(lm, contexts), lm.tokenizer, "mouse", senses)
    n_hidden, c = lm.spec.n_layers + 1, len(contexts)
    table = similarity_frame(result)
    assert tuple(table.columns) == SIMILARITY_COLUMNS
    assert len(table) == n_hidden * c * c
    row = table[(table.layer == 1) & (table.context_a == contexts[0]) & (table.context_b == contexts[5])].iloc[0]
    assert row.cosine == pytest.approx(result.similarity[1, 0, 5]) and (row.sense_a, row.sense_b) == ("animal", "device")
    depth = depth_frame(result)
    assert depth["adjusted_self_similarity"].to_numpy() == pytest.approx((depth.self_similarity - depth.anisotropy_baseline).to_numpy())
    pca = pca_frame(result, 1)
    assert list(pca["sense"]) == senses
    assert list(occurrence_frame(result)["seen_by_word"]) == contexts  # encoder: the whole sentence
    with pytest.raises(ValueError, match="out of range"):
        pca_frame(result, n_hidden)
    charts = [similarity_heatmap(table[table.layer == 1], contexts, senses), depth_chart(depth, layer=1), pca_chart(pca)]
    for chart in charts:
        spec = chart.to_dict()
        assert "$schema" in spec
    assert chart_bytes(charts[0], "png").startswith(b"\x89PNG")
    with pytest.raises(ValueError, match="one layer"):
        similarity_heatmap(table, contexts, senses)


def test_inputs_are_not_mutated(tiny_factory):
    lm = tiny_factory("bert")
    contexts, senses = ["The mouse ran.", "A mouse slept."], ["a", "b"]
    rec = run(lm, contexts)
    before = rec.hidden(1, 0).copy()
    result = drift(rec, lm.tokenizer, "mouse", senses)
    assert senses == ["a", "b"] and np.array_equal(rec.hidden(1, 0), before)
    sim = result.similarity.copy()
    pair_means(result.similarity, senses)
    assert np.array_equal(sim, result.similarity)
    frame = similarity_frame(result)
    assert len(frame) == result.similarity.size  # one row per (layer, context, context) cell


def test_pair_means_self_similarity_equals_the_one_definition():
    """The Drift page reads self-similarity off its cosine matrices; corpus jobs use ``self_similarity``
    (no matrix). Both must give Ethayarajh's number."""
    from attnscope.analysis.drift import cosine_matrix, pair_means, self_similarity

    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(3, 5, 16))  # [layer, context, d]
    table = pair_means(cosine_matrix(vectors), ["a", "a", "b", "b", "c"])
    expected = [self_similarity(vectors[layer]) for layer in range(3)]
    np.testing.assert_allclose(table["self_similarity"].to_numpy(), expected, rtol=1e-12)
