"""A corpus job on Ray: a pool of actors, one loaded model each, fed memory-sized batches.

The driver reads and checks everything first (file, address, model), plans batches, and is the only
writer of the result directory: each finished batch becomes a shard as soon as it comes back, so a
killed job or a dead worker loses at most the batches in flight, and a second run with the same
``out`` skips every text a shard holds. Ray is imported here and nowhere else in attnscope.
"""

from __future__ import annotations

import os
import resource
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import pandas as pd

from attnscope.corpus import store
from attnscope.corpus.cluster import check_address, require_ray
from attnscope.corpus.compute import ANALYSES, Item, process_items
from attnscope.corpus.plan import DEFAULT_CAP, make_plan
from attnscope.corpus.reader import read_corpus

__all__ = ["DEMO_CORPUS", "CorpusConfig", "require_ray", "run_corpus"]

ROOT = Path(__file__).resolve().parents[1]
DEMO_CORPUS = Path(__file__).resolve().parent / "data" / "demo.txt"
MAX_ATTEMPTS = 2  # a batch whose worker died this often is retried one text at a time
MB = 1024**2


@dataclass
class CorpusConfig:
    """One corpus job. Defaults suit one machine; ``address`` joins a cluster."""

    model: str | Callable  # bundled alias, HF id, local dir, or a zero-argument factory returning a LoadedModel
    out: Path
    data: Path = DEMO_CORPUS
    analysis: str = "heads"  # one of ANALYSES
    word: str | None = None  # drift: the word to follow (default "mouse")
    top: int | None = None  # examples: examples kept per head and criterion (default 20)
    criterion: str | None = None  # examples: max-weight (default), previous-token, induction, low-entropy, all, or a comma list
    layer: int | None = None  # geometry: the head's layer (0-based)
    head: int | None = None  # geometry: the head (0-based)
    text_field: str | None = None  # .jsonl field / .csv or .parquet column (default "text")
    address: str | None = None  # None: a local Ray for this job; "auto" or "ray://host:port": an existing cluster
    workers: int | None = None  # actors, one model each; default one per CPU Ray offers
    max_batch: int = 16  # texts per batch at most; the memory guard may allow fewer
    max_tokens: int | None = None  # token cap per text; default the model's position limit (or 512)
    too_long: Literal["refuse", "split"] = "refuse"  # "refuse" (reported as a bad row) or "split" (token-boundary pieces under the cap)
    progress: bool = True  # a progress bar on stderr (texts/s, ETA)
    object_store_mb: int = 256  # results are small frames; a modest store leaves RAM to the models
    connect_timeout_s: float = 5.0  # a cluster address that does not answer fails within this
    fault_exit_at_batch: int | None = None  # testing: the worker given this batch dies (os._exit) the first time
    inline: bool = False  # no Ray: run the batches in this process (debugging, small corpora)
    on_shard: Callable[[dict], None] | None = field(default=None, repr=False)  # called after each shard is written


# -- checks before anything starts ----------------------------------------------------------------
def _check_config(config: CorpusConfig) -> None:
    if config.analysis not in ANALYSES:
        msg = f"--analysis {config.analysis!r}: choose one of {', '.join(ANALYSES)}"
        raise ValueError(msg)
    if config.analysis != "drift" and config.word is not None:
        msg = "--word applies to --analysis drift only"
        raise ValueError(msg)
    if config.analysis != "examples" and (config.top is not None or config.criterion is not None):
        msg = "--top and --criterion apply to --analysis examples only"
        raise ValueError(msg)
    if config.analysis != "geometry" and (config.layer is not None or config.head is not None):
        msg = "--layer and --head apply to --analysis geometry only"
        raise ValueError(msg)
    if config.analysis == "geometry" and (config.layer is None or config.head is None):
        msg = "--analysis geometry needs --layer L and --head H (0-based)"
        raise ValueError(msg)
    if config.analysis == "examples":
        from attnscope.analysis.examples import parse_criteria

        parse_criteria(config.criterion)
        if config.top is not None and (not isinstance(config.top, int) or config.top < 1):
            msg = f"--top {config.top!r}: give a positive whole number"
            raise ValueError(msg)
    if config.too_long not in ("refuse", "split"):
        msg = f"--too-long {config.too_long!r}: choose refuse or split"
        raise ValueError(msg)
    for name, flag in (("workers", "--workers"), ("max_batch", "--batch-size"), ("max_tokens", "--max-tokens")):
        value = getattr(config, name)
        if value is not None and (not isinstance(value, int) or value < (2 if name == "max_tokens" else 1)):
            msg = f"{flag} {value!r}: give a positive whole number"
            raise ValueError(msg)


