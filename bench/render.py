"""Chart build time and bytes sent to the browser, per dashboard page, at 128, 512 and 2,048 tokens.

    python bench/render.py [--sizes 128,512,2048] [--decoder smollm2] [--encoder minilm]

For each chart: ``engine s`` (recomputing the attention maps / statistics it needs from the recorded
queries and keys, and for the overview pooling them to thumbnails; cached per text in the app; the
forward pass itself is not counted), ``build s`` (frame + Altair chart + ``to_dict``), ``JSON`` (the spec with its data inline, what the HTML export holds) and ``sent`` (what
Streamlit ships: the spec plus each dataset as Arrow). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import altair as alt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402

from attnscope.analysis.masks import mask_categories, recorded_allowed, right_share  # noqa: E402
from attnscope.viz.compare import layer_profile, profile_chart, shared_domain  # noqa: E402
from attnscope.viz.heatmap import attention_frame, heatmap, token_bars, token_frame  # noqa: E402
from attnscope.viz.masking import mask_chart, mask_frame, right_share_chart, right_share_frame  # noqa: E402
from attnscope.viz.overview import overview, overview_frame, thumbnail  # noqa: E402

PARAGRAPH = (
    "The mouse ran along the skirting board while the cat slept by the fire. Later, someone clicked the mouse "
    "to open a file, and the screen lit up with rows of numbers about attention heads and their patterns. "
)


def chart_frames(chart) -> list[pd.DataFrame]:
    """The DataFrames a chart (and its layers / concatenated parts) carries, each once."""
    found, stack = {}, [chart]
    while stack:
        part = stack.pop()
        data = getattr(part, "data", None)
        if isinstance(data, pd.DataFrame):
            found[id(data)] = data
        for attr in ("layer", "hconcat", "vconcat", "concat"):
            children = getattr(part, attr, None)
            if isinstance(children, list):
                stack.extend(children)
    return list(found.values())


def arrow_bytes(frame: pd.DataFrame) -> int:
    table = pa.Table.from_pandas(frame, preserve_index=False)  # categories stay Arrow dictionaries, as Streamlit sends them
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.tell()


def sent_bytes(chart, spec: dict) -> tuple[int, int]:
    """(inline JSON bytes, Streamlit bytes = spec without data + Arrow IPC of each DataFrame)."""
    inline = len(json.dumps(spec).encode())
    bare = {k: v for k, v in spec.items() if k != "datasets"}
    return inline, len(json.dumps(bare).encode()) + sum(arrow_bytes(f) for f in chart_frames(chart))


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def measure(rows, page, chart_name, n, model, engine_s, build):
    (chart, spec), build_s = timed(lambda: (lambda c: (c, c.to_dict()))(build()))
    inline, sent = sent_bytes(chart, spec)
    rows.append(
        {
            "page": page,
            "chart": chart_name,
            "tokens": n,
            "model": model,
            "engine s": engine_s,
            "build s": build_s,
            "JSON MB": inline / 1e6,
            "sent MB": sent / 1e6,
        }
    )


def bench_size(rows, n, decoder, encoder):
    from attnscope.models import run

    text = PARAGRAPH * (n // 30 + 2)
    dec = run(decoder, [text], max_length=n)
    enc = run(encoder, [text], max_length=n) if encoder.spec.max_positions and n <= encoder.spec.max_positions else None
    tokens = dec.tokens[0]
    n_dec = len(tokens)
    name = dec.spec.name
    causal = np.tri(n_dec, dtype=bool)

    # Attention page: the selected head, the token panel, the overview of every head.
    weights, engine_s = timed(lambda: dec.attention(0, 0))
    measure(
        rows,
        "Attention",
        "heatmap",
        n_dec,
        name,
        engine_s,
        lambda: heatmap(attention_frame(weights, tokens, layer=0, head=0, allowed=causal), select="cell_pick"),
    )
    measure(rows, "Attention", "token panel", n_dec, name, 0.0, lambda: token_bars(token_frame(weights, tokens, n_dec // 2)))
    # Like the page: every head's map -> 32x32 thumbnail (and right-of-query share) is the cached step, one map
    # at a time (all 270 maps at 2,048 tokens would hold 4.5 GB); the frame (PNG encoding) and chart are the build.
    spec = dec.spec
    thumbs = np.zeros((spec.n_layers, spec.n_heads, 32, 32), dtype=np.float32)
    shares = np.zeros((spec.n_layers, spec.n_heads))
    maps_s = thumbs_s = share_s = 0.0
    for l in range(spec.n_layers):
        for h in range(spec.n_heads):
            m, dt = timed(lambda l=l, h=h: dec.attention(l, h))
            maps_s += dt
            thumb, dt = timed(lambda m=m: thumbnail(m, causal=True))
            thumbs_s += dt
            thumbs = thumbs[:, :, : thumb.shape[0], : thumb.shape[1]]
            thumbs[l, h] = thumb
            shares[l, h], dt = timed(lambda m=m: float(right_share(m)))
            share_s += dt
    measure(
        rows,
        "Attention",
        "overview (all heads)",
        n_dec,
        name,
        maps_s + thumbs_s,
        lambda: overview(overview_frame(thumbs, kv_group=dec.spec.kv_group), selected=(0, 0)),
    )

    # Masking page: the mask, the masked attention, the right-of-query share of every head.
    allowed = recorded_allowed(dec.layers[0].mask, 0, dec.n_padded)
    measure(rows, "Masking", "mask", n_dec, name, 0.0, lambda: mask_chart(mask_frame(mask_categories(allowed), tokens)))
    measure(
        rows,
        "Masking",
        "masked attention",
        n_dec,
        name,
        0.0,
        lambda: heatmap(attention_frame(weights, tokens, allowed=allowed), domain=(0.0, 1.0)),
    )
    measure(
        rows, "Masking", "right-of-query share", n_dec, name, maps_s + share_s, lambda: right_share_chart(right_share_frame(shares, name))
    )

    # Compare page: two heatmaps on one scale, profiles by depth (needs a second model that takes n tokens).
    if enc is not None:
        enc_weights = enc.attention(0, 0)
        domain = shared_domain(weights, enc_weights)
        measure(
            rows,
            "Compare",
            "two heatmaps",
            n_dec,
            f"{enc.spec.name} + {name}",
            0.0,
            lambda: alt.hconcat(
                heatmap(attention_frame(enc_weights, enc.tokens[0]), domain=domain, standalone=False),
                heatmap(attention_frame(weights, tokens, allowed=causal), domain=domain, standalone=False),
            ),
        )
        stats, stats_s = timed(lambda: (dec.head_stats(), enc.head_stats()))
        profiles = pd.concat([layer_profile(stats[0], name, dec.spec.n_layers), layer_profile(stats[1], enc.spec.name, enc.spec.n_layers)])
        measure(
            rows, "Compare", "profiles by depth", n_dec, f"{enc.spec.name} + {name}", stats_s, lambda: profile_chart(profiles, "entropy")
        )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="128,512,2048", help="comma-separated token counts")
    parser.add_argument("--decoder", default="smollm2", help="a decoder that takes the largest size")
    parser.add_argument("--encoder", default="minilm", help="second model for the Compare page (sizes it cannot take are skipped)")
    args = parser.parse_args(argv)
    from attnscope.models import load

    decoder, encoder = load(args.decoder), load(args.encoder)
    rows = []
    for n in [int(v) for v in args.sizes.split(",")]:
        bench_size(rows, n, decoder, encoder)
        print(f"… {n} tokens done", file=sys.stderr, flush=True)
    table = pd.DataFrame(rows)
    fmt = {"engine s": "{:.2f}", "build s": "{:.2f}", "JSON MB": "{:.2f}", "sent MB": "{:.2f}"}
    for col, f in fmt.items():
        table[col] = table[col].map(f.format)
    print(markdown(table))
    target = [r for r in rows if r["tokens"] >= 2048 and r["chart"] in ("heatmap", "overview (all heads)")]
    if target:
        mb = sum(r["sent MB"] for r in target)
        build = sum(r["build s"] for r in target)
        print(f"\nheatmap + overview at {target[0]['tokens']} tokens: {mb:.2f} MB sent, {build:.2f} s to build (target: < 5 MB, < 1 s)")
    return 0


def markdown(table: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "|".join("---" for _ in table.columns) + "|"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
