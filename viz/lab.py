"""Charts of the Lab page: what a pattern keeps of a head's map, coverage per head, effect, sweeps and costs.

Build, then show: every ``*_frame`` returns a long-form DataFrame and every chart builder an Altair chart.
"""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

from attnscope.viz.heatmap import PAD, display_token

__all__ = [
    "STATUS",
    "cost_chart",
    "coverage_heatmap",
    "flash_io_chart",
    "kept_lost_chart",
    "kept_lost_frame",
    "kv_cache_chart",
    "layer_error_chart",
    "pattern_map_chart",
    "receptive_field_chart",
    "recurrence_memory_chart",
    "scale_effect_chart",
    "scale_entropy_chart",
    "sweep_chart",
]

# Why a cell of the exact map is or is not in the pattern's map.
STATUS = ("kept", "dropped by the pattern", "masked by the model")
_STATUS_COLORS = ("#4c78a8", "#e45756", "#d9d9d9")
_LOST_COLOR = "#e45756"


def kept_lost_frame(maps: dict[str, np.ndarray], tokens: list[str]) -> pd.DataFrame:
    """One head's exact and approximate maps cell by cell (from ``models.lab.lab_maps``).

    Args:
        maps: {"exact", "approx": float [n, n], "kept", "allowed": bool [n, n]}.
        tokens: the n real tokens.
    Returns:
        DataFrame: query_pos, key_pos, query_token, key_token, weight (exact), approx, kept_mass
        (min(exact, approx)), lost (exact - kept_mass), status (one of ``STATUS``).
    """
    exact, approx = np.asarray(maps["exact"], dtype=np.float64), np.asarray(maps["approx"], dtype=np.float64)
    n = len(tokens)
    if exact.shape != (n, n) or approx.shape != (n, n):
        msg = f"maps of shape {exact.shape} do not match {n} tokens"
        raise ValueError(msg)
    kept_mass = np.minimum(exact, approx)
    status = np.where(~maps["allowed"], 2, np.where(maps["kept"], 0, 1))
    q, k = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    labels = np.array([display_token(t) for t in tokens], dtype=object)
    return pd.DataFrame(
        {
            "query_pos": q.ravel(),
            "key_pos": k.ravel(),
            "query_token": labels[q.ravel()],
            "key_token": labels[k.ravel()],
            "weight": exact.ravel(),
            "approx": approx.ravel(),
            "kept_mass": kept_mass.ravel(),
            "lost": (exact - kept_mass).ravel(),
            "status": np.array(STATUS, dtype=object)[status.ravel()],
        }
    )


def _map_base(frame: pd.DataFrame, tooltip: list) -> tuple[alt.Chart, list, int]:
    """What both maps draw on: the chart with keys across the top and queries down (token labels), the cells'
    tooltip (the query and key tokens, then ``tooltip``, then the cell's status) and the side in pixels."""
    n = frame["query_pos"].nunique()
    labels = dict(zip(frame["key_pos"].astype(str), frame["key_token"]))
    expr = f"{pd.Series(labels).to_json(force_ascii=False)}[datum.value]"
    x = alt.X("key_pos:O", title="key", axis=alt.Axis(labelExpr=expr, labelAngle=-60, orient="top", labelOverlap=n > 48))
    y = alt.Y("query_pos:O", title="query", axis=alt.Axis(labelExpr=expr, labelOverlap=n > 48))
    side = int(min(320, max(240, 12 * n)))  # two maps side by side fit a 1280 px page
    return alt.Chart(frame).encode(x=x, y=y), ["query_token:N", "key_token:N", *tooltip, "status:N"], side


def pattern_map_chart(frame: pd.DataFrame, *, title: str = "pattern's map") -> alt.LayerChart:
    """The approximate map Â the pattern imposes; cells the pattern drops are red, cells the model masks grey."""
    imposed = alt.Tooltip("approx:Q", format=".4f", title="imposed weight")
    base, tooltip, side = _map_base(frame, [imposed, alt.Tooltip("weight:Q", format=".4f", title="exact weight")])
    off = (
        base.mark_rect()
        .encode(
            color=alt.Color(
                "status:N",
                scale=alt.Scale(domain=list(STATUS[1:]), range=list(_STATUS_COLORS[1:])),
                legend=alt.Legend(orient="bottom", title=None),
            ),
            tooltip=tooltip,
        )
        .transform_filter("datum.status != 'kept'")
    )
    on = (
        base.mark_rect()
        .encode(
            color=alt.Color(
                "approx:Q", title="imposed weight", scale=alt.Scale(scheme="viridis", domain=[0, float(frame["approx"].max() or 1)])
            ),
            tooltip=tooltip,
        )
        .transform_filter("datum.status == 'kept'")
    )
    return alt.layer(off, on).resolve_scale(color="independent").properties(width=side, height=side, title=title, autosize=PAD)


