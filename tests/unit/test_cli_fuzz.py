"""Fuzzing every CLI subcommand (and the API behind it) with bad texts, indices, paths and numbers.

The contract: bad input exits 2 with exactly one line on stderr and no traceback, and writes nothing;
good input exits 0 and writes a whole, readable file. The API raises ValueError for the same input.
Tiny random models saved as local directories stand in for real ones (each loaded once per module).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attnscope import cli
from tests import tiny

N_LAYERS, N_HEADS, POSITIONS, VOCABULARY = 2, 4, 128, 49152  # the tiny models' (tests/tiny.py)
# Per subcommand, ~0.1 s each with the tiny models; the same examples every run unless a deeper search is asked
# for (ATTNSCOPE_FUZZ_EXAMPLES=200 explores new ones each time).
EXAMPLES = int(os.environ.get("ATTNSCOPE_FUZZ_EXAMPLES", "8"))
FUZZ = settings(
    max_examples=EXAMPLES, deadline=None, derandomize="ATTNSCOPE_FUZZ_EXAMPLES" not in os.environ, suppress_health_check=list(HealthCheck)
)
UNWRITABLE_DIR = Path("/proc")  # exists, and no one (not even root) may create a file in it

# -- values: (text for argv, True when it must be refused) ------------------------------------------
BLANK = st.text(alphabet=" \t\n\r\x0b\x0c\u00a0\u2003\u3000", max_size=8)
BAD_TEXTS = st.one_of(BLANK, st.sampled_from(["\ud800", "a\udcff b", "word " * 3000]))
ANY_TEXTS = st.text(max_size=40)  # control characters, other scripts, emoji: refused or read, never a crash
NOT_NUMBERS = st.sampled_from(["", "abc", "nan", "inf", "1e308", "1.5", "0x10", "--", "1e3"])


def bad(strategy):
    return strategy.map(lambda v: (v, True))


def maybe(strategy):
    return strategy.map(lambda v: (v, None))  # None: either outcome is fine, but only as the contract says


def index_lists(limit: int):
    """--layers / --heads: comma lists of 0-based indices; out of range or not numbers is refused."""
    numbers = st.lists(st.integers(-3, limit + 2) | st.sampled_from([-(10**12), 10**12]), min_size=1, max_size=3)
    return st.one_of(
        numbers.map(lambda vs: (",".join(map(str, vs)), not all(0 <= v < limit for v in vs))),
        bad(st.sampled_from(["", ",", " , ", "a", "1.5", "0;1", "1-2"])),
    )


def counts(low: int = 1, high: int | None = None):
    """A positive whole-number option: below ``low``, above ``high`` or not a whole number is refused."""
    numbers = st.integers(-(10**6), 10**30) | st.sampled_from([low - 1, low, -1, 0])
    return st.one_of(
        numbers.map(lambda v: (str(v), v < low or (high is not None and v > high))),
        bad(NOT_NUMBERS),
    )


def out_paths(suffix: str):
    """An output file ({work} is the example's own folder, which holds a file and folders to trip over)."""
    return st.one_of(
        bad(
            st.sampled_from(
                [
                    f"{{work}}/no/such/dir/x{suffix}",
                    f"{{work}}/a-file.txt/x{suffix}",
                    f"{{work}}/a-folder{suffix}",
                    "{work}/x.wrong",
                    "",
                    str(UNWRITABLE_DIR / f"attnscope-fuzz{suffix}"),
                    f"{{work}}/x{suffix}\n",
                ]
            )
        ),
        st.text(st.characters(blacklist_characters="/\x00", blacklist_categories=("Cs",)), min_size=1, max_size=12)
        .filter(lambda s: s not in (".", ".."))
        .map(lambda s: (f"{{work}}/{s}{suffix}", None)),
    )


TEXT = {"--text": st.one_of(bad(BAD_TEXTS), maybe(ANY_TEXTS))}
MAX_LENGTH = {"--max-length": counts(2, POSITIONS)}
COMMON = {
    "--device": st.sampled_from([("cpu", False), ("gpu", True), ("", True), ("auto", False)]),
    "--model": bad(st.sampled_from(["", "  ", "no-such-org/no-such-model", "{work}/a-folder", "{work}/a-file.txt", "{work}/no/such"])),
}


@dataclass(frozen=True)
class Command:
    argv: tuple[str, ...]  # good input; {enc}, {dec}, {work} are filled in
    suffix: str  # of --out ("" for a directory)
    options: dict  # option -> strategy of (value, must_fail)


COMMANDS = {
    "extract": Command(
        ("extract", "--model", "{enc}", "--text", "The mouse ran.", "--out", "{work}/x.npz"),
        ".npz",
        {**TEXT, **COMMON, **MAX_LENGTH, "--layers": index_lists(N_LAYERS), "--heads": index_lists(N_HEADS)},
    ),
    "heads": Command(
        ("heads", "--model", "{enc}", "--text", "The mouse ran.", "--out", "{work}/x.csv"), ".csv", {**TEXT, **COMMON, **MAX_LENGTH}
    ),
    "drift": Command(
        ("drift", "--model", "{enc}", "--out", "{work}/x.csv"),
        ".csv",
        {**COMMON, **MAX_LENGTH, "--word": st.one_of(bad(BLANK), maybe(st.text(max_size=12))), "--context": maybe(st.text(max_size=30))},
    ),
    "padding": Command(
        ("padding", "--model", "{enc}", "--text", "The mouse ran.", "--text", "Hi.", "--out", "{work}/x.json"),
        ".json",
        {**TEXT, **COMMON, **MAX_LENGTH},
    ),
    "figure": Command(
        ("figure", "--model", "{enc}", "--text", "The mouse ran.", "--out", "{work}/x.svg"),
        ".svg",
        {
            **TEXT,
            **COMMON,
            **MAX_LENGTH,
            "--layer": counts(0, N_LAYERS - 1),
            "--head": counts(0, N_HEADS - 1),
            "--view": st.sampled_from([("heatmap", False), ("overview", False), ("", True), ("nope", True), ("compare", True)]),
            "--window": st.one_of(
                st.tuples(st.integers(-2, 12), st.integers(-2, 12)).map(lambda w: (f"{w[0]}:{w[1]}", None)),
                bad(st.sampled_from(["1", "a:b", "1:2:3", ":", "1.5:3"])),
            ),
            "--data": out_paths(".csv"),
        },
    ),
    "generate": Command(
        ("generate", "--model", "{dec}", "--text", "The mouse", "--new-tokens", "2", "--sample", "--out", "{work}/x.npz"),
        ".npz",
        {
            **TEXT,
            **COMMON,
            "--new-tokens": counts(1, POSITIONS),
            "--seed": counts(0, 2**64 - 1),
            "--top-k": counts(1),
            "--temperature": st.one_of(
                st.floats(1e-3, 1e3).map(lambda t: (repr(t), False)),
                bad(st.sampled_from(["0", "-1", "nan", "inf", "1e-300", "1e308", "abc", ""])),
            ),
        },
    ),
    "lens": Command(
        ("lens", "--model", "{dec}", "--text", "The mouse ran.", "--out", "{work}/x.csv"),
        ".csv",
        {**TEXT, **COMMON, **MAX_LENGTH, "--top-k": counts(1, VOCABULARY)},
    ),
    "lab": Command(
        ("lab", "--model", "{dec}", "--text", "The mouse ran to the house.", "--pattern", "window:2", "--out", "{work}/x.csv"),
        ".csv",
        {
            **TEXT,
            **COMMON,
            **MAX_LENGTH,
            "--layers": index_lists(N_LAYERS),
            "--pattern": st.one_of(
                st.sampled_from(["window:", "svd:", "topk:", "kv:"]).flatmap(
                    lambda p: st.integers(-5, 10**12).map(lambda v: (f"{p}{v}", None))
                ),
                bad(
                    st.sampled_from(
                        ["", "nope", "window:0", "window:-1", "window:nan", "kv:3", "svd:0", "bigbird:1,1", "performer:99999999"]
                    )
                ),
            ),
        },
    ),
    "knockout": Command(
        ("knockout", "--model", "{dec}", "--text", "The mouse ran.", "--heads", "1.1", "--out", "{work}/x.json"),
        ".json",
        {
            **TEXT,
            **COMMON,
            "--heads": st.one_of(
                st.tuples(st.integers(-1, N_LAYERS), st.integers(-1, N_HEADS)).map(
                    lambda lh: (f"{lh[0]}.{lh[1]}", not (0 <= lh[0] < N_LAYERS and 0 <= lh[1] < N_HEADS))
                ),
                bad(st.sampled_from(["", "1", "1.", ".1", "a.b", "1.1.1", "1,1"])),
            ),
            "--edges": st.one_of(
                st.tuples(st.integers(-1, 3), st.integers(-1, 40)).map(lambda qk: (f"1.1:{qk[0]}>{qk[1]}", None)),
                bad(st.sampled_from(["1.1", "1.1:2", "1.1:a>b", "9.9:1>0", "1.1:1>99"])),
            ),
            "--mode": st.sampled_from([("zero", False), ("mean", False), ("", True), ("ZERO", True)]),
        },
    ),
    "importance": Command(
        ("importance", "--model", "{dec}", "--text", "The mouse ran.", "--out", "{work}/x.csv"),
        ".csv",
        {**TEXT, **COMMON, "--batch": counts(1)},
    ),
    # --- routes -------------------------------------------------------------------------------------------
    "routes": Command(
        ("routes", "--model", "{dec}", "--text", "The mouse ran.", "--out", "{work}/x.json"),
        ".json",
        {
            **TEXT,
            **COMMON,
            "--position": st.one_of(st.integers(-3, 40).map(lambda v: (str(v), True if v < 0 else None)), bad(NOT_NUMBERS)),
            "--threshold": st.one_of(
                st.floats(0, 0.99).map(lambda t: (repr(t), False)),
                bad(st.sampled_from(["-0.1", "1", "1.5", "nan", "inf", "abc", ""])),
            ),
            "--target": bad(st.text(min_size=1, max_size=12)),  # a decoder-only model takes no target text
        },
    ),
    # --- end routes ---------------------------------------------------------------------------------------
    "corpus": Command(
        ("corpus", "--model", "{enc}", "--data", "{work}/texts.txt", "--out", "{work}/result", "--no-progress"),
        "",
        {
            "--model": COMMON["--model"],
            "--workers": counts(1),
            "--batch-size": counts(1),
            "--max-tokens": counts(2, POSITIONS),
            "--data": bad(
                st.sampled_from(
                    [f"{{work}}/{name}" for name in ("no-such.txt", "a-folder", "a-file.txt/x.txt", "empty.txt", "blank.txt", "texts.doc")]
                )
            ),
            "--address": bad(st.sampled_from(["", "x", "host:port", "ray://", ":1"])),
            "--analysis": st.sampled_from([("heads", False), ("drift", False), ("nope", True)]),
        },
    ),
}


# -- running ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Tiny models saved as directories (loaded once each); corpus jobs inline (no Ray); a fresh work dir per example."""
    from attnscope import corpus, models

    root = tmp_path_factory.mktemp("fuzz")
    paths = {}
    for key, arch in (("enc", "bert"), ("dec", "llama_gqa")):
        lm = tiny.build(arch)
        lm.model.save_pretrained(root / arch)
        lm.tokenizer.save_pretrained(root / arch)
        paths[key] = str(root / arch)
    real_load, loaded = models.load, {}

    def load_once(name, backend="auto", device="auto", dtype=None, **kwargs):
        key = (name, backend, device, dtype, tuple(sorted(kwargs.items())))
        if name not in paths.values():
            return real_load(name, backend=backend, device=device, dtype=dtype, **kwargs)
        if key not in loaded:
            loaded[key] = real_load(name, backend=backend, device=device, dtype=dtype, **kwargs)
        return loaded[key]

    real_corpus = corpus.run_corpus

    def inline(config):
        config.inline = True  # the same batches in this process: no Ray to start for a fuzz example
        return real_corpus(config)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(models, "load", load_once)
        patch.setattr(corpus, "run_corpus", inline)
        yield {**paths, "root": root}


def work_dir(root: Path) -> Path:
    work = Path(tempfile.mkdtemp(dir=root))
    (work / "a-file.txt").write_text("not a folder")
    for name in ("a-folder", *(f"a-folder{c.suffix}" for c in COMMANDS.values())):
        (work / name).mkdir(exist_ok=True)
    (work / "texts.txt").write_text("The mouse ran.\nClick the mouse twice.\n")
    (work / "empty.txt").write_text("")
    (work / "blank.txt").write_text("\n   \n\t\n")
    (work / "texts.doc").write_text("The mouse ran.\n")
    return work


FIXTURES = {
    "a-file.txt",
    "a-folder",
    "texts.txt",
    "empty.txt",
    "blank.txt",
    "texts.doc",
    *(f"a-folder{c.suffix}" for c in COMMANDS.values()),
}


def call(argv: list[str]) -> tuple[int, list[str]]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(argv)
    return code, err.getvalue().splitlines()


def build(command: Command, env, work: Path, option: str | None = None, value: str | None = None) -> list[str]:
    def fill(arg: str) -> str:
        return arg.replace("{enc}", env["enc"]).replace("{dec}", env["dec"]).replace("{work}", str(work))

    argv = [fill(a) for a in command.argv]
    if option is not None:
        if option in argv:
            argv[argv.index(option) + 1] = fill(value)
        else:
            argv.append(f"{option}={fill(value)}")  # = form: a value starting with '-' is not taken for an option
    return argv


def check_written(command: str, path: Path) -> None:
    """A file written by a command that exited 0 is whole: it reads back."""
    if command == "corpus":
        from attnscope.corpus import load_result

        assert len(load_result(path).summary) > 0
    elif path.suffix == ".npz":
        with np.load(path) as data:
            assert "meta" in data.files or "tokens" in data.files
    elif path.suffix == ".csv":
        assert len(pd.read_csv(path)) > 0
    elif path.suffix == ".json":
        assert json.loads(path.read_text(encoding="utf-8"))
    elif path.suffix == ".svg":
        assert path.read_bytes().lstrip().startswith(b"<svg")


def outputs(argv: list[str]) -> list[Path]:
    """What the command writes: --out (a file, or the corpus result directory) and figure's --data."""
    flags = ("--out",) if argv[0] == "corpus" else ("--out", "--data")
    values = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in argv if a.startswith("--") and "=" in a}
    values.update({a: argv[i + 1] for i, a in enumerate(argv[:-1]) if a in flags})
    return [Path(values[f]) for f in flags if f in values]


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_good_input_exits_0_and_writes_a_whole_file(env, name):
    work = work_dir(env["root"])
    argv = build(COMMANDS[name], env, work)
    code, err = call(argv)
    assert code == 0, err
    (out,) = outputs(argv)
    check_written(name, out)
    assert sorted(p.name for p in work.iterdir()) == sorted(FIXTURES | {out.name})  # no temporary file left


