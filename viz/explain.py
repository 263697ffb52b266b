"""The Explain page's charts: every method's input-token attribution, their agreement, the deletion curves.

Build, then show: ``attribution_frame(tokens, scores) -> DataFrame``, then ``highlighted_text(frame)``,
``attribution_bars(frame, method)``; ``agreement_chart(spearman)``; ``deletion_curves(curves)``.
"""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

__all__ = ["agreement_chart", "attribution_bars", "attribution_frame", "deletion_curves", "highlighted_text"]

CELL_PX = 58  # one token's box in the highlighted text
ROW_PX = 26
PAD = alt.AutoSizeParams(type="pad")


def attribution_frame(tokens: list[str], scores: dict[str, np.ndarray], labels: list[str] | None = None) -> pd.DataFrame:
    """One row per (method, token): the raw score and its share of the method's largest |score|.

    Args:
        tokens: the raw pieces (the ``token`` column of exports).
        labels: what each token shows (``ForwardRecord.labels``: the user's text); default the pieces.

    Returns:
        DataFrame: method, position, token, label, score, share (in [-1, 1]; 1 = the token that most supports the target).
    """
    rows = []
    labels = list(tokens) if labels is None else list(labels)
    if len(labels) != len(tokens):
        msg = f"{len(labels)} labels for {len(tokens)} tokens; pass one label per token"
        raise ValueError(msg)
    for method, values in scores.items():
        values = np.asarray(values, dtype=np.float64)
        top = float(np.abs(values).max()) if len(values) else 0.0
        share = values / top if top > 0 else np.zeros_like(values)
        for position, (token, label) in enumerate(zip(tokens, labels)):
            rows.append(
                {
                    "method": method,
                    "position": position,
                    "token": token,
                    "label": label,
                    "score": float(values[position]),
                    "share": float(share[position]),
                }
            )
    return pd.DataFrame(rows, columns=["method", "position", "token", "label", "score", "share"])


def highlighted_text(frame: pd.DataFrame, *, title: str = "") -> alt.LayerChart:
    """The text once per method (rows), each token's box coloured by its share: blue supports the target,
    red works against it, white = nothing."""
    methods = list(dict.fromkeys(frame["method"]))
    n = int(frame["position"].max()) + 1 if len(frame) else 0
    base = alt.Chart(frame).encode(
        x=alt.X("position:O", axis=alt.Axis(title="token position (0-based)", labelAngle=0)),
        y=alt.Y("method:N", sort=methods, axis=alt.Axis(title=None)),
        tooltip=[
            alt.Tooltip("method:N"),
            alt.Tooltip("position:Q", title="position (0-based)"),
            alt.Tooltip("label:N", title="token"),
            alt.Tooltip("score:Q", format=".4g"),
            alt.Tooltip("share:Q", title="share of the largest", format=".2f"),
        ],
    )
    boxes = base.mark_rect(cornerRadius=2).encode(
        color=alt.Color(
            "share:Q",
            scale=alt.Scale(scheme="redblue", domain=[-1, 1]),
            legend=alt.Legend(title="share", orient="bottom", direction="horizontal", gradientLength=160),
        )
    )
    text = base.mark_text(fontSize=11, font="monospace").encode(
        text="label:N",
        color=alt.condition("abs(datum.share) > 0.6", alt.value("white"), alt.value("black")),
    )
    return (boxes + text).properties(width=max(200, n * CELL_PX), height=len(methods) * ROW_PX, title=title, autosize=PAD)


def attribution_bars(frame: pd.DataFrame, method: str) -> alt.Chart:
    """One method's scores per token, as bars (signed)."""
    part = frame[frame["method"] == method]
    order = [f"{p}: {label}" for p, label in zip(part["position"], part["label"])]
    part = part.assign(axis=order)
    return (
        alt.Chart(part)
        .mark_bar()
        .encode(
            x=alt.X("axis:N", sort=order, axis=alt.Axis(title="token (position: token)", labelAngle=-45)),
            y=alt.Y("score:Q", title=f"{method} score"),
            color=alt.condition("datum.score >= 0", alt.value("#2166ac"), alt.value("#b2182b")),
            tooltip=[alt.Tooltip("position:Q"), alt.Tooltip("label:N", title="token"), alt.Tooltip("score:Q", format=".4g")],
        )
        .properties(width=max(240, 26 * len(part)), height=220, title=f"{method}: attribution per token", autosize=PAD)
    )


def agreement_chart(spearman: pd.DataFrame) -> alt.LayerChart:
    """Spearman rank correlation between methods' token rankings (1 = the same order)."""
    methods = list(spearman.columns)
    long = spearman.reset_index(names="a").melt(id_vars="a", var_name="b", value_name="rho")
    base = alt.Chart(long).encode(
        x=alt.X("b:N", sort=methods, title=None, axis=alt.Axis(labelAngle=-45)),
        y=alt.Y("a:N", sort=methods, title=None),
        tooltip=[alt.Tooltip("a:N"), alt.Tooltip("b:N"), alt.Tooltip("rho:Q", title="Spearman ρ", format=".2f")],
    )
    cells = base.mark_rect().encode(color=alt.Color("rho:Q", scale=alt.Scale(scheme="redblue", domain=[-1, 1]), title="ρ"))
    text = base.mark_text(fontSize=11).encode(
        text=alt.Text("rho:Q", format=".2f"),
        color=alt.condition("abs(datum.rho) > 0.6", alt.value("white"), alt.value("black")),
    )
    size = max(160, 42 * len(methods))
    return (cells + text).properties(width=size, height=size, title="Agreement between methods (Spearman ρ)", autosize=PAD)


def deletion_curves(curves: pd.DataFrame) -> alt.HConcatChart:
    """Comprehensiveness and sufficiency against the share of tokens deleted, per method; random dashed."""
    curves = curves.assign(random=curves["method"] == "random")
    panels = []
    for measure, what in (
        ("comprehensiveness", "drop when the top tokens are deleted (higher = more faithful)"),
        ("sufficiency", "drop when only the top tokens are kept (lower = more faithful)"),
    ):
        panels.append(
            alt.Chart(curves)
            .mark_line(point=True)
            .encode(
                x=alt.X("fraction:Q", title="share of tokens", axis=alt.Axis(format="%")),
                y=alt.Y(f"{measure}:Q", title=measure),
                color=alt.Color("method:N", title="method"),
                strokeDash=alt.condition("datum.random", alt.value([4, 3]), alt.value([1, 0])),
                tooltip=[alt.Tooltip("method:N"), alt.Tooltip("fraction:Q", format=".0%"), alt.Tooltip(f"{measure}:Q", format=".4f")],
            )
            .properties(width=300, height=220, title=what)
        )
    return alt.hconcat(*panels).properties(autosize=PAD)
