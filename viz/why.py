"""Charts of "why does this head attend there?": one cell's score split, and a head's circuit as a layered graph.

Build, then show, like the other figures: ``side_frame(split)`` -> ``why_chart(frame)`` (the query-side and
key-side bars), ``pairs_frame(split)`` (the strongest pairs, a table), ``circuit_frame(circuit)`` ->
``circuit_chart(frame)`` (the head's top feeders on the Routes drawing: ``viz.routes.route_chart``). The
split and the circuit are duck-typed (``models.why.Split``, ``models.circuit.Circuit``): this module never imports
the engine. ``types`` maps a head ("L3H2") to its head type ("previous_token", from ``analysis.head_types``) for
the labels.
"""

from __future__ import annotations

from collections.abc import Mapping

import altair as alt
import pandas as pd

from attnscope.analysis.why import component_label, component_layer
from attnscope.viz.heatmap import PAD
from attnscope.viz.routes import EDGE_COLUMNS, RouteFrames, route_chart

__all__ = ["SIDES", "circuit_chart", "circuit_frame", "circuit_routes", "pairs_frame", "side_frame", "why_chart"]

SIDES = {"query_side": "query side: what wrote the query", "key_side": "key side: what wrote the key"}
CIRCUIT_SIDES = {"keys": "keys", "queries": "queries", "values": "values"}
DEFAULT_BARS = 12  # components per side drawn (the largest |contribution|)
DEFAULT_FEEDERS = 5  # feeders per side on the circuit graph
POSITIVE, NEGATIVE = "#1f77b4", "#d62728"


def side_frame(split, types: Mapping[str, str] | None = None, top: int | None = DEFAULT_BARS) -> pd.DataFrame:
    """The two sides' contributions, long-form: side, component, label, value, rank (1 = largest |value| of its
    side); the ``top`` largest |value| per side (None: all)."""
    rows = []
    for side in SIDES:
        items = sorted(getattr(split, side).items(), key=lambda cv: -abs(cv[1]))
        for rank, (name, value) in enumerate(items[:top] if top is not None else items, start=1):
            rows.append({"side": side, "component": name, "label": component_label(name, types), "value": float(value), "rank": rank})
    return pd.DataFrame(rows, columns=["side", "component", "label", "value", "rank"])


def why_chart(frame: pd.DataFrame, *, title: str = "", width: int = 300) -> alt.TopLevelMixin:
    """Two bar charts side by side, the query side and the key side: one bar per component, largest |value| on
    top, blue where it raises the score, red where it lowers it."""
    charts = []
    for side, heading in SIDES.items():
        data = frame[frame["side"] == side]
        rows = max(1, len(data))
        charts.append(
            alt.Chart(data)
            .mark_bar()
            .encode(
                x=alt.X("value:Q", title="contribution to the score"),
                y=alt.Y("label:N", sort=alt.EncodingSortField("rank", order="ascending"), title=None, axis=alt.Axis(labelLimit=260)),
                color=alt.condition(alt.datum.value >= 0, alt.value(POSITIVE), alt.value(NEGATIVE)),
                tooltip=[
                    alt.Tooltip("label:N", title="component"),
                    alt.Tooltip("component:N", title="name"),
                    alt.Tooltip("value:Q", title="contribution", format=".4f"),
                ],
            )
            .properties(width=width, height=18 * rows + 10, title=heading)
        )
    return alt.hconcat(*charts, spacing=40).properties(title=title, autosize=PAD)


def pairs_frame(split, types: Mapping[str, str] | None = None) -> pd.DataFrame:
    """The strongest (query component, key component) terms as a table, largest |value| first."""
    rows = [
        {
            "query component": component_label(p["query"], types),
            "key component": component_label(p["key"], types),
            "value": float(p["value"]),
            "query": p["query"],
            "key": p["key"],
        }
        for p in split.pairs
    ]
    return pd.DataFrame(rows, columns=["query component", "key component", "value", "query", "key"])


