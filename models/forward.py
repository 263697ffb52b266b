"""``run``: one recorded forward pass. Tokenizing (never writing to the shared tokenizer), the choice of path,
the forward under the recording hook, and the placement of each recorded call at its block.

Two exact paths, chosen per run by ``choose_path`` and named in ``ForwardRecord.path``:
- "captured" (short inputs): each attention call computes its weights once, as eager does, keeps them
  and returns weights·V instead of calling the fast kernel; maps and statistics are then read, not
  recomputed, and every layer's statistics come from one vectorised call.
- "recomputed" (long inputs): only the query and key are kept; ``ForwardRecord.attention`` recomputes
  just the map asked for, in chunks of query rows, and statistics stream (O(n·d) memory per layer, not O(n²)).

What the run recorded is a ``models.record.ForwardRecord`` (data and its readers only).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch

from attnscope.analysis.attention import captured
from attnscope.models.architecture import attention_stack, block_index
from attnscope.models.eager import materialised_layers
from attnscope.models.encoding import encode_batch
from attnscope.models.hook import IMPL_NAMES, LayerRecord, recording
from attnscope.models.labels import text_labels, unknown_share
from attnscope.models.limits import check_run, estimate_run_bytes, memory_limit_bytes
from attnscope.models.loaded import LoadedModel, input_device
from attnscope.models.norms import head_grams, output_projection
from attnscope.models.record import ForwardRecord
from attnscope.models.spec import ModelSpec, RecordingError

__all__ = [
    "CAPTURE_CAUSAL_LAYER_BYTES",
    "CAPTURE_LAYER_BYTES",
    "PATHS",
    "MapPath",
    "capture_buffer",
    "choose_path",
    "one_per_layer",
    "record_forward",
    "run",
    "run_ids",
    "special_ids",
    "tokenize",
    "validate_texts",
]

MapPath = Literal["auto", "captured", "recomputed"]
PATHS: tuple[str, ...] = ("auto", "captured", "recomputed")

# The captured path while one layer's weights [B, H, n, n] stay under this many bytes (float32), measured with
# bench/peers.py on a 2-core CPU: forming the weights plus weights·V in the call costs about what the fast kernel
# costs while a layer's weights stay near the CPU's caches, and several times more beyond (2,048 tokens: 4-5x the
# kernel's time, memory-bound), where recomputing only the maps asked for is the cheaper way. MiniLM (12 heads,
# bidirectional) still gains at 512 tokens (12.6 MB a layer): all maps, the loop and head_stats all cheaper.
CAPTURE_LAYER_BYTES = 16 * 1024**2
# Causal models: SDPA skips the masked half of every map and capturing forms all of it, so the crossover comes
# sooner. SmolLM2 (9 heads): captured wins at 128 tokens (0.6 MB a layer), loses head_stats at 256 and 512.
CAPTURE_CAUSAL_LAYER_BYTES = 1024**2
# Recomputed maps of all heads in blocks of [heads, rows, keys] near this size: they stay in cache through the


def _which(i: int, texts) -> str:
    """A text named as the dashboard and the CLI number them: 0-based, and only when there are several."""
    return "the text" if len(texts) == 1 else f"text {i} (0-based)"


def validate_texts(texts) -> list[str]:
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, (list, tuple)) or not texts:
        msg = "no text given; type a sentence (or pass a list of texts)"
        raise ValueError(msg)
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            msg = f"{_which(i, texts)} is empty or only whitespace; type a sentence"
            raise ValueError(msg)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:  # a lone surrogate: bytes that were not UTF-8 (argv, a mis-decoded file)
            msg = f"{_which(i, texts)} is not valid Unicode (character {exc.start + 1} is a lone surrogate); retype it or save it as UTF-8"
            raise ValueError(msg) from None
    return list(texts)


def tokenize(lm: LoadedModel, texts, *, padding_side: str | None = None, max_length: int | None = None):
    """Tokenize and pad a batch, validating length. Returns (encoding, padding_side)."""
    texts = validate_texts(texts)
    tok = lm.tokenizer
    side = padding_side or tok.padding_side or "right"
    if side not in ("left", "right"):
        msg = f"padding_side must be 'left' or 'right', not {side!r}"
        raise ValueError(msg)
    limit = lm.spec.max_positions
    if max_length is not None:
        if not isinstance(max_length, int) or max_length < 2:
            msg = f"max_length must be an integer >= 2, not {max_length!r}"
            raise ValueError(msg)
        if limit is not None and max_length > limit:
            msg = f"max_length {max_length} exceeds {lm.spec.name}'s {limit} positions; use at most {limit}"
            raise ValueError(msg)
    # Read-only on the shared tokenizer: a fast tokenizer's own padding writes to its Rust backend.
    enc = encode_batch(tok, texts, padding_side=side, max_length=max_length)
    specials = set(tok.all_special_ids)
    for i, (row, row_mask) in enumerate(zip(enc["input_ids"].tolist(), enc["attention_mask"].tolist())):
        if not any(m and t not in specials for t, m in zip(row, row_mask)):
            msg = f"{_which(i, texts)} has no tokens {lm.spec.name} can read (only control or unknown characters?); type a sentence"
            raise ValueError(msg)
    if max_length is None and limit is not None:
        lengths = enc["attention_mask"].sum(-1)
        longest = int(lengths.max())
        if longest > limit:
            which = _which(int(lengths.argmax()), texts)
            msg = (
                f"{which} has {longest} tokens but {lm.spec.name} takes at most {limit}; "
                f"shorten it or pass max_length={limit} (--max-length) to truncate"
            )
            raise ValueError(msg)
    return enc, side


def run(
    lm: LoadedModel,
    texts,
    padding_side: str | None = None,
    attention_mask: bool = True,
    max_length: int | None = None,
    target=None,
    values: bool = False,
    path: MapPath = "auto",
) -> ForwardRecord:
    """Run texts through the model as one batch and record every layer's attention inputs.

    Args:
        lm: from ``load``.
        texts: one text or a list of texts (padded into one batch).
        padding_side: "left" or "right"; default the tokenizer's.
        attention_mask: pass the padding mask to the model (False shows what ignoring it does).
        max_length: truncate to this many tokens (otherwise too-long text is refused).
        target: encoder-decoder models only: the decoder's text(s), one per source text, read as
            given (teacher forcing); its self-attention and cross-attention are recorded too.
        values: also keep every layer's values and output projection (value-weighted norms, ``norm_stats``).
        path: how the maps are obtained, all exact: "captured" (computed once during the forward and
            kept), "recomputed" (from the recorded query/key when asked for), or "auto" (``choose_path``:
            captured while the weights are small). ``ForwardRecord.path`` says which ran.
    Returns:
        ForwardRecord.
    """
    if path not in PATHS:
        msg = f"path must be one of {', '.join(PATHS)}, not {path!r}"
        raise ValueError(msg)
    texts = validate_texts(texts)
    enc, side = tokenize(lm, texts, padding_side=padding_side, max_length=max_length)
    target_enc = None
    if lm.spec.kind == "encoder-decoder":
        if target is None:
            msg = (
                f"{lm.spec.name} is an encoder-decoder model: give a source text and a target text "
                "(run(lm, source, target=...); --target in the CLI)"
            )
            raise ValueError(msg)
        targets = validate_texts(target)
        if len(targets) != len(texts):
            msg = f"{len(texts)} source text(s) but {len(targets)} target text(s); give one target per source"
            raise ValueError(msg)
        target_enc, _ = tokenize(lm, targets, padding_side=side, max_length=max_length)
        target_enc["texts"] = targets
    elif target is not None:
        msg = f"{lm.spec.name} is a {lm.spec.kind}, not an encoder-decoder model: it takes no target text"
        raise ValueError(msg)
    return record_forward(lm, texts, enc, side, attention_mask, target_enc, values=values, path=path)


def run_ids(lm: LoadedModel, input_ids) -> ForwardRecord:
    """Record a forward pass over token ids as given (no tokenizer, no special tokens added, no padding).

    For probes that need exact token sequences, e.g. random tokens repeated twice (``models.probes``).

    Args:
        lm: from ``load``.
        input_ids: int [B, n] token ids, every row the same length.
    Returns:
        ForwardRecord whose ``texts`` are the decoded ids.
    """
    ids = torch.as_tensor(np.asarray(input_ids), dtype=torch.long)
    if ids.ndim != 2 or ids.shape[1] < 1:
        msg = f"input_ids must be a 2-D [batch, tokens] array, got shape {tuple(ids.shape)}; wrap one sequence as [ids]"
        raise ValueError(msg)
    vocab = len(lm.tokenizer)
    if int(ids.min()) < 0 or int(ids.max()) >= vocab:
        msg = f"token ids must lie in 0..{vocab - 1} for {lm.spec.name}; got {int(ids.min())}..{int(ids.max())}"
        raise ValueError(msg)
    limit = lm.spec.max_positions
    if limit is not None and ids.shape[1] > limit:
        msg = f"{ids.shape[1]} tokens exceed {lm.spec.name}'s {limit} positions; use at most {limit}"
        raise ValueError(msg)
    enc = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    texts = lm.tokenizer.batch_decode(ids.tolist())
    side = lm.tokenizer.padding_side or "right"
    # no labels: these ids were not typed (probes run hundreds of rows; ``token_labels`` falls back to the pieces)
    return record_forward(lm, texts, enc, side, True, labels=False)


def choose_path(lm: LoadedModel, batch: int, n: int, padded: bool, target_n: int = 0) -> MapPath:
    """ "captured" or "recomputed": the cheaper exact path for a run of ``batch`` texts of ``n`` padded tokens.

    Captured while one layer's weights ``B·H·n²`` floats stay under ``CAPTURE_LAYER_BYTES`` (a decoder's:
    ``CAPTURE_CAUSAL_LAYER_BYTES``; there, forming them inside the call costs about what the fast kernel costs,
    as measured) and the whole record with them fits the memory guard (``models.limits``); recomputed otherwise. Only the SDPA kernel's calls are captured
    (``models.hook.capturable``); eager's and FlashAttention's keep their kernel and are recomputed, and so
    does a model on a GPU (not measured there).
    """
    spec = lm.spec
    if spec.recording != "hook" or lm.model.config._attn_implementation != IMPL_NAMES["sdpa"] or spec.dtype != "float32":
        return "recomputed"
    if input_device(lm.model).type != "cpu":  # measured on CPUs only; a GPU's kernels and memory differ
        return "recomputed"
    longest = max(n, target_n)
    limit = CAPTURE_CAUSAL_LAYER_BYTES if spec.kind == "decoder" else CAPTURE_LAYER_BYTES
    if 4 * batch * spec.n_heads * longest * longest > limit:
        return "recomputed"
    return "captured" if _captured_fits(lm, batch, n, padded, target_n) else "recomputed"


def _captured_fits(lm: LoadedModel, batch: int, n: int, padded: bool, target_n: int = 0) -> bool:
    """Whether the run's estimate plus every layer's weights [B, H, n, n] stays under the memory limit."""
    spec = lm.spec
    longest = max(n, target_n)
    layers = spec.n_layers + (2 * spec.n_decoder_layers if target_n else 0)
    need = estimate_run_bytes(lm.model.config, spec, batch, n, padded) + layers * 4 * batch * spec.n_heads * longest * longest
    return need <= memory_limit_bytes(input_device(lm.model))


def record_forward(
    lm: LoadedModel,
    texts: list[str],
    enc,
    side: str,
    attention_mask: bool,
    target_enc=None,
    values: bool = False,
    path: MapPath = "auto",
    labels: bool = True,
) -> ForwardRecord:
    """The recorded forward pass shared by ``run`` and ``run_ids`` (``enc``: input_ids, attention_mask [B, n]);
    ``labels``: read each token's label from the text (``models.labels``)."""
    model = lm.model
    device = input_device(model)
    mask2d = enc["attention_mask"]  # [B, n]
    inputs = {"input_ids": enc["input_ids"].to(device)}
    if "token_type_ids" in enc:
        inputs["token_type_ids"] = enc["token_type_ids"].to(device)
    inputs["attention_mask"] = (mask2d if attention_mask else torch.ones_like(mask2d)).to(device)
    position_ids = None
    padded = bool((mask2d == 0).any())
    if padded and not lm.pad_aware_positions and lm.layout.declares("position_ids"):
        # Real tokens keep the positions they would have alone, whichever side the padding is on.
        position_ids = (mask2d.cumsum(-1) - 1).clamp(min=0)
        inputs["position_ids"] = position_ids.to(device)
    check_run(lm, int(mask2d.shape[0]), int(mask2d.shape[1]), padded=padded)
    target_n = int(target_enc["input_ids"].shape[1]) if target_enc is not None else 0
    if path == "auto":
        path = choose_path(lm, int(mask2d.shape[0]), int(mask2d.shape[1]), padded, target_n)
    elif path == "captured" and not _captured_fits(lm, int(mask2d.shape[0]), int(mask2d.shape[1]), padded, target_n):
        msg = "path='captured' keeps every layer's [batch, heads, n, n] weights, more than the memory limit allows; use path='auto' or 'recomputed'"
        raise ValueError(msg)
    base = lm.forward_module()
    extra: dict[str, Any] = {"use_cache": False} if lm.spec.kind != "encoder" else {}
    if target_enc is not None:
        extra["decoder_input_ids"] = target_enc["input_ids"].to(device)
        extra["decoder_attention_mask"] = target_enc["attention_mask"].to(device)
    decoder_layers, cross_layers = [], []
    buffer = None  # the captured path's weights of every layer, [L, B, H, n, n]
    if values and lm.spec.recording == "materialised":
        msg = f"{lm.spec.name}: values need the recording hook (this architecture is materialised: it has no hook to read values from)"
        raise ValueError(msg)
    if lm.spec.recording == "materialised":
        with torch.inference_mode():
            out = base(**inputs, output_hidden_states=True, output_attentions=True, **extra)
        if target_enc is not None:
            msg = f"{lm.spec.model_type}: encoder-decoder models are recorded through the hook only"
            raise ValueError(msg)
        layers = materialised_layers(out.attentions, lm.spec, int(mask2d.shape[0]), int(mask2d.shape[1]), real=mask2d.bool())
    else:
        with torch.inference_mode():
            if path == "captured" and target_enc is None:  # every layer's weights side by side: a stack of them is a view
                slots = len(lm.spec.attention_layers) or lm.spec.n_layers
                buffer = capture_buffer((slots, int(mask2d.shape[0]), lm.spec.n_heads, int(mask2d.shape[1]), int(mask2d.shape[1])), device)
            with recording(lm.module_names, keep_values=values, capture=path == "captured", capture_into=buffer) as recorder:
                out = base(**inputs, output_hidden_states=True, **extra)
        if target_enc is not None:
            layers, decoder_layers, cross_layers = _split_encoder_decoder(recorder.layers, lm.spec)
        else:
            layers = one_per_layer(recorder.layers, lm.spec)
    states = out.encoder_hidden_states if target_enc is not None else out.hidden_states
    hidden = tuple(h.detach() for h in states)
    grams: list[torch.Tensor | None] = [None] * len(layers)
    if values:
        for i, layer in enumerate(layers):
            if layer is not None and layer.value is not None:
                width = lm.spec.n_heads * layer.value.shape[-1]
                weight = output_projection(model, layer.module, width)
                grams[i] = None if weight is None else head_grams(weight, lm.spec.n_heads)
    tok = lm.tokenizer
    ids = enc["input_ids"].numpy()
    masks = mask2d.numpy()
    tokens = [tok.convert_ids_to_tokens(ids[b][masks[b] == 1].tolist()) for b in range(len(texts))]
    real_ids = [ids[b][masks[b] == 1].tolist() for b in range(len(texts))]
    return ForwardRecord(
        spec=lm.spec,
        texts=texts,
        tokens=tokens,
        input_ids=ids,
        attention_mask=masks,
        position_ids=None if position_ids is None else position_ids.numpy(),
        padding_side=side,
        mask_applied=attention_mask,
        layers=layers,
        hidden_states=hidden,
        special_ids=special_ids(tok),
        inputs={**inputs, **{k: v for k, v in extra.items() if k.startswith("decoder_")}},
        _grams=grams,
        all_tokens=[tok.convert_ids_to_tokens(row.tolist()) for row in ids],
        labels=[text_labels(tok, text, row) for text, row in zip(texts, real_ids)] if labels else [],
        unknown_shares=[unknown_share(tok, row) for row in real_ids],
        path=_path_taken(lm, [*layers, *decoder_layers, *cross_layers]),
        _weights_buffer=_captured_stack(layers, buffer),
        **(_target_fields(tok, target_enc, decoder_layers, cross_layers, out) if target_enc is not None else {}),
    )


