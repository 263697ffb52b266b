"""Anatomy of a loaded model: facts read from the model itself — its modules, parameters, config and one forward
on a short text — never from a table of known models.

- parameters by component (token / position / token-type embeddings, Q, K, V, O, MLP, norms, LM head), the
  total equal to ``sum(p.numel() for p in model.parameters())`` (a tied or shared tensor counted once);
- heads, KV heads, head size and the KV-cache bytes per token at the model's dtype;
- norm placement: "post" when every block's output is the output of one of the block's own norms (the residual
  stream is normalised after each addition), else "pre" (norms only feed the sublayers). Checked numerically on
  the recorded hidden states by calling the block's norm modules on probe tensors (no hook, nothing changed);
- the positional scheme, one of ``POSITIONAL``, from the instantiated modules first, then the config;
- on the current text: the residual stream's norm by layer, each head's attention by relative distance, and for
  encoders with token types the token / position / segment parts of the layer-0 input;
- the measured time and memory of one layer's attention at n = 128 … 4,096 (``attention_cost``).

Nothing here registers a hook or changes the model: norm modules are called as functions on probe tensors, and
weights are read, never written.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import pandas as pd
import torch

from attnscope.analysis.anatomy import distance_profile, heads_frame, kv_cache_bytes, part_norm_frame, quadratic_fit, residual_norm_frame
from attnscope.models.architecture import (
    COMPONENTS,
    POSITIONAL,
    NormPlacement,
    Positional,
    is_norm,
    norm_placement,
    parameter_counts,
    positional_scheme,
    transformer_blocks,
)
from attnscope.models.forward import run
from attnscope.models.loaded import LoadedModel, parse_dtype
from attnscope.models.profile import timed
from attnscope.models.record import ForwardRecord

__all__ = [
    "COMPONENTS",
    "POSITIONAL",
    "Anatomy",
    "anatomy",
    "attention_cost",
    "distance_frame",
    "dtype_bytes",
    "embedding_parts",
    "heads_table",
    "is_norm",
    "norm_placement",
    "parameter_counts",
    "positional_scheme",
    "probe_record",
    "residual_norms",
    "transformer_blocks",
    "COST_LENGTHS",
]


PROBE_TEXT = "The mouse ran, the cat waited: then the mouse hid again."
PROBE_TARGET = "The cat saw the mouse."  # encoder-decoder models read a target too
COST_LENGTHS = (128, 256, 512, 1024, 2048, 4096)


# -- the Anatomy ---------------------------------------------------------------------------------------
def dtype_bytes(dtype: str | torch.dtype) -> int:
    """Bytes per element of a dtype given as ``torch.float32`` or its name ("float32", "torch.bfloat16")."""
    return torch.empty((), dtype=parse_dtype(dtype)).element_size()


@dataclass
class Anatomy:
    """What the loaded model is made of; ``to_json`` gives the CLI's contract."""

    name: str
    model_type: str
    kind: str
    parameters: dict[str, int]  # COMPONENTS -> count, plus "total"
    numel: int  # sum(p.numel() for p in model.parameters()), read apart from the components: equals parameters["total"]
    lm_head_tied: bool | None
    norm_placement: NormPlacement
    norm_evidence: str
    positional: Positional
    positional_evidence: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_model: int
    dtype: str
    bytes_per_element: int
    kv_cache_bytes_per_token: int
    attention_blocks: int  # attention modules counted in ``parameters`` (an encoder-decoder: encoder, decoder and cross)
    cache_layers: int  # blocks whose keys and values a generating model caches
    attention_bias: bool  # Q, K and V projections have biases
    output_bias: bool  # the output projection has one

    def to_json(self) -> dict:
        """The JSON the CLI writes: the contract keys (parameters, norm_placement, positional, heads,
        kv_cache_bytes_per_token) and the evidence behind them."""
        data = asdict(self)
        return {
            "model": self.name,
            "model_type": self.model_type,
            "kind": self.kind,
            "parameters": dict(self.parameters),
            "lm_head_tied": self.lm_head_tied,
            "norm_placement": self.norm_placement,
            "norm_evidence": self.norm_evidence,
            "positional": self.positional,
            "positional_evidence": self.positional_evidence,
            "heads": {"n_heads": self.n_heads, "n_kv_heads": self.n_kv_heads, "head_dim": self.head_dim},
            "n_layers": data["n_layers"],
            "attention_blocks": self.attention_blocks,
            "d_model": data["d_model"],
            "dtype": self.dtype,
            "kv_cache_bytes_per_token": self.kv_cache_bytes_per_token,
        }


def probe_record(lm: LoadedModel, text: str | None = None) -> ForwardRecord:
    """A record of ``text`` (default a short probe), with a target for encoder-decoder models."""
    target = PROBE_TARGET if lm.spec.kind == "encoder-decoder" else None
    return run(lm, text or PROBE_TEXT, target=target)


def _head_dim(lm: LoadedModel) -> int:
    return lm.spec.head_dim or lm.spec.d_model // lm.spec.n_heads


