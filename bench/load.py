"""Benchmark: many users at once. N real browser sessions drive one dashboard server for D seconds.

The server starts as ``make run`` starts it (``streamlit run app.py --server.address 127.0.0.1
--server.port <free port>``, headless, no file watcher). Each session is its own browser context in one
headless Chromium (playwright's async API: one asyncio task per session) and loops: pick a page from
``PAGES``, a model, a text (and a padding setting where the page offers one), type and select them in the
widgets, wait until the page's chart is drawn, and record the seconds from the first input to the drawn chart.

What was drawn is read back twice:
  1. the chart the server sent, from the session's own websocket: every frame is a streamlit ``ForwardMsg``
     (protobuf); the Vega-Lite element of the run that followed the last input carries its datasets as
     Arrow IPC bytes (decoded with pyarrow). Messages the browser already holds arrive as ``ref_hash``
     references and are resolved from the frames the session saw earlier.
  2. the drawn SVG: Vega writes each mark's fields into its ``aria-label``; the chart counts as drawn when
     those values equal (1) at the precision shown, with streamlit's "running" status gone.
After the load, every chart read back is compared with the same map computed in this process alone
(``models.load`` + ``models.run`` / ``generate``: the same text, padding side, layer and head the page shows
by default), within ``ATOL``. Also measured: the server's peak RSS (VmHWM) against the record cache's byte
budget (ATTNSCOPE_CACHE_GB) plus the loaded models' parameter bytes; exception and error elements (from the
websocket and on the page) and tracebacks in the server log.

Usage: python -m bench.load [--sessions 8] [--seconds 120] [--out bench/results/load-cpu.json] [--seed 0]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import io
import json
import os
import platform
import random
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from attnscope.cli.serve import streamlit_command

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ROOT, machine, markdown  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
MODELS = ("minilm", "smollm2")
ATOL = 1e-5  # chart values (float32 through Arrow) against the solo run
INTERACTION_TIMEOUT = 300.0  # seconds one interaction may take under load before it counts as failed
FINISHED_EARLY_FOR_RERUN = 2  # ForwardMsg.ScriptFinishedStatus: the run stopped because another input came


# ---------------------------------------------------------------------------------------------------------
# What a session picks, and what each page draws


@dataclass(frozen=True)
class Choice:
    """One interaction: a page, a model, its text(s) and, on pages that offer one, a padding setting."""

    page: str
    model: str
    texts: tuple[str, ...]
    setting: str | None = None  # Padding: "right, mask" | "right, no mask" | "left, mask" | "left, no mask"


@dataclass(frozen=True)
class Page:
    """A dashboard page as the load test drives and checks it (one entry of ``PAGES``)."""

    title: str
    path: str  # URL path of the page ("" = the default page)
    models: tuple[str, ...]
    text_label: str  # the sidebar text widget's label
    texts: tuple[tuple[str, ...], ...]  # the pool a session picks from (several lines where the page takes several)
    chart: str  # a piece of the title of the chart that is read back (charts without a selection carry no key)
    keys: tuple[str, ...]  # data columns that identify a mark
    values: tuple[str, ...]  # data columns compared with the solo run
    aria_keys: tuple[str, ...]  # the mark's aria-label fields holding ``keys``
    aria_value: tuple[str, str]  # (aria-label field, data column) checked on the drawn SVG
    expected: Callable[[object, Choice], pd.DataFrame]  # (loaded model, choice) -> the same frame, computed alone
    settings: tuple[str, ...] = ()  # padding settings offered by a "Setting" select box
    labels: tuple[str, ...] = ()  # string columns that must equal the solo run's (tokens)


def _attention_expected(lm, choice: Choice) -> pd.DataFrame:
    """Attention page: layer 0, head 0 (the sliders' defaults) of the text alone, over real tokens."""
    from attnscope.models import run

    rec = run(lm, choice.texts[0])
    weights, allowed = rec.attention(0, 0), rec.allowed(0)  # [n, n] each
    return _cells(weights, allowed, rec.tokens[0], rec.tokens[0])


def _padding_expected(lm, choice: Choice) -> pd.DataFrame:
    """Padding page: text 0 of the padded batch, layer 0, head 0, pads included (the page's defaults)."""
    from attnscope.analysis.padding import allowed_keys
    from attnscope.models import run

    side, mask = choice.setting.split(", ")
    rec = run(lm, list(choice.texts), padding_side=side, attention_mask=mask == "mask")
    weights = rec.attention(0, 0, 0, include_padding=True)  # [n_padded, n_padded]
    pad = rec.attention_mask[0] == 0
    shown = rec.padded_tokens(0)  # pads as the tokenizer names them, real tokens as typed (the page's labels)
    for slot, label in zip(rec.real_index(0), rec.token_labels(0)):
        shown[int(slot)] = label
    labels = [f"{i}:{t}" + (" [pad]" if pad[i] else "") for i, t in enumerate(shown)]
    return _cells(weights, allowed_keys(rec, 0, 0), labels, labels)


def _cells(weights: np.ndarray, allowed: np.ndarray, tokens_q: list[str], tokens_k: list[str]) -> pd.DataFrame:
    """One head's map as the heatmap's cells: weight where the mask allows, masked (weight 0) elsewhere."""
    n_q, n_k = weights.shape
    q, k = np.meshgrid(np.arange(n_q), np.arange(n_k), indexing="ij")  # [n_q, n_k] each
    return pd.DataFrame(
        {
            "query_pos": q.ravel(),
            "key_pos": k.ravel(),
            "query_token": np.asarray(tokens_q, dtype=object)[q.ravel()],
            "key_token": np.asarray(tokens_k, dtype=object)[k.ravel()],
            "weight": np.where(allowed, weights, 0.0).ravel(),
            "masked": ~allowed.ravel(),
        }
    )


def _heads_expected(lm, choice: Choice) -> pd.DataFrame:
    """Heads page: every head's statistics for the text alone."""
    from attnscope.models import run

    return run(lm, choice.texts[0]).head_stats()


def _generate_expected(lm, choice: Choice) -> pd.DataFrame:
    """Generate page: greedy, 16 new tokens (the defaults); step 1's token, layer 0, head 0 (the workspace's defaults)."""
    from attnscope.models.generation import generate

    rec = generate(lm, choice.texts[0], max_new_tokens=16, do_sample=False)
    position = int(rec.generation.positions[0])
    row = rec.query_row(position, layer=rec.attention_layers[0], head=0)  # [n] over real tokens
    return pd.DataFrame(
        {"position": np.arange(position + 1), "token": rec.tokens[0][: position + 1], "weight": row[: position + 1].astype(np.float64)}
    )


TEXTS = (  # short (the heatmap draws one cell per token pair), distinct words so sessions differ
    ("The mouse ate the cheese, then the cat chased the mouse.",),
    ("Click the left mouse button twice to open the file.",),
    ("Zebras graze quietly near the river at dawn.",),
    ("Volcanoes erupt when pressure builds under the crust.",),
    ("Penguins swim fast through icy water.",),
    ("The orchestra rehearsed the symphony all afternoon.",),
)
PADDING_TEXTS = (  # several texts of different lengths: the page pads them into one batch
    ("The mouse ate the cheese.", "Click the left mouse button twice to open the file in a new window.", "A cat sat quietly by the door."),
    ("Zebras graze.", "Volcanoes erupt when pressure builds under the crust of the earth."),
    ("Penguins swim fast through icy water near the shore.", "The orchestra rehearsed.", "Owls hunt at night."),
)
PROMPTS = (
    ("The mouse ate the cheese, then the cat",),
    ("The capital of France is",),
    ("Once upon a time, a small dragon",),
    ("To open the file, click the",),
)
HEATMAP = dict(
    keys=("query_pos", "key_pos"),
    values=("weight",),
    labels=("query_token", "key_token", "masked"),
    aria_keys=("query pos", "key pos"),
    aria_value=("weight", "weight"),
)
HEAD_STATS = ("entropy", "first_token_mass", "special_token_mass", "punctuation_mass", "prev_token", "next_token", "mean_distance")

# The pages the load test drives; a page is one entry. ``chart`` is the widget key of the chart checked.
PAGES: tuple[Page, ...] = (
    Page("Attention", "", MODELS, "Text", TEXTS, "Layer 0, head 0", expected=_attention_expected, **HEATMAP),
    Page(
        "Heads",
        "heads",
        MODELS,
        "Text",
        TEXTS,
        "entropy (nats)",
        keys=("layer", "head"),
        values=HEAD_STATS,
        aria_keys=("layer", "head"),
        aria_value=("entropy", "entropy"),
        expected=_heads_expected,
    ),
    Page(
        "Generate",
        "generate",
        ("smollm2",),
        "Prompt",
        PROMPTS,
        " attends to · layer ",
        keys=("position",),
        values=("weight",),
        labels=("token",),
        aria_keys=("position (0-based)",),
        aria_value=("attention", "weight"),
        expected=_generate_expected,
    ),
    Page(
        "Padding",
        "padding",
        MODELS,
        "Texts, one per line (different lengths)",
        PADDING_TEXTS,
        "text 0, layer 0, head 0 (0-based); pads in red",
        settings=("right, mask", "right, no mask", "left, mask", "left, no mask"),
        expected=_padding_expected,
        **HEATMAP,
    ),
)
PAGE = {p.title: p for p in PAGES}


def plan(session: int, rng: random.Random, opening: list[Choice] | None = None):
    """Choices of one session: ``opening`` first, then the pages in turn (session ``s`` starts at page ``s``),
    each with a random model, text and setting."""
    yield from opening or []
    k = session
    while True:
        page = PAGES[k % len(PAGES)]
        k += 1
        yield Choice(page.title, rng.choice(page.models), rng.choice(page.texts), rng.choice(page.settings) if page.settings else None)


# ---------------------------------------------------------------------------------------------------------
# The server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    url: str
    proc: subprocess.Popen
    log: Path


@contextlib.contextmanager
def serve(log: Path, timeout: float = 120.0, env: dict | None = None):
    """The dashboard as ``attnscope serve`` (``make run``) starts it, on a free loopback port; yields a ``Server``."""
    port = free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", **(env or {}))
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            streamlit_command("127.0.0.1", port),  # what `attnscope serve` (and so `make run`) runs
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_healthy(url, proc, timeout)
            yield Server(url, proc, log)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            msg = f"streamlit exited with status {proc.returncode} before serving"
            raise RuntimeError(msg)
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as reply:
                if reply.read().strip() == b"ok":
                    return
        except OSError:
            time.sleep(0.5)
    msg = f"streamlit did not answer {url}/_stcore/health within {timeout:.0f} s"
    raise RuntimeError(msg)


class MemoryWatch:
    """Samples a process's RSS every ``interval`` s in a thread; ``peak_bytes`` also reads the kernel's VmHWM."""

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        self.pid, self.interval = pid, interval
        self.max_rss = 0
        self.hwm: int | None = None  # the kernel's high-water mark, bytes
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> MemoryWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.sample()
        self._stop.set()
        self._thread.join()

    def _status(self, field_name: str) -> int | None:
        try:
            with open(f"/proc/{self.pid}/status") as fh:
                for line in fh:
                    if line.startswith(field_name + ":"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
        return None

    def sample(self) -> None:
        try:
            import psutil

            rss = psutil.Process(self.pid).memory_info().rss
        except Exception:  # noqa: BLE001 - psutil missing or the process gone: fall back to /proc
            rss = self._status("VmRSS")
        self.max_rss = max(self.max_rss, rss or 0)
        self.hwm = self._status("VmHWM") or self.hwm

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    @property
    def peak_bytes(self) -> int:
        return max(self.max_rss, self.hwm or 0)


def relative(text: str) -> str:
    """Paths in a message without this machine's directories (results are committed)."""
    for prefix, name in ((sysconfig.get_paths()["purelib"], "site-packages"), (str(ROOT), ".")):
        text = text.replace(prefix, name)
    return text


def server_tracebacks(log: Path) -> list[str]:
    """The last line of every traceback in the server log (the exception it ends with)."""
    lines = log.read_text(errors="replace").splitlines()
    found = []
    for i, line in enumerate(lines):
        if line.startswith("Traceback (most recent call last)"):
            tail = next((l for l in lines[i + 1 :] if l and not l.startswith((" ", "\t"))), "?")
            found.append(relative(tail[:300]))
    return found


# ---------------------------------------------------------------------------------------------------------
# One session's websocket: streamlit's ForwardMsg frames, grouped by script run


@dataclass
class Run:
    """One script run as the browser received it."""

    after: int  # rerun requests this session had sent when the run started
    status: int | None = None  # ScriptFinishedStatus once finished
    charts: list = field(default_factory=list)  # VegaLiteChart protos in the order sent
    errors: list = field(default_factory=list)  # st.error bodies
    exceptions: list = field(default_factory=list)  # exception element messages


class Tap:
    """Listens to one page's websockets: counts the rerun requests it sends, groups what it receives by run."""

    def __init__(self) -> None:
        self.sent = 0  # BackMsg rerun_script frames sent
        self.runs: list[Run] = []
        self.by_hash: dict = {}  # ForwardMsg.hash -> message, to resolve ref_hash references
        self.changed = asyncio.Event()

    def attach(self, page) -> None:
        page.on("websocket", self._on_websocket)

    def _on_websocket(self, ws) -> None:
        ws.on("framesent", self._on_sent)
        ws.on("framereceived", self._on_received)

    def _on_sent(self, payload) -> None:
        from streamlit.proto.BackMsg_pb2 import BackMsg

        if isinstance(payload, (bytes, bytearray)) and BackMsg.FromString(bytes(payload)).WhichOneof("type") == "rerun_script":
            self.sent += 1
            self.changed.set()

    def _on_received(self, payload) -> None:
        from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

        if not isinstance(payload, (bytes, bytearray)):
            return
        msg = ForwardMsg.FromString(bytes(payload))
        kind = msg.WhichOneof("type")
        if kind == "ref_hash":
            msg = self.by_hash.get(msg.ref_hash, msg)
            kind = msg.WhichOneof("type")
        elif msg.hash:
            self.by_hash[msg.hash] = msg
        if kind == "new_session":
            self.runs.append(Run(after=self.sent))
        elif kind == "script_finished" and self.runs:
            self.runs[-1].status = int(msg.script_finished)
        elif kind == "delta" and self.runs and msg.delta.WhichOneof("type") == "new_element":
            element = msg.delta.new_element
            what = element.WhichOneof("type")
            if what == "vega_lite_chart":
                self.runs[-1].charts.append(element.vega_lite_chart)
            elif what == "exception":
                where = [line.strip() for line in element.exception.stack_trace if line.strip().startswith("File ")][-1:]
                text = f"{element.exception.type}: {element.exception.message}"[:300] + "".join(f" ({w[:200]})" for w in where)
                self.runs[-1].exceptions.append(relative(text))
            elif what == "alert" and element.alert.format == 1:  # Alert.Format.ERROR
                self.runs[-1].errors.append(relative(element.alert.body[:300]))
        self.changed.set()

    async def wait(self, condition: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            self.changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(left, 1.0))

    async def commit(self, action, timeout: float) -> None:
        """Do one input that makes the browser ask for a rerun; return once that run has started, so the next
        input's run can never be mistaken for this one's."""
        before = self.sent
        await action()
        await self.wait(lambda: self.sent > before, timeout)
        asked = self.sent
        await self.wait(lambda: any(r.after >= asked for r in self.runs), timeout)

    async def settled(self, timeout: float) -> Run:
        """The run that answers the last input, once it has finished (runs ended early for a rerun are followed)."""
        asked = self.sent

        def done() -> bool:
            later = [r for r in self.runs if r.after >= asked]
            return bool(later) and later[-1].status is not None and later[-1].status != FINISHED_EARLY_FOR_RERUN

        await self.wait(done, timeout)
        return [r for r in self.runs if r.after >= asked][-1]


def chart_frames(chart) -> list[pd.DataFrame]:
    """The datasets of a Vega-Lite element, decoded from Arrow IPC."""
    import pyarrow as pa

    blobs = [d.data.data for d in chart.datasets] + ([chart.data.data] if chart.data.data else [])
    return [pa.ipc.open_stream(io.BytesIO(b)).read_all().to_pandas() for b in blobs if b]


def chart_title(chart) -> str:
    """The title of a Vega-Lite element's spec ("" when it has none)."""
    title = json.loads(chart.spec).get("title", "")
    title = title.get("text", "") if isinstance(title, dict) else title
    return " ".join(title) if isinstance(title, list) else str(title)


def chart_data(charts: list, page: Page) -> pd.DataFrame | None:
    """The dataset holding the page's marks (its key and value columns) of the last chart with the page's title."""
    for chart in reversed(charts):
        if page.chart in chart_title(chart):
            for frame in chart_frames(chart):
                if {*page.keys, page.values[0]} <= set(frame.columns):
                    return frame
    return None


# ---------------------------------------------------------------------------------------------------------
# Driving one browser session


DRAWN_JS = """([title, keyFields, valueField]) => {
  if (document.querySelector("[data-testid='stStatusWidget']")) return null;  // still running
  const chart = [...document.querySelectorAll("[data-testid='stVegaLiteChart']")].find(c =>
    [...c.querySelectorAll("[aria-roledescription='title'][aria-label]")].some(t => t.getAttribute("aria-label").includes(title)));
  if (!chart || chart.closest("[data-stale='true']")) return null;
  if (!chart.querySelector("svg, canvas")) return null;
  const marks = [...chart.querySelectorAll("svg [aria-roledescription$=' mark'][aria-label]")].map(e => e.getAttribute("aria-label"));
  return {canvas: !!chart.querySelector("canvas"), marks: marks.filter(m => keyFields.every(k => m.includes(k + ": ")) && m.includes(valueField + ": "))};
}"""


def parse_aria(label: str) -> dict[str, str]:
    """Vega's mark description "field: value; field: value" as a dict."""
    out = {}
    for part in label.split("; "):
        name, sep, value = part.partition(": ")
        if sep:
            out[name.strip()] = value.strip()
    return out


def _number(text: str) -> tuple[float, float] | None:
    """A drawn number and half a unit of its last shown digit (Vega writes − for minus)."""
    text = text.replace("−", "-").replace(",", "")
    try:
        value = float(text)
    except ValueError:
        return None
    mantissa = text.lower().split("e")[0]
    decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
    exponent = int(text.lower().split("e")[1]) if "e" in text.lower() else 0
    return value, 0.5 * 10.0 ** (exponent - decimals) * 1.001 + 1e-12


def drawn_matches(marks: list[str], data: pd.DataFrame, page: Page) -> bool:
    """Whether the SVG's marks show ``data``: every drawn value equals the sent one at the precision drawn,
    and every finite sent value is drawn."""
    value_field, column = page.aria_value
    want = {}
    for row in data.itertuples(index=False):
        v = getattr(row, column)
        if "masked" in data.columns and row.masked:
            continue
        if v is not None and np.isfinite(v):
            want[tuple(int(getattr(row, k)) for k in page.keys)] = float(v)
    seen = set()
    for label in marks:
        fields = parse_aria(label)
        try:
            key = tuple(int(float(fields[k].replace("−", "-"))) for k in page.aria_keys)
        except (KeyError, ValueError):
            continue
        shown = _number(fields.get(value_field, ""))
        if shown is None:
            continue
        if key not in want or abs(want[key] - shown[0]) > shown[1]:
            return False
        seen.add(key)
    return seen == set(want)


async def wait_drawn(page, spec: Page, data: pd.DataFrame | None, timeout: float) -> bool:
    """Wait until the page is idle and the chart shows ``data``; True when the drawn marks were checked."""
    deadline = time.monotonic() + timeout
    while True:
        state = await page.evaluate(DRAWN_JS, [spec.chart, list(spec.aria_keys), spec.aria_value[0]])
        if state is not None:
            if state["canvas"] and not state["marks"]:
                return False  # drawn on a canvas: no marks to read, the websocket data stands alone
            if data is not None and drawn_matches(state["marks"], data, spec):
                return True
        if time.monotonic() > deadline:
            raise TimeoutError
        await asyncio.sleep(0.1)


async def select(page, label: str, option: str, where=None, attempts: int = 4) -> None:
    """Pick ``option`` in the streamlit select box labelled ``label`` (its "Open" button opens the list; the
    list closes again if the page scrolls under it, so a few tries)."""
    from playwright.async_api import TimeoutError as PlaywrightTimeout

    combo = page.get_by_role("combobox", name=label, exact=True)  # relative to the select box it is in
    opener = (where or page).locator("[data-testid='stSelectbox']").filter(has=combo).get_by_role("button", name="Open")
    for attempt in range(attempts):
        await opener.click()
        try:
            await page.get_by_role("option", name=option, exact=True).click(timeout=3000)
            return
        except PlaywrightTimeout:
            if attempt == attempts - 1:
                raise
            await page.keyboard.press("Escape")


async def selected(page, label: str, where=None) -> str:
    """The option a streamlit select box labelled ``label`` shows."""
    return await (where or page).get_by_role("combobox", name=label, exact=True).input_value()


async def type_text(box, text: str) -> None:
    await box.fill(text)
    await box.press("Control+Enter")


@dataclass
class Interaction:
    session: int
    page: str
    model: str
    setting: str | None
    texts: tuple[str, ...]
    started: float  # seconds since the load began
    seconds: float | None = None  # first input to drawn chart
    drawn_checked: bool = False  # the drawn SVG's marks were compared with the websocket data
    chart: pd.DataFrame | None = None  # the chart data read back from the websocket
    errors: list = field(default_factory=list)  # st.error bodies in this interaction's runs
    exceptions: list = field(default_factory=list)  # exception elements in its runs, on the page
    failure: str | None = None  # why it did not finish (timeout, playwright error)
    equal: bool | None = None  # chart == solo run (filled in by ``check``)
    detail: str = ""


async def session(
    browser, url: str, index: int, choices, deadline: float, t0: float, out: list[Interaction], timeout: float = INTERACTION_TIMEOUT
) -> None:
    """One user: its own browser context; interactions from ``choices`` until ``deadline`` (monotonic)."""
    context = await browser.new_context(viewport={"width": 1400, "height": 1800})
    page = await context.new_page()
    tap = Tap()
    tap.attach(page)
    current = None  # the page shown; None: open the next one by its URL
    try:
        for choice in choices:
            if time.monotonic() >= deadline:
                break
            spec = PAGE[choice.page]
            item = Interaction(index, choice.page, choice.model, choice.setting, choice.texts, time.monotonic() - t0)
            out.append(item)
            nav_first = len(tap.runs)
            try:
                if current is None:
                    await page.goto(f"{url}/{spec.path}", timeout=timeout * 1000)
                    await tap.wait(lambda first=nav_first: len(tap.runs) > first and tap.runs[-1].status is not None, timeout)
                elif choice.page != current:
                    link = page.locator(f"[data-testid='stSidebarNavLink'][href='{url}/{spec.path}']")
                    await tap.commit(link.click, timeout)
                    await tap.settled(timeout)
                current = choice.page
                await _interact(page, tap, spec, choice, item, timeout)
            except Exception as exc:  # noqa: BLE001 - a broken interaction is a result, not a crash of the bench
                kind = "timeout" if isinstance(exc, (TimeoutError, asyncio.TimeoutError)) else type(exc).__name__
                item.failure = f"{kind}: {str(exc).splitlines()[0][:200]}" if str(exc) else kind
                current = None  # start over from the next page's URL
            item.exceptions = [e for run in tap.runs[nav_first:] for e in run.exceptions] + item.exceptions
    finally:
        await context.close()


async def _widgets_or_exception(box, tap: Tap, timeout: float) -> None:
    """Wait for the page's text widget; raise at once when the page's last run ended in an exception instead."""
    deadline = time.monotonic() + timeout
    while not await box.is_visible():
        last = tap.runs[-1] if tap.runs else None
        if last is not None and last.status is not None and last.exceptions:
            msg = f"the page raised {last.exceptions[-1]}"
            raise RuntimeError(msg)
        if time.monotonic() > deadline:
            raise TimeoutError
        await asyncio.sleep(0.2)


async def _interact(page, tap: Tap, spec: Page, choice: Choice, item: Interaction, timeout: float) -> None:
    sidebar = page.locator("[data-testid='stSidebar']")
    box = sidebar.get_by_role("textbox", name=spec.text_label, exact=True)
    # The model first: the session's workspace may hold a model this page cannot use (Generate with an encoder),
    # and then the page says so instead of drawing its text box.
    await _widgets_or_exception(sidebar.get_by_role("combobox", name="Model", exact=True), tap, timeout)
    first_run = len(tap.runs)
    start = time.monotonic()
    if await selected(page, "Model", sidebar) != choice.model:
        await tap.commit(lambda: select(page, "Model", choice.model, sidebar), timeout)
    await _widgets_or_exception(box, tap, timeout)
    if spec.settings and await selected(page, "Setting") != choice.setting:
        await tap.commit(lambda: select(page, "Setting", choice.setting), timeout)
    text = "\n".join(choice.texts)
    if await box.input_value() == text:  # same text as shown: make it a new input all the same
        await tap.commit(lambda: type_text(box, text + " "), timeout)
    await tap.commit(lambda: type_text(box, text), timeout)
    final = await tap.settled(timeout)
    item.errors += [e for run in tap.runs[first_run:] for e in run.errors]  # errors before the input may be right (a page
    # opened with a model it cannot use); exceptions never are: the session adds those of every run
    item.chart = chart_data(final.charts, spec)
    if item.chart is None:
        item.failure = f"the run drew no {spec.chart!r} chart" + (f" ({final.errors[0][:120]})" if final.errors else "")
        return
    item.drawn_checked = await wait_drawn(page, spec, item.chart, timeout)
    item.seconds = time.monotonic() - start
    on_page = await page.locator("[data-testid='stException'], [data-testid='stAlertContentError']").all_inner_texts()
    item.exceptions += [f"on page: {t[:200]}" for t in on_page]


async def drive(
    url: str,
    sessions: int,
    seconds: float,
    seed: int = 0,
    openings: dict[int, list[Choice]] | None = None,
    timeout: float = INTERACTION_TIMEOUT,
) -> list[Interaction]:
    """``sessions`` browser contexts in one headless Chromium, concurrently, for ``seconds``."""
    from playwright.async_api import async_playwright

    out: list[Interaction] = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            t0 = time.monotonic()
            deadline = t0 + seconds
            rngs = [random.Random(seed * 1000 + s) for s in range(sessions)]
            await asyncio.gather(
                *(session(browser, url, s, plan(s, rngs[s], (openings or {}).get(s)), deadline, t0, out, timeout) for s in range(sessions))
            )
        finally:
            await browser.close()

    return out


# ---------------------------------------------------------------------------------------------------------
# Checking against the solo run, and the report


def compare(got: pd.DataFrame, want: pd.DataFrame, spec: Page, atol: float = ATOL) -> str:
    """ "" when the chart's data equals the solo run's; else what differs."""
    got = got.set_index(list(spec.keys)).sort_index()
    want = want.set_index(list(spec.keys)).sort_index()
    if list(got.index) != list(want.index):
        return f"marks differ: {len(got)} drawn vs {len(want)} alone (e.g. {sorted(set(got.index) ^ set(want.index))[:3]})"
    for col in spec.labels:
        diff = got[col].astype(str).to_numpy() != want[col].astype(str).to_numpy()
        if diff.any():
            i = int(np.flatnonzero(diff)[0])
            return f"{col} differs at {_where(got, i)}: {got[col].iloc[i]!r} drawn vs {want[col].iloc[i]!r} alone"
    for col in spec.values:
        if col not in got.columns:
            continue
        a = got[col].to_numpy(dtype=np.float64)
        b = want[col].to_numpy(dtype=np.float64)
        bad = ~np.isclose(a, b, rtol=0, atol=atol, equal_nan=True)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            return f"{col} differs at {_where(got, i)}: {a[i]:.6g} drawn vs {b[i]:.6g} alone (max |Δ| {np.nanmax(np.abs(a - b)):.2e})"
    return ""


def _where(frame: pd.DataFrame, i: int) -> str:
    """Row ``i``'s key as "name=value, ..." (plain ints)."""
    key = frame.index[i] if isinstance(frame.index[i], tuple) else (frame.index[i],)
    return ", ".join(f"{name}={int(v)}" for name, v in zip(frame.index.names, key))


def check(items: list[Interaction], loaded: dict) -> None:
    """Fill ``equal``/``detail`` of every interaction that read a chart back, against the solo run (cached)."""
    solo: dict[Choice, pd.DataFrame] = {}
    for item in items:
        if item.chart is None:
            continue
        choice = Choice(item.page, item.model, item.texts, item.setting)
        spec = PAGE[item.page]
        if choice not in solo:
            solo[choice] = spec.expected(loaded[item.model], choice)
        item.detail = compare(item.chart, solo[choice], spec)
        item.equal = not item.detail


def load_models(names=MODELS) -> dict:
    from attnscope.models import load

    return {name: load(name) for name in names}


def parameter_bytes(lm) -> int:
    return sum(p.numel() * p.element_size() for p in lm.model.parameters())


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def summarize(items: list[Interaction]) -> list[dict]:
    """One row per page (and one for all): interactions, p50/p95 seconds, maps checked/equal, failures, exceptions."""
    rows = []
    for title in [p.title for p in PAGES] + ["all"]:
        mine = [i for i in items if title in ("all", i.page)]
        if not mine:
            continue
        times = [i.seconds for i in mine if i.seconds is not None]
        rows.append(
            {
                "page": title,
                "interactions": len(mine),
                "drawn": len(times),
                "p50_s": None if not times else round(percentile(times, 50), 2),
                "p95_s": None if not times else round(percentile(times, 95), 2),
                "maps_checked": sum(i.equal is not None for i in mine),
                "maps_equal": sum(bool(i.equal) for i in mine),
                "svg_checked": sum(i.drawn_checked for i in mine),
                "failures": sum(i.failure is not None for i in mine),
                "exceptions": sum(len(i.exceptions) for i in mine),
                "errors": sum(len(i.errors) for i in mine),
            }
        )
    return rows


def table(rows: list[dict]) -> str:
    shown = [
        {
            **r,
            "p50 s": r["p50_s"] if r["p50_s"] is not None else "—",
            "p95 s": r["p95_s"] if r["p95_s"] is not None else "—",
            "maps equal / checked": f"{r['maps_equal']} / {r['maps_checked']}",
            "exceptions + errors": r["exceptions"] + r["errors"],
        }
        for r in rows
    ]
    return markdown(shown, ["page", "interactions", "p50 s", "p95 s", "maps equal / checked", "failures", "exceptions + errors"])


def versions() -> dict:
    from importlib.metadata import version

    return {"python": platform.python_version(), **{name: version(name) for name in ("torch", "transformers", "streamlit", "playwright")}}


def run_load(
    sessions: int,
    seconds: float,
    log: Path,
    seed: int = 0,
    openings: dict[int, list[Choice]] | None = None,
    timeout: float = INTERACTION_TIMEOUT,
    loaded: dict | None = None,
) -> dict:
    """Start the server, drive the sessions, check every map against the solo run; the result as a dict."""
    from attnscope.models.budget import cache_limit_bytes

    loaded = loaded or load_models()
    began = time.monotonic()
    with serve(log) as server, MemoryWatch(server.proc.pid) as memory:
        started = time.monotonic()
        items = asyncio.run(drive(server.url, sessions, seconds, seed, openings, timeout))
        wall = time.monotonic() - started
        memory.sample()
    stopped = time.monotonic()
    check(items, loaded)
    phases = {
        "server_start_s": round(started - began, 1),
        "sessions_s": round(wall, 1),
        "solo_check_s": round(time.monotonic() - stopped, 1),
    }
    budget = cache_limit_bytes()
    params = {name: parameter_bytes(lm) for name, lm in loaded.items()}
    return {
        "sessions": sessions,
        "seconds": seconds,
        "wall_s": round(wall, 1),
        "phases": phases,
        "rows": summarize(items),
        "server_peak_rss_bytes": memory.peak_bytes,
        "cache_budget_bytes": budget,
        "parameter_bytes": params,
        "budget_plus_parameters_bytes": budget + sum(params.values()),
        "server_tracebacks": server_tracebacks(log),
        "interactions": [
            {
                "session": i.session,
                "page": i.page,
                "model": i.model,
                "setting": i.setting,
                "texts": list(i.texts),
                "started_s": round(i.started, 2),
                "seconds": None if i.seconds is None else round(i.seconds, 3),
                "equal": i.equal,
                "detail": i.detail,
                "svg_checked": i.drawn_checked,
                "failure": i.failure,
                "errors": i.errors,
                "exceptions": i.exceptions,
            }
            for i in items
        ],
        "_items": items,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=8, help="concurrent browser sessions (default 8)")
    parser.add_argument("--seconds", type=float, default=120.0, help="how long the sessions keep interacting (default 120)")
    parser.add_argument("--out", type=Path, default=RESULTS / "load-cpu.json", help="JSON results (default bench/results/load-cpu.json)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sessions' choices")
    parser.add_argument(
        "--log",
        type=Path,
        default=Path(tempfile.gettempdir()) / "attnscope-load-server.log",
        help="the server's log (default: in the temporary directory)",
    )
    args = parser.parse_args()
    if CHROMIUM is None:
        sys.exit("chromium is not installed (apt-get install chromium)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()  # other jobs on the machine: the timings are only as quiet as it was
    result = run_load(args.sessions, args.seconds, args.log, seed=args.seed)
    result.pop("_items")
    result["load_average_1min"] = {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2)}
    gb = 2**30
    result.update(
        {
            "date": dt.date.today().isoformat(),
            "machine": machine(),
            "versions": versions(),
        }
    )
    print(
        f"{args.sessions} sessions x {args.seconds:.0f} s on one server ({result['wall_s']:.0f} s wall), {machine()}, "
        f"load average {result['load_average_1min']['before']} before, {result['load_average_1min']['after']} after"
    )
    print(table(result["rows"]))
    total = result["budget_plus_parameters_bytes"]
    print(
        f"server peak RSS {result['server_peak_rss_bytes'] / gb:.2f} GB; budget {total / gb:.2f} GB "
        f"(record cache {result['cache_budget_bytes'] / gb:.2f} GB + parameters "
        + ", ".join(f"{n} {b / gb:.2f} GB" for n, b in result["parameter_bytes"].items())
        + ")"
    )
    print(f"tracebacks in the server log ({args.log}): {len(result['server_tracebacks'])}")
    for line in sorted(set(result["server_tracebacks"]))[:5]:
        print("  " + line)
    for row in result["interactions"]:
        if row["failure"] or row["equal"] is False or row["exceptions"]:
            print(
                f"  session {row['session']} {row['page']} {row['model']} {row['setting'] or ''}: "
                f"{row['failure'] or row['detail'] or row['exceptions'][0]}"
            )
    args.out.write_text(json.dumps(result, indent=1, default=str))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