def circuit_frame(circuit, types: Mapping[str, str] | None = None, top: int = DEFAULT_FEEDERS, heads_only: bool = False) -> pd.DataFrame:
    """The ``top`` largest feeders of each side (``heads_only``: among earlier heads): side ("keys", "queries",
    "values"), component, label, share (of all components), layer (the block it comes out of; -1 for the
    embeddings), rank."""
    rows = []
    for side in CIRCUIT_SIDES:
        for rank, (name, share) in enumerate(circuit.top(side, top, heads_only=heads_only), start=1):
            layer = component_layer(name)
            rows.append(
                {
                    "side": side,
                    "component": name,
                    "label": component_label(name, types),
                    "share": float(share),
                    "layer": -1 if layer is None else layer,
                    "rank": rank,
                }
            )
    return pd.DataFrame(rows, columns=["side", "component", "label", "share", "layer", "rank"])


def circuit_routes(frame: pd.DataFrame, side: str, layer: int, head: int, target_label: str | None = None) -> RouteFrames:
    """One side of a circuit as the Routes drawing's frames: a column per feeder and one for the head in the middle
    (the strongest feeders nearest it); feeders sit at the hidden state they write (0 = embeddings, block m -> m + 1),
    the head at its own output (``layer`` + 1); a line per feeder, its width the feeder's share relative to the side's
    largest."""
    data = frame[frame["side"] == side].sort_values("rank", kind="stable").reset_index(drop=True)
    target = target_label or f"L{layer} H{head}"
    top = float(data["share"].max()) if len(data) else 1.0
    # the head in the middle column, its feeders fanned out either side (strongest nearest), so fewer lines overlap
    order = [*sorted(range(1, len(data), 2), reverse=True), None, *range(0, len(data), 2)]
    column = {i: x for x, i in enumerate(order)}
    target_x = column[None]
    labels = [target if i is None else data["label"][i] for i in order]
    nodes = [
        {"x": column[i], "y": int(r.layer) + 1, "stack": "", "position": column[i], "token": r.label, "share": float(r.share), "lens": ""}
        for i, r in enumerate(data.itertuples(index=False))
    ]
    nodes.append({"x": target_x, "y": layer + 1, "stack": "", "position": target_x, "token": target, "share": 1.0, "lens": ""})
    edges = []
    for i, r in enumerate(data.itertuples(index=False)):
        x = column[i]
        kind = "residual" if r.layer < 0 else ("mlp" if str(r.component).endswith("MLP") else "head")
        edges.append(
            {
                "x": x,
                "x2": target_x,
                "y": int(r.layer) + 1,
                "y2": layer + 1,
                "kind": kind,
                "stack": "",
                "layer": layer,
                "from_label": r.label,
                "to_label": target,
                "importance": float(r.share) / top if top > 0 else 0.0,
                "flow": float(r.share),
                "heads": r.label if kind == "head" else "",
                "edge_id": f"{side}:{r.component}",
                "top_head": -1,
            }
        )
    return RouteFrames(
        nodes=pd.DataFrame(nodes, columns=["x", "y", "stack", "position", "token", "share", "lens"]),
        edges=pd.DataFrame(
            edges,
            columns=list(EDGE_COLUMNS),
        ),
        columns=pd.DataFrame({"x": range(len(labels)), "label": labels}),
        n_layers=layer + 1,
    )


def circuit_chart(frame: pd.DataFrame, layer: int, head: int, *, target_label: str | None = None, title: str = "") -> alt.TopLevelMixin:
    """The head's circuit: its top feeders of keys, queries and values, each side a small layered graph (the Routes
    drawing: rows are hidden states, 0 = embeddings; a line's width is the feeder's share)."""
    panels: list = [  # route_chart is typed as any top-level chart
        route_chart(
            circuit_routes(frame, side, layer, head, target_label),
            title=f"what feeds its {heading}",
            select=False,
            standalone=False,
            share_title=f"share of the {heading}",
        )
        for side, heading in CIRCUIT_SIDES.items()
        if (frame["side"] == side).any()
    ]
    return alt.hconcat(*panels, spacing=30).properties(title=title, autosize=PAD)
