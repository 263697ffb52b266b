"""The lab's pattern registry: every registered class round-trips through text, sweeps and the page's form;
names come from the registry; adding a pattern is one class (the module docstring's example runs here)."""

from __future__ import annotations

import dataclasses
import re
import textwrap
from pathlib import Path

import pytest
import torch

import attnscope.analysis.patterns
from attnscope.analysis.attention import Tensors
from attnscope.analysis.cost import attention_cost, cost_frame
from attnscope.analysis.patterns import (
    PATTERNS,
    SVD,
    BigBird,
    Full,
    Global,
    Linformer,
    Pattern,
    SparsePattern,
    TopK,
    Window,
    check_pattern,
    parse_pattern,
    pattern_allowed,
    pattern_weights,
    register,
    sweep_values,
)

ROOT = Path(__file__).resolve().parents[2]
N, HEADS = 12, 4


class FakeForm:
    """A page that answers every widget with its first value, ticks every box and picks option ``pick``."""

    def __init__(self, pick: int = 0, text: str = "0+5"):
        self.pick, self.text_value, self.asked = pick, text, []

    def number(self, ask, low, high, start, *, key):
        assert low <= start <= high, (ask, low, start, high)
        self.asked.append(key)
        return start

    def flag(self, ask, *, key):
        self.asked.append(key)
        return True

    def choice(self, ask, options, *, key, buttons=False):
        self.asked.append(key)
        return options[min(self.pick, len(options) - 1)]

    def text(self, ask, start, *, key):
        self.asked.append(key)
        return self.text_value


def examples(kind: type[Pattern]) -> list[Pattern]:
    """Every distinct pattern the page's form makes for ``kind`` (one per option of its choices)."""
    made = []
    for pick in range(4):
        pattern = kind.from_form(FakeForm(pick), N, HEADS)
        if pattern not in made:
            made.append(pattern)
    return made


EXAMPLES = [pattern for kind in PATTERNS.values() for pattern in examples(kind)]


def test_the_registry_holds_the_sixteen_patterns_in_order():
    assert list(PATTERNS) == [
        "full",
        "window",
        "dilated",
        "strided",
        "fixed",
        "global",
        "bigbird",
        "block",
        "recurrence",
        "svd",
        "linformer",
        "performer",
        "linear",
        "topk",
        "kv",
        "scale",
    ]
    assert all(issubclass(kind, Pattern) and kind.name == name for name, kind in PATTERNS.items())
    assert {type(p) for p in EXAMPLES} == set(PATTERNS.values())
    assert len([p for p in EXAMPLES if isinstance(p, Global)]) == 3  # first G, special tokens, chosen positions


@pytest.mark.parametrize("pattern", EXAMPLES, ids=str)
def test_every_registered_pattern_round_trips_text_object_label(pattern):
    text = pattern.label
    again = parse_pattern(text)
    assert again == pattern and type(again) is type(pattern)
    assert again.label == text == str(pattern)
    assert parse_pattern(text.upper()) == pattern  # names are case-blind
    check_pattern(pattern, N, HEADS)


@pytest.mark.parametrize("pattern", EXAMPLES, ids=str)
def test_each_patterns_sweep_values_parse_back_and_are_valid(pattern):
    values = sweep_values(pattern, N, HEADS)
    assert values
    if pattern.sweep_parameter is None:
        assert values == [pattern]
        return
    swept = [getattr(v, pattern.sweep_parameter) for v in values]
    assert swept == sorted(swept) and len(set(swept)) == len(swept)
    for value in values:
        assert parse_pattern(value.label) == value
        check_pattern(value, N, HEADS)
        unchanged = {f.name for f in dataclasses.fields(value)} - {pattern.sweep_parameter}
        assert all(getattr(value, name) == getattr(pattern, name) for name in unchanged)


@pytest.mark.parametrize("pattern", EXAMPLES, ids=str)
def test_every_pattern_gives_a_map_and_a_cost(pattern):
    g = torch.Generator().manual_seed(0)
    query, key = torch.randn(1, HEADS, N, 8, generator=g), torch.randn(1, 2, N, 8, generator=g)
    special = torch.zeros(N, dtype=torch.bool)
    special[0] = True
    weights = pattern_weights(pattern, Tensors(query, key, "causal", 8**-0.5), batch=0, special=special)  # [H, n, n]
    torch.testing.assert_close(weights.sum(-1), torch.ones(HEADS, N), atol=1e-5, rtol=0)
    assert float(weights.triu(1).abs().max()) == 0.0  # the model's causal mask holds
    flops, memory, how = attention_cost(pattern, 4096, 64)
    assert flops > 0 and memory > 0 and how
    assert cost_frame(pattern, 64, 9, 30)["method"].tolist()[-1] == pattern.label
    if pattern.is_sparse:
        kept = pattern_allowed(pattern, N, N, special=special)
        assert kept.diagonal().all()  # every query keeps its own position
    else:
        with pytest.raises(ValueError, match="not a sparse pattern"):
            pattern_allowed(pattern, N, N)


