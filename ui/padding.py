"""Padding page: does padding a batch change anything?"""

from __future__ import annotations

import json

import streamlit as st

from attnscope.analysis.padding import SIDES, TOLERANCE, allowed_keys, padding_study, positions_frame, study_json, summary_frame, verdict
from attnscope.ui.common import bind, budgeted, current, export_buttons, follow, get_record, prelude, show_error
from attnscope.ui.labels import raw
from attnscope.viz.export import MIME
from attnscope.viz.padding import depth_chart, pad_heatmap, pad_heatmap_frame, positions_chart, setting_label

DEFAULT_TEXTS = (
    "The mouse ate the cheese.",
    "Click the left mouse button twice to open the file in a new window.",
    "A cat sat quietly by the door.",
)


@budgeted("padding studies", "Running padded and unpadded batches…")
def get_study(name: str, texts: tuple[str, ...]):
    """Four padded runs (right/left x mask/no mask) and each text alone, all through the cached records."""

    def run(batch, side, mask):
        return get_record(name, "auto", tuple(batch), side, mask, None)

    return padding_study(run, list(texts), SIDES)


st.title("Padding")
st.caption(
    "Texts of different lengths run as one padded batch, padded on the right and on the left, each with the attention mask "
    "and without it (all ones, so real tokens may attend to pads). Every real token is compared with the same text run alone."
)
ws, lm = prelude(text=None)  # this page's box holds the workspace's texts, one per line
own = len(ws.texts) == 1  # one workspace text: this page adds its own examples of other lengths
shown = (*ws.texts, *DEFAULT_TEXTS[1:]) if own else ws.texts
typed = st.sidebar.text_area(
    "Texts, one per line (different lengths)", key="padding_texts", height=140, **bind("padding_texts", "texts", "\n".join(shown))
)
texts = tuple(line.strip() for line in typed.splitlines() if line.strip())
st.caption(
    "Text 0 is the workspace's text (the other pages show it); texts 1 and after are this page's examples of other lengths until you edit them."
    if own
    else "These are the workspace's texts; the other pages show text 0."
)
name = ws.model

try:
    spec = lm.spec
    study = get_study(name, texts)
except ValueError as exc:
    show_error(exc)
    st.stop()

summary = summary_frame(study)
summary["setting"] = [setting_label(s.padding_side, s.attention_mask) for s in study.settings]
st.dataframe(
    summary,
    hide_index=True,
    width="stretch",
    column_config={
        "max relative difference": st.column_config.NumberColumn(format="%.2e"),
        "max |difference|": st.column_config.NumberColumn(format="%.2e"),
        "max pad attention": st.column_config.NumberColumn(format="%.4f"),
    },
)
SHOW = {"ok": st.success, "broken": st.error, "expected": st.info, "changed": st.warning}
for s in study.settings:
    level, line = verdict(s, spec.name)
    SHOW[level](line)

frame = study.frame()
lines = depth_chart(frame, tolerance=TOLERANCE)
st.altair_chart(lines, key="padding_depth", theme=None, width="content")
export_buttons(lines, frame, "padding_depth", key="padding_depth_export")
st.download_button(
    "JSON (every setting and layer)",
    json.dumps(study_json(study, spec.name), indent=1),
    file_name="padding.json",
    mime=MIME["json"],
    key="padding_json",
)

st.subheader("One head, pads included")
labels = {setting_label(s.padding_side, s.attention_mask): s for s in study.settings}
c1, c2, c3, c4 = st.columns(4)
chosen = labels[c1.selectbox("Setting", list(labels), index=2, key="padding_setting")]
record = chosen.record
text_options = list(range(record.batch_size))
kept = st.session_state.get("padding_text", 0)
follow("padding_text", tuple(record.texts), kept if kept in text_options else 0)  # labels show this batch's texts
batch = c2.selectbox("Text (0-based)", text_options, key="padding_text", format_func=lambda b: f"{b}: {record.texts[b][:30]}")
layer = c3.number_input("Layer (0-based)", 0, spec.n_layers - 1, key="padding_layer", **bind("padding_layer", "layer", current().layer))
head = c4.number_input("Head (0-based)", 0, spec.n_heads - 1, key="padding_head", **bind("padding_head", "head", current().head))
weights = record.attention(int(layer), int(head), batch, include_padding=True)
is_pad = record.attention_mask[batch] == 0
shown = record.padded_tokens(batch)  # pads as the tokenizer names them; real tokens as typed (raw with the toggle)
if not raw():
    for slot, label in zip(record.real_index(batch), record.token_labels(batch)):
        shown[int(slot)] = label
heat_frame = pad_heatmap_frame(weights, shown, is_pad, allowed_keys(record, int(layer), batch), layer=int(layer), head=int(head))
heat = pad_heatmap(heat_frame, title=f"{chosen.name}: text {batch}, layer {int(layer)}, head {int(head)} (0-based); pads in red")
st.altair_chart(heat, key="padding_heatmap", theme=None, width="content")
st.caption("Grey cells: forbidden by the mask the model applied. Red outlines and labels: pad rows and columns.")
export_buttons(
    heat,
    heat_frame,
    f"padding_{chosen.padding_side}_{'mask' if chosen.attention_mask else 'nomask'}_L{int(layer)}_H{int(head)}",
    key="padding_heat_export",
)

st.subheader("Position ids")
st.caption(
    "The position id each slot was given. attnscope passes position_ids = cumsum(mask) - 1, so real tokens keep the positions "
    "they have alone on either side. "
    + (
        "For a decoder this matters for left padding: with default positions 0..n-1 the real tokens of a left-padded text "
        "would start at the pad count and every rotary/learned position would shift. Right padding leaves positions as they are."
        if spec.kind == "decoder"
        else "Encoders usually pad on the right; left padding works too because positions are passed explicitly."
    )
)
for side in SIDES:
    rec = study.setting(side, True).record
    passed = rec.position_ids is not None
    chart = positions_chart(
        positions_frame(rec), title=f"{side} padding" + ("" if passed else " (no position_ids passed: the model's default)")
    )
    st.altair_chart(chart, key=f"padding_positions_{side}", theme=None, width="content")
    export_buttons(chart, positions_frame(rec), f"padding_positions_{side}", key=f"padding_positions_{side}_export")
