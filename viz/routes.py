"""The Routes page's chart: the graph of one prediction, layers as rows and tokens as columns.

Build, then show: ``route_frames(graph, lens) -> RouteFrames`` (long-form nodes and edges, what was collapsed),
then ``route_chart(frames)``. Heads that join the same two nodes are drawn as one line whose width is their
summed importance (the tooltip lists them); when more token columns hold nodes than fit, the columns with the
least flow are merged into one "others" column, and only the edges with the most flow are drawn; ``note``
says what was merged or left out.
"""

from __future__ import annotations

from dataclasses import dataclass

import altair as alt
import numpy as np
import pandas as pd

from attnscope.analysis.routes import Routes
from attnscope.viz.heatmap import display_token

__all__ = ["EDGE_COLUMNS", "EDGE_SELECTION", "KIND_COLOURS", "RouteFrames", "route_chart", "route_frames"]

EDGE_SELECTION = "routes_edge"  # the click selection's name: it carries the picked line's ``edge_id``
KIND_COLOURS = {"head": "#1f77b4", "cross": "#2ca02c", "residual": "#9a9a9a", "mlp": "#ff7f0e"}
MAX_COLUMNS = 40  # token columns drawn one by one; the rest share one "others" column
MAX_EDGES = 1500  # lines drawn (the ones with the most flow)
MLP_OFFSET = 0.28  # an MLP line sits right of its token's residual line
COL_PX, ROW_PX = 44, 24
LIST_HEADS = 6  # heads named in a line's tooltip
PAD = alt.AutoSizeParams(type="pad")


@dataclass(frozen=True)
class RouteFrames:
    """What ``route_chart`` draws. nodes: x, y (layer), stack, position, token, share, lens; edges: x, x2, y, y2,
    kind ("cross": an encoder-decoder's cross-attention heads), stack, layer (the block), from/to labels,
    importance, flow, heads, edge_id, top_head; columns: x, label; note: what was merged."""

    nodes: pd.DataFrame
    edges: pd.DataFrame
    columns: pd.DataFrame
    n_layers: int
    note: str = ""
    lens: pd.DataFrame | None = None  # y, text: the logit lens at the prediction's position, per layer


# The columns of a route drawing's edges (``RouteFrames.edges``), in order.
EDGE_COLUMNS = (
    "x",
    "x2",
    "y",
    "y2",
    "kind",
    "stack",
    "layer",
    "from_label",
    "to_label",
    "importance",
    "flow",
    "heads",
    "edge_id",
    "top_head",
)


def _label(routes: Routes, stack: str, p: int, labels: dict[str, list[str]] | None = None) -> str:
    """A token column's label: position and what the token shows (``labels``: "" -> target, "encoder" -> source)."""
    if labels and stack in labels:
        shown = labels[stack][p]
    else:
        source = routes.source_tokens if stack == "encoder" and routes.source_tokens is not None else routes.tokens
        shown = display_token(source[p])
    return f"src {p}: {shown}" if stack == "encoder" else f"{p}: {shown}"


def _columns(routes: Routes, weight: dict[tuple[str, int], float], max_columns: int, labels=None) -> tuple[dict, list[str], int]:
    """(stack, position) -> column (the encoder's tokens left of the decoder's); column labels; how many
    positions share the "others" column (0: none)."""
    nodes = routes.nodes
    stacks = nodes["stack"] if routes.seq2seq else pd.Series("", index=nodes.index)
    keys = sorted(set(zip(stacks, nodes["position"].astype(int))), key=lambda k: (k[0] != "encoder", k[1]))
    top = ("decoder" if routes.seq2seq else "", routes.position)
    if len(keys) <= max_columns:
        return {k: i for i, k in enumerate(keys)}, [_label(routes, *k, labels) for k in keys], 0
    chosen = set(sorted(keys, key=lambda k: (k != top, -weight.get(k, 0.0)))[: max_columns - 1])
    keep = [k for k in keys if k in chosen]
    column = dict.fromkeys(keys, 0)
    column.update({k: i + 1 for i, k in enumerate(keep)})
    others = len(keys) - len(keep)
    return column, [f"others ({others})", *[_label(routes, *k, labels) for k in keep]], others


