"""attnscope circuit: which earlier components feed one head's keys, queries and values over a text."""

from __future__ import annotations

from attnscope.cli.common import add_head_options, add_model_options, load_model, one_text, out_path, write_json

__all__ = ["cmd_circuit", "register"]


def cmd_circuit(args) -> str:
    """Head (layer, head)'s feeders as JSON: keys, queries, values (component -> share) and weight_only."""
    from attnscope.models.circuit import circuit

    out = out_path(args.out, (".json",))
    text = one_text(args)
    lm = load_model(args)
    found = circuit(lm, text, args.layer, args.head)
    write_json(out, found.to_json(), ensure_ascii=False)
    (key, share), (query, q_share) = found.top("keys", 1)[0], found.top("queries", 1)[0]
    return f"wrote {out} (keys fed most by {key}: {share:.2f}; queries by {query}: {q_share:.2f})"


def register(sub) -> None:
    p = sub.add_parser("circuit", help="which earlier heads, MLPs and embeddings feed one head's keys, queries and values, as JSON")
    add_model_options(p, max_length=False)
    add_head_options(p)
    p.add_argument("--out", required=True, help="FILE.json")
    p.set_defaults(func=cmd_circuit)
