"""The head browser: a corpus ``examples`` result as a grid of heads; a picked head's card.

Widgets only. Reading is ``corpus.store`` (the finished result, or while the job runs the shards so far),
filters are ``analysis.head_types``' rules on the corpus means, the geometry is ``corpus.compute`` +
``analysis.geometry``, charts and the example markup are ``viz.corpus``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import streamlit as st

from attnscope.analysis.corpus import aggregate
from attnscope.analysis.examples import CRITERIA, STATISTIC_OF
from attnscope.analysis.head_types import HeadThresholds
from attnscope.corpus.store import MANIFEST, SUMMARY, TEXTS, read_examples, read_shards
from attnscope.ui.common import budgeted, get_model, open_page, page_path
from attnscope.viz.corpus import QK_COLOURS, browser_grid, criterion_histogram, example_html, qk_scatter
from attnscope.viz.heads import CELL_SELECTION

__all__ = ["FILTERS", "filter_heads", "show_head_browser"]

ATTENTION_PAGE = page_path("attention")
PICK = "browser_pick"  # (layer, head) clicked in the grid, applied to the number inputs on the next run
OPEN = "browser_open"  # (text, layer, head) of an example to open on the Attention page
FILTERS = ("all heads", "previous-token ≥", "sink", "induction ≥")
GEOMETRY_TEXTS = 40  # texts the on-demand Q/K plot runs the model on


def filter_heads(summary: pd.DataFrame, rule: str, threshold: float) -> pd.DataFrame:
    """Heads (layer, head) whose corpus mean passes ``rule``: previous-token ≥ t, sink (max of first-token and
    special-token mass ≥ the Types tab's sink threshold), induction ≥ t, or all heads."""
    wide = summary.pivot_table(index=["layer", "head"], columns="statistic", values="mean").reset_index()
    if rule == "previous-token ≥":
        keep = wide["prev_token"] >= threshold
    elif rule == "induction ≥":
        keep = wide["induction"] >= threshold if "induction" in wide else pd.Series(False, index=wide.index)
    elif rule == "sink":
        sink = wide[[c for c in ("first_token_mass", "special_token_mass") if c in wide]].max(axis=1)
        keep = sink >= HeadThresholds().sink
    else:
        keep = pd.Series(True, index=wide.index)
    return wide.loc[keep, ["layer", "head"]].reset_index(drop=True)


@budgeted("corpus results", "Reading the head browser's results…", copy_out=True)
def browser_tables(path: str, stamp: float):
    """manifest, summary, per-text rows, texts, examples of an examples job, finished or still running."""
    root = Path(path).expanduser()
    manifest = json.loads((root / MANIFEST).read_text())
    shards = read_shards(root)
    if (root / SUMMARY).is_file():
        summary = pd.read_parquet(root / SUMMARY)
    else:  # still running: the statistics of the shards finished so far
        summary = aggregate(shards.rows) if len(shards.rows) else pd.DataFrame()
    texts = pd.read_parquet(root / TEXTS) if (root / TEXTS).is_file() else pd.DataFrame(columns=["text_id", "text"])
    return manifest, summary, shards.rows, texts, read_examples(root), len(shards.done)


def _stamp(path: str) -> float:
    """Changes whenever a shard lands or the job finishes, so the cache re-reads."""
    root = Path(path).expanduser()
    files = [root / SUMMARY, *(root / "shards").glob("*.parquet")]
    return max((f.stat().st_mtime for f in files if f.exists()), default=0.0) + len(files)


@budgeted("head statistics", "Projecting the head's queries and keys (running the model on a sample of the corpus)…", copy_out=True)
def geometry_points(model: str, texts: tuple[str, ...], layer: int, head: int) -> pd.DataFrame:
    from attnscope.analysis.geometry import qk_points
    from attnscope.corpus.compute import geometry_rows
    from attnscope.models import run

    lm = get_model(model)
    frames = []
    for k, text in enumerate(texts):  # one text per run: no padding in the sample
        frames.append(geometry_rows(run(lm, [text]), 0, k, 0, layer, head))
    return qk_points(pd.concat(frames, ignore_index=True))


def _segment_text(manifest: dict, texts: pd.DataFrame, text_id: int, segment: int) -> str:
    text = texts.loc[texts["text_id"] == text_id, "text"].iloc[0]
    if segment == 0 and manifest.get("too_long") != "split":
        return text
    from attnscope.corpus.plan import split_text

    pieces = split_text(get_model(manifest["model"]).tokenizer, text, int(manifest["cap"]))
    return pieces[segment] if segment < len(pieces) and len(pieces) > 1 else text


def _on_grid_click(key: str) -> None:
    points = ((st.session_state.get(key) or {}).get("selection") or {}).get(CELL_SELECTION) or []
    if points and "layer" in points[0] and "head" in points[0]:
        st.session_state[PICK] = (int(points[0]["layer"]), int(points[0]["head"]))


def show_head_browser(path: str) -> None:
    """The browser for the examples result at ``path`` (finished, or running: press Refresh to read new shards)."""
    goto = st.session_state.pop(OPEN, None)
    if goto is not None:
        open_page(ATTENTION_PAGE, model=goto[0], texts=(goto[1],), layer=goto[2], head=goto[3], token=goto[4])
    # A press reruns the page; the cache key is the directory's newest file, so new shards are read.
    st.button("Refresh (read shards finished since)", key="browser_refresh")
    manifest, summary, rows, texts, examples, done = browser_tables(path, _stamp(path))
    if summary.empty:
        st.info("No shard has finished yet; press Refresh in a moment.")
        return
    running = not (Path(path).expanduser() / SUMMARY).is_file()
    if running:
        st.warning(f"The job is still running: {done} of {len(texts)} texts so far. Press Refresh to read the shards finished since.")
    criteria = [c for c in CRITERIA if c in set(examples["criterion"])] or list(manifest.get("criteria") or CRITERIA[:1])
    cols = st.columns([2, 2, 1])
    criterion = cols[0].selectbox("Criterion", criteria, key="browser_criterion")
    rule = cols[1].selectbox("Show heads", FILTERS, key="browser_filter")
    threshold = cols[2].number_input("threshold", 0.0, 1.0, 0.5, 0.05, key="browser_threshold", disabled=not rule.endswith("≥"))
    stat = STATISTIC_OF[criterion]
    matching = filter_heads(summary, rule, float(threshold))
    n_layers, n_heads = int(summary["layer"].max()) + 1, int(summary["head"].max()) + 1
    size = 26 if n_layers * n_heads <= 100 else 16
    st.altair_chart(
        browser_grid(summary, stat, matching, size=size),
        on_select=lambda: _on_grid_click("browser_grid"),
        key="browser_grid",
        selection_mode=CELL_SELECTION,
        width="content",
        theme=None,
    )
    picked = st.session_state.pop(PICK, None)
    if picked is not None:
        st.session_state["browser_layer"], st.session_state["browser_head"] = picked
    elif "browser_layer" not in st.session_state and len(matching):
        best = summary[(summary["statistic"] == stat)].merge(matching, on=["layer", "head"])
        top = best.sort_values("mean", ascending=criterion == "low-entropy").iloc[0]
        st.session_state["browser_layer"], st.session_state["browser_head"] = int(top["layer"]), int(top["head"])
    cols = st.columns(2)
    layer = int(cols[0].number_input("Layer (0-based)", 0, n_layers - 1, key="browser_layer"))
    head = int(cols[1].number_input("Head (0-based)", 0, n_heads - 1, key="browser_head"))
    _card(path, manifest, summary, rows, texts, examples, criterion, stat, layer, head)


def _card(path, manifest, summary, rows, texts, examples, criterion, stat, layer, head) -> None:
    st.subheader(f"Layer {layer} head {head}")
    mine = summary[(summary["layer"] == layer) & (summary["head"] == head)]
    left, right = st.columns([1, 1])
    left.markdown("**Statistics over the corpus** (mean, 95% CI of the mean, texts)")
    left.dataframe(mine[["statistic", "mean", "ci_low", "ci_high", "n"]].round(4), hide_index=True, key="browser_stats")
    values = rows[(rows["layer"] == layer) & (rows["head"] == head)][["text_id", stat]].rename(columns={stat: "value"}).dropna()
    right.altair_chart(criterion_histogram(values, stat, layer=layer, head=head), width="content", theme=None, key="browser_hist")
    right.caption(f"One value per text: the per-text mean of {criterion}'s per-query score ({stat}).")

    top = examples[(examples["layer"] == layer) & (examples["head"] == head) & (examples["criterion"] == criterion)].sort_values("rank")
    what = "lowest entropy first" if criterion == "low-entropy" else "highest first"
    st.markdown(f"**Top {len(top)} examples by {criterion}** ({what}; query in blue, attended key in orange)")
    for row in top.itertuples():
        line, button = st.columns([10, 3])
        line.markdown(
            f"{row.rank}. "
            + example_html(list(row.window), int(row.query_in_window), int(row.key_in_window), float(row.score), criterion)
            + f' <span style="color:#888;font-size:0.8em">text {row.text_id}, query {row.query_pos} → key {row.key_pos}</span>',
            unsafe_allow_html=True,
        )
        if button.button(
            "Open in Attention", key=f"browser_open_{row.rank}", help="this text, model, layer and head on the Attention page"
        ):
            text = _segment_text(manifest, texts, int(row.text_id), int(row.segment))
            st.session_state[OPEN] = (manifest["model"], text, layer, head, int(row.query_pos))
            st.rerun()

    st.markdown("**Query/key geometry**")
    if st.toggle(f"Project this head's queries and keys (runs the model on the first {GEOMETRY_TEXTS} texts)", key="browser_geometry"):
        sample = tuple(texts.sort_values("text_id")["text"].head(GEOMETRY_TEXTS))
        points = geometry_points(manifest["model"], sample, layer, head)
        colour = st.radio("Colour by", list(QK_COLOURS), format_func=QK_COLOURS.get, horizontal=True, key="browser_qk_colour")
        st.altair_chart(qk_scatter(points, colour, layer=layer, head=head), width="content", theme=None, key="browser_qk")
        st.caption(
            "Up to 32 positions per text, queries and keys as the attention call saw them (after RoPE where the model rotates them); "
            "one PCA fitted on both (numpy SVD, `analysis.drift.pca_2d`). `attnscope corpus --analysis geometry` does the same over a whole corpus."
        )
