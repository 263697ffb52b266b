"""Benchmark: attnscope against what every peer runs, at the lengths people type.

nnsight, TransformerLens and bertviz all get attention maps from transformers' eager kernel with
``output_attentions=True``; attnscope records through SDPA and either keeps the weights it forms inside
the forward (short inputs) or recomputes them from the recorded query/key (long inputs). For each bundled
model and length, in one process, interleaved:

  plain          a plain SDPA forward (nothing recorded): the unit every other step is divided by
  eager          transformers eager with ``output_attentions=True`` (every map, as peers get them)
  all maps       ``run`` + ``attention_stack()``: every layer and head as one float32 [L, H, n, n] array
  per-head loop  ``run`` + ``for l: for h: rec.attention(l, h)``: the loop users write
  head_stats     ``run`` + ``head_stats()``: every head's statistics
  one map        ``run`` + ``attention(last layer, head 0)``

Each step is timed between two plain forwards (P S1 P S2 P ... P) and divided by the mean of the two,
so a load change on a shared machine moves both sides of a ratio. A cell is the median of those ratios
over the rounds (step order rotated each round), then in brackets the step's fastest time over the
fastest plain forward. Below 1,024 tokens there are at least ``--rounds`` rounds, and as many more as
``--budget`` seconds of plain forwards per step take (up to 60: MiniLM at 32 tokens forwards in ~20 ms);
from 1,024 tokens ``--long-rounds``. Lengths beyond a model's positions (MiniLM: 512) are skipped.
Where ``run`` accepts ``path``, "all maps" and "head_stats" also run on the path ``auto`` did not take
(columns named after it), up to ``--other-path-max`` tokens, to show its choice.

Usage: python -m bench.peers [--models minilm,smollm2] [--lengths 32,128,512,2048] [--rounds 3]
       [--budget 2] [--long-rounds 1] [--threads 1] [--out bench/results/peers-cpu.json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import inspect
import json
import math
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attnscope.models.profile import timed  # noqa: E402
from bench.common import long_text, machine, markdown  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
STEPS = ("eager", "all maps", "per-head loop", "head_stats", "one map")
OTHER_PATH_STEPS = ("all maps", "head_stats")  # timed on the path auto did not take, at --other-path-max tokens or less
LONG = 1024  # lengths from here on get --long-rounds rounds


def load_average() -> float:
    with open("/proc/loadavg") as fh:
        return float(fh.read().split()[0])


def _steps(lm, text: str, n: int, path: str | None) -> dict:
    """The attnscope steps for one text; ``path`` None = run's default (and the only one before paths existed)."""
    from attnscope.models import run

    kwargs = {"max_length": n} | ({"path": path} if path else {})
    layers, heads = lm.spec.attention_layers or range(lm.spec.n_layers), range(lm.spec.n_heads)
    last = list(layers)[-1]

    def all_maps():
        return run(lm, text, **kwargs).attention_stack()

    def loop():
        rec = run(lm, text, **kwargs)
        for layer in layers:
            for head in heads:
                rec.attention(layer, head)

    def stats():
        return run(lm, text, **kwargs).head_stats()

    def one():
        return run(lm, text, **kwargs).attention(last, 0)

    return {"all maps": all_maps, "per-head loop": loop, "head_stats": stats, "one map": one}


