"""Benchmark: the same SmolLM2 forward through each attention backend, with and without recording.

Backends (each length and backend measured in a fresh process, so its peak memory is its own):
  eager           transformers eager with output_attentions=True (what other tools force to see attention)
  sdpa            transformers SDPA, no attention weights
  attnscope-sdpa  attnscope ``run`` on SDPA (records q/k; every map stays available)
  flash           (CUDA) flash-attn's flash_attention_2 if installed, else SDPA with the FLASH_ATTENTION kernel forced
  attnscope-flash (CUDA) attnscope ``run`` with backend="flash"

Time: median of --repeats forwards after the first, in the best of --trials fresh processes (the row
keeps every trial's time and their spread, (max - min) / min, so a reader sees how noisy the machine was). Peak memory: on CUDA
``torch.cuda.max_memory_allocated`` above the loaded weights; on the CPU peak RSS above the RSS
before the forward (models.profile.measure_forward). Prints a markdown table and writes the rows as JSON
(default bench/results/backends-<device>.json; the Backends page draws its scaling chart from it).

Usage: python -m bench.backends [--device cpu|cuda] [--lengths 256,512,1024,2048] [--repeats 3] [--trials 3]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import in_child, long_text, machine, markdown  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
CPU_LENGTHS = (256, 512, 1024, 2048)
GPU_LENGTHS = (256, 512, 1024, 2048, 4096, 8192)
CPU_BACKENDS = ("eager", "sdpa", "attnscope-sdpa")
GPU_BACKENDS = ("eager", "sdpa", "flash", "attnscope-sdpa", "attnscope-flash")
MODEL = "smollm2"


def eager_attention_gb(n: int, bytes_per_value: int, layers: int = 30, heads: int = 9) -> float:
    """What output_attentions alone holds for SmolLM2 at n tokens: [layer, head, n, n]."""
    return layers * heads * n * n * bytes_per_value / 2**30


def _measure(payload: dict) -> dict:
    """In the child process: load, build exactly n tokens, measure one backend."""
    import torch

    from attnscope.models import load, run
    from attnscope.models.flash import flash_kernel_name, has_flash_attn_package
    from attnscope.models.forward import tokenize
    from attnscope.models.profile import measure_forward

    n, backend, device, repeats = payload["n"], payload["backend"], payload["device"], payload["repeats"]
    if payload.get("threads"):
        torch.set_num_threads(payload["threads"])
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    lm = load(MODEL, backend="flash" if backend == "attnscope-flash" else "sdpa", device=device, dtype=dtype)
    text = long_text(n)
    enc, _ = tokenize(lm, text, max_length=n)
    ids = enc["input_ids"].to(device)  # [1, n]
    if ids.shape[1] != n:
        msg = f"built {ids.shape[1]} tokens, wanted {n}"
        raise ValueError(msg)
    base = lm.forward_module()
    kernel = ""
    if backend == "eager":
        base.set_attn_implementation("eager")
    elif backend == "sdpa":
        base.set_attn_implementation("sdpa")
    elif backend == "flash":
        base.set_attn_implementation("flash_attention_2" if has_flash_attn_package() else "sdpa")
        kernel = flash_kernel_name()
    elif backend == "attnscope-flash":
        kernel = flash_kernel_name()

    def forward():
        with torch.inference_mode():
            if backend.startswith("attnscope"):
                return run(lm, text, max_length=n)
            if backend == "flash" and not has_flash_attn_package():
                from torch.nn.attention import SDPBackend, sdpa_kernel

                with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
                    return base(input_ids=ids, use_cache=False, output_hidden_states=True)
            out = base(input_ids=ids, use_cache=False, output_hidden_states=True, output_attentions=backend == "eager")
            if backend == "eager" and out.attentions[0].shape[-1] != n:
                msg = "eager returned no attention weights"
                raise RuntimeError(msg)
            return out

    with torch.inference_mode():  # warm-up on a few tokens: pages the weights in, initialises kernels
        base(input_ids=ids[:, :16], use_cache=False)
    cost = measure_forward(forward, device=device, repeats=repeats)
    return {
        "backend": backend,
        "tokens": n,
        "ms_per_forward": round(cost.seconds * 1000, 1),
        "peak_mb": None if cost.peak_bytes is None else round(cost.peak_bytes / 2**20, 1),
        "memory": cost.memory,
        "dtype": str(dtype).removeprefix("torch."),
        "kernel": kernel,
    }


def best_of_trials(trials: list[dict]) -> dict:
    """The fastest of several fresh-process measurements of one cell, with every trial's time and the spread."""
    ok = [t for t in trials if "error" not in t]
    if not ok:
        return trials[0]
    best = dict(min(ok, key=lambda t: t["ms_per_forward"]))
    times = [t["ms_per_forward"] for t in ok]
    best["ms_trials"] = times
    best["spread_pct"] = round(100 * (max(times) - min(times)) / min(times), 1)
    best["peak_mb"] = max((t["peak_mb"] for t in ok if t["peak_mb"] is not None), default=None)  # memory: the worst trial
    return best


