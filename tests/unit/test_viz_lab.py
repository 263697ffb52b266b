"""Lab charts: frames hold the maps' values, charts serialise and export."""

import numpy as np
import pytest

import attnscope.viz.lab
from attnscope.analysis.cost import cost_frame, flash_io_frame, kv_cache_frame
from attnscope.analysis.patterns import parse_pattern
from attnscope.viz.export import chart_bytes
from attnscope.viz.lab import cost_chart, flash_io_chart, kept_lost_chart, kept_lost_frame, kv_cache_chart, pattern_map_chart


def maps(n=4):
    exact = np.tril(np.ones((n, n))) / np.arange(1, n + 1)[:, None]
    kept = np.tril(np.ones((n, n), dtype=bool)) & (np.arange(n)[:, None] - np.arange(n)[None, :] < 2)
    approx = np.where(kept, exact, 0) / np.where(kept, exact, 0).sum(-1, keepdims=True)
    return {"exact": exact, "approx": approx, "kept": kept, "allowed": np.tril(np.ones((n, n), dtype=bool))}


def test_kept_lost_frame_splits_each_cell():
    m = maps()
    frame = kept_lost_frame(m, ["a", "b", "c", "d"])
    np.testing.assert_allclose(frame["kept_mass"] + frame["lost"], frame["weight"])
    np.testing.assert_allclose(frame.groupby("query_pos")["kept_mass"].sum(), (m["exact"] * m["kept"]).sum(-1))
    assert set(frame.loc[frame["status"] == "dropped by the pattern", "lost"]) == set(m["exact"][m["allowed"] & ~m["kept"]])
    with pytest.raises(ValueError, match="do not match"):
        kept_lost_frame(m, ["a"])


def test_charts_serialise_and_export():
    frame = kept_lost_frame(maps(), ["a", "b", "c", "d"])
    charts = [
        pattern_map_chart(frame),
        kept_lost_chart(frame),
        cost_chart(cost_frame(parse_pattern("window:64"), 64, 9, 30)),
        kv_cache_chart(kv_cache_frame(30, 9, 3, 64)),
        flash_io_chart(flash_io_frame(64), 100, 64),
    ]
    for chart in charts:
        assert chart.to_dict()
    assert chart_bytes(charts[1], "png").startswith(b"\x89PNG")
    assert all(getattr(attnscope.viz.lab, name, None) is not None for name in attnscope.viz.lab.__all__)
