"""attnscope heads: per-head statistics as CSV."""

from __future__ import annotations

from attnscope.cli.common import add_model_options, load_model, out_path, write_out

__all__ = ["cmd_heads", "register"]


def cmd_heads(args) -> str:
    """Per-head statistics of each text as CSV (one row per text, layer, head)."""
    import pandas as pd

    from attnscope.analysis.heads import head_table
    from attnscope.models import run

    out = out_path(args.out, (".csv",))
    lm = load_model(args)
    norms = args.measure == "norm"
    rec = run(lm, args.text, max_length=args.max_length, target=args.target, values=norms)
    frames = []
    for b in range(rec.batch_size):
        frame = head_table(rec, batch=b, norms=norms)  # norms: where heads write, not only look
        frame.insert(0, "text", b)
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True)
    if args.probe:
        from attnscope.models.probes import add_probe_scores

        table = add_probe_scores(lm, table, args.probe)
    from attnscope.analysis.head_types import classify_heads

    n_tokens = table["text"].map(lambda b: len(rec.tokens[b])).to_numpy()
    table = classify_heads(table, kind=lm.spec.kind, n_tokens=n_tokens)
    table = table.drop(columns=[c for c in table.columns if c.startswith("is_")])  # types/primary_type say it
    write_out(out, lambda path: table.to_csv(path, index=False))
    return f"wrote {out} ({len(table)} rows)"


def register(sub) -> None:
    p = sub.add_parser("heads", help="per-head statistics as CSV")
    add_model_options(p, target=True)
    p.add_argument("--probe", choices=["induction"], default=None, help="add a probe's score per head")
    p.add_argument(
        "--measure",
        choices=["weight", "norm"],
        default="weight",
        help="norm: add value-weighted norm columns (first/prev/special token share under ||alpha v W_O||, output norm and share)",
    )
    p.add_argument("--out", required=True, help="FILE.csv")
    p.set_defaults(func=cmd_heads)
