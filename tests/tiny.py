"""Tiny randomly initialised models built from configs, with the bundled models' tokenizers."""

from __future__ import annotations

import functools

import torch
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    BartConfig,
    BertConfig,
    DistilBertConfig,
    Gemma2Config,
    GemmaConfig,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    MistralConfig,
    Qwen2Config,
    Qwen3Config,
    RobertaConfig,
    T5Config,
    T5EncoderModel,
)

from attnscope.models import from_model
from attnscope.models.loaded import bundled_path

ENCODERS = ("bert", "roberta", "distilbert")
DECODERS = ("gpt2", "gpt_neox", "llama_gqa", "qwen2")
ARCHS = ENCODERS + DECODERS
INIT = 0.3


@functools.cache
def wordpiece_tokenizer():
    directory, _ = bundled_path("minilm")
    return AutoTokenizer.from_pretrained(directory)


@functools.cache
def bpe_tokenizer():
    """SmolLM2's byte-level BPE tokenizer, read from the GGUF file's metadata: the 0.5 GB model is not converted."""
    directory, gguf_file = bundled_path("smollm2")
    return AutoTokenizer.from_pretrained(directory, gguf_file=gguf_file)


# The Llama-like families: (config class, key/value heads when not given).
_LLAMA_LIKE = {
    "llama_gqa": (LlamaConfig, 2),
    "llama_mqa": (LlamaConfig, 1),  # multi-query: one key/value head for all query heads
    "qwen2": (Qwen2Config, 2),
    "qwen3": (Qwen3Config, 2),
    "gemma": (GemmaConfig, 2),
    "gemma2": (Gemma2Config, 2),  # sandwich norms: a norm before and after each sub-block
    "mistral_window": (MistralConfig, 2),  # a sliding window shorter than the texts; its KV cache keeps only the window
}


def config_for(arch: str, layers: int = 2, hidden: int = 32, heads: int = 4, kv_heads: int | None = None, **extra):
    """The tiny config of ``arch``: ``layers`` blocks, width ``hidden``, ``heads`` attention heads (``kv_heads``
    key/value heads where the family shares them), MLP width 2 x ``hidden``; ``extra`` sets or overrides any
    other field of the family's config."""
    # initializer_range 0.3 (not the default 0.02): peaked maps, so a scaling or rotary bug cannot pass at 1e-4
    # (tests/unit/test_parity_tiny.py shows a deliberately wrong scaling failing).
    small = dict(num_hidden_layers=layers, hidden_size=hidden, intermediate_size=2 * hidden, num_attention_heads=heads)
    small["initializer_range"] = INIT
    if arch in _LLAMA_LIKE:
        cls, kv = _LLAMA_LIKE[arch]
        if arch == "mistral_window":
            extra = {"sliding_window": 4, **extra}
        fields = dict(vocab_size=49152, num_key_value_heads=kv_heads or kv, max_position_embeddings=128, **small)
        return cls(**{**fields, **extra})
    if arch == "bert":
        return BertConfig(**{**dict(vocab_size=30522, max_position_embeddings=128, **small), **extra})
    if arch == "roberta":
        return RobertaConfig(**{**dict(vocab_size=30522, max_position_embeddings=130, pad_token_id=0, **small), **extra})
    if arch == "gpt_neox":
        return GPTNeoXConfig(**{**dict(vocab_size=49152, max_position_embeddings=128, rotary_pct=0.5, **small), **extra})
    if arch == "distilbert":
        fields = dict(vocab_size=30522, n_layers=layers, dim=hidden, hidden_dim=2 * hidden, n_heads=heads, max_position_embeddings=128)
        return DistilBertConfig(**{**fields, "initializer_range": INIT, **extra})
    if arch == "gpt2":
        fields = dict(vocab_size=49152, n_layer=layers, n_embd=hidden, n_head=heads, n_positions=128, initializer_range=INIT)
        return GPT2Config(**{**fields, **extra})
    if arch == "t5_encoder":  # T5's encoder alone: Pre-LN with RMS norms, relative-position buckets, no biases
        fields = dict(vocab_size=30522, d_model=hidden, d_kv=hidden // heads, d_ff=2 * hidden, num_layers=layers, num_heads=heads)
        return T5Config(**{**fields, "initializer_factor": INIT * 10, **extra})
    raise ValueError(arch)


def causal(config, name: str, backend: str = "auto", seed: int = 0):
    """A LoadedModel of a causal LM with random weights from ``config`` (eager attention, the BPE tokenizer)."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    return from_model(model, bpe_tokenizer(), name=name, backend=backend)


def build(arch: str, backend: str = "sdpa", seed: int = 0):
    """A LoadedModel with random weights (fp32, CPU)."""
    torch.manual_seed(seed)
    config = config_for(arch)
    if arch == "t5_encoder":
        model = T5EncoderModel._from_config(config, attn_implementation="eager")
    else:
        cls = AutoModel if arch in ENCODERS else AutoModelForCausalLM
        model = cls.from_config(config, attn_implementation="eager")
    tokenizer = wordpiece_tokenizer() if arch in ENCODERS or arch == "t5_encoder" else bpe_tokenizer()
    return from_model(model, tokenizer, name=f"tiny-{arch}", backend=backend)


def seq2seq_config(arch: str, decoder_layers: int = 2):
    """A tiny encoder-decoder config: "t5" (relative-position buckets reach the kernel as position_bias) or "bart"."""
    sizes = dict(vocab_size=49152, d_model=64)  # both: 2 encoder blocks, 4 heads, MLP width 128
    if arch == "t5":
        t5 = dict(d_kv=16, d_ff=128, num_layers=2, num_heads=4, decoder_start_token_id=0, pad_token_id=0)
        return T5Config(**sizes, **t5, num_decoder_layers=decoder_layers)
    bart = dict(encoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128)
    return BartConfig(**sizes, **bart, decoder_layers=decoder_layers, max_position_embeddings=128)


def tiny_t5(decoder_layers: int = 3):
    """A LoadedModel of a tiny random T5 (2 encoder blocks, ``decoder_layers`` decoder blocks), named tiny-t5."""
    torch.manual_seed(0)
    model = AutoModelForSeq2SeqLM.from_config(seq2seq_config("t5", decoder_layers), attn_implementation="eager")
    return from_model(model, bpe_tokenizer(), name="tiny-t5")


def save_t5(path) -> str:
    """A tiny random T5 saved with the BPE tokenizer at ``path`` (a local directory ``load`` opens)."""
    torch.manual_seed(0)
    AutoModelForSeq2SeqLM.from_config(seq2seq_config("t5")).save_pretrained(path, safe_serialization=True)
    bpe_tokenizer().save_pretrained(path)
    return str(path)


def save(arch: str, path) -> str:
    """``build(arch)`` saved with its tokenizer at ``path`` (a local directory ``load`` opens, as a visitor could type it)."""
    lm = build(arch)
    lm.model.save_pretrained(path)
    lm.tokenizer.save_pretrained(path)
    return str(path)
