"""The shape of the code: no import cycle inside a package, a record that is data, a pinned public API."""

from __future__ import annotations

import ast
import dataclasses

import pytest
import torch

from tests.conftest import ROOT

PACKAGES = ("models", "analysis", "viz", "corpus", "ui", "cli", "bench")


def _type_checking_only(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imports_of(path, package: str) -> set[str]:
    """The modules of ``package`` that ``path`` imports anywhere (function bodies too; TYPE_CHECKING blocks not)."""
    found: set[str] = set()
    package = package if package == "bench" else f"attnscope.{package}"  # bench/ is the checkout's, not installed
    depth = package.count(".") + 1

    def visit(node: ast.AST) -> None:
        if _type_checking_only(node):
            return
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[depth] for alias in node.names if alias.name.startswith(f"{package}."))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.startswith(f"{package}."):
                found.add(node.module.split(".")[depth])
            elif node.module == package:  # from models import hook
                found.update(alias.name for alias in node.names if (path.parent / f"{alias.name}.py").exists())
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return found - {path.stem}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph.get(node, ()):
            if other not in index:
                connect(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycle_inside_a_package(package):
    directory = ROOT / package
    graph = {path.stem: imports_of(path, package) for path in directory.glob("*.py") if path.stem != "__init__"}
    assert graph, f"no modules found in {package}/"
    assert cycles(graph) == [], f"import cycles in {package}/ (function-level imports count)"


def held_objects(value, seen=None):
    """Every object reachable from a record through dataclass fields, lists, tuples and dicts."""
    seen = set() if seen is None else seen
    if id(value) in seen:
        return
    seen.add(id(value))
    yield value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        children = [getattr(value, f.name) for f in dataclasses.fields(value)]
    elif isinstance(value, dict):
        children = [*value.keys(), *value.values()]
    elif isinstance(value, (list, tuple, set, frozenset)):
        children = list(value)
    else:
        children = []
    for child in children:
        yield from held_objects(child, seen)


def _is_model_or_tokenizer(value) -> bool:
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerBase

    return isinstance(value, (torch.nn.Module, PreTrainedTokenizerBase, Tokenizer))


def test_the_walker_sees_a_module_inside_a_record(tiny_factory):
    from attnscope.models import run

    lm = tiny_factory("gpt2")
    rec = dataclasses.replace(run(lm, "a b c"), inputs={"head": lm.model.lm_head})
    assert any(_is_model_or_tokenizer(v) for v in held_objects(rec))


@pytest.mark.parametrize("how", ["encoder", "decoder", "values", "generation"])
def test_a_record_keeps_no_module_or_tokenizer(tiny_factory, how):
    from attnscope.models import generate, run

    lm = tiny_factory("bert" if how == "encoder" else "gpt2")
    if how == "generation":
        rec = generate(lm, "The mouse ran", max_new_tokens=3, stop_at_eos=False)
    else:
        rec = run(lm, ["The mouse ran.", "A cat."], values=how == "values")
    held = [type(v).__name__ for v in held_objects(rec) if _is_model_or_tokenizer(v)]
    assert held == []
    if how != "encoder":  # readouts take the model explicitly
        assert rec.logits(lm).shape == (len(rec.tokens[0]), lm.model.config.vocab_size)


PUBLIC = {
    "models": {"BUNDLED", "ForwardRecord", "LoadedModel", "ModelSpec", "from_model", "generate", "load", "run", "tokenize"},
}


def test_the_public_api_is_pinned():
    from attnscope import models

    assert set(models.__all__) == PUBLIC["models"]
    for name in models.__all__:
        assert getattr(models, name) is not None
    from attnscope.models import generate, load, run  # noqa: F401  (the README's first line)


@pytest.mark.parametrize("package", ["models", "analysis", "viz", "corpus", "ui", "cli"])
def test_every_package_declares_what_it_exports(package):
    import importlib

    module = importlib.import_module(f"attnscope.{package}")
    assert isinstance(getattr(module, "__all__", None), list), f"{package}/__init__.py has no __all__"
    for name in module.__all__:
        is_module = (ROOT / package / f"{name}.py").exists()
        assert is_module or hasattr(module, name), f"{package}.__all__ names {name}, which it does not define"


def test_recorded_layers_and_attention_calls_are_layer_tensors():
    """``analysis`` reads a layer through ``LayerTensors``; the hook's two views of a layer fit it as they are."""
    from attnscope.analysis.attention import LayerTensors, Tensors
    from attnscope.models.hook import AttentionCall, LayerRecord

    members = {name for name, value in vars(LayerTensors).items() if isinstance(value, property)}
    assert members == {"query", "key", "mask", "scaling", "softcap", "sinks"}
    for cls in (LayerRecord, AttentionCall, Tensors):
        assert members <= {f.name for f in dataclasses.fields(cls)}, cls.__name__


def test_the_record_module_holds_the_record_only():
    """models/record.py: the record and its stack readers, no tokenizing or forward pass; no method takes a kind."""
    tree = ast.parse((ROOT / "models" / "record.py").read_text(encoding="utf-8"))
    classes = {node.name for node in tree.body if isinstance(node, ast.ClassDef)}
    functions = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    assert classes == {"ForwardRecord", "AttentionStack"} and functions == set()
    assert not {"forward", "loaded", "loading", "encoding", "limits", "verify"} & imports_of(ROOT / "models" / "record.py", "models")
    takes_kind = [
        f"{cls.name}.{fn.name}"
        for cls in tree.body
        if isinstance(cls, ast.ClassDef)
        for fn in cls.body
        if isinstance(fn, ast.FunctionDef) and "kind" in {a.arg for a in [*fn.args.args, *fn.args.kwonlyargs]}
    ]
    assert takes_kind == []
