"""Heads page: what every head does: statistics, rule-based types, GQA groups, rollout, two models compared."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from attnscope.analysis.head_types import HEAD_TYPES, HeadThresholds, classify_heads, sink_rate
from attnscope.analysis.heads import head_table as head_stats_table
from attnscope.models.aggregates import group_similarity_table, head_similarity, rollout_of
from attnscope.models.knockout import head_importance, knockout
from attnscope.ui.common import (
    DEFAULT_TARGET,
    KIND_LABELS,
    TARGET_LABEL,
    bind,
    budgeted,
    current,
    export_buttons,
    get_model,
    get_record,
    induction_table,
    model_picker,
    open_page,
    page_path,
    prelude,
    show_error,
    token_select,
)
from attnscope.ui.heads_corpus import show_corpus
from attnscope.ui.labels import axis_labels, warn_unknown
from attnscope.ui.why import induction_feeders_section
from attnscope.viz.heads import (
    CELL_SELECTION,
    STAT_TITLES,
    depth_profile,
    depth_profile_frame,
    group_similarity_chart,
    layer_change_chart,
    rollout_comparison,
    rollout_comparison_frame,
    rollout_layers,
    similarity_heatmap,
    stat_heatmap,
    type_heatmap,
)

GRID_STATS = (
    "entropy",
    "first_token_mass",
    "special_token_mass",
    "prev_token",
    "next_token",
    "mean_distance",
    "induction",
    "first_token_norm",
    "output_share",
)
ATTENTION_PAGE = page_path("attention")  # absolute: resolves wherever the package is installed
GOTO = "heads_goto"  # (layer, head) picked by a click, consumed on the next run


@budgeted("head statistics", "Computing head statistics…", copy_out=True)
def head_table(name: str, text: str, target: tuple[str, ...] | None = None, kind: str | None = None) -> pd.DataFrame:
    """Every head's statistics for one text (cached per model and text), with the value-weighted norm
    columns where the model has the recording hook (Kobayashi et al. 2020). Encoder-decoder models:
    ``target`` is the decoder's text and ``kind`` "encoder" or "decoder" self-attention."""
    spec = get_model(name).spec
    if spec.kind == "encoder-decoder":
        return get_record(name, "auto", (text,), None, True, None, target or (DEFAULT_TARGET,)).stack(kind).head_stats()
    if spec.recording != "hook":
        return get_record(name, "auto", (text,), None, True, None).head_stats()
    return head_stats_table(get_record(name, "auto", (text,), None, True, None, None, True))


@budgeted("knockouts", "Knocking every head out once…", copy_out=True)
def importance_table(name: str, text: str) -> pd.DataFrame:
    return head_importance(get_model(name), text)


@budgeted("knockouts", "Knocking the head out…")
def knockout_of(name: str, text: str, layer: int, head: int, mode: str):
    return knockout(get_model(name), text, heads=[(layer, head)], mode=mode)


@budgeted("head statistics", "Comparing heads within KV groups…", copy_out=True)
def groups_table(name: str, text: str) -> pd.DataFrame:
    return group_similarity_table(get_record(name, "auto", (text,), None, True, None))


@budgeted("rollouts", "Rolling out attention…", copy_out=True)
def rollout_arrays(name: str, text: str) -> tuple[np.ndarray, np.ndarray]:
    return rollout_of(get_record(name, "auto", (text,), None, True, None))


def _on_cell_click(chart_key: str) -> None:
    """Remember the clicked (layer, head); the page body switches to the Attention page."""
    event = st.session_state.get(chart_key) or {}
    points = (event.get("selection") or {}).get(CELL_SELECTION) or []
    if points and "layer" in points[0] and "head" in points[0]:
        st.session_state[GOTO] = (int(points[0]["layer"]), int(points[0]["head"]))


def clickable(chart, key: str) -> None:
    st.altair_chart(chart, on_select=lambda: _on_cell_click(key), key=key, selection_mode=CELL_SELECTION, width="content", theme=None)


