"""Whole figures from recorded runs: what the dashboard pages draw, built headless (CLI, benchmarks).

Each builder takes a ``ForwardRecord`` typed as ``analysis.record_view.RecordView`` (this module never imports the engine)
and returns ``(chart, frame)``: the figure and the data behind it. ``VIEWS`` maps a view name to its
builder; ``python cli.py figure --view NAME`` dispatches through it.
"""

from __future__ import annotations

from collections.abc import Callable

import altair as alt
import numpy as np
import pandas as pd

from attnscope.analysis.masks import mask_categories, recorded_allowed
from attnscope.analysis.record_view import RecordView
from attnscope.viz.compare import layer_profile, profile_chart, shared_domain
from attnscope.viz.heatmap import PAD, attention_frame, heatmap
from attnscope.viz.masking import mask_chart, mask_frame, right_share_chart, right_share_frame
from attnscope.viz.overview import THUMB, overview, overview_frame, thumbnails

__all__ = [
    "VIEWS",
    "compare_figure",
    "heatmap_figure",
    "masking_figure",
    "overview_figure",
    "overview_thumbnails",
    "padded_labels",
    "token_labels",
    "mask_and_attention",
]

Figure = tuple[alt.TopLevelMixin, pd.DataFrame]


def _allowed(rec: RecordView, layer: int) -> np.ndarray:
    """The mask the layer really applied (causal, a sliding window, padding), from the record."""
    return rec.allowed(layer)


def token_labels(rec: RecordView, stack: str | None = None, *, raw: bool = False) -> tuple[list[str], list[str]]:
    """(query labels, key labels) of text 0: the user's text each token covers (``ForwardRecord.labels``), or the
    raw pieces with ``raw=True`` (or for a record without labels)."""
    if raw or not getattr(rec, "labels", None):
        return rec.stack(stack).axes()
    return rec.stack(stack).axis_labels()


def padded_labels(rec: RecordView, batch: int = 0, *, raw: bool = False) -> list[str]:
    """Labels of every slot of a padded row: the real tokens' labels, pads marked "(pad)"."""
    out = [f"{t} (pad)" for t in rec.padded_tokens(batch)]
    real = token_labels(rec, raw=raw)[0] if batch == 0 else (rec.tokens[batch] if raw else rec.token_labels(batch))
    for slot, label in zip(rec.real_index(batch), real):
        out[int(slot)] = label
    return out


def heatmap_figure(rec: RecordView, layer: int = 0, head: int = 0, *, window: tuple[int, int] | None = None, domain=None, **_) -> Figure:
    """One head's map of text 0 (blocks above 128 tokens, ``window`` to zoom)."""
    weights = rec.attention(layer, head)  # [n, n]
    labels = token_labels(rec)[0]
    frame = attention_frame(weights, rec.tokens[0], layer=layer, head=head, allowed=_allowed(rec, layer), window=window, labels_q=labels)
    title = f"{rec.spec.name}: layer {layer}, head {head} (0-based)"
    return heatmap(frame, title=title, domain=domain), frame


def overview_thumbnails(rec: RecordView, size: int = THUMB) -> np.ndarray:
    """[layer, head, t, t] max-pooled thumbnails of every head of text 0, streamed (``rec.thumbnails``);
    blocks the recorded mask forbids entirely are NaN (drawn grey)."""
    return thumbnails(rec, size)


def overview_figure(rec: RecordView, layer: int | None = None, head: int | None = None, *, thumbs: np.ndarray | None = None, **_) -> Figure:
    """Every layer x head as raster thumbnails, KV groups banded; (layer, head) outlined when given."""
    thumbs = overview_thumbnails(rec) if thumbs is None else thumbs
    frame = overview_frame(thumbs, kv_group=rec.spec.kv_group)
    selected = (layer, head) if layer is not None and head is not None else None
    chart = overview(
        frame, selected=selected, select=None, title=f"{rec.spec.name}: all {rec.spec.n_layers} layers x {rec.spec.n_heads} heads"
    )
    return chart, frame.drop(columns=["image"])


def right_shares(rec: RecordView) -> np.ndarray:
    """[layer, head] share of attention on keys right of the query, text 0 (streamed; 0 under a causal mask)."""
    return rec.right_shares()


