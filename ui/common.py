"""The only Streamlit cache wrappers, and what every page shares: the workspace prelude, errors, export."""

from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
import re
from collections.abc import Callable
from pathlib import Path

import altair as alt
import pandas as pd
import streamlit as st
from streamlit.runtime.scriptrunner import get_script_run_ctx

from attnscope.models import BUNDLED, ForwardRecord, LoadedModel, load, run
from attnscope.models.budget import BudgetStore, shared_store
from attnscope.models.limits import allowed_models, is_loopback
from attnscope.models.probes import induction_scores
from attnscope.ui.workspace import BACKENDS, KINDS, PARAMS, Workspace
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


def budgeted(category: str, spinner: str | None = None, *, copy_out: bool = False) -> Callable:
    """Keep a page function's results in the shared byte budget, keyed by its arguments, under ``category``.

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

            value = store().get(key, make, category=category)
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

    return store().get(key, make, category="records")


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
def get_explanation(
    name: str,
    backend: str,
    text: str,
    position: int | None,
    methods: tuple[str, ...] | None = None,
    target_token: str | None = None,
    contrast: str | None = None,
):
    """``models.contributions.explain`` for one prediction, cached per text, position and target."""
    from attnscope.models.contributions import explain

    methods_list = list(methods) if methods else None
    return explain(get_model(name, backend), text, methods=methods_list, position=position, target_token=target_token, contrast=contrast)


def demo_texts() -> list[str]:
    """The bundled demo corpus's texts, in file order."""
    import attnscope.corpus
    from attnscope.corpus.reader import read_corpus

    return read_corpus(Path(attnscope.corpus.__file__).resolve().parent / "data" / "demo.txt").texts["text"].tolist()


def bertviz_scripts(folder: Path = JS_MODULES) -> dict[str, str] | None:
    """The scripts bertviz would fetch from a CDN, read from the project's npm install; None when absent."""
    try:
        return {name: (folder / rel).read_text(encoding="utf-8") for name, rel in SCRIPT_FILES.items()}
    except OSError:
        return None


@budgeted("bertviz scripts")
def cached_bertviz_scripts() -> dict[str, str] | None:
    return bertviz_scripts()


def model_picker(label: str = "Model", key: str = "model", default: str = "minilm", container=None, follows=None) -> str:
    """A page's second model: a bundled alias, or a typed Hugging Face id / local directory (the workspace's
    model has its own picker, ``prelude``). ``follows``: back to ``default`` whenever this changes (the
    workspace's model, so that the second model is another one)."""
    where = container or st.sidebar
    allowed = allowed_models()
    options = allowed if allowed else [*BUNDLED, OTHER]  # a shared deployment may pin its models
    if follows is not None:
        follow(key, follows, default if default in options else options[0])
        choice = where.selectbox(label, options, key=key)
    else:
        choice = where.selectbox(label, options, index=options.index(default) if default in options else 0, key=key)
    if choice == OTHER:
        typed = where.text_input(f"{label}: Hugging Face id or local directory", key=f"{key}_typed").strip()
        return typed
    return choice


# Engine messages name the CLI's flags for what to do; the dashboard has boxes instead.
UI_HINTS = (
    (re.compile(r"pass max_length=(\d+) \(--max-length\) to truncate"), r"set 'Truncate to' to \1 on the Attention page"),
    (re.compile(r" \(--[a-z][\w-]*(?: [A-Z]+)?(?: --[a-z][\w-]*(?: [A-Z]+)?)*\)"), ""),  # " (--text T --text T)"
)


def ui_message(message: str) -> str:
    """An engine error worded for the dashboard: what to change on the page, not which CLI flag to pass."""
    for pattern, replacement in UI_HINTS:
        message = pattern.sub(replacement, message)
    return message


def show_error(exc: Exception) -> None:
    """One clear line; the rest of the page stays."""
    st.error(ui_message(str(exc)), icon="⚠️")


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


