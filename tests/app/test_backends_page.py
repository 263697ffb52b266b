"""The Backends page: runs, shows flash disabled with the reason on CPU, and its numbers are the analysis outputs."""

from __future__ import annotations

import json
import re
import uuid

import numpy as np
import pandas as pd
import pytest
import torch
from streamlit.testing.v1 import AppTest

from attnscope.analysis.backends import compare_records
from attnscope.analysis.bench_results import ratio_frame, scaling_frame
from attnscope.models import load, run
from attnscope.models.budget import footprint, format_bytes, model_bytes, shared_store
from attnscope.models.flash import flash_unavailable_reason
from attnscope.ui.workspace import DEFAULT_TEXT  # the page shows the workspace's text

pytestmark = pytest.mark.slow


ROWS = [
    {"backend": "eager", "tokens": 256, "ms_per_forward": 120.0, "peak_mb": 90.0},
    {"backend": "eager", "tokens": 512, "ms_per_forward": 400.0, "peak_mb": 330.0},
    {"backend": "sdpa", "tokens": 256, "ms_per_forward": 100.0, "peak_mb": 6.0},
    {"backend": "sdpa", "tokens": 512, "ms_per_forward": 200.0, "peak_mb": 30.0},
]


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    results = tmp_path_factory.mktemp("bench_results")
    (results / "backends-cpu.json").write_text(json.dumps({"model": "SmolLM2", "date": "2026-01-01", "machine": "test", "rows": ROWS}))
    mp = pytest.MonkeyPatch()
    mp.setenv("ATTNSCOPE_BENCH_RESULTS", str(results))
    at = AppTest.from_file("../../app.py", default_timeout=300)
    at.run()
    at.switch_page("ui/backends.py")
    at.run()
    at.sidebar.selectbox(key="model").set_value("smollm2").run()  # the workspace's model
    yield at
    mp.undo()


def _frame(at, column: str) -> pd.DataFrame:
    """The shown dataframe that has ``column`` (AppTest gives display-only frames no key)."""
    return next(df.value for df in at.dataframe if column in df.value.columns)


def _metric(at, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def test_page_runs_and_compares_eager_with_sdpa(page):
    assert not page.exception
    assert not page.error
    backends = [sb for sb in page.selectbox if sb.key in ("backends_a", "backends_b")]
    assert [sb.value for sb in backends] == ["eager", "sdpa" if not torch.cuda.is_available() else "flash"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: flash is offered")
def test_flash_shown_disabled_with_reason(page):
    box = next(cb for cb in page.checkbox if cb.key == "backends_flash_off")
    assert box.disabled and box.value is False
    reason = flash_unavailable_reason()
    assert any(reason in c.value for c in page.caption)
    assert all("flash" not in sb.options for sb in page.selectbox if sb.key in ("backends_a", "backends_b"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="on CUDA the page defaults to flash")
def test_page_numbers_are_the_analysis_outputs(page, smollm2):
    eager = load("smollm2", backend="eager", device="cpu")
    rec_e, rec_s = run(eager, DEFAULT_TEXT), run(smollm2, DEFAULT_TEXT)
    result = compare_records(rec_e, rec_s, models=(eager, smollm2))
    shown = _frame(page, "hidden_max_abs_diff")
    pd.testing.assert_frame_equal(shown.reset_index(drop=True), result.per_layer(), rtol=1e-6, atol=1e-9)
    assert _metric(page, "max |Δ attention|") == f"{result.max_map_diff:.2e}"
    assert _metric(page, "max |Δ hidden state|") == f"{result.max_hidden_diff:.2e}"
    assert _metric(page, "max |Δ logit|") == f"{result.logits['max_abs_diff']:.2e}"
    layer = 0  # the workspace's layer
    head_diff = float(np.abs(rec_e.attention(layer, 0).astype(np.float64) - rec_s.attention(layer, 0)).max())
    assert _metric(page, f"max |Δ| layer {layer} head 0") == f"{head_diff:.2e}"


def test_scaling_section_reads_the_saved_bench(page):
    shown = _frame(page, "speedup")
    expected = ratio_frame(scaling_frame(ROWS), "eager", "sdpa")
    pd.testing.assert_frame_equal(shown.reset_index(drop=True), expected)
    assert shown["memory_ratio"].tolist() == [15.0, 11.0]


def test_encoder_has_no_logits(page):
    page.sidebar.selectbox(key="model").set_value("minilm").run()
    assert not page.exception
    assert _metric(page, "max |Δ logit|") == "—"
    assert float(_metric(page, "max |Δ attention|")) < 1e-4


def _held_caption(at) -> tuple[int, int]:
    """(bytes held, budget) as the page's caption states them."""
    text = next(c.value for c in at.caption if "bytes held of a" in c.value)
    held, budget = re.search(r"([\d,]+) bytes held of a ([\d,]+)-byte budget", text).groups()
    return int(held.replace(",", "")), int(budget.replace(",", ""))


def test_memory_held_is_the_stores_accounting(page, minilm, smollm2):
    store = shared_store()
    before = {u.category: u for u in store.usage()}
    assert before["thumbnails"].entries >= 1  # made by the Attention page, the app's first page
    assert before["backend comparisons"].entries >= 1 and before["records"].entries >= 2
    key = ("test", uuid.uuid4().hex)  # a record made outside the dashboard, by the library
    rec = store.get(key, lambda: run(minilm, "The mouse ate the cheese."))
    page.run()
    assert not page.exception
    held = store.held()
    shown = _frame(page, "in_budget")
    pd.testing.assert_frame_equal(shown.reset_index(drop=True), held.frame())
    after = {u.category: u for u in held.categories}
    assert after["records"].entries == before["records"].entries + 1
    assert after["records"].bytes == before["records"].bytes + footprint(rec).bytes
    assert _held_caption(page) == (held.total, held.max_bytes) and 0 < held.total <= held.max_bytes
    assert held.total == sum(u.bytes for u in held.categories) - held.shared
    assert _metric(page, "held (all sessions)") == f"{format_bytes(held.total)} of {format_bytes(held.max_bytes)}"
    # smollm2 under eager and under sdpa, and minilm (the Attention page, then the last test's switch)
    models = shown.set_index("category").loc["loaded models"]
    assert not models["in_budget"] and models["entries"] >= 3
    assert models["bytes"] >= 2 * model_bytes(smollm2) + model_bytes(minilm) > 500 * 2**20


def test_lowering_the_budget_keeps_what_is_held_under_it(page, monkeypatch):
    store = shared_store()
    total, entries = store.total_bytes, len(store)
    assert total > 0
    budget = total // 2
    monkeypatch.setenv("ATTNSCOPE_CACHE_GB", repr(budget / 1024**3))
    page.run()  # the page's records may be made again; the least recently used make room
    assert not page.exception
    held = store.held()
    assert held.max_bytes <= budget and held.total <= held.max_bytes
    assert _held_caption(page) == (held.total, held.max_bytes)
    pd.testing.assert_frame_equal(_frame(page, "in_budget").reset_index(drop=True), held.frame())
    assert len(store) < entries
    categories = {u.category for u in held.categories}
    assert "records" in categories and "backend comparisons" in categories  # what the page just used stays
