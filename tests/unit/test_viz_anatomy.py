"""Anatomy charts and the lab's new charts: built from the real frames, they serialise and export (PNG and SVG),
and the frames hold the numbers the charts draw."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from attnscope.analysis.cost import receptive_field_frame, recurrence_memory_frame
from attnscope.analysis.patterns import Recurrence
from attnscope.models import run
from attnscope.models.anatomy import anatomy, attention_cost, distance_frame, embedding_parts, heads_table, residual_norms
from attnscope.models.lab import lab_scale
from attnscope.viz import anatomy as viz_anatomy
from attnscope.viz.export import chart_bytes
from attnscope.viz.lab import receptive_field_chart, recurrence_memory_chart, scale_effect_chart, scale_entropy_chart
from tests import tiny

TEXT = "The mouse ran, the cat waited by the door."


@pytest.fixture(scope="module")
def charts():
    llama, bert = tiny.build("llama_gqa"), tiny.build("bert")
    facts = anatomy(llama)
    rec, rec_bert = run(llama, TEXT), run(bert, TEXT)
    stream = []
    for name, record, placement in (("llama", rec, "pre"), ("bert", rec_bert, "post")):
        frame = residual_norms(record)
        frame.insert(0, "placement", placement)
        frame.insert(0, "model", name)
        stream.append(frame)
    measured, fits = attention_cost(4, 2, 8, lengths=(16, 32, 64), repeats=1)
    parts, _ = embedding_parts(bert, rec_bert)
    sweep = lab_scale(llama, TEXT, taus=(0.5, 1.0, 2.0))
    pattern = Recurrence(3, 1)
    return {
        "parameters": viz_anatomy.parameters_chart(viz_anatomy.parameter_frame(facts.parameters)),
        "heads": viz_anatomy.heads_chart(heads_table(facts)),
        "stream": viz_anatomy.residual_norm_chart(pd.concat(stream, ignore_index=True)),
        "distance": viz_anatomy.distance_chart(distance_frame(rec, layers=[1]), layer=1),
        "parts": viz_anatomy.embedding_parts_chart(parts),
        "cost": viz_anatomy.attention_cost_chart(measured, viz_anatomy.cost_fit_frame(measured, fits)),
        "receptive": receptive_field_chart(receptive_field_frame(pattern, 30, 512)),
        "memory": recurrence_memory_chart(recurrence_memory_frame(pattern, 30, 3, 64)),
        "entropy": scale_entropy_chart(sweep.entropy),
        "effect": scale_effect_chart(sweep.summary),
    }


@pytest.mark.parametrize("name", ["parameters", "heads", "stream", "distance", "parts", "cost", "receptive", "memory", "entropy", "effect"])
def test_every_chart_serialises_and_exports(charts, name):
    chart = charts[name]
    assert chart.to_dict()
    assert chart_bytes(chart, "png")[:8] == b"\x89PNG\r\n\x1a\n"
    assert chart_bytes(chart, "svg").lstrip().startswith(b"<svg")


def test_parameter_frame_drops_empty_components_and_keeps_shares():
    frame = viz_anatomy.parameter_frame({"token_embeddings": 60, "attention_q": 30, "lm_head": 0, "mlp": 10, "total": 100})
    assert frame["component"].tolist() == ["token_embeddings", "attention_q", "mlp"]
    np.testing.assert_allclose(frame["share"], [0.6, 0.3, 0.1])


def test_cost_fit_frame_draws_the_fitted_curve():
    measured = pd.DataFrame({"n": [16, 32, 64], "kernel": "eager", "seconds": [1.0, 4.0, 16.0]})
    fitted = viz_anatomy.cost_fit_frame(measured, {"eager": {"a": 1 / 256, "b": 0.0, "c": 0.0}}, points=5)
    assert fitted["n"].iloc[0] == 16 and fitted["n"].iloc[-1] == pytest.approx(64)
    np.testing.assert_allclose(fitted["fitted_seconds"], fitted["n"] ** 2 / 256)
