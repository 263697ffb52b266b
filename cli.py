"""attnscope headless: the same library calls as the dashboard pages, writing files.

Every subcommand has --help. Bad input exits with status 2 and one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class UsageError(ValueError):
    """Bad command-line input."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, no usage dump
        raise UsageError(f"{self.prog}: {message} (see --help)")


def _out_path(path: str, suffixes: tuple[str, ...]) -> Path:
    out = Path(path)
    if out.suffix.lower() not in suffixes:
        msg = f"--out {path}: use a file name ending in {' or '.join(suffixes)}"
        raise UsageError(msg)
    parent = out.parent if str(out.parent) else Path(".")
    if out.is_dir():
        msg = f"--out {path}: that is a folder; give a file name inside it"
        raise UsageError(msg)
    if not parent.exists():
        msg = f"--out {path}: folder {parent} does not exist; create it or choose another path"
        raise UsageError(msg)
    if not parent.is_dir():
        msg = f"--out {path}: {parent} is a file, not a folder; choose another path"
        raise UsageError(msg)
    if not os.access(parent, os.W_OK):
        msg = f"--out {path}: folder {parent} is not writable; choose another path"
        raise UsageError(msg)
    return out


def _load(args):
    from models import load
    from models.record import validate_texts

    if getattr(args, "text", None) is not None:
        validate_texts(args.text)  # refuse bad text before spending seconds on a load

    lm = load(
        args.model,
        backend=getattr(args, "backend", "auto"),
        device=getattr(args, "device", "auto"),
        verify=not getattr(args, "no_verify", False),
    )
    args.loaded_specs = [*getattr(args, "loaded_specs", []), lm.spec]  # main() reports how each was checked
    return lm


def _add_model(p, texts: bool = True, max_length: bool = True, target: bool = False):
    """The options every model command takes; --max-length and --target only where the command uses them
    (an option that is accepted and then ignored would be a silent surprise)."""
    p.add_argument("--model", required=True, help="bundled alias (minilm, smollm2), Hugging Face id or local directory")
    if texts:
        p.add_argument("--text", action="append", required=True, help="input text; repeat for a padded batch")
    p.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "sdpa", "eager", "flash"],
        help="attention kernel (auto: SDPA where the architecture has it, else eager; maps are exact with any)",
    )
    p.add_argument("--no-verify", action="store_true", help="skip the load-time check of every head against eager on a probe text")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    if max_length:
        p.add_argument("--max-length", type=int, default=None, help="truncate to this many tokens (else too-long text is refused)")
    if target:
        p.add_argument(
            "--target", action="append", default=None, help="encoder-decoder models (T5, BART, ...): the decoder's text, one per --text"
        )


def _indices(spec: str | None, limit: int, what: str, flag: str | None = None) -> list[int]:
    flag = flag or f"--{what}s"
    if spec is None:
        return list(range(limit))
    try:
        values = [int(v) for v in spec.split(",") if v.strip()]
    except ValueError:
        msg = f"{flag} {spec!r}: give comma-separated 0-based numbers, e.g. 0,3"
        raise UsageError(msg) from None
    if not values:
        msg = f"{flag} {spec!r}: give at least one 0-based number, e.g. 0,3 (or leave {flag} out for all)"
        raise UsageError(msg)
    bad = [v for v in values if not 0 <= v < limit]
    if bad:
        msg = f"{flag}: {bad[0]} out of range; this model has {what}s 0..{limit - 1} (0-based)"
        raise UsageError(msg)
    return values


def _write(out: Path, write) -> None:
    """Every output file goes through here: written whole (temporary name, then renamed) or not at all."""
    from viz.export import write_atomic

    write_atomic(out, write)


