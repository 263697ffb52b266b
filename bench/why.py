"""Benchmark: why a head attends (``models.why``) and a head's circuit (``models.circuit``) on SmolLM2, against a
plain forward; and the induction check.

Usage:
    python bench/why.py [--tokens 128] [--rounds 5] [--json bench/results/why-cpu.json]
    python bench/why.py --check [--json bench/results/why-induction-cpu.json]

Timings are interleaved, so a ratio is taken under one load: each round times a plain forward, one cell's split
at the last layer (the most components: 1 + 29·10 on SmolLM2; the recorded forward with values included), a plain
forward again, then one head's circuit at the last layer (recorded forward included). Targets (issue 33): one cell
≤ 2x a plain forward, a circuit ≤ 10x. Memory: the split keeps the components at two positions ([C, 2, d]); the
circuit keeps them at every position ([C, n, d]) and forms one [n, n] matrix per component at a time — the table
reports both sizes and the process's peak resident memory.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attnscope.models.profile import timed  # noqa: E402
from bench.common import long_text, machine, markdown, peak_rss_mb  # noqa: E402


def timings(lm, text: str, rounds: int) -> dict:
    import torch

    from attnscope.models import run
    from attnscope.models.circuit import circuit
    from attnscope.models.why import why

    ids = torch.as_tensor(run(lm, text).input_ids)
    n = int(ids.shape[1])
    layer, head = lm.spec.n_layers - 1, 0

    def forward():
        with torch.inference_mode():
            lm.model(input_ids=ids, use_cache=False)

    forward()  # warm-up
    why(lm, text, layer, head, n - 1, n // 2)
    steps: dict[str, list[float]] = {"forward": [], "why (one cell)": [], "circuit (one head)": []}
    ratios: dict[str, list[float]] = {"why / forward": [], "circuit / forward": []}
    for _ in range(rounds):
        _, before = timed(forward)
        _, cell = timed(lambda: why(lm, text, layer, head, n - 1, n // 2))
        _, after = timed(forward)
        _, whole = timed(lambda: circuit(lm, text, layer, head))
        mean = (before + after) / 2
        steps["forward"] += [before, after]
        steps["why (one cell)"].append(cell)
        steps["circuit (one head)"].append(whole)
        ratios["why / forward"].append(cell / mean)
        ratios["circuit / forward"].append(whole / mean)
    components = 1 + layer * (lm.spec.n_heads + 1)
    d = int(lm.model.config.hidden_size)
    sizes = {
        "components": components,
        "why: components at two positions (MB, float64)": round(components * 2 * d * 8 / 2**20, 2),
        "circuit: components at every position (MB, float64)": round(components * n * d * 8 / 2**20, 1),
        "largest n x n formed (MB, float64)": round(n * n * 8 / 2**20, 3),
        "peak RSS (MB)": round(peak_rss_mb()),
    }
    return {"n": n, "steps": steps, "ratios": ratios, "sizes": sizes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of forward / why / forward / circuit")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--check", action="store_true", help="the induction check instead of the timings")
    parser.add_argument("--json", default=None, help="also write the rows and the machine to this file")
    args = parser.parse_args()

    import torch

    from attnscope.models import load
    from attnscope.models.forward import tokenize

    if args.threads:
        torch.set_num_threads(args.threads)
    lm = load("smollm2", device="cpu", verify=False)
    where = machine()
    if args.check:
        from attnscope.models.circuit import induction_check

        rows = []
        for seed in (0, 1, 2):
            c = induction_check(lm, seq_len=20, seed=seed, samples=8)
            rows.append(
                {
                    "seed": seed,
                    "induction head": f"L{c.head[0]}H{c.head[1]}",
                    "induction score": f"{c.score:.3f}",
                    "top key-side feeder": f"{c.feeder} ({c.feeder_share:.2f})",
                    "drop, feeder knocked out": f"{c.top_drop:.3f}",
                    "drop, random earlier head (mean of 8)": f"{c.random_drop:.3f}",
                    "holds": "yes" if c.holds else "no",
                }
            )
        print(f"SmolLM2-135M, induction check (20 random tokens twice, zeroed heads), float32 — {where}\n")
        print(markdown(rows, list(rows[0])))
        payload = {"machine": where, "rows": rows}
    else:
        text = lm.tokenizer.decode(tokenize(lm, long_text(args.tokens), max_length=args.tokens)[0]["input_ids"][0])
        result = timings(lm, text, args.rounds)
        forward = min(result["steps"]["forward"])
        rows = [
            {
                "step": step,
                "best s": f"{min(times):.3f}",
                "× plain forward (best)": f"{min(times) / forward:.2f}",
                "spread": f"{100 * (max(times) - min(times)) / min(times):.0f}%",
            }
            for step, times in result["steps"].items()
        ]
        paired = {name: round(statistics.median(values), 2) for name, values in result["ratios"].items()}
        print(f"SmolLM2-135M, {result['n']} tokens, last layer, float32, interleaved rounds — {where}\n")
        print(markdown(rows, list(rows[0])))
        print(f"\npaired (median of per-round ratios): {paired}; sizes: {result['sizes']}")
        payload = {
            "machine": where,
            "tokens": result["n"],
            "rounds": f"{args.rounds} (forward / why / forward / circuit)",
            "paired why / forward": f"{paired['why / forward']}x (target ≤ 2x)",
            "paired circuit / forward": f"{paired['circuit / forward']}x (target ≤ 10x)",
            **{k: str(v) for k, v in result["sizes"].items()},
            "rows": rows,
        }
    if args.json:
        Path(args.json).write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
