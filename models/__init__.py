"""Loading models and recording their attention: ``load``, ``run``, ``ForwardRecord``."""

from models.loading import BUNDLED, LoadedModel, ModelSpec, from_model, load
from models.record import ForwardRecord, run, tokenize

__all__ = ["BUNDLED", "ForwardRecord", "LoadedModel", "ModelSpec", "from_model", "load", "run", "tokenize"]
