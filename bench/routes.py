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

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attnscope.models.profile import timed  # noqa: E402
from bench.common import long_text, machine, markdown  # noqa: E402

CHECK_TEXTS = (
    "When Mary and John went to the store, John gave a drink to",
    "The capital of France is",
    "The mouse ran up the clock. The clock struck one, and the mouse ran",
    "One, two, three, four, five,",
    "The Eiffel Tower is located in the city of",
)


def timings(lm, text: str, rounds: int, threshold: float, importance_rounds: int) -> dict:
    import torch

    from attnscope.models import run
    from attnscope.models.knockout import head_importance
    from attnscope.models.routes import decompose, graph, routes

    ids = torch.as_tensor(run(lm, text).input_ids)

    def forward():
        with torch.inference_mode():
            lm.model(input_ids=ids, use_cache=False)

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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of forward / graph / forward")
    parser.add_argument("--importance-rounds", type=int, default=1, help="importance by knockout, each paired with a graph")
    parser.add_argument("--threshold", type=float, default=0.04)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--check", action="store_true", help="the knockout check instead of the timings")
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
        rows = check(lm, (5, 10))
        print(f"SmolLM2-135M, knockout check (zeroed heads), float32 — {where}\n")
        print(markdown(rows, list(rows[0])))
        payload = {"machine": where, "rows": rows}
    else:
        text = lm.tokenizer.decode(tokenize(lm, long_text(args.tokens), max_length=args.tokens)[0]["input_ids"][0])
        result = timings(lm, text, args.rounds, args.threshold, args.importance_rounds)
        forward = min(result["steps"]["forward"])
        rows = [
            {
                "step": step,
                "best s": f"{min(times):.3f}",
                "× plain forward (best)": f"{min(times) / forward:.2f}",
                "spread": f"{100 * (max(times) - min(times)) / min(times):.0f}%",
            }
            for step, times in result["steps"].items()
            if times
        ]
        paired = {name: round(statistics.median(values), 2) for name, values in result["ratios"].items()}
        print(f"SmolLM2-135M, {args.tokens} tokens, τ = {args.threshold}, float32, interleaved rounds — {where}\n")
        print(markdown(rows, list(rows[0])))
        print(f"\npaired (median of per-round ratios): {paired}; graph: {result['nodes']} nodes, {result['edges']} edges")
        payload = {
            "machine": where,
            "tokens": args.tokens,
            "threshold": str(args.threshold),
            "rounds": f"{args.rounds} (forward / graph / forward), {args.importance_rounds} (importance / graph)",
            "graph": f"{result['nodes']} nodes, {result['edges']} edges",
            "paired routes / forward": f"{paired['routes / forward']}x (target ≤ 5x)",
            "paired importance / routes": f"{paired['importance / routes']}x faster (target ≥ 10x)",
            "rows": rows,
        }
    if args.json:
        Path(args.json).write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
