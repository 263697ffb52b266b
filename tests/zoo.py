"""Tiny random-initialised models of every text architecture transformers registers for causal or
masked language modelling, for the "any model" test (``tests/integration/test_zoo.py``).

Configs are the architecture's own defaults with the sizes shrunk through the standard names
(``attribute_map`` translates them for GPT-2-style configs); sliding windows are shrunk below the
probe's length so a dropped window would show.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_MASKED_LM_MAPPING_NAMES

VOCAB = 49152  # the bundled BPE tokenizer's size: every id it produces is in range
HIDDEN, HEADS, KV_HEADS, LAYERS = 64, 4, 2, 4  # 4 layers: hybrids keep at least one attention block
MAX_PARAMS = 20_000_000
WINDOW = 4  # shorter than the probe text, so a sliding window changes the map

SHRINK = {
    "num_hidden_layers": LAYERS,
    "hidden_size": HIDDEN,
    "num_attention_heads": HEADS,
    "intermediate_size": 2 * HIDDEN,
    "vocab_size": VOCAB,
    "max_position_embeddings": 512,
    "head_dim": HIDDEN // HEADS,
    "num_key_value_heads": KV_HEADS,
    "num_local_experts": 4,
    "num_experts": 4,
    "num_experts_per_tok": 2,
    "moe_intermediate_size": HIDDEN,
    "shared_expert_intermediate_size": HIDDEN,
    "n_routed_experts": 4,
    "n_shared_experts": 1,
    "first_k_dense_replace": 1,
    "kv_lora_rank": 16,
    "q_lora_rank": 16,
    "qk_rope_head_dim": 8,
    "qk_nope_head_dim": 8,
    "v_head_dim": 16,
    "sliding_window": WINDOW,
    "embedding_size": HIDDEN,
    "d_model": HIDDEN,
    "d_ff": 2 * HIDDEN,
    "d_kv": HIDDEN // HEADS,
    "num_layers": LAYERS,
    "num_decoder_layers": LAYERS,
    "num_heads": HEADS,
    "encoder_layers": LAYERS,
    "decoder_layers": LAYERS,
    "encoder_attention_heads": HEADS,
    "decoder_attention_heads": HEADS,
    "encoder_ffn_dim": 2 * HIDDEN,
    "decoder_ffn_dim": 2 * HIDDEN,
    "type_vocab_size": 2,
    "pad_token_id": 0,
    # hybrids: put an attention block among the tiny model's layers
    "attn_layer_indices": [1],
    "attn_layer_period": 2,
    "attn_layer_offset": 1,
    "layer_group_size": 2,
    # layers with their own head counts (sliding-window layers): shrunk alike, as their defaults are alike
    "swa_num_attention_heads": HEADS,
    "swa_num_key_value_heads": KV_HEADS,
    "swa_head_dim": HIDDEN // HEADS,
    "rotary_dim": HIDDEN // HEADS,  # partial rotary (GPT-J, CodeGen): no wider than a head
    "n_group": 1,
    "topk_group": 1,  # grouped expert routing over the 4 tiny experts
}
# Per-architecture overrides where the defaults place no softmax attention among the tiny model's layers
# (their tests in transformers set layer types the same way).
OVERRIDES = {
    "granitemoehybrid": {"layer_types": ["linear_attention", "attention", "linear_attention", "attention"]},
    "kimi_linear": {
        "layer_types": ["linear_attention", "full_attention", "linear_attention", "full_attention"],
    },
}


def architectures() -> list[str]:
    """Every model type in the installed transformers' causal-LM and masked-LM mappings, sorted."""
    return sorted(set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES) | set(MODEL_FOR_MASKED_LM_MAPPING_NAMES))


