"""The docs are generated where they can be, and stay in step: benchmarks from bench/results/."""

from __future__ import annotations

import json

from bench import report
from tests.conftest import ROOT


def test_benchmarks_doc_is_what_the_result_files_render():
    assert (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8") == report.render(), (
        "docs/benchmarks.md is stale: run python bench/report.py"
    )


def test_every_result_file_gets_a_section_naming_its_machine():
    text = report.render()
    for path in report.result_files():
        section = text.split(f"`bench/results/{path.name}`", 1)
        assert len(section) == 2, f"{path.name} is not rendered"
        assert "\nMachine: " in section[1].split("\n## ", 1)[0], f"{path.name}: no machine line"


def test_an_unknown_result_file_is_rendered_under_its_name(tmp_path):
    rows = [{"tokens": 128, "s": "0.5"}, {"tokens": 512, "s": "1.9", "note": "noisy"}]
    (tmp_path / "new-bench.json").write_text(json.dumps({"machine": "1 CPU core", "rows": rows}))
    (tmp_path / "other.md").write_text("| a |\n|---|\n| 1 |\n")
    text = report.render(tmp_path)
    assert "## new-bench" in text and "Machine: 1 CPU core." in text
    assert "| tokens | s | note |" in text and "| 128 | 0.5 | — |" in text  # a missing cell is a dash, not a shifted row
    assert "## other" in text and "Machine: not recorded." in text
