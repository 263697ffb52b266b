"""attnscope contributions: context mixing, attributions and their faithfulness."""

from __future__ import annotations

import json
from typing import Any

from attnscope.cli.common import UsageError, add_model_options, load_model, one_text, out_path, write_out

__all__ = ["cmd_contributions", "cmd_faithfulness", "register"]


def cmd_contributions(args) -> str:
    """One method's per-layer context-mixing maps, their rollout and the input-token attribution of a prediction, as .npz."""
    import numpy as np

    from attnscope.models.contributions import check_method, contributions

    out = out_path(args.out, (".npz",))
    check_method(args.method)
    text = one_text(args)
    lm = load_model(args)
    result = contributions(lm, text, args.method, position=args.predict, target_token=args.target_token, contrast=args.contrast)
    n = len(result.tokens)
    arrays: dict[str, Any] = {
        "attribution": result.attribution.astype(np.float32),
        "tokens": np.array(result.tokens),
        "meta": np.array(json.dumps({**result.meta, "model": lm.spec.name, "position": result.position}, default=str)),
    }
    if result.maps is not None:
        arrays["contributions"] = result.maps.astype(np.float32)
    if result.rolled is not None:
        arrays["rolled"] = result.rolled.astype(np.float32)
    write_out(out, lambda path: np.savez_compressed(path, **arrays))
    return f"wrote {out} ({args.method}, {n} tokens; explains {result.target})"


def cmd_faithfulness(args) -> str:
    """Comprehensiveness and sufficiency (AOPC) of each method's ranking against random ones, and their agreement, as CSV."""
    from attnscope.models.contributions import check_method, explain

    out = out_path(args.out, (".csv",))
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    for method in methods or []:
        check_method(method)  # before seconds are spent on a load
    if args.data is not None:
        return _faithfulness_over_texts(args, out, methods)
    if args.text is None:
        raise UsageError("give --text (one text) or --data FILE (one text per line, as corpus jobs read)")
    text = one_text(args)
    lm = load_model(args)
    result = explain(lm, text, methods=methods, position=args.predict, target_token=args.target_token, contrast=args.contrast)
    table = result.faithfulness.table.copy()
    spearman = result.faithfulness.spearman
    for method in spearman.columns:
        table[f"spearman_{method}"] = table["method"].map(spearman[method])
    table["explains"] = result.target  # what every row is about: the predicted token (decoded), its probability, where
    for key, value in (result.prediction.facts() if result.prediction is not None else {}).items():
        table[key] = value
    write_out(out, lambda path: table.to_csv(path, index=False))
    better = ", ".join(table.loc[table["beats_random"], "method"]) or "none"
    return f"wrote {out} ({len(table)} methods; better than random on this text: {better})"


def _faithfulness_over_texts(args, out, methods) -> str:
    """The same table over every text of a file: per-method means with 95% intervals, how often each beats random."""
    from attnscope.corpus.reader import read_corpus
    from attnscope.models.contributions import explain_texts

    if args.text:
        raise UsageError("give --text or --data, not both")
    corpus = read_corpus(args.data, text_field=args.text_field)
    texts = corpus.texts["text"].tolist()[: args.limit] if args.limit else corpus.texts["text"].tolist()
    if not texts:
        raise UsageError(f"--data {args.data}: no usable text in it ({len(corpus.bad)} rows unusable)")
    lm = load_model(args)
    try:
        result = explain_texts(lm, texts, methods=methods, position=args.predict, target_token=args.target_token, contrast=args.contrast)
    except ValueError as exc:
        raise UsageError(f"--data {args.data}: {exc}") from None
    table, skipped = result.table, result.skipped
    write_out(out, lambda path: table.to_csv(path, index=False))
    best = table.sort_values("beats_random_share", ascending=False).iloc[0]
    note = f"; {len(skipped)} skipped ({skipped[0]})" if skipped else ""
    return (
        f"wrote {out} ({len(table)} methods over {result.scored} texts; most often better than random: "
        f"{best['method']} on {int(best['beats_random_texts'])} of {int(best['texts'])}{note})"
    )


def _add_target_options(p) -> None:
    p.add_argument("--target-token", default=None, help="decoders: explain this next token instead of the top one, as typed (e.g. ' Mary')")
    p.add_argument("--contrast", default=None, help="decoders: explain the target rather than this token (their logit difference)")


def register(sub) -> None:
    from attnscope.models.spec import GRADIENT_METHODS, MIXING_METHODS

    METHODS = MIXING_METHODS + GRADIENT_METHODS

    p = sub.add_parser(
        "contributions", help="context mixing or attribution of one method: per-layer maps, rollout, input-token shares (.npz)"
    )
    add_model_options(p, max_length=False)
    p.add_argument("--method", required=True, help=f"one of {', '.join(METHODS)}")
    p.add_argument(
        "--predict",
        type=int,
        default=None,
        help="0-based position: a decoder's prediction made there (default the last token); an encoder's token (default the sentence embedding)",
    )
    _add_target_options(p)
    p.add_argument("--out", required=True, help="FILE.npz")
    p.set_defaults(func=cmd_contributions)
    p = sub.add_parser(
        "faithfulness", help="which attribution methods beat random rankings on this text or a file of texts (ERASER AOPC), as CSV"
    )
    add_model_options(p, texts=False, max_length=False)
    p.add_argument("--text", action="append", default=None, help="the text to explain")
    p.add_argument("--data", default=None, help="a file of texts (.txt one per line, .jsonl, .csv, .parquet): means over texts")
    p.add_argument("--text-field", default=None, help="--data: the JSON field / column holding the text (default text)")
    p.add_argument("--limit", type=int, default=None, help="--data: score the first N texts only")
    p.add_argument("--methods", default=None, help=f"comma-separated (default all that apply): {', '.join(METHODS)}")
    p.add_argument("--predict", type=int, default=None, help="0-based position of the prediction (see contributions)")
    _add_target_options(p)
    p.add_argument("--out", required=True, help="FILE.csv")
    p.set_defaults(func=cmd_faithfulness)