def knockout_tab(name: str, text: str, spec, cell: int) -> None:
    """Head importance (every head knocked out once) and one head's knockout, before and after."""
    if spec.recording != "hook" or spec.kind == "encoder-decoder":
        st.info("Knockout needs the recording hook on a decoder-only or encoder-only model.")
        return
    what = "the text's next-token loss" if spec.kind == "decoder" else "1 − cosine of the final hidden states"
    st.caption(
        f"Knocking a head out removes its output through the attention hook (or replaces it by its mean over the text: "
        f"mean ablation) and runs the text again. Importance: {what} with each head knocked out, one per batch row."
    )
    if st.toggle(
        "Compute head importance (every head knocked out once)",
        key="heads_importance",
        help="SmolLM2: 270 forwards in batches of 32, under a minute on 2 CPU cores for 64 tokens.",
    ):
        imp = importance_table(name, text)
        chart = stat_heatmap(imp, "delta", size=cell)
        clickable(chart, key="heads_importance_grid")
        export_buttons(chart, imp, f"head_importance_{spec.name}", key="heads_importance_export")
    cols = st.columns(3)
    ws = current()
    layer = cols[0].number_input("Layer (0-based)", 0, spec.n_layers - 1, key="ko_layer", **bind("ko_layer", "layer", ws.layer))
    head = cols[1].number_input("Head (0-based)", 0, spec.n_heads - 1, key="ko_head", **bind("ko_head", "head", ws.head))
    mode = cols[2].radio("Ablation", ["zero", "mean"], horizontal=True, key="ko_mode")
    result = knockout_of(name, text, int(layer), int(head), mode)
    if result.kl is not None:
        left, right = st.columns(2)
        left.markdown("**Before** (next token)")
        left.dataframe(result.top_before.round(4), hide_index=True)
        right.markdown(f"**After knocking out layer {int(layer)} head {int(head)}**")
        right.dataframe(result.top_after.round(4), hide_index=True)
        st.caption(
            f"KL(before ‖ after) = {result.kl:.4f} nats · {result.target!r}: {result.target_prob_before:.3f} → "
            f"{result.target_prob_after:.3f} · cosine of the last hidden state {result.hidden_cosine:.4f}"
        )
    else:
        st.caption(
            f"Mean cosine of the final hidden states before and after: {result.hidden_cosine:.4f} "
            "(MiniLM has no masked-LM head here, so the change is shown on hidden states)."
        )
    change = pd.DataFrame({"layer": np.arange(len(result.layer_change)), "change": result.layer_change})
    change_chart = layer_change_chart(change)
    st.altair_chart(change_chart, width="content", theme=None)
    export_buttons(change_chart, change, f"knockout_{spec.name}_L{int(layer)}_H{int(head)}", key="ko_change_export")
    st.caption("1 − mean cosine of the hidden states after each layer (0 = embeddings): the knockout's effect downstream.")


def grid_tab(classified, spec, cell) -> None:
    """Every statistic as a layer x head grid; a click opens that head on the Attention page."""
    stats = [s for s in GRID_STATS if s in classified.columns]
    if spec.kind == "encoder":
        st.caption("Induction needs a decoder (the probe relies on causal attention); pick SmolLM2 to see it.")
    grid = st.columns(2)
    for k, stat in enumerate(stats):
        with grid[k % 2]:
            stat_chart = stat_heatmap(classified, stat, size=cell)
            clickable(stat_chart, key=f"heads_grid_{stat}")
            export_buttons(stat_chart, classified[["layer", "head", stat]], f"heads_{stat}_{spec.name}", key=f"heads_grid_{stat}_export")


def types_tab(classified, spec, cell, thresholds, probe_len) -> None:
    """Head types as one grid, with the rule behind each label."""
    chart = type_heatmap(classified, size=cell)
    clickable(chart, key="heads_types_grid")
    st.markdown(
        "| type | rule (adjust in the sidebar) |\n|---|---|\n"
        f"| induction | induction score ≥ {thresholds.induction} (decoders; T={int(probe_len)} random tokens repeated twice) |\n"
        f"| previous-token | mean A[i, i-1] ≥ {thresholds.previous_token} |\n"
        f"| next-token | mean A[i, i+1] ≥ {thresholds.next_token} (encoders) |\n"
        f"| sink (no-op) | a sink head whose share of its layer's output norm is below {thresholds.noop_share} x an even share "
        "(Kobayashi et al. 2020: its heavy weight moves little) |\n"
        f"| sink / vertical | max(mean A[i, 0] over i ≥ 1, mass on special tokens) ≥ {thresholds.sink} |\n"
        f"| diagonal | mean distance ≤ {thresholds.diagonal_distance} tokens |\n"
        f"| broad | entropy / uniform entropy ≥ {thresholds.broad_entropy} |"
    )
    export_buttons(chart, classified, f"head_types_{spec.name}", key="heads_types_export")


def table_tab(classified) -> None:
    """Every head's statistics and labels as a sortable table."""
    st.caption("Click a column header to sort. Layers and heads are 0-based.")
    shown = classified.drop(columns=[c for c in classified.columns if c.startswith("is_")])
    st.dataframe(shown, hide_index=True, width="stretch")


