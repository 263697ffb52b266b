"""Generation figures: the running text coloured by one token's attention, a step's candidates, the logit lens.

Build, then show: ``attention_text_frame(...) -> DataFrame`` and ``attention_text(frame) -> alt.Chart``;
``candidates_frame`` / ``candidates_chart``; ``lens_frame`` / ``lens_grid``.
"""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

from attnscope.viz.heatmap import MASKED_COLOR, PAD, SCHEME, display_token

__all__ = ["LINE_CHARS", "attention_text", "attention_text_frame", "candidates_chart", "candidates_frame", "lens_frame", "lens_grid"]

LINE_CHARS = 72  # characters per line of the running text
CHAR_PX = 8  # horizontal pixels per character
LINE_PX = 26
TEXT_SELECTION = "token_pick"
LENS_CHARS = 9  # a lens cell's label, "(newline)" whole; longer ones end in "…"
LENS_SELECTION = "lens_pick"


def attention_text_frame(
    tokens: list[str],
    weights: np.ndarray,
    query: int,
    generated: np.ndarray,
    *,
    line_chars: int = LINE_CHARS,
    labels: list[str] | None = None,
) -> pd.DataFrame:
    """The text laid out in lines, each token with the weight ``query`` gives it.

    Args:
        tokens: every token of the sequence; weights: float [n] (the query's row; later tokens are not
            attended, their weight is NaN and they are drawn grey); query: the selected position;
            generated: int [T] positions that were generated; labels: what each token shows
            (``ForwardRecord.labels``; default the pieces made readable).
    Returns:
        DataFrame: position, token, label, weight, generated, selected, x, x2, line.
    """
    labels = [display_token(t) for t in tokens] if labels is None else list(labels)[: len(tokens)]
    x, line, xs, lines = 0, 0, [], []
    for label in labels:
        width = max(len(label), 1) + 1
        if x + width > line_chars and x > 0:
            x, line = 0, line + 1
        xs.append(x)
        lines.append(line)
        x += width
    gen = set(int(p) for p in generated)
    weight = np.asarray(weights, dtype=np.float64).copy()
    weight[query + 1 :] = np.nan  # a causal model's token never sees what came after it
    return pd.DataFrame(
        {
            "position": np.arange(len(tokens)),
            "token": tokens,
            "label": labels,
            "weight": weight,
            "generated": [p in gen for p in range(len(tokens))],
            "selected": np.arange(len(tokens)) == query,
            "x": np.array(xs) * CHAR_PX,
            "x2": (np.array(xs) + np.array([max(len(s), 1) for s in labels])) * CHAR_PX + 4,
            "line": lines,
        }
    )


def attention_text(frame: pd.DataFrame, *, title: str = "", selectable: bool = True) -> alt.LayerChart:
    """The running text, each token's box coloured by the weight the selected token gives it (viridis,
    as the heatmaps); generated tokens underlined, the selected one outlined, later tokens grey."""
    lines = int(frame["line"].max()) + 1
    width = int(frame["x2"].max()) + 8
    base = alt.Chart(frame).encode(
        y=alt.Y("line:O", axis=None),
        tooltip=[
            alt.Tooltip("position:Q", title="position (0-based)"),
            alt.Tooltip("label:N", title="token"),
            alt.Tooltip("weight:Q", title="attention", format=".3f"),
            alt.Tooltip("generated:N", title="generated"),
        ],
    )
    pick = alt.selection_point(name=TEXT_SELECTION, fields=["position"], on="click", clear=False)
    boxes = base.mark_rect(height=LINE_PX - 6, cornerRadius=3).encode(
        x=alt.X("x:Q", axis=None, scale=alt.Scale(domain=[0, width])),
        x2="x2:Q",
        color=alt.condition(
            "isValid(datum.weight)",
            alt.Color(
                "weight:Q",
                scale=alt.Scale(scheme=SCHEME, domain=[0, 1]),
                legend=alt.Legend(title="attention", orient="bottom", direction="horizontal", gradientLength=160),
            ),
            alt.value(MASKED_COLOR),
        ),
        stroke=alt.condition("datum.selected", alt.value("#e4572e"), alt.value(None)),
        strokeWidth=alt.condition("datum.selected", alt.value(3), alt.value(0)),
    )
    if selectable:
        boxes = boxes.add_params(pick)
    text = base.mark_text(align="left", dx=3, fontSize=13, font="monospace").encode(
        x=alt.X("x:Q", scale=alt.Scale(domain=[0, width])),
        text="label:N",
        color=alt.condition("datum.weight > 0.5", alt.value("black"), alt.value("white")),
    )
    under = (
        base.transform_filter("datum.generated")
        .mark_rule(color="#e4572e", strokeWidth=2)
        .encode(
            x=alt.X("x:Q", scale=alt.Scale(domain=[0, width])),
            x2="x2:Q",
            yOffset=alt.value(LINE_PX / 2 - 2),
        )
    )
    return (boxes + text + under).properties(width=width, height=lines * LINE_PX, title=title, autosize=PAD)


