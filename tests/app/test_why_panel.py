"""The Attention page's "why" panel and the Heads page's induction feeders (AppTest): the numbers on screen are the
library's split and circuit, and every link lands on the same model and text with the feeding head selected."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs

import pandas as pd
import pytest
from streamlit.navigation.page import calc_hash
from streamlit.testing.v1 import AppTest

from attnscope.analysis.why import head_of
from attnscope.models.circuit import circuit, induction_feeders
from attnscope.models.why import why
from tests.app import vega

pytestmark = pytest.mark.slow

APP = str(Path(__file__).resolve().parents[2] / "app.py")
ATTENTION = calc_hash("attention")  # the Attention page's url path, hashed as Streamlit names its pages
OTHER = "other (HF id or local path)…"
BARS = {"side", "component", "label", "value", "rank"}
LINES = {"edge_id", "flow", "importance", "from_label"}


def open_why(text: str, layer: int, head: int, query: int, key: int, model: str = "minilm") -> AppTest:
    at = AppTest.from_file(APP, default_timeout=300).run()
    if model != "minilm":
        at.sidebar.selectbox(key="model").set_value(model).run()
    at.sidebar.text_area(key="text").input(text).run()
    at.slider(key="layer").set_value(layer).run()
    at.slider(key="head").set_value(head).run()
    at.toggle(key="why_open").set_value(True).run()
    at.selectbox(key="why_query").set_value(query).run()
    at.selectbox(key="why_key").set_value(key).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    return at


def check_bars_and_pairs(at: AppTest, split) -> None:
    shown = vega.frame(vega.chart(at, columns=BARS), BARS)
    for side in ("query_side", "key_side"):
        rows = shown[shown["side"] == side].sort_values("rank")
        values = getattr(split, side)
        largest = sorted(values, key=lambda c: -abs(values[c]))[: len(rows)]
        assert rows["component"].tolist() == largest  # the largest |contributions|, in order
        assert rows["value"].to_numpy() == pytest.approx([values[c] for c in largest], abs=1e-9)
    pairs = next(d.value for d in at.dataframe if "query component" in d.value.columns)
    assert pairs[["query", "key"]].values.tolist() == [[p["query"], p["key"]] for p in split.pairs]
    assert pairs["value"].to_numpy() == pytest.approx([p["value"] for p in split.pairs], abs=1e-9)
    assert not any("Ġ" in label or "Ã" in label for label in shown["label"])


def links(at: AppTest) -> list[dict]:
    """Every page link: its label, target page (its url path's hash, as Streamlit names pages) and query parameters."""
    return [
        {"label": el.proto.label, "page": el.proto.page_script_hash, **{k: v[-1] for k, v in parse_qs(el.proto.query_string).items()}}
        for el in at.get("page_link")
    ]


def test_minilm_panel_shows_the_split_and_links_to_feeding_heads(minilm):
    text = "The cat sat on the mat because it was tired."
    at = open_why(text, layer=3, head=2, query=3, key=6)
    split = why(minilm, text, 3, 2, 3, 6)
    statement = next(m.value for m in at.markdown if m.value.startswith("**score"))
    assert f"**score {split.score:.3f}** (α = {split.weight:.3f})" in statement
    assert "Post-LN" in statement and "RoPE" not in statement
    check_bars_and_pairs(at, split)
    labels = {c for c in vega.frame(vega.chart(at, columns=BARS), BARS)["label"]}
    assert labels & {"token embedding", "position embedding"} or any(label.startswith("MLP ") for label in labels)
    found = [link for link in links(at) if link["page"] == ATTENTION]
    assert found, "no link to a feeding head's map"
    heads = {name for name in [*split.query_side, *split.key_side] if name.startswith("L") and not name.endswith("MLP")}
    for link in found:  # the same model and text, the feeding head selected, the label names it
        assert link["model"] == "minilm" and link["text"] == text
        name = f"L{link['layer']}H{link['head']}"
        assert name in heads and int(link["layer"]) < 3
        assert link["label"].startswith(f"L{link['layer']} H{link['head']}")
    # The head's circuit: the graph's feeders are the library's top shares of each side.
    expected = circuit(minilm, text, 3, 2)
    found_chart = vega.chart(at, columns=LINES)
    drawn = pd.concat([f for f in found_chart["frames"] if LINES <= set(f.columns)]).drop_duplicates("edge_id")
    for side in ("keys", "queries", "values"):
        rows = drawn[drawn["edge_id"].str.startswith(f"{side}:")].sort_values("flow", ascending=False)
        top = expected.top(side, len(rows))
        assert len(rows) == 5
        assert [e.split(":", 1)[1] for e in rows["edge_id"]] == [c for c, _ in top]
        assert rows["flow"].to_numpy() == pytest.approx([s for _, s in top], abs=1e-9)


def test_smollm2_french_panel_says_rope_and_kv_head(smollm2):
    text = "Le chat s'est assis sur le tapis."
    at = open_why(text, layer=5, head=4, query=8, key=2, model="smollm2")
    split = why(smollm2, text, 5, 4, 8, 2)
    statement = next(m.value for m in at.markdown if m.value.startswith("**score"))
    assert f"**score {split.score:.3f}**" in statement
    assert "RoPE applied per position" in statement and f"keys from KV head {4 // smollm2.spec.kv_group}" in statement
    check_bars_and_pairs(at, split)
    options = at.selectbox(key="why_key").options
    assert len(options) == 9  # a causal query sees keys 0..itself only
    assert not any("Ã" in o or "Ġ" in o for o in options)  # decoded labels: "é", not its bytes


def test_a_refused_model_shows_its_one_line(tmp_path):
    import torch
    from transformers import Gemma2Config, Gemma2ForCausalLM

    from tests.tiny import bpe_tokenizer

    torch.manual_seed(0)  # Gemma 2 soft-caps its scores (tanh): the split of an uncapped score would not add up
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    config = Gemma2Config(vocab_size=49152, head_dim=8, attn_logit_softcapping=50.0, max_position_embeddings=128, **small)
    Gemma2ForCausalLM(config).save_pretrained(tmp_path / "gemma2", safe_serialization=True)
    bpe_tokenizer().save_pretrained(tmp_path / "gemma2")
    at = AppTest.from_file(APP, default_timeout=300).run()
    at.sidebar.selectbox(key="model").set_value(OTHER).run()
    at.sidebar.text_input(key="model_typed").input(str(tmp_path / "gemma2")).run()
    assert not at.exception and not at.error
    at.toggle(key="why_open").set_value(True).run()
    assert not at.exception
    assert [e.value for e in at.error] == [
        "gemma2 soft-caps its attention scores (tanh); the split is of an uncapped score and would not add up"
    ]
    assert not any(m.value.startswith("**score") for m in at.markdown)  # the reason instead of the panel


def test_heads_page_lists_induction_heads_with_their_feeders(smollm2):
    at = AppTest.from_file(APP, default_timeout=600).run()
    at.sidebar.selectbox(key="model").set_value("smollm2").run()
    at.switch_page("ui/heads.py").run()
    at.sidebar.number_input(key="probe_len").set_value(20).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    table = next(d.value for d in at.dataframe if "induction head" in d.value.columns)
    heads = [(int(r.layer), int(r.head)) for r in table.itertuples(index=False)]
    assert 0 < len(heads) <= 8
    expected = induction_feeders(smollm2, heads, seq_len=20, seed=0)
    for (_, row), (head, score, feeders) in zip(table.iterrows(), expected):
        assert (int(row["layer"]), int(row["head"])) == head
        assert row["induction"] == pytest.approx(score, abs=1e-9)
        assert [row[f"share {k + 1}"] for k in range(len(feeders))] == pytest.approx([s for _, s in feeders], abs=1e-9)
        layer, head = head_of(feeders[0][0])
        assert row["feeder 1"] == f"L{layer} H{head}" or row["feeder 1"].startswith(f"L{layer} H{head} (")
    targets = {(int(link["layer"]), int(link["head"])) for link in links(at) if link["page"] == ATTENTION}
    assert targets == set(heads)
