"""Benchmark: attnscope's recording ``generate`` against transformers' plain ``generate``.

SmolLM2, a prompt of --prompt tokens, --new greedy tokens (no early stop), each measured in a fresh
process (so peak RSS is its own):
  (a) plain ``model.generate`` (SDPA, KV cache, nothing recorded)
  (b) attnscope ``generate``: the same, every step's query and the cache's keys recorded through the
      hook, hidden states kept, one extra step for the last token, per-step top-k
Memory should grow linearly with the sequence (no n² tensor is kept): the table also shows (b)'s
recorded bytes at two sequence lengths.
Usage: python bench/generate.py [--prompt 512] [--new 128] [--trials 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import current_rss_mb, in_child, long_text, machine, markdown, peak_rss_mb  # noqa: E402


def _recorded_bytes(rec) -> int:
    """Bytes the record keeps: queries, keys, masks and hidden states."""
    total = 0
    for layer in rec.layers:
        for t in (layer.query, layer.key, layer.mask if not isinstance(layer.mask, str) else None):
            if t is not None:
                total += t.numel() * t.element_size()
    return total + sum(h.numel() * h.element_size() for h in rec.hidden_states)


def _measure(payload: dict) -> dict:
    import torch
    from transformers import GenerationConfig

    from attnscope.models import load
    from attnscope.models.forward import tokenize
    from attnscope.models.generation import generate

    lm = load("smollm2", backend="sdpa", device="cpu", verify=False)
    prompt = lm.tokenizer.decode(tokenize(lm, long_text(payload["prompt"]), max_length=payload["prompt"])[0]["input_ids"][0])
    new = payload["new"]
    with torch.inference_mode():  # warm-up: pages in the mmapped weights
        generate(lm, "Hello", max_new_tokens=2)
    baseline = current_rss_mb()
    start = time.perf_counter()
    if payload["mode"] == "plain":
        lm.model.set_attn_implementation("sdpa")
        enc, _ = tokenize(lm, prompt)
        config = GenerationConfig(max_new_tokens=new, do_sample=False, eos_token_id=None, pad_token_id=0, use_cache=True)
        with torch.inference_mode():
            out = lm.model.generate(**enc, generation_config=config)
        n = int(out.shape[1])
        recorded = 0
    else:
        rec = generate(lm, prompt, max_new_tokens=new, stop_at_eos=False)
        n = int(rec.input_ids.shape[1])
        recorded = _recorded_bytes(rec)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_mb": peak_rss_mb() - baseline, "tokens": n, "recorded_mb": recorded / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompt", type=int, default=512)
    parser.add_argument("--new", type=int, default=128)
    parser.add_argument("--trials", type=int, default=3, help="fresh processes per cell; the fastest is kept")
    parser.add_argument("--json", help="also write the rows as JSON here")
    args = parser.parse_args()
    rows = []
    for new in (args.new // 2, args.new):
        row = {"prompt": args.prompt, "new tokens": new}
        for mode, label in (("plain", "a"), ("attnscope", "b")):
            trials = [in_child("bench.generate", {"prompt": args.prompt, "new": new, "mode": mode}) for _ in range(args.trials)]
            ok = [t for t in trials if "error" not in t]
            if not ok:
                row[f"({label}) s"] = "failed: " + trials[0]["error"][:60]
                continue
            best = min(ok, key=lambda t: t["seconds"])
            times = [t["seconds"] for t in ok]
            row[f"({label}) s"] = f"{best['seconds']:.2f}"
            row[f"({label}) +MB"] = f"{best['peak_mb']:.0f}"
            row[f"({label}) spread"] = f"{100 * (max(times) - min(times)) / min(times):.0f}%"
            if mode == "attnscope":
                row["recorded MB"] = f"{best['recorded_mb']:.0f}"
        try:
            row["b/a time"] = f"{float(row['(b) s']) / float(row['(a) s']):.2f}x"
        except (KeyError, ValueError):
            row["b/a time"] = "—"
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    cols = ["prompt", "new tokens", "(a) s", "(a) +MB", "(b) s", "(b) +MB", "recorded MB", "b/a time", "(a) spread", "(b) spread"]
    print(f"SmolLM2-135M, float32, greedy, batch 1 — {machine()}\n")
    print("(a) plain model.generate (SDPA, KV cache) · (b) attnscope generate (the same, every step recorded)")
    print(f"best of {args.trials} fresh processes per cell (spread = (max - min) / min); +MB = peak RSS above the loaded model\n")
    print(markdown(rows, cols))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    if len(sys.argv) == 2 and sys.argv[1].startswith("{"):
        print(json.dumps(_measure(json.loads(sys.argv[1]))))
    else:
        main()
