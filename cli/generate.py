"""attnscope generate: generation with attention per step."""

from __future__ import annotations

import json

from attnscope.cli.common import UsageError, add_model_options, load_model, out_path, write_out

__all__ = ["cmd_generate", "register"]


def cmd_generate(args) -> str:
    """Generate from a prompt, recording every step: tokens, generated positions, per-step top-k, maps on request."""
    import numpy as np

    from attnscope.models.generation import generate

    out = out_path(args.out, (".npz",))
    if len(args.text) != 1:
        raise UsageError("generate takes one --text (the prompt)")
    lm = load_model(args)
    rec = generate(
        lm,
        args.text[0],
        max_new_tokens=args.new_tokens,
        do_sample=args.sample,
        seed=args.seed,
        temperature=args.temperature,
        top_k=args.top_k,
        stop_at_eos=not args.no_stop,
    )
    gen = rec.generation
    assert gen is not None  # generate's record always carries its steps
    arrays = {
        "tokens": np.array(rec.tokens[0]),
        "input_ids": rec.input_ids[0],
        "generated": gen.positions,
        "top_ids": gen.top_ids,
        "top_tokens": np.array(gen.top_tokens),
        "top_probs": gen.top_probs,
        "chosen_probs": gen.chosen_probs,
        "entropy": gen.entropy,
    }
    if args.maps:  # [layer, head, query, key] over the final sequence
        arrays["attention"] = rec.attention_stack()
    meta = {
        "model": lm.spec.name,
        "prompt": args.text[0],
        "text": rec.texts[0],
        "stopped": gen.stopped,
        "cut_short": gen.cut_short,
        "recording": gen.recording,
        "do_sample": gen.do_sample,
        "seed": gen.seed,
        "temperature": gen.temperature,
        "top_k": gen.top_k,
        "verification": lm.spec.recording_label,
    }
    arrays["meta"] = np.array(json.dumps(meta))
    write_out(out, lambda path: np.savez_compressed(path, **arrays))
    note = f" ({gen.stopped})" if gen.cut_short else ""
    return f"{rec.texts[0]!r}\nwrote {out} ({len(gen.positions)} new tokens{note})"


def register(sub) -> None:
    p = sub.add_parser("generate", help="generate from a prompt and record every step (tokens, top-k, maps) as .npz")
    add_model_options(p, max_length=False)
    p.add_argument("--new-tokens", type=int, default=32, help="how many tokens to generate (default 32)")
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--seed", type=int, default=None, help="sampling seed (same seed, same tokens)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (with --sample)")
    p.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens (with --sample)")
    p.add_argument("--no-stop", action="store_true", help="do not stop at the end-of-sequence token")
    p.add_argument("--maps", action="store_true", help="also write every head's map over the final sequence")
    p.add_argument("--out", required=True, help="FILE.npz")
    p.set_defaults(func=cmd_generate)
