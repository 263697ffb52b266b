"""Generate page: the model writes; see what each produced token attended to, its candidates, and the logit lens."""

from __future__ import annotations

import numpy as np
import streamlit as st

from attnscope.models.generation import generate
from attnscope.ui.common import bind, budgeted, current, export_buttons, follow, get_model, prelude, show_error
from attnscope.ui.labels import labels as shown_labels
from attnscope.ui.labels import raw
from attnscope.viz.generate import attention_text, attention_text_frame, candidates_chart, candidates_frame, lens_frame, lens_grid

LENS_COLUMNS = 24  # positions shown in the logit-lens grid (the last ones up to the selected step)
SOURCES = {
    "head": "one head",
    "layer": "mean over a layer's heads",
    "all": "mean over every layer and head",
}


@budgeted("generations", "Generating…")
def get_generation(
    name: str, backend: str, prompt: str, new_tokens: int, sample: bool, seed: int | None, temperature: float, top_k: int | None
):
    """Cached: moving the step slider or picking a token never generates again."""
    return generate(
        get_model(name, backend), prompt, max_new_tokens=new_tokens, do_sample=sample, seed=seed, temperature=temperature, top_k=top_k
    )


@budgeted("logit lens", "Reading the logit lens…", copy_out=True)
def get_lens(name: str, backend: str, prompt: str, new_tokens: int, sample: bool, seed: int | None, temperature: float, top_k: int | None):
    rec = get_generation(name, backend, prompt, new_tokens, sample, seed, temperature, top_k)
    return rec.logit_lens(get_model(name, backend), top_k=5)


def _on_token_pick() -> None:
    """Clicking a generated token in the text moves the step slider to it."""
    picked = st.session_state.get("gen_text")
    points = picked.selection.get("token_pick", []) if picked else []
    if points:
        position = int(points[0]["position"])
        first = st.session_state.get("_gen_prompt_length", 0)
        if position >= first:
            st.session_state["gen_step"] = position - first + 1


def sidebar():
    """Prompt and decoding settings from the sidebar."""
    ws, _ = prelude(needs="decoder", text=None)  # an encoder gets a note and a way to a decoder before anything runs
    name = ws.model
    follow("gen_prompt", ws.text, ws.text)  # the prompt starts as the workspace's text, again whenever that changes
    prompt = st.sidebar.text_area("Prompt", key="gen_prompt", height=110)
    st.caption("The prompt starts as the workspace's text (the other pages' Text box); edits to it stay on this page.")
    new_tokens = int(st.sidebar.number_input("New tokens", min_value=1, max_value=512, value=16, step=1, key="gen_new"))
    sample = st.sidebar.radio("Decoding", ["greedy", "sampling"], horizontal=True, key="gen_mode") == "sampling"
    seed, temperature, top_k = None, 1.0, None
    if sample:
        seed = int(
            st.sidebar.number_input("Seed", min_value=0, value=0, step=1, key="gen_seed", help="The same seed gives the same tokens.")
        )
        temperature = float(st.sidebar.slider("Temperature", 0.1, 2.0, 1.0, 0.05, key="gen_temp"))
        k = int(st.sidebar.number_input("Top-k (0 = whole vocabulary)", min_value=0, value=0, step=1, key="gen_topk"))
        top_k = k or None
    return name, prompt, new_tokens, sample, seed, temperature, top_k


def attention_view(rec, step: int, spec) -> None:
    """The text up to the step, coloured by what the selected generated token attended to."""
    gen = rec.generation
    position = int(gen.positions[step - 1])
    source = st.radio("Colour by", list(SOURCES), format_func=SOURCES.get, horizontal=True, key="gen_source")
    layer = head = None
    if source in ("head", "layer"):
        cols = st.columns(2)
        ws = current()
        start = ws.layer if ws.layer in rec.attention_layers else rec.attention_layers[-1]
        layer = cols[0].select_slider("Layer (0-based)", options=rec.attention_layers, key="gen_layer", **bind("gen_layer", "layer", start))
        if source == "head":
            head = cols[1].slider("Head (0-based)", 0, spec.n_heads - 1, key="gen_head", **bind("gen_head", "head", ws.head))
    # The token produced at this step is read by the model at its own position: its row attends to the
    # prompt and to the tokens produced before it (exact, from the recorded query and keys).
    row = rec.query_row(position, layer=layer, head=head)
    what = {
        "head": f"layer {layer}, head {head}",
        "layer": f"mean over layer {layer}'s {spec.n_heads} heads",
        "all": f"mean over all {len(rec.attention_layers)} layers x {spec.n_heads} heads",
    }[source]
    tokens = rec.tokens[0][: position + 1]
    labels = shown_labels(rec)
    frame = attention_text_frame(tokens, row[: position + 1], position, gen.positions[gen.positions <= position], labels=labels)
    chart = attention_text(frame, title=f"What {labels[position]!r} (position {position}) attends to · {what}")
    st.altair_chart(chart, key="gen_text", on_select=_on_token_pick, theme=None)
    st.caption(
        "Each box is coloured by the weight the outlined token gives it (0 dark, 1 yellow); generated tokens are "
        "underlined in orange. Click a generated token to select its step."
    )
    export_buttons(chart, frame.drop(columns=["x", "x2", "line"]), f"generate_attention_{spec.name}_pos{position}", key="gen_text_export")


