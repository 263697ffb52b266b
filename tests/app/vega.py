"""Read what a Streamlit page sent to the browser: the Vega-Lite specs and their Arrow datasets."""

from __future__ import annotations

import io
import json

import pandas as pd
import pyarrow as pa


def charts(at) -> list[dict]:
    """Every Vega-Lite chart on the page: {"id", "spec", "frames": [DataFrame, ...]} in page order."""
    out = []
    for element in at.get("vega_lite_chart"):
        proto = element.proto
        frames = [pa.ipc.open_stream(io.BytesIO(d.data.data)).read_all().to_pandas() for d in proto.datasets]
        if proto.data.data:
            frames.insert(0, pa.ipc.open_stream(io.BytesIO(proto.data.data)).read_all().to_pandas())
        out.append({"id": proto.id, "spec": json.loads(proto.spec), "frames": frames})
    return out


def _title(spec: dict) -> str:
    title = spec.get("title", "")
    return title.get("text", "") if isinstance(title, dict) else str(title)


def chart(at, key: str | None = None, columns: set[str] | None = None, title: str | None = None) -> dict:
    """The one chart with widget ``key`` (charts with a selection carry it), data ``columns``, or ``title`` (substring)."""
    found = [
        c
        for c in charts(at)
        if (key is not None and c["id"].endswith(f"-{key}"))
        or (columns is not None and any(columns <= set(f.columns) for f in c["frames"]))
        or (title is not None and title in _title(c["spec"]))
    ]
    assert len(found) == 1, f"expected one chart for key={key} columns={columns} title={title}, found {len(found)}"
    return found[0]


def frame(found: dict, columns: set[str]) -> pd.DataFrame:
    """The dataset of a chart that has ``columns``."""
    frames = [f for f in found["frames"] if columns <= set(f.columns)]
    assert frames, f"no dataset with {columns}"
    return frames[0]


def grid(frame: pd.DataFrame, value: str = "weight"):
    """A long-form (query_pos, key_pos, value) frame as a [q, k] numpy array."""
    return frame.pivot(index="query_pos", columns="key_pos", values=value).sort_index().sort_index(axis=1).to_numpy()
