"""Lab page (AppTest), the syllabus additions: recurrence run chunk by chunk with its receptive field and KV memory,
the temperature sweep (why √d), and a window wider than the text (full attention, KL 0)."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from tests.app import vega

pytestmark = pytest.mark.slow

APP = str(Path(__file__).resolve().parents[2] / "app.py")
TEXT = "A sliding window keeps the nearby tokens and drops the rest."


def open_lab(pattern: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=300)
    at.switch_page("ui/lab.py").run()
    at.sidebar.selectbox(key="model").set_value("smollm2").run()  # the workspace's model and text
    at.sidebar.text_area(key="text").input(TEXT).run()
    at.sidebar.selectbox(key="lab_pattern").set_value(pattern).run()
    return at


def test_recurrence_runs_chunk_by_chunk_and_draws_its_receptive_field():
    from attnscope.models.lab import lab_effect
    from attnscope.ui.common import get_model

    at = open_lab("recurrence")
    at.sidebar.number_input(key="lab_segment").set_value(3).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    effect = lab_effect(get_model("smollm2", "auto"), TEXT, "recurrence:3")
    assert any(f"{effect.kl:.4f}" in m.value for m in at.metric)
    assert any("run chunk by chunk" in c.value for c in at.caption)
    field = vega.frame(vega.chart(at, title="receptive field"), {"layer", "method", "tokens"})
    grows = field[field["method"] == "recurrence:3"].sort_values("layer")["tokens"].tolist()
    assert grows[:3] == [6, 9, 12] and max(grows) == effect.n_tokens  # C·(l + 1), capped at the text
    memory = vega.frame(vega.chart(at, title="recurrence cost"), {"n", "method", "kv_cache_mb"})
    assert set(memory["method"]) == {"full", "recurrence:3"}
    assert any(f"at most {max(effect.cache_tokens)} keys held" in c.value for c in at.caption)


def test_scale_sweep_shows_entropy_per_layer_and_what_it_means():
    at = open_lab("scale")
    assert not at.exception and not at.error, [e.value for e in at.error]
    at.toggle(key="lab_sweep").set_value(True).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    entropy = vega.frame(vega.chart(at, title="entropy per layer"), {"layer", "tau", "entropy"})
    assert len(entropy) == 30 * 8
    means = entropy.groupby("tau")["entropy"].mean()
    assert means.iloc[0] > means.iloc[-1]  # sharper as τ grows
    assert any(m.value.startswith("From τ = 0.25 to τ = 4") for m in at.markdown)
    effect = vega.frame(vega.chart(at, title="the attention temperature"), {"tau", "kl", "top1_kept"})
    assert effect.set_index("tau").loc[1.0, "top1_kept"] == 1.0


def test_a_window_wider_than_the_text_is_full_attention():
    at = open_lab("window")
    at.sidebar.number_input(key="lab_width").set_value(4096).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any("`window:4096` covers the whole text" in i.value for i in at.info)
    assert any(m.value == "0.0000 nats" for m in at.metric) and any(m.value == "100%" for m in at.metric)