def show_chart(chart: alt.TopLevelMixin, data: pd.DataFrame | None, name: str, key: str) -> None:
    """The chart (widget key ``key``) with its export menu (``export_buttons`` under ``export_{key}``)."""
    st.altair_chart(chart, width="content", key=key, theme=None)
    export_buttons(chart, data, name, key=f"export_{key}")


# -- The workspace (issue 32): one model, backend, text and selection for every page, mirrored in the URL --

WS = "workspace"  # session key of this session's Workspace
WS_URL = "_workspace_url"  # the workspace's query parameters as last written to the URL


def _normal(params) -> dict[str, tuple[str, ...]]:
    """Query parameters as comparable values: every value a tuple of strings."""
    return {k: tuple(v) if isinstance(v, (list, tuple)) else (v,) for k, v in params.items() if k in PARAMS}


def _url() -> dict[str, list[str]]:
    """The workspace's parameters in the page's URL now (``text`` may repeat)."""
    return {k: st.query_params.get_all(k) for k in PARAMS if k in st.query_params}


def current() -> Workspace:
    """This session's workspace; a URL that changed outside the app (a link, a reload, an edited address) wins."""
    ws = st.session_state.get(WS)
    url = _url()
    if url and _normal(url) != st.session_state.get(WS_URL):
        ws = Workspace.from_params(url, base=ws)
        st.session_state[WS] = ws
        st.session_state[WS_URL] = _normal(url)
    elif ws is None:
        ws = st.session_state[WS] = Workspace()
    return ws


def set_workspace(ws: Workspace) -> Workspace:
    """Keep ``ws`` as this session's workspace and write it to the URL (other parameters stay)."""
    ws = dataclasses.replace(ws, notes=[])
    st.session_state[WS] = ws
    params = ws.to_params()
    if _normal(params) != _normal(_url()):
        for key in PARAMS:
            if key in params:
                st.query_params[key] = params[key]
            elif key in st.query_params:
                del st.query_params[key]
    st.session_state[WS_URL] = _normal(params)
    return ws


def select(**fields) -> Workspace:
    """Change the workspace's selection (layer, head, token, kind), e.g. from a click on a chart."""
    return set_workspace(dataclasses.replace(current(), **fields))


def _write_back(key: str, field: str) -> None:
    """A bound widget changed: its value becomes the workspace's ``field``."""
    value = st.session_state.get(key)
    ws = current()
    if field == "text":
        ws = ws.with_text(value or "")
    elif field == "texts":  # a box of texts, one per line
        lines = value.splitlines() if isinstance(value, str) else value
        ws = dataclasses.replace(ws, texts=tuple(line.strip() for line in lines if line.strip()))
    elif field in ("layer", "head", "token"):
        ws = dataclasses.replace(ws, **{field: None if value is None else int(value)})
    else:
        ws = dataclasses.replace(ws, **{field: value})
    set_workspace(ws)


def bind(key: str, field: str, value, follows=None) -> dict:
    """Show ``value`` (the workspace's ``field``) in the widget ``key``; the widget's changes write the workspace.

    Spread the result into the widget call (``st.slider(..., key="layer", **bind("layer", "layer", ws.layer))``)
    and give the widget no default of its own. ``follows``: what the widget's labels depend on (the tokens of a
    token box); when it changes the value is sent again, so the browser shows this run's label, not the last one.
    """
    _show(key, value, follows)
    return {"on_change": _write_back, "args": (key, field)}


_UNSET = object()


def _page() -> str:
    """The page this run draws (its script hash)."""
    ctx = get_script_run_ctx()
    return ctx.page_script_hash if ctx else ""


def _show(key: str, value, follows=None) -> None:
    """Put ``value`` in the widget ``key`` before it is drawn, when it differs, when what its labels depend on
    changed, or when the widget is new on this page (a widget's identity includes its page: the same key on the
    last page was another widget, and the new one would start from its own default)."""
    seen, drawn = f"_labels_{key}", f"_page_{key}"
    if (
        st.session_state.get(key, _UNSET) != value
        or st.session_state.get(seen, _UNSET) != follows
        or st.session_state.get(drawn) != _page()
    ):
        st.session_state[key] = value
    st.session_state[seen] = follows
    st.session_state[drawn] = _page()


