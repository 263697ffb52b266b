"""attnscope extract: attention maps, tokens and hidden states as .npz."""

from __future__ import annotations

import json
from typing import Any

from attnscope.cli.common import add_model_options, indices, load_model, out_path, write_out

__all__ = ["cmd_extract", "register"]


def cmd_extract(args) -> str:
    """All (or chosen) attention maps, tokens and hidden states of each text as one .npz."""
    import numpy as np

    from attnscope.models import run

    out = out_path(args.out, (".npz",))
    lm = load_model(args)
    rec = run(lm, args.text, padding_side=args.padding_side, max_length=args.max_length, target=args.target)
    layers = indices(args.layers, lm.spec.n_layers, "layer")
    heads = indices(args.heads, lm.spec.n_heads, "head")
    layers = [l for l in layers if l in rec.attention_layers]  # hybrids: blocks with attention only
    arrays: dict[str, Any] = {}
    for b in range(rec.batch_size):
        # [layer, head, query, key] over real tokens
        arrays[f"attention_{b}"] = rec.attention_stack(b, layers=layers, heads=heads)
        arrays[f"tokens_{b}"] = np.array(rec.tokens[b])
        if rec.target_tokens is not None:  # encoder-decoder: the decoder's self-attention and cross-attention
            decoder_layers = range(lm.spec.n_decoder_layers)
            arrays[f"decoder_attention_{b}"] = rec.decoder.maps(b, layers=decoder_layers, heads=heads)
            arrays[f"cross_attention_{b}"] = rec.cross.maps(b, layers=decoder_layers, heads=heads)
            arrays[f"target_tokens_{b}"] = np.array(rec.target_tokens[b])
        if not args.no_hidden:
            arrays[f"hidden_{b}"] = np.stack([rec.hidden(l, b) for l in range(lm.spec.n_layers + 1)])  # [layer+1, n, d]
    meta = {
        "model": lm.spec.name,
        "kind": lm.spec.kind,
        "backend": lm.spec.backend,
        "recording": lm.spec.recording,
        "verification": lm.spec.recording_label,
        "layers": layers,
        "heads": heads,
        "texts": rec.texts,
        "padding_side": rec.padding_side,
        "axes": "attention_b: [layer, head, query, key]",
    }
    arrays["meta"] = np.array(json.dumps(meta))
    write_out(out, lambda path: np.savez_compressed(path, **arrays))
    return f"wrote {out} ({rec.batch_size} text(s), {len(layers)} layers x {len(heads)} heads)"


def register(sub) -> None:
    p = sub.add_parser("extract", help="attention maps, tokens and hidden states as .npz")
    add_model_options(p, target=True)
    p.add_argument("--padding-side", choices=["left", "right"], default=None)
    p.add_argument("--layers", help="comma-separated 0-based layers (default all)")
    p.add_argument("--heads", help="comma-separated 0-based heads (default all)")
    p.add_argument("--no-hidden", action="store_true", help="leave hidden states out")
    p.add_argument("--out", required=True, help="FILE.npz")
    p.set_defaults(func=cmd_extract)
