"""Anatomy page (AppTest): facts read from the model, the residual stream of two models side by side, attention by
distance, the layer-0 parts of an encoder, and the measured cost on a button (small n here); bad input in one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from tests.app import vega

pytestmark = pytest.mark.slow

APP = str(Path(__file__).resolve().parents[2] / "app.py")
TEXT = "The mouse ran under the table and the cat waited."


def open_anatomy() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=300)
    at.switch_page("ui/anatomy.py").run()
    at.sidebar.selectbox(key="model").set_value("smollm2").run()  # the workspace's model and text
    at.sidebar.text_area(key="text").input(TEXT).run()
    return at


def test_anatomy_page_states_what_smollm2_is_made_of_next_to_minilm():
    from attnscope.models import run
    from attnscope.ui.common import get_model

    at = open_anatomy()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    smol, mini = get_model("smollm2", "auto"), get_model("minilm", "auto")
    total = sum(p.numel() for p in smol.model.parameters())
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["parameters"] == f"{total:,}" and metrics["norm placement"] == "Pre-LN" and metrics["positions"] == "rotary"
    assert metrics["heads / KV heads / head size"] == "9 / 3 / 64"
    parts = vega.frame(vega.chart(at, title=f"smollm2: {total:,} parameters"), {"component", "count"})
    assert parts["count"].sum() == total
    assert parts.set_index("component").loc["token_embeddings", "count"] == smol.model.get_input_embeddings().weight.numel()
    stream = vega.frame(vega.chart(at, title="residual-stream norm"), {"model", "placement", "mean_norm"})
    assert set(stream["model"]) == {"smollm2", "minilm"} and set(stream["placement"]) == {"pre", "post"}
    for name, lm in (("smollm2", smol), ("minilm", mini)):
        rec = run(lm, TEXT)
        expected = [np.linalg.norm(rec.hidden(layer), axis=-1).mean() for layer in range(lm.spec.n_layers + 1)]
        got = stream[stream["model"] == name].sort_values("layer")["mean_norm"].to_numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-5)
    pre = stream[stream["model"] == "smollm2"].set_index("layer")["mean_norm"]
    post = stream[stream["model"] == "minilm"].set_index("layer")["mean_norm"]
    assert pre.iloc[-2] > 50 * pre.iloc[0] and post.max() < 3 * post.iloc[0]  # Pre-LN grows with depth, Post-LN does not
    distances = vega.frame(vega.chart(at, title="layer 0: mean attention by relative distance"), {"head", "offset", "weight"})
    assert set(distances["head"]) == set(range(9)) and distances.query("offset < 0")["weight"].max() == 0
    assert not [c for c in vega.charts(at) if "layer-0 input" in str(c["spec"].get("title", ""))]  # no token types


def test_anatomy_page_reads_an_encoders_layer_0_parts_and_measures_the_cost_on_a_button():
    at = open_anatomy()
    at.sidebar.selectbox(key="model").set_value("minilm").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert {m.label: m.value for m in at.metric}["norm placement"] == "Post-LN"
    parts = vega.frame(vega.chart(at, title="layer-0 input"), {"part", "norm"})
    assert set(parts["part"]) == {"token", "position", "segment", "sum"}
    assert any("max difference" in c.value for c in at.caption)
    assert not [c for c in vega.charts(at) if "measured on this machine" in str(c["spec"].get("title", ""))]  # only on the button
    at.select_slider(key="anatomy_largest").set_value(512).run()
    at.button(key="anatomy_measure").click().run()
    assert not at.exception and not at.error
    cost = vega.chart(at, title="measured on this machine")
    measured = vega.frame(cost, {"n", "kernel", "seconds"})
    assert sorted(set(measured["n"])) == [128, 256, 512] and set(measured["kernel"]) == {"eager", "sdpa"}
    assert (measured["seconds"] > 0).all() and any("·n²" in c.value for c in at.caption)
    fitted = vega.frame(cost, {"n", "kernel", "fitted_seconds"})  # the fit is drawn: positive on the log axis
    assert len(fitted) and (fitted["fitted_seconds"] > 0).all()
    assert not any("+ -" in c.value for c in at.caption)


def test_anatomy_page_bad_input_is_one_clear_error_and_recovers():
    at = open_anatomy()
    at.sidebar.text_area(key="text").input("   ").run()
    assert not at.exception
    assert len(at.error) == 1 and "empty" in at.error[0].value, [e.value for e in at.error]
    at.sidebar.text_area(key="text").input(TEXT).run()
    assert not at.exception and not at.error


OTHER = "other (HF id or local path)…"
TARGET = "Le chat court."


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    """Tiny GPT-2, Llama (GQA), BERT and T5 saved as local directories, opened by path on the pages."""
    from tests import tiny
    from tests.tiny import tiny_t5

    root = tmp_path_factory.mktemp("tiny_pages")
    paths = {}
    for arch in ("gpt2", "llama_gqa", "bert", "t5"):
        lm = tiny_t5() if arch == "t5" else tiny.build(arch)
        lm.model.save_pretrained(root / arch, safe_serialization=True)
        lm.tokenizer.save_pretrained(root / arch)
        paths[arch] = str(root / arch)
    return paths


@pytest.mark.parametrize("arch", ["gpt2", "llama_gqa", "bert", "t5"])
def test_anatomy_and_lab_pages_work_on_tiny_models(tiny_dirs, arch):
    from attnscope.models import load

    path = tiny_dirs[arch]
    lm = load(path)
    at = AppTest.from_file(APP, default_timeout=300)
    at.switch_page("ui/anatomy.py").run()
    at.sidebar.selectbox(key="model").set_value(OTHER).run()
    at.sidebar.text_input(key="model_typed").input(path).run()
    at.sidebar.text_input(key="anatomy_target").input(TARGET).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["parameters"] == f"{sum(p.numel() for p in lm.model.parameters()):,}"
    expected = {"gpt2": ("Pre-LN", "learned absolute"), "llama_gqa": ("Pre-LN", "rotary"), "bert": ("Post-LN", "learned absolute")}
    assert (metrics["norm placement"], metrics["positions"]) == expected.get(arch, ("Pre-LN", "relative buckets"))

    at = AppTest.from_file(APP, default_timeout=300)
    at.switch_page("ui/lab.py").run()
    at.sidebar.selectbox(key="model").set_value(OTHER).run()
    at.sidebar.text_input(key="model_typed").input(path).run()
    if arch == "t5":
        at.sidebar.text_input(key="lab_target").input(TARGET).run()
    for pattern in ("recurrence", "scale"):
        at.sidebar.selectbox(key="lab_pattern").set_value(pattern).run()
        assert not at.exception and not at.error, (pattern, [e.value for e in at.error])
    at.toggle(key="lab_sweep").set_value(True).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert vega.chart(at, title="entropy per layer")
    at.sidebar.selectbox(key="lab_pattern").set_value("window").run()
    at.sidebar.number_input(key="lab_width").set_value(4096).run()
    assert not at.exception and not at.error and any("covers the whole text" in i.value for i in at.info)