def test_an_unknown_name_is_one_error_listing_the_registered_names(monkeypatch):
    with pytest.raises(ValueError) as caught:
        parse_pattern("nosuch:3")
    message = str(caught.value)
    assert "\n" not in message and "unknown pattern 'nosuch'" in message
    assert re.search(r"use one of (.*) \(", message).group(1).split(", ") == list(PATTERNS)
    # generated from the registry: a newly registered name is listed too
    monkeypatch.setattr(attnscope.analysis.patterns, "PATTERNS", dict(PATTERNS))
    monkeypatch.setattr(attnscope.analysis.patterns, "_ALIASES", dict(attnscope.analysis.patterns._ALIASES))

    @register
    @dataclasses.dataclass(frozen=True)
    class Nothing(Full):
        name = "nothing"

    with pytest.raises(ValueError, match=r"use one of full, .*, kv, scale, nothing \(e\.g"):
        parse_pattern("nosuch")
    assert parse_pattern("nothing") == Nothing()


@pytest.mark.parametrize(
    "text, needle",
    [
        ("svd:3,4", "takes at most 1 parameter"),
        ("window:3,causal,7", "takes at most 2"),
        ("full:1", "no parameters"),
        ("bigbird:1,2", "needs 3 number"),
        ("global:1+x,2", r"positions like 0\+5\+9"),
        ("topk:two", "whole numbers"),
    ],
)
def test_malformed_parameters_say_the_syntax(text, needle):
    with pytest.raises(ValueError, match=needle):
        parse_pattern(text)


def test_aliases_and_the_same_text_syntax_as_before():
    assert parse_pattern("sliding:4") == Window(4)
    assert parse_pattern("window:4,left") == parse_pattern("window:4,causal") == Window(4, causal=True)
    assert parse_pattern("window:4,centered") == Window(4)
    assert parse_pattern("top-k:3") == TopK(3) and parse_pattern("lowrank:2") == SVD(2)
    assert parse_pattern("gqa:1").label == "kv:1" and parse_pattern("favor:16,3").label == "performer:16,3"
    assert parse_pattern("elu").label == "linear"
    assert parse_pattern("global:special,2") == Global(2, special=True)
    assert parse_pattern("global:5+,2") == Global(2, positions=(5,))  # one chosen position, not a count of 5
    assert Global(2, positions=(5,)).label == "global:5+,2" and Global(2, first=5).label == "global:5,2"
    assert parse_pattern("bigbird:4,2,3") == BigBird(4, 2, 3) and BigBird(4, 2, 3, seed=7).label == "bigbird:4,2,3,7"


def test_each_pattern_has_its_own_named_parameters():
    assert [f.name for f in dataclasses.fields(TopK)] == ["k"]
    assert [f.name for f in dataclasses.fields(SVD)] == ["rank"]
    assert [f.name for f in dataclasses.fields(Linformer)] == ["rows"]
    fields = {name: [f.name for f in dataclasses.fields(kind)] for name, kind in PATTERNS.items()}
    assert fields["window"] == ["width", "causal"] and fields["kv"] == ["groups"] and fields["performer"] == ["features", "seed"]
    # no field means two things: a name shared by two patterns is the same parameter (window reach, first tokens, seed)
    shared = {f for names in fields.values() for f in names if sum(f in other for other in fields.values()) > 1}
    assert shared == {"width", "first", "seed"}
    with pytest.raises(ValueError, match="one kind of global token"):
        Global(2, first=1, special=True)


def test_the_form_asks_each_pattern_for_its_own_parameters():
    form = FakeForm()
    assert Window.from_form(form, N, HEADS) == Window(4, causal=True) and form.asked == ["width", "causal"]
    assert PATTERNS["kv"].from_form(FakeForm(pick=1), N, 9).groups == 3  # divisors of 9 heads: 1, 3, 9
    positions = FakeForm(pick=2, text="0+400")
    made = Global.from_form(positions, N, HEADS)
    assert made == Global(2, positions=(0, 400)) and positions.asked == ["global_kind", "width", "positions"]
    with pytest.raises(ValueError, match="global positions must lie in 0..11"):
        check_pattern(made, N, HEADS)
    assert Window.from_form(FakeForm(), 2, HEADS).width == 2  # widgets' first values fit a short text