def load_checked(model):
    """Load the model once in the driver: a model that fails to load stops the job before Ray starts."""
    from attnscope.models import load

    try:
        return model() if callable(model) else load(model, device="cpu")
    except ValueError as exc:
        msg = f"--model {model}: {exc}"
        raise ValueError(msg) from None
    except Exception as exc:  # noqa: BLE001 - any loader failure is one line for the user
        msg = f"--model {model}: failed its load check ({type(exc).__name__}: {exc})"
        raise ValueError(msg) from None


def _cap(lm, max_tokens: int | None) -> int:
    from attnscope.models.limits import max_tokens as guard_max_tokens

    limit = lm.spec.max_positions
    if max_tokens is not None and limit is not None and max_tokens > limit:
        msg = f"--max-tokens {max_tokens} exceeds {lm.spec.name}'s {limit} positions; use at most {limit}"
        raise ValueError(msg)
    cap = max_tokens or min(limit or DEFAULT_CAP, DEFAULT_CAP if limit is None else limit)
    return min(cap, guard_max_tokens())


def _fits(lm, workers: int) -> Callable[[int, int], bool]:
    """The memory guard's verdict for one padded batch in one of ``workers`` workers on this machine."""
    from attnscope.models.limits import estimate_run_bytes, max_tokens, memory_limit_bytes

    share = memory_limit_bytes() / max(workers, 1)

    def fits(batch: int, n: int) -> bool:
        return batch * n <= max_tokens() and estimate_run_bytes(lm.model.config, lm.spec, batch, n, True) <= share

    return fits


