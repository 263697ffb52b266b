"""Explain page: which input tokens a prediction used, by every method, and which methods to trust on this text."""

from __future__ import annotations

import streamlit as st

from attnscope.models.contributions import DESCRIPTIONS, METHODS
from attnscope.ui.common import (
    bind,
    current,
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

st.title("Explain")
st.caption(
    "Which tokens did the prediction draw on? Attention weights alone ignore value sizes, the residual stream and "
    "layer norms, so each method below answers differently; the faithfulness test says which ranking holds up on "
    "**this** text: deleting the tokens a faithful method ranks highest hurts the prediction more than deleting random ones."
)
ws, lm = prelude()
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
    result = get_explanation(name, "auto", text, position, tuple(methods))
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
        st.caption(
            f"Completeness: the scores sum to f(x) − f(baseline) = {meta['f_difference']:.4g} up to {meta['completeness']:.3g} "
            "(the integration error of the steps; a large gap means the straight path from zero embeddings is not smooth, "
            "as in Pre-LN models whose RMS norm rescales a nearly empty residual stream)."
        )
    st.altair_chart(bars, width="content", theme=None)
    export_buttons(bars, frame[frame["method"] == method].assign(**explains), f"attribution_{method}_{spec.name}", key="export_bars")

    st.subheader("Faithfulness on this text")
    st.caption(
        "ERASER (DeYoung et al. 2020, [paper](https://arxiv.org/abs/1911.03429)): the tokens are **deleted from the input** "
        "(the text is re-tokenised without them; special tokens stay) at 10–50% of the tokens. Comprehensiveness = how much "
        "the target's probability (or, for an encoder, the representation's cosine) drops without the top tokens; "
        "sufficiency = how much it drops with only them. A method beats random when it is more comprehensive and more "
        "sufficient than the mean of 10 random rankings."
    )
    st.dataframe(faith.table, hide_index=True, width="stretch")
    curves = deletion_curves(faith.curves)
    st.altair_chart(curves, width="content", theme=None)
    export_buttons(curves, faith.curves.assign(**explains), f"deletion_{spec.name}", key="export_curves")
    if len(faith.spearman) > 1:
        agreement = agreement_chart(faith.spearman)
        st.caption("Spearman rank correlation of the methods' token rankings: 1 = the same order, 0 = unrelated.")
        st.altair_chart(agreement, width="content", theme=None)
        export_buttons(agreement, faith.spearman.reset_index(names="method"), f"agreement_{spec.name}", key="export_agreement")
except ValueError as exc:
    show_error(exc)
