"""Pure functions over arrays: attention maps from Q/K, head statistics, rollout, context mixing, faithfulness, drift, padding."""

# The package's modules; import the one you need (``from attnscope.analysis.anatomy import ...``).
__all__ = [
    "anatomy",
    "attention",
    "backends",
    "bench_results",
    "contributions",
    "corpus",
    "cost",
    "drift",
    "effects",
    "examples",
    "faithfulness",
    "geometry",
    "head_types",
    "heads",
    "masks",
    "padding",
    "patterns",
    "probes",
    "record_view",
    "rollout",
    "routes",
    "scaling",
    "why",
]
