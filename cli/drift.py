"""attnscope drift: a word's contextual embedding across contexts."""

from __future__ import annotations

from attnscope.cli.common import add_model_options, load_model, out_path, write_out

__all__ = ["cmd_drift", "register"]


def cmd_drift(args) -> str:
    """A word's cosine similarity across contexts at every layer, as CSV (layer, context_a, context_b, sense_a, sense_b, cosine)."""
    from attnscope.analysis.drift import DEFAULT_CONTEXTS, depth_frame, drift, parse_contexts, similarity_frame
    from attnscope.models import run

    out = out_path(args.out, (".csv",))
    contexts, senses = parse_contexts(args.context if args.context else list(DEFAULT_CONTEXTS))
    lm = load_model(args)
    result = drift(run(lm, contexts, max_length=args.max_length), lm.tokenizer, args.word, senses)
    table = similarity_frame(result)
    write_out(out, lambda path: table.to_csv(path, index=False))
    top = depth_frame(result).iloc[-1]
    notes = "".join(f"\nnote: {n}" for n in result.notes)
    return (
        f"wrote {out} ({len(table)} rows, {len(contexts)} contexts x {result.n_layers} layers); last layer: "
        f"within-sense {top.within_sense:.3f}, across-sense {top.across_sense:.3f}, self-similarity {top.self_similarity:.3f}, "
        f"anisotropy baseline {top.anisotropy_baseline:.3f}{notes}"
    )


def register(sub) -> None:
    p = sub.add_parser("drift", help="a word's contextual drift across contexts and layers, as CSV")
    add_model_options(p, texts=False)
    p.add_argument("--word", default="mouse", help="the word to follow (whole word, case-insensitive; default mouse)")
    p.add_argument(
        "--context",
        action="append",
        default=None,
        help="a sentence using the word, optionally 'sense | sentence'; repeat (default: animal and computer-device sentences)",
    )
    p.add_argument("--out", required=True, help="FILE.csv")
    p.set_defaults(func=cmd_drift)
