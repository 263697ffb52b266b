"""attnscope knockout: knocking out heads and edges; head importance."""

from __future__ import annotations

from attnscope.cli.common import UsageError, add_model_options, load_model, out_path, write_json, write_out

__all__ = ["cmd_importance", "cmd_knockout", "parse_edges", "parse_head_pairs", "register"]


def parse_head_pairs(spec: str, what: str = "--heads") -> list[tuple[int, int]]:
    """ "17.3,18.6" -> [(17, 3), (18, 6)] (layer.head, 0-based)."""
    pairs = []
    for item in spec.split(","):
        layer, dot, head = item.strip().partition(".")
        if not dot or not layer.isdigit() or not head.isdigit():
            msg = f"{what} {item!r}: write layer.head pairs, e.g. 17.3,18.6 (0-based)"
            raise UsageError(msg)
        pairs.append((int(layer), int(head)))
    return pairs


def parse_edges(spec: str) -> list[tuple[int, int, int, int]]:
    """ "3.1:5>2" -> [(3, 1, 5, 2)]: layer.head:query>key (0-based token positions)."""
    edges = []
    for item in spec.split(","):
        head_part, colon, edge = item.strip().partition(":")
        query, gt, key = edge.partition(">")
        if not colon or not gt or not query.isdigit() or not key.isdigit():
            msg = f"--edges {item!r}: write layer.head:query>key, e.g. 3.1:5>2 (0-based)"
            raise UsageError(msg)
        ((layer, head),) = parse_head_pairs(head_part, "--edges")
        edges.append((layer, head, int(query), int(key)))
    return edges


def cmd_knockout(args) -> str:
    """Knock heads (or edges) out and write what changed as JSON."""
    from attnscope.models.knockout import knockout

    out = out_path(args.out, (".json",))
    if len(args.text) != 1:
        raise UsageError("knockout takes one --text")
    heads = parse_head_pairs(args.heads) if args.heads else []
    edges = parse_edges(args.edges) if args.edges else []
    lm = load_model(args)
    result = knockout(lm, args.text[0], heads=heads, edges=edges, mode=args.mode)
    summary = {"model": lm.spec.name, "text": args.text[0], **result.summary()}
    write_json(out, summary, indent=2, ensure_ascii=False)
    what = (
        f"KL {result.kl:.4f}, {result.target!r} {result.target_prob_before:.3f} -> {result.target_prob_after:.3f}"
        if result.kl is not None
        else f"last hidden states' cosine {result.hidden_cosine:.4f}"
    )
    return f"wrote {out} ({what})"


def cmd_importance(args) -> str:
    """Every head knocked out once: the change in the text's next-token loss, as CSV."""
    from attnscope.models.knockout import head_importance

    out = out_path(args.out, (".csv",))
    if len(args.text) != 1:
        raise UsageError("importance takes one --text")
    lm = load_model(args)
    table = head_importance(lm, args.text[0], batch_size=args.batch)
    write_out(out, lambda path: table.to_csv(path, index=False))
    top = table.sort_values("delta", ascending=False).iloc[0]
    return f"wrote {out} ({len(table)} heads; most important: layer {int(top['layer'])} head {int(top['head'])}, delta {top['delta']:.4f})"


def register(sub) -> None:
    p = sub.add_parser("knockout", help="knock heads or query>key edges out and report what changed, as JSON")
    add_model_options(p, max_length=False)
    p.add_argument("--heads", help="layer.head pairs, e.g. 17.3,18.6 (0-based)")
    p.add_argument("--edges", help="layer.head:query>key, e.g. 3.1:5>2 (token positions, 0-based)")
    p.add_argument("--mode", choices=["zero", "mean"], default="zero", help="zero (remove; renormalise an edge's row) or mean-ablate")
    p.add_argument("--out", required=True, help="FILE.json")
    p.set_defaults(func=cmd_knockout)
    p = sub.add_parser("importance", help="every head knocked out once: change in next-token loss, as CSV")
    add_model_options(p, max_length=False)
    p.add_argument("--batch", type=int, default=32, help="knocked-out variants per forward (default 32)")
    p.add_argument("--out", required=True, help="FILE.csv")
    p.set_defaults(func=cmd_importance)