@pytest.mark.parametrize("name", sorted(COMMANDS))
@FUZZ
@given(data=st.data())
def test_fuzzed_input_exits_2_with_one_line_or_0_with_whole_files(env, name, data):
    command = COMMANDS[name]
    option = data.draw(st.sampled_from(sorted({**command.options, "--out": None})), label="option")
    strategy = out_paths(command.suffix) if option == "--out" and command.suffix else command.options.get(option)
    if strategy is None:  # corpus --out: a directory
        strategy = bad(
            st.sampled_from(
                ["", "{work}/no/such/result", "{work}/a-file.txt/result", "{work}/a-file.txt", str(UNWRITABLE_DIR / "attnscope-fuzz")]
            )
        )
    value, must_fail = data.draw(strategy, label="value")
    work = work_dir(env["root"])
    try:
        argv = build(command, env, work, option, value)
        code, err = call(argv)
        left = sorted({p.name for p in work.iterdir()} - FIXTURES)
        if must_fail:
            assert code == 2, (argv, err)
        assert code in (0, 2), (argv, err)
        if code == 2:
            assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0], err
            assert left == [], f"a failing command wrote {left}"
            assert all(not any((work / f).iterdir()) for f in FIXTURES if (work / f).is_dir())
        else:
            assert err == [], err
            written = outputs(argv)
            for path in written:
                check_written(name, path)
            assert set(left) <= {p.name for p in written}, f"files other than the outputs left: {left}"
    finally:
        shutil.rmtree(work, ignore_errors=True)


