"""Loading models and recording their attention: ``load``, ``run``, ``generate``, ``ForwardRecord``.

The modules form a one-way stack (docs/architecture.md): ``spec`` (value types) → ``limits``,
``cache``, ``encoding``, ``flash``, ``norms``, ``profile`` → ``hook`` → ``loading`` → ``eager`` →
``readout`` → ``record`` → ``verify`` → ``checked`` → ``generate``, ``knockout``, ``lab``, ``probes``,
``aggregates``, ``anatomy``.
"""

from models.checked import from_model, load
from models.generate import generate
from models.loading import BUNDLED, LoadedModel
from models.record import ForwardRecord, run, tokenize
from models.spec import ModelSpec

__all__ = ["BUNDLED", "ForwardRecord", "LoadedModel", "ModelSpec", "from_model", "generate", "load", "run", "tokenize"]
