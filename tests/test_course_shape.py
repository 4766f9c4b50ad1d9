"""The course asks students to think: contracts with collapsible hints, predictions before measurements, open
experiments with a rubric. These tests hold the notebooks to that shape and test the tools behind it."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

from vit_edu.checks import check_patchify, passed_or, reveal
from vit_edu.classroom import assignments as A

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
# A recipe outside the hints: the statement would dictate the call instead of stating the contract.
RECIPE = re.compile(r"\b(?:nn|F|torch|einops)\.[A-Za-z_]+\(|\brearrange\(|\beinsum\(")
DETAILS = re.compile(r"<details>.*?</details>", re.S)


def _read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


def _statements():
    for path in NOTEBOOKS:
        nb = _read(path)
        for ex in A.find_exercises(nb, path.name):
            yield path.name, ex, nb.cells[ex.statement].source


STATEMENTS = list(_statements())


def test_every_checked_exercise_is_still_there() -> None:
    assert len(STATEMENTS) == 18
    assert sum(ex.points for _, ex, _ in STATEMENTS) == 43


@pytest.mark.parametrize("name,ex,source", STATEMENTS, ids=[f"{n[:2]}-{e.key}" for n, e, _ in STATEMENTS])
def test_statement_is_a_contract_with_collapsible_hints(name, ex, source) -> None:
    assert "<details>" in source and "</details>" in source, f"{name}, exercise {ex.number}: no collapsible hint"
    assert source.count("<details>") == source.count("</details>"), f"{name}, exercise {ex.number}: unclosed hint"
    outside = DETAILS.sub("", source)
    recipe = RECIPE.findall(outside)
    assert not recipe, f"{name}, exercise {ex.number}: the statement dictates the call {recipe} outside the hints"


def _predictions():
    for path in NOTEBOOKS:
        cells = _read(path).cells
        for i, cell in enumerate(cells):
            if cell.cell_type == "code" and re.search(r"^my_prediction\w* = None\b", cell.source, re.M):
                yield path.name, i, cells


PREDICTIONS = list(_predictions())


def test_at_least_eight_predict_then_run_questions() -> None:
    assert len(PREDICTIONS) >= 8, f"{len(PREDICTIONS)} predict-then-run questions"


@pytest.mark.parametrize("name,index,cells", PREDICTIONS, ids=[f"{n[:2]}-{i}" for n, i, _ in PREDICTIONS])
def test_prediction_asked_before_it_is_revealed(name, index, cells) -> None:
    variable = re.search(r"^(my_prediction\w*) = None\b", cells[index].source, re.M).group(1)
    asked = [c for c in cells[max(0, index - 2):index] if c.cell_type == "markdown" and "Predict, then run" in c.source]
    assert asked, f"{name}, cell {index}: no '**Predict, then run.**' question right above"
    later = [c for c in cells[index + 1:] if c.cell_type == "code" and re.search(rf"reveal\(\s*{variable}\b", c.source)]
    assert later, f"{name}, cell {index}: {variable} is never revealed"
    revealed = [o for c in later for o in c.get("outputs", []) if variable and "no prediction written" in
                "".join(o.get("text", ""))]
    assert revealed, f"{name}, cell {index}: the stored notebook does not show the measurement revealed"


def test_at_least_three_open_experiments_with_rubrics() -> None:
    found = [(p.name, exp) for p in NOTEBOOKS for exp in A.find_experiments(_read(p), p.name)]
    assert len(found) >= 3
    for name, exp in found:
        nb = _read(ROOT / "notebooks" / name)
        answer = nb.cells[exp.answer]
        assert answer.metadata["nbgrader"]["grade"] and answer.metadata["nbgrader"]["points"] == exp.points
        assert sum(r["points"] for r in answer.metadata["vit_edu"]["rubric"]) == exp.points
        assert exp.code, f"{name}: experiment {exp.number} has no code of the teacher's"
        assert any(o.get("output_type") == "stream" for c in exp.code for o in nb.cells[c].outputs), \
            f"{name}: experiment {exp.number}'s teacher code printed no measurement"


# ------------------------------------------------------------------------------------------- the tools
def test_reveal_says_right_wrong_or_missing(capsys) -> None:
    reveal(None, 151_296, what="parameters of E")
    reveal(150_000, 151_296, what="parameters of E", rel_tol=0.05)
    reveal(100_000, 151_296, what="parameters of E", rel_tol=0.05)
    reveal("Sharper ", "sharper", what="softmax", choices=["sharper", "flatter"])
    reveal("maybe", "sharper", what="softmax", choices=["sharper", "flatter"])
    reveal((1, 196, 768), (1, 196, 768), what="shape")
    reveal("many", 3, what="count")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "(no prediction written) parameters of E: 151,296"
    assert lines[1].startswith("\u2713 right (within 5%)") and lines[2].startswith("\u2717 not quite")
    assert lines[3].startswith("\u2713 right") and lines[4].startswith("? your prediction 'maybe' is not one of")
    assert lines[5].startswith("\u2713 right") and lines[6].startswith("? your prediction 'many' is not a number")


def test_passed_or_falls_back_until_the_check_passes(capsys) -> None:
    import vit_edu
    from einops import rearrange

    def patchify(images, patch_size):
        raise NotImplementedError()

    assert passed_or(patchify, vit_edu.patchify) is vit_edu.patchify
    assert "has not passed its check yet" in capsys.readouterr().out

    def patchify(images, patch_size):  # noqa: F811 - the student's second try
        return rearrange(images, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=patch_size, p2=patch_size)

    assert passed_or(patchify, vit_edu.patchify) is vit_edu.patchify  # not checked yet
    check_patchify(patchify)
    assert passed_or(patchify, vit_edu.patchify) is patchify

    def patchify_wrong(images, patch_size):
        return rearrange(images, "b c (h p1) (w p2) -> b (h w) (c p1 p2)", p1=patch_size, p2=patch_size)

    with pytest.raises(Exception):
        check_patchify(patchify_wrong)
    assert passed_or(patchify, vit_edu.patchify) is vit_edu.patchify  # a failed re-check withdraws the pass


def _experiment_nb(rubric: str = "- (1 point) runs both\n- (2 points) explains why") -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("## 7. Experiments"),
                nbformat.v4.new_markdown_cell("**Experiment 6.A (3 points, graded by hand): cls vs mean**\n\n"
                                              "Compare them.\n\n" + rubric),
                nbformat.v4.new_code_cell("seeds = 3\n### BEGIN SOLUTION\nprint('teacher run')\n### END SOLUTION"),
                nbformat.v4.new_markdown_cell("**Answer.**\n### BEGIN SOLUTION\nmean wins by 1 %\n### END SOLUTION"),
                nbformat.v4.new_markdown_cell("## Summary")]
    return nb


def test_experiment_metadata_and_student_copy() -> None:
    nb = A.add_nbgrader_metadata(_experiment_nb())
    assert nb.cells[2].metadata["nbgrader"] == {"grade": False, "grade_id": "experiment_6_a_code", "locked": False,
                                                "schema_version": 3, "solution": True}
    assert nb.cells[3].metadata["nbgrader"]["grade"] and nb.cells[3].metadata["nbgrader"]["points"] == 3
    assert nb.cells[3].metadata["vit_edu"]["rubric"] == [{"points": 1, "criterion": "runs both"},
                                                         {"points": 2, "criterion": "explains why"}]
    assert not A.metadata_problems(nb) and A.find_exercises(nb) == []
    student = A.make_student_notebook(nb)
    assert "teacher run" not in student.cells[2].source and "raise" not in student.cells[2].source
    assert student.cells[2].source.startswith("seeds = 3\n# YOUR CODE HERE")
    assert student.cells[3].source == "**Answer.**\nYOUR ANSWER HERE"


@pytest.mark.parametrize("rubric,error", [
    ("no rubric here", "has no rubric"),
    ("- (1 point) runs both", "adds up to 1 points, the statement says 3"),
])
def test_experiment_errors_name_the_cell(rubric, error) -> None:
    with pytest.raises(ValueError, match=error):
        A.find_experiments(_experiment_nb(rubric), "x.ipynb")


def test_experiment_without_written_answer_is_refused() -> None:
    nb = _experiment_nb()
    del nb.cells[3]
    with pytest.raises(ValueError, match="exactly one markdown cell with a solution region"):
        A.find_experiments(nb, "x.ipynb")


def test_grader_never_runs_experiment_code(tmp_path) -> None:
    from vit_edu.classroom import reference
    nb = A.make_student_notebook(A.add_nbgrader_metadata(_experiment_nb()))
    path = tmp_path / "06_x.ipynb"
    nbformat.write(nb, path)
    ref = reference.load_reference_notebook(path)
    assert ref.steps == [] and ref.exercises == []