def candidates_frame(top_tokens: list[str], top_probs: np.ndarray, chosen: str, labels: list[str] | None = None) -> pd.DataFrame:
    """One step's most likely next tokens (``labels``: decoded, ``Generation.top_labels``). Returns DataFrame: rank,
    token, label, prob, chosen."""
    labels = [display_token(t) for t in top_tokens] if labels is None else list(labels)
    # a label shared by two candidates (" the" and "the" both read "the"?) keeps both bars: rank disambiguates
    seen: dict[str, int] = {}
    unique = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        unique.append(label if seen[label] == 1 else f"{label} ({seen[label]})")
    return pd.DataFrame(
        {
            "rank": np.arange(1, len(top_tokens) + 1),
            "token": top_tokens,
            "label": unique,
            "prob": np.asarray(top_probs, dtype=np.float64),
            "chosen": [t == chosen for t in top_tokens],
        }
    )


def candidates_chart(frame: pd.DataFrame, *, title: str = "") -> alt.Chart:
    """Horizontal bars of the candidates' probabilities; the token that was produced in orange."""
    return (
        alt.Chart(frame)
        .mark_bar()
        .encode(
            y=alt.Y("label:N", sort=alt.SortField("rank"), title=None),
            x=alt.X("prob:Q", scale=alt.Scale(domain=[0, 1]), title="probability"),
            color=alt.condition("datum.chosen", alt.value("#e4572e"), alt.value("#4c78a8")),
            tooltip=[alt.Tooltip("label:N", title="token"), alt.Tooltip("prob:Q", format=".3f"), alt.Tooltip("chosen:N", title="produced")],
        )
        .properties(width=260, height=22 * len(frame), title=title, autosize=PAD)
    )


def lens_frame(lens: pd.DataFrame, positions: np.ndarray | None = None) -> pd.DataFrame:
    """The logit lens (``ForwardRecord.logit_lens``) for the positions shown, with display labels.

    ``hit`` marks cells whose top token is the token that really comes next (the one produced)."""
    frame = lens if positions is None else lens[lens["position"].isin(positions)]
    readable = {"label", "next_label", "top_label"} <= set(frame.columns)  # decoded by models.readout.logit_lens
    columns = ["layer", "position", "token", "next_token", "top_token", "top_prob", "next_prob", "next_rank"]
    frame = frame[columns + (["label", "next_label", "top_label"] if readable else [])].copy()
    inputs = frame["label"] if readable else frame["token"].map(display_token)
    frame["column"] = [f"{p}: {t}" for p, t in zip(frame["position"], inputs)]
    frame["next_label"] = frame["next_label"] if readable else frame["next_token"].map(display_token)
    top = frame["top_label"] if readable else frame["top_token"].map(display_token)
    frame["label"] = [t if len(t) <= LENS_CHARS else t[: LENS_CHARS - 1] + "…" for t in top.astype(str)]
    frame["hit"] = frame["top_token"] == frame["next_token"]
    return frame.reset_index(drop=True)


def lens_grid(frame: pd.DataFrame, *, title: str = "") -> alt.LayerChart:
    """Layers (rows, 0 = embeddings at the bottom) x positions: the lens's top token in each cell,
    coloured by its probability; outlined where it is the token that really comes next."""
    order = list(dict.fromkeys(frame.sort_values("position")["column"]))
    n_layers = int(frame["layer"].max()) + 1
    base = alt.Chart(frame).encode(
        x=alt.X(
            "column:N", sort=order, title="position: token (the lens predicts the next one)", axis=alt.Axis(labelAngle=-45, labelLimit=90)
        ),
        y=alt.Y("layer:O", sort="descending", title="layer (0 = embeddings)"),
        tooltip=[
            alt.Tooltip("layer:O"),
            alt.Tooltip("position:Q"),
            alt.Tooltip("top_label:N" if "top_label" in frame.columns else "top_token:N", title="top token"),
            alt.Tooltip("top_prob:Q", title="its probability", format=".3f"),
            alt.Tooltip("next_label:N", title="next token"),
            alt.Tooltip("next_prob:Q", title="next token's probability", format=".3f"),
            alt.Tooltip("next_rank:Q", title="next token's rank"),
        ],
    )
    cells = base.mark_rect().encode(
        color=alt.Color(
            "top_prob:Q",
            scale=alt.Scale(scheme="blues", domain=[0, 1]),
            legend=alt.Legend(title="top-token probability", orient="bottom", direction="horizontal", gradientLength=160),
        ),
        stroke=alt.condition("datum.hit", alt.value("#e4572e"), alt.value(None)),
        strokeWidth=alt.condition("datum.hit", alt.value(2), alt.value(0)),
    )
    text = base.mark_text(fontSize=9).encode(
        text="label:N",
        color=alt.condition("datum.top_prob > 0.5", alt.value("white"), alt.value("black")),
    )
    width = 56 * len(order)
    return (cells + text).properties(width=width, height=16 * n_layers, title=title, autosize=PAD)
