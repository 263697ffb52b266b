"""attnscope in a notebook: one call shows a record's map, overview or head table, as the dashboard draws them.

    import attnscope
    lm = attnscope.load("minilm")
    rec = attnscope.run(lm, "The mouse ate the cheese.")
    attnscope.show(rec, layer=2, head=3)      # the Attention page's heatmap (an Altair chart)
    attnscope.overview(rec)                   # every head as a thumbnail
    attnscope.head_table(rec)                 # a DataFrame, one row per (layer, head)

Charts display inline without internet: the first call switches Altair to its ``jupyter`` renderer in offline
mode (anywidget draws the chart with the Vega JavaScript that vl-convert bundles; JupyterLab, Jupyter Notebook
and VS Code). Without anywidget (``pip install "attnscope[notebook]"`` brings it) charts fall back to static SVG,
rendered by vl-convert. Call ``inline(False)`` to keep Altair's own renderer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import altair as alt
    import pandas as pd

    from attnscope.models import ForwardRecord

__all__ = ["head_table", "inline", "overview", "show"]

_state = {"configured": False}


def inline(enable: bool = True) -> str:
    """Make Altair draw attnscope's charts inline and offline; returns the renderer's name."""
    import altair as alt

    _state["configured"] = True
    if not enable:
        alt.renderers.enable("default")
        return "default"
    try:
        import anywidget  # noqa: F401  (the jupyter renderer's widget)
    except ImportError:
        alt.renderers.enable("svg")  # static, drawn by vl-convert: no JavaScript, no internet
        return "svg"
    alt.renderers.enable("jupyter", offline=True)
    return "jupyter"


def _configured() -> None:
    if not _state["configured"]:
        inline()


def _check_head(rec: ForwardRecord, layer: int, head: int) -> None:
    n_layers, n_heads = rec.spec.n_layers, rec.spec.n_heads
    if not 0 <= layer < n_layers:
        msg = f"layer {layer} is out of range: this model has layers 0..{n_layers - 1} (0-based)"
        raise ValueError(msg)
    if not 0 <= head < n_heads:
        msg = f"head {head} is out of range: this model has heads 0..{n_heads - 1} (0-based)"
        raise ValueError(msg)


def show(
    rec: ForwardRecord, layer: int = 0, head: int = 0, *, view: str = "heatmap", other: ForwardRecord | None = None
) -> alt.TopLevelMixin:
    """One head's figure of text 0, the same chart as the dashboard and ``attnscope figure``.

    Args:
        rec: a record from ``attnscope.run``.
        layer, head: 0-based.
        view: "heatmap" (default), "overview", "masking" or "compare" (``other`` = a second record).
    Returns:
        The Altair chart; the last expression of a cell displays it.
    """
    from attnscope.viz.figures import VIEWS

    if view not in VIEWS:
        msg = f"view {view!r}: choose one of {', '.join(VIEWS)}"
        raise ValueError(msg)
    _check_head(rec, layer, head)
    _configured()
    chart, _frame = VIEWS[view](rec, layer, head, other=other)
    return chart


def overview(rec: ForwardRecord) -> alt.TopLevelMixin:
    """Every head of every layer as a thumbnail (the Attention page's overview)."""
    return show(rec, view="overview")


def head_table(rec: ForwardRecord, batch: int = 0) -> pd.DataFrame:
    """Per-head statistics of text ``batch`` (entropy, first-token mass, previous-token share, ...)."""
    return rec.head_stats(batch=batch)