def cmd_extract(args) -> str:
    """All (or chosen) attention maps, tokens and hidden states of each text as one .npz."""
    import numpy as np

    from models import run

    out = _out_path(args.out, (".npz",))
    lm = _load(args)
    rec = run(lm, args.text, padding_side=args.padding_side, max_length=args.max_length, target=args.target)
    layers = _indices(args.layers, lm.spec.n_layers, "layer")
    heads = _indices(args.heads, lm.spec.n_heads, "head")
    layers = [l for l in layers if l in rec.attention_layers]  # hybrids: blocks with attention only
    arrays = {}
    for b in range(rec.batch_size):
        # [layer, head, query, key] over real tokens
        arrays[f"attention_{b}"] = rec.attention_stack(b, layers=layers, heads=heads)
        arrays[f"tokens_{b}"] = np.array(rec.tokens[b])
        if rec.target_tokens is not None:  # encoder-decoder: the decoder's self-attention and cross-attention
            decoder_layers = range(lm.spec.n_decoder_layers)
            arrays[f"decoder_attention_{b}"] = rec.attention_stack(b, kind="decoder", layers=decoder_layers, heads=heads)
            arrays[f"cross_attention_{b}"] = rec.attention_stack(b, kind="cross", layers=decoder_layers, heads=heads)
            arrays[f"target_tokens_{b}"] = np.array(rec.target_tokens[b])
        if not args.no_hidden:
            arrays[f"hidden_{b}"] = np.stack([rec.hidden(l, b) for l in range(lm.spec.n_layers + 1)])  # [layer+1, n, d]
    meta = {
        "model": lm.spec.name,
        "kind": lm.spec.kind,
        "backend": lm.spec.backend,
        "recording": lm.spec.recording,
        "verification": lm.spec.recording_label,
        "layers": layers,
        "heads": heads,
        "texts": rec.texts,
        "padding_side": rec.padding_side,
        "axes": "attention_b: [layer, head, query, key]",
    }
    arrays["meta"] = np.array(json.dumps(meta))
    _write(out, lambda path: np.savez_compressed(path, **arrays))
    return f"wrote {out} ({rec.batch_size} text(s), {len(layers)} layers x {len(heads)} heads)"


def cmd_heads(args) -> str:
    """Per-head statistics of each text as CSV (one row per text, layer, head)."""
    import pandas as pd

    from analysis.heads import head_table
    from models import run

    out = _out_path(args.out, (".csv",))
    lm = _load(args)
    norms = args.measure == "norm"
    rec = run(lm, args.text, max_length=args.max_length, target=args.target, values=norms)
    frames = []
    for b in range(rec.batch_size):
        frame = head_table(rec, batch=b, norms=norms)  # norms: where heads write, not only look
        frame.insert(0, "text", b)
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True)
    if args.probe:
        from models.probes import add_probe_scores

        table = add_probe_scores(lm, table, args.probe)
    from analysis.head_types import classify_heads

    n_tokens = table["text"].map(lambda b: len(rec.tokens[b])).to_numpy()
    table = classify_heads(table, kind=lm.spec.kind, n_tokens=n_tokens)
    table = table.drop(columns=[c for c in table.columns if c.startswith("is_")])  # types/primary_type say it
    _write(out, lambda path: table.to_csv(path, index=False))
    return f"wrote {out} ({len(table)} rows)"


def cmd_figure(args) -> str:
    """One dashboard figure, written headless (PNG, SVG or HTML by the --out suffix; optional CSV of its data)."""
    from viz.figures import VIEWS

    if args.view not in VIEWS:
        msg = f"--view {args.view!r}: choose one of {', '.join(VIEWS)}"
        raise UsageError(msg)
    out = _out_path(args.out, (".png", ".svg", ".html"))
    data_out = _out_path(args.data, (".csv",)) if args.data is not None else None
    from models import load, run
    from viz.export import chart_bytes, frame_bytes, write_all

    lm = _load(args)
    rec = run(lm, args.text, max_length=args.max_length, target=args.target)
    other = None
    if args.model_b:
        lm_b = load(args.model_b, backend=args.backend, device=args.device, verify=not args.no_verify)
        args.loaded_specs = [*getattr(args, "loaded_specs", []), lm_b.spec]
        other = run(lm_b, args.text, max_length=args.max_length)
    if args.layer is not None:
        _indices(str(args.layer), lm.spec.n_layers, "layer", "--layer")
    if args.head is not None:
        _indices(str(args.head), lm.spec.n_heads, "head", "--head")
    window = None
    if args.window:
        try:
            window = tuple(int(v) for v in args.window.split(":"))
        except ValueError:
            window = ()
        if len(window) != 2:
            msg = f"--window {args.window!r}: give START:STOP token positions, e.g. 0:128"
            raise UsageError(msg)
    kwargs = {"other": other}
    if window is not None:
        kwargs["window"] = window
    layer = 0 if args.layer is None else args.layer
    head = 0 if args.head is None else args.head
    chart, frame = VIEWS[args.view](rec, layer, head, **kwargs)
    figure = chart_bytes(chart, out.suffix.lower().lstrip("."))
    files = {out: lambda path: path.write_bytes(figure)}
    if data_out is not None:
        table = frame_bytes(frame)
        files[data_out] = lambda path: path.write_bytes(table)
    write_all(files)  # the figure and its data, both or neither
    return f"wrote {out}" + (f" and {data_out}" if data_out else "") + f" ({args.view}, {len(rec.tokens[0])} tokens)"


