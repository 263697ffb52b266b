"""attnscope lab: efficient-attention patterns imposed on a model."""

from __future__ import annotations

from attnscope.cli.common import UsageError, add_model_options, indices, load_model, out_path, write_out

__all__ = ["cmd_lab", "register"]


def cmd_lab(args) -> str:
    """Coverage and effect of efficient-attention patterns imposed on the model, one CSV row per pattern."""
    import pandas as pd

    from attnscope.analysis.patterns import parse_pattern
    from attnscope.models.lab import lab_table

    out = out_path(args.out, (".csv",))
    patterns = [parse_pattern(p) for p in args.pattern]  # refuse an unknown pattern before loading
    if len(args.text) != 1:
        raise UsageError("lab: give one --text (the effect is measured on one text)")
    lm = load_model(args)
    layers = indices(args.layers, lm.spec.n_layers, "layer") if args.layers is not None else None
    target = args.target[0] if args.target else None
    if args.target is not None and len(args.target) != 1:
        raise UsageError("lab: give one --target (the decoder's text for the one --text)")
    table, note = lab_table(
        lm, args.text[0], patterns, layers=layers, max_length=args.max_length, effect=not args.coverage_only, target=target
    )
    if note:  # the effect cannot be measured on this model: nothing is written rather than half a table
        msg = f"{note}; nothing written (pass --coverage-only to write the coverage alone)"
        raise ValueError(msg)
    table.insert(0, "model", lm.spec.name)
    write_out(out, lambda path: table.to_csv(path, index=False))
    what = "coverage only" if args.coverage_only else "approximations imposed on a model trained with full attention"
    lines = [f"wrote {out} ({len(table)} pattern(s), {lm.spec.name}; {what})"]
    for row in table.itertuples():
        kl = f", KL {row.kl:.4f} nats" if pd.notna(getattr(row, "kl", None)) else ""
        cosine = f", last-layer cosine {row.cosine_last:.4f}" if pd.notna(getattr(row, "cosine_last", None)) else ""
        lines.append(f"{row.pattern}: coverage {row.coverage:.3f} (worst head {row.worst_head}: {row.min_head_coverage:.3f}){kl}{cosine}")
    return "\n".join(lines)


def register(sub) -> None:
    p = sub.add_parser("lab", help="impose sparse, low-rank, kernel or fewer-KV-head attention: coverage and effect, as CSV")
    add_model_options(p, target=True)
    p.add_argument(
        "--pattern",
        action="append",
        required=True,
        help="name:params, repeat: window:W[,causal], dilated:W,D, strided:L, fixed:L,C, global:G|special|0+5,W, "
        "bigbird:W,G,R[,seed], block:B, recurrence:C[,M], svd:R, linformer:K, performer:M[,seed], linear, topk:K, kv:G, "
        "scale:τ, full",
    )
    p.add_argument("--layers", default=None, help="comma-separated 0-based layers to impose on (default all)")
    p.add_argument(
        "--coverage-only",
        action="store_true",
        help="measure coverage only (no forward with the pattern); the only choice for a materialised model",
    )
    p.add_argument("--out", required=True, help="FILE.csv")
    p.set_defaults(func=cmd_lab)
