"""Benchmark: attnscope's recording engine against a plain forward and eager output_attentions.

For SmolLM2 at several lengths, each measured in a fresh process (so peak RSS is its own):
  (a) plain SDPA forward (transformers, no attention weights)
  (b) transformers eager with output_attentions=True (what other tools force)
  (c) attnscope: run (SDPA + recording) + head_stats for every head + one full map
Each cell is the best of --trials fresh processes (default 3), with the spread between trials.
On a shared machine two minima taken minutes apart drift, so the time ratios are also measured paired:
one more process runs (a), (b) and (c) back to back --rounds times (default 5) and reports the median
of the per-round ratios ("paired" columns; --paired-lengths, default up to 2,048 tokens).
Prints a markdown table. Usage: python bench/extract.py [--lengths 128,512,2048,8192] [--trials 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attnscope.models.profile import timed  # noqa: E402
from bench.common import current_rss_mb, in_child, long_text, machine, markdown, peak_rss_mb  # noqa: E402

# Eager materialises [layers, heads, n, n] float32: skip it where that alone exceeds this machine.
EAGER_LIMIT_GB = 16


def _measure(payload: dict) -> dict:
    import torch

    from attnscope.models import load, run
    from attnscope.models.forward import tokenize

    n, mode = payload["n"], payload["mode"]
    lm = load("smollm2", backend="sdpa", device="cpu")
    text = long_text(n)
    enc, _ = tokenize(lm, text, max_length=n)
    ids = enc["input_ids"]
    base = lm.forward_module()
    if mode in ("plain", "eager"):
        base.set_attn_implementation("sdpa" if mode == "plain" else "eager")
    with torch.inference_mode():  # warm-up: pages in the mmapped weights, initialises kernels
        base(input_ids=ids[:, :16], use_cache=False)
        run(lm, text, max_length=16).head_stats(layers=[0]) if mode == "attnscope" else None
    baseline = current_rss_mb()
    start = time.perf_counter()
    with torch.inference_mode():
        if mode == "plain":
            base(input_ids=ids, use_cache=False)
        elif mode == "eager":
            out = base(input_ids=ids, use_cache=False, output_attentions=True)
            assert out.attentions[0].shape[-1] == n
        else:
            rec = run(lm, text, max_length=n)
            stats = rec.head_stats()
            rec.attention(lm.spec.n_layers - 1, 0)
            assert len(stats) == lm.spec.n_layers * lm.spec.n_heads
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_mb": peak_rss_mb() - baseline}


def _paired(payload: dict) -> dict:
    """(a), (b) and (c) back to back in one process, ``rounds`` times: median per-round ratios."""
    import statistics

    import torch

    from attnscope.models import load, run
    from attnscope.models.forward import tokenize

    n, rounds, with_eager = payload["n"], payload["rounds"], payload["eager"]
    lm = load("smollm2", backend="sdpa", device="cpu")
    text = long_text(n)
    ids = tokenize(lm, text, max_length=n)[0]["input_ids"]
    base = lm.forward_module()
    recording = lm.model.config._attn_implementation  # attnscope's registered kernel

    def seconds(fn) -> float:
        return timed(fn)[1]

    def plain():
        base.set_attn_implementation("sdpa")
        base(input_ids=ids, use_cache=False)

    def eager():
        base.set_attn_implementation("eager")
        base(input_ids=ids, use_cache=False, output_attentions=True)

    def attnscope():
        base.set_attn_implementation(recording)
        rec = run(lm, text, max_length=n)
        rec.head_stats()
        rec.attention(lm.spec.n_layers - 1, 0)

    with torch.inference_mode():
        plain(), attnscope()  # warm-up
        a, b, c = [], [], []
        for _ in range(rounds):
            a.append(seconds(plain))
            if with_eager:
                b.append(seconds(eager))
            c.append(seconds(attnscope))
    out = {"c/a": statistics.median(ci / ai for ci, ai in zip(c, a))}
    if with_eager:
        out["c/b"] = statistics.median(ci / bi for ci, bi in zip(c, b))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="128,512,2048,8192")
    parser.add_argument("--trials", type=int, default=3, help="fresh processes per cell; the fastest is kept")
    parser.add_argument("--json", help="also write the rows as JSON here")
    parser.add_argument("--rounds", type=int, default=5, help="back-to-back rounds for the paired ratios")
    parser.add_argument("--paired-lengths", default="128,512,2048", help="lengths that also get paired ratios")
    args = parser.parse_args()
    rows = []
    for n in [int(v) for v in args.lengths.split(",")]:
        row = {"tokens": n}
        for mode, label in (("plain", "a"), ("eager", "b"), ("attnscope", "c")):
            eager_gb = 30 * 9 * n * n * 4 / 2**30
            if mode == "eager" and eager_gb > EAGER_LIMIT_GB:
                row[f"({label}) s"] = "—"
                row[f"({label}) +MB"] = f"needs >{eager_gb:.0f} GB"
                continue
            trials = [in_child("bench.extract", {"n": n, "mode": mode}) for _ in range(args.trials)]
            ok = [t for t in trials if "error" not in t]
            res = min(ok, key=lambda t: t["seconds"]) if ok else trials[0]
            if ok:
                times = [t["seconds"] for t in ok]
                row[f"({label}) spread"] = f"{100 * (max(times) - min(times)) / min(times):.0f}%"
            if "error" in res:
                row[f"({label}) s"], row[f"({label}) +MB"] = "failed", res["error"][:60]
            else:
                row[f"({label}) s"] = f"{res['seconds']:.2f}"
                row[f"({label}) +MB"] = f"{res['peak_mb']:.0f}"
        try:
            row["c/a time"] = f"{float(row['(c) s']) / float(row['(a) s']):.2f}x"
        except ValueError:
            row["c/a time"] = "—"
        try:
            row["c/b time"] = f"{float(row['(c) s']) / float(row['(b) s']):.2f}x"
        except ValueError:
            row["c/b time"] = "—"
        if str(n) in args.paired_lengths.split(","):
            paired = in_child(
                "bench.extract", {"paired": True, "n": n, "rounds": args.rounds, "eager": 30 * 9 * n * n * 4 / 2**30 <= EAGER_LIMIT_GB}
            )
            row["c/a paired"] = f"{paired['c/a']:.2f}x" if "c/a" in paired else "—"
            row["c/b paired"] = f"{paired['c/b']:.2f}x" if "c/b" in paired else "—"
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    cols = [
        "tokens",
        "(a) s",
        "(a) +MB",
        "(b) s",
        "(b) +MB",
        "(c) s",
        "(c) +MB",
        "c/a time",
        "c/b time",
        "c/a paired",
        "c/b paired",
        "(a) spread",
        "(b) spread",
        "(c) spread",
    ]
    print(f"SmolLM2-135M, float32, batch 1 — {machine()}\n")
    print("(a) plain SDPA forward · (b) eager + output_attentions · (c) attnscope run + head_stats (all 270 heads) + one full map")
    print(
        f"best of {args.trials} fresh processes per cell (spread = (max - min) / min of the trials); +MB = peak RSS above the loaded model\n"
    )
    print(markdown(rows, cols))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    if len(sys.argv) == 2 and sys.argv[1].startswith("{"):
        payload = json.loads(sys.argv[1])
        print(json.dumps(_paired(payload) if payload.get("paired") else _measure(payload)))
    else:
        main()
