"""Drift page: is "mouse" the same vector in "the mouse ate the cheese" and "click the mouse"?"""

from __future__ import annotations

import re

import streamlit as st

from attnscope.analysis.drift import (
    DEFAULT_CONTEXTS,
    DEFAULT_WORD,
    depth_frame,
    drift,
    layer0_is_static,
    occurrence_frame,
    parse_contexts,
    pca_frame,
    similarity_frame,
)
from attnscope.ui.common import export_buttons, follow, get_record, prelude, show_error
from attnscope.ui.labels import raw
from attnscope.viz.drift import depth_chart, pca_chart, similarity_heatmap

LAYER0_TEXT = {
    True: (
        "Layer 0 is the input embedding entering the first block. Here it is context-free: the word's pieces get the same "
        "vector in every context (the rows of the token-embedding table, the word2vec-like static reference; this model adds "
        "no position embedding to its input)."
    ),
    False: (
        "Layer 0 is the input embedding entering the first block. This model adds position (and token-type) embeddings there "
        "and normalises them, so layer-0 vectors of the same word already differ a little, only through its position "
        "(two contexts with the word at the same position have cosine 1)."
    ),
    None: "Layer 0 is the input embedding entering the first block (no two contexts split the word into the same pieces).",
}

st.title("Contextual drift")
st.caption(
    "How one word's vector changes with its context, layer by layer (Ethayarajh 2019). "
    "A word split into several subword tokens is the mean of its pieces; the first whole-word occurrence per context is used."
)
ws, lm = prelude()
name = ws.model
word = st.sidebar.text_input("Word", DEFAULT_WORD, key="drift_word")
# The contexts start from the workspace's text when it holds the word, then this page's examples.
has_word = re.search(rf"\b{re.escape(word.strip())}\b", ws.text, re.IGNORECASE) is not None if word.strip() else False
start = ([ws.text] if has_word and ws.text not in DEFAULT_CONTEXTS else []) + list(DEFAULT_CONTEXTS)
follow("drift_contexts", ws.text, "\n".join(start))
typed = st.sidebar.text_area("Contexts, one per line (optional sense label: `sense | sentence`)", height=260, key="drift_contexts")
st.caption(
    f"Context 1 is the workspace's text; the others are this page's examples of {word!r} in two senses."
    if has_word
    else f"The workspace's text does not contain {word!r}, so the contexts are this page's examples of it in two senses."
)

try:
    contexts, senses = parse_contexts(typed)
    spec = lm.spec
    record = get_record(name, "auto", tuple(contexts), None, True, None)
    result = drift(record, lm.tokenizer, word, senses)
except ValueError as exc:
    show_error(exc)
    st.stop()

for note in result.notes:
    if not note.startswith("decoder:"):  # the decoder gets the fuller warning below
        st.info(note)
if result.kind == "decoder":
    st.warning(
        "This is a decoder: causal attention lets each occurrence see only its **left context**, the text up to and including "
        "the word (column *seen_by_word*). Whatever follows the word cannot change its vector."
    )
st.caption(LAYER0_TEXT[layer0_is_static(result)])
occurrences = occurrence_frame(result)
if not raw() and len(result.occurrences) == record.batch_size:  # the pieces as typed: "bank", not "Ġbank"
    occurrences["pieces"] = [" + ".join(record.token_labels(i)[int(j)] for j in o.token_index) for i, o in enumerate(result.occurrences)]
st.dataframe(occurrences, hide_index=True, width="stretch")

layer = st.slider("Layer (0 = embeddings, 0-based blocks after that)", 0, result.n_layers - 1, result.n_layers - 1, key="drift_layer")
all_pairs = similarity_frame(result)
layer_pairs = all_pairs[all_pairs["layer"] == layer].reset_index(drop=True)
depth = depth_frame(result)

left, right = st.columns([3, 2])
with left:
    sim_chart = similarity_heatmap(layer_pairs, result.contexts, result.senses)
    st.altair_chart(sim_chart, key="drift_similarity", theme=None, width="content")
    st.caption("CSV holds every layer: layer, context_a, context_b, sense_a, sense_b, cosine (the same file `cli.py drift` writes).")
    export_buttons(sim_chart, all_pairs, f"drift_{result.word}_similarity", key="drift_sim_export")
with right:
    pca = pca_frame(result, layer)
    scatter = pca_chart(pca)
    st.altair_chart(scatter, key="drift_pca", theme=None, width="content")
    export_buttons(scatter, pca, f"drift_{result.word}_pca_L{layer}", key="drift_pca_export")

row = depth.iloc[layer]
c1, c2, c3, c4 = st.columns(4)
c1.metric("within-sense cosine", f"{row.within_sense:.3f}")
c2.metric("across-sense cosine", f"{row.across_sense:.3f}")
c3.metric("self-similarity", f"{row.self_similarity:.3f}")
c4.metric("anisotropy baseline", f"{row.anisotropy_baseline:.3f}", help=f"mean cosine of {result.baseline_pairs} seeded random token pairs")
lines = depth_chart(depth, layer=layer)
st.altair_chart(lines, key="drift_depth", theme=None, width="content")
st.caption(
    f"Self-similarity: mean cosine over all pairs of the word's occurrences. Anisotropy baseline: mean cosine of "
    f"{result.baseline_pairs} seeded random pairs of tokens from two different contexts (special tokens and the word itself "
    "excluded): how alike any two vectors are at that depth. Their difference is how much more alike the word is to itself."
)
export_buttons(lines, depth, f"drift_{result.word}_depth", key="drift_depth_export")
