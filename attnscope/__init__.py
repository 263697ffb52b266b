"""attnscope: exact per-head attention maps of encoders and decoders, with fast kernels.

``import attnscope`` is cheap: the engine (torch, transformers) loads on first use of a name below.

    import attnscope
    lm = attnscope.load("minilm")
    rec = attnscope.run(lm, "The mouse ran.")
    attnscope.show(rec, layer=2, head=3)        # in a notebook: the dashboard's heatmap

Modules: ``attnscope.models`` (loading, recording), ``attnscope.analysis`` (pure functions over arrays),
``attnscope.viz`` (Altair chart builders), ``attnscope.corpus`` (Ray jobs), ``attnscope.cli``,
``attnscope.ui`` (the dashboard), ``attnscope.notebook`` (inline display).
"""

from __future__ import annotations

import importlib
from pathlib import Path

# In a checkout the subpackages (models/, viz/, ...) sit beside this folder; in an installed wheel they sit
# inside it. One search path more makes `attnscope.models` resolve in both without an install step.
_HERE = Path(__file__).resolve().parent
if not (_HERE / "models").is_dir() and (_HERE.parent / "models" / "__init__.py").is_file():
    __path__.append(str(_HERE.parent))  # noqa: F821  (__path__ is set for every package)

__version__ = "0.4.0"

_API = {
    "load": "attnscope.models",
    "run": "attnscope.models",
    "generate": "attnscope.models",
    "from_model": "attnscope.models",
    "tokenize": "attnscope.models",
    "ForwardRecord": "attnscope.models",
    "LoadedModel": "attnscope.models",
    "ModelSpec": "attnscope.models",
    "BUNDLED": "attnscope.models",
    "show": "attnscope.notebook",
    "overview": "attnscope.notebook",
    "head_table": "attnscope.notebook",
}
_MODULES = ("models", "analysis", "viz", "corpus", "cli", "ui", "notebook")

__all__ = [*sorted(_API), *_MODULES, "__version__"]


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    if name in _MODULES:
        return importlib.import_module(f"{__name__}.{name}")
    msg = f"module 'attnscope' has no attribute {name!r}"
    raise AttributeError(msg)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