def tiny_config(model_type: str):
    """The architecture's default config with sizes shrunk; raises when the class rejects them."""
    cls = CONFIG_MAPPING[model_type]
    defaults = cls()
    overrides = {
        k: v
        for k, v in SHRINK.items()
        if (hasattr(defaults, k) or k in getattr(cls, "attribute_map", {})) and not isinstance(getattr(cls, k, None), property)
    }  # a read-only property (Falcon's head_dim) follows from the sizes set
    if getattr(defaults, "attn_layer_indices", 0) is None:  # None there means "no attention layers"
        overrides["attn_layer_indices"] = [1]
    if getattr(defaults, "sliding_window", None) is None:
        overrides.pop("sliding_window", None)  # a model without a window keeps none
    if getattr(defaults, "num_key_value_heads", None) is None:
        overrides.pop("num_key_value_heads", None)  # no grouped-query attention in this architecture
    if getattr(defaults, "kv_lora_rank", None):  # multi-head latent attention: one key per query head
        overrides["num_key_value_heads"] = HEADS
        if "head_dim" in overrides and getattr(defaults, "head_dim", None) == getattr(defaults, "qk_rope_head_dim", 0):
            overrides["head_dim"] = SHRINK["qk_rope_head_dim"]  # there head_dim is the rotary part's width
    overrides.update(OVERRIDES.get(model_type, {}))
    config = cls(**overrides)
    return config


def build(model_type: str, seed: int = 0):
    """(model, kind) with random weights, or raises with the reason it cannot be built tiny."""
    config = tiny_config(model_type)
    torch.manual_seed(seed)
    causal = model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    cls = AutoModelForCausalLM if causal else AutoModelForMaskedLM
    with torch.device("meta"):  # count first: a default left large must not fill the memory
        size = sum(p.numel() for p in cls.from_config(config, attn_implementation="eager").parameters())
    if size > MAX_PARAMS:
        msg = f"{size / 1e6:.0f}M parameters even with shrunk sizes (a default this shrinking does not reach)"
        raise ValueError(msg)
    model = cls.from_config(config, attn_implementation="eager")
    _sharpen(model)
    model.eval()
    with torch.inference_mode():  # a config the shrinking made inconsistent fails here, not in attnscope
        extra = {"use_cache": False} if causal else {}
        out = model(input_ids=torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12]]), output_attentions=True, **extra)
    attentions = getattr(out, "attentions", None) or ()
    if attentions and all(a is None for a in attentions) and not _calls_attention_interface(model):
        msg = f"no attention layer among the first {LAYERS} (its layer pattern places attention further down)"
        raise ValueError(msg)
    return model


def wrap(model_type: str, backend: str = "auto", verify: bool = True):
    """``build`` then ``from_model``, with the tokenizer the architecture reads (WordPiece for ALBERT, MPNet)."""
    from attnscope.models import from_model
    from tests.tiny import bpe_tokenizer, wordpiece_tokenizer

    tokenizer = wordpiece_tokenizer() if model_type in ("albert", "mpnet") else bpe_tokenizer()
    return from_model(build(model_type), tokenizer, name=f"tiny-{model_type}", backend=backend, verify=verify)


def _calls_attention_interface(model) -> bool:
    import sys

    return "ALL_ATTENTION_FUNCTIONS" in vars(sys.modules[type(model).__module__])


