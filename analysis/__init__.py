"""Pure functions over arrays: attention maps from Q/K, head statistics, rollout, drift, padding."""

# The package's modules; import the one you need (``from analysis.heads import ...``).
__all__ = [
    "anatomy",
    "attention",
    "backends",
    "bench_results",
    "corpus",
    "cost",
    "drift",
    "head_types",
    "heads",
    "masks",
    "padding",
    "patterns",
    "probes",
    "rollout",
    "scaling",
]