def register_figure(sub) -> None:
    p = sub.add_parser("figure", help="a dashboard figure as PNG, SVG or HTML (views: heatmap, overview, masking, compare, ...)")
    _add_model(p, target=True)
    p.add_argument("--model-b", default=None, help="second model (compare view: required; masking view: an encoder next to a decoder)")
    p.add_argument("--view", default="heatmap", help="heatmap, overview, masking, compare (or a view another page added)")
    p.add_argument("--layer", type=int, default=None, help="0-based layer (default 0)")
    p.add_argument("--head", type=int, default=None, help="0-based head (default 0)")
    p.add_argument("--window", default=None, help="heatmap zoom START:STOP (0-based token positions, STOP exclusive)")
    p.add_argument("--data", default=None, help="also write the data behind the figure as FILE.csv")
    p.add_argument("--out", required=True, help="FIG.png, FIG.svg or FIG.html")
    p.set_defaults(func=cmd_figure)


def cmd_drift(args) -> str:
    """A word's cosine similarity across contexts at every layer, as CSV (layer, context_a, context_b, sense_a, sense_b, cosine)."""
    from analysis.drift import DEFAULT_CONTEXTS, depth_frame, drift, parse_contexts, similarity_frame
    from models import run

    out = _out_path(args.out, (".csv",))
    contexts, senses = parse_contexts(args.context if args.context else list(DEFAULT_CONTEXTS))
    lm = _load(args)
    result = drift(run(lm, contexts, max_length=args.max_length), lm.tokenizer, args.word, senses)
    table = similarity_frame(result)
    _write(out, lambda path: table.to_csv(path, index=False))
    top = depth_frame(result).iloc[-1]
    notes = "".join(f"\nnote: {n}" for n in result.notes)
    return (
        f"wrote {out} ({len(table)} rows, {len(contexts)} contexts x {result.n_layers} layers); last layer: "
        f"within-sense {top.within_sense:.3f}, across-sense {top.across_sense:.3f}, self-similarity {top.self_similarity:.3f}, "
        f"anisotropy baseline {top.anisotropy_baseline:.3f}{notes}"
    )


def register_drift(sub) -> None:
    p = sub.add_parser("drift", help="a word's contextual drift across contexts and layers, as CSV")
    _add_model(p, texts=False)
    p.add_argument("--word", default="mouse", help="the word to follow (whole word, case-insensitive; default mouse)")
    p.add_argument(
        "--context",
        action="append",
        default=None,
        help="a sentence using the word, optionally 'sense | sentence'; repeat (default: animal and computer-device sentences)",
    )
    p.add_argument("--out", required=True, help="FILE.csv")
    p.set_defaults(func=cmd_drift)


def cmd_padding(args) -> str:
    """Padded batch vs each text alone, right/left padding with and without the mask, as JSON."""
    from analysis.padding import SIDES, padding_study, study_json
    from models import run

    out = _out_path(args.out, (".json",))
    lm = _load(args)
    sides = (args.padding_side,) if args.padding_side else SIDES
    study = padding_study(
        lambda texts, side, mask: run(lm, texts, padding_side=side, attention_mask=mask, max_length=args.max_length), args.text, sides
    )
    payload = json.dumps(study_json(study, lm.spec.name), indent=1)
    _write(out, lambda path: path.write_text(payload))
    lines = [f"wrote {out}"]
    for s in study.settings:
        verdict = "matches unpadded" if s.matches_unpadded else "DIFFERS from unpadded"
        lines.append(
            f"{s.name}: {verdict} (max relative {s.max_relative_diff:.2e}, max |diff| {s.max_hidden_diff:.2e}, "
            f"max pad attention {s.layers['pad_attention_max'].max():.4f})"
        )
    return "\n".join(lines)


def register_padding(sub) -> None:
    p = sub.add_parser("padding", help="what padding a batch changes (right/left, with/without mask), as JSON")
    _add_model(p)
    p.add_argument("--padding-side", choices=["left", "right"], default=None, help="only this side (default both)")
    p.add_argument("--out", required=True, help="FILE.json")
    p.set_defaults(func=cmd_padding)


