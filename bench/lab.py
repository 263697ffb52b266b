"""Benchmark: the lab's patterns imposed on a bundled model: coverage, effect and the measured forward time.

Prints markdown tables: per pattern, mean coverage, KL, last-layer cosine and the time of the imposed
forward next to the full one; then the formula costs at 32k tokens. The imposed forward computes each
pattern densely (a simulation, to compare cell by cell), so its time is not an efficient kernel's.
Run: ``python bench/lab.py [--model smollm2] [--tokens 256] [--repeats 2]``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attnscope.analysis.cost import cost_frame, flash_io_frame, kv_cache_frame  # noqa: E402
from attnscope.analysis.patterns import parse_pattern  # noqa: E402
from attnscope.models import load, run  # noqa: E402
from attnscope.models.lab import _forward, _inputs, imposing, lab_coverage, lab_effect  # noqa: E402
from attnscope.models.profile import best_of  # noqa: E402
from bench.common import long_text, machine  # noqa: E402

PATTERNS = [
    "full",
    "window:32",
    "window:8",
    "strided:16",
    "bigbird:16,2,3",
    "block:32",
    "svd:16",
    "linformer:32",
    "performer:128",
    "linear",
    "topk:16",
    "kv:1",
]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--pattern", action="append", default=None, help="a pattern (repeat; default a set of each family)")
    args = parser.parse_args(argv)
    patterns = args.pattern or PATTERNS

    lm = load(args.model, device="cpu")
    spec = lm.spec
    text = long_text(args.tokens)
    inputs, special = _inputs(lm, text, args.tokens)
    n = int(inputs["input_ids"].shape[1])
    rec = run(lm, text, max_length=args.tokens)
    print(f"machine: {machine()}")
    print(f"{spec.name}: {spec.n_layers} layers x {spec.n_heads} heads ({spec.n_kv_heads} KV), {n} tokens, pattern on every layer\n")
    full_s = best_of(lambda: _forward(lm, inputs), args.repeats)[0]
    rows = []
    print("| pattern | mean coverage | worst head | KL (nats) | cosine (last) | loss | forward (s) | vs full |")
    print("|---|---|---|---|---|---|---|---|")
    for label in patterns:
        pattern = parse_pattern(label)
        cov = lab_coverage(rec, pattern)
        effect = lab_effect(lm, text, pattern, max_length=args.tokens)

        def imposed(pattern=pattern):
            with imposing(lm, pattern, special=special):
                _forward(lm, inputs)

        seconds = best_of(imposed, args.repeats)[0]
        full_s = min(full_s, best_of(lambda: _forward(lm, inputs), args.repeats)[0])  # interleaved: a shared CPU drifts
        rows.append((label, cov, effect, seconds))
    for label, cov, effect, seconds in rows:
        kl = "—" if effect.kl is None else f"{effect.kl:.4f}"
        loss = "—" if effect.loss_imposed is None else f"{effect.loss_imposed:.3f}"
        print(
            f"| {label} | {cov['coverage'].mean():.3f} | {cov['coverage'].min():.3f} | {kl} | {effect.cosine:.4f} | {loss} | "
            f"{seconds:.2f} | {seconds / full_s:.2f}x |"
        )
    print(f"\nfull-attention forward: {full_s:.2f} s (best of {args.repeats})\n")

    head_dim = spec.head_dim
    print(f"| formula at n = 32,768 ({spec.name}, d = {head_dim}) | attention GFLOPs | of full |")
    print("|---|---|---|")
    for label in patterns:
        frame = cost_frame(parse_pattern(label), head_dim, spec.n_heads, spec.n_layers, lengths=(32768,))
        row = frame.iloc[-1]
        print(f"| {label} | {row['gflops']:,.0f} | {row['flops_ratio']:.4f} |")
    cache = kv_cache_frame(spec.n_layers, spec.n_heads, spec.n_kv_heads, head_dim)
    print("\n| KV heads | bytes per token (bf16) | MB per 4k-token sequence |")
    print("|---|---|---|")
    for row in cache.itertuples():
        print(f"| {row.kind}{' (model)' if row.model else ''} | {row.bytes_per_token:,} | {row.mb_per_sequence:,.1f} |")
    io = flash_io_frame(head_dim).pivot(index="n", columns="method", values="hbm_mb")
    print("\n| n | standard HBM MB/head | FlashAttention (SRAM 100 KB) | ratio |")
    print("|---|---|---|---|")
    for n_tokens, row in io.iterrows():
        print(f"| {n_tokens:,} | {row['standard']:,.1f} | {row['FlashAttention']:,.1f} | {row['standard'] / row['FlashAttention']:.1f}x |")


if __name__ == "__main__":
    main()
