"""attnscope padding: what padding changes and what it must not."""

from __future__ import annotations

from attnscope.cli.common import add_model_options, load_model, out_path, write_json

__all__ = ["cmd_padding", "register"]


def cmd_padding(args) -> str:
    """Padded batch vs each text alone, right/left padding with and without the mask, as JSON."""
    from attnscope.analysis.padding import SIDES, padding_study, study_json
    from attnscope.models import run

    out = out_path(args.out, (".json",))
    lm = load_model(args)
    sides = (args.padding_side,) if args.padding_side else SIDES
    study = padding_study(
        lambda texts, side, mask: run(lm, texts, padding_side=side, attention_mask=mask, max_length=args.max_length), args.text, sides
    )
    write_json(out, study_json(study, lm.spec.name), indent=1)
    lines = [f"wrote {out}"]
    for s in study.settings:
        verdict = "matches unpadded" if s.matches_unpadded else "DIFFERS from unpadded"
        lines.append(
            f"{s.name}: {verdict} (max relative {s.max_relative_diff:.2e}, max |diff| {s.max_hidden_diff:.2e}, "
            f"max pad attention {s.layers['pad_attention_max'].max():.4f})"
        )
    return "\n".join(lines)


def register(sub) -> None:
    p = sub.add_parser("padding", help="what padding a batch changes (right/left, with/without mask), as JSON")
    add_model_options(p)
    p.add_argument("--padding-side", choices=["left", "right"], default=None, help="only this side (default both)")
    p.add_argument("--out", required=True, help="FILE.json")
    p.set_defaults(func=cmd_padding)
