"""The only Streamlit cache wrappers, and widgets shared by pages (model picker, errors, export)."""

from __future__ import annotations

import threading
from pathlib import Path

import altair as alt
import pandas as pd
import streamlit as st

from models import BUNDLED, ForwardRecord, LoadedModel, load, run
from models.cache import RecordCache
from models.guard import allowed_models
from viz.bertviz import SCRIPT_FILES
from viz.export import FORMATS, MIME, chart_bytes, frame_bytes

# Where `make install` puts the pinned npm packages bertviz needs (js/package.json).
JS_MODULES = Path(__file__).resolve().parents[1] / "js" / "node_modules"

OTHER = "other (HF id or local path)…"
DEFAULT_TARGET = "The cat chased the mouse."  # the decoder's text for encoder-decoder models
TARGET_LABEL = "Target text (the decoder reads it as given)"
KIND_LABELS = {"encoder": "encoder self-attention (bidirectional)", "decoder": "decoder self-attention (causal)"}


# transformers' from_pretrained swaps class attributes for the duration of a load (PreTrainedModel.tie_weights
# among them): two loads in two sessions' threads at once can leave tie_weights disabled for the whole process,
# and every later SmolLM2 load then fails on meta tensors. One load at a time.
_LOADING = threading.Lock()


def get_model(name: str, backend: str = "auto") -> LoadedModel:
    """One shared, never-mutated model per (name, backend) for all sessions, checked against eager at load."""
    return _cached_model(name, backend)  # both arguments passed: Streamlit keys get_model(m) and get_model(m, "auto") apart


@st.cache_resource(show_spinner="Loading model…", max_entries=6)
def _cached_model(name: str, backend: str) -> LoadedModel:
    with _LOADING:
        return load(name, backend=backend)


def model_header(spec) -> None:
    """How this model's maps are obtained and how they were checked, under every page's model caption."""
    text = spec.recording_label
    if spec.recording == "materialised":
        st.warning(text, icon=":material/memory:")
    else:
        st.caption(f":material/verified: {text}")


@st.cache_resource(show_spinner=False)
def record_cache() -> RecordCache:
    """One cache of records for every session, bounded by bytes (ATTNSCOPE_CACHE_GB, default 4)."""
    return RecordCache()


def get_record(
    name: str,
    backend: str,
    texts: tuple[str, ...],
    padding_side: str | None = None,
    attention_mask: bool = True,
    max_length: int | None = None,
    target: tuple[str, ...] | None = None,
    values: bool = False,
) -> ForwardRecord:
    """Cached record: changing only layer, head or token never re-runs the model (``target``: encoder-decoder
    models; ``values``: keep values for value-weighted norms)."""
    key = (name, backend, tuple(texts), padding_side, attention_mask, max_length, tuple(target) if target else None, values)

    def make() -> ForwardRecord:
        with st.spinner("Running the model…"):
            return run(
                get_model(name, backend), list(texts), padding_side=padding_side, attention_mask=attention_mask,
                max_length=max_length, target=list(target) if target else None, values=values,
            )

    return record_cache().get(key, make)


def bertviz_scripts(folder: Path = JS_MODULES) -> dict[str, str] | None:
    """The scripts bertviz would fetch from a CDN, read from the project's npm install; None when absent."""
    try:
        return {name: (folder / rel).read_text(encoding="utf-8") for name, rel in SCRIPT_FILES.items()}
    except OSError:
        return None


@st.cache_resource(show_spinner=False)
def cached_bertviz_scripts() -> dict[str, str] | None:
    return bertviz_scripts()


def model_picker(label: str = "Model", key: str = "model", default: str = "minilm", container=None) -> str:
    """A bundled alias, or a typed Hugging Face id / local directory."""
    where = container or st.sidebar
    allowed = allowed_models()
    options = allowed if allowed else [*BUNDLED, OTHER]  # a shared deployment may pin its models
    choice = where.selectbox(label, options, index=options.index(default) if default in options else 0, key=key)
    if choice == OTHER:
        typed = where.text_input(f"{label}: Hugging Face id or local directory", key=f"{key}_typed").strip()
        return typed
    return choice


def show_error(exc: Exception) -> None:
    """One clear line; the rest of the page stays."""
    st.error(str(exc), icon="⚠️")


def export_buttons(chart: alt.TopLevelMixin, data: pd.DataFrame | None, name: str, key: str) -> None:
    """One compact "Export" menu under the chart: PNG, SVG, HTML of the chart and CSV of its data."""
    with st.popover("Export", icon=":material/download:", key=f"{key}_menu", help="Download this chart as PNG, SVG or HTML, or its data as CSV"):
        cols = st.columns(len(FORMATS) + (data is not None), gap="small")
        for col, fmt in zip(cols, FORMATS):
            # Rendered on click (a callable), not on every rerun: vl-convert takes ~0.3-3 s per figure.
            payload = lambda fmt=fmt: chart_bytes(chart, fmt)  # noqa: E731
            col.download_button(fmt.upper(), payload, file_name=f"{name}.{fmt}", mime=MIME[fmt], key=f"{key}_{fmt}")
        if data is not None:
            cols[-1].download_button("CSV", lambda: frame_bytes(data), file_name=f"{name}.csv", mime=MIME["csv"], key=f"{key}_csv")
