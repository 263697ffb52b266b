"""The dashboard's workspace as data: query parameters round-trip, bad ones are noted, clamps are never silent."""

from __future__ import annotations

from attnscope.ui.workspace import DEFAULT_TEXT, Workspace


def test_params_round_trip_every_field():
    ws = Workspace(model="smollm2", backend="eager", texts=("Le chat a mangé la souris.", "Un chien."), layer=7, head=4, token=3, kind=None)
    params = ws.to_params()
    assert params["text"] == ["Le chat a mangé la souris.", "Un chien."]  # several texts repeat the parameter
    assert Workspace.from_params(params) == ws


def test_a_link_fills_in_only_what_it_names():
    base = Workspace(model="smollm2", texts=("Mine.",), layer=2)
    ws = Workspace.from_params({"head": "5"}, base=base)
    assert (ws.model, ws.text, ws.layer, ws.head) == ("smollm2", "Mine.", 2, 5)
    assert Workspace.from_params({}).text == DEFAULT_TEXT


def test_unreadable_values_are_noted_not_raised():
    ws = Workspace.from_params({"layer": "two", "head": "-1", "backend": "turbo", "kind": "sideways"})
    assert (ws.layer, ws.head, ws.backend, ws.kind) == (0, 0, "auto", None)
    assert len(ws.notes) == 4 and any("'two'" in note for note in ws.notes)


def test_fit_clamps_visibly():
    ws = Workspace(layer=20, head=13).fit(6, 12, "minilm")
    assert (ws.layer, ws.head) == (5, 11)
    assert ws.notes == [
        "Layer 20 does not exist in minilm (layers 0–5): showing layer 5.",
        "Head 13 does not exist in minilm (heads 0–11): showing head 11.",
    ]
    assert Workspace(layer=5, head=11).fit(6, 12, "minilm").notes == []  # in range: nothing to say


def test_fit_token_and_kind():
    assert Workspace(token=12).fit_token(9).token == 8
    assert Workspace(token=None).fit_token(9).token is None
    assert Workspace(kind="cross").fit(6, 8, "t5", kinds=("encoder", "decoder", "cross")).kind == "cross"
    assert Workspace(kind="cross").fit(6, 8, "minilm").kind is None


def test_with_text_keeps_the_other_texts():
    ws = Workspace(texts=("a", "b c", "d e f")).with_text("x")
    assert ws.texts == ("x", "b c", "d e f")


def test_engine_errors_are_worded_for_the_dashboard():
    from attnscope.ui.common import ui_message

    long = "the text has 600 tokens but all-MiniLM-L6-v2 takes at most 512; shorten it or pass max_length=512 (--max-length) to truncate"
    assert ui_message(long) == (
        "the text has 600 tokens but all-MiniLM-L6-v2 takes at most 512; shorten it or set 'Truncate to' to 512 on the Attention page"
    )
    pad = "padding needs at least 2 texts of different lengths, one per line (--text T --text T)"
    assert ui_message(pad) == "padding needs at least 2 texts of different lengths, one per line"
    assert ui_message("pass do_sample=True (--sample) or leave them unset") == "pass do_sample=True or leave them unset"


def test_texts_are_counted_from_0_as_on_the_pages():
    import pytest

    from attnscope.models.forward import validate_texts

    with pytest.raises(ValueError, match=r"^text 1 \(0-based\) is empty"):
        validate_texts(["A mouse.", "  "])
    with pytest.raises(ValueError, match=r"^the text is empty"):
        validate_texts(["  "])