def cmd_corpus(args) -> str:
    """An analysis over a corpus file on Ray: Parquet shards per batch, a summary, a bad-rows report."""
    from corpus.cluster import check_address

    if not args.out.strip():
        raise UsageError("--out is empty; give the result directory, e.g. results/heads")
    parent = Path(args.out).parent
    if not parent.is_dir():  # the result directory is created, not the folders above it (a typo should not build a tree)
        what = "is a file, not a folder" if parent.exists() else "does not exist; create it or choose another path"
        raise UsageError(f"--out {args.out}: folder {parent} {what}")
    check_address(args.address)  # an address that does not answer fails in seconds, before torch loads
    from corpus import CorpusConfig, run_corpus

    data = args.data
    if data is None:
        from corpus import DEMO_CORPUS

        data = DEMO_CORPUS
    config = CorpusConfig(
        model=args.model,
        out=Path(args.out),
        data=Path(data),
        analysis=args.analysis,
        word=args.word,
        text_field=args.text_field,
        address=args.address,
        workers=args.workers,
        max_batch=args.batch_size,
        max_tokens=args.max_tokens,
        too_long=args.too_long,
        progress=not args.no_progress,
    )
    try:
        info = run_corpus(config)
    except KeyboardInterrupt:
        print(f"interrupted; finished batches are kept in {args.out}/shards; run the same command again to continue", file=sys.stderr)
        raise
    rate = f", {info['texts_per_s']} texts/s" if info["texts_per_s"] else ""
    return (
        f"wrote {args.out}: {info['texts_with_results']} of {info['rows_in_file']} rows with results "
        f"({info['texts_this_run']} this run, {info['texts_from_earlier_runs']} from earlier runs), "
        f"{info['bad_rows']} bad rows in {args.out}/bad_rows.csv; {info['workers']} worker(s){rate}"
    )


def register_corpus(sub) -> None:
    p = sub.add_parser("corpus", help="head statistics, induction or a word's drift over a corpus file, on Ray")
    p.add_argument("--model", required=True, help="bundled alias (minilm, smollm2), Hugging Face id or local directory")
    p.add_argument("--data", default=None, help="FILE.txt (one text per line), .jsonl, .parquet or .csv (default: the bundled demo corpus)")
    p.add_argument("--text-field", default=None, help="the .jsonl field or .csv/.parquet column holding the text (default text)")
    p.add_argument("--analysis", default="heads", choices=["heads", "induction", "drift"], help="what to compute per text (default heads)")
    p.add_argument("--word", default=None, help="drift: the word to follow, every whole-word occurrence (default mouse)")
    p.add_argument("--out", required=True, help="result DIR (created; an existing one of the same job is resumed)")
    p.add_argument("--address", default=None, help="join a Ray cluster: auto or ray://host:port (default: a local Ray for this job)")
    p.add_argument("--workers", type=int, default=None, help="workers, one loaded model each (default one per CPU)")
    p.add_argument("--batch-size", type=int, default=16, help="most texts per batch; the memory guard may allow fewer (default 16)")
    p.add_argument("--max-tokens", type=int, default=None, help="token cap per text (default the model's position limit)")
    p.add_argument(
        "--too-long", default="refuse", choices=["refuse", "split"], help="a text over the cap: refuse it (reported) or split it"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_corpus)


def cmd_generate(args) -> str:
    """Generate from a prompt, recording every step: tokens, generated positions, per-step top-k, maps on request."""
    import numpy as np

    from models.generate import generate

    out = _out_path(args.out, (".npz",))
    if len(args.text) != 1:
        raise UsageError("generate takes one --text (the prompt)")
    lm = _load(args)
    rec = generate(
        lm,
        args.text[0],
        max_new_tokens=args.new_tokens,
        do_sample=args.sample,
        seed=args.seed,
        temperature=args.temperature,
        top_k=args.top_k,
        stop_at_eos=not args.no_stop,
    )
    gen = rec.generation
    arrays = {
        "tokens": np.array(rec.tokens[0]),
        "input_ids": rec.input_ids[0],
        "generated": gen.positions,
        "top_ids": gen.top_ids,
        "top_tokens": np.array(gen.top_tokens),
        "top_probs": gen.top_probs,
        "chosen_probs": gen.chosen_probs,
        "entropy": gen.entropy,
    }
    if args.maps:  # [layer, head, query, key] over the final sequence
        arrays["attention"] = rec.attention_stack()
    meta = {
        "model": lm.spec.name,
        "prompt": args.text[0],
        "text": rec.texts[0],
        "stopped": gen.stopped,
        "cut_short": gen.cut_short,
        "recording": gen.recording,
        "do_sample": gen.do_sample,
        "seed": gen.seed,
        "temperature": gen.temperature,
        "top_k": gen.top_k,
        "verification": lm.spec.recording_label,
    }
    arrays["meta"] = np.array(json.dumps(meta))
    _write(out, lambda path: np.savez_compressed(path, **arrays))
    note = f" ({gen.stopped})" if gen.cut_short else ""
    return f"{rec.texts[0]!r}\nwrote {out} ({len(gen.positions)} new tokens{note})"


