"""Benchmark: context mixing and gradient attributions against plain forwards.

Each (model, tokens, method) cell runs in a fresh process (so its peak RSS is its own): plain forwards
(no recording) are timed just before and just after the method, and the method's time is divided by
their median ("x forward"); value zeroing is compared with n plain forwards, its issue target.
"+MB" is the peak RSS above the loaded, warmed-up model. Targets (issue 23): value zeroing ≤ the
time of n plain forwards; integrated gradients with 20 steps ≤ 30x a forward. ``integrated_gradients:default``
times the default (the pad baseline, steps doubled from 32 until the gap is within 5%) and notes the steps used.

Prints a markdown table; --json writes {"machine", "rows"} (bench/results/contributions.json).
Usage: python bench/contributions.py [--cases smollm2:128,smollm2:512,minilm:128] [--methods ...] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import current_rss_mb, in_child, long_text, machine, markdown, peak_rss_mb  # noqa: E402

METHODS = (
    "alti",
    "norm_res_ln",
    "value_zeroing",
    "integrated_gradients",
    "integrated_gradients:default",
    "input_x_gradient",
    "grad_attention",
)
MIXING = ("weights", "norm", "norm_res_ln", "alti")  # one recorded forward (values kept) plus the decomposition
CASES = "smollm2:128,smollm2:512,minilm:128"
STEPS = 20  # integrated gradients' interpolation points, as the target states
TARGETS = {"value_zeroing": ("≤ n forwards", None), "integrated_gradients": ("≤ 30x", 30.0), "alti": ("≤ 3x", 3.0)}
# The bundled models' own-token share under each mixing method (docs/explain.md): python bench/contributions.py --diagonal
DIAGONAL_TEXT = "The mouse ran up the clock. The clock struck one, and the mouse ran down."


def text_of(lm, n: int) -> str:
    """A text of about ``n`` tokens (the long paragraph cut at n tokens, special tokens left to the tokenizer)."""
    from attnscope.models.forward import tokenize

    ids = tokenize(lm, long_text(n), max_length=n)[0]["input_ids"][0]
    return lm.tokenizer.decode(ids, skip_special_tokens=True)


def _measure(payload: dict) -> dict:
    import torch

    from attnscope.models import load
    from attnscope.models.attribution import gradient_attribution
    from attnscope.models.contributions import mixing_maps
    from attnscope.models.forward import tokenize
    from attnscope.models.value_zeroing import value_zeroing

    model, n, method = payload["model"], payload["n"], payload["method"]
    lm = load(model, device="cpu", verify=False)
    text = text_of(lm, n)
    enc, _ = tokenize(lm, text)
    tokens = int(enc["input_ids"].shape[1])

    def plain() -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            lm.model(**enc, **({"use_cache": False} if lm.spec.kind == "decoder" else {}))
        return time.perf_counter() - start

    def call():
        if method in MIXING:  # the whole call: the recorded forward, the split, every layer's map and the rollout
            return mixing_maps(lm, text, method)
        if method == "value_zeroing":
            return value_zeroing(lm, text)
        if method == "integrated_gradients:default":  # the default: steps doubled until the attributions add up
            return gradient_attribution(lm, text, "integrated_gradients")
        return gradient_attribution(lm, text, method, steps=STEPS)

    short = text_of(lm, 16)
    plain()  # warm-up: pages in the weights, imports Captum, initialises kernels
    if method in MIXING:
        mixing_maps(lm, short, method)
    elif method == "value_zeroing":
        value_zeroing(lm, short)
    else:
        gradient_attribution(lm, short, method.split(":")[0], steps=2)
    baseline = current_rss_mb()
    before = [plain() for _ in range(3)]
    start = time.perf_counter()
    result = call()
    seconds = time.perf_counter() - start
    after = [plain() for _ in range(2)]
    out = {"tokens": tokens, "seconds": seconds, "forward": statistics.median(before + after), "peak_mb": peak_rss_mb() - baseline}
    if method.startswith("integrated_gradients"):
        out.update({key: result.meta[key] for key in ("completeness", "f_difference", "completeness_share", "steps")})
    return out


def row_of(model: str, n: int, method: str, res: dict) -> dict:
    row = {"model": model, "tokens": n, "method": method}
    if "error" in res:
        row["method s"] = "failed"
        row["note"] = res["error"][:80]
        return row
    ratio = res["seconds"] / res["forward"]
    row.update({"forward s": f"{res['forward']:.3f}", "method s": f"{res['seconds']:.2f}", "x forward": f"{ratio:.1f}x"})
    row["+MB"] = f"{res['peak_mb']:.0f}"
    if method == "value_zeroing":
        share = res["seconds"] / (res["tokens"] * res["forward"])
        row["x n forwards"] = f"{share:.2f}x"
        row["target"] = "≤ n forwards: " + ("met" if share <= 1 else "missed")
    elif method == "alti":
        row["target"] = "≤ 3x: " + ("met" if ratio <= 3 else "missed")
    elif method == "integrated_gradients":
        row["target"] = "≤ 30x: " + ("met" if ratio <= 30 else "missed")
        row["note"] = f"{STEPS} steps; completeness gap {res['completeness_share']:.1%} of |f(x) − f(x')| = {abs(res['f_difference']):.3g}"
    elif method == "integrated_gradients:default":
        row["note"] = f"default: {res['steps']} steps; completeness gap {res['completeness_share']:.1%} (target ≤ 5%)"
    return row


def diagonal() -> None:
    """How much of a token is its own after each block, and how much goes to the first token, per mixing method."""
    import numpy as np

    from attnscope.models import load
    from attnscope.models.contributions import mixing_maps

    rows = []
    for model in ("minilm", "smollm2"):
        lm = load(model)
        for method in MIXING:
            maps, _, tokens, _ = mixing_maps(lm, DIAGONAL_TEXT, method)
            own = float(np.mean([np.diag(m).mean() for m in maps]))
            first = float(maps[:, 1:, 0].mean())
            rows.append({"model": model, "tokens": len(tokens), "method": method, "own token": f"{own:.3f}", "first token": f"{first:.3f}"})
    print(markdown(rows, ["model", "tokens", "method", "own token", "first token"]))


def main() -> None:
    if "--diagonal" in sys.argv:
        diagonal()
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=CASES, help="model:tokens, comma-separated")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--trials", type=int, default=1, help="fresh processes per cell; the fastest ratio is kept")
    parser.add_argument("--json", help="also write {machine, rows} as JSON here")
    args = parser.parse_args()
    rows = []
    for case in args.cases.split(","):
        model, n = case.split(":")
        for method in args.methods.split(","):
            trials = [
                in_child("bench.contributions", {"model": model, "n": int(n), "method": method}, timeout=7200) for _ in range(args.trials)
            ]
            ok = [t for t in trials if "error" not in t]
            res = min(ok, key=lambda t: t["seconds"] / t["forward"]) if ok else trials[0]
            rows.append(row_of(model, int(n), method, res))
            print(json.dumps(rows[-1]), file=sys.stderr)
    columns = ["model", "tokens", "method", "forward s", "method s", "x forward", "x n forwards", "+MB", "target", "note"]
    where = machine()
    print(f"float32, batch 1 — {where}\n")
    print(markdown(rows, columns))
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": where, "rows": rows}, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    if len(sys.argv) == 2 and sys.argv[1].startswith("{"):
        print(json.dumps(_measure(json.loads(sys.argv[1]))))
    else:
        main()
