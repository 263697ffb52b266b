"""cli.py routes: the JSON contract with the engine's graph; bad input exits 2 with one stderr line."""

from __future__ import annotations

import json
from collections import defaultdict

import pytest

from attnscope import cli
from attnscope.models import load
from attnscope.models.routes import routes
from tests.helpers import assert_one_line_exit_2, run_cli

pytestmark = pytest.mark.slow

EDGE_KEYS = {"layer", "kind", "head", "kv_head", "from_position", "to_position", "importance"}


@pytest.mark.parametrize(
    ("model", "text", "extra"), [("smollm2", "The capital of France is", []), ("minilm", "The mouse ran.", ["--position", "2"])]
)
def test_routes_json_is_the_engines_graph_and_sums_to_one_at_zero(tmp_path, model, text, extra):
    out = tmp_path / "routes.json"
    assert cli.main(["routes", "--model", model, "--text", text, "--threshold", "0", *extra, "--out", str(out)]) == 0
    data = json.loads(out.read_text(encoding="utf-8"))
    assert set(data) == {"tokens", "position", "nodes", "edges", "meta"}
    lm = load(model)
    position = int(extra[1]) if extra else len(data["tokens"]) - 1
    expected = routes(lm, text, position=position, threshold=0.0)
    assert data["tokens"] == expected.tokens and data["position"] == position
    assert all(set(node) == {"layer", "position"} for node in data["nodes"])
    assert all(set(edge) == EDGE_KEYS for edge in data["edges"])
    assert len(data["edges"]) == len(expected.edges) and len(data["nodes"]) == len(expected.nodes)
    into = defaultdict(float)
    for edge in data["edges"]:
        assert edge["kind"] in ("head", "mlp", "residual")
        assert (edge["head"] is None) == (edge["kind"] != "head") and (edge["kv_head"] is None) == (edge["kind"] != "head")
        if edge["kind"] == "head":
            assert edge["kv_head"] == edge["head"] // lm.spec.kv_group
        assert 0 <= edge["layer"] < lm.spec.n_layers
        into[(edge["layer"], edge["to_position"])] += edge["importance"]
    assert into and all(abs(total - 1) < 1e-5 for total in into.values())  # τ = 0: every node's edges sum to 1
    assert (lm.spec.n_layers - 1, position) in into
    assert "biases" in data["meta"] and data["meta"]["threshold"] == 0.0


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["routes", "--model", "minilm", "--text", "   ", "--out", "r.json"], "empty"),
        (["routes", "--model", "minilm", "--text", "The mouse ran.", "--position", "40", "--out", "r.json"], "position 40 out of range"),
        (["routes", "--model", "minilm", "--text", "The mouse ran.", "--threshold", "1", "--out", "r.json"], "[0, 1)"),
        (["routes", "--model", "minilm", "--text", "The mouse ran.", "--out", "r.csv"], ".json"),
        (["routes", "--model", "minilm", "--text", "a", "--text", "b", "--out", "r.json"], "one text"),
        (["routes", "--model", "minilm", "--text", "The mouse ran.", "--threshold", "x", "--out", "r.json"], "invalid float"),
    ],
)
def test_bad_input_exit_2_one_line(tmp_path, argv, needle):
    # One case in a fresh interpreter, as a shell runs it; the rest through cli.main in this process.
    assert_one_line_exit_2(run_cli(argv, cwd=tmp_path, process=needle == "position 40 out of range"), needle)


def test_an_encoder_decoder_graph_has_its_source_side(tmp_path, t5_dir):
    out = tmp_path / "routes.json"
    argv = ["routes", "--model", t5_dir, "--text", "The mouse ran.", "--target", "Le chat.", "--threshold", "0", "--out", str(out)]
    assert cli.main(argv) == 0
    data = json.loads(out.read_text(encoding="utf-8"))
    assert set(data) == {"tokens", "position", "nodes", "edges", "meta", "source_tokens"}
    assert all(set(edge) == EDGE_KEYS | {"stack", "from_stack"} for edge in data["edges"])
    into = defaultdict(float)
    for edge in data["edges"]:
        into[(edge["stack"], edge["layer"], edge["to_position"])] += edge["importance"]
    assert all(abs(total - 1) < 1e-5 for total in into.values())
    assert any(e["stack"] == "decoder" and e["from_stack"] == "encoder" for e in data["edges"])
    assert cli.main(["routes", "--model", t5_dir, "--text", "The mouse ran.", "--out", str(out)]) == 2  # no target
