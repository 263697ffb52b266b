"""Pure chart builders returning ``alt.Chart``; ``viz.export`` is the only figure writer."""
