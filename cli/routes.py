"""attnscope routes: information-flow routes of one prediction."""

from __future__ import annotations

from attnscope.cli.common import UsageError, add_model_options, load_model, one_text, out_path, write_json

__all__ = ["cmd_routes", "register"]


def cmd_routes(args) -> str:
    """The information-flow routes of one prediction as JSON: tokens, position, nodes, edges, meta."""
    from attnscope.models.routes import routes

    out = out_path(args.out, (".json",))
    text = one_text(args)
    if not 0 <= args.threshold < 1:
        msg = f"--threshold {args.threshold}: use a number in [0, 1) (0 keeps every edge that carries anything)"
        raise UsageError(msg)
    if args.target is not None and len(args.target) != 1:
        raise UsageError(f"--target given {len(args.target)} times; give one target text for the one --text")
    lm = load_model(args)
    graph = routes(lm, text, position=args.position, threshold=args.threshold, target=args.target[0] if args.target else None)
    write_json(out, graph.to_json(), ensure_ascii=False)
    top = graph.head_scores()
    lead = f"; strongest head: layer {int(top.iloc[0]['layer'])} head {int(top.iloc[0]['head'])}" if len(top) else ""
    return f"wrote {out} ({len(graph.nodes)} nodes, {len(graph.edges)} edges at threshold {args.threshold}{lead})"


def register(sub) -> None:
    from attnscope.models.spec import ROUTES_THRESHOLD as DEFAULT_THRESHOLD

    p = sub.add_parser("routes", help="the heads and blocks a prediction went through (information-flow routes), as JSON")
    add_model_options(p, max_length=False, target=True)
    p.add_argument(
        "--position",
        type=int,
        default=None,
        help="0-based token: a decoder's prediction made there, an encoder's representation of it, an encoder-decoder's "
        "target token (default the last token)",
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=DEFAULT_THRESHOLD,
        help=f"keep edges with importance above this, in [0, 1) (default {DEFAULT_THRESHOLD}; 0 keeps every edge)",
    )
    p.add_argument("--out", required=True, help="FILE.json")
    p.set_defaults(func=cmd_routes)
