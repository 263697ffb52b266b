"""Charts of the why panel (viz.why): the bars, the pairs and the circuit graph carry the library's split and shares,
with readable component names."""

from __future__ import annotations

import pandas as pd
import pytest

from attnscope.analysis.why import component_label, component_layer, head_of
from attnscope.models import run
from attnscope.models.circuit import circuit
from attnscope.models.why import why
from attnscope.viz.export import chart_bytes
from attnscope.viz.why import circuit_chart, circuit_frame, circuit_routes, pairs_frame, side_frame, why_chart
from tests import tiny

TEXT = "The mouse ran up the clock."


def datasets(chart) -> list[pd.DataFrame]:
    """The chart's inline datasets as frames (what the browser gets)."""
    return [pd.DataFrame(rows) for rows in chart.to_dict()["datasets"].values()]


@pytest.fixture(scope="module")
def llama():
    lm = tiny.build("llama_gqa")
    rec = run(lm, TEXT, values=True)
    return lm, rec


def test_component_labels_are_readable():
    types = {"L3H2": "previous_token", "L1H0": "other"}
    assert component_label("L3H2", types) == "L3 H2 (previous-token)"
    assert component_label("L1H0", types) == "L1 H0"  # no label for "other"
    assert component_label("L5MLP") == "MLP 5"
    assert [component_label(n) for n in ("embed", "pos", "type")] == ["token embedding", "position embedding", "token-type embedding"]
    assert (component_layer("L3H2"), component_layer("L12MLP"), component_layer("embed")) == (3, 12, None)
    assert (head_of("L3H2"), head_of("L3MLP"), head_of("pos")) == ((3, 2), None, None)


def test_bars_and_pairs_carry_the_split(llama):
    lm, rec = llama
    split = why(lm, TEXT, 1, 3, 5, 2, top=4, rec=rec)
    types = {"L0H1": "previous_token"}
    frame = side_frame(split, types, top=None)
    for side in ("query_side", "key_side"):
        got = frame[frame["side"] == side].set_index("component")["value"]
        assert got.to_dict() == pytest.approx(getattr(split, side), abs=0)
        ranked = frame[frame["side"] == side].sort_values("rank")["value"].abs().to_numpy()
        assert (ranked[:-1] >= ranked[1:]).all()
    assert "L0 H1 (previous-token)" in set(frame["label"])
    # each side with its bias terms sums to the recorded score
    q = frame[frame["side"] == "query_side"]["value"].sum() + split.bias["query"] + split.bias["position"]
    assert q == pytest.approx(split.score, abs=1e-5)
    chart = why_chart(side_frame(split, types, top=3))
    drawn = pd.concat(datasets(chart))
    assert len(drawn) == 6 and set(drawn["side"]) == {"query_side", "key_side"}
    for row in drawn.itertuples(index=False):
        assert row.value == pytest.approx(getattr(split, row.side)[row.component], abs=0)
    pairs = pairs_frame(split, types)
    assert pairs["value"].tolist() == [p["value"] for p in split.pairs] and len(pairs) == 4
    assert pairs["query component"].tolist() == [component_label(p["query"], types) for p in split.pairs]
    assert chart_bytes(chart, "svg").startswith(b"<svg")  # exportable like the other figures


def test_circuit_graph_draws_the_top_feeders(llama):
    lm, rec = llama
    found = circuit(lm, TEXT, 1, 2, rec=rec)
    frame = circuit_frame(found, top=3)
    for side in ("keys", "queries", "values"):
        rows = frame[frame["side"] == side].sort_values("rank")
        assert list(zip(rows["component"], rows["share"])) == found.top(side, 3)
    routes = circuit_routes(frame, "keys", 1, 2)
    edges = routes.edges.sort_values("flow", ascending=False)
    assert [e.split(":", 1)[1] for e in edges["edge_id"]] == [c for c, _ in found.top("keys", 3)]
    assert edges["importance"].max() == pytest.approx(1.0)
    # a feeder sits at the hidden state it writes (embeddings 0, block m -> m + 1); the head at its own output
    for r in routes.edges.itertuples(index=False):
        name = r.edge_id.split(":", 1)[1]
        layer = component_layer(name)
        assert r.y == (0 if layer is None else layer + 1) and r.y2 == 2
    chart = circuit_chart(frame, 1, 2, title="circuit")
    spec = chart.to_dict()
    assert len(spec["hconcat"]) == 3
    assert chart_bytes(chart, "svg").startswith(b"<svg")
