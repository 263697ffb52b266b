"""Pure chart builders returning ``alt.Chart``; ``viz.export`` is the only figure writer."""

# The package's modules; import the one you need (``from analysis.heads import ...``).
__all__ = [
    "anatomy",
    "backends",
    "bertviz",
    "compare",
    "corpus",
    "drift",
    "export",
    "figures",
    "generate",
    "heads",
    "heatmap",
    "lab",
    "masking",
    "overview",
    "padding",
]
