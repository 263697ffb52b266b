"""models.labels.offset_labels: labels from character offsets (pure)."""

from attnscope.models.labels import offset_labels, strip_split_mark


def test_offsets_give_the_typed_text_marks_split_characters_and_name_whitespace():
    text = "a 猫\n x"
    # a, " 猫" in two byte pieces, "\n", " x", plus a special token at the end
    offsets = [(0, 1), (1, 3), (2, 3), (3, 4), (4, 6), (0, 0)]
    tokens = ["a", "Ġç", "Į«", "Ċ", "Ġx", "</s>"]
    special = [False, False, False, False, False, True]
    labels = offset_labels(text, offsets, tokens, special, [False, False, False, False, True, False])
    assert labels == ["a", "猫⁽¹ᐟ²⁾", "猫⁽²ᐟ²⁾", "(newline)", "x [UNK]", "</s>"]
    assert strip_split_mark(labels[1]) == ("猫", False) and strip_split_mark(labels[2]) == ("猫", True)
    assert strip_split_mark("x") == ("x", False)
