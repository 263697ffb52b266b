"""Compare page: any two models on one text, side by side, on one colour scale and one depth axis."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from attnscope.ui.common import bind, budgeted, export_buttons, get_model, get_record, model_header, model_picker, prelude, show_error
from attnscope.ui.labels import labels as shown_labels
from attnscope.viz.compare import layer_profile, profile_chart, shared_domain
from attnscope.viz.heatmap import attention_frame, heatmap


@budgeted("head statistics", "Computing head statistics…", copy_out=True)
def head_statistics(name: str, text: str) -> pd.DataFrame:
    """Per-head statistics of one model on one text (cached)."""
    return get_record(name, "auto", (text,)).head_stats()


st.title("Compare")
ws, _ = prelude(caption=False)  # model A and the text are the workspace's
text = ws.text
names = [
    ws.model,
    model_picker("Model B (this page's)", key="cmp_b", default="smollm2" if ws.model != "smollm2" else "minilm", follows=ws.model),
]
st.caption(f"Model A is the workspace's model ({ws.model}, the sidebar's Model box), on the workspace's text; pick model B below it.")

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
            # model A's head is the workspace's selection; model B keeps its own
            mine = {"a": lambda key, field, top: bind(key, field, min(getattr(ws, field), top))}.get(tag, lambda *_: {"value": 0})
            layer = left.slider(
                "Layer (0-based)", 0, spec.n_layers - 1, key=f"cmp_{tag}_layer", **mine(f"cmp_{tag}_layer", "layer", spec.n_layers - 1)
            )
            head = right.slider(
                "Head (0-based)", 0, spec.n_heads - 1, key=f"cmp_{tag}_head", **mine(f"cmp_{tag}_head", "head", spec.n_heads - 1)
            )
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