# -- the API: the same input, a ValueError ----------------------------------------------------------
@pytest.fixture(scope="module")
def lms(env):
    from attnscope import models

    return {"enc": models.load(env["enc"], device="cpu"), "dec": models.load(env["dec"], device="cpu")}


def refused_or_fine(call_api, must_fail):
    """Run an API call: bad input raises ValueError (nothing else); other input returns or raises ValueError."""
    try:
        result = call_api()
    except ValueError as exc:
        assert str(exc).strip(), "a ValueError without a message"
        return None
    assert not must_fail, "bad input was accepted"
    return result


@FUZZ
@given(
    text=st.one_of(bad(BAD_TEXTS), maybe(ANY_TEXTS)),
    kind=st.sampled_from(["enc", "dec"]),
    layer=st.integers(-2, N_LAYERS + 1) | st.just(10**12),
    head=st.integers(-2, N_HEADS + 1) | st.just(-(10**12)),
)
def test_api_run_and_attention(lms, text, kind, layer, head):
    from attnscope.models import run

    value, must_fail = text
    rec = refused_or_fine(lambda: run(lms[kind], value), must_fail)
    if rec is None:
        return
    in_range = 0 <= layer < N_LAYERS and 0 <= head < N_HEADS
    a = refused_or_fine(lambda: rec.attention(layer, head), not in_range)
    if a is not None:
        np.testing.assert_allclose(a.sum(-1), 1.0, atol=1e-5)
    assert refused_or_fine(lambda: rec.attention(0, 0, batch=1), True) is None