def capture_buffer(shape: tuple[int, ...], device) -> torch.Tensor:
    """An uninitialised float32 tensor for the captured weights of a run.

    On the CPU the memory comes from numpy, which asks Linux for huge pages on large arrays: the forward
    writes every byte once, so first touching fresh memory is most of what keeping the weights costs, and
    on 2 MB pages that is ~4x cheaper than on 4 KB pages (SmolLM2 at 512 tokens: ~40 ms instead of ~200 ms
    for 283 MB on the machine in docs/benchmarks.md, once the process has huge pages to reuse).
    """
    if torch.device(device).type != "cpu":
        return torch.empty(shape, dtype=torch.float32, device=device)
    return torch.from_numpy(np.empty(shape, dtype=np.float32))


def _captured_stack(layers: list[LayerRecord | None], buffer: torch.Tensor | None) -> torch.Tensor | None:
    """The capture buffer [L, B, H, n, n] when it holds every attention layer's weights in layer order, else None."""
    present = [layer for layer in layers if layer is not None]
    if buffer is None or len(present) > buffer.shape[0]:
        return None
    if any(layer.weights is None or layer.weights.data_ptr() != buffer[i].data_ptr() for i, layer in enumerate(present)):
        return None
    return buffer[: len(present)]


def _path_taken(lm: LoadedModel, layers: list[LayerRecord | None]) -> str:
    """What ``ForwardRecord.path`` says: whether every layer, none or some kept their weights."""
    if lm.spec.recording == "materialised":
        return "materialised"
    kept = [captured(layer) is not None for layer in layers if layer is not None]
    return "captured" if kept and all(kept) else "mixed" if any(kept) else "recomputed"


