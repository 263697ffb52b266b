"""The docs are generated where they can be, and stay in step: benchmarks from bench/results/."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

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


# -- the README as a front door, links that lead somewhere -----------------------------------------
DOCS = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCED = re.compile(r"^```.*?^```", re.DOTALL | re.MULTILINE)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = FENCED.sub("", path.read_text(encoding="utf-8"))
    return {slug(line.lstrip("#")) for line in text.splitlines() if line.startswith("#")}


def test_readme_is_a_front_door():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 200
    for doc in ("api", "cli", "pages", "architecture", "models", "lab", "corpus", "benchmarks", "libraries", "security"):
        assert f"docs/{doc}.md" in readme, f"the README does not link docs/{doc}.md"
    image = ROOT / "docs" / "img" / "attention.png"
    assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and image.stat().st_size < 400_000


@pytest.mark.parametrize("path", [p for p in DOCS if p.exists()], ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_and_anchors_resolve(path):
    text = FENCED.sub("", path.read_text(encoding="utf-8"))
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        resolved = (path.parent / file).resolve() if file else path
        if not resolved.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target} (no heading #{anchor})")
    assert not broken, broken


def test_zoo_table_sits_between_its_markers():
    from tests import zoo

    doc = (ROOT / "docs" / "models.md").read_text(encoding="utf-8")
    table = doc.split(zoo.DOC_START, 1)[1].split(zoo.DOC_END, 1)[0].strip("\n")
    assert table.startswith("transformers ") and "| **silently wrong** | **0** |" in table
    assert zoo.replace_table(doc, table) == doc  # what `python -m tests.zoo --docs` writes round-trips