def measure(lm, n: int, rounds: int, other_path_max: int, budget: float = 0.0) -> dict:
    """One row: median ratios to the adjacent plain forwards, fastest times, the path auto took.

    ``budget``: seconds of plain forwards to spend per step at least: short inputs get more rounds
    (up to 60), so a few preempted time slices on a shared machine do not decide a median."""
    import torch

    from attnscope.models import run
    from attnscope.models.forward import tokenize

    model = lm.model
    recording = model.config._attn_implementation
    base = lm.forward_module()
    text = long_text(n)
    enc, _ = tokenize(lm, text, max_length=n)
    inputs = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
    extra = {"use_cache": False} if lm.spec.kind != "encoder" else {}

    def forward(kernel: str, **more):
        model.set_attn_implementation(kernel)
        try:
            with torch.inference_mode():
                return base(**inputs, **extra, **more)
        finally:
            model.set_attn_implementation(recording)

    def plain():
        forward("sdpa")

    def eager():
        return forward("eager", output_attentions=True).attentions

    steps = {"eager": eager, **_steps(lm, text, n, None)}
    path = getattr(run(lm, text, max_length=n), "path", "recomputed")
    if "path" in inspect.signature(run).parameters and n <= other_path_max:
        other = "recomputed" if path == "captured" else "captured"
        for name, fn in _steps(lm, text, n, other).items():
            if name in OTHER_PATH_STEPS:
                steps[f"{name}, {other}"] = fn
    names = list(steps)
    for fn in [plain, *steps.values()]:  # warm-up: kernels, allocator, paged-in weights
        fn()
    rounds = max(rounds, min(60, math.ceil(budget / timed(plain)[1])))
    ratios = {name: [] for name in names}
    best = {name: float("inf") for name in ["plain", *names]}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        _, before = timed(plain)
        best["plain"] = min(best["plain"], before)
        for name in order:
            _, seconds = timed(steps[name])
            _, after = timed(plain)
            ratios[name].append(seconds / ((before + after) / 2))
            best[name] = min(best[name], seconds)
            best["plain"] = min(best["plain"], after)
            before = after
    row = {"model": lm.spec.name, "tokens": n, "path": path, "plain ms": round(1000 * best["plain"], 1)}
    for name in names:  # median of the paired ratios (the fastest time over the fastest plain forward)
        row[name] = f"{statistics.median(ratios[name]):.2f}x ({best[name] / best['plain']:.2f}x)"
    median = {name: statistics.median(values) for name, values in ratios.items()}
    row["all maps / eager"] = f"{median['all maps'] / median['eager']:.2f}"
    row["loop / eager"] = f"{median['per-head loop'] / median['eager']:.2f}"
    row["rounds"] = rounds
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="minilm,smollm2")
    parser.add_argument("--lengths", default="32,128,512,2048")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per length below 1,024 tokens, at least")
    parser.add_argument("--long-rounds", type=int, default=1, help="rounds from 1,024 tokens on (each takes minutes)")
    parser.add_argument("--budget", type=float, default=2.0, help="seconds of plain forwards per step below 1,024 tokens (more rounds)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as in issue 27's table)")
    parser.add_argument("--other-path-max", type=int, default=512, help="time the path auto did not take up to this length")
    parser.add_argument("--out", type=Path, help="write the results here (JSON)")
    args = parser.parse_args()

    import torch

    from attnscope.models import load

    torch.set_num_threads(args.threads)
    start, load_before = dt.datetime.now(), load_average()
    loads, rows = [load_before], []
    for name in args.models.split(","):
        lm = load(name, device="cpu")
        for n in [int(v) for v in args.lengths.split(",")]:
            if lm.spec.max_positions is not None and n > lm.spec.max_positions:
                print(f"{name}: {n} tokens exceed its {lm.spec.max_positions} positions; skipped", file=sys.stderr)
                continue
            long = n >= LONG
            row = measure(lm, n, args.long_rounds if long else args.rounds, args.other_path_max, 0.0 if long else args.budget)
            loads.append(load_average())
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    columns = list(dict.fromkeys(k for row in rows for k in row))
    print(f"{machine()}; load average {min(loads):.1f}-{max(loads):.1f} during the run\n")
    print(markdown(rows, columns))
    if args.out:
        result = {
            "machine": f"{machine()}; {start:%Y-%m-%d}",
            "torch threads": args.threads,
            "load average (1 min) during the run": f"{min(loads):.1f}-{max(loads):.1f} on {os.cpu_count()} cores",
            "minutes": round((dt.datetime.now() - start).total_seconds() / 60, 1),
            "rows": rows,
        }
        args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
