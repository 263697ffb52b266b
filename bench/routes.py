"""Benchmark: information-flow routes on SmolLM2, against a plain forward and against importance by knockout;
and the knockout check (the graph's top heads against its bottom heads).

Usage:
    python bench/routes.py [--tokens 128] [--rounds 5] [--importance-rounds 1] [--json bench/results/routes-cpu.json]
    python bench/routes.py --check [--json bench/results/routes-knockout-cpu.json]

Timings are interleaved, so a ratio is taken under one load: each round times a plain forward, the whole
graph (``models.routes.routes``: the recorded forward with values, the split of every block, the graph at
τ = 0.04), a plain forward again (the graph is compared with the mean of the two), then the graph's three
steps apart. Importance by knockout (``models.knockout.head_importance``, every head once) is timed next
to one more graph. The table keeps each step's best time; "paired" ratios are medians over rounds.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attnscope.models.profile import timed  # noqa: E402
from bench.common import (  # noqa: E402
    exact_text,
    machine,
    paired_parser,
    plain_forward,
    print_table,
    show_timings,
    smollm2_on_cpu,
    write_json,
)

CHECK_TEXTS = (
    "When Mary and John went to the store, John gave a drink to",
    "The capital of France is",
    "The mouse ran up the clock. The clock struck one, and the mouse ran",
    "One, two, three, four, five,",
    "The Eiffel Tower is located in the city of",
)


def timings(lm, text: str, rounds: int, threshold: float, importance_rounds: int) -> dict:

    from attnscope.models import run
    from attnscope.models.knockout import head_importance
    from attnscope.models.routes import decompose, graph, routes

    forward = plain_forward(lm, text)

    forward()  # warm-up
    routes(lm, text, threshold=threshold)
    steps: dict[str, list[float]] = {"forward": [], "routes": [], "run values": [], "stack": [], "graph": [], "importance": []}
    ratios: dict[str, list[float]] = {"routes / forward": [], "importance / routes": []}
    nodes = edges = 0
    for _ in range(rounds):
        _, before = timed(forward)
        g, whole = timed(lambda: routes(lm, text, threshold=threshold))
        _, after = timed(forward)
        rec, values = timed(lambda: run(lm, text, values=True))
        split, split_s = timed(lambda rec=rec: decompose(lm, rec))
        _, graph_s = timed(lambda split=split: graph(split, None, threshold))
        for key, value in zip(steps, (before, whole, values, split_s, graph_s)):
            steps[key].append(value)
        steps["forward"].append(after)
        ratios["routes / forward"].append(whole / ((before + after) / 2))  # against the forwards on either side
        nodes, edges = len(g.nodes), len(g.edges)
    for _ in range(importance_rounds):
        _, imp = timed(lambda: head_importance(lm, text))
        _, whole = timed(lambda: routes(lm, text, threshold=threshold))
        steps["importance"].append(imp)
        steps["routes"].append(whole)
        ratios["importance / routes"].append(imp / whole)
    return {"steps": steps, "ratios": ratios, "nodes": nodes, "edges": edges}


def check(lm, ks: tuple[int, ...]) -> list[dict]:
    from attnscope.models.routes import knockout_check

    rows = []
    for k in ks:
        results = [knockout_check(lm, text, k=k) for text in CHECK_TEXTS]
        for text, c in zip(CHECK_TEXTS, results):
            rows.append(
                {
                    "k": k,
                    "text": text,
                    "prediction": c.target,
                    "log p": f"{c.logprob:.3f}",
                    "Δ log p, top k": f"{c.top_change:.3f}",
                    "Δ log p, bottom k": f"{c.bottom_change:.3f}",
                    "holds": "yes" if c.holds else "no",
                }
            )
        rows.append(
            {
                "k": k,
                "text": f"mean over {len(results)} texts",
                "Δ log p, top k": f"{statistics.mean(c.top_change for c in results):.3f}",
                "Δ log p, bottom k": f"{statistics.mean(c.bottom_change for c in results):.3f}",
                "holds": f"{sum(c.holds for c in results)}/{len(results)}",
            }
        )
    return rows


def main() -> None:
    parser = paired_parser(__doc__, "forward / graph / forward", "knockout")
    parser.add_argument("--importance-rounds", type=int, default=1, help="importance by knockout, each paired with a graph")
    parser.add_argument("--threshold", type=float, default=0.04)
    args = parser.parse_args()

    lm = smollm2_on_cpu(args.threads)
    where = machine()
    if args.check:
        rows = check(lm, (5, 10))
        print_table(f"SmolLM2-135M, knockout check (zeroed heads), float32 — {where}", rows)
        facts: dict = {}
    else:
        text = exact_text(lm, args.tokens)
        result = timings(lm, text, args.rounds, args.threshold, args.importance_rounds)
        title = f"SmolLM2-135M, {args.tokens} tokens, τ = {args.threshold}, float32, interleaved rounds — {where}"
        graph = f"{result['nodes']} nodes, {result['edges']} edges"
        rows, paired = show_timings(title, result, f"graph: {graph}")
        facts = {
            "tokens": args.tokens,
            "threshold": str(args.threshold),
            "rounds": f"{args.rounds} (forward / graph / forward), {args.importance_rounds} (importance / graph)",
            "graph": graph,
            "paired routes / forward": f"{paired['routes / forward']}x (target ≤ 5x)",
            "paired importance / routes": f"{paired['importance / routes']}x faster (target ≥ 10x)",
        }
    write_json(args.json, {"machine": where, **facts, "rows": rows})


if __name__ == "__main__":
    main()
