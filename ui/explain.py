"""Explain page: which input tokens a prediction used, by every method, and which methods to trust on this text."""

from __future__ import annotations

import streamlit as st

from attnscope.analysis.faithfulness import verdict_words
from attnscope.models.contributions import DESCRIPTIONS, METHODS, explain_texts
from attnscope.models.faithfulness import verdict_subject
from attnscope.models.readout import lm_head
from attnscope.ui.common import (
    bind,
    current,
    demo_texts,
    export_buttons,
    get_explanation,
    get_record,
    page_link,
    page_path,
    prelude,
    show_error,
    token_select,
)
from attnscope.ui.labels import labels as shown_labels
from attnscope.ui.labels import warn_unknown
from attnscope.viz.explain import agreement_chart, attribution_bars, attribution_frame, deletion_curves, highlighted_text

ROUTES_PAGE = page_path("routes")
TARGETS = {"top": "the top token", "token": "a token I type", "contrast": "one token rather than another"}

st.title("Explain")
st.caption(
    "Which tokens did the prediction draw on? Attention weights alone ignore value sizes, the residual stream and "
    "layer norms, so each method below answers differently; the faithfulness test says which ranking holds up on "
    "**this** text: deleting the tokens a faithful method ranks highest hurts the prediction more than deleting random ones."
)
ws, lm = prelude()
DEMO = demo_texts()
name, text = ws.model, ws.text

