"""Benchmark: every head statistic of every SmolLM2 head at 2,048 tokens vs. a plain SDPA forward.

Prints a markdown table. Run: ``python bench/heads.py [--tokens 2048] [--repeats 3]``.
Times are the best of ``--repeats`` on whatever machine runs it (note shared CPUs).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from attnscope.models import load  # noqa: E402
from attnscope.models.aggregates import group_similarity_table, rollout_of  # noqa: E402
from attnscope.models.forward import run_ids  # noqa: E402
from attnscope.models.probes import induction_scores  # noqa: E402
from attnscope.models.profile import best_of  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    lm = load(args.model, backend="sdpa", device=args.device)
    vocab = len(lm.tokenizer)
    ids = np.random.default_rng(0).integers(100, vocab, size=(1, args.tokens))  # [1, n]
    device = next(lm.model.parameters()).device
    base = lm.forward_module()
    input_ids = torch.from_numpy(ids).to(device)

    def plain():  # the model with its own attention kernel, nothing recorded
        impl = base.config._attn_implementation
        try:
            base.config._attn_implementation = "sdpa"
            with torch.inference_mode():
                return base(input_ids=input_ids, use_cache=False) if lm.spec.kind == "decoder" else base(input_ids=input_ids)
        finally:
            base.config._attn_implementation = impl

    plain()  # warm-up
    t_plain, _ = best_of(plain, args.repeats)
    t_run, rec = best_of(lambda: run_ids(lm, ids), args.repeats)
    t_stats, stats = best_of(lambda: rec.head_stats(), args.repeats)
    t_ind, _ = best_of(lambda: induction_scores(lm), args.repeats)
    t_groups, _ = best_of(lambda: group_similarity_table(rec), 1)
    short = run_ids(lm, ids[:, :256])
    t_roll, _ = best_of(lambda: rollout_of(short), 1)

    s = lm.spec
    print(
        f"### Head analysis: {s.name}, {args.tokens} tokens, {s.n_layers} layers x {s.n_heads} heads, {args.device}, "
        f"{torch.get_num_threads()} threads (best of {args.repeats})\n"
    )
    print("| step | seconds | x plain sdpa forward |")
    print("|---|---:|---:|")
    rows = [
        ("plain sdpa forward (no recording)", t_plain),
        ("attnscope run (sdpa + recording)", t_run),
        (f"head_stats, all {len(stats)} heads (7 statistics)", t_stats),
        ("run + head_stats", t_run + t_stats),
        ("induction probe (T=50, 4 sequences of 100 tokens)", t_ind),
        (f"GQA group similarity, all layers ({args.tokens} tokens, once)", t_groups),
        ("rollout, all layers (256 tokens, once)", t_roll),
    ]
    for name, t in rows:
        print(f"| {name} | {t:.2f} | {t / t_plain:.2f} |")
    print(f"\nhead_stats alone / plain forward: **{t_stats / t_plain:.2f}x** (target: within 2x)")


if __name__ == "__main__":
    main()
