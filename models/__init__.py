"""Loading models and recording their attention: ``load``, ``run``, ``generate``, ``ForwardRecord``.

The modules form a one-way stack (docs/architecture.md draws it; each imports only from those before it):
``spec`` (value types), ``architecture`` (``ModelLayout``: where a model keeps its parts), ``limits``, ``encoding``,
``flash``, ``profile``, ``convert`` → ``hook`` (the one attention function), ``labels``, ``norms`` → ``loaded``
(``LoadedModel``: open a model, unchecked), ``eager``, ``readout`` → ``record`` (``ForwardRecord`` and its
``AttentionStack`` readers: data only), ``budget`` → ``forward`` (tokenize, ``run``: the recorded forward) →
``verify`` → ``loading`` (``load``, ``from_model``: opened, then checked against eager) → the experiments:
``generation``, ``knockout``, ``lab``, ``probes``, ``aggregates``, ``anatomy``, ``value_zeroing``,
``attribution``, ``faithfulness``, ``contributions``, ``routes``, ``why``, ``circuit``.

The names below resolve on first use, so that ``attnscope.models.spec`` (and the command line's
``--help``) does not pay for importing torch and transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_LAZY = {
    "from_model": "attnscope.models.loading",
    "load": "attnscope.models.loading",
    "generate": "attnscope.models.generation",
    "BUNDLED": "attnscope.models.loaded",
    "LoadedModel": "attnscope.models.loaded",
    "ForwardRecord": "attnscope.models.record",
    "run": "attnscope.models.forward",
    "tokenize": "attnscope.models.forward",
    "ModelSpec": "attnscope.models.spec",
}

__all__ = ["BUNDLED", "ForwardRecord", "LoadedModel", "ModelSpec", "from_model", "generate", "load", "run", "tokenize"]

if TYPE_CHECKING:  # for type checkers and editors: the same names, imported eagerly
    from attnscope.models.forward import run, tokenize
    from attnscope.models.generation import generate
    from attnscope.models.loaded import BUNDLED, LoadedModel
    from attnscope.models.loading import from_model, load
    from attnscope.models.record import ForwardRecord
    from attnscope.models.spec import ModelSpec


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # resolved once
        return value
    msg = f"module 'attnscope.models' has no attribute {name!r}"
    raise AttributeError(msg)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
