"""Corpus scale: head statistics, induction and word drift over thousands of texts, on Ray.

``run_corpus(CorpusConfig(...))`` runs an analysis over a file of texts (a local Ray by default, a
cluster with ``address``) and writes Parquet shards and a summary; ``load_result(dir)`` reads one
back. This package is the only part of attnscope that imports Ray, and only when a job runs:
reading results, the dashboard and the rest of the CLI never need it.
"""

from corpus.compute import ANALYSES, process_batch
from corpus.job import DEMO_CORPUS, CorpusConfig, check_address, require_ray, run_corpus
from corpus.reader import FORMATS, Corpus, read_corpus
from corpus.store import CorpusResult, load_result, read_shards

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
