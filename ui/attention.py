"""Attention page: a per-head heatmap for a typed sentence."""

import altair as alt
import pandas as pd
import streamlit as st

from ui.common import export_buttons, get_model, get_record, model_picker, show_error

st.title("Attention")
name = model_picker()
text = st.sidebar.text_area("Text", "The mouse ate the cheese, then the cat chased the mouse.", key="text")
try:
    lm = get_model(name)
    spec = lm.spec
    st.caption(f"**{spec.name}** · {spec.kind} · {spec.n_layers} layers · {spec.n_heads} heads · {spec.n_kv_heads} KV heads")
    rec = get_record(name, "sdpa", (text,))
    layer = st.sidebar.slider("Layer (0-based)", 0, spec.n_layers - 1, 0, key="layer")
    head = st.sidebar.slider("Head (0-based)", 0, spec.n_heads - 1, 0, key="head")
    weights = rec.attention(layer, head)
    tokens = [f"{i}:{t}" for i, t in enumerate(rec.tokens[0])]
    df = pd.DataFrame(
        [(i, j, tokens[i], tokens[j], float(weights[i, j])) for i in range(len(tokens)) for j in range(len(tokens))],
        columns=["query_pos", "key_pos", "query_token", "key_token", "weight"],
    )
    chart = alt.Chart(df).mark_rect().encode(
        x=alt.X("key_token:N", sort=tokens, title="key"),
        y=alt.Y("query_token:N", sort=tokens, title="query"),
        color=alt.Color("weight:Q", scale=alt.Scale(domain=[0, 1], scheme="viridis")),
        tooltip=["query_token", "key_token", alt.Tooltip("weight:Q", format=".3f")],
    )
    st.altair_chart(chart)
    export_buttons(chart, df, f"attention_L{layer}_H{head}", key="heatmap")
except ValueError as exc:
    show_error(exc)
