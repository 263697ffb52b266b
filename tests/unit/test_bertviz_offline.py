"""viz.bertviz.offline_html: bertviz's HTML with the CDN scripts inlined (a pure string rewrite)."""

from __future__ import annotations

import pytest

from attnscope.viz.bertviz import SCRIPT_FILES, offline_html

FAKE = {
    "d3": "window.d3 = {version: '5.7.0'};",
    "jquery": "window.jQuery = function () {};",
    "requirejs": "var requirejs, require, define; // </script> inside",
}


@pytest.fixture(scope="module")
def html() -> str:
    import torch
    from bertviz import head_view

    attention = tuple(torch.full((1, 2, 3, 3), 1 / 3) for _ in range(2))  # [1, H, n, n] per layer
    return head_view(attention, ["a", "b", "c"], html_action="return").data


def test_no_cdn_request_is_left(html):
    assert "cdnjs" in html  # what bertviz itself does
    out = offline_html(html, FAKE)
    assert "cdnjs" not in out and "<script src=" not in out
    assert "inline-d3" in out and "inline-jquery" in out  # require.config paths no longer name a URL


def test_scripts_come_first_in_order_and_modules_are_named(html):
    out = offline_html(html, FAKE)
    d3, jq, req = (out.index(FAKE[k][:20]) for k in ("d3", "jquery", "requirejs"))
    defines = out.index("define('d3'")
    view = out.index("requirejs(['jquery', 'd3']")
    assert d3 < jq < req < defines < view
    assert "<\\/script> inside" in out  # a closing tag inside a script cannot end the inline block early


def test_model_view_is_rewritten_too():
    import torch
    from bertviz import model_view

    attention = tuple(torch.full((1, 2, 3, 3), 1 / 3) for _ in range(2))
    out = offline_html(model_view(attention, ["a", "b", "c"], html_action="return").data, FAKE)
    assert "cdnjs" not in out


def test_missing_scripts_and_foreign_html_are_refused(html):
    with pytest.raises(ValueError, match="make install"):
        offline_html(html, {"d3": "x"})
    with pytest.raises(ValueError, match="bertviz"):
        offline_html("<p>hello</p>", FAKE)
    assert set(SCRIPT_FILES) == set(FAKE)


def test_bertviz_inputs_are_the_records_maps_and_the_size_rule_holds(tiny_factory):
    import numpy as np

    from attnscope.models import run
    from attnscope.viz import bertviz

    rec = run(tiny_factory("bert"), "The mouse ate the cheese.")
    full = bertviz.layer_tensors(rec)
    assert len(full) == rec.spec.n_layers and full[1].shape == (1, rec.spec.n_heads, len(rec.tokens[0]), len(rec.tokens[0]))
    np.testing.assert_array_equal(full[1][0, 2].numpy(), rec.attention(1, 2))
    one = bertviz.layer_tensors(rec, only=1)
    assert float(one[0].abs().sum()) == 0 and np.array_equal(one[1].numpy(), full[1].numpy())
    assert bertviz.too_big(6, 12, 32) == (None, None)  # MiniLM at 32 tokens: 3.3 MB model view
    head, model = bertviz.too_big(6, 12, 64)  # 64 tokens: the head view fits, the model view (13 MB) ... fits too
    assert head is None and (model is None) == (bertviz.view_sizes(6, 12, 64)[1] <= bertviz.MAX_BYTES)
    head, model = bertviz.too_big(6, 12, bertviz.MAX_TOKENS + 1)
    assert head is not None and "tokens" in head and model == head
    head, model = bertviz.too_big(30, 12, 64)  # a deep model: the model view alone is refused
    assert head is None and model is not None and "model view hidden" in model