def candidates_view(rec, step: int, spec) -> None:
    gen = rec.generation
    i = step - 1
    frame = candidates_frame(gen.top_tokens[i], gen.top_probs[i], gen.tokens[i], labels=None if raw() else gen.top_labels[i])
    how = "sampled" if gen.do_sample else "chosen (greedy)"
    chart = candidates_chart(frame, title=f"Step {step}: top {len(frame)}")
    st.altair_chart(chart, key="gen_candidates", theme=None)
    st.caption(
        f"{gen.tokens[i] if raw() else gen.labels[i]!r} was {how} with probability {gen.chosen_probs[i]:.3f}; entropy {gen.entropy[i]:.2f} nats"
        + (f" (temperature {gen.temperature:g}" + (f", top-k {gen.top_k}" if gen.top_k else "") + ")" if gen.do_sample else "")
        + "."
    )
    export_buttons(chart, frame, f"generate_candidates_{spec.name}_step{step}", key="gen_candidates_export")


def lens_view(lens, rec, step: int, spec) -> None:
    gen = rec.generation
    end = int(gen.positions[step - 1])
    positions = np.arange(max(0, end - LENS_COLUMNS + 1), end + 1)
    frame = lens_frame(lens, positions)
    chart = lens_grid(frame, title="Logit lens: the token each layer's residual stream predicts next")
    st.altair_chart(chart, key="gen_lens", theme=None)
    st.caption(
        "Each cell applies the final norm and the unembedding to the residual stream after that layer (nostalgebraist 2020) "
        "and writes the most likely next token, coloured by its probability; outlined where it is the token that really "
        f"came next. The top row is the model's own prediction. Positions {positions[0]}..{positions[-1]} (0-based)."
    )
    export_buttons(chart, frame, f"logit_lens_{spec.name}", key="gen_lens_export")


st.title("Generate")
try:
    name, prompt, new_tokens, sample, seed, temperature, top_k = sidebar()
    backend = "auto"
    spec = get_model(name, backend).spec
    rec = get_generation(name, backend, prompt, new_tokens, sample, seed, temperature, top_k)
    gen = rec.generation
    st.session_state["_gen_prompt_length"] = gen.prompt_length
    done = f"{len(gen.positions)} new tokens" + (
        f" — {gen.stopped}" if gen.cut_short else " (stopped at end-of-sequence)" if gen.stopped == "eos" else ""
    )
    st.code(rec.texts[0], language=None, wrap_lines=True)
    note = (
        "recorded step by step against the KV cache"
        if gen.recording == "cache"
        else "recorded in one teacher-forced pass (the cache keeps only a window)"
    )
    st.caption(f"{done}; maps {note}, exact: they equal one forward pass over the final text.")
    if gen.cut_short:
        st.warning(f"Generation was cut short: {gen.stopped}. What was generated so far is shown.")
    if st.session_state.get("gen_step", 1) > len(gen.positions):
        st.session_state["gen_step"] = len(gen.positions)
    step = st.slider("Step (replay the generation)", 1, len(gen.positions), key="gen_step") if len(gen.positions) > 1 else 1
    left, right = st.columns([3, 1], gap="medium")
    with left:
        attention_view(rec, step, spec)
    with right:
        candidates_view(rec, step, spec)
    lens_view(get_lens(name, backend, prompt, new_tokens, sample, seed, temperature, top_k), rec, step, spec)
except ValueError as exc:
    show_error(exc)
