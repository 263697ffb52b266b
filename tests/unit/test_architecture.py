"""``ModelLayout``: the architecture facts read once at load, and that nothing else reads module names.

References: each tiny config's own sizes and epsilons, the modules as transformers builds them (the test names them
itself), and the refusals features gave before the layout existed (their messages are the layout's reasons).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from attnscope.models import from_model
from attnscope.models.architecture import ModelLayout, attention_stack, block_index, is_rms_norm, read_layout
from attnscope.models.contributions import block_layout, mixing_maps
from tests import tiny, zoo
from tests.conftest import ROOT

EPS = {
    "gpt2": lambda c: c.layer_norm_epsilon,
    "gpt_neox": lambda c: c.layer_norm_eps,
    "llama_gqa": lambda c: c.rms_norm_eps,
    "qwen2": lambda c: c.rms_norm_eps,
    "bert": lambda c: c.layer_norm_eps,
    "roberta": lambda c: c.layer_norm_eps,
    "distilbert": lambda c: 1e-12,  # DistilBERT's norms are built with eps=1e-12 (not in its config)
}
# Where transformers puts each tiny model's parts (written out here, not read from attnscope).
FINAL_NORM = {"gpt2": "transformer.ln_f", "gpt_neox": "gpt_neox.final_layer_norm", "llama_gqa": "model.norm", "qwen2": "model.norm"}
BLOCK = {
    "gpt2": "transformer.h.{}",
    "gpt_neox": "gpt_neox.layers.{}",
    "llama_gqa": "model.layers.{}",
    "qwen2": "model.layers.{}",
    "bert": "encoder.layer.{}",
    "roberta": "encoder.layer.{}",
    "distilbert": "transformer.layer.{}",
}


@pytest.fixture(scope="module", params=tiny.ARCHS)
def lm(request):
    return tiny.build(request.param)


def test_every_fact_is_where_transformers_put_it(lm):
    arch = lm.spec.name.removeprefix("tiny-")
    layout, config = lm.layout, lm.model.config
    assert isinstance(layout, ModelLayout)
    assert layout.blocks == {BLOCK[arch].format(i): i for i in range(lm.spec.n_layers)}
    assert layout.stacks == (tuple(BLOCK[arch].format(i) for i in range(lm.spec.n_layers)),)
    expected = "post" if arch in tiny.ENCODERS else "pre"
    assert layout.placement == expected == layout.norms.placement
    for facts in layout.block_facts.values():
        assert facts.placement == expected and not facts.norm_reason and not facts.mlp_reason
        assert facts.mlp.layout == ("Post-LN" if expected == "post" else "parallel" if arch == "gpt_neox" else "Pre-LN")
        for norm in [facts.attention_norm, facts.mlp.after]:
            if norm is not None:
                assert norm.eps == pytest.approx(EPS[arch](config)) and lm.module(norm.name) is not None
    if arch in tiny.DECODERS:
        assert layout.final_norm.name == FINAL_NORM[arch] and layout.final_norm.eps == pytest.approx(EPS[arch](config))
        assert lm.module(layout.lm_head) is lm.model.get_output_embeddings()
        assert lm.forward_module() is lm.model.base_model
    else:
        assert layout.final_norm is None and lm.forward_module() is lm.model
    assert layout.declares("input_ids") and layout.accepts("input_ids")
    assert layout.logit_softcap is None and layout.sinks is False and not layout.unknown
    assert str(lm.spec.n_layers) in layout.summary()


def test_the_block_name_readers():
    assert block_index("model.layers.12.self_attn") == 12 and block_index("encoder.layer.3.attention.self") == 3
    assert block_index("attention") is None
    assert attention_stack("encoder.block.0.layer.0.SelfAttention") == "encoder"
    assert attention_stack("decoder.block.1.layer.0.SelfAttention") == "decoder"
    assert attention_stack("decoder.block.1.layer.1.EncDecAttention") == "cross"
    assert attention_stack("model.decoder.layers.0.encoder_attn") == "cross"


def test_a_sandwich_model_is_read_as_one_and_the_refusals_are_the_layouts_reasons():
    """Gemma 2 normalises each sublayer's output: the layout says sandwich, holds its softcaps, and the decomposition
    methods refuse with the layout's own reason."""
    model = zoo.build("gemma2")
    layout = read_layout(model)
    assert {f.placement for f in layout.block_facts.values()} == {"sandwich"}
    assert layout.logit_softcap == model.config.final_logit_softcapping
    assert layout.attention_softcap == model.config.attn_logit_softcapping
    assert "sandwich" in layout.unknown["norms"]
    lm = from_model(model, tiny.bpe_tokenizer(), name="tiny-gemma2")
    assert lm.layout.placement == "sandwich"
    module = next(iter(lm.layout.blocks)) + ".self_attn"
    with pytest.raises(ValueError) as caught:
        block_layout(lm, module)
    assert str(caught.value) == lm.layout.block(module).norm_reason
    with pytest.raises(ValueError, match="sandwich"):
        mixing_maps(lm, "The mouse ran.", "alti")
    logits = torch.tensor([100.0, -3.0])
    assert torch.equal(layout.softcapped(logits), torch.tanh(logits / layout.logit_softcap) * layout.logit_softcap)


def test_an_unknown_mlp_is_a_reason_and_routes_refuse_with_it():
    import dataclasses

    from attnscope.models.routes import routes

    lm = tiny.build("llama_gqa")
    block = lm.model.get_submodule("model.layers.0")
    block.add_module("feed", block._modules.pop("mlp"))  # the MLP under a name the layout does not know
    layout = read_layout(lm.model)
    block.add_module("mlp", block._modules.pop("feed"))
    assert layout.block_facts["model.layers.0"].mlp is None and "MLP" in layout.unknown["mlp"]
    assert layout.block_facts["model.layers.1"].mlp is not None
    other = dataclasses.replace(lm, layout=layout)
    with pytest.raises(ValueError) as caught:
        routes(other, "The mouse ran.")
    assert str(caught.value) == layout.unknown["mlp"]