@FUZZ
@given(
    new_tokens=st.integers(-3, 6) | st.sampled_from([10**6, 10**30]),
    seed=st.integers(-3, 2**64 + 3) | st.none(),
    temperature=st.floats(1e-3, 1e3) | st.floats(allow_nan=True, allow_infinity=True) | st.just(True),
    top_k=st.integers(-3, 10**30) | st.none(),
)
def test_api_generate(lms, new_tokens, seed, temperature, top_k):
    from attnscope.models.generation import MAX_SEED, generate

    ok = (
        1 <= new_tokens
        and (seed is None or 0 <= seed <= MAX_SEED)
        and (top_k is None or top_k >= 1)
        and not isinstance(temperature, bool)
        and math.isfinite(temperature)
        and 1e-3 <= temperature <= 1e3
    )
    rec = refused_or_fine(
        lambda: generate(
            lms["dec"], "The mouse", max_new_tokens=new_tokens, do_sample=True, seed=seed, temperature=temperature, top_k=top_k
        ),
        not ok,
    )
    if rec is not None:
        assert 1 <= len(rec.generation.positions) <= new_tokens
        assert np.isfinite(rec.generation.top_probs).all()


@FUZZ
@given(
    top_k=st.integers(-3, 50) | st.sampled_from([VOCABULARY + 1, 10**30]),
    batch=st.integers(-3, 10**30),
    heads=st.lists(st.tuples(st.integers(-1, 3), st.integers(-1, 5)), max_size=2),
    pattern=st.sampled_from(["window:", "topk:", "svd:", "kv:", "block:"]).flatmap(lambda p: st.integers(-3, 40).map(lambda v: f"{p}{v}")),
)
def test_api_lens_importance_knockout_lab(lms, top_k, batch, heads, pattern):
    from attnscope.models import run
    from attnscope.models.knockout import head_importance, knockout
    from attnscope.models.lab import lab_table

    lm, text = lms["dec"], "The mouse ran to the house."
    lens = refused_or_fine(lambda: run(lm, text).logit_lens(lm, top_k=top_k), not 1 <= top_k <= VOCABULARY)
    if lens is not None:
        assert lens["next_rank"].min() >= 0
    table = refused_or_fine(lambda: head_importance(lm, text, batch_size=batch), batch < 1)
    if table is not None:
        assert len(table) == N_LAYERS * N_HEADS
    in_range = bool(heads) and all(0 <= l < N_LAYERS and 0 <= h < N_HEADS for l, h in heads)
    result = refused_or_fine(lambda: knockout(lm, text, heads=heads), not in_range)
    if result is not None:
        assert result.kl is not None and result.kl >= -1e-6
    rows = refused_or_fine(lambda: lab_table(lm, text, [pattern])[0], pattern.endswith((":0", ":-1", ":-2", ":-3")))
    if rows is not None:
        assert 0 <= rows["coverage"].iloc[0] <= 1 + 1e-6


@pytest.mark.parametrize(
    "name, option",
    [
        ("generate", "--max-length=8"),
        ("knockout", "--max-length=8"),
        ("importance", "--max-length=8"),
        ("lens", "--target=x"),
        ("padding", "--target=x"),
    ],
)
def test_an_option_the_command_would_ignore_is_refused(env, name, option):
    work = work_dir(env["root"])
    code, err = call([*build(COMMANDS[name], env, work), option])
    assert code == 2 and len(err) == 1 and "unrecognized arguments" in err[0], err
    assert sorted(p.name for p in work.iterdir()) == sorted(FIXTURES)