def _target_fields(tok, target_enc, decoder_layers, cross_layers, out) -> dict:
    ids, masks = target_enc["input_ids"].numpy(), target_enc["attention_mask"].numpy()
    return dict(
        decoder_hidden_states=tuple(h.detach() for h in (getattr(out, "decoder_hidden_states", None) or ())),
        targets=target_enc["texts"],
        target_tokens=[tok.convert_ids_to_tokens(ids[b][masks[b] == 1].tolist()) for b in range(len(ids))],
        target_labels=[text_labels(tok, text, ids[b][masks[b] == 1].tolist()) for b, text in enumerate(target_enc["texts"])],
        target_input_ids=ids,
        target_attention_mask=masks,
        decoder_layers=decoder_layers,
        cross_layers=cross_layers,
    )


def _split_encoder_decoder(layers: list[LayerRecord], spec: ModelSpec):
    """An encoder-decoder's calls sorted by module name into encoder self-, decoder self- and cross-attention."""
    import dataclasses

    encoder = [r for r in layers if attention_stack(r.module) == "encoder"]
    cross = [r for r in layers if attention_stack(r.module) == "cross"]
    decoder = [r for r in layers if attention_stack(r.module) == "decoder"]
    n_dec = spec.n_decoder_layers
    if len(encoder) != spec.n_layers or len(decoder) != n_dec or len(cross) != n_dec:
        msg = (
            f"the hook saw {len(encoder)} encoder, {len(decoder)} decoder and {len(cross)} cross-attention calls "
            f"for {spec.n_layers} encoder and {n_dec} decoder layers; cannot tell which is which"
        )
        raise RecordingError(msg)
    decoder_spec = dataclasses.replace(spec, n_layers=n_dec)
    return one_per_layer(encoder, spec), one_per_layer(decoder, decoder_spec), one_per_layer(cross, decoder_spec)


