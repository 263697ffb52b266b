"""The "why" panel of the Attention page, and the Heads page's induction heads with their feeders.

Why does this head attend from query i to key j? ``why_panel`` splits the cell's pre-softmax score by the
components that wrote the query and the key (``models.why.why``), draws both sides as bars (``viz.why``), lists
the strongest pairs, links each feeding head to its own map, and draws the head's circuit over the whole text
(``models.circuit.circuit``) on the Routes drawing. ``induction_feeders_section`` lists the Heads page's induction
heads with their strongest key-side feeders. Widgets only: every number comes from the library.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from attnscope.analysis.head_types import classify_heads
from attnscope.analysis.heads import head_table
from attnscope.analysis.why import component_label, head_of
from attnscope.models.circuit import circuit, induction_feeders
from attnscope.models.why import check_why_model, why
from attnscope.ui.common import (
    budgeted,
    export_buttons,
    get_model,
    get_record,
    induction_table,
    page_link,
    page_path,
    show_error,
    token_select,
)
from attnscope.viz.why import circuit_chart, circuit_frame, pairs_frame, side_frame, why_chart

__all__ = ["KEY", "OPEN", "induction_feeders_section", "on_cell", "why_panel"]

ATTENTION_PAGE = page_path("attention")  # absolute: resolves wherever the package is installed
OPEN = "why_open"  # the panel's toggle; a click on a cell of the map opens it
KEY = "why_key"  # the key (column) of the cell being explained
TOP_PAIRS = 10
LINKED_HEADS = 6  # feeding heads linked to their own maps
PROBE_LEN, PROBE_SEED = 50, 0  # the Heads page's induction probe defaults: the same labels on both pages
MAX_INDUCTION = 8  # induction heads listed with their feeders on the Heads page


def on_cell(point: dict) -> None:
    """A click on a map's cell (query_pos, key_pos): open the panel on that cell (the query is the workspace's token)."""
    if "key_pos" in point:
        st.session_state[KEY] = int(point["key_pos"])
        st.session_state[OPEN] = True


@budgeted("why", "Splitting the score by the components that wrote the query and the key…", copy_out=True)
def why_split(name: str, text: str, layer: int, head: int, query: int, key: int):
    rec = get_record(name, "auto", (text,), values=True)
    return why(get_model(name, "auto"), text, layer, head, query, key, top=TOP_PAIRS, rec=rec)


@budgeted("why", "Splitting the stream at every position: the head's circuit…", copy_out=True)
def head_circuit(name: str, text: str, layer: int, head: int):
    return circuit(get_model(name, "auto"), text, layer, head, rec=get_record(name, "auto", (text,), values=True))


@budgeted("head statistics", "Labelling every head (head types)…", copy_out=True)
def head_types(name: str, text: str) -> dict[str, str]:
    """Each head's primary type on this text ("L3H2" -> "previous_token"), by the Heads page's default rules
    (decoders with the induction probe at its default length)."""
    lm = get_model(name, "auto")
    rec = get_record(name, "auto", (text,), values=True)
    table = head_table(rec)
    if lm.spec.kind == "decoder":
        table = table.merge(induction_table(name, PROBE_LEN, PROBE_SEED), on=["layer", "head"], how="left")
    classified = classify_heads(table, kind=lm.spec.kind, n_tokens=len(rec.tokens[0]))
    return {f"L{r.layer}H{r.head}": str(r.primary_type) for r in classified.itertuples(index=False)}


def _statement(split) -> str:
    """The one line that says what is decomposed and how."""
    meta = split.meta
    rest = split.bias["query"] + split.bias["position"]
    found = meta["linearised"]
    norms = found[0] if len(found) == 1 else f"{len(found)} norms: {found[0]} … {found[-1]}"
    line = (
        f"**score {split.score:.3f}** (α = {split.weight:.3f}) = Σ over components of query part · key part "
        f"{'+' if rest >= 0 else '−'} {abs(rest):.3f} of biases · {meta['layout']}, norms linearised at this input ({norms})"
        + (" · RoPE applied per position" if meta["rope"] else "")
        + (f" · keys from KV head {meta['kv_head']}" if meta["kv_group"] > 1 else "")
        + f" · rebuilt score misses the recorded one by {meta['split_error']:.1e}"
    )
    return line


def _feeding_heads(split, k: int = LINKED_HEADS) -> list[tuple[int, int]]:
    """The heads among the largest |contributions| of both sides, strongest first, each once."""
    ranked = sorted([*split.query_side.items(), *split.key_side.items()], key=lambda cv: -abs(cv[1]))
    out: list[tuple[int, int]] = []
    for name, _ in ranked:
        found = head_of(name)
        if found is not None and found not in out:
            out.append(found)
        if len(out) == k:
            break
    return out


def why_panel(name: str, text: str, lm, rec, layer: int, head: int, labels: list[str]) -> None:
    """The "why" panel under a head's map: pick (or click) a cell; its score split, the pairs, links, the circuit."""
    st.toggle(
        "Why does this head attend there? Split a cell's score",
        key=OPEN,
        help="Click a cell of the map (or pick its query and key below): the score is split into what each earlier "
        "head, MLP and embedding wrote into the query and into the key.",
    )
    if not st.session_state.get(OPEN):
        return
    try:
        check_why_model(lm)
    except ValueError as exc:
        show_error(exc)
        return
    spec = lm.spec
    n = len(labels)
    left, right = st.columns(2)
    query = token_select("Query (row)", labels, "why_query", default=0, format_func=lambda i: f"{i}: {labels[i]}", container=left)
    allowed = np.flatnonzero(rec.allowed(layer)[query])
    keys = [int(j) for j in allowed] or list(range(n))
    if st.session_state.get(KEY) not in keys:  # default: the key this query attends to most
        row = rec.attention(layer, head)[query]
        st.session_state[KEY] = int(keys[int(np.argmax(row[keys]))])
    key = right.selectbox("Key (column)", keys, key=KEY, format_func=lambda j: f"{j}: {labels[j]}")
    try:
        split = why_split(name, text, layer, head, int(query), int(key))
        types = head_types(name, text)
    except ValueError as exc:
        show_error(exc)
        return
    st.markdown(_statement(split))
    tab_cell, tab_circuit = st.tabs(["This cell", "The head's circuit"])
    with tab_cell:
        frame = side_frame(split, types)
        head_name = component_label(f"L{layer}H{head}", types)
        chart = why_chart(frame, title=f"{spec.name}: {head_name}, query {query} ({labels[query]}) → key {key} ({labels[key]})")
        st.altair_chart(chart, width="content", key="why_chart", theme=None)
        st.caption(
            "Query side: each component's part of the query against the whole key (scale · q_i^c · k_j); key side: the "
            f"whole query against each component's part of the key. Each side sums, with its bias terms "
            f"(query {split.bias['query']:.3f}, key {split.bias['key']:.3f}, position {split.bias['position']:.3f}), to the score. "
            "Blue raises the score, red lowers it; the largest 12 of each side are drawn."
        )
        export_buttons(chart, frame, f"why_{spec.name}_L{layer}_H{head}_q{query}_k{key}", key="export_why")
        st.markdown("**Strongest pairs** (query component × key component)")
        st.dataframe(pairs_frame(split, types), hide_index=True, width="stretch", key="why_pairs")
        feeding = _feeding_heads(split)
        if feeding:
            st.markdown("**Open a feeding head's own map**")
            cols = st.columns(min(3, len(feeding)))
            for i, (m, g) in enumerate(feeding):
                with cols[i % len(cols)]:
                    page_link(ATTENTION_PAGE, component_label(f"L{m}H{g}", types), icon=":material/grid_view:", layer=m, head=g)
    with tab_circuit:
        _circuit(name, text, spec, layer, head, types)


