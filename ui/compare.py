"""Compare page: any two models on one text, side by side, on one colour scale and one depth axis."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from attnscope.ui.common import budgeted, export_buttons, get_model, get_record, model_header, model_picker, show_error
from attnscope.ui.labels import labels as shown_labels
from attnscope.viz.compare import layer_profile, profile_chart, shared_domain
from attnscope.viz.heatmap import attention_frame, heatmap

DEFAULT_TEXT = "The mouse ate the cheese, then the cat chased the mouse."


@budgeted("head statistics", "Computing head statistics…", copy_out=True)
def head_statistics(name: str, text: str) -> pd.DataFrame:
    """Per-head statistics of one model on one text (cached)."""
    return get_record(name, "auto", (text,)).head_stats()


st.title("Compare")
text = st.sidebar.text_area("Text", DEFAULT_TEXT, key="cmp_text", height=110)
names = [model_picker("Model A", key="cmp_a", default="minilm"), model_picker("Model B", key="cmp_b", default="smollm2")]

EACH, SHARED = "each its own scale", "shared scale"
scale_mode = st.radio(
    "Colour scale",
    [EACH, SHARED],
    horizontal=True,
    key="cmp_scale",
    help="Each its own: every map uses its full colour range (patterns stay visible when one model's weights are "
    "much smaller). Shared: equal colours mean equal weights across the two maps.",
)
sides = []  # (column, tag, name, spec, record, layer, head, weights [n, n])
columns = st.columns(2, gap="large")
for column, name, tag in zip(columns, names, ("a", "b")):
    with column:
        try:
            if not name:
                st.info("Type a Hugging Face id or a local directory in the sidebar.")
                continue
            lm = get_model(name, "auto")
            spec = lm.spec
            st.subheader(spec.name)
            st.caption(f"{spec.kind} · {spec.n_layers} layers · {spec.n_heads} heads · {spec.n_kv_heads} KV heads")
            model_header(spec)
            rec = get_record(name, "auto", (text,))
            left, right = st.columns(2)
            layer = left.slider("Layer (0-based)", 0, spec.n_layers - 1, 0, key=f"cmp_{tag}_layer")
            head = right.slider("Head (0-based)", 0, spec.n_heads - 1, 0, key=f"cmp_{tag}_head")
            sides.append((column, tag, name, spec, rec, layer, head, rec.attention(layer, head)))
        except ValueError as exc:
            show_error(exc)

shared = scale_mode == SHARED
# Shared: one range for both maps, so equal colours mean equal weights; each: None = 0..that map's maximum.
domain = shared_domain(*(side[-1] for side in sides)) if shared else None
for column, tag, _name, spec, rec, layer, head, weights in sides:
    with column:
        allowed = rec.allowed(layer)  # the mask the model really applied (causal, window, padding)
        frame = attention_frame(weights, rec.tokens[0], layer=layer, head=head, allowed=allowed, labels_q=shown_labels(rec))
        # A shared scale needs its legend once, on the right-hand map; own scales each need theirs.
        legend = tag == sides[-1][1] or not shared
        title = f"{spec.name}: layer {layer}, head {head} (0-based)"
        chart = heatmap(frame, domain=domain, size=360, legend=legend, title=title)  # the exported figure
        shown = heatmap(frame, domain=domain, size="container", legend=legend, title=title)  # fills its half of the page
        st.altair_chart(shown, width="stretch", key=f"cmp_{tag}_chart", theme=None)
        if frame.attrs["block"] > 1:
            st.caption(f"Drawn as {frame.attrs['reduction']}.")
        export_buttons(chart, frame, f"compare_{spec.name}_L{layer}_H{head}", key=f"export_cmp_{tag}")

if sides:
    if shared:
        st.caption(f"Both maps share one colour scale, 0 to {domain[1]:.3f} (the larger maximum of the two).")
    else:
        tops = ", ".join(f"{side[3].name} {float(side[-1].max()):.3f}" for side in sides)
        st.caption(f"Each map has its own colour scale, 0 to its largest weight ({tops}): compare patterns, not colours.")
    try:
        profiles = pd.concat(
            [layer_profile(head_statistics(name, text), spec.name, spec.n_layers) for _, _, name, spec, *_ in sides],
            ignore_index=True,
        )
        st.subheader("By depth")
        st.caption("Mean over heads per layer (the band spans the heads). Depth = layer / (layers − 1), so models of any depth line up.")
        left, right = st.columns(2)
        for column, metric in zip((left, right), ("entropy", "first_token_mass")):
            with column:
                chart = profile_chart(profiles, metric)
                st.altair_chart(chart, width="content", key=f"cmp_profile_{metric}", theme=None)
                export_buttons(chart, profiles[profiles["metric"] == metric], f"compare_{metric}", key=f"export_cmp_{metric}")
    except ValueError as exc:
        show_error(exc)