def _cache_layers(lm: LoadedModel) -> int:
    """Blocks whose keys and values a generating model caches (an encoder-decoder's decoder)."""
    if lm.spec.kind == "encoder-decoder":
        return lm.spec.n_decoder_layers or lm.spec.n_layers
    return len(lm.spec.attention_layers or range(lm.spec.n_layers))


def anatomy(lm: LoadedModel, rec: ForwardRecord | None = None) -> Anatomy:
    """Everything the Anatomy page states about the model, read from it (``rec``: a record to read the norm placement
    from; default one run over a short probe text).

    Raises:
        ValueError: the record is of another model.
    """
    if rec is not None and rec.spec.name != lm.spec.name:
        msg = f"the record is of {rec.spec.name}, not {lm.spec.name}; run the model on the text first"
        raise ValueError(msg)
    rec = rec if rec is not None else probe_record(lm)
    spec, head_dim = lm.spec, _head_dim(lm)
    counts, tied = parameter_counts(lm.model, spec.n_heads, spec.n_kv_heads, head_dim)
    placement = lm.layout.norms  # measured at load on the probe text (``models.architecture.confirm``)
    if placement is None:
        placement = norm_placement(lm.model, rec.hidden_states, real=torch.from_numpy(rec.attention_mask == 1))
    positional, evidence = positional_scheme(lm.model)
    size = dtype_bytes(spec.dtype)
    layers = len(spec.attention_layers or range(spec.n_layers))
    if spec.kind == "encoder-decoder":  # decoder self-attention and cross-attention in every decoder block
        layers += 2 * (spec.n_decoder_layers or spec.n_layers)
    plain = layers * spec.d_model * spec.n_heads * head_dim  # the query (or output) projections without biases
    return Anatomy(
        name=spec.name,
        model_type=spec.model_type,
        kind=spec.kind,
        parameters=counts,
        numel=sum(p.numel() for p in lm.model.parameters()),
        lm_head_tied=tied,
        norm_placement=placement.placement,
        norm_evidence=placement.evidence,
        positional=positional,
        positional_evidence=evidence,
        n_layers=spec.n_layers,
        n_heads=spec.n_heads,
        n_kv_heads=spec.n_kv_heads,
        head_dim=head_dim,
        d_model=spec.d_model,
        dtype=str(spec.dtype).removeprefix("torch."),
        bytes_per_element=size,
        kv_cache_bytes_per_token=kv_cache_bytes(_cache_layers(lm), spec.n_kv_heads, head_dim, size),
        attention_blocks=layers,
        cache_layers=_cache_layers(lm),
        attention_bias=counts["attention_q"] > plain,
        output_bias=counts["attention_o"] > plain,
    )


def heads_table(facts: Anatomy) -> pd.DataFrame:
    """``analysis.anatomy.heads_frame`` for the model: one head, its H heads, every GQA grouping and MQA."""
    return heads_frame(
        facts.d_model,
        facts.n_heads,
        facts.n_kv_heads,
        facts.head_dim,
        facts.attention_blocks,
        bias=facts.attention_bias,
        out_bias=facts.output_bias,
        bytes_per_element=facts.bytes_per_element,
        cache_layers=facts.cache_layers,
    )


def residual_norms(rec: ForwardRecord, batch: int = 0) -> pd.DataFrame:
    """The residual stream's norm after every block on the recorded text (``analysis.anatomy.residual_norm_frame``);
    an encoder-decoder's encoder. Layer n_layers is the last hidden state (after the final norm in most models)."""
    return residual_norm_frame([rec.hidden(layer, batch) for layer in range(len(rec.hidden_states))])


def distance_frame(rec: ForwardRecord, layers=None, batch: int = 0) -> pd.DataFrame:
    """Each head's mean attention by relative distance on the recorded text, for ``layers`` (default all with attention).

    Returns:
        DataFrame: layer, head, offset (query − key), weight, queries.
    """
    layers = rec.attention_layers if layers is None else list(layers)
    frames = []
    for layer in layers:
        frame = distance_profile(rec.layer_attention(layer, batch))
        frame.insert(0, "layer", layer)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def embedding_parts(lm: LoadedModel, rec: ForwardRecord, batch: int = 0) -> tuple[pd.DataFrame, float] | None:
    """Norms of the token, position and segment (token-type) parts of the layer-0 input, per token, for a model
    with a token-type table; None for others.

    The parts are read from the model's own embedding tables at the recorded ids, positions and token types, and
    checked: their sum through the embeddings' norm must give the recorded layer-0 state.

    Returns:
        (DataFrame: position, token, part ("token", "position", "segment", "sum"), norm; the check's max |Δ|
        relative to the layer-0 state's scale).
    """
    facts = lm.layout.embeddings
    if facts is None:
        return None
    token_table, position, segment = (_table(lm.module(name)) for name in (facts.token, facts.position, facts.segment))
    real = rec.real_index(batch)
    ids = torch.as_tensor(rec.input_ids[batch][real])
    types = rec.inputs.get("token_type_ids")
    types = torch.zeros_like(ids) if types is None else types[batch].cpu()[torch.as_tensor(real)]
    start = (facts.padding_idx + 1) if lm.pad_aware_positions else 0
    positions = torch.arange(start, start + len(real))
    with torch.no_grad():
        parts = {
            "token": token_table[ids.to(token_table.device)].float(),
            "position": position[positions.to(position.device)].float(),
            "segment": segment[types.to(segment.device)].float(),
        }
        total = parts["token"] + parts["position"] + parts["segment"]
        norm = None if facts.norm is None else lm.module(facts.norm)
        layer0 = torch.as_tensor(rec.hidden(0, batch))
        rebuilt = norm(total.to(_table(norm).dtype)).float() if norm is not None else total
        check = float((rebuilt.cpu() - layer0).abs().max() / layer0.abs().max().clamp(min=1e-12))
    frame = part_norm_frame(rec.tokens[batch], {**{k: v.cpu().numpy() for k, v in parts.items()}, "sum": total.cpu().numpy()})
    return frame, check


