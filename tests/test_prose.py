"""Prose never contradicts the outputs: a measured number quoted in a notebook's text must be printed by it.

Why: a number typed into markdown goes stale silently when a result changes (a retrained checkpoint, a new
default); a printed number cannot. Every decimal, percentage and thousands-grouped number in a notebook's
markdown, and in that notebook's row of README's course table, must appear in the notebook's code or its stored
outputs, unless it names a section, exercise or figure, or is listed below with the reason it is not a
measurement (a constant of the paper, a formula's coefficient). Keep the list short: quote what the cell prints.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Dict, Iterator, Set, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))

# 98.5 %, 0.37, -0.89, +0.29, 86,567,656, 82 %; not 12 or 2e-3 (too common to be a measurement by themselves)
NUMBER = re.compile(r"(?<![\w.^/])[-+\u2212]?(?:\d{1,3}(?:,\d{3})+|\d+\.\d+|\d+(?=\s?%))(?:\s?%)?(?![\w])")
# "Exercise 7.1", "Sec. 4.5", "Table 2", "Fig. 7", "eq. 4", "arXiv 2010.11929", "notebook 06": references, not values
REFERENCE = re.compile(r"(?:Exercises?|exercises?|Experiments?|experiment|Sec\.|Section|section|Sections|Appendix|App\.|"
                       r"Table|Tables|Fig\.|Figs\.|Figure|eq\.|eqs\.|arXiv|notebook|version|v)"
                       r"(?:\s*[\dA-Z.]+\s*(?:,|and|or|&|-|\u2013|to)?)*\s*$")
CODE = re.compile(r"```.*?```|`[^`\n]*`", re.S)  # code in markdown shows shapes and calls, not measurements

# notebook file name -> {number as written: why it is not printed by that notebook}
NOT_MEASURED: Dict[str, Dict[str, str]] = {
    "04_encoder_block.ipynb": {"0.044715": "coefficient of the tanh approximation of GELU (a formula)"},
}


def _normalize(token: str) -> str:
    return token.replace("\u2212", "-").replace(" ", "").lstrip("+")


def numbers(text: str) -> Iterator[str]:
    """The value-like numbers of ``text`` (normalized), skipping references such as 'Exercise 7.1'."""
    text = CODE.sub(" ", text)
    for m in NUMBER.finditer(text):
        if REFERENCE.search(text[max(0, m.start() - 40):m.start()]):
            continue
        yield _normalize(m.group(0))


def _variants(token: str) -> Set[str]:
    bare = token.lstrip("-")
    return {token, bare, token.replace("%", ""), bare.replace("%", "")}


def printed(nb: dict) -> Set[str]:
    """Every number in the notebook's code and stored text outputs, in all the forms prose may quote it."""
    parts = []
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        parts.append("".join(cell["source"]))
        for out in cell.get("outputs", []):
            parts.append("".join(out.get("text", "")))
            parts += ["".join(v) for k, v in out.get("data", {}).items() if k.startswith("text/")]
    found: Set[str] = set()
    for token in numbers("\n".join(parts)):
        found |= _variants(token)
    return found


def unprinted(name: str, text: str, have: Set[str]) -> Iterator[str]:
    allowed = NOT_MEASURED.get(name, {})
    for token in numbers(text):
        if token in allowed or not (_variants(token) & have):
            if token not in allowed:
                yield token


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_numbers_in_markdown_are_printed(path: Path) -> None:
    nb = _load(path)
    have = printed(nb)
    stale = [(i, t) for i, cell in enumerate(nb["cells"]) if cell["cell_type"] == "markdown"
             for t in unprinted(path.name, "".join(cell["source"]), have)]
    assert not stale, (f"{path.name}: numbers in the text that no cell prints (cell, number): {stale}; print them, "
                       f"quote them as printed, or list them in NOT_MEASURED with the reason")


def _readme_rows() -> Iterator[Tuple[str, str]]:
    for line in (ROOT / "README.md").read_text(encoding="utf-8").splitlines():
        m = re.match(r"^\|\s*\[[^\]]*\]\(notebooks/([^)]+\.ipynb)\)", line)
        if m:
            yield m.group(1), line


def test_readme_course_table_quotes_the_notebooks() -> None:
    rows = list(_readme_rows())
    assert {name for name, _ in rows} == {p.name for p in NOTEBOOKS}, "README's course table lists every notebook"
    stale = []
    for name, line in rows:
        have = printed(_load(ROOT / "notebooks" / name))
        stale += [(name, t) for t in unprinted(name, line, have)]
    assert not stale, f"README course table: numbers the notebook does not print: {stale}"


def test_the_scan_finds_a_stale_number() -> None:
    nb = {"cells": [{"cell_type": "code", "source": ["print(0.29)"], "outputs": [{"text": ["+0.29, 82 %\n"]}]},
                    {"cell_type": "markdown", "source": ["smoothness +0.30 and 82 % (Exercise 8.1, Sec. 4.5)"]}]}
    have = printed(nb)
    assert list(unprinted("x.ipynb", "".join(nb["cells"][1]["source"]), have)) == ["0.30"]
    assert list(unprinted("x.ipynb", "86,567,656 vs 86,567,656", {"86,567,656"})) == []
    assert list(unprinted("x.ipynb", "rho \u22120.89", {"-0.89"})) == []
    assert list(unprinted("x.ipynb", "Exercises 3.1, 3.2 and 4.1; `[B, 196,768]`", set())) == []
