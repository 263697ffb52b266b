"""Corpus mode of the Heads page: a corpus result directory's head means, this text against them, word clusters.

Widgets only: reading is ``corpus.load_result`` (no Ray needed), numbers come from ``analysis.corpus``,
charts from ``viz.corpus``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from attnscope.analysis.corpus import compare_to_corpus, occurrence_points
from attnscope.corpus.compute import head_rows
from attnscope.corpus.store import SUMMARY, load_result
from attnscope.ui.common import bind, budgeted, export_buttons, get_record
from attnscope.viz.corpus import corpus_heatmap, depth_summary_chart, drift_scatter, zscore_heatmap
from attnscope.viz.heads import STAT_TITLES

__all__ = ["show_corpus"]

HELP = "Run `python cli.py corpus --model minilm --out results/demo` (add `--analysis drift --word mouse` for drift), then give that directory here."


@budgeted("corpus results", "Reading the corpus result…", copy_out=True)
def corpus_result(path: str, stamp: float):
    """The result directory's tables (cached until its summary changes)."""
    result = load_result(path)
    return result.manifest, result.info, result.summary, result.rows, result.texts, result.bad


@budgeted("corpus results", "Projecting and clustering the occurrences…", copy_out=True)
def drift_points(path: str, stamp: float, layer: int) -> pd.DataFrame:
    _, _, _, rows, texts, _ = corpus_result(path, stamp)
    points = occurrence_points(rows, layer)
    points["layer"] = layer
    return points.merge(texts, on="text_id", how="left")


@budgeted("head statistics", "Computing this text's head statistics…", copy_out=True)
def text_table(model: str, text: str, induction: bool) -> pd.DataFrame:
    rec = get_record(model, "sdpa", (text,), None, True, None)
    return head_rows(rec, 0, 0, 0, induction=induction).drop(columns=["text_id", "segment", "n_tokens"])


def _stamp(path: str) -> float:
    summary = Path(path).expanduser() / SUMMARY
    return summary.stat().st_mtime if summary.exists() else 0.0


def show_corpus(path: str, default_text: str) -> None:
    """The whole corpus view for result directory ``path`` (head results add a sidebar text to compare, starting at ``default_text``)."""
    if not path.strip():
        st.info(HELP)
        return
    path = path.strip()
    if _analysis(path) == "examples":  # the head browser (it also reads a job that is still running)
        from attnscope.ui.head_browser import show_head_browser

        browser, statistics = st.tabs(["Head browser", "Corpus statistics"])
        with browser:
            show_head_browser(path)
        if not (Path(path).expanduser() / SUMMARY).exists():
            return
        with statistics:
            _show_finished(path, default_text)
        return
    _show_finished(path, default_text)


def _analysis(path: str) -> str | None:
    manifest = Path(path).expanduser() / "manifest.json"
    if not manifest.is_file():
        return None
    import json

    return json.loads(manifest.read_text()).get("analysis")


def _show_finished(path: str, default_text: str) -> None:
    manifest, info, summary, rows, texts, bad = corpus_result(path, _stamp(path))
    ran = f"{info['workers']} Ray worker(s)" if info["workers"] else "in one process"
    found = f"{info['texts_with_results']} of {info['rows_in_file']} rows " + (
        f"contain '{manifest['word']}'" if manifest["analysis"] == "drift" else "with results"
    )
    st.caption(
        f"**{manifest['model_name']}** · {manifest['analysis']} · {found} · {info['bad_rows']} bad rows (listed in bad_rows.csv) · "
        f"{ran}, {info['wall_s']} s"
    )
    if manifest["analysis"] == "drift":
        _drift(path, manifest, summary)
    else:
        # the workspace's text box (bound to it), under this page's label
        text = st.sidebar.text_area("Text to compare with the corpus", key="text", **bind("text", "text", default_text))
        _heads(path, manifest, info, summary, rows, texts, text)


def _heads(path: str, manifest: dict, info: dict, summary: pd.DataFrame, rows: pd.DataFrame, texts: pd.DataFrame, text: str) -> None:
    stats = [s for s in STAT_TITLES if s in set(summary["statistic"])]
    st.caption(
        "Corpus means over texts; the tooltip gives the sample standard deviation, the 95% confidence interval of the mean "
        "(Student t: mean ± t(0.975, n−1)·std/√n) and n, the texts with a value. Layers and heads are 0-based."
    )
    tab_means, tab_text, tab_texts = st.tabs(["Corpus means", "This text vs corpus", "Texts"])
    with tab_means:
        grid = st.columns(2)
        for k, stat in enumerate(stats):
            with grid[k % 2]:
                st.altair_chart(corpus_heatmap(summary, stat), width="content", theme=None, key=f"corpus_mean_{stat}")
    with tab_text:
        model = manifest["model"]
        st.caption(
            f"The sidebar text through {manifest['model_name']}: z = (value − corpus mean) / corpus std per head; red is above the corpus, blue below."
        )
        table = text_table(model, text, "induction" in stats)
        compared = compare_to_corpus(table, summary)
        stat = st.selectbox("Statistic", stats, format_func=lambda s: STAT_TITLES[s], key="corpus_z_stat")
        chart = zscore_heatmap(compared, stat)
        st.altair_chart(chart, width="content", theme=None, key="corpus_z_chart")
        unusual = compared[compared["statistic"] == stat].assign(abs_z=lambda f: f["z"].abs()).nlargest(5, "abs_z")
        st.caption("The five heads most unusual on this text (largest |z|):")
        st.dataframe(unusual[["layer", "head", "value", "mean", "std", "z"]].round(3), hide_index=True)
        export_buttons(chart, compared, f"corpus_vs_text_{stat}", key="corpus_z_export")
    with tab_texts:
        st.caption("Drill down: one head's statistic on every text of the corpus (click a column header to sort).")
        cols = st.columns(3)
        n_layers, n_heads = int(rows["layer"].max()) + 1, int(rows["head"].max()) + 1
        layer = cols[0].number_input("Layer (0-based)", 0, n_layers - 1, 0, key="corpus_drill_layer")
        head = cols[1].number_input("Head (0-based)", 0, n_heads - 1, 0, key="corpus_drill_head")
        stat = cols[2].selectbox("Statistic", stats, format_func=lambda s: STAT_TITLES[s], key="corpus_drill_stat")
        picked = rows[(rows["layer"] == layer) & (rows["head"] == head)][["text_id", "segment", "n_tokens", stat]]
        st.dataframe(picked.merge(texts, on="text_id", how="left").sort_values(stat, ascending=False), hide_index=True, width="stretch")


def _drift(path: str, manifest: dict, summary: pd.DataFrame) -> None:
    word = manifest["word"]
    n_layers = int(summary["layer"].max())
    layer = st.slider("Hidden layer (0 = embeddings)", 0, n_layers, n_layers, key="corpus_drift_layer")
    points = drift_points(path, _stamp(path), layer)
    chart = drift_scatter(points, word)
    st.altair_chart(chart, width="content", theme=None, key="corpus_drift_chart")
    st.caption(
        f"Every whole-word occurrence of '{word}' in the corpus, its subword pieces mean-pooled; PCA to 2-D; colours are "
        "k-means clusters on the unit vectors, k in 2..8 chosen by the highest silhouette (cosine). Hover a point for its text."
    )
    export_buttons(
        chart, points.drop(columns=["explained_pc1", "explained_pc2"]), f"corpus_drift_{word}_{layer}", key="corpus_drift_export"
    )
    st.altair_chart(depth_summary_chart(summary, word), width="content", theme=None, key="corpus_drift_depth")
    st.dataframe(summary.round(3), hide_index=True)