def kept_lost_chart(
    frame: pd.DataFrame, *, title: str = "true map: kept mass coloured, lost mass marked"
) -> alt.LayerChart | alt.FacetChart:
    """The exact map: each cell coloured by the mass the pattern keeps (min(A, Â)); a red square marks lost mass, its
    size the amount lost; grey cells are masked by the model itself."""
    exact = alt.Tooltip("weight:Q", format=".4f", title="exact weight")
    kept_tip, lost_tip = alt.Tooltip("kept_mass:Q", format=".4f", title="kept"), alt.Tooltip("lost:Q", format=".4f", title="lost")
    base, tooltip, side = _map_base(frame, [exact, kept_tip, lost_tip])
    top = float(frame["weight"].max() or 1)
    masked = base.mark_rect(color=_STATUS_COLORS[2]).encode(tooltip=tooltip).transform_filter("datum.status == 'masked by the model'")
    cells = (
        base.mark_rect()
        .encode(
            color=alt.Color("kept_mass:Q", title="kept mass", scale=alt.Scale(scheme="viridis", domain=[0, top])),
            tooltip=tooltip,
        )
        .transform_filter("datum.status != 'masked by the model'")
    )
    lost = (
        base.mark_square(color=_LOST_COLOR, opacity=0.9)
        .encode(
            size=alt.Size(
                "lost:Q",
                title="lost mass",
                scale=alt.Scale(domain=[0, top], range=[0, 0.6 * (side / max(1, frame["query_pos"].nunique())) ** 2]),
            ),
            tooltip=tooltip,
        )
        .transform_filter("datum.lost > 0.001")
    )
    return alt.layer(masked, cells, lost).properties(width=side, height=side, title=title, autosize=PAD)


def coverage_heatmap(table: pd.DataFrame, *, size: int = 16) -> alt.Chart:
    """Layer x head grid of coverage (share of exact attention mass kept), 0..1."""
    return (
        alt.Chart(table)
        .mark_rect()
        .encode(
            x=alt.X("head:O", title="head (0-based)"),
            y=alt.Y("layer:O", title="layer (0-based)"),
            color=alt.Color("coverage:Q", title="coverage", scale=alt.Scale(scheme="viridis", domain=[0, 1])),
            tooltip=[
                "layer:O",
                "head:O",
                "kv_head:O",
                alt.Tooltip("coverage:Q", format=".3f"),
                alt.Tooltip("min_coverage:Q", format=".3f", title="worst query"),
            ],
        )
        .properties(
            width=alt.Step(size + 4),
            height=alt.Step(size),
            title="coverage: share of each query's exact attention kept (mean over queries)",
        )
    )


def layer_error_chart(frame: pd.DataFrame) -> alt.Chart:
    """Relative hidden-state error |h' − h| / |h| after every block (0 = embeddings)."""
    return (
        alt.Chart(frame)
        .mark_line(point=True)
        .encode(
            x=alt.X("hidden_layer:Q", title="hidden state after block (0 = embeddings)"),
            y=alt.Y("relative_error:Q", title="relative error |h' − h| / |h|"),
            tooltip=["hidden_layer:Q", alt.Tooltip("relative_error:Q", format=".4f")],
        )
        .properties(width=460, height=220, title="hidden-state error per layer, pattern vs full attention", autosize=PAD)
    )


def sweep_chart(frame: pd.DataFrame) -> alt.HConcatChart:
    """Error (KL for decoders, else 1 − cosine) and coverage against the swept parameter."""
    parameter = str(frame["parameter"].iloc[0])
    error = "kl" if frame["kl"].notna().any() else "one_minus_cosine"
    title = "KL(full ‖ pattern), nats" if error == "kl" else "1 − cosine of the last hidden states"
    x = alt.X("value:Q", title=parameter, scale=alt.Scale(type="log", base=2) if frame["value"].min() > 0 else alt.Scale())
    tooltip = ["pattern:N", alt.Tooltip(f"{error}:Q", format=".4f"), alt.Tooltip("coverage:Q", format=".3f")]
    left = (
        alt.Chart(frame)
        .mark_line(point=True)
        .encode(x=x, y=alt.Y(f"{error}:Q", title=title), tooltip=tooltip)
        .properties(width=320, height=220, title=f"error vs {parameter}")
    )
    right = (
        alt.Chart(frame)
        .mark_line(point=True, color="#54a24b")
        .encode(x=x, y=alt.Y("coverage:Q", title="mean coverage", scale=alt.Scale(domain=[0, 1])), tooltip=tooltip)
        .properties(width=320, height=220, title=f"coverage vs {parameter}")
    )
    return alt.hconcat(left, right).properties(autosize=PAD, title=f"sweep: error and coverage vs {parameter}")