def route_frames(
    routes: Routes,
    lens: pd.DataFrame | None = None,
    *,
    max_columns: int = MAX_COLUMNS,
    max_edges: int = MAX_EDGES,
    labels: list[str] | None = None,
    source_labels: list[str] | None = None,
) -> RouteFrames:
    """Long-form frames of a graph for ``route_chart``.

    Args:
        labels, source_labels: what each token (an encoder-decoder's target token) and source token shows
            (``ForwardRecord.labels``); default the raw pieces made readable.
        lens: the logit lens (``ForwardRecord.logit_lens``): its top token per node goes into the tooltips, and
            its row at the prediction's position beside the graph.
    """
    edges = routes.edges.assign(flow=routes.flows())
    blank = pd.Series("", index=edges.index, dtype=object)
    stack = edges["stack"] if routes.seq2seq else blank
    from_stack = edges["from_stack"] if routes.seq2seq else blank
    # the node each edge comes from: a cross-attention edge reads the encoder's last state
    from_layer = np.where(from_stack.to_numpy() == stack.to_numpy(), edges["layer"].to_numpy(), routes.n_source_layers)
    edges = edges.assign(to_stack=stack.to_numpy(), source_stack=from_stack.to_numpy(), from_layer=from_layer)
    top = ("decoder" if routes.seq2seq else "", routes.n_layers, routes.position)
    shares: dict[tuple[str, int, int], float] = {top: 1.0}
    summed = edges.groupby(["source_stack", "from_layer", "from_position"])["flow"].sum()
    for (name, layer, p), value in summed.items():
        key = (name, int(layer), int(p))
        shares[key] = shares.get(key, 0.0) + float(value)
    weight: dict[tuple[str, int], float] = {}
    for (name, _, p), share in shares.items():
        weight[(name, p)] = weight.get((name, p), 0.0) + share
    shown = {}
    if labels is not None:
        shown["decoder" if routes.seq2seq else ""] = list(labels)
    if source_labels is not None:
        shown["encoder"] = list(source_labels)
    column, labels, others = _columns(routes, weight, max_columns, shown)
    notes = []
    if others:
        notes.append(f"{others} token columns with the least flow are merged into “others”")
    top_lens = {}
    if lens is not None and len(lens):
        top_lens = {
            (int(r.layer), int(r.position)): f"{getattr(r, 'top_label', None) or display_token(r.top_token)} ({r.top_prob:.2f})"
            for r in lens.itertuples(index=False)
        }
    node_rows = []
    node_stacks = routes.nodes["stack"] if routes.seq2seq else pd.Series("", index=routes.nodes.index)
    for name, row in zip(node_stacks, routes.nodes.itertuples(index=False)):
        layer, p = int(row.layer), int(row.position)
        node_rows.append(
            {
                "x": column[(name, p)],
                "y": layer,
                "stack": name,
                "position": p,
                "token": _label(routes, name, p, shown).split(": ", 1)[1],
                "share": shares.get((name, layer, p), 0.0),
                "lens": top_lens.get((layer, p), "") if name != "encoder" else "",
            }
        )
    nodes = pd.DataFrame(node_rows, columns=["x", "y", "stack", "position", "token", "share", "lens"])
    if not nodes.empty:
        nodes = nodes.groupby(["x", "y"], as_index=False).agg(
            stack=("stack", "first"),
            position=("position", "first"),
            token=("token", "first"),
            share=("share", "sum"),
            lens=("lens", "first"),
            count=("position", "size"),
        )
        merged = nodes["count"] > 1
        nodes.loc[merged, "token"] = labels[0]
        nodes.loc[merged, "lens"] = ""
        nodes = nodes.drop(columns="count")
    col_of = pd.Series(column)  # (stack, position) -> column
    from_keys = pd.MultiIndex.from_arrays([edges["source_stack"], edges["from_position"].astype(int)])
    to_keys = pd.MultiIndex.from_arrays([edges["to_stack"], edges["to_position"].astype(int)])
    edges = edges.assign(from_col=col_of.reindex(from_keys).to_numpy(), to_col=col_of.reindex(to_keys).to_numpy())
    line_keys = ["to_stack", "source_stack", "layer", "kind", "from_col", "to_col"]
    ordered = edges.sort_values("flow", ascending=False, kind="stable")  # each line's strongest edge first
    lines = (
        ordered.groupby(line_keys, sort=False)
        .agg(
            importance=("importance", "sum"),
            flow=("flow", "sum"),
            y=("from_layer", "first"),
            top_head=("head", "first"),
            count=("flow", "size"),
        )
        .reset_index()
    )
    if len(lines) > max_edges:
        notes.append(f"{len(lines) - max_edges} of {len(lines)} lines with the least flow are not drawn")
        lines = lines.nlargest(max_edges, "flow")
    # the heads on each drawn line, strongest first (the tooltip)
    named = ordered[ordered["kind"] == "head"].merge(lines[line_keys], on=line_keys).groupby(line_keys, sort=False).head(LIST_HEADS)
    # one string per head (a comprehension: string + number columns fail on an empty frame with no head edge)
    named = named.assign(
        item=[
            f"{int(h)} (kv {int(kv)}, {int(a)}→{int(b)}): {imp:.3f}"
            for h, kv, a, b, imp in zip(named["head"], named["kv_head"], named["from_position"], named["to_position"], named["importance"])
        ]
    )
    heads = named.groupby(line_keys, sort=False)["item"].agg("; ".join).rename("heads").reset_index()
    lines = lines.merge(heads, on=line_keys, how="left")
    more = lines["count"] - LIST_HEADS
    lines["heads"] = lines["heads"].fillna("") + np.where((lines["kind"] == "head") & (more > 0), "; +" + more.astype(str) + " more", "")
    cross = (lines["kind"] == "head") & (lines["to_stack"] != lines["source_stack"])
    lines["kind"] = np.where(cross, "cross", lines["kind"])
    shift = np.where(lines["kind"] == "mlp", MLP_OFFSET, 0.0)
    lines = lines.assign(
        x=lines["from_col"] + shift,
        x2=lines["to_col"] + shift,
        y2=lines["layer"].astype(int) + 1,
        stack=lines["to_stack"],
        from_label=[labels[int(a)] for a in lines["from_col"]],
        to_label=[labels[int(b)] for b in lines["to_col"]],
        edge_id=lines["to_stack"]
        + ":"
        + lines["layer"].astype(str)
        + ":"
        + lines["kind"]
        + ":"
        + lines["from_col"].astype(str)
        + ":"
        + lines["to_col"].astype(str),
        top_head=lines["top_head"].fillna(-1).astype(int),  # the line's head with the most flow (-1: not a head line)
    )
    lines = lines[list(EDGE_COLUMNS)].astype({"y": int, "layer": int})
    lines["importance"] = lines["importance"].clip(upper=1.0)
    lens_frame = None
    if top_lens:
        lens_frame = pd.DataFrame(
            [{"y": layer, "text": top_lens.get((layer, routes.position), "")} for layer in range(routes.n_layers + 1)],
            columns=["y", "text"],
        )
    columns = pd.DataFrame({"x": np.arange(len(labels)), "label": labels})
    depth = max(routes.n_layers, routes.n_source_layers)
    return RouteFrames(nodes, lines.reset_index(drop=True), columns, depth, "; ".join(notes), lens_frame)