def test_register_refuses_what_would_break_the_registry(monkeypatch):
    monkeypatch.setattr(attnscope.analysis.patterns, "PATTERNS", dict(PATTERNS))
    monkeypatch.setattr(attnscope.analysis.patterns, "_ALIASES", dict(attnscope.analysis.patterns._ALIASES))
    with pytest.raises(TypeError, match="taken by Window"):
        register(dataclasses.dataclass(frozen=True)(type("Again", (Full,), {"name": "sliding"})))
    with pytest.raises(TypeError, match="frozen dataclass"):
        register(type("Loose", (Full,), {"name": "loose", "__annotations__": {"x": "int"}, "x": 1}))
    with pytest.raises(TypeError, match="sweep_parameter 'size'"):
        register(dataclasses.dataclass(frozen=True)(type("Odd", (Full,), {"name": "odd", "sweep_parameter": "size"})))


def _docstring_example() -> str:
    doc = attnscope.analysis.patterns.__doc__
    block = doc[doc.index("For example") :].split("::\n", 1)[1]
    lines = []
    for line in block.splitlines():
        if line.strip() and not line.startswith("    "):
            break
        lines.append(line)
    return textwrap.dedent("\n".join(lines))


def test_adding_a_pattern_is_one_class_the_docstrings_example_runs_everywhere(monkeypatch):
    monkeypatch.setattr(attnscope.analysis.patterns, "PATTERNS", dict(PATTERNS))
    monkeypatch.setattr(attnscope.analysis.patterns, "_ALIASES", dict(attnscope.analysis.patterns._ALIASES))
    namespace = dict(vars(attnscope.analysis.patterns))
    exec(compile(_docstring_example(), "analysis.patterns docstring", "exec"), namespace)  # our own docstring's code
    sink = namespace["Sink"]
    assert attnscope.analysis.patterns.PATTERNS["sink"] is sink and issubclass(sink, SparsePattern)
    pattern = parse_pattern("sink:3")
    assert pattern == sink(3) and pattern.label == "sink:3"
    check_pattern(pattern, N, HEADS)
    with pytest.raises(ValueError, match="width 0 must be at least 1"):
        check_pattern(sink(0), N, HEADS)
    kept = pattern_allowed(pattern, N, N)
    assert kept[:, 0].all() and not kept[N - 1, N - 4]  # the first token for everyone, the window around the query
    query, key = torch.randn(1, HEADS, N, 8), torch.randn(1, 2, N, 8)
    weights = pattern_weights(pattern, Tensors(query, key, "causal", 8**-0.5), batch=0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(HEADS, N), atol=1e-5, rtol=0)
    assert [p.width for p in sweep_values(pattern, N, HEADS)] == [1, 2, 4, 8, 12]
    assert cost_frame(pattern, 64, 9, 30)["method"].iloc[-1] == "sink:3"
    assert sink.from_form(FakeForm(), N, HEADS) == sink(4)
    with pytest.raises(ValueError, match="use one of .*, kv, scale, sink"):
        parse_pattern("nosuch")


def test_nothing_outside_the_registry_branches_on_a_patterns_name():
    """The 8 if-chains (parse, label, check, allowed, weights, cost, sweep, the page's strings) live in the classes."""
    dispatch = re.compile(r"\b(p|pattern|value)\.name\s*(==|!=|in\b)|SWEEP_PARAMETER|PATTERNS\[[^\]]+\]\[\d\]")
    for path in ("analysis/patterns.py", "analysis/cost.py", "models/lab.py", "ui/lab.py", "viz/lab.py", "cli.py", "bench/lab.py"):
        source = (ROOT / path).read_text(encoding="utf-8")
        assert not dispatch.search(source), f"{path}: {dispatch.search(source).group(0)}"
    page = (ROOT / "ui/lab.py").read_text(encoding="utf-8")
    assert "parse_pattern" not in page and not re.search(r'f"(\w+|\{\w+\}):\{', page)  # the page builds objects, not text


def test_the_docs_name_every_registered_pattern(capsys):
    from attnscope import cli

    with pytest.raises(SystemExit):
        cli.main(["lab", "--help"])
    help_text = capsys.readouterr().out
    doc = (ROOT / "docs" / "lab.md").read_text(encoding="utf-8")
    table = doc[doc.index("| pattern (`name:params`)") :].split("\n\n", 1)[0]
    for name in PATTERNS:
        assert re.search(rf"\b{name}\b", help_text), f"the CLI's --pattern help does not mention {name}"
        assert f"`{name}" in table, f"docs/lab.md's table has no row for {name}"