def gqa_tab(name, text, spec, rec) -> None:
    """How alike query heads sharing a KV head are."""
    if spec.kind == "encoder-decoder":
        st.info("KV-group similarity is shown for encoder-only and decoder-only models.")
    elif spec.kv_group == 1:
        st.info(f"{spec.name} has one KV head per query head (multi-head attention): there are no KV groups to compare.")
    else:
        groups = groups_table(name, text)
        st.caption(
            f"{spec.n_heads} query heads share {spec.n_kv_heads} KV heads ({spec.kv_group} per group). "
            "Similarity of two heads = mean over query tokens of 1 − Jensen–Shannon divergence (bits) of their rows."
        )
        groups_chart = group_similarity_chart(groups)
        st.altair_chart(groups_chart, width="content", theme=None)
        export_buttons(groups_chart, groups, f"heads_gqa_groups_{spec.name}", key="heads_gqa_groups_export")
        layer = st.slider(
            "Layer for the head × head matrix (0-based)",
            0,
            spec.n_layers - 1,
            key="heads_gqa_layer",
            **bind("heads_gqa_layer", "layer", min(current().layer, spec.n_layers - 1)),
        )
        matrix = head_similarity(rec, layer)
        matrix_chart = similarity_heatmap(matrix, spec.kv_group, layer)
        st.altair_chart(matrix_chart, width="content", theme=None)
        matrix_frame = pd.DataFrame(
            [(layer, a, b, float(matrix[a, b])) for a in range(len(matrix)) for b in range(len(matrix))],
            columns=["layer", "head_a", "head_b", "similarity"],
        )
        export_buttons(matrix_chart, matrix_frame, f"heads_similarity_{spec.name}_L{layer}", key="heads_gqa_matrix_export")
        st.dataframe(groups.round(3), hide_index=True)


def rollout_tab(name, text, spec, tokens) -> None:
    """Attention rollout through the layers for one token."""
    if spec.kind == "encoder-decoder":
        st.info(
            "Rollout follows one stack of self-attention layers; in an encoder-decoder model cross-attention "
            "mixes the two stacks, so it is shown for encoder-only and decoder-only models."
        )
        return
    maps, rolled = rollout_arrays(name, text)
    labels = [f"{k}:{t}" for k, t in enumerate(tokens)]
    query = token_select("Token", tokens, "heads_rollout_token", default=len(tokens) - 1, format_func=lambda k: labels[k])
    st.caption(
        "Rollout (Abnar & Zuidema 2020): per layer A' = ½·mean over heads + ½·I, rows renormalised, multiplied through the layers. "
        + ("Causal model: every factor is lower-triangular, so rollout never reaches later tokens." if spec.kind == "decoder" else "")
    )
    layers_chart = rollout_layers(tokens, rolled[:, query, :], query)
    st.altair_chart(layers_chart, width="content", theme=None)
    export_buttons(layers_chart, None, f"rollout_layers_{spec.name}_{query}", key="heads_rollout_layers_export")
    frame = rollout_comparison_frame(tokens, rolled[-1, query], maps[-1, query])
    chart = rollout_comparison(frame)
    st.altair_chart(chart, width="content", theme=None)
    export_buttons(chart, frame, f"rollout_{spec.name}_{query}", key="heads_rollout_export")


def compare_tab(name, text, spec, classified, probe_len) -> None:
    """One statistic by relative depth for two models on the same text."""
    other_default = "smollm2" if name != "smollm2" else "minilm"
    name_b = model_picker("Second model", key="heads_model_b", default=other_default, container=st, follows=name)
    if not name_b or not st.toggle("Compute the second model's statistics", key="heads_compare_on"):
        st.caption("Pick a second model and switch this on; it runs on the same text.")
        return
    spec_b = get_model(name_b).spec
    table_b = head_table(name_b, text, (DEFAULT_TARGET,), "encoder") if spec_b.kind == "encoder-decoder" else head_table(name_b, text)
    if spec_b.kind == "encoder-decoder":
        st.caption(f"{spec_b.name} is an encoder-decoder model: its encoder's self-attention is compared.")
    if spec_b.kind == "decoder":
        table_b = table_b.merge(induction_table(name_b, int(probe_len), 0), on=["layer", "head"], how="left")
    common = [s for s in STAT_TITLES if s in classified.columns and s in table_b.columns]
    stat = st.selectbox("Statistic", common, format_func=lambda s: STAT_TITLES[s], key="heads_compare_stat")
    label_a, label_b = (spec.name, spec_b.name) if spec.name != spec_b.name else (f"{spec.name} (A)", f"{spec_b.name} (B)")
    profile = depth_profile_frame({label_a: classified, label_b: table_b}, stat)
    chart = depth_profile(profile, stat)
    st.altair_chart(chart, width="content", theme=None)
    st.caption("Depth is normalised (layer / (layers − 1)) so models of different depth line up; same text for both.")
    export_buttons(chart, profile, f"heads_compare_{stat}", key="heads_compare_export")


goto = st.session_state.pop(GOTO, None)
if goto is not None:  # the same model and text (the workspace), that head
    if "heads_kind" in st.session_state:  # an encoder-decoder model: open the same target there
        st.session_state["target"] = st.session_state.get("heads_target", DEFAULT_TARGET)
    open_page(ATTENTION_PAGE, layer=goto[0], head=goto[1])

