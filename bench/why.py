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

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attnscope.models.profile import timed  # noqa: E402
from bench.common import (  # noqa: E402
    exact_text,
    machine,
    paired_parser,
    peak_rss_mb,
    plain_forward,
    print_table,
    show_timings,
    smollm2_on_cpu,
    write_json,
)


def timings(lm, text: str, rounds: int) -> dict:
    import torch

    from attnscope.models import run
    from attnscope.models.circuit import circuit
    from attnscope.models.why import why

    ids = torch.as_tensor(run(lm, text).input_ids)
    n = int(ids.shape[1])
    layer, head = lm.spec.n_layers - 1, 0
    forward = plain_forward(lm, text)

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
    parser = paired_parser(__doc__, "forward / why / forward / circuit", "induction")
    args = parser.parse_args()

    lm = smollm2_on_cpu(args.threads)
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
        print_table(f"SmolLM2-135M, induction check (20 random tokens twice, zeroed heads), float32 — {where}", rows)
        facts: dict = {}
    else:
        text = exact_text(lm, args.tokens)
        result = timings(lm, text, args.rounds)
        title = f"SmolLM2-135M, {result['n']} tokens, last layer, float32, interleaved rounds — {where}"
        rows, paired = show_timings(title, result, f"sizes: {result['sizes']}")
        facts = {
            "tokens": result["n"],
            "rounds": f"{args.rounds} (forward / why / forward / circuit)",
            "paired why / forward": f"{paired['why / forward']}x (target ≤ 2x)",
            "paired circuit / forward": f"{paired['circuit / forward']}x (target ≤ 10x)",
            **{k: str(v) for k, v in result["sizes"].items()},
        }
    write_json(args.json, {"machine": where, **facts, "rows": rows})


if __name__ == "__main__":
    main()