# -- Ray ------------------------------------------------------------------------------------------
class _Worker:
    """One Ray actor: one loaded model, many batches (of any analysis)."""

    def __init__(self, model, threads: int):
        import torch

        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        torch.set_num_threads(max(1, threads))
        self.lm = load_checked(model)

    def process(
        self, number: int, items: list[Item], analysis: str, word: str | None, fault: dict | None, options: dict | None = None
    ) -> dict:
        if fault and number == fault["batch"] and not os.path.exists(fault["marker"]):
            Path(fault["marker"]).touch()
            os._exit(1)  # a worker dying mid-batch, as an out-of-memory kill would
        result = process_items(self.lm, items, analysis, word, options)
        return {**result, "pid": os.getpid(), "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


# Actor pools kept between jobs while the caller's Ray connection lives (a notebook, a test module):
# a second job on the same model skips starting workers and loading the model again.
_POOLS: dict[tuple, list] = {}


def _connect(ray, config: CorpusConfig, out: Path) -> bool:
    """Start a local Ray (or join ``address``). Returns True when this job started it (and must stop it)."""
    if ray.is_initialized():
        return False  # a caller (a test, a notebook) already connected: use it and leave it running
    env = {
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "0"),
        "TRANSFORMERS_OFFLINE": os.environ.get("TRANSFORMERS_OFFLINE", "0"),
    }
    common = dict(include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        if config.address is None:
            cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
            env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
            ray.init(num_cpus=cpus, object_store_memory=config.object_store_mb * MB, runtime_env={"env_vars": env}, **common)
        else:
            # Nodes of a cluster get attnscope's code from here; models and packages must be installed there.
            excludes = [".venv", ".git", "**/__pycache__", "tests", "bench/results", "results"]
            try:
                excludes.append(str(out.resolve().relative_to(ROOT)))
            except ValueError:
                pass
            ray.init(address=config.address, runtime_env={"working_dir": str(ROOT), "excludes": excludes, "env_vars": env}, **common)
    except ConnectionError as exc:
        msg = f"--address {config.address}: {exc}".split("\n")[0]
        raise ValueError(msg) from None
    return True


def _progress(total: int, initial: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(
        total=total, initial=initial, unit="text", desc="corpus", file=sys.stderr, disable=not enabled, smoothing=0.1, dynamic_ncols=True
    )


def _execute(ray, config: CorpusConfig, out: Path, batches: list[list[Item]], runs: int, bar, stats: dict, keep_pool: bool) -> None:
    """Feed batches to an actor pool; write each result as a shard; replace dead workers."""
    cpus = int(ray.cluster_resources().get("CPU", 1))
    workers = min(config.workers or max(1, cpus), len(batches))
    threads = max(1, cpus // workers)
    word = stats["word"]
    fault = None
    if config.fault_exit_at_batch is not None:
        fault = {"batch": config.fault_exit_at_batch, "marker": str(out / f".fault-{config.fault_exit_at_batch}")}
    # More workers than CPUs share them (fractional CPUs), so that no actor waits forever for a free CPU.
    actor_class = ray.remote(num_cpus=min(threads, cpus / workers), max_restarts=0)(_Worker)
    key = (ray.get_runtime_context().get_job_id(), config.model, threads)
    pool = _POOLS.pop(key, []) if keep_pool else []
    for other in list(_POOLS):  # idle workers of another model would hold the CPUs this pool needs
        for actor in _POOLS.pop(other):
            ray.kill(actor)
    pool = pool[:workers] + [actor_class.remote(config.model, threads) for _ in range(workers - len(pool))]
    stats.update(workers=workers, threads_per_worker=threads)
    queue = deque((f"r{runs:03d}-b{k:06d}", k, batch, 0) for k, batch in enumerate(batches))
    idle, running = list(pool), cast(dict[Any, Any], {})
    try:
        while queue or running:
            while idle and queue:
                actor = idle.pop()
                name, number, items, attempts = queue.popleft()
                ref = actor.process.remote(number, items, config.analysis, word, fault, stats["options"])
                running[ref] = (actor, name, number, items, attempts)
            ready, _ = ray.wait(list(running), num_returns=1)
            actor, name, number, items, attempts = running.pop(ready[0])
            try:
                result = ray.get(ready[0])
            except ray.exceptions.RayActorError:
                stats["worker_deaths"] += 1
                ray.kill(actor)
                idle.append(actor_class.remote(config.model, threads))  # a fresh worker with its own model
                if attempts + 1 < MAX_ATTEMPTS:
                    queue.appendleft((name, number, items, attempts + 1))
                elif len(items) > 1:  # one text may be what kills it: isolate each
                    queue.extendleft((f"{name}-t{k:03d}", -1, [item], 0) for k, item in enumerate(items))
                else:
                    result = {
                        "rows": pd.DataFrame(),
                        "pid": None,
                        "peak_rss_mb": 0.0,
                        "bad": [
                            {"text_id": items[0][0], "segment": items[0][1], "reason": f"a worker died {MAX_ATTEMPTS} times on this text"}
                        ],
                    }
                    _write_batch(out, name, items, result, bar, stats, config)
                continue
            except ray.exceptions.RayTaskError as exc:  # an unexpected error inside the worker: report its texts
                reason = str(exc).strip().splitlines()[-1][:300]
                result = {
                    "rows": pd.DataFrame(),
                    "pid": None,
                    "peak_rss_mb": 0.0,
                    "bad": [{"text_id": i, "segment": s, "reason": reason} for i, s, _ in items],
                }
            idle.append(actor)
            _write_batch(out, name, items, result, bar, stats, config)
    except BaseException:
        busy = [a for a, *_ in running.values()]
        if keep_pool:  # the caller's Ray lives on: workers finish their batch (its result is dropped) and stay ready
            _POOLS[key] = idle + busy
        else:
            for actor in idle + busy:
                try:
                    ray.kill(actor)
                except Exception:  # noqa: BLE001 - already gone
                    pass
        raise
    if keep_pool:
        _POOLS[key] = idle
    else:
        for actor in idle:
            ray.kill(actor)


def _execute_inline(lm, config: CorpusConfig, out: Path, batches: list[list[Item]], runs: int, bar, stats: dict) -> None:
    """The same batches in this process with the driver's model: no Ray (debugging, small corpora, tests)."""
    stats.update(workers=0, threads_per_worker=0)
    for k, items in enumerate(batches):
        result = process_items(lm, items, config.analysis, stats["word"], stats["options"])
        result.update(pid=os.getpid(), peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        _write_batch(out, f"r{runs:03d}-b{k:06d}", items, result, bar, stats, config)


def _write_batch(out: Path, name: str, items: list[Item], result: dict, bar, stats: dict, config: CorpusConfig) -> None:
    ids = sorted({i for i, _, _ in items})
    if result.get("examples") is not None and len(result["examples"]):
        store.write_examples_shard(out, name, result["examples"])
    store.write_shard(out, name, result["rows"], ids, result["bad"])
    if stats["first_result_s"] is None:
        stats["first_result_s"] = time.perf_counter() - stats["t0"]
    if result.get("pid") is not None:
        peaks = stats["peak_rss_mb_per_worker"]
        peaks[str(result["pid"])] = max(peaks.get(str(result["pid"]), 0.0), round(result["peak_rss_mb"], 1))
    stats["processed"] += len(ids)
    bar.update(len(ids))
    if config.on_shard is not None:
        config.on_shard({"name": name, "text_ids": ids, "processed": stats["processed"]})


# -- the job --------------------------------------------------------------------------------------
def run_corpus(config: CorpusConfig) -> dict:
    """Run ``config.analysis`` over every text of ``config.data``; write shards and a summary to ``config.out``.

    Returns:
        the summary info (also written to OUT/summary.json): counts, timings, workers, peak memory.
    Raises:
        ValueError: bad input (file, column, empty corpus, address, model); nothing already written is removed.
    """
    from attnscope.analysis.corpus import aggregate, drift_summary
    from attnscope.analysis.drift import DEFAULT_WORD

    t0 = time.perf_counter()
    _check_config(config)
    word = (config.word or DEFAULT_WORD) if config.analysis == "drift" else None
    options: dict[str, Any] | None = None
    if config.analysis == "examples":
        from attnscope.analysis.examples import DEFAULT_TOP, parse_criteria

        options = {"top": config.top or DEFAULT_TOP, "criteria": parse_criteria(config.criterion)}
    elif config.analysis == "geometry":
        options = {"layer": config.layer, "head": config.head}
    corpus = read_corpus(config.data, config.text_field)
    check_address(config.address, config.connect_timeout_s)
    if config.address is not None:
        require_ray()
    lm = load_checked(config.model)
    if config.analysis == "geometry":
        _check_head(lm, config.layer, config.head)
    cap = _cap(lm, config.max_tokens)
    out = Path(config.out)
    manifest = {
        "model": config.model if isinstance(config.model, str) else lm.spec.name,
        "model_name": lm.spec.name,
        "kind": lm.spec.kind,
        "n_layers": lm.spec.n_layers,
        "n_heads": lm.spec.n_heads,
        "analysis": config.analysis,
        "word": word,
        "data": str(config.data),
        "data_sha256": store.file_sha256(Path(config.data)),
        "text_field": config.text_field,
        "cap": cap,
        "too_long": config.too_long,
        **({"top": options["top"], "criteria": options["criteria"]} if options is not None and config.analysis == "examples" else {}),
        **({"layer": config.layer, "head": config.head} if config.analysis == "geometry" else {}),
    }
    store.check_dir(out, manifest)  # a different job's directory is refused before anything is read or written
    before = store.read_shards(out)
    remaining = corpus.texts[~corpus.texts["text_id"].isin(before.done)]
    stats: dict[str, Any] = {
        "t0": t0,
        "first_result_s": None,
        "processed": 0,
        "worker_deaths": 0,
        "peak_rss_mb_per_worker": {},
        "workers": 0,
        "threads_per_worker": 0,
        "ray_start_s": None,
        "word": word,
        "options": options,
    }
    plan = None
    if len(remaining):
        workers_hint = config.workers or (len(os.sched_getaffinity(0)) if config.address is None else 1)
        plan = make_plan(
            lm.tokenizer, remaining, cap=cap, too_long=config.too_long, fits=_fits(lm, workers_hint), max_batch=config.max_batch
        )
    if not before.done and (plan is None or not plan.batches):  # every text refused up front: fail without writing
        refused = corpus.bad + (plan.bad if plan else [])
        example = f" (text {refused[0]['text_id']}: {refused[0]['reason']})" if refused else ""
        msg = f"no text of {config.data} can be analysed: {len(refused)} refused{example}; nothing written"
        raise ValueError(msg)
    runs = store.prepare_dir(out, manifest)
    store.write_texts(out, corpus.texts)
    if plan is not None and plan.batches:
        bar = _progress(len(corpus.texts), len(before.done & set(corpus.texts["text_id"])), config.progress)
        try:
            if config.inline:
                _execute_inline(lm, config, out, plan.batches, runs, bar, stats)
            else:
                ray = require_ray()
                started = _connect(ray, config, out)
                stats["ray_start_s"] = round(time.perf_counter() - t0, 2)
                try:
                    _execute(ray, config, out, plan.batches, runs, bar, stats, keep_pool=not started)
                finally:
                    if started:
                        ray.shutdown()
        finally:
            bar.close()
    compute_end = time.perf_counter()

    shards = store.read_shards(out)
    bad = [{**b, "segment": None} for b in corpus.bad] + [{**b, "segment": None} for b in (plan.bad if plan else [])]
    bad += [{**f, "preview": _preview(corpus.texts, f["text_id"])} for f in shards.failed]
    store.write_bad_rows(out, bad)
    if config.analysis == "drift":
        summary = (
            drift_summary(shards.rows)
            if len(shards.rows)
            else pd.DataFrame(columns=["layer", "n_occurrences", "n_texts", "self_similarity", "k", "silhouette"])
        )
    elif config.analysis == "geometry" and len(shards.rows):
        from attnscope.analysis.geometry import qk_points

        summary = qk_points(shards.rows)
        store._atomic_write(out / store.GEOMETRY, lambda path: summary.to_parquet(path, index=False))
    elif len(shards.rows):
        summary = aggregate(shards.rows)
    else:
        msg = f"no text of {config.data} gave a result ({len(bad)} bad rows, listed in {out / store.BAD_ROWS})"
        raise ValueError(msg)
    if config.analysis == "induction":
        from attnscope.models.probes import induction_scores

        probe = induction_scores(lm).rename(columns={"induction": "induction_probe"})
        store._atomic_write(out / "probe.parquet", lambda path: probe.to_parquet(path, index=False))

    if config.analysis == "examples":
        assert options is not None
        examples = store.merge_examples(out, options["top"])
        store._atomic_write(out / store.EXAMPLES, lambda path: examples.to_parquet(path, index=False))

    result_ids = set(shards.rows["text_id"].unique().tolist()) if len(shards.rows) else set()
    bad_ids = {int(b["text_id"]) for b in bad}
    usable = set(corpus.texts["text_id"].tolist())
    all_rows = usable | {int(b["text_id"]) for b in corpus.bad}
    processed = stats["processed"]
    elapsed = compute_end - t0
    info = {
        "model": manifest["model_name"],
        "analysis": config.analysis,
        "word": word,
        "data": str(config.data),
        "rows_in_file": corpus.n_rows,
        "texts_usable": len(usable),
        "texts_with_results": len(result_ids),
        "texts_without_word": len((shards.done & usable) - result_ids - bad_ids) if config.analysis == "drift" else 0,
        "bad_rows": len(bad),
        "every_row_accounted": (shards.done | bad_ids) == all_rows,
        "texts_from_earlier_runs": len(before.done & usable),
        "texts_this_run": processed,
        "duplicate_rows_dropped": shards.duplicates,
        "shards": shards.files,
        "runs": runs + 1,
        "token_cap": cap,
        "too_long": config.too_long,
        "address": "inline (no Ray)" if config.inline else (config.address or "local"),
        "workers": stats["workers"],
        "threads_per_worker": stats["threads_per_worker"],
        "worker_deaths": stats["worker_deaths"],
        "ray_start_s": stats["ray_start_s"],
        "first_result_s": None if stats["first_result_s"] is None else round(stats["first_result_s"], 2),
        "wall_s": round(elapsed, 2),
        "texts_per_s": round(processed / elapsed, 2) if processed else None,
        "peak_rss_mb_per_worker": stats["peak_rss_mb_per_worker"],
        "aggregation": "per (layer, head, statistic): mean; sample std (ddof=1); 95% CI mean ± t(0.975, n-1)·std/√n; n = texts (segments) with a value",
    }
    store.write_summary(out, summary, info)
    return info


def _check_head(lm, layer, head) -> None:
    spec = lm.spec
    if not isinstance(layer, int) or not 0 <= layer < spec.n_layers:
        msg = f"--layer {layer!r} out of range; {spec.name} has layers 0..{spec.n_layers - 1} (0-based)"
        raise ValueError(msg)
    if not isinstance(head, int) or not 0 <= head < spec.n_heads:
        msg = f"--head {head!r} out of range; {spec.name} has heads 0..{spec.n_heads - 1} (0-based)"
        raise ValueError(msg)


def _preview(texts: pd.DataFrame, text_id: int) -> str:
    match = texts.loc[texts["text_id"] == text_id, "text"]
    return match.iloc[0][:80] if len(match) else ""
