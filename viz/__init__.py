"""Figures from frames and arrays, never from the model: Altair chart builders (each page's charts; ``figures``:
whole figures from records, typed as ``analysis.record_view.RecordView``), raster thumbnails (``overview``),
bertviz's offline HTML (``bertviz``). ``viz.export`` is the only file writer (PNG, SVG, HTML, CSV, written whole)."""

# The package's modules; import the one you need (``from attnscope.viz.anatomy import ...``).
__all__ = [
    "anatomy",
    "backends",
    "bertviz",
    "compare",
    "corpus",
    "drift",
    "explain",
    "export",
    "figures",
    "generate",
    "heads",
    "heatmap",
    "lab",
    "masking",
    "overview",
    "padding",
    "routes",
    "why",
]