def cost_chart(frame: pd.DataFrame) -> alt.HConcatChart:
    """FLOPs and attention memory of the pattern vs full attention against n (log-log), from ``analysis.cost.cost_frame``."""
    tooltip = ["method:N", "n:Q", alt.Tooltip("gflops:Q", format=",.2f"), alt.Tooltip("memory_mb:Q", format=",.1f"), "how:N"]
    panels = [
        ("gflops", "attention GFLOPs (all layers and heads)", "attention FLOPs (formula)"),
        ("memory_mb", "attention intermediate per layer (MB, 2-byte)", "attention memory (formula)"),
    ]
    method = next(m for m in frame["method"].unique() if m != "full") if frame["method"].nunique() > 1 else "full"
    return _against_n(frame, panels, tooltip, f"attention cost: {method} vs full attention (formulas)")


def _against_n(frame: pd.DataFrame, panels: list[tuple[str, str, str]], tooltip: list, title: str) -> alt.HConcatChart:
    """Panels side by side against tokens n, log-log, one line per method: each panel (column, axis title, panel title)."""
    x = alt.X("n:Q", title="tokens n", scale=alt.Scale(type="log", base=2))
    color = alt.Color("method:N", title=None, legend=alt.Legend(orient="bottom"))
    charts = [
        alt.Chart(frame)
        .mark_line(point=True)
        .encode(x=x, y=alt.Y(f"{column}:Q", title=axis, scale=alt.Scale(type="log")), color=color, tooltip=tooltip)
        .properties(width=320, height=240, title=panel)
        for column, axis, panel in panels
    ]
    return alt.hconcat(*charts).properties(autosize=PAD, title=title)


def kv_cache_chart(frame: pd.DataFrame, tokens: int = 4096) -> alt.Chart:
    """KV-cache MB per sequence for MHA / GQA-g / MQA (``analysis.cost.kv_cache_frame``); the model's own count highlighted."""
    return (
        alt.Chart(frame)
        .mark_bar()
        .encode(
            x=alt.X("kind:N", title="key/value heads", sort=alt.EncodingSortField("kv_heads", order="descending")),
            y=alt.Y("mb_per_sequence:Q", title=f"KV cache per {tokens:,}-token sequence (MB)"),
            color=alt.condition("datum.model", alt.value("#f58518"), alt.value("#4c78a8")),
            tooltip=[
                "kind:N",
                "kv_heads:Q",
                alt.Tooltip("bytes_per_token:Q", format=","),
                alt.Tooltip("mb_per_sequence:Q", format=",.1f"),
                "model:N",
            ],
        )
        .properties(width=320, height=220, title="KV cache: MHA vs grouped-query vs multi-query (orange: this model)", autosize=PAD)
    )


def flash_io_chart(frame: pd.DataFrame, sram_kb: float, head_dim: int) -> alt.Chart:
    """HBM traffic of standard vs FlashAttention per head against n (log-log), ``analysis.cost.flash_io_frame``."""
    return (
        alt.Chart(frame)
        .mark_line(point=True)
        .encode(
            x=alt.X("n:Q", title="tokens n", scale=alt.Scale(type="log", base=2)),
            y=alt.Y("hbm_mb:Q", title="HBM reads + writes per head (MB, 2-byte)", scale=alt.Scale(type="log")),
            color=alt.Color("method:N", title=None, legend=alt.Legend(orient="bottom")),
            tooltip=[
                "method:N",
                "n:Q",
                alt.Tooltip("hbm_mb:Q", format=",.2f"),
                alt.Tooltip("ratio:Q", format=".1f", title="standard / flash"),
            ],
        )
        .properties(
            width=420, height=240, title=f"slow-memory traffic: standard vs tiled (d = {head_dim}, SRAM {sram_kb:g} KB)", autosize=PAD
        )
    )


