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
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    MistralConfig,
    Qwen2Config,
    RobertaConfig,
    T5Config,
    T5EncoderModel,
)

from attnscope.models import from_model
from attnscope.models.loading import bundled_path

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


def config_for(arch: str):
    # initializer_range 0.3 (not the default 0.02): peaked maps, so a scaling or rotary bug cannot pass at 1e-4
    # (tests/unit/test_parity_tiny.py shows a deliberately wrong scaling failing).
    small = dict(num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=4, initializer_range=INIT)
    if arch == "bert":
        return BertConfig(vocab_size=30522, max_position_embeddings=128, **small)
    if arch == "roberta":
        return RobertaConfig(vocab_size=30522, max_position_embeddings=130, pad_token_id=0, **small)
    if arch == "distilbert":
        return DistilBertConfig(
            vocab_size=30522, n_layers=2, dim=32, hidden_dim=64, n_heads=4, max_position_embeddings=128, initializer_range=INIT
        )
    if arch == "gpt2":
        return GPT2Config(vocab_size=49152, n_layer=2, n_embd=32, n_head=4, n_positions=128, initializer_range=INIT)
    if arch == "gpt_neox":
        return GPTNeoXConfig(vocab_size=49152, max_position_embeddings=128, rotary_pct=0.5, **small)
    if arch == "llama_gqa":
        return LlamaConfig(vocab_size=49152, num_key_value_heads=2, max_position_embeddings=128, **small)
    if arch == "qwen2":
        return Qwen2Config(vocab_size=49152, num_key_value_heads=2, max_position_embeddings=128, **small)
    if arch == "llama_mqa":  # multi-query: one key/value head for all query heads
        return LlamaConfig(vocab_size=49152, num_key_value_heads=1, max_position_embeddings=128, **small)
    if arch == "t5_encoder":  # T5's encoder alone: Pre-LN with RMS norms, relative-position buckets, no biases
        return T5Config(vocab_size=30522, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, initializer_factor=INIT * 10)
    if arch == "mistral_window":  # a sliding window shorter than the texts; its KV cache keeps only the window
        return MistralConfig(vocab_size=49152, num_key_value_heads=2, max_position_embeddings=128, sliding_window=4, **small)
    raise ValueError(arch)


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
    if arch == "t5":
        return T5Config(
            vocab_size=49152,
            d_model=64,
            d_kv=16,
            d_ff=128,
            num_layers=2,
            num_decoder_layers=decoder_layers,
            num_heads=4,
            decoder_start_token_id=0,
            pad_token_id=0,
        )
    return BartConfig(
        vocab_size=49152,
        d_model=64,
        encoder_layers=2,
        decoder_layers=decoder_layers,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        max_position_embeddings=128,
    )


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