try:
    spec = lm.spec
    rec = get_record(name, "auto", (text,))
    warn_unknown(rec)
    tokens = shown_labels(rec)  # what the user typed, token by token (raw pieces with the sidebar toggle)
    n = len(tokens)
    if spec.kind == "decoder":
        position = token_select(
            "Prediction made at",
            tokens,
            "explain_position",
            default=n - 1,
            format_func=lambda i: f"{i}: after {tokens[i]!r}",
            help="The model's top next token at this position is the target; the text after it is not used.",
        )
        shown_position = position
        if position == n - 1:
            position = None
    else:
        options = [None, *range(n)]
        token = current().fit_token(n).token  # None: the sentence embedding
        position = st.selectbox(
            "Explain",
            options,
            format_func=lambda i: "the sentence embedding (mean of the last layer)" if i is None else f"token {i}: {tokens[i]!r}",
            key="explain_position",
            **bind("explain_position", "token", token, ("encoder", tuple(tokens))),
        )
        shown_position = position
    methods = st.multiselect(
        "Methods",
        list(METHODS),
        default=list(METHODS),
        key="explain_methods",
        help="Every method runs on the same target; gradient methods and value zeroing need extra passes.",
    )
    if not methods:
        st.info("Pick at least one method.")
        st.stop()
    target_token = contrast = None
    if spec.kind == "decoder" and lm_head(lm) is not None:
        asked = st.radio(
            "Explain",
            list(TARGETS),
            format_func=TARGETS.get,
            horizontal=True,
            key="explain_target",
            help="What f is: the log-probability of the top token or of a token you type, or the logit difference of "
            "one token rather than another (Yin & Neubig 2022). Gradient methods and the faithfulness test use it; "
            "mixing methods attribute the position's representation, the same for any token.",
        )
        if asked != "top":
            left, right = st.columns(2)
            typed = left.text_input(
                "Token to explain" + (" (empty: the top token)" if asked == "contrast" else ""),
                key="explain_target_token",
                help="One token of the model's vocabulary, as typed; a leading space matters (' Mary').",
            )
            target_token = typed or None
            if asked == "token" and target_token is None:
                st.info("Type the token to explain, e.g. ' Paris' (with its leading space).")
                st.stop()
            if asked == "contrast":
                contrast = (
                    right.text_input("Rather than", key="explain_contrast", help="The token to explain it against, e.g. ' John'.") or None
                )
                if contrast is None:
                    st.info("Type the token to contrast with, e.g. ' John'.")
                    st.stop()
    result = get_explanation(name, "auto", text, position, tuple(methods), target_token, contrast)
    st.markdown(f"**Explains:** {result.target}")
    if shown_position is not None and spec.kind in ("decoder", "encoder"):
        page_link(ROUTES_PAGE, "Open the routes of this prediction (which heads carried it)", icon=":material/route:", token=shown_position)
    for method, why in result.skipped.items():
        st.caption(f":material/block: {method}: {why}")
    faith = result.faithfulness
    scores = {method: res.attribution for method, res in result.methods.items()}
    frame = attribution_frame(result.tokens, scores, labels=tokens if len(tokens) == len(result.tokens) else None)
    explains = {"explains": result.target, **(result.prediction.facts() if result.prediction is not None else {})}

    st.subheader("Attributions")
    st.caption(
        "Each row is one method's input-token scores, scaled to its largest: blue supports the target, red works against it. "
        + " · ".join(f"[{m}]({DESCRIPTIONS[m][1]}): {DESCRIPTIONS[m][0]}" for m in result.methods)
    )
    chart = highlighted_text(frame, title="Input-token attribution, by method")
    st.altair_chart(chart, width="content", theme=None)
    export_buttons(chart, frame.assign(**explains), f"attributions_{spec.name}", key="export_attr")

    method = st.selectbox("Bars for", list(result.methods), key="explain_bars")
    bars = attribution_bars(frame, method)
    st.caption(
        f"{method}: {DESCRIPTIONS[method][0]} ([paper]({DESCRIPTIONS[method][1]})). {result.methods[method].meta.get('decomposed', '')}"
    )
    meta = result.methods[method].meta
    if "completeness" in meta:  # integrated gradients: how far the attributions' sum is from f(x) − f(baseline)
        verdict = "adds up" if meta["adds_up"] else "does not add up"
        st.caption(
            f"Completeness ({verdict}): the scores sum to {meta['attribution_sum']:.4g} against f(x) − f(baseline) = "
            f"{meta['f_difference']:.4g}, a gap of {meta['completeness']:.3g} ({meta['completeness_share']:.1%}; the target is at most 5%) "
            f"with {meta['steps']} steps ({meta['steps_rule']}). Baseline: {meta['baseline']}."
        )
    st.altair_chart(bars, width="content", theme=None)
    export_buttons(bars, frame[frame["method"] == method].assign(**explains), f"attribution_{method}_{spec.name}", key="export_bars")

    st.subheader("Faithfulness on this text")
    st.caption(
        "ERASER (DeYoung et al. 2020, [paper](https://arxiv.org/abs/1911.03429)): the tokens are **deleted from the input** "
        f"(the text is re-tokenised without them) at 10–50% of the tokens; {faith.meta['removal']}. Comprehensiveness = how much "
        "f drops without the top tokens (higher is better); sufficiency = how much it drops with only them (lower is better). "
        f"A method beats random only when both lie outside the central 95% of {faith.meta['n_random']} seeded random rankings' "
        "(the table's `_random_low` / `_random_high`)."
    )
    st.dataframe(faith.table, hide_index=True, width="stretch")
    what = verdict_subject(faith.target)
    for _, row in faith.table.iterrows():
        comp_words, suff_words = verdict_words(row, faith.meta["f_full"], what)
        mark = ":material/check: beats random" if row["beats_random"] else ":material/remove: no better than random"
        st.caption(f"**{row['method']}** ({mark}): {comp_words}; {suff_words}.")
    curves = deletion_curves(faith.curves)
    st.altair_chart(curves, width="content", theme=None)
    export_buttons(curves, faith.curves.assign(**explains), f"deletion_{spec.name}", key="export_curves")
    if len(faith.spearman) > 1:
        agreement = agreement_chart(faith.spearman)
        st.caption("Spearman rank correlation of the methods' token rankings: 1 = the same order, 0 = unrelated.")
        st.altair_chart(agreement, width="content", theme=None)
        export_buttons(agreement, faith.spearman.reset_index(names="method"), f"agreement_{spec.name}", key="export_agreement")

    st.subheader("Over a set of texts")
    st.caption(
        "One text is an anecdote. Run the same methods and test on the first texts of the bundled demo set: each method's "
        "mean comprehensiveness and sufficiency with Student-t 95% intervals over the texts, and on how many texts it beat random."
    )
    left, right = st.columns([1, 2])
    limit = left.number_input("Texts from the demo set", min_value=2, max_value=len(DEMO), value=5, step=1, key="explain_set_limit")
    key = (name, tuple(methods), position, target_token, contrast, int(limit))
    if right.button("Run the demo set", key="explain_set_run", icon=":material/play_arrow:"):
        progress = st.progress(0.0, text=f"0 of {int(limit)} texts")
        st.session_state["explain_set"] = (
            key,
            explain_texts(
                lm,
                DEMO[: int(limit)],
                methods=methods,
                position=position,
                target_token=target_token,
                contrast=contrast,
                on_text=lambda done, total: progress.progress(done / total, text=f"{done} of {total} texts"),
            ),
        )
    kept = st.session_state.get("explain_set")
    if kept is not None and kept[0] == key:
        over = kept[1]
        st.caption(f"{over.scored} texts scored" + (f"; {len(over.skipped)} skipped ({over.skipped[0]})" if over.skipped else ""))
        st.dataframe(over.table, hide_index=True, width="stretch", key="explain_set_table")
except ValueError as exc:
    show_error(exc)