def one_per_layer(layers: list[LayerRecord], spec: ModelSpec) -> list[LayerRecord | None]:
    """The recorded calls placed at their blocks, in block order; None where a block has no attention
    (hybrid models mix attention with recurrent or state-space blocks)."""
    if not layers:
        msg = f"the hook saw no attention call ({spec.model_type}'s attention does not go through transformers' AttentionInterface)"
        raise RecordingError(msg)
    if len(layers) == spec.n_layers and len({layer.module for layer in layers}) < len(layers):
        return list(layers)  # one module reused for every layer (ALBERT): placed by call order
    blocks = [block_index(layer.module) for layer in layers]
    placed: list[LayerRecord | None] = [None] * spec.n_layers
    for layer, block in zip(layers, blocks):
        if block is None or not 0 <= block < spec.n_layers or placed[block] is not None:
            msg = (
                f"the hook saw {len(layers)} attention calls for {spec.n_layers} layers and cannot tell which layer "
                f"made each (modules {sorted({layer.module for layer in layers})[:3]}...)"
            )
            raise RecordingError(msg)
        placed[block] = layer
    return placed


def special_ids(tok) -> frozenset[int]:
    """The ids ``special_token_mass`` counts: [CLS], [SEP], BOS and EOS (Clark et al. 2019's "special
    tokens"), not [UNK], [MASK], padding or chat-template markers."""
    return frozenset(_real_specials(tok))


def _real_specials(tok) -> set[int]:
    """Special ids that mark real positions ([CLS]/[SEP]/BOS/EOS), even when pad shares an id with one."""
    return {i for i in (tok.cls_token_id, tok.sep_token_id, tok.bos_token_id, tok.eos_token_id) if i is not None}
