"""The README and docs/ stay whole: a README a newcomer reads in minutes, every code block
closed, every relative link and image present, and every ``make`` target they name defined."""

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
TARGETS = set(re.findall(r"^([a-z][a-z0-9-]*):", (REPO / "Makefile").read_text(), flags=re.M))


def test_the_readme_stays_short():
    assert len((REPO / "README.md").read_text().splitlines()) <= 250


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_code_blocks_are_closed(page):
    fences = [n for n, line in enumerate(page.read_text().splitlines(), 1) if line.startswith("```")]
    assert len(fences) % 2 == 0, f"{page.name}: an unclosed code block (fences at lines {fences})"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page):
    links = re.findall(r"\]\(([^)\s#]+)(?:#[^)]*)?\)", page.read_text())
    missing = [link for link in links if "://" not in link and not (page.parent / link).exists()]
    assert not missing, f"{page.name} links to missing files: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_named_make_targets_exist(page):
    named = set(re.findall(r"\bmake ([a-z][a-z0-9-]*[a-z0-9])(?![\w*-])", page.read_text()))
    assert named <= TARGETS, f"{page.name} names make targets the Makefile lacks: {named - TARGETS}"