def test_the_layout_survives_a_deep_copy_of_the_model():
    import copy

    lm = tiny.build("gpt2")
    twin = copy.deepcopy(lm.model)
    assert read_layout(twin).blocks == lm.layout.blocks  # names, not modules: a copy reads the same


# -- nothing else sniffs module names ----------------------------------------------------------------------
SCANNED = ("models", "analysis", "bench")
LAYOUT_MODULE = Path("models/architecture.py")
# Attribute reads that walk or name a model's module tree.
TREE_WALKS = {"named_modules", "named_children", "base_model", "get_submodule"}
# Attributes that name a place in one architecture's module tree (``model.layers``, ``transformer.h``).
TREE_PARTS = {"layers", "layer", "h", "block", "blocks", "encoder", "decoder", "transformer", "model", "self_attn", "mlp"}
# Strings that are module names (or parts of them) when matched against a model's modules.
MODULE_WORDS = ("attn", "attention", "layernorm", "layer_norm", "ln_f", "ln_1", "ln_2", "o_proj", "c_proj", "out_proj", "mlp", "norm")
# A layout's names -> their modules: LoadedModel.module, and the block hooks put on the layout's blocks at load.
ALLOWED = {("models/loaded.py", "module"), ("models/hook.py", "install_block_hooks")}


def _sniffs(tree: ast.AST, path: str) -> list[str]:
    found = []
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}

    def function_of(node):
        while node in parents:
            node = parents[node]
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                return node.name
        return None

    for node in ast.walk(tree):
        where = f"{path}:{getattr(node, 'lineno', '?')}"
        if (path, function_of(node)) in ALLOWED:
            continue
        if isinstance(node, ast.Attribute) and node.attr in TREE_WALKS:
            found.append(f"{where} .{node.attr}")
        if (
            isinstance(node, ast.Attribute)
            and node.attr in TREE_PARTS
            and isinstance(node.value, ast.Attribute)
            and node.value.attr in TREE_PARTS | {"model"}
        ):
            found.append(f"{where} .{node.value.attr}.{node.attr}")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr") and len(node.args) > 1:
            name = node.args[1]
            if isinstance(name, ast.Constant) and isinstance(name.value, str) and name.value in TREE_PARTS | TREE_WALKS:
                found.append(f"{where} {node.func.id}(..., {name.value!r})")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("compile", "search", "match"):
            pattern = node.args[0] if node.args else None
            if isinstance(pattern, ast.Constant) and isinstance(pattern.value, str):
                text = pattern.value.lower()
                if any(word in text for word in MODULE_WORDS) or r"\.\d" in text or r"\.(\d" in text:
                    found.append(f"{where} a regex over module names")
        if isinstance(node, ast.Attribute) and node.attr == "__name__" and isinstance(node.value, ast.Call):
            call = node.value
            if isinstance(call.func, ast.Name) and call.func.id == "type" and isinstance(parents.get(node), (ast.Compare, ast.Attribute)):
                found.append(f"{where} a class name read")
    return found


def test_no_module_outside_the_layout_reads_module_names():
    """``models/``, ``analysis/`` and ``bench/`` ask ``lm.layout``; only ``models/architecture.py`` reads the module
    tree by name (regexes over names, ``named_modules()``, ``.model.layers``, ``base_model``, class names)."""
    found = []
    for package in SCANNED:
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT)
            if relative == LAYOUT_MODULE:
                continue
            found += _sniffs(ast.parse(path.read_text(encoding="utf-8")), relative.as_posix())
    assert not found, "read the layout (lm.layout) instead:\n" + "\n".join(found)


def test_the_scan_sees_each_kind_of_sniffing():
    snippets = [
        "base = lm.model.base_model",
        "for name, m in model.named_modules(): pass",
        "blocks = lm.model.model.layers",
        "_B = re.compile(r'^(.*?\\.\\d+)(?:\\.|$)')",
        "norm = getattr(base, 'model', None)",
        "if 'norm' in type(m).__name__.lower(): pass",
    ]
    for snippet in snippets:
        assert _sniffs(ast.parse(snippet), "x.py"), snippet
    assert not _sniffs(ast.parse("lm.layout.blocks; lm.forward_module(); re.compile(r'(?<!\\w)word')"), "x.py")


def test_rms_norms_are_told_apart_by_what_they_compute():
    t5 = tiny.tiny_t5()
    norm = t5.model.encoder.block[0].layer[0].layer_norm  # T5LayerNorm: an RMSNorm without "RMS" in its name
    assert "RMS" not in type(norm).__name__ and is_rms_norm(norm)
    ordinary = torch.nn.LayerNorm(16)
    with torch.no_grad():
        ordinary.weight.uniform_(0.5, 1.5)
        ordinary.bias.uniform_(-0.5, 0.5)
    before = {k: v.clone() for k, v in ordinary.state_dict().items()}
    assert not is_rms_norm(ordinary) and is_rms_norm(torch.nn.RMSNorm(16))

    class Renamed(torch.nn.LayerNorm):  # what it computes decides, not its name
        pass

    Renamed.__name__ = "RMSLikeLayerNorm"
    assert not is_rms_norm(Renamed(16))
    assert all(torch.equal(before[k], v) for k, v in ordinary.state_dict().items())  # read, not written
    assert t5.layout.encoder_final_norm.rms and t5.layout.decoder_final_norm.rms
    gpt2 = tiny.build("gpt2")
    assert gpt2.layout.final_norm is not None and not gpt2.layout.final_norm.rms
