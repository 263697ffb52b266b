"""Charts of a word's contextual drift (frames from ``analysis.drift``)."""

from __future__ import annotations

import json
from typing import Final

import altair as alt
import pandas as pd

__all__ = ["context_labels", "depth_chart", "pca_chart", "similarity_heatmap"]

SENSE_SCHEME: Final = "category10"
LABEL_CHARS = 0  # axis labels: number and sense only; tooltips and the table give the sentence


def context_labels(contexts: list[str], senses: list[str], limit: int = LABEL_CHARS) -> list[str]:
    """Short axis labels "1 animal: The cat chased…" (1-based, as the contexts were typed)."""
    labels = []
    for i, (text, sense) in enumerate(zip(contexts, senses)):
        short = text if len(text) <= limit else text[: limit - 1] + "…"
        labels.append(f"{i + 1} {sense}: {short}" if limit else f"{i + 1} {sense}")
    return labels


def similarity_heatmap(
    frame: pd.DataFrame, contexts: list[str], senses: list[str], *, title: str | None = None
) -> alt.LayerChart | alt.FacetChart:
    """Cosine similarity between the word's occurrences at one layer, values written in the cells.

    Args:
        frame: rows of ``analysis.drift.similarity_frame`` for one layer.
        contexts, senses: in context order (rows and columns follow it).
        title: default names the layer.
    Returns:
        alt.LayerChart (cells + values).
    """
    layers = frame["layer"].unique()
    if len(layers) != 1:
        msg = f"similarity_heatmap takes one layer's rows; got layers {sorted(layers)[:5]}… — filter the frame first"
        raise ValueError(msg)
    order = {text: i for i, text in enumerate(contexts)}
    data = frame.assign(a=frame["context_a"].map(order), b=frame["context_b"].map(order))
    lookup = json.dumps({str(i): label for i, label in enumerate(context_labels(contexts, senses))}, ensure_ascii=False)
    side = max(260, min(520, 52 * len(contexts)))
    base = alt.Chart(data).encode(
        x=alt.X("b:O", title="context (number, sense)", axis=alt.Axis(labelExpr=f"{lookup}[datum.value]", labelAngle=-40, orient="top")),
        y=alt.Y("a:O", title="context (number, sense)", axis=alt.Axis(labelExpr=f"{lookup}[datum.value]")),
    )
    low = float(min(frame["cosine"].min(), 0.5))
    cells = base.mark_rect().encode(
        color=alt.Color("cosine:Q", scale=alt.Scale(domain=[low, 1.0], scheme="viridis"), title="cosine"),
        tooltip=[
            alt.Tooltip("context_a:N", title="context A"),
            alt.Tooltip("sense_a:N", title="sense A"),
            alt.Tooltip("context_b:N", title="context B"),
            alt.Tooltip("sense_b:N", title="sense B"),
            alt.Tooltip("cosine:Q", format=".4f"),
        ],
    )
    values = base.mark_text(fontSize=10).encode(
        text=alt.Text("cosine:Q", format=".2f"),
        color=alt.condition(f"datum.cosine > {low + 0.6 * (1 - low)}", alt.value("black"), alt.value("white")),
    )
    # a short title over a subtitle: a heatmap of a few contexts is narrower than one long line
    shown: str | alt.TitleParams = title or alt.TitleParams(
        "Cosine similarity", subtitle=f"layer {int(layers[0])} (0 = embeddings)", anchor="start"
    )
    return alt.layer(cells, values).properties(width=side, height=side, title=shown, autosize=alt.AutoSizeParams(type="pad"))


def depth_chart(frame: pd.DataFrame, *, layer: int | None = None) -> alt.VConcatChart:
    """Two panels over depth: within- vs across-sense similarity; self-similarity vs anisotropy baseline.

    Args:
        frame: ``analysis.drift.depth_frame``.
        layer: draw a vertical rule at this layer (the one the slider picked).
    Returns:
        alt.VConcatChart.
    """
    senses = frame.melt("layer", ["within_sense", "across_sense"], var_name="pairs", value_name="mean_cosine").dropna()
    ethayarajh = frame.melt(
        "layer", ["self_similarity", "anisotropy_baseline", "adjusted_self_similarity"], var_name="measure", value_name="value"
    ).dropna()
    x = alt.X(
        "layer:Q", title="layer (0 = embeddings)", scale=alt.Scale(domain=[0, int(frame["layer"].max())]), axis=alt.Axis(tickMinStep=1)
    )
    top = (
        alt.Chart(senses)
        .mark_line(point=True)
        .encode(
            x=x,
            y=alt.Y("mean_cosine:Q", title="mean cosine", scale=alt.Scale(zero=False)),
            color=alt.Color("pairs:N", title="pairs of contexts", sort=["within_sense", "across_sense"]),
            tooltip=["layer:Q", "pairs:N", alt.Tooltip("mean_cosine:Q", format=".4f")],
        )
        .properties(width=560, height=220, title="Same sense vs different sense")
    )
    bottom = (
        alt.Chart(ethayarajh)
        .mark_line(point=True)
        .encode(
            x=x,
            y=alt.Y("value:Q", title="cosine"),
            color=alt.Color(
                "measure:N", title="Ethayarajh (2019)", sort=["self_similarity", "anisotropy_baseline", "adjusted_self_similarity"]
            ),
            strokeDash=alt.condition("datum.measure == 'anisotropy_baseline'", alt.value([5, 3]), alt.value([1, 0])),
            tooltip=["layer:Q", "measure:N", alt.Tooltip("value:Q", format=".4f")],
        )
        .properties(width=560, height=220, title="Self-similarity, anisotropy baseline and their difference")
    )
    if layer is not None:
        rule = alt.Chart(pd.DataFrame({"layer": [layer]})).mark_rule(color="gray", strokeDash=[2, 2]).encode(x="layer:Q")
        top, bottom = top + rule, bottom + rule
    return alt.vconcat(top, bottom).resolve_scale(color="independent")


def pca_chart(frame: pd.DataFrame, *, title: str | None = None) -> alt.LayerChart | alt.FacetChart:
    """The occurrences projected on their first two principal components, coloured by sense.

    Args:
        frame: ``analysis.drift.pca_frame`` (one layer).
    Returns:
        alt.LayerChart (points + context numbers).
    """
    data = frame.assign(number=[str(i + 1) for i in range(len(frame))])
    layer = int(frame["layer"].iloc[0])
    ev1, ev2 = float(frame["explained_pc1"].iloc[0]), float(frame["explained_pc2"].iloc[0])
    base = alt.Chart(data).encode(
        x=alt.X("pc1:Q", title=f"PC1 ({ev1:.0%} of variance)"),
        y=alt.Y("pc2:Q", title=f"PC2 ({ev2:.0%} of variance)"),
    )
    points = base.mark_circle(size=140, opacity=0.85).encode(
        color=alt.Color("sense:N", scale=alt.Scale(scheme=SENSE_SCHEME)),
        tooltip=["number:N", "sense:N", "context:N", "pieces:N", alt.Tooltip("pc1:Q", format=".3f"), alt.Tooltip("pc2:Q", format=".3f")],
    )
    numbers = base.mark_text(dx=10, dy=-8, fontSize=11).encode(text="number:N")
    title = title or f"PCA of the word's vectors, layer {layer} (numbers = contexts)"
    return alt.layer(points, numbers).properties(width=420, height=340, title=title)