def register_generate(sub) -> None:
    p = sub.add_parser("generate", help="generate from a prompt and record every step (tokens, top-k, maps) as .npz")
    _add_model(p, max_length=False)
    p.add_argument("--new-tokens", type=int, default=32, help="how many tokens to generate (default 32)")
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--seed", type=int, default=None, help="sampling seed (same seed, same tokens)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (with --sample)")
    p.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens (with --sample)")
    p.add_argument("--no-stop", action="store_true", help="do not stop at the end-of-sequence token")
    p.add_argument("--maps", action="store_true", help="also write every head's map over the final sequence")
    p.add_argument("--out", required=True, help="FILE.npz")
    p.set_defaults(func=cmd_generate)


def cmd_lens(args) -> str:
    """The logit lens of a decoder as CSV: per layer and position, the top tokens and the rank of the next one."""
    from models import run

    out = _out_path(args.out, (".csv",))
    lm = _load(args)
    rec = run(lm, args.text, max_length=args.max_length)
    frames = []
    for b in range(rec.batch_size):
        frame = rec.logit_lens(lm, batch=b, top_k=args.top_k)
        frame.insert(0, "text", b)
        frames.append(frame)
    import pandas as pd

    table = pd.concat(frames, ignore_index=True)
    for column in ("top_tokens", "top_probs"):
        table[column] = table[column].map(lambda v: json.dumps(v, ensure_ascii=False))
    _write(out, lambda path: table.to_csv(path, index=False))
    return f"wrote {out} ({len(table)} rows: {lm.spec.n_layers + 1} layers x positions)"


def register_lens(sub) -> None:
    p = sub.add_parser("lens", help="the logit lens of a decoder (top tokens per layer and position) as CSV")
    _add_model(p)
    p.add_argument("--top-k", type=int, default=5, help="candidates per layer and position (default 5)")
    p.add_argument("--out", required=True, help="FILE.csv")
    p.set_defaults(func=cmd_lens)


def cmd_lab(args) -> str:
    """Coverage and effect of efficient-attention patterns imposed on the model, one CSV row per pattern."""
    import pandas as pd

    from analysis.patterns import parse_pattern
    from models.lab import lab_table

    out = _out_path(args.out, (".csv",))
    patterns = [parse_pattern(p) for p in args.pattern]  # refuse an unknown pattern before loading
    if len(args.text) != 1:
        raise UsageError("lab: give one --text (the effect is measured on one text)")
    lm = _load(args)
    layers = _indices(args.layers, lm.spec.n_layers, "layer") if args.layers is not None else None
    target = args.target[0] if args.target else None
    if args.target is not None and len(args.target) != 1:
        raise UsageError("lab: give one --target (the decoder's text for the one --text)")
    table, note = lab_table(
        lm, args.text[0], patterns, layers=layers, max_length=args.max_length, effect=not args.coverage_only, target=target
    )
    if note:  # the effect cannot be measured on this model: nothing is written rather than half a table
        msg = f"{note}; nothing written (pass --coverage-only to write the coverage alone)"
        raise ValueError(msg)
    table.insert(0, "model", lm.spec.name)
    _write(out, lambda path: table.to_csv(path, index=False))
    what = "coverage only" if args.coverage_only else "approximations imposed on a model trained with full attention"
    lines = [f"wrote {out} ({len(table)} pattern(s), {lm.spec.name}; {what})"]
    for row in table.itertuples():
        kl = f", KL {row.kl:.4f} nats" if pd.notna(getattr(row, "kl", None)) else ""
        cosine = f", last-layer cosine {row.cosine_last:.4f}" if pd.notna(getattr(row, "cosine_last", None)) else ""
        lines.append(f"{row.pattern}: coverage {row.coverage:.3f} (worst head {row.worst_head}: {row.min_head_coverage:.3f}){kl}{cosine}")
    return "\n".join(lines)


def register_lab(sub) -> None:
    p = sub.add_parser("lab", help="impose sparse, low-rank, kernel or fewer-KV-head attention: coverage and effect, as CSV")
    _add_model(p, target=True)
    p.add_argument(
        "--pattern",
        action="append",
        required=True,
        help="name:params, repeat: window:W[,causal], dilated:W,D, strided:L, fixed:L,C, global:G|special|0+5,W, "
        "bigbird:W,G,R[,seed], block:B, recurrence:C[,M], svd:R, linformer:K, performer:M[,seed], linear, topk:K, kv:G, "
        "scale:τ, full",
    )
    p.add_argument("--layers", default=None, help="comma-separated 0-based layers to impose on (default all)")
    p.add_argument(
        "--coverage-only",
        action="store_true",
        help="measure coverage only (no forward with the pattern); the only choice for a materialised model",
    )
    p.add_argument("--out", required=True, help="FILE.csv")
    p.set_defaults(func=cmd_lab)


