"""attnscope figure: one dashboard figure as PNG, SVG or HTML."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from attnscope.cli.common import UsageError, add_model_options, indices, load_model, out_path

__all__ = ["cmd_figure", "register"]


def cmd_figure(args) -> str:
    """One dashboard figure, written headless (PNG, SVG or HTML by the --out suffix; optional CSV of its data)."""
    from attnscope.viz.figures import VIEWS

    if args.view not in VIEWS:
        msg = f"--view {args.view!r}: choose one of {', '.join(VIEWS)}"
        raise UsageError(msg)
    out = out_path(args.out, (".png", ".svg", ".html"))
    data_out = out_path(args.data, (".csv",)) if args.data is not None else None
    from attnscope.models import load, run
    from attnscope.viz.export import chart_bytes, frame_bytes, write_all

    lm = load_model(args)
    rec = run(lm, args.text, max_length=args.max_length, target=args.target)
    other = None
    if args.model_b:
        lm_b = load(args.model_b, backend=args.backend, device=args.device, verify=not args.no_verify)
        args.loaded_specs = [*getattr(args, "loaded_specs", []), lm_b.spec]
        other = run(lm_b, args.text, max_length=args.max_length)
    if args.layer is not None:
        indices(str(args.layer), lm.spec.n_layers, "layer", "--layer")
    if args.head is not None:
        indices(str(args.head), lm.spec.n_heads, "head", "--head")
    window = None
    if args.window:
        try:
            window = tuple(int(v) for v in args.window.split(":"))
        except ValueError:
            window = ()
        if len(window) != 2:
            msg = f"--window {args.window!r}: give START:STOP token positions, e.g. 0:128"
            raise UsageError(msg)
    kwargs: dict[str, Any] = {"other": other}
    if window is not None:
        kwargs["window"] = window
    layer = 0 if args.layer is None else args.layer
    head = 0 if args.head is None else args.head
    chart, frame = VIEWS[args.view](rec, layer, head, **kwargs)
    figure = chart_bytes(chart, out.suffix.lower().lstrip("."))
    files: dict[str | Path, Callable[[Path], object]] = {out: lambda path: path.write_bytes(figure)}
    if data_out is not None:
        table = frame_bytes(frame)
        files[data_out] = lambda path: path.write_bytes(table)
    write_all(files)  # the figure and its data, both or neither
    return f"wrote {out}" + (f" and {data_out}" if data_out else "") + f" ({args.view}, {len(rec.tokens[0])} tokens)"


def register(sub) -> None:
    p = sub.add_parser("figure", help="a dashboard figure as PNG, SVG or HTML (views: heatmap, overview, masking, compare, ...)")
    add_model_options(p, target=True)
    p.add_argument("--model-b", default=None, help="second model (compare view: required; masking view: an encoder next to a decoder)")
    p.add_argument("--view", default="heatmap", help="heatmap, overview, masking, compare (or a view another page added)")
    p.add_argument("--layer", type=int, default=None, help="0-based layer (default 0)")
    p.add_argument("--head", type=int, default=None, help="0-based head (default 0)")
    p.add_argument("--window", default=None, help="heatmap zoom START:STOP (0-based token positions, STOP exclusive)")
    p.add_argument("--data", default=None, help="also write the data behind the figure as FILE.csv")
    p.add_argument("--out", required=True, help="FIG.png, FIG.svg or FIG.html")
    p.set_defaults(func=cmd_figure)