def route_chart(
    frames: RouteFrames, *, title: str = "", select: bool = True, standalone: bool = True, share_title: str = "share of the prediction"
) -> alt.TopLevelMixin:
    """The graph: a row per layer (0 = embeddings, at the bottom), a column per token; a line per edge (heads
    joining the same two nodes share one), width = importance, colour = kind; dots are nodes, sized by their
    share of the prediction. Beside it, the logit lens's top token at the prediction's position per layer.

    Args:
        select: clicking a line selects it (``EDGE_SELECTION``, field ``edge_id``).
        standalone: False for a panel inside a concatenated figure (no autosize of its own).
        share_title: what a line's flow and a dot's share are, in the tooltips (other graphs drawn this way).
    """
    n_layers = frames.n_layers
    m = max(1, len(frames.columns))
    height = (n_layers + 2) * ROW_PX
    width = max(240, m * COL_PX)
    x = alt.X("x:Q", scale=alt.Scale(domain=[-0.6, m - 0.4]), axis=None)
    y_scale = alt.Scale(domain=[-1.6, n_layers + 0.5])
    y = alt.Y("y:Q", scale=y_scale, axis=alt.Axis(values=list(range(n_layers + 1)), title="layer (0 = embeddings)", grid=False))
    kinds = [k for k in KIND_COLOURS if k in set(frames.edges["kind"])] or ["residual"]
    colour = alt.Color(
        "kind:N",
        scale=alt.Scale(domain=kinds, range=[KIND_COLOURS[k] for k in kinds]),
        legend=alt.Legend(title="edge", orient="top"),
    )
    lines = (
        alt.Chart(frames.edges)
        .mark_rule(strokeCap="round")
        .encode(
            x=x,
            x2="x2:Q",
            y=y,
            y2="y2:Q",
            color=colour,
            strokeWidth=alt.StrokeWidth("importance:Q", scale=alt.Scale(domain=[0, 1], range=[0.6, 9]), legend=None),
            opacity=alt.value(0.75),
            tooltip=[
                alt.Tooltip("kind:N", title="edge"),
                *([alt.Tooltip("stack:N", title="into the")] if (frames.edges["stack"] != "").any() else []),
                alt.Tooltip("layer:Q", title="block (0-based)"),
                alt.Tooltip("from_label:N", title="from"),
                alt.Tooltip("to_label:N", title="to"),
                alt.Tooltip("importance:Q", title="importance (summed over heads)", format=".3f"),
                alt.Tooltip("flow:Q", title=share_title, format=".3f"),
                alt.Tooltip("heads:N", title="heads"),
            ],
        )
    )
    if select:
        lines = lines.add_params(alt.selection_point(name=EDGE_SELECTION, fields=["edge_id"], on="click", clear="dblclick"))
    dots = (
        alt.Chart(frames.nodes)
        .mark_circle(color="#333333", opacity=0.9)
        .encode(
            x=x,
            y=y,
            size=alt.Size("share:Q", scale=alt.Scale(domain=[0, 1], range=[12, 220]), legend=None),
            tooltip=[
                alt.Tooltip("y:Q", title="layer (0 = embeddings)"),
                alt.Tooltip("position:Q", title="position (0-based)"),
                alt.Tooltip("token:N"),
                alt.Tooltip("share:Q", title=share_title, format=".3f"),
                alt.Tooltip("lens:N", title="logit lens top token"),
            ],
        )
    )
    labels = (
        alt.Chart(frames.columns.assign(y=-0.9))
        .mark_text(angle=315, align="right", baseline="middle", fontSize=11, font="monospace")
        .encode(x=x, y=y, text="label:N")
    )
    graph = (lines + dots + labels).properties(width=width, height=height, title=title)
    if frames.lens is None:
        return graph.properties(autosize=PAD) if standalone else graph
    lens = (
        alt.Chart(frames.lens)
        .mark_text(align="left", fontSize=11, font="monospace")
        .encode(
            x=alt.X("zero:Q", scale=alt.Scale(domain=[0, 1]), axis=None),
            y=alt.Y("y:Q", scale=y_scale, axis=None),
            text="text:N",
            tooltip=[alt.Tooltip("y:Q", title="layer"), alt.Tooltip("text:N", title="top token (probability)")],
        )
        .transform_calculate(zero="0")
        .properties(width=150, height=height, title="logit lens at the prediction")
    )
    return alt.hconcat(graph, lens, spacing=4).properties(autosize=PAD)
