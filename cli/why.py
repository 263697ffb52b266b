"""attnscope why: one attention score split by the components that wrote its query and its key."""

from __future__ import annotations

from attnscope.cli.common import add_head_options, add_model_options, load_model, one_text, out_path, write_json

__all__ = ["cmd_why", "register"]


def cmd_why(args) -> str:
    """Head (layer, head)'s scaled score of query I and key J, split into query-side and key-side components, as JSON."""
    from attnscope.models.why import why

    out = out_path(args.out, (".json",))
    text = one_text(args)
    lm = load_model(args)
    split = why(lm, text, args.layer, args.head, args.query, args.key, top=args.top)
    write_json(out, split.to_json(), ensure_ascii=False)
    lead = max(split.query_side, key=lambda c: abs(split.query_side[c]))
    feeder = max(split.key_side, key=lambda c: abs(split.key_side[c]))
    return f"wrote {out} (score {split.score:.3f}, weight {split.weight:.3f}; strongest query side {lead}, strongest key side {feeder})"


def register(sub) -> None:
    p = sub.add_parser("why", help="why a head attends: one score split into what wrote the query and the key, as JSON")
    add_model_options(p, max_length=False)
    add_head_options(p)
    p.add_argument("--query", type=int, required=True, help="0-based query token")
    p.add_argument("--key", type=int, required=True, help="0-based key token (a decoder's query sees keys 0..itself)")
    p.add_argument("--top", type=int, default=10, help="how many of the strongest component pairs to list (default 10)")
    p.add_argument("--out", required=True, help="FILE.json")
    p.set_defaults(func=cmd_why)