# -- anatomy (issue 25) ------------------------------------------------------------------------------
def cmd_anatomy(args) -> str:
    """What the model is made of, read from the model itself, as JSON (the contract keys in docs/cli.md)."""
    from models.anatomy import anatomy, attention_cost, heads_table, probe_record

    out = _out_path(args.out, (".json",))
    lengths = _lengths(args.cost) if args.cost else None  # refuse bad counts before spending seconds on a load
    lm = _load(args)
    facts = anatomy(lm, probe_record(lm, args.text))
    data = facts.to_json()
    data["heads_table"] = heads_table(facts).to_dict(orient="records")
    if lengths:
        measured, fits = attention_cost(
            facts.n_heads, facts.n_kv_heads, facts.head_dim, lengths=lengths, dtype=next(lm.model.parameters()).dtype, device=lm.spec.device
        )
        data["attention_cost"] = {"measured": measured.to_dict(orient="records"), "fit": fits}
    _write(out, lambda path: path.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8"))
    p = facts.parameters
    return (
        f"wrote {out} ({lm.spec.name}: {p['total']:,} parameters, {facts.norm_placement}-LN, {facts.positional} positions, "
        f"{facts.n_heads} heads / {facts.n_kv_heads} KV heads x {facts.head_dim}, {facts.kv_cache_bytes_per_token:,} KV-cache bytes per token)"
    )


def _lengths(spec: str) -> list[int]:
    try:
        values = [int(v) for v in spec.split(",") if v.strip()]
    except ValueError:
        values = []
    if len(values) < 3 or min(values) < 1:
        msg = f"--cost {spec!r}: give at least 3 comma-separated token counts of at least 1 (the n² fit needs 3), e.g. 128,256,512,1024"
        raise UsageError(msg)
    return values


def register_anatomy(sub) -> None:
    p = sub.add_parser("anatomy", help="parameters by component, norm placement, positions, heads and KV cache, as JSON")
    _add_model(p, texts=False, max_length=False)
    p.add_argument("--text", default=None, help="the text the norm placement is read from (default a short probe)")
    p.add_argument(
        "--cost",
        default=None,
        metavar="N,N,N",
        help="also time one layer's attention at these token counts (e.g. 128,256,512,1024,2048,4096; minutes on a CPU)",
    )
    p.add_argument("--out", required=True, help="FILE.json")
    p.set_defaults(func=cmd_anatomy)


def _head_pairs(spec: str, what: str = "--heads") -> list[tuple[int, int]]:
    """ "17.3,18.6" -> [(17, 3), (18, 6)] (layer.head, 0-based)."""
    pairs = []
    for item in spec.split(","):
        layer, dot, head = item.strip().partition(".")
        if not dot or not layer.isdigit() or not head.isdigit():
            msg = f"{what} {item!r}: write layer.head pairs, e.g. 17.3,18.6 (0-based)"
            raise UsageError(msg)
        pairs.append((int(layer), int(head)))
    return pairs


def _edges(spec: str) -> list[tuple[int, int, int, int]]:
    """ "3.1:5>2" -> [(3, 1, 5, 2)]: layer.head:query>key (0-based token positions)."""
    edges = []
    for item in spec.split(","):
        head_part, colon, edge = item.strip().partition(":")
        query, gt, key = edge.partition(">")
        if not colon or not gt or not query.isdigit() or not key.isdigit():
            msg = f"--edges {item!r}: write layer.head:query>key, e.g. 3.1:5>2 (0-based)"
            raise UsageError(msg)
        ((layer, head),) = _head_pairs(head_part, "--edges")
        edges.append((layer, head, int(query), int(key)))
    return edges


def cmd_knockout(args) -> str:
    """Knock heads (or edges) out and write what changed as JSON."""
    from models.knockout import knockout

    out = _out_path(args.out, (".json",))
    if len(args.text) != 1:
        raise UsageError("knockout takes one --text")
    heads = _head_pairs(args.heads) if args.heads else []
    edges = _edges(args.edges) if args.edges else []
    lm = _load(args)
    result = knockout(lm, args.text[0], heads=heads, edges=edges, mode=args.mode)
    summary = {"model": lm.spec.name, "text": args.text[0], **result.summary()}
    payload = json.dumps(summary, indent=2, ensure_ascii=False)
    _write(out, lambda path: path.write_text(payload, encoding="utf-8"))
    what = (
        f"KL {result.kl:.4f}, {result.target!r} {result.target_prob_before:.3f} -> {result.target_prob_after:.3f}"
        if result.kl is not None
        else f"last hidden states' cosine {result.hidden_cosine:.4f}"
    )
    return f"wrote {out} ({what})"


def cmd_importance(args) -> str:
    """Every head knocked out once: the change in the text's next-token loss, as CSV."""
    from models.knockout import head_importance

    out = _out_path(args.out, (".csv",))
    if len(args.text) != 1:
        raise UsageError("importance takes one --text")
    lm = _load(args)
    table = head_importance(lm, args.text[0], batch_size=args.batch)
    _write(out, lambda path: table.to_csv(path, index=False))
    top = table.sort_values("delta", ascending=False).iloc[0]
    return f"wrote {out} ({len(table)} heads; most important: layer {int(top['layer'])} head {int(top['head'])}, delta {top['delta']:.4f})"


def register_knockout(sub) -> None:
    p = sub.add_parser("knockout", help="knock heads or query>key edges out and report what changed, as JSON")
    _add_model(p, max_length=False)
    p.add_argument("--heads", help="layer.head pairs, e.g. 17.3,18.6 (0-based)")
    p.add_argument("--edges", help="layer.head:query>key, e.g. 3.1:5>2 (token positions, 0-based)")
    p.add_argument("--mode", choices=["zero", "mean"], default="zero", help="zero (remove; renormalise an edge's row) or mean-ablate")
    p.add_argument("--out", required=True, help="FILE.json")
    p.set_defaults(func=cmd_knockout)
    p = sub.add_parser("importance", help="every head knocked out once: change in next-token loss, as CSV")
    _add_model(p, max_length=False)
    p.add_argument("--batch", type=int, default=32, help="knocked-out variants per forward (default 32)")
    p.add_argument("--out", required=True, help="FILE.csv")
    p.set_defaults(func=cmd_importance)


def _one_text(args) -> str:
    if len(args.text) != 1:
        msg = f"--text given {len(args.text)} times; this command explains one text"
        raise UsageError(msg)
    return args.text[0]


def cmd_contributions(args) -> str:
    """One method's per-layer context-mixing maps, their rollout and the input-token attribution of a prediction, as .npz."""
    import numpy as np

    from models.contributions import check_method, contributions

    out = _out_path(args.out, (".npz",))
    check_method(args.method)
    text = _one_text(args)
    lm = _load(args)
    result = contributions(lm, text, args.method, position=args.predict)
    n = len(result.tokens)
    arrays = {
        "attribution": result.attribution.astype(np.float32),
        "tokens": np.array(result.tokens),
        "meta": np.array(json.dumps({**result.meta, "model": lm.spec.name, "position": result.position}, default=str)),
    }
    if result.maps is not None:
        arrays["contributions"] = result.maps.astype(np.float32)
    if result.rolled is not None:
        arrays["rolled"] = result.rolled.astype(np.float32)
    _write(out, lambda path: np.savez_compressed(path, **arrays))
    return f"wrote {out} ({args.method}, {n} tokens; explains {result.target})"


def cmd_faithfulness(args) -> str:
    """Comprehensiveness and sufficiency (AOPC) of each method's ranking against random ones, and their agreement, as CSV."""
    from models.contributions import check_method, explain

    out = _out_path(args.out, (".csv",))
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    for method in methods or []:
        check_method(method)  # before seconds are spent on a load
    text = _one_text(args)
    lm = _load(args)
    result = explain(lm, text, methods=methods, position=args.predict)
    table = result.faithfulness.table.copy()
    spearman = result.faithfulness.spearman
    for method in spearman.columns:
        table[f"spearman_{method}"] = table["method"].map(spearman[method])
    _write(out, lambda path: table.to_csv(path, index=False))
    better = ", ".join(table.loc[table["beats_random"], "method"]) or "none"
    return f"wrote {out} ({len(table)} methods; better than random on this text: {better})"


def register_contributions(sub) -> None:
    from models.contributions import METHODS

    p = sub.add_parser(
        "contributions", help="context mixing or attribution of one method: per-layer maps, rollout, input-token shares (.npz)"
    )
    _add_model(p, max_length=False)
    p.add_argument("--method", required=True, help=f"one of {', '.join(METHODS)}")
    p.add_argument(
        "--predict",
        type=int,
        default=None,
        help="0-based position: a decoder's prediction made there (default the last token); an encoder's token (default the sentence embedding)",
    )
    p.add_argument("--out", required=True, help="FILE.npz")
    p.set_defaults(func=cmd_contributions)
    p = sub.add_parser("faithfulness", help="which attribution methods beat random rankings on this text (ERASER AOPC), as CSV")
    _add_model(p, max_length=False)
    p.add_argument("--methods", default=None, help=f"comma-separated (default all that apply): {', '.join(METHODS)}")
    p.add_argument("--predict", type=int, default=None, help="0-based position of the prediction (see contributions)")
    p.add_argument("--out", required=True, help="FILE.csv")
    p.set_defaults(func=cmd_faithfulness)


# --- routes (information-flow routes, models.routes) ------------------------------------------------------
def cmd_routes(args) -> str:
    """The information-flow routes of one prediction as JSON: tokens, position, nodes, edges, meta."""
    from models.routes import routes

    out = _out_path(args.out, (".json",))
    text = _one_text(args)
    if not 0 <= args.threshold < 1:
        msg = f"--threshold {args.threshold}: use a number in [0, 1) (0 keeps every edge that carries anything)"
        raise UsageError(msg)
    if args.target is not None and len(args.target) != 1:
        raise UsageError(f"--target given {len(args.target)} times; give one target text for the one --text")
    lm = _load(args)
    graph = routes(lm, text, position=args.position, threshold=args.threshold, target=args.target[0] if args.target else None)
    payload = json.dumps(graph.to_json(), ensure_ascii=False)
    _write(out, lambda path: path.write_text(payload, encoding="utf-8"))
    top = graph.head_scores()
    lead = f"; strongest head: layer {int(top.iloc[0]['layer'])} head {int(top.iloc[0]['head'])}" if len(top) else ""
    return f"wrote {out} ({len(graph.nodes)} nodes, {len(graph.edges)} edges at threshold {args.threshold}{lead})"


def register_routes(sub) -> None:
    from models.routes import DEFAULT_THRESHOLD

    p = sub.add_parser("routes", help="the heads and blocks a prediction went through (information-flow routes), as JSON")
    _add_model(p, max_length=False, target=True)
    p.add_argument(
        "--position",
        type=int,
        default=None,
        help="0-based token: a decoder's prediction made there, an encoder's representation of it, an encoder-decoder's "
        "target token (default the last token)",
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=DEFAULT_THRESHOLD,
        help=f"keep edges with importance above this, in [0, 1) (default {DEFAULT_THRESHOLD}; 0 keeps every edge)",
    )
    p.add_argument("--out", required=True, help="FILE.json")
    p.set_defaults(func=cmd_routes)


# --- end routes ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="attnscope", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("extract", help="attention maps, tokens and hidden states as .npz")
    _add_model(p, target=True)
    p.add_argument("--padding-side", choices=["left", "right"], default=None)
    p.add_argument("--layers", help="comma-separated 0-based layers (default all)")
    p.add_argument("--heads", help="comma-separated 0-based heads (default all)")
    p.add_argument("--no-hidden", action="store_true", help="leave hidden states out")
    p.add_argument("--out", required=True, help="FILE.npz")
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("heads", help="per-head statistics as CSV")
    _add_model(p, target=True)
    p.add_argument("--probe", choices=["induction"], default=None, help="add a probe's score per head")
    p.add_argument(
        "--measure",
        choices=["weight", "norm"],
        default="weight",
        help="norm: add value-weighted norm columns (first/prev/special token share under ||alpha v W_O||, output norm and share)",
    )
    p.add_argument("--out", required=True, help="FILE.csv")
    p.set_defaults(func=cmd_heads)

    for register in _EXTRA_COMMANDS:
        register(sub)
    return parser


# Further subcommands (drift, padding, figure, bench) register here: each is a function(sub).
_EXTRA_COMMANDS: list = []
_EXTRA_COMMANDS.append(register_drift)
_EXTRA_COMMANDS.append(register_padding)
_EXTRA_COMMANDS.append(register_figure)
_EXTRA_COMMANDS.append(register_corpus)
_EXTRA_COMMANDS.append(register_generate)
_EXTRA_COMMANDS.append(register_lens)
_EXTRA_COMMANDS.append(register_lab)
_EXTRA_COMMANDS.append(register_knockout)
_EXTRA_COMMANDS.append(register_contributions)
_EXTRA_COMMANDS.append(register_anatomy)  # issue 25
_EXTRA_COMMANDS.append(register_routes)


# What str.splitlines() breaks on: a message echoing the user's input must still be one line.
_LINE_BREAKS = "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"
MAX_ERROR_CHARS = 1000


def one_line(message: str) -> str:
    """An error message as one printable line: line breaks escaped, a very long echo of the input shortened."""
    text = "".join(repr(c)[1:-1] if c in _LINE_BREAKS else c for c in str(message))
    if len(text) > MAX_ERROR_CHARS:  # keep the start (what was wrong) and the end (what to do)
        text = text[: MAX_ERROR_CHARS * 2 // 3] + " … " + text[-MAX_ERROR_CHARS // 3 :]
    return text


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        message = args.func(args)
    except (ValueError, UsageError) as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    except MemoryError:
        print("error: out of memory; use a shorter text or --max-length", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    if message:
        print(message)
    for spec in getattr(args, "loaded_specs", []):
        print(f"{spec.name}: {spec.recording_label}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
