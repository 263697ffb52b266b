"""bertviz's views without a network: the scripts it would fetch from a CDN, inlined into its HTML.

bertviz's ``head_view`` / ``model_view`` HTML loads require.js with a ``<script src=…>`` tag and asks
require.js for d3 5.7 and jQuery 2 by CDN URL. ``offline_html`` puts the project's pinned copies
(``js/package.json``, installed by ``make install``) inline instead: d3 and jQuery first (no AMD
loader yet, so they set ``window.d3`` / ``window.jQuery``), then require.js, then two named modules
that hand those globals to bertviz's ``requirejs(['jquery', 'd3'], …)``. Pure string in, string out.
"""

from __future__ import annotations

import re

from attnscope.analysis.record_view import RecordView

__all__ = ["MAX_BYTES", "MAX_TOKENS", "SCRIPT_FILES", "layer_tensors", "offline_html", "too_big", "view_sizes"]

# Script name -> file under js/node_modules (versions pinned in js/package-lock.json).
SCRIPT_FILES = {
    "d3": "d3/dist/d3.min.js",
    "jquery": "jquery/dist/jquery.min.js",
    "requirejs": "requirejs/require.js",
}

_REQUIRE_TAG = re.compile(r'<script src="https?://[^"]*/require(?:\.min)?\.js"></script>')
_CDN_PATH = re.compile(r"""(\b(d3|jquery)\s*:\s*)(['"])https?://[^'"]*\3""")
_DEFINE_GLOBALS = "define('d3', [], function () { return window.d3; });\ndefine('jquery', [], function () { return window.jQuery; });"


def _inline(source: str) -> str:
    # "</script" inside the text would end the tag early; "<\/" means the same in JavaScript.
    return "<script>\n" + source.replace("</script", "<\\/script") + "\n</script>"


def offline_html(html: str, scripts: dict[str, str]) -> str:
    """bertviz's view HTML with require.js, d3 and jQuery inlined, so it draws without a network.

    Args:
        html: what ``head_view(..., html_action="return").data`` (or ``model_view``) returns.
        scripts: {"d3", "jquery", "requirejs"} -> the scripts' text (see ``SCRIPT_FILES``).
    Returns:
        The same HTML with no request to a CDN left in it.
    """
    missing = sorted(set(SCRIPT_FILES) - set(scripts))
    if missing:
        msg = f"offline bertviz needs the scripts {', '.join(missing)}; run `make install` (it installs them with npm)"
        raise ValueError(msg)
    if not _REQUIRE_TAG.search(html):
        msg = "this does not look like bertviz view HTML (no require.js script tag); pass head_view(..., html_action='return').data"
        raise ValueError(msg)
    prelude = "\n".join([_inline(scripts["d3"]), _inline(scripts["jquery"]), _inline(scripts["requirejs"]), _inline(_DEFINE_GLOBALS)])
    html = _REQUIRE_TAG.sub(lambda _: prelude, html, count=1)
    # The modules are defined above, so require.js never resolves these paths; no CDN URL stays behind.
    return _CDN_PATH.sub(lambda m: f"{m.group(1)}{m.group(3)}inline-{m.group(2)}{m.group(3)}", html)


# -- what to send: bertviz serialises every weight it is given as JSON ------------------------------
MAX_TOKENS = 64
MAX_BYTES = 16e6
BYTES_PER_WEIGHT = 45  # measured: MiniLM model_view is 3.3 MB for 72 heads x 32² weights


def view_sizes(n_layers: int, n_heads: int, n: int) -> tuple[float, float]:
    """(head view bytes, model view bytes) bertviz would send for ``n`` tokens."""
    head = BYTES_PER_WEIGHT * n_heads * n * n
    return head, head * n_layers


def too_big(n_layers: int, n_heads: int, n: int) -> tuple[str | None, str | None]:
    """Why the (head view, model view) cannot be shown (None where it can): the browser would receive
    tens of MB of JSON. The reasons are one line each, for the page."""
    head, model = view_sizes(n_layers, n_heads, n)
    if n > MAX_TOKENS or head > MAX_BYTES:
        reason = (
            f"bertviz views hidden: {n} tokens would send ~{model / 1e6:,.0f} MB to the browser "
            f"(bertviz serialises all L·H·n² weights as JSON); they are shown up to {MAX_TOKENS} tokens."
        )
        return reason, reason
    if model > MAX_BYTES:
        return None, (
            f"bertviz model view hidden: it would send ~{model / 1e6:,.0f} MB for {n_layers}x{n_heads} heads "
            f"at {n} tokens (limit {MAX_BYTES / 1e6:.0f} MB); the overview above shows every head instead."
        )
    return None, None


def layer_tensors(rec: RecordView, stack: str | None = None, only: int | None = None) -> tuple:
    """bertviz's input: one [1, H, q, k] tensor per layer of a ``ForwardRecord``; with ``only``, the other
    layers are empty (the head view shows one layer, and the bytes of the rest are saved)."""
    import torch

    reader = rec.stack(stack)
    n_layers = len(reader.layers)
    tensors = []
    empty = None
    for layer in range(n_layers):
        if only is None or layer == only:
            tensors.append(torch.from_numpy(reader.layer_attention(layer))[None])
        else:
            if empty is None:
                q, k = reader.axes()
                empty = torch.zeros(1, rec.spec.n_heads, len(q), len(k))
            tensors.append(empty)
    return tuple(tensors)