def _sharpen(model: torch.nn.Module, std: float = 0.3) -> None:
    """Peaked maps: the default init (std 0.02) gives near-uniform attention, which hides scaling bugs."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim == 2 and re.search(r"(q|k|query|key|qkv|c_attn|Wqkv|in_proj)", name):
                param.normal_(0.0, std)


@dataclass
class Outcome:
    """What ``load`` + ``run`` made of one architecture."""

    model_type: str
    status: str  # "hook" | "materialised" | "refused" | "not buildable" | "WRONG"
    detail: str = ""
    max_abs_diff: float | None = None
    seconds: float = 0.0
    layout: str = ""  # ``ModelLayout.summary()`` of a loaded model
    layout_problem: str = ""  # what is wrong with its layout (``layout_problem``), "" when nothing


TEXTS = ["The mouse ate the cheese in the kitchen, then the mouse slept.", "Click the mouse."]


class Shelf:
    """Each architecture built tiny at most once and saved under ``root`` with ``tokenizer``, for every test of a
    session that needs it (building with random initialisation costs about ten times reopening the saved copy)."""

    def __init__(self, root, tokenizer) -> None:
        self.root, self.tokenizer = Path(root), tokenizer
        self._failed: dict[str, Exception] = {}

    def directory(self, model_type: str) -> str:
        """The saved copy of ``build(model_type)``; raises what ``build`` raised when it cannot be built tiny."""
        if model_type in self._failed:
            raise self._failed[model_type]
        directory = self.root / model_type
        if not (directory / "config.json").exists():
            try:
                model = build(model_type)
            except Exception as exc:
                self._failed[model_type] = exc
                raise
            model.save_pretrained(directory, safe_serialization=True)
            self.tokenizer.save_pretrained(directory)
        return str(directory)

    def model(self, model_type: str):
        """``build(model_type)`` again, reopened from its saved copy (eager attention, eval mode)."""
        cls = AutoModelForCausalLM if model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES else AutoModelForMaskedLM
        return cls.from_pretrained(self.directory(model_type), attn_implementation="eager").eval()


def check(model_type: str, shelf: Shelf) -> Outcome:
    """Build (or take from ``shelf``), ``load`` and ``run`` one architecture; compare every head with eager on a
    padded batch."""
    import time

    import numpy as np

    from attnscope.models import load, run
    from attnscope.models.eager import EAGER_RETURNS_SCORES, LOCAL_BAND
    from tests.parity import eager_reference, softmax_module_outputs, strip

    start = time.perf_counter()

    layout = problem = ""

    def done(status, detail="", diff=None):
        return Outcome(model_type, status, detail, diff, round(time.perf_counter() - start, 2), layout, problem)

    try:
        directory = shelf.directory(model_type)
    except Exception as exc:  # noqa: BLE001 - any failure to build tiny is reported with its reason
        return done("not buildable", _one_line(exc))
    try:
        lm = load(directory, device="cpu")
    except ValueError as exc:
        status = "no attention" if "there are no attention maps to show" in str(exc) else "refused"
        return done(status, _one_line(exc))
    layout, problem = lm.layout.summary(), layout_problem(lm.layout)
    try:
        rec = run(lm, TEXTS, padding_side="right")
    except ValueError as exc:
        return done("refused", "at run: " + _one_line(exc))
    reference, _ = eager_reference(lm, rec)
    if model_type in EAGER_RETURNS_SCORES:  # its output_attentions are pre-softmax scores: read the softmax itself
        reference = softmax_module_outputs(lm, rec)
    if model_type in LOCAL_BAND:  # a band [B, H, n, 2w+1] per the model's docs: key i - w + c in column c
        reference = [_band_reference(a) for a in reference]
    if len(reference) != lm.spec.n_layers:  # only the attention layers' maps, in order
        reference = dict(zip(rec.attention_layers, [a for a in reference if a is not None]))
    worst = 0.0
    for batch in range(len(TEXTS)):
        for layer in rec.attention_layers:
            expected = strip(reference[layer], rec, batch)
            for head in range(lm.spec.n_heads):
                worst = max(worst, float(np.abs(rec.attention(layer, head, batch=batch) - expected[head]).max()))
    if worst > 1e-4:
        return done("WRONG", f"max |Δ| {worst:.1e} against eager ({lm.spec.recording})", worst)
    return done(lm.spec.recording, lm.spec.backend, worst)


def layout_problem(layout) -> str:
    """What is wrong with a loaded model's layout, "" when nothing: the norm placement measured at load, every block
    found, each unknown fact with a one-line reason, and a block whose norms' names say Post-LN measured as Post-LN."""
    if layout.norms is None and "placement" not in layout.unknown:
        return "the norm placement was not measured at load, and no reason given"
    if not layout.blocks and "blocks" not in layout.unknown:
        return "no attention block found, and no reason given"
    for fact, why in layout.unknown.items():
        if not why or "\n" in why or len(why) > 400:
            return f"the reason for {fact} is not one line: {why!r}"
    named = {facts.placement for facts in layout.block_facts.values()}
    if named == {"post"} and layout.norms.placement != "post":
        return f"the blocks' norm names say Post-LN, the hidden states say {layout.norms.placement}: {layout.norms.evidence}"
    return ""