def _table(module: torch.nn.Module) -> torch.Tensor:
    """An embedding table's (or a norm's) weight."""
    weight = module.weight
    if not isinstance(weight, torch.Tensor):
        msg = f"{type(module).__name__} keeps no weight tensor"
        raise TypeError(msg)
    return weight


def attention_cost(
    n_heads: int,
    n_kv_heads: int,
    head_dim: int,
    *,
    lengths=COST_LENGTHS,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    repeats: int = 3,
    causal: bool = True,
) -> tuple[pd.DataFrame, dict[str, dict[str, float]]]:
    """Time and memory of one layer's attention (one sequence) measured on this machine at each n, with n² fits.

    Two kernels on random query/key/value of the model's shape: "eager" (scores and weights materialised,
    softmax(q·kᵀ/√d)·V as eager attention computes it) and "sdpa" (PyTorch's fused kernel). Time is the best of
    ``repeats``. Memory: on CUDA the peak allocated above the inputs; on the CPU the bytes of the score and weight
    tensors eager allocates (read from the tensors), and none for SDPA, which allocates no n x n tensor.

    Returns:
        (DataFrame: n, kernel, seconds, memory_mb, memory_how; {kernel: quadratic_fit of seconds against n}).
    """
    if not lengths or min(lengths) < 1:
        msg = "attention cost needs token counts of at least 1, e.g. 128,256,...,4096"
        raise ValueError(msg)
    generator = torch.Generator(device="cpu").manual_seed(0)
    rows = []
    cuda = str(device).startswith("cuda")
    for n in lengths:
        q = torch.randn(1, n_heads, n, head_dim, generator=generator).to(device=device, dtype=dtype)
        k = torch.randn(1, n_kv_heads, n, head_dim, generator=generator).to(device=device, dtype=dtype)
        v = torch.randn(1, n_kv_heads, n, head_dim, generator=generator).to(device=device, dtype=dtype)
        group = n_heads // n_kv_heads
        k_all, v_all = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)  # [1, H, n, d]
        mask = torch.ones(n, n, dtype=torch.bool, device=device).tril() if causal else None
        held: dict[str, int] = {}

        def eager(q=q, k_all=k_all, v_all=v_all, mask=mask, held=held):
            scores = (q @ k_all.transpose(-1, -2)) * head_dim**-0.5  # [1, H, n, n]
            if mask is not None:
                scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
            weights = torch.softmax(scores, dim=-1)  # [1, H, n, n]
            held["bytes"] = scores.numel() * scores.element_size() + weights.numel() * weights.element_size()
            return weights @ v_all

        def sdpa(q=q, k_all=k_all, v_all=v_all):
            return torch.nn.functional.scaled_dot_product_attention(q, k_all, v_all, is_causal=causal)

        for kernel, call in (("eager", eager), ("sdpa", sdpa)):
            with torch.inference_mode():
                call()  # warm up (allocator, kernel choice)
                if cuda:
                    torch.cuda.synchronize(device)
                    torch.cuda.reset_peak_memory_stats(device)
                    base = torch.cuda.memory_allocated(device)
                best = math.inf
                for _ in range(max(1, repeats)):
                    _, seconds = timed(call, "cuda" if cuda else "cpu")
                    best = min(best, seconds)
            if cuda:
                memory, how = (torch.cuda.max_memory_allocated(device) - base) / 2**20, "CUDA peak above the inputs"
            elif kernel == "eager":
                memory, how = held["bytes"] / 2**20, "score and weight tensors eager allocates"
            else:
                memory, how = float("nan"), "no n x n tensor (not measurable on the CPU)"
            rows.append({"n": int(n), "kernel": kernel, "seconds": best, "memory_mb": memory, "memory_how": how})
    frame = pd.DataFrame(rows)
    fits = {}
    if len(lengths) >= 3:
        for kernel, part in frame.groupby("kernel"):
            fits[str(kernel)] = quadratic_fit(part["n"], part["seconds"])
    return frame, fits
