"""Benchmark: head importance (every head knocked out once) and single knockouts on SmolLM2.

Prints a markdown table. Usage: python bench/knockout.py [--tokens 64] [--batch 16,32] [--repeats 2]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attnscope.models.profile import timed  # noqa: E402
from bench.common import exact_text, machine, markdown  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--batch", default="32")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    from attnscope.models import load, run
    from attnscope.models.knockout import head_importance, knockout

    lm = load("smollm2", device="cpu", verify=False)
    text = exact_text(lm, args.tokens)
    run(lm, text)  # warm-up
    rows = []

    def best(fn):
        runs = [timed(fn) for _ in range(args.repeats)]
        times, out = [seconds for _, seconds in runs], runs[-1][0]
        return min(times), (max(times) - min(times)) / min(times), out

    for size in [int(b) for b in args.batch.split(",")]:
        seconds, spread, table = best(lambda size=size: head_importance(lm, text, batch_size=size))
        rows.append(
            {"step": f"importance, all {len(table)} heads (batch {size})", "seconds": f"{seconds:.1f}", "spread": f"{100 * spread:.0f}%"}
        )
    seconds, spread, result = best(lambda: knockout(lm, text, heads=[(17, 3), (18, 6)]))
    rows.append({"step": "knockout of 2 heads (before + after runs)", "seconds": f"{seconds:.2f}", "spread": f"{100 * spread:.0f}%"})
    print(f"SmolLM2-135M, {args.tokens} tokens, float32 — {machine()}; best of {args.repeats}\n")
    print(markdown(rows, ["step", "seconds", "spread"]))
    top = table.sort_values("delta", ascending=False).head(5)
    print("\nmost important heads (loss increase when knocked out):")
    print(
        markdown(
            [{"layer": int(r.layer), "head": int(r.head), "delta loss": f"{r.delta:.3f}"} for r in top.itertuples()],
            ["layer", "head", "delta loss"],
        )
    )
    print(
        f"\nknockout 17.3 + 18.6: KL {result.kl:.4f}, top token {result.target!r} {result.target_prob_before:.3f} -> {result.target_prob_after:.3f}"
    )


if __name__ == "__main__":
    main()
