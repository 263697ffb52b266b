"""attnscope anatomy: what a model is made of."""

from __future__ import annotations

from attnscope.cli.common import UsageError, add_model_options, load_model, out_path, write_json

__all__ = ["cmd_anatomy", "parse_lengths", "register"]


def parse_lengths(spec: str) -> list[int]:
    try:
        values = [int(v) for v in spec.split(",") if v.strip()]
    except ValueError:
        values = []
    if len(values) < 3 or min(values) < 1:
        msg = f"--cost {spec!r}: give at least 3 comma-separated token counts of at least 1 (the n² fit needs 3), e.g. 128,256,512,1024"
        raise UsageError(msg)
    return values


# -- anatomy (issue 25) ------------------------------------------------------------------------------
def cmd_anatomy(args) -> str:
    """What the model is made of, read from the model itself, as JSON (the contract keys in docs/cli.md)."""
    from attnscope.models.anatomy import anatomy, attention_cost, heads_table, probe_record

    out = out_path(args.out, (".json",))
    lengths = parse_lengths(args.cost) if args.cost else None  # refuse bad counts before spending seconds on a load
    lm = load_model(args)
    facts = anatomy(lm, probe_record(lm, args.text))
    data = facts.to_json()
    data["heads_table"] = heads_table(facts).to_dict(orient="records")
    if lengths:
        measured, fits = attention_cost(
            facts.n_heads, facts.n_kv_heads, facts.head_dim, lengths=lengths, dtype=next(lm.model.parameters()).dtype, device=lm.spec.device
        )
        data["attention_cost"] = {"measured": measured.to_dict(orient="records"), "fit": fits}
    write_json(out, data, indent=2, default=str)
    p = facts.parameters
    return (
        f"wrote {out} ({lm.spec.name}: {p['total']:,} parameters, {facts.norm_placement}-LN, {facts.positional} positions, "
        f"{facts.n_heads} heads / {facts.n_kv_heads} KV heads x {facts.head_dim}, {facts.kv_cache_bytes_per_token:,} KV-cache bytes per token)"
    )


def register(sub) -> None:
    p = sub.add_parser("anatomy", help="parameters by component, norm placement, positions, heads and KV cache, as JSON")
    add_model_options(p, texts=False, max_length=False)
    p.add_argument("--text", default=None, help="the text the norm placement is read from (default a short probe)")
    p.add_argument(
        "--cost",
        default=None,
        metavar="N,N,N",
        help="also time one layer's attention at these token counts (e.g. 128,256,512,1024,2048,4096; minutes on a CPU)",
    )
    p.add_argument("--out", required=True, help="FILE.json")
    p.set_defaults(func=cmd_anatomy)
