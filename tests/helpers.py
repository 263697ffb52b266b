"""Scaffolding shared by test modules (a test module never imports another): the CLI runner, the thread
harness, teacher forcing, the contribution tests' sub-block hooks and tolerance."""

from __future__ import annotations

import contextlib
import io
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
# What a shell with nothing set up gives a command: no hub access, the system's PATH, a home.
BARE_ENV = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(Path.home())}
TEXT = "The mouse ran up the old clock, then down again."

# Where each tiny architecture's attention sub-block writes its output y, and how y is read there: "add" (Pre-LN:
# block input + the module's output) or "is" (Post-LN: the module's output is y).
SUBBLOCK = {
    "gpt2": ("transformer.h.{}.attn", "add"),
    "llama_gqa": ("model.layers.{}.self_attn", "add"),
    "llama_mqa": ("model.layers.{}.self_attn", "add"),
    "gpt_neox": ("gpt_neox.layers.{}.attention", "add"),
    "t5_encoder": ("encoder.block.{}.layer.0", "is"),
    "bert": ("encoder.layer.{}.attention", "is"),
    "distilbert": ("transformer.layer.{}.sa_layer_norm", "is"),
}


@dataclass(frozen=True)
class CliResult:
    rc: int
    stdout: str
    stderr: str

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]


def run_cli(argv: Sequence[str], cwd: Path | str = ROOT, process: bool = False, env: dict | None = None) -> CliResult:
    """One ``attnscope`` subcommand: in this process (``cli.main``, output captured), or with ``process=True`` as
    ``python cli.py ...`` in a fresh interpreter, for what only a fresh process shows (exit codes from argparse, no
    traceback, nothing imported beforehand)."""
    if process:
        proc = subprocess.run([sys.executable, str(ROOT / "cli.py"), *argv], cwd=cwd, capture_output=True, text=True, timeout=300, env=env)
        return CliResult(proc.returncode, proc.stdout, proc.stderr)
    from attnscope import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), contextlib.chdir(cwd):
        try:
            rc = cli.main(list(argv))
        except SystemExit as exit_:  # argparse's own errors
            rc = exit_.code if isinstance(exit_.code, int) else 2
    return CliResult(rc, out.getvalue(), err.getvalue())


def assert_one_line_exit_2(result: CliResult, needle: str) -> None:
    """Bad input: exit 2, one stderr line naming the problem, no traceback."""
    assert result.rc == 2, result.stderr
    assert len(result.error_lines) == 1, result.stderr
    assert needle in result.error_lines[0] and "Traceback" not in result.stderr, result.stderr


def in_threads(*jobs: tuple[Callable[[], object], int]) -> list[list[object]]:
    """Each ``(call, times)`` in a thread of its own, all started together; the results per job, in order. An
    exception in any thread is raised here, after all have stopped."""
    barrier = threading.Barrier(len(jobs))
    results: list[list[object]] = [[] for _ in jobs]
    errors: list[BaseException] = []

    def work(index: int, call: Callable[[], object], times: int) -> None:
        try:
            barrier.wait()
            for _ in range(times):
                results[index].append(call())
        except BaseException as exc:  # noqa: BLE001 - raised below in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i, call, times)) for i, (call, times) in enumerate(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


def teacher_forced(lm, rec):
    """One plain recorded forward over a generated record's final sequence (prompt + generated tokens)."""
    from attnscope.models.forward import record_forward

    ids = torch.as_tensor(rec.input_ids)
    return record_forward(lm, rec.texts, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, "right", True)


def max_map_diff(lm, a, b) -> float:
    """The largest difference between two records' maps, over every layer and head."""
    n_layers, n_heads = lm.spec.n_layers, lm.spec.n_heads
    return max(float(np.abs(a.attention(l, h) - b.attention(l, h)).max()) for l in range(n_layers) for h in range(n_heads))


def scale_close(actual: torch.Tensor, expected: torch.Tensor, rel: float = 1e-4) -> None:
    """``actual`` equals ``expected`` within ``rel`` of the larger of 1 and the largest |expected|."""
    scale = float(expected.abs().max())
    assert float((actual - expected).abs().max()) <= rel * max(scale, 1.0), (actual, expected)


def subblock_outputs(lm, text: str) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(block inputs, attention sub-block outputs y) per layer, read with forward hooks on the
    model's own modules."""
    template, how = SUBBLOCK[lm.spec.name.removeprefix("tiny-")]
    captured: dict[int, torch.Tensor] = {}
    handles = []
    for layer in range(lm.spec.n_layers):
        module = lm.model.get_submodule(template.format(layer))

        def hook(_mod, _args, output, layer=layer):
            captured[layer] = (output[0] if isinstance(output, tuple) else output).detach()

        handles.append(module.register_forward_hook(hook))
    enc = lm.tokenizer(text, return_tensors="pt")
    try:
        with torch.no_grad():
            base = lm.model.base_model if lm.spec.kind == "decoder" else lm.model
            out = base(**{k: v for k, v in enc.items() if k != "token_type_ids" or "bert" in lm.spec.model_type}, output_hidden_states=True)
    finally:
        for handle in handles:
            handle.remove()
    inputs = [out.hidden_states[layer][0] for layer in range(lm.spec.n_layers)]
    ys = [captured[layer][0] + (inputs[layer] if how == "add" else 0) for layer in range(lm.spec.n_layers)]
    return inputs, ys


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def local_ray(num_cpus: int = 2):
    """A local Ray session for the corpus jobs' worker tests, shut down (with the job module's pools) after."""
    import ray

    from attnscope.corpus import job as corpus_job

    env = {"PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    ray.init(
        num_cpus=num_cpus,
        include_dashboard=False,
        object_store_memory=128 * 1024**2,
        log_to_driver=False,
        logging_level="ERROR",
        runtime_env={"env_vars": env},
    )
    try:
        yield ray
    finally:
        corpus_job._POOLS.clear()
        ray.shutdown()
