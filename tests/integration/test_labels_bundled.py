"""Token labels on the bundled tokenizers: the user's own characters, never byte-level stand-ins."""

import pytest

from attnscope.models import run
from attnscope.models.labels import candidate_label, decoded_labels, strip_split_mark, unknown_warning

pytestmark = pytest.mark.slow

TEXTS = ["Le chat a mangé la souris.", "猫が好きです。"]
RAW = ("Ã", "Ġ", "Ċ", "Â")


def rebuilt(labels: list[str]) -> str:
    """The labels joined back, later pieces of a split character dropped and marks removed."""
    out = []
    for label in labels:
        core, later = strip_split_mark(label)
        if not later:
            out.append(core)
    return "".join(out)


@pytest.mark.parametrize("text", TEXTS)
def test_smollm2_labels_are_the_typed_characters(smollm2, text):
    rec = run(smollm2, text)
    labels = rec.labels[0]
    assert len(labels) == len(rec.tokens[0])
    assert not [label for label in labels if any(mark in label for mark in RAW)], labels
    assert rebuilt(labels) == "".join(text.split())
    if text.startswith("猫"):
        assert labels[:3] == ["猫⁽¹ᐟ³⁾", "猫⁽²ᐟ³⁾", "猫⁽³ᐟ³⁾"]  # one character on three byte pieces, each marked


def test_minilm_labels_keep_accents_and_name_unknown_tokens(minilm):
    rec = run(minilm, "Le chat a mangé la souris.")
    assert rec.labels[0][0] == "[CLS]" and "gé" in rec.labels[0] and rec.unknown_shares == [0.0]
    chinese = run(minilm, "我喜欢猫和狗。")
    share = chinese.unknown_shares[0]
    assert share >= 0.5, chinese.tokens[0]
    assert any(label.endswith("[UNK]") for label in chinese.labels[0])
    line = unknown_warning(share, "minilm")
    assert line is not None and f"{share:.0%}" in line
    assert unknown_warning(rec.unknown_shares[0], "minilm") is None


def test_decoded_labels_and_candidates(smollm2):
    tok = smollm2.tokenizer
    ids = tok("猫 mangé")["input_ids"]
    labels = decoded_labels(tok, ids)
    assert rebuilt(labels) == "猫mangé" and not any(mark in "".join(labels) for mark in RAW)
    mary = tok(" Mary", add_special_tokens=False)["input_ids"][0]
    assert candidate_label(tok, mary) == "␣Mary"
    assert candidate_label(tok, tok.convert_tokens_to_ids("ç")).startswith("‹e7")


def test_the_logit_lens_decodes_its_candidates(smollm2):
    lens = run(smollm2, TEXTS[0]).logit_lens(smollm2, top_k=3)
    shown = [*lens["label"], *lens["next_label"], *lens["top_label"], *(x for row in lens["top_labels"] for x in row)]
    assert not [s for s in shown if any(mark in s for mark in RAW)]
    last = lens[(lens["layer"] == smollm2.spec.n_layers)]
    assert list(dict.fromkeys(last["label"])) == run(smollm2, TEXTS[0]).labels[0]
