"""Benchmark: the command line's start and a whole call on a sentence, against a plain transformers script.

Rows, each a fresh process timed from start to exit (wall clock), interleaved over ``--rounds`` rounds:

  help            attnscope --help (as python -m attnscope, what the console script runs)
  extract --help  attnscope extract --help
  attnscope       attnscope extract --model M --text T --out F.npz (load, the check against eager, every map)
  plain script    a script that loads the same weights with transformers (eager kernel), runs the sentence with
                  output_attentions=True and output_hidden_states=True and writes the maps and hidden states
                  to an .npz: what a user would write without attnscope

The table gives the median and the fastest seconds and the ratio of medians (attnscope / plain script).
Run it alone on a quiet machine; the load average is recorded.

Usage: python -m bench.cli [--rounds 7] [--out bench/results/cli-cpu.json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import ROOT, machine

TEXT = "The mouse ate the cheese, then the cat chased the mouse."

PLAIN = """
import sys, numpy as np, torch
from transformers import {cls}, AutoTokenizer
directory, text, out = sys.argv[1:4]
tokenizer = AutoTokenizer.from_pretrained(directory)
model = {cls}.from_pretrained(directory, attn_implementation="eager").eval()
ids = tokenizer(text, return_tensors="pt")
with torch.no_grad():
    result = model(**ids, output_attentions=True, output_hidden_states=True)
np.savez_compressed(
    out,
    attention=torch.stack(result.attentions)[:, 0].numpy(),  # [layer, head, n, n]
    hidden=torch.stack(result.hidden_states)[:, 0].numpy(),  # [layer + 1, n, d]
    tokens=np.array(tokenizer.convert_ids_to_tokens(ids["input_ids"][0])),
)
"""


def weights_directory(alias: str) -> Path:
    """The directory the plain script loads: the bundled package's own, or SmolLM2's converted safetensors cache."""
    from attnscope.models.loaded import bundled_path, gguf_to_safetensors

    directory, gguf_file = bundled_path(alias)
    return gguf_to_safetensors(directory, gguf_file) if gguf_file else directory


def seconds(argv: list[str]) -> float:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    start = time.perf_counter()
    subprocess.run(argv, check=True, cwd=ROOT, capture_output=True, env=env, timeout=600)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--models", default="minilm,smollm2")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "cli-cpu.json"))
    args = parser.parse_args(argv)
    # `python -m attnscope` is what the console script runs (its wrapper adds an import of nothing), and in a checkout it
    # runs this checkout's code, where an editable install's script could point at another one.
    attnscope = [sys.executable, "-m", "attnscope"]
    work = Path(tempfile.mkdtemp())
    load_before = os.getloadavg()
    commands: dict[tuple[str, str], list[str]] = {
        ("-", "help"): [*attnscope, "--help"],
        ("-", "extract --help"): [*attnscope, "extract", "--help"],
    }
    for alias in args.models.split(","):
        cls = "AutoModelForCausalLM" if alias == "smollm2" else "AutoModel"
        script = work / f"plain_{alias}.py"
        script.write_text(PLAIN.format(cls=cls), encoding="utf-8")
        commands[(alias, "attnscope")] = [*attnscope, "extract", "--model", alias, "--text", TEXT, "--out", str(work / "a.npz")]
        commands[(alias, "plain script")] = [sys.executable, str(script), str(weights_directory(alias)), TEXT, str(work / "p.npz")]
    for argv_ in commands.values():  # warm-up: page cache, converted weights
        seconds(argv_)
    times: dict[tuple[str, str], list[float]] = {key: [] for key in commands}
    for _ in range(args.rounds):
        for key, argv_ in commands.items():
            times[key].append(seconds(argv_))
    rows = []
    for (model, what), values in times.items():
        row = {"model": model, "command": what, "median s": round(statistics.median(values), 3), "fastest s": round(min(values), 3)}
        if what == "attnscope":
            plain = statistics.median(times[(model, "plain script")])
            row["vs plain script"] = f"{statistics.median(values) / plain:.2f}x"
        rows.append(row)
    result = {
        "machine": machine(),
        "date": dt.date.today().isoformat(),
        "rounds": args.rounds,
        "load average before / after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "text": TEXT,
        "rows": rows,
    }
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"{result['machine']}; load average {result['load average before / after']}")
    for row in rows:
        print(" | ".join(f"{k}: {v}" for k, v in row.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
