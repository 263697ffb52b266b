"""Masking page: one text through an encoder and a decoder, side by side, and what each mask lets through."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

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
    model_header,
    model_picker,
    prelude,
    show_error,
)
from attnscope.ui.labels import raw
from attnscope.viz.figures import mask_and_attention
from attnscope.viz.masking import right_share_chart, right_share_frame

DEFAULT_LONGER = "A second, longer text in the same batch makes the first one padded up to its length."

HOW_MASKING_WORKS = (
    "**How masking works.** Before the softmax, the model adds a large negative number (the dtype's minimum, "
    "about −3.4·10³⁸ in float32) to the score q·k of every forbidden query/key pair. Its weight becomes exactly 0 "
    "and the allowed weights of the row renormalise to sum to 1. An encoder forbids only padding keys "
    "(bidirectional: every token sees the whole sentence); a decoder also forbids every key to the right of the "
    "query (causal: the lower triangle)."
)


@budgeted("right shares", "Measuring attention to the right of each query…", copy_out=True)
def right_shares(
    name: str, texts: tuple[str, ...], padding_side: str | None, target: tuple[str, ...] | None = None, kind: str | None = None
) -> np.ndarray:
    """[layer, head] mean share of attention on keys right of the query, text 0, real tokens only."""
    rec = get_record(name, "auto", texts, padding_side, True, None, target)
    return rec.stack(kind).right_shares()  # the same call the CLI's figure makes


def model_column(column, role: str, name: str, texts: tuple[str, ...], padding_side: str | None, mine: bool) -> pd.DataFrame:
    """One model's mask and attention in ``column``; returns its right-share frame. ``mine``: the workspace's model,
    whose layer and head are the workspace's selection."""
    with column:
        lm = get_model(name, "auto")
        spec = lm.spec
        st.subheader(f"{role}: {spec.name}")
        masking = {"decoder": "causal", "encoder-decoder": "encoder bidirectional, decoder causal"}.get(spec.kind, "bidirectional")
        st.caption(f"{spec.kind} · {masking} · {spec.n_layers} layers x {spec.n_heads} heads")
        model_header(spec)
        kind, target = None, None
        if spec.kind == "encoder-decoder":
            kind = st.radio("Attention", list(KIND_LABELS), horizontal=True, key=f"mask_{role}_kind", format_func=KIND_LABELS.get)
            target = (st.text_input(TARGET_LABEL, DEFAULT_TARGET, key=f"mask_{role}_target"),) * len(texts)
            st.caption("Cross-attention (target queries over source keys) masks only padding: see it on the Attention page.")
        rec = get_record(name, "auto", texts, padding_side, True, None, target)
        padded = padding_side is not None and kind != "decoder"  # the decoder's view shows the target's real tokens
        n_layers = spec.n_decoder_layers if kind == "decoder" else spec.n_layers
        left, right = st.columns(2)
        ws = current()
        layer_key, head_key = f"mask_{role}_layer", f"mask_{role}_head"
        layer = left.slider(
            "Layer (0-based)",
            0,
            n_layers - 1,
            key=layer_key,
            **(bind(layer_key, "layer", min(ws.layer, n_layers - 1)) if mine else {"value": 0}),
        )
        head = right.slider(
            "Head (0-based)",
            0,
            spec.n_heads - 1,
            key=head_key,
            **(bind(head_key, "head", min(ws.head, spec.n_heads - 1)) if mine else {"value": 0}),
        )
        if padded:
            real = rec.attention_mask[0]
            st.caption(f"Padded to {rec.n_padded} tokens on the {rec.padding_side}: {int((real == 0).sum())} padding position(s).")
        # The same builder as the CLI's masking figure: the mask the layer applied, then the masked map.
        mchart, mframe, chart, frame = mask_and_attention(rec, layer, head, include_padding=padded, stack=kind, raw=raw())
        st.altair_chart(mchart, width="content", key=f"mask_{role}_chart", theme=None)
        export_buttons(mchart, mframe, f"mask_{spec.name}_L{layer}", key=f"export_mask_{role}")
        st.altair_chart(chart, width="content", key=f"mask_{role}_attention", theme=None)
        st.caption("Grey cells got the large negative: their weight is exactly 0.")
        export_buttons(chart, frame, f"masked_attention_{spec.name}_L{layer}_H{head}", key=f"export_matt_{role}")
        label = f"{spec.name} ({kind})" if kind else spec.name
        return right_share_frame(right_shares(name, texts, padding_side, target, kind), label)


st.title("Masking")
ws, lm = prelude(caption=False)  # the workspace's model fills its column; the page picks the other
text = ws.text
if lm.spec.kind == "decoder":
    decoder, encoder = ws.model, model_picker("Encoder to compare with", key="mask_encoder", default="minilm")
else:
    encoder, decoder = ws.model, model_picker("Decoder to compare with", key="mask_decoder", default="smollm2")
st.caption(
    f"The workspace's model ({ws.model}) is the {'decoder' if lm.spec.kind == 'decoder' else 'encoder'} here, on the workspace's "
    "text; the sidebar picks the model it is compared with."
)
padded = st.sidebar.checkbox("Show padding (batch with a longer second text)", key="mask_padded")
longer = st.sidebar.text_input("Second text", DEFAULT_LONGER, key="mask_longer", disabled=not padded)
side = st.sidebar.radio("Padding side", ["right", "left"], key="mask_side", horizontal=True, disabled=not padded)
texts = (text, longer) if padded else (text,)
padding_side = side if padded else None

st.info(HOW_MASKING_WORKS, icon="🧮")
frames = []
columns = st.columns(2, gap="large")
for column, role, name in ((columns[0], "Encoder", encoder), (columns[1], "Decoder", decoder)):
    try:
        if not name:
            column.info(f"Type a Hugging Face id or a local directory for the {role.lower()}.")
            continue
        frames.append(model_column(column, role, name, texts, padding_side, mine=name == ws.model))
    except ValueError as exc:
        with column:
            show_error(exc)

if frames:
    shares = pd.concat(frames, ignore_index=True)
    chart = right_share_chart(shares)
    st.altair_chart(chart, width="content", key="right_share_chart", theme=None)
    summary = ", ".join(f"{m}: {v:.3f}" for m, v in shares.groupby("model", sort=False)["right_share"].mean().items())
    st.caption(
        "Mean over queries (all but the last) of the attention each query puts on keys to its right, averaged over "
        f"heads; the band spans the heads of each layer. Mean over layers — {summary}. A causal mask makes it exactly 0."
    )
    export_buttons(chart, shares, "right_share", key="export_right_share")