def follow(key: str, follows, default) -> None:
    """A page's own widget whose value derives from the workspace (a prompt, a list of texts, a text's token):
    reset it to ``default`` whenever ``follows`` changes, and keep what the visitor typed otherwise."""
    seen, kept = f"_follows_{key}", f"_kept_{key}"
    if st.session_state.get(seen, _UNSET) != follows:
        value = default
    elif key in st.session_state:
        value = st.session_state[key]
    else:  # the widget was not drawn on the last run (another page, or this one stopped early): its last value
        value = st.session_state.get(kept, default)
    _show(key, value)
    st.session_state[seen] = follows
    st.session_state[kept] = value


def _pick_model(key: str = "model") -> None:
    ws = current()
    if st.session_state.get(key) == OTHER:
        typed = (st.session_state.get(f"{key}_typed") or "").strip()
        set_workspace(dataclasses.replace(ws, model=typed))
    else:
        set_workspace(dataclasses.replace(ws, model=st.session_state.get(key) or ""))


def _type_model(key: str = "model") -> None:
    set_workspace(dataclasses.replace(current(), model=(st.session_state.get(f"{key}_typed") or "").strip()))


def workspace_model_picker(ws: Workspace) -> Workspace:
    """The sidebar's model picker, bound to the workspace's model (a bundled alias, or a typed HF id / directory)."""
    allowed = allowed_models()
    options = allowed if allowed else [*BUNDLED, OTHER]  # a shared deployment may pin its models
    if allowed and ws.model not in allowed:
        if ws.model:
            ws.notes.append(f"{ws.model} is not one of this server's models: showing {allowed[0]}.")
        ws = dataclasses.replace(ws, model=allowed[0])
    shown = ws.model if ws.model in options else OTHER
    _show("model", shown)
    st.sidebar.selectbox("Model", options, key="model", on_change=_pick_model)
    if shown == OTHER:
        _show("model_typed", ws.model)
        st.sidebar.text_input("Model: Hugging Face id or local directory", key="model_typed", on_change=_type_model)
    return ws


def model_caption(spec) -> None:
    """One line on the model: kind and masking, layers, heads, KV heads, backend; then how its maps are obtained."""
    gqa = spec.n_kv_heads < spec.n_heads
    masking = {"decoder": "causal", "encoder-decoder": "encoder bidirectional, decoder causal"}.get(spec.kind, "bidirectional")
    st.caption(
        f"**{spec.name}** · {spec.kind} ({masking}) · {spec.n_layers} layers · "
        f"{spec.n_heads} query heads · {spec.n_kv_heads} KV heads"
        + (f" (GQA: {spec.kv_group} query heads share each KV head)" if gqa else "")
        + f" · backend {spec.backend}"
        + (" (auto)" if spec.requested_backend == "auto" else "")
    )
    model_header(spec)


