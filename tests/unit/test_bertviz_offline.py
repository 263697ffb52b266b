"""viz.bertviz.offline_html: bertviz's HTML with the CDN scripts inlined (a pure string rewrite)."""

from __future__ import annotations

import pytest

from viz.bertviz import SCRIPT_FILES, offline_html

FAKE = {"d3": "window.d3 = {version: '5.7.0'};", "jquery": "window.jQuery = function () {};", "requirejs": "var requirejs, require, define; // </script> inside"}


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