def mask_and_attention(
    rec: RecordView,
    layer: int,
    head: int,
    *,
    include_padding: bool = False,
    size=None,
    standalone: bool = True,
    stack: str | None = None,
    raw: bool = False,
):
    """The mask a layer applied and one head's masked attention, for text 0: the one builder behind the
    Masking page and ``masking_figure``.

    Args:
        include_padding: show the padded row (pads labelled "(pad)", padding keys as their own mask category).
        size: chart side in pixels (None: each builder's default).
        stack: encoder-decoder models: "encoder" (default) or "decoder" self-attention (real tokens only).
        raw: label the axes with the raw pieces instead of the text each token covers.
    Returns:
        (mask chart, mask frame, attention chart, attention frame).
    """
    spec = rec.spec
    which = "decoder " if stack == "decoder" else ""
    if stack == "decoder":  # the decoder's causal self-attention over the target text (real tokens)
        decoder = rec.stack("decoder")
        real, tokens = None, decoder.axes()[0]
        labels = token_labels(rec, "decoder", raw=raw)[0]
        allowed = decoder.allowed(layer, 0)
        weights = decoder.attention(layer, head)
    else:
        # a block without attention, or a stack the model lacks: one clear error
        recorded = rec.stack(stack).layer_record(layer)
        allowed = recorded_allowed(recorded.mask, 0, rec.n_padded)  # the mask the layer applied, padded coords
        if include_padding:
            real = rec.attention_mask[0]  # [n_padded] 1 = real token
            tokens = [t if r else f"{t} (pad)" for t, r in zip(rec.padded_tokens(0), real)]
            labels = padded_labels(rec, raw=raw)
            weights = rec.attention(layer, head, include_padding=True)
        else:
            index = rec.real_index(0)
            real, tokens = None, rec.tokens[0]
            labels = token_labels(rec, raw=raw)[0]
            allowed = allowed[np.ix_(index, index)]
            weights = rec.attention(layer, head)
    cats = mask_categories(allowed, real)
    sized = {} if size is None else {"size": size}
    mframe = mask_frame(cats, tokens, labels=labels)
    mchart = mask_chart(mframe, title=f"{spec.name}: {which}mask (layer {layer})", standalone=standalone, **sized)
    frame = attention_frame(weights, tokens, layer=layer, head=head, allowed=allowed & (cats != 3), labels_q=labels)
    hchart = heatmap(
        frame,
        domain=(0.0, 1.0),
        title=f"{spec.name}: {which}attention, layer {layer} head {head} (0-based)",
        standalone=standalone,
        **sized,
    )
    return mchart, mframe, hchart, frame


def masking_figure(rec: RecordView, layer: int = 0, head: int = 0, *, other=None, **_) -> Figure:
    """Mask and masked attention of each model (one row per model), then the right-of-query share by depth."""
    rows, shares = [], []
    for r in [rec] if other is None else [rec, other]:
        n = len(r.tokens[0])
        lay, hd = min(layer, r.spec.n_layers - 1), min(head, r.spec.n_heads - 1)
        mchart, _, hchart, _ = mask_and_attention(r, lay, hd, size=min(420, 14 * n + 120), standalone=False)
        rows.append(alt.hconcat(mchart, hchart).resolve_scale(color="independent"))
        shares.append(right_share_frame(right_shares(r), r.spec.name))
    data = pd.concat(shares, ignore_index=True)
    return alt.vconcat(*rows, right_share_chart(data, standalone=False)).resolve_scale(color="independent").properties(autosize=PAD), data


def compare_figure(rec: RecordView, layer: int = 0, head: int = 0, *, other=None, **_) -> Figure:
    """Two models side by side on one colour scale, then entropy and first-token mass by depth."""
    if other is None:
        msg = "the compare view needs a second model; pass --model-b"
        raise ValueError(msg)
    maps = []
    for r in (rec, other):
        lay, hd = min(layer, r.spec.n_layers - 1), min(head, r.spec.n_heads - 1)
        maps.append((r, lay, hd, r.attention(lay, hd)))
    domain = shared_domain(*(m[-1] for m in maps))
    charts = []
    for r, lay, hd, weights in maps:
        frame = attention_frame(weights, r.tokens[0], layer=lay, head=hd, allowed=_allowed(r, lay), labels_q=token_labels(r)[0])
        charts.append(heatmap(frame, domain=domain, size=380, title=f"{r.spec.name}: layer {lay}, head {hd} (0-based)", standalone=False))
    profiles = pd.concat([layer_profile(r.head_stats(), r.spec.name, r.spec.n_layers) for r in (rec, other)], ignore_index=True)
    top = alt.hconcat(*charts)
    bottom = alt.hconcat(
        profile_chart(profiles, "entropy", standalone=False), profile_chart(profiles, "first_token_mass", standalone=False)
    )
    return alt.vconcat(top, bottom).resolve_scale(color="independent").properties(autosize=PAD), profiles


# view name -> builder(rec, layer, head, *, other=None) -> (chart, frame). Pages' helpers add theirs here.
VIEWS: dict[str, Callable[..., Figure]] = {
    "heatmap": heatmap_figure,
    "overview": overview_figure,
    "masking": masking_figure,
    "compare": compare_figure,
}