def _band_reference(band):
    """Full maps from a local band, written out entry by entry (independent of ``models.verify.band_to_full``)."""
    import numpy as np

    batch, heads, n, cols = band.shape
    w = (cols - 1) // 2
    full = np.zeros((batch, heads, n, n), dtype=band.dtype)
    for i in range(n):
        for c in range(cols):
            j = i - w + c
            if 0 <= j < n:
                full[:, :, i, j] = band[:, :, i, c]
    return full


def _one_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def tally_markdown(outcomes: list[Outcome]) -> str:
    """The table in docs/models.md: counts per outcome, then each refusal and each architecture not built tiny."""
    import collections

    import transformers

    counts = collections.Counter(o.status for o in outcomes)
    buildable = len(outcomes) - counts["not buildable"]
    with_attention = buildable - counts["no attention"]
    exact = counts["hook"] + counts["materialised"]
    lines = [
        f"transformers {transformers.__version__}: {len(outcomes)} architectures in the causal-LM and masked-LM mappings.",
        "",
        "| outcome | count |",
        "|---|---|",
        f"| exact through the hook | {counts['hook']} |",
        f"| exact through the fallback (materialised eager weights) | {counts['materialised']} |",
        f"| refused, with the reason | {counts['refused']} |",
        f"| no attention at all (state-space, recurrent, Fourier mixing): nothing to map, said in one line | {counts['no attention']} |",
        f"| not buildable tiny from the defaults | {counts['not buildable']} |",
        f"| **silently wrong** | **{counts['WRONG']}** |",
        "",
        f"Exact: {exact} of the {with_attention} buildable models that have attention ({exact / max(with_attention, 1):.1%}); "
        f"{exact} of all {buildable} buildable ({exact / max(buildable, 1):.1%}).",
        "",
        "Refused:",
        "",
    ]
    lines += [f"- `{o.model_type}`: {o.detail.removeprefix('ValueError: ')}" for o in outcomes if o.status == "refused"]
    lines += ["", "No attention:", ""]
    lines += [f"- `{o.model_type}`: {o.detail.removeprefix('ValueError: ')}" for o in outcomes if o.status == "no attention"]
    lines += ["", "Not buildable tiny (the generic shrinking of the defaults does not fit them):", ""]
    lines += [f"- `{o.model_type}`: {o.detail[:140]}" for o in outcomes if o.status == "not buildable"]
    return "\n".join(lines)


DOC_START, DOC_END = "<!-- zoo table -->", "<!-- /zoo table -->"


def replace_table(doc: str, table: str) -> str:
    """``doc`` with the text between the zoo-table markers replaced by ``table``."""
    head, start, rest = doc.partition(DOC_START)
    _, end, tail = rest.partition(DOC_END)
    if not start or not end:
        msg = f"the markers {DOC_START} and {DOC_END} are not both in the document"
        raise ValueError(msg)
    return f"{head}{DOC_START}\n{table}\n{DOC_END}{tail}"


if __name__ == "__main__":
    # python -m tests.zoo           print the table
    # python -m tests.zoo --docs    also rewrite it in docs/models.md, between the markers
    import os
    import sys
    import tempfile
    from pathlib import Path

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from attnscope.models.loaded import quiet_transformers
    from tests.tiny import bpe_tokenizer

    quiet_transformers()
    with tempfile.TemporaryDirectory() as workdir:
        shelf = Shelf(workdir, bpe_tokenizer())
        table = tally_markdown([check(t, shelf) for t in architectures()])
    print(table)
    if "--docs" in sys.argv[1:]:
        doc = Path(__file__).resolve().parents[1] / "docs" / "models.md"
        doc.write_text(replace_table(doc.read_text(encoding="utf-8"), table), encoding="utf-8")
        print(f"rewrote the table in {doc.name}", file=sys.stderr)