def _circuit(name: str, text: str, spec, layer: int, head: int, types: dict[str, str]) -> None:
    try:
        found = head_circuit(name, text, layer, head)
    except ValueError as exc:
        show_error(exc)
        return
    target = component_label(f"L{layer}H{head}", types)
    heads_only = st.toggle(
        "Earlier heads only", key="why_heads_only", help="Draw the strongest feeding heads (composition), leaving MLPs and embeddings out."
    )
    frame = circuit_frame(found, types, heads_only=heads_only)
    chart = circuit_chart(frame, layer, head, target_label=target, title=f"{spec.name}: what feeds {target} over the text")
    st.altair_chart(chart, width="content", key="why_circuit", theme=None)
    st.caption(
        "Rows are hidden states (0 = embeddings; block m writes into m + 1); each line joins one of the head's five "
        f"strongest feeders{' among earlier heads' if heads_only else ''} to the head, its width that feeder's share. "
        f"Shares — {found.meta['shares']}."
    )
    export_buttons(chart, frame, f"circuit_{spec.name}_L{layer}_H{head}", key="export_circuit")
    if found.weight_only:
        scores = pd.DataFrame(
            [{"head": component_label(h, types), **v} for h, v in found.weight_only.items()],
            columns=["head", "q", "k", "v"],
        )
        st.markdown("**Weight-only composition** (Elhage et al. 2021), the strongest K-composition first")
        st.dataframe(scores.sort_values("k", ascending=False).head(10), hide_index=True, width="stretch", key="why_weight_only")
        st.caption(found.meta.get("weight_only", ""))


