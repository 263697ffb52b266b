"""The only Streamlit cache wrappers, and widgets shared by pages (model picker, errors, export)."""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Callable
from pathlib import Path

import altair as alt
import pandas as pd
import streamlit as st

from attnscope.models import BUNDLED, ForwardRecord, LoadedModel, load, run
from attnscope.models.cache import BudgetStore, shared_store
from attnscope.models.limits import allowed_models, is_loopback
from attnscope.viz.bertviz import SCRIPT_FILES
from attnscope.viz.export import FORMATS, MIME, chart_bytes, frame_bytes

# Where `make install` puts the pinned npm packages bertviz needs (js/package.json).
JS_MODULES = Path(__file__).resolve().parents[1] / "js" / "node_modules"

OTHER = "other (HF id or local path)…"
DEFAULT_TARGET = "The cat chased the mouse."  # the decoder's text for encoder-decoder models
TARGET_LABEL = "Target text (the decoder reads it as given)"
KIND_LABELS = {"encoder": "encoder self-attention (bidirectional)", "decoder": "decoder self-attention (causal)"}


def shared_server() -> bool:
    """Whether visitors may come from other machines: server.address is not loopback (unset or 0.0.0.0 is every interface)."""
    return not is_loopback(st.get_option("server.address"))


def get_model(name: str, backend: str = "auto") -> LoadedModel:
    """One shared, never-mutated model per (name, backend) for all sessions, checked against eager at load.

    Models are the one thing kept outside the byte budget; the store reports them while they stay loaded.
    On a server reachable from other machines only bundled aliases and ATTNSCOPE_ALLOWED_MODELS load: no
    visitor-typed local directory or hub id (``models.limits.check_allowed``).
    """
    return _cached_model(name, backend, shared_server())


@st.cache_resource(show_spinner="Loading model…", max_entries=6)
def _cached_model(name: str, backend: str, shared: bool) -> LoadedModel:
    # ``shared`` is part of the key: a model loaded while the server was on loopback is never handed out after it is not
    lm = load(name, backend=backend, shared=shared)
    store().note_model((name, backend), lm)
    return lm


def store() -> BudgetStore:
    """The one byte-bounded store of computed results for every session (ATTNSCOPE_CACHE_GB, default 4)."""
    return shared_store()


def _frozen(value):
    """A hashable stand-in for an argument (lists and dicts as tuples) for the store's key."""
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _frozen(v)) for k, v in value.items()))
    if isinstance(value, (set, frozenset)):
        return frozenset(_frozen(v) for v in value)
    return value


def budgeted(kind: str, spinner: str | None = None, *, copy_out: bool = False) -> Callable:
    """Keep a page function's results in the shared byte budget, keyed by its arguments, under ``kind``.

    Replaces ``st.cache_data`` / ``st.cache_resource`` for computed results: one budget in bytes for all of
    them instead of a count per function. Errors are not kept. ``copy_out``: callers get a deep copy (what
    ``st.cache_data`` gave), so a page that edits its frame cannot change what other sessions see.
    """

    def wrap(func: Callable) -> Callable:
        signature = inspect.signature(func)
        # Pages run as scripts (__main__): the file and the function name identify the function.
        where = (Path(func.__code__.co_filename).stem, func.__qualname__)

        @functools.wraps(func)
        def cached(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            key = (*where, _frozen(tuple(bound.arguments.items())))

            def make():
                if spinner is None:
                    return func(*args, **kwargs)
                with st.spinner(spinner):
                    return func(*args, **kwargs)

            value = store().get(key, make, kind=kind)
            return copy.deepcopy(value) if copy_out else value

        return cached

    return wrap


def model_header(spec) -> None:
    """How this model's maps are obtained and how they were checked, under every page's model caption."""
    text = spec.recording_label
    if spec.recording == "materialised":
        st.warning(text, icon=":material/memory:")
    else:
        st.caption(f":material/verified: {text}")


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
    key = ("record", name, backend, tuple(texts), padding_side, attention_mask, max_length, tuple(target) if target else None, values)

    def make() -> ForwardRecord:
        with st.spinner("Running the model…"):
            return run(
                get_model(name, backend),
                list(texts),
                padding_side=padding_side,
                attention_mask=attention_mask,
                max_length=max_length,
                target=list(target) if target else None,
                values=values,
            )

    return store().get(key, make, kind="records")


@budgeted("contributions", "Splitting every block's output by token…")
def get_mixing(name: str, backend: str, text: str, max_length: int | None, method: str):
    """A context-mixing method's per-layer maps and rollout (``models.contributions.mixing_maps``), cached per text.

    Returns:
        (maps [L, n, n], rolled [L, n, n], tokens, what each map includes).
    """
    from attnscope.models.contributions import mixing_maps

    needs_values = method not in ("weights", "value_zeroing")
    rec = get_record(name, backend, (text,), None, True, max_length, None, needs_values) if method != "value_zeroing" else None
    return mixing_maps(get_model(name, backend), text, method, rec=rec)


@budgeted("explanations", "Running every attribution method and its deletion test…")
def get_explanation(name: str, backend: str, text: str, position: int | None, methods: tuple[str, ...] | None = None):
    """``models.contributions.explain`` for one prediction, cached per text and position."""
    from attnscope.models.contributions import explain

    return explain(get_model(name, backend), text, methods=list(methods) if methods else None, position=position)


def bertviz_scripts(folder: Path = JS_MODULES) -> dict[str, str] | None:
    """The scripts bertviz would fetch from a CDN, read from the project's npm install; None when absent."""
    try:
        return {name: (folder / rel).read_text(encoding="utf-8") for name, rel in SCRIPT_FILES.items()}
    except OSError:
        return None


@budgeted("bertviz scripts")
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
    with st.popover(
        "Export", icon=":material/download:", key=f"{key}_menu", help="Download this chart as PNG, SVG or HTML, or its data as CSV"
    ):
        cols = st.columns(len(FORMATS) + (data is not None), gap="small")
        for col, fmt in zip(cols, FORMATS):
            # Rendered on click (a callable), not on every rerun: vl-convert takes ~0.3-3 s per figure.
            payload = lambda fmt=fmt: chart_bytes(chart, fmt)  # noqa: E731
            col.download_button(fmt.upper(), payload, file_name=f"{name}.{fmt}", mime=MIME[fmt], key=f"{key}_{fmt}")
        if data is not None:
            cols[-1].download_button("CSV", lambda: frame_bytes(data), file_name=f"{name}.csv", mime=MIME["csv"], key=f"{key}_csv")