st.title("Heads")
if "heads_source" not in st.session_state and st.query_params.get("corpus"):  # a link straight to a corpus result
    st.session_state["heads_source"] = "Corpus result"
    st.session_state["heads_corpus_dir"] = st.query_params["corpus"]
source = st.sidebar.radio("Source", ["This text", "Corpus result"], horizontal=True, key="heads_source")
if source == "Corpus result":
    st.caption(
        "Which heads do what over a corpus: means with confidence intervals, how unusual a text is, a word's senses across the corpus."
    )
    corpus_dir = st.sidebar.text_input("Corpus result directory (the --out of `cli.py corpus`)", key="heads_corpus_dir")
    try:
        show_corpus(corpus_dir, current().text)
    except ValueError as exc:
        show_error(exc)
    st.stop()
st.caption(
    "Which heads do what: statistics of every head, rule-based types, GQA groups, rollout. Click a grid cell to open that head on the Attention page."
)
ws, lm = prelude()
name, text = ws.model, ws.text

with st.sidebar.expander("Head-type rules (thresholds)", expanded=False):
    d = HeadThresholds()
    thresholds = HeadThresholds(
        previous_token=st.slider("previous-token: prev_token ≥", 0.0, 1.0, d.previous_token, 0.05, key="th_prev"),
        next_token=st.slider("next-token (encoders): next_token ≥", 0.0, 1.0, d.next_token, 0.05, key="th_next"),
        sink=st.slider("sink/vertical: max(first-token, special) mass ≥", 0.0, 1.0, d.sink, 0.05, key="th_sink"),
        diagonal_distance=st.slider("diagonal: mean distance ≤ (tokens)", 0.0, 5.0, d.diagonal_distance, 0.1, key="th_diag"),
        broad_entropy=st.slider("broad: entropy / uniform ≥", 0.0, 1.0, d.broad_entropy, 0.05, key="th_broad"),
        induction=st.slider("induction (decoders): score ≥", 0.0, 1.0, d.induction, 0.05, key="th_ind"),
    )
probe_len = st.sidebar.number_input("Induction probe: random tokens T", 8, 512, 50, 1, key="probe_len")

try:
    spec = lm.spec
    kind, target = None, None
    if spec.kind == "encoder-decoder":
        target = (st.sidebar.text_input(TARGET_LABEL, DEFAULT_TARGET, key="heads_target"),)
        kind = st.radio(
            "Attention",
            list(KIND_LABELS),
            horizontal=True,
            key="heads_kind",
            format_func=KIND_LABELS.get,
            **bind("heads_kind", "kind", ws.kind if ws.kind in KIND_LABELS else "encoder"),
        )
    rec = get_record(name, "auto", (text,), None, True, None, target)
    tokens = axis_labels(rec, kind)[0]  # what the user typed (raw pieces with the sidebar toggle)
    warn_unknown(rec)
    table = head_table(name, text, target, kind)
    if spec.kind == "decoder":
        table = table.merge(induction_table(name, int(probe_len), 0), on=["layer", "head"], how="left")
    classified = classify_heads(table, kind=kind or spec.kind, n_tokens=len(tokens), thresholds=thresholds)

    counts = classified["primary_type"].value_counts()
    cols = st.columns(len(HEAD_TYPES) + 1)
    for col, kind in zip(cols, HEAD_TYPES):
        col.metric(kind.replace("_", "-"), int(classified[f"is_{kind}"].sum()))
    cols[-1].metric("Sink^0.3 (Gu et al.)", f"{sink_rate(classified):.0%}")
    st.caption(
        f"{len(tokens)} tokens · {len(classified)} heads · heads with no label: {int(counts.get('other', 0))}. A head may carry several labels; counts are per label."
    )

    tab_grid, tab_types, tab_table, tab_knock, tab_gqa, tab_rollout, tab_compare = st.tabs(
        ["Heatmaps", "Types", "Table", "Knockout", "GQA groups", "Rollout", "Compare models"]
    )

    # Cells as large as the half-page column allows for few heads (MiniLM: 12 across), compact for many layers.
    cell = 26 if spec.n_heads * spec.n_layers <= 100 else 18
    with tab_grid:
        grid_tab(classified, spec, cell)

    with tab_types:
        types_tab(classified, spec, cell, thresholds, probe_len)

    with tab_table:
        table_tab(classified)

    with tab_knock:
        knockout_tab(name, text, spec, cell)

    with tab_gqa:
        gqa_tab(name, text, spec, rec)

    with tab_rollout:
        rollout_tab(name, text, spec, tokens)

    with tab_compare:
        compare_tab(name, text, spec, classified, probe_len)

    induction_feeders_section(name, classified, int(probe_len))

except ValueError as exc:
    show_error(exc)
