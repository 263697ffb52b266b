"""attnscope lens: the logit lens."""

from __future__ import annotations

import json

from attnscope.cli.common import add_model_options, load_model, out_path, write_out

__all__ = ["cmd_lens", "register"]


def cmd_lens(args) -> str:
    """The logit lens of a decoder as CSV: per layer and position, the top tokens and the rank of the next one."""
    from attnscope.models import run

    out = out_path(args.out, (".csv",))
    lm = load_model(args)
    rec = run(lm, args.text, max_length=args.max_length)
    frames = []
    for b in range(rec.batch_size):
        frame = rec.logit_lens(lm, batch=b, top_k=args.top_k)
        frame.insert(0, "text", b)
        frames.append(frame)
    import pandas as pd

    table = pd.concat(frames, ignore_index=True)
    for column in ("top_tokens", "top_probs"):
        table[column] = table[column].map(lambda v: json.dumps(v, ensure_ascii=False))
    write_out(out, lambda path: table.to_csv(path, index=False))
    return f"wrote {out} ({len(table)} rows: {lm.spec.n_layers + 1} layers x positions)"


def register(sub) -> None:
    p = sub.add_parser("lens", help="the logit lens of a decoder (top tokens per layer and position) as CSV")
    add_model_options(p)
    p.add_argument("--top-k", type=int, default=5, help="candidates per layer and position (default 5)")
    p.add_argument("--out", required=True, help="FILE.csv")
    p.set_defaults(func=cmd_lens)