@budgeted("why", "Finding what feeds the induction heads' keys…", copy_out=True)
def feeders_of(name: str, heads: tuple[tuple[int, int], ...], seq_len: int, seed: int):
    return induction_feeders(get_model(name, "auto"), list(heads), seq_len=seq_len, seed=seed)


def induction_frame(found, types: dict[str, str]) -> pd.DataFrame:
    """One row per induction head: its label, induction score on the sequence, and its top key-side feeders."""
    rows = []
    for (layer, head), score, feeders in found:
        row = {"layer": layer, "head": head, "induction head": component_label(f"L{layer}H{head}", types), "induction": score}
        for rank, (feeder, share) in enumerate(feeders, start=1):
            row[f"feeder {rank}"] = component_label(feeder, types)
            row[f"share {rank}"] = share
        rows.append(row)
    return pd.DataFrame(rows)


def induction_feeders_section(name: str, classified: pd.DataFrame, seq_len: int = PROBE_LEN, seed: int = PROBE_SEED) -> None:
    """The Heads page's induction heads (``classified``: its labelled table) with their strongest key-side feeders
    among earlier heads, on one repeated random-token sequence; each head links to its map."""
    lm = get_model(name, "auto")
    if lm.spec.kind != "decoder" or "is_induction" not in classified:
        return
    st.subheader("Induction heads: what feeds their keys")
    chosen = classified[classified["is_induction"]].sort_values("induction", ascending=False).head(MAX_INDUCTION)
    if chosen.empty:
        st.caption("No head reaches the induction threshold: lower it in the sidebar to list heads here.")
        return
    try:
        check_why_model(lm)
        found = feeders_of(name, tuple((int(r.layer), int(r.head)) for r in chosen.itertuples(index=False)), int(seq_len), seed)
    except ValueError as exc:
        show_error(exc)
        return
    types = {f"L{r.layer}H{r.head}": str(r.primary_type) for r in classified.itertuples(index=False)}
    table = induction_frame(found, types)
    st.dataframe(table, hide_index=True, width="stretch", key="induction_feeders")
    st.caption(
        f"The {len(chosen)} strongest induction heads (probe score ≥ the threshold), each with the three earlier heads "
        f"that move its keys' scores most on one sequence of {seq_len} random tokens repeated twice (seed {seed}): the "
        "key-side share of its circuit (the Attention page's why panel); the induction column is the head's score on "
        "that sequence, the order the probe's. A previous-token head feeding an induction "
        "head's keys is K-composition (Elhage et al. 2021)."
    )
    cols = st.columns(min(4, len(table)))
    for i, r in enumerate(table.itertuples(index=False)):
        with cols[i % len(cols)]:
            page_link(ATTENTION_PAGE, f"Open L{r.layer} H{r.head}", icon=":material/grid_view:", layer=int(r.layer), head=int(r.head))