def prelude(
    *, backend: bool = False, text: str | None = "Text", caption: bool = True, needs: str | None = None
) -> tuple[Workspace, LoadedModel]:
    """Every page's start: the workspace's model picker, backend and text box in the sidebar, the model loaded.

    Args:
        backend: show the backend box (pages whose charts run on the chosen kernel); other pages load "auto".
        text: the text box's label; None when the page has its own boxes (it reads ``ws.texts``).
        caption: write the model's one-line summary under the title.
        needs: "decoder" for pages that only work with one (Generate): any other model gets a note and a way
            out before anything runs.

    Returns:
        (the workspace, fitted to the model: layer and head in range, each clamp shown as one warning;
        the loaded model). A model that fails to load shows its one line and stops the page.
    """
    ws = workspace_model_picker(current())
    if backend:
        st.sidebar.selectbox(
            "Backend",
            BACKENDS,
            key="backend",
            help="The kernel that runs the forward pass. Maps are recomputed exactly from the recorded queries and keys with any of them.",
            **bind("backend", "backend", ws.backend),
        )
    if text is not None:
        st.sidebar.text_area(text, key="text", height=140, **bind("text", "text", ws.text))
    for note in ws.notes:  # what a link asked for that this session cannot show as asked
        st.warning(note, icon=":material/link:")
    ws = set_workspace(ws)
    if not ws.model:
        st.info("Type a Hugging Face id or a local directory in the sidebar.")
        st.stop()
    try:
        lm = get_model(ws.model, ws.backend if backend else "auto")
    except ValueError as exc:
        show_error(exc)
        st.stop()
    spec = lm.spec
    if caption:
        model_caption(spec)
    if needs is not None and spec.kind != needs:
        decoders = [name for name in (allowed_models() or list(BUNDLED)) if name == "smollm2"]
        st.warning(
            f"{spec.name} is {'an' if spec.kind[0] in 'aeiou' else 'a'} {spec.kind}: this page needs a {needs}, "
            f"which writes text one token at a time. Pick a {needs} in the sidebar"
            + (" or switch to SmolLM2 here" if decoders else "")
            + "; the other pages keep working with this model.",
            icon=":material/block:",
        )
        if decoders and st.button("Use SmolLM2 (a decoder)", key="use_decoder", icon=":material/swap_horiz:"):
            set_workspace(dataclasses.replace(ws, model=decoders[0]))
            st.rerun()
        st.stop()
    kinds = KINDS if spec.kind == "encoder-decoder" else ()
    n_layers = spec.n_decoder_layers if ws.kind in ("decoder", "cross") else spec.n_layers
    fitted = ws.fit(n_layers, spec.n_heads, spec.name, kinds)
    for note in fitted.notes:
        st.warning(note, icon=":material/straighten:")
    return set_workspace(fitted), lm


def token_select(label: str, tokens, key: str, *, default: int, format_func, container=None, **kwargs) -> int:
    """A box over the text's token positions, bound to the workspace's token; its labels follow the text.

    ``default``: the page's position when the workspace names none (0, or the last position for a prediction).
    """
    ws = current()
    fitted = ws.fit_token(len(tokens))
    for note in fitted.notes:
        st.warning(note, icon=":material/straighten:")
    if fitted.token != ws.token:
        set_workspace(fitted)
    value = default if fitted.token is None else fitted.token
    where = container or st
    return where.selectbox(
        label, list(range(len(tokens))), format_func=format_func, key=key, **kwargs, **bind(key, "token", value, tuple(tokens))
    )


def page_link(page: str, label: str, icon: str | None = None, **fields) -> None:
    """A link to another page that carries the workspace (with ``fields`` changed, e.g. a head): it lands on
    exactly this model, text and selection, and the address can be shared."""
    ws = dataclasses.replace(current(), **fields)
    st.page_link(page, label=label, icon=icon, query_params=ws.to_params())


def open_page(page: str, **fields) -> None:
    """Switch to another page with the workspace (``fields`` changed) in its URL."""
    ws = select(**fields) if fields else current()
    st.switch_page(page, query_params=ws.to_params())


PAGES = Path(__file__).resolve().parent  # pages by absolute path: they resolve wherever the package is installed


def page_path(stem: str) -> str:
    return str(PAGES / f"{stem}.py")


@budgeted("probes", "Running the induction probe (random tokens repeated twice)…", copy_out=True)
def induction_table(name: str, seq_len: int, seed: int) -> pd.DataFrame:
    """Every head's induction score on ``seq_len`` random tokens repeated twice (4 sequences, ``seed``): the Heads
    page's probe, shared with the why panel's head labels so that one run serves both."""
    return induction_scores(get_model(name), seq_len=seq_len, batch=4, seed=seed)
