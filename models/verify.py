"""The load-time self-check: every head's map, as attnscope will show it, against the model's own
eager ``output_attentions`` on a short built-in probe text.

A model whose attention goes through the hook and matches is recorded through it. One whose
attention does not reach the hook (fewer calls than layers), or whose recomputed maps differ
(extra terms the hook cannot see: attention sinks, two maps combined, ...) falls back, under
``backend="auto"``, to keeping eager's own weights ("materialised"); with an explicit backend it is
refused. Materialised weights must still be one softmax distribution per head and query (finite,
non-negative, rows summing to 1), or the model is refused with the reason: never a wrong map.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from attnscope.models.architecture import confirm, has_attention_modules
from attnscope.models.eager import TOLERANCE, declared_without_softmax, tolerance
from attnscope.models.forward import run
from attnscope.models.loaded import LoadedModel
from attnscope.models.spec import NoEagerWeightsError, RecordingError, Verification

__all__ = ["PROBE_TARGET", "PROBE_TEXT", "eager_attentions", "verified"]


# Short, with a repeated word and punctuation (so induction-like and previous-token heads show), and
# longer than the tiny test models' sliding windows.
PROBE_TEXT = "The mouse ran, the cat waited: then the mouse hid again."
PROBE_TARGET = "The cat saw the mouse."  # the decoder's text for encoder-decoder models


def verified(lm: LoadedModel, verify: bool = True, hookable: bool = True) -> LoadedModel:
    """``lm`` with ``spec.recording``, ``spec.attention_layers`` and ``spec.verification`` filled in.

    Raises:
        ValueError: the architecture cannot be shown exactly (one line: what was compared, what to do).
    """
    spec = lm.spec
    problem = None
    try:
        lm = _with_spec(lm, recording="hook")
        if not hookable:
            raise RecordingError(f"{spec.model_type} selects its attention classes by name and accepts no registered kernel")
        rec = run(lm, PROBE_TEXT, target=PROBE_TARGET if spec.kind == "encoder-decoder" else None)
        sinks = any(layer is not None and layer.sinks is not None for layer in rec.layers)
        lm = _with_spec(lm, attention_layers=tuple(rec.attention_layers), kind=_kind_from_masks(rec, spec.kind), attention_sinks=sinks)
        lm = _confirmed(lm, rec)
        if not verify:
            return _with_spec(lm, verification=None)
        reference = eager_attentions(lm, rec.inputs)
        diff, count = _compare_with_eager(lm, rec, reference)
        if rec.path != "recomputed":  # the probe is short, so its maps were captured; long inputs recompute them
            target = PROBE_TARGET if spec.kind == "encoder-decoder" else None
            recomputed = run(lm, PROBE_TEXT, target=target, path="recomputed")
            diff = max(diff, _compare_with_eager(lm, recomputed, reference)[0])
        tol = tolerance(spec.dtype)
        if diff > tol:
            problem = f"its recorded maps differ from eager's by up to {diff:.1e} (tolerance {tol:g})"
        else:
            return _with_spec(lm, verification=Verification(PROBE_TEXT, diff, True, count, tol))
    except RecordingError as exc:
        problem = str(exc)
    except ValueError:
        raise
    except Exception as exc:  # noqa: BLE001 - the model's own forward failed: say so in one line
        msg = f"{spec.model_type} failed on attnscope's probe text ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})"
        raise ValueError(msg) from None
    # The hook cannot be trusted for this architecture.
    if spec.kind == "encoder-decoder":
        msg = f"{spec.model_type} cannot be analysed: {problem}; encoder-decoder models are recorded through the hook only"
        raise ValueError(msg)
    if spec.requested_backend != "auto":
        msg = (
            f"{spec.model_type} cannot be recorded exactly with backend {spec.requested_backend!r}: {problem}. "
            "Use backend='auto', which falls back to eager's own weights where the hook cannot record"
        )
        raise ValueError(msg)
    no_attention = (
        f"{spec.model_type} has no attention modules and eager returned no weights (a recurrent, state-space or "
        "mixing model without softmax attention): there are no attention maps to show"
    )
    lm.model.set_attn_implementation("eager")
    lm = _with_spec(lm, recording="materialised", backend="eager")
    try:
        rec = run(lm, PROBE_TEXT)
    except RecordingError as exc:
        if isinstance(exc, NoEagerWeightsError) and not has_attention_modules(lm.model):
            raise ValueError(no_attention) from None
        msg = f"{spec.model_type} cannot be analysed: the hook failed ({problem}) and {exc}"
        raise ValueError(msg) from None
    except ValueError:
        raise
    except Exception as exc:  # noqa: BLE001 - eager itself failed on the probe
        if not has_attention_modules(lm.model):
            raise ValueError(no_attention) from None
        failed = f"eager output_attentions failed ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})"
        msg = f"{spec.model_type} cannot be analysed: the hook failed ({problem}) and {failed}"
        raise ValueError(msg) from None
    count = len(rec.attention_layers) * spec.n_heads
    check = Verification(PROBE_TEXT, 0.0, True, count, TOLERANCE, note=f"eager's own weights; the hook could not record: {problem}")
    lm = _confirmed(lm, rec)
    return _with_spec(lm, verification=check, attention_layers=tuple(rec.attention_layers), kind=_kind_from_masks(rec, spec.kind))


def _confirmed(lm: LoadedModel, rec) -> LoadedModel:
    """``lm`` with its layout's norm placement measured on the probe's hidden states (``architecture.confirm``)."""
    real = torch.from_numpy(rec.attention_mask == 1)
    sinks = any(layer is not None and layer.sinks is not None for layer in rec.layers)
    return dataclasses.replace(lm, layout=confirm(lm.layout, lm.model, rec.hidden_states, real, sinks))


def _with_spec(lm: LoadedModel, **changes) -> LoadedModel:
    return dataclasses.replace(lm, spec=dataclasses.replace(lm.spec, **changes))


def eager_attentions(lm: LoadedModel, inputs: dict) -> dict[str, list[torch.Tensor | None]]:
    """The model's own eager ``output_attentions`` for ``inputs``, one entry per layer and kind
    ("self"; for encoder-decoder models "encoder", "decoder" and "cross").

    The model is switched to eager for the call and back after: only at load, before it is shared.
    """
    model = lm.model
    current = model.config._attn_implementation
    base = lm.forward_module()
    try:
        model.set_attn_implementation("eager")
        with torch.inference_mode():
            extra = {"use_cache": False} if lm.spec.kind != "encoder" else {}
            out = base(**inputs, output_attentions=True, **extra)
    finally:
        model.set_attn_implementation(current)
    if lm.spec.kind == "encoder-decoder":
        return {
            "encoder": list(out.encoder_attentions or []),
            "decoder": list(out.decoder_attentions or []),
            "cross": list(out.cross_attentions or []),
        }
    return {"self": list(out.attentions or [])}


def _compare_with_eager(lm: LoadedModel, rec, eager: dict[str, list[torch.Tensor | None]]) -> tuple[float, int]:
    """Max |Δ| between every recorded head map and eager's (``eager_attentions``), over the probe's real tokens."""
    worst, count = 0.0, 0
    for kind, reference in eager.items():
        reader = rec.stack(kind)
        stack = reader.layers
        recorded = [i for i, layer in enumerate(stack) if layer is not None]
        present = [a for a in reference if a is not None]
        if len(reference) == len(stack):  # one entry per block, None for blocks without attention
            # A block the config declares linear attention (MiniMax's lightning attention) returns its own
            # non-softmax weights from eager: it has no map, and the hook rightly records nothing there.
            pairs = [
                (layer, a)
                for layer, a in enumerate(reference)
                if a is not None and not (stack[layer] is None and declared_without_softmax(lm.model.config, layer))
            ]
        else:  # only the attention layers' maps, in order
            pairs = list(zip(recorded, present))
        if [layer for layer, _ in pairs] != recorded:
            raise RecordingError(f"eager returned {kind} maps for {len(present)} layers, the hook recorded {len(recorded)}")
        rows, cols = reader.positions(0, include_padding=False)
        for layer, eager_map in pairs:
            expected = eager_map[0].float().cpu().numpy()[:, rows.numpy()][:, :, cols.numpy()]  # [H, q, k]
            if expected.shape[0] != lm.spec.n_heads:
                raise RecordingError(f"eager's layer {layer} has {expected.shape[0]} heads, the config says {lm.spec.n_heads}")
            for head in range(lm.spec.n_heads):
                got = reader.attention(layer, head)
                worst = max(worst, float(np.abs(got - expected[head]).max()))
                count += 1
    return worst, count


def _kind_from_masks(rec, configured: str) -> str:
    """ "decoder" when every layer's recorded mask is causal, "encoder" when any lets a query see later keys."""
    from attnscope.analysis.masks import recorded_allowed

    if configured == "encoder-decoder":
        return configured
    n = rec.n_padded
    upper = np.triu(np.ones((n, n), dtype=bool), k=1)
    sees_ahead = any(recorded_allowed(layer.mask, 0, n)[upper].any() for layer in rec.layers if layer is not None)
    if n < 2:
        return configured
    return "encoder" if sees_ahead else "decoder"