# -- recurrence with memory -----------------------------------------------------------------------------
def receptive_field_chart(frame: pd.DataFrame) -> alt.Chart:
    """Tokens that can reach a query after each block, segment recurrence vs full attention
    (``analysis.cost.receptive_field_frame``): the recurrence's line climbs by M·C per layer."""
    method = next((m for m in frame["method"].unique() if m != "full"), "full")
    return (
        alt.Chart(frame)
        .mark_line(point=True)
        .encode(
            x=alt.X("layer:Q", title="blocks passed (layer, 1-based)", scale=alt.Scale(domainMin=1)),
            y=alt.Y("tokens:Q", title="receptive field (tokens)"),
            color=alt.Color("method:N", title=None, legend=alt.Legend(orient="bottom")),
            tooltip=["method:N", "layer:Q", alt.Tooltip("tokens:Q", format=",")],
        )
        .properties(width=320, height=240, title=f"receptive field: {method} grows by M·C per layer", autosize=PAD)
    )


def recurrence_memory_chart(frame: pd.DataFrame) -> alt.HConcatChart:
    """Keys per query and KV-cache memory of segment recurrence vs full attention against n (log-log),
    from ``analysis.cost.recurrence_memory_frame``."""
    tooltip = ["method:N", "n:Q", alt.Tooltip("keys_per_query:Q", format=",.0f"), alt.Tooltip("kv_cache_mb:Q", format=",.2f")]
    panels = [
        ("keys_per_query", "keys per query", "keys per query"),
        ("kv_cache_mb", "KV cache held while a segment runs (MB)", "KV memory"),
    ]
    return _against_n(frame, panels, tooltip, "recurrence cost: keys per query and KV memory vs full attention")


# -- the attention temperature (why √d) ---------------------------------------------------------------
def scale_entropy_chart(frame: pd.DataFrame) -> alt.LayerChart | alt.FacetChart:
    """Mean attention entropy per layer, one line per τ (``models.lab.lab_scale``'s ``entropy``); the dashed rule
    is uniform attention."""
    base = alt.Chart(frame)
    lines = base.mark_line(point=True).encode(
        x=alt.X("layer:O", title="layer (0-based)"),
        y=alt.Y("entropy:Q", title="attention entropy (nats, mean over heads and queries)"),
        color=alt.Color("tau:O", title="τ", scale=alt.Scale(scheme="viridis")),
        tooltip=["layer:O", "tau:Q", alt.Tooltip("entropy:Q", format=".3f")],
    )
    uniform = base.mark_rule(strokeDash=[4, 4], color="#888").encode(y="mean(max_entropy):Q")
    return alt.layer(lines, uniform).properties(
        width=460, height=240, title="entropy per layer as the logits are multiplied by τ (dashed: uniform)", autosize=PAD
    )


def scale_effect_chart(frame: pd.DataFrame) -> alt.HConcatChart:
    """KL (or 1 − cosine for models without an LM head) and top-1 kept against τ (``lab_scale``'s ``summary``)."""
    error = "kl" if frame["kl"].notna().any() else "one_minus_cosine"
    title = "KL(model ‖ τ), nats" if error == "kl" else "1 − cosine of the last hidden states"
    x = alt.X("tau:Q", title="τ (logits × τ; 1 = the model)", scale=alt.Scale(type="log", base=2))
    tooltip = ["pattern:N", alt.Tooltip(f"{error}:Q", format=".4f"), alt.Tooltip("entropy:Q", format=".3f")]
    left = (
        alt.Chart(frame)
        .mark_line(point=True)
        .encode(x=x, y=alt.Y(f"{error}:Q", title=title), tooltip=tooltip)
        .properties(width=320, height=220, title=f"{'KL' if error == 'kl' else '1 − cosine'} vs τ")
    )
    if frame["top1_kept"].notna().any():
        kept = (
            alt.Chart(frame)
            .mark_line(point=True, color="#54a24b")
            .encode(
                x=x,
                y=alt.Y("top1_kept:Q", title="positions whose top-1 next token is kept", scale=alt.Scale(domain=[0, 1])),
                tooltip=[*tooltip, alt.Tooltip("top1_kept:Q", format=".0%")],
            )
            .properties(width=320, height=220, title="top-1 kept vs τ")
        )
    else:
        kept = (
            alt.Chart(frame)
            .mark_line(point=True, color="#54a24b")
            .encode(x=x, y=alt.Y("entropy:Q", title="mean attention entropy (nats)"), tooltip=tooltip)
            .properties(width=320, height=220, title="entropy vs τ (no LM head: no top-1)")
        )
    return alt.hconcat(left, kept).properties(autosize=PAD, title="the attention temperature: effect vs τ")