def sweep(
    lengths, backends, device: str, repeats: int, max_eager_gb: float, log=None, threads: int | None = None, trials: int = 1
) -> list[dict]:
    """Measure every (length, backend) in ``trials`` fresh processes each. Rows that could not run carry ``error``."""
    rows = []
    for n in lengths:
        for backend in backends:
            need = eager_attention_gb(n, 2 if device == "cuda" else 4)
            if backend == "eager" and need > max_eager_gb:
                row = {"backend": backend, "tokens": n, "error": f"skipped: output_attentions alone needs {need:.0f} GB"}
            else:
                payload = {"n": n, "backend": backend, "device": device, "repeats": repeats, "threads": threads}
                row = best_of_trials([in_child("bench.backends", payload) for _ in range(trials)])
                row.setdefault("backend", backend)
                row.setdefault("tokens", n)
            rows.append(row)
            if log:
                log(json.dumps(row))
    return rows


def table(rows: list[dict]) -> str:
    """Markdown: one row per (length, backend), with time and memory relative to eager at that length."""
    eager = {r["tokens"]: r for r in rows if r["backend"] == "eager" and "error" not in r}
    plain = {(r["tokens"], r["backend"]): r for r in rows if "error" not in r}
    out = []
    for r in rows:
        line = {"tokens": r["tokens"], "backend": r["backend"]}
        if "error" in r:
            line.update({"ms / forward": "—", "peak MB": "—", "note": r["error"][:70]})
        else:
            line["ms / forward"] = f"{r['ms_per_forward']:.1f}"
            line["peak MB"] = "?" if r["peak_mb"] is None else f"{r['peak_mb']:.0f}"
            ref = eager.get(r["tokens"])
            if ref and r["backend"] != "eager":
                line["speed vs eager"] = f"{ref['ms_per_forward'] / r['ms_per_forward']:.2f}x"
                if ref["peak_mb"] and r["peak_mb"]:
                    line["memory vs eager"] = f"{ref['peak_mb'] / r['peak_mb']:.1f}x less"
            bare = plain.get((r["tokens"], r["backend"].removeprefix("attnscope-")))
            if r["backend"].startswith("attnscope-") and bare:
                line["recording overhead"] = f"{100 * (r['ms_per_forward'] / bare['ms_per_forward'] - 1):+.0f}% time"
            if "spread_pct" in r:
                line["spread"] = f"{r['spread_pct']:.0f}%"
            line["note"] = r.get("kernel", "")
        out.append(line)
    cols = ["tokens", "backend", "ms / forward", "peak MB", "speed vs eager", "memory vs eager", "recording overhead", "spread", "note"]
    return markdown(out, cols)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--lengths", help="comma-separated token counts (CPU default 256,512,1024,2048; CUDA 256..8192)")
    parser.add_argument("--backends", help=f"comma-separated subset (CPU: {','.join(CPU_BACKENDS)}; CUDA: {','.join(GPU_BACKENDS)})")
    parser.add_argument("--repeats", type=int, default=3, help="timed forwards per measurement (median)")
    parser.add_argument("--trials", type=int, default=3, help="fresh processes per cell; the fastest is kept (with the spread)")
    parser.add_argument("--max-eager-gb", type=float, default=8.0, help="skip eager where output_attentions alone needs more")
    parser.add_argument("--threads", type=int, help="torch CPU threads per measurement (default: torch's choice)")
    parser.add_argument("--json", help="where to write the rows (default bench/results/backends-<device>.json)")
    args = parser.parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda asked for but no CUDA GPU is available here; use --device cpu")
    lengths = [int(v) for v in args.lengths.split(",")] if args.lengths else list(GPU_LENGTHS if args.device == "cuda" else CPU_LENGTHS)
    backends = args.backends.split(",") if args.backends else list(GPU_BACKENDS if args.device == "cuda" else CPU_BACKENDS)
    unknown = set(backends) - set(GPU_BACKENDS)
    if unknown or (args.device == "cpu" and {"flash", "attnscope-flash"} & set(backends)):
        parser.error(f"unknown or unavailable backends {sorted(unknown or {'flash'})}; flash runs with --device cuda only")
    rows = sweep(
        lengths,
        backends,
        args.device,
        args.repeats,
        args.max_eager_gb,
        log=lambda line: print(line, file=sys.stderr),
        threads=args.threads,
        trials=args.trials,
    )
    result = {
        "model": "SmolLM2-135M-Instruct",
        "device": args.device,
        "machine": machine(),
        "date": dt.date.today().isoformat(),
        "torch": torch.__version__,
        "repeats": args.repeats,
        "trials": args.trials,
        "threads": args.threads,
        "rows": rows,
    }
    out = Path(args.json) if args.json else RESULTS / f"backends-{args.device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    dtype = "bfloat16" if args.device == "cuda" else "float32"
    print(f"SmolLM2-135M, {dtype}, batch 1, {result['date']}: {result['machine']}\n")
    threads = f", torch threads {args.threads} per measurement" if args.threads else ""
    print(
        f"median of {args.repeats} forwards after the first, best of {args.trials} fresh processes{threads}; peak MB = peak memory above the loaded model, one fresh process each\n"
    )
    print(table(rows))
    print(f"\nrows written to {out}")


if __name__ == "__main__":
    if len(sys.argv) == 2 and sys.argv[1].startswith("{"):
        print(json.dumps(_measure(json.loads(sys.argv[1]))))
    else:
        main()
