"""The README's notebook cells (```python notebook blocks), executed in order as Jupyter would run them."""

from __future__ import annotations

import ast
import re

import numpy as np
import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow

BLOCK = re.compile(r"```python notebook\n(.*?)```", re.DOTALL)


def cells() -> list[str]:
    return BLOCK.findall((ROOT / "README.md").read_text(encoding="utf-8"))


def run_cell(source: str, namespace: dict):
    """exec the cell; like Jupyter, return the value of a final bare expression (what it displays)."""
    tree = ast.parse(source)
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    exec(compile(tree, "<README cell>", "exec"), namespace)  # noqa: S102 - the README's own code
    return eval(compile(ast.Expression(last.value), "<README cell>", "eval"), namespace) if last else None  # noqa: S307


def test_readme_has_notebook_cells():
    assert len(cells()) >= 2


def test_readme_notebook_cells_display_charts():
    import altair as alt

    namespace: dict = {}
    shown = [run_cell(cell, namespace) for cell in cells()]
    assert all(isinstance(value, alt.TopLevelMixin) for value in shown), [type(v) for v in shown]
    for value in shown:
        bundle = value._repr_mimebundle_()  # what Jupyter calls to draw the cell's output
        bundle = bundle[0] if isinstance(bundle, tuple) else bundle
        assert any("vegalite" in mime or mime == "text/html" for mime in bundle), list(bundle)
    rec, frame = namespace["rec"], namespace["frame"]
    spec = shown[0].to_dict()
    values = spec["datasets"][next(iter(spec["datasets"]))]  # the heatmap's inline data
    grid = np.zeros((len(rec.tokens[0]),) * 2)
    for row in values:
        grid[row["query_pos"], row["key_pos"]] = row["weight"]
    np.testing.assert_allclose(grid, rec.attention(2, 3), atol=1e-6)
    assert len(frame) == len(rec.tokens[0]) ** 2
    grid_spec = shown[1].to_dict()
    rows = grid_spec["datasets"][next(iter(grid_spec["datasets"]))]
    assert len(rows) == rec.spec.n_layers * rec.spec.n_heads
