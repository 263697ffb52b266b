"""Corpus benchmark: head statistics (and top examples) of every head over N texts, on Ray vs a plain loop.

    python bench/corpus.py                          # 2,000 texts on MiniLM, 500 on SmolLM2; 1 and 2 workers
    python bench/corpus.py --minilm 400 --smollm2 100 --workers 1,2
    python bench/corpus.py --analyses heads,examples --data web-bible   # examples vs heads on the real corpus

``--analyses heads,examples`` runs each Ray cell for both analyses and reports examples' throughput as a
share of heads' (the target is >= 0.8x). ``--data web-bible`` takes the first N passages of the World
English Bible (``attnscope corpus-data``; needs the ``corpus-text`` extra) instead of demo sentences.

Each cell runs in a fresh process: (a) a plain Python loop ``run(lm, [text]).head_stats()`` over the
texts (torch using every core), (b) ``cli.py corpus`` semantics (``run_corpus``) with a local Ray started for the job and 1 or
2 workers. Reported: texts/s over the whole wall time (model load and Ray start included), time to
the first result (first text for the loop, first shard for Ray), and peak memory per worker (RSS).
Prints a markdown table; the texts are made from the bundled demo corpus, so nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ROOT, in_child, machine, markdown, peak_rss_mb  # noqa: E402

DEMO = ROOT / "corpus" / "data" / "demo.txt"
TARGET_TOKENS = 64


def make_texts(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct texts of about 64 tokens: demo sentences joined in seeded random order."""
    sentences = [s for s in DEMO.read_text().splitlines() if s.strip()]
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        parts, words = [], 0
        while words < TARGET_TOKENS * 0.7:  # ~0.7 words per token for this English text
            sentence = rng.choice(sentences)
            parts.append(sentence)
            words += len(sentence.split())
        texts.append(" ".join(parts))
    return texts


def child_loop(payload: dict) -> dict:
    """A plain loop over ``run`` + ``head_stats``, one text at a time."""
    import torch

    torch.set_num_threads(payload["threads"])
    from attnscope.models import load, run

    t0 = time.perf_counter()
    lm = load(payload["model"], device="cpu")
    texts = Path(payload["data"]).read_text().splitlines()
    first = None
    tokens = 0
    for text in texts:
        rec = run(lm, [text])
        rec.head_stats()
        tokens += len(rec.tokens[0])
        if first is None:
            first = time.perf_counter() - t0
    wall = time.perf_counter() - t0
    return {
        "wall_s": wall,
        "texts_per_s": len(texts) / wall,
        "first_result_s": first,
        "peak_mb": [peak_rss_mb()],
        "mean_tokens": tokens / len(texts),
    }


def child_ray(payload: dict) -> dict:
    from attnscope.corpus import CorpusConfig, run_corpus

    t0 = time.perf_counter()
    info = run_corpus(
        CorpusConfig(
            model=payload["model"],
            out=Path(payload["out"]),
            data=Path(payload["data"]),
            workers=payload["workers"],
            progress=False,
            analysis=payload.get("analysis", "heads"),
            criterion=payload.get("criterion"),
        )
    )
    wall = time.perf_counter() - t0
    return {
        "wall_s": wall,
        "texts_per_s": info["texts_this_run"] / wall,
        "first_result_s": info["first_result_s"],
        "ray_start_s": info["ray_start_s"],
        "peak_mb": sorted(info["peak_rss_mb_per_worker"].values()),
        "results": info["texts_with_results"],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minilm", type=int, default=2000, help="texts for MiniLM (0 skips)")
    parser.add_argument("--smollm2", type=int, default=500, help="texts for SmolLM2 (0 skips)")
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument("--analyses", default="heads", help="comma-separated corpus analyses for the Ray cells (heads, examples)")
    parser.add_argument("--criterion", default=None, help="examples: the criterion (default max-weight; all = every one)")
    parser.add_argument("--data", default="demo", help="demo (sentences of the bundled demo corpus) or web-bible (the real corpus)")
    parser.add_argument("--no-loop", action="store_true", help="skip the plain-loop baseline")
    parser.add_argument("--json", default=None, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    workers = [int(w) for w in args.workers.split(",")]
    analyses = [a.strip() for a in args.analyses.split(",") if a.strip()]
    rows = []
    print(f"machine: {machine()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for model, n in (("minilm", args.minilm), ("smollm2", args.smollm2)):
            if n <= 0:
                continue
            data = Path(tmp) / f"{model}.txt"
            if args.data == "web-bible":
                from attnscope.corpus.sources import passages

                data.write_text("\n".join(passages("web-bible", words=48)[:n]) + "\n")  # ~64 tokens each
            else:
                data.write_text("\n".join(make_texts(n)) + "\n")
            threads = len(os.sched_getaffinity(0))  # torch's default: every core, as one Ray worker gets
            cells = (
                [] if args.no_loop else [("plain loop over run", {"mode": "loop", "model": model, "data": str(data), "threads": threads})]
            )
            cells += [
                (
                    f"Ray, {w} worker{'s' if w > 1 else ''}" + ("" if analyses == ["heads"] else f", {analysis}"),
                    {
                        "mode": "ray",
                        "model": model,
                        "data": str(data),
                        "workers": w,
                        "analysis": analysis,
                        "criterion": args.criterion if analysis == "examples" else None,
                        "out": str(Path(tmp) / f"{model}-{w}-{analysis}"),
                    },
                )
                for w in workers
                for analysis in analyses
            ]
            heads_rate: dict[int, float] = {}
            for label, payload in cells:
                result = in_child("bench.corpus", payload, timeout=3600)
                row = {"model": model, "texts": n, "setup": label}
                if "error" in result:
                    row["texts/s"] = f"error: {result['error']}"
                else:
                    row.update(
                        {
                            "texts/s": f"{result['texts_per_s']:.2f}",
                            "wall s": f"{result['wall_s']:.0f}",
                            "first result s": f"{result['first_result_s']:.1f}",
                            "peak MB per worker": ", ".join(f"{m:,.0f}" for m in result["peak_mb"]),
                        }
                    )
                    if payload.get("analysis") == "heads":
                        heads_rate[payload["workers"]] = result["texts_per_s"]
                    elif payload.get("analysis") == "examples" and payload["workers"] in heads_rate:
                        row["vs heads"] = f"{result['texts_per_s'] / heads_rate[payload['workers']]:.2f}x"
                rows.append(row)
                print(json.dumps(row), flush=True)
    print()
    columns = ["model", "texts", "setup", "texts/s", "wall s", "first result s", "peak MB per worker"]
    print(markdown(rows, columns + (["vs heads"] if "examples" in analyses else [])))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    if len(sys.argv) == 2 and sys.argv[1].startswith("{"):
        payload = json.loads(sys.argv[1])
        out = child_loop(payload) if payload["mode"] == "loop" else child_ray(payload)
        print(json.dumps(out))
    else:
        main()
