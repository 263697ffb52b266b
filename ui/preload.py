"""Everything the pages import, imported once before any page runs (``app.py`` imports this first).

Sessions that open pages at the same moment on a fresh server otherwise import the same modules in
several threads at once; transformers' lazy modules then hand one thread a half-initialised module
("cannot import name 'BatchEncoding' from 'transformers'"). Python serialises the import of this one
module, so the first session imports the lot and the others wait for it.
"""

from __future__ import annotations

import importlib
import pkgutil

import transformers
from transformers import BatchEncoding, GenerationConfig  # noqa: F401  (resolve the lazy names once)

from attnscope import analysis, models, viz

for _package in (models, analysis, viz):
    for _module in pkgutil.iter_modules(_package.__path__):
        importlib.import_module(f"{_package.__name__}.{_module.name}")
# corpus/ without Ray (Ray is imported only when a job runs), and the page helpers that are modules
for _name in (
    "attnscope.corpus.compute",
    "attnscope.corpus.plan",
    "attnscope.corpus.reader",
    "attnscope.corpus.store",
    "attnscope.ui.common",
    "attnscope.ui.labels",
    "attnscope.ui.workspace",
    "attnscope.ui.heads_corpus",
    "attnscope.ui.head_browser",
    "attnscope.ui.why",
):
    importlib.import_module(_name)

__all__ = ["transformers"]
