"""Corpus scale: head statistics, induction and word drift over thousands of texts, on Ray.

``run_corpus(CorpusConfig(...))`` runs an analysis over a file of texts (a local Ray by default, a
cluster with ``address``) and writes Parquet shards and a summary; ``load_result(dir)`` reads one
back. This package is the only part of attnscope that imports Ray, and only when a job runs:
reading results, the dashboard and the rest of the CLI never need it. Reading is light
(pandas/pyarrow); the job and the per-batch computation (torch, transformers) load on first use.
"""

__all__ = [
    "ANALYSES",
    "DEMO_CORPUS",
    "FORMATS",
    "Corpus",
    "CorpusConfig",
    "CorpusResult",
    "check_address",
    "load_result",
    "process_batch",
    "read_corpus",
    "read_shards",
    "require_ray",
    "run_corpus",
]

# Every name resolves on first use, so that importing a light submodule (``corpus.sources`` for the command
# line's parser) imports neither pandas nor torch.
_LAZY = {
    "FORMATS": "attnscope.corpus.reader",
    "Corpus": "attnscope.corpus.reader",
    "read_corpus": "attnscope.corpus.reader",
    "CorpusResult": "attnscope.corpus.store",
    "load_result": "attnscope.corpus.store",
    "read_shards": "attnscope.corpus.store",
    "ANALYSES": "attnscope.corpus.compute",
    "process_batch": "attnscope.corpus.compute",
    "DEMO_CORPUS": "attnscope.corpus.job",
    "CorpusConfig": "attnscope.corpus.job",
    "check_address": "attnscope.corpus.cluster",
    "require_ray": "attnscope.corpus.cluster",
    "run_corpus": "attnscope.corpus.job",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    msg = f"module 'corpus' has no attribute {name!r}"
    raise AttributeError(msg)
