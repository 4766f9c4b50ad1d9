"""Submissions as teachers get them: notebooks saved by old Jupyter (nbformat 3) and an LMS bulk download (Canvas:
every student's files loose in one folder, named ``<lastfirst>[_LATE]_<userid>_<submissionid>_<file name>``).

The reference and the notebooks are the synthetic ones of ``tests/test_grading.py``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import tempfile
import unicodedata
from pathlib import Path

import nbformat
import pytest

from vit_edu.classroom import grading, reference, report

from test_grading import SOLUTIONS, ZEROS, reference_folder, submission


# ============================================================================================ nbformat 3
def _v3(nb: nbformat.NotebookNode, metadata: bool = True) -> str:
    """``nb`` as old Jupyter (IPython 2 and 3) saved it: nbformat 3, cells in a worksheet, code in ``input``."""
    old = nbformat.convert(nb, 3)
    assert old.nbformat == 3 and "worksheets" in old
    if not metadata:  # an editor that dropped the nbgrader metadata
        for cell in old.worksheets[0].cells:
            cell.metadata.pop("nbgrader", None)
    return nbformat.writes(old, version=3)


def test_an_nbformat_3_notebook_is_graded_like_a_v4_one(tmp_path):
    """nbformat's own conversion reads it: the answers by grade_id, or by position where the metadata is gone,
    are those of the same notebook saved as nbformat 4."""
    ref = reference.load_reference(reference_folder(tmp_path / "reference"))
    nb = submission("b.ipynb", {"mlp": ZEROS})
    (tmp_path / "v4.ipynb").write_text(nbformat.writes(nb))
    expected, why = reference.read_answers(tmp_path / "v4.ipynb", ref)
    assert expected and set(expected) == {"attention_answer", "mlp_answer"}, why
    for metadata in (True, False):
        (tmp_path / "v3.ipynb").write_text(_v3(nb, metadata))
        answers, why = reference.read_answers(tmp_path / "v3.ipynb", ref)
        assert answers == expected, (metadata, why)


@pytest.mark.parametrize("notebook, says", [
    ({"nbformat": 2, "nbformat_minor": 0, "worksheets": []}, "an nbformat-2 notebook"),
    ({"nbformat": 3, "nbformat_minor": 0, "metadata": {}, "worksheets": "not a list"}, "an nbformat-3 notebook"),
])
def test_an_old_notebook_the_grader_cannot_convert_says_how_to(tmp_path, notebook, says):
    ref = reference.load_reference(reference_folder(tmp_path / "reference"))
    (tmp_path / "old.ipynb").write_text(json.dumps(notebook))
    answers, why = reference.read_answers(tmp_path / "old.ipynb", ref)
    assert answers is None and why.startswith(says) and "--nbformat 4" in why, why


def test_a_malformed_nbformat_3_notebook_costs_only_its_own_answers(tmp_path, caplog):
    """Cells of the wrong type are passed over; nbformat gets a valid document, so nothing of the student's file
    reaches the grader's log."""
    ref = reference.load_reference(reference_folder(tmp_path / "reference"))
    good = json.loads(_v3(submission("a.ipynb")))
    good["worksheets"][0]["cells"] += [7, {"cell_type": "code", "input": 5, "metadata": []},
                                       {"cell_type": "code", "input": ["x", 3], "outputs": "huge " * 1000}]
    good["worksheets"] += [{"cells": {"not": "a list"}}, {"cells": True}, None]
    (tmp_path / "odd.ipynb").write_text(json.dumps(good))
    answers, why = reference.read_answers(tmp_path / "odd.ipynb", ref)
    assert answers == {"patchify_answer": [SOLUTIONS["patchify"]]}, why
    assert "huge" not in caplog.text


# ============================================================================================ Canvas
def _canvas(folder: Path, files: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, nb in files.items():
        (folder / name).write_text(nbformat.writes(nb) if not isinstance(nb, str) else nb)
    return folder


def test_a_canvas_download_is_grouped_per_student(tmp_path):
    """One student per Canvas user id; the file's name as handed in, without Canvas's -1 for a name handed in again
    where the rest names a reference notebook (given to the latest: smithjohn's a-1 over the first a); late files
    count alike; other files of the student go along."""
    ref_dir = reference_folder(tmp_path / "reference")
    refs = reference.load_reference(ref_dir)
    subs = _canvas(tmp_path / "subs", {
        "doejane_1001_501_a-1.ipynb": submission("a.ipynb"),
        "doejane_LATE_1001_502_b.ipynb": submission("b.ipynb"),
        "doejane_1001_503_notes.txt": "my notes",
        "smithjohn_LATE_1002_601_my copy-2.ipynb": submission("a.ipynb"),
        "smithjohn_1002_602_a.ipynb": (ref_dir / "a.ipynb").read_text(),  # the untouched stub
        "smithjohn_1002_603_a-1.ipynb": submission("a.ipynb"),
        "o'brienpat_1003_701_b.ipynb": submission("b.ipynb"),  # what Canvas keeps of a name may be more than letters
    })
    (subs / "README.txt").write_text("the teacher's own file, no student's")
    groups = {s: sorted((p.name, n) for p, n in files) for s, files in reference.lms_download(subs, refs).items()}
    assert groups == {
        "doejane_1001": [("doejane_1001_501_a-1.ipynb", "a.ipynb"), ("doejane_1001_503_notes.txt", "notes.txt"),
                         ("doejane_LATE_1001_502_b.ipynb", "b.ipynb")],
        "smithjohn_1002": [("smithjohn_1002_602_a.ipynb", "602_a.ipynb"), ("smithjohn_1002_603_a-1.ipynb", "a.ipynb"),
                           ("smithjohn_LATE_1002_601_my copy-2.ipynb", "my copy-2.ipynb")],
        "o'brienpat_1003": [("o'brienpat_1003_701_b.ipynb", "b.ipynb")]}
    staged = tmp_path / "staged"
    staged.mkdir()
    superseded = reference.stage_lms_download(reference.lms_download(subs, refs), staged)
    assert superseded == {"smithjohn_1002": {"602_a.ipynb": "a.ipynb"}}
    assert (staged / "doejane_1001" / "notes.txt").read_text() == "my notes"
    match = reference.match_notebooks(staged / "smithjohn_1002", refs, superseded["smithjohn_1002"])
    assert match.graded["a.ipynb"][0].name == "a.ipynb"  # the latest copy, not the stub handed in first
    assert reference.lms_download(reference_folder(tmp_path / "per_folder_is_no_canvas"), refs) == {}


@pytest.mark.parametrize("extra, says", [
    ({"alice/a.ipynb": None}, r"1 student folder\(s\) with notebooks \(alice\)"),
    ({"a.ipynb": None}, r"1 notebook\(s\) named otherwise \(a.ipynb\)"),
    ({"doejanet_1001_777_b.ipynb": None}, r"user id 1001 named doejane and doejanet"),
])
def test_an_ambiguous_canvas_layout_is_refused_naming_what_was_found(tmp_path, extra, says):
    ref = reference_folder(tmp_path / "reference")
    subs = _canvas(tmp_path / "subs", {"doejane_1001_501_a.ipynb": submission("a.ipynb")})
    for name in extra:
        (subs / name).parent.mkdir(exist_ok=True)
        (subs / name).write_text(nbformat.writes(submission("a.ipynb")))
    with pytest.raises(ValueError, match=r"mixes layouts: \d file\(s\) named as in a Canvas download .*" + says):
        grading.grade(subs, tmp_path / "g.csv", reference_dir=ref, verbose=False)
    assert not (tmp_path / "g.csv").exists() and not (tmp_path / "g").exists()  # refused before any work


def test_a_canvas_download_is_graded_and_resumed(tmp_path):
    ref = reference_folder(tmp_path / "reference")
    subs = _canvas(tmp_path / "subs", {
        "doejane_1001_501_a-1.ipynb": submission("a.ipynb"),
        "doejane_LATE_1001_502_b.ipynb": submission("b.ipynb"),
        "smithjohn_1002_602_a.ipynb": submission("a.ipynb", {"patchify": ZEROS}),
    })
    out = tmp_path / "grades.csv"
    rows = grading.grade(subs, out, reference_dir=ref, verbose=False, jobs=1, seed=7)
    points = {}
    for r in rows:
        points[r["student"]] = points.get(r["student"], 0) + r["points"]
    assert points == {"doejane_1001": 6, "smithjohn_1002": 0}
    assert {r["message"] for r in rows if r["student"] == "smithjohn_1002" and r["notebook"] == "b.ipynb"} == {
        "notebook missing from the submission"}
    with open(grading.summary_path(out), newline="", encoding="utf-8") as f:
        assert [r["student"] for r in csv.DictReader(f)] == ["doejane_1001", "smithjohn_1002"]
    assert not list(Path(tempfile.gettempdir()).glob("vit_edu_lms_*"))  # the staged copy is gone
    state = json.loads((tmp_path / "grades" / grading.STATE_FILE).read_text())
    again = grading.grade(subs, out, reference_dir=ref, verbose=False, jobs=1, seed=7)  # resumes: nothing to run
    assert again == rows and json.loads((tmp_path / "grades" / grading.STATE_FILE).read_text())["students"] == \
        state["students"]


# ============================================================================================ folder names
def test_one_name_spelt_two_ways_and_a_mac_zip_s_resource_forks(tmp_path, capsys):
    """'José' from a Mac zip (e + combining accent) and from elsewhere (é) read alike: each folder keeps its own
    grades under a name with a digest, and the teacher is told. __MACOSX beside the students' folders is nobody."""
    ref = reference_folder(tmp_path / "reference")
    subs = tmp_path / "subs"
    nfc, nfd = unicodedata.normalize("NFC", "José"), unicodedata.normalize("NFD", "José")
    for name, nb in ((nfc, submission("a.ipynb")), (nfd, nbformat.read(ref / "a.ipynb", as_version=4))):
        (subs / name).mkdir(parents=True)
        nbformat.write(nb, subs / name / "a.ipynb")
    (subs / "__MACOSX" / nfc).mkdir(parents=True)
    (subs / "__MACOSX" / nfc / "._a.ipynb").write_bytes(b"\x00\x05\x16\x07 resource fork")
    rows = grading.grade(subs, tmp_path / "g.csv", reference_dir=ref, verbose=False, jobs=1, seed=3)
    points = {r["student"]: r["points"] for r in rows if r["exercise"] == "patchify"}
    digest = {name: hashlib.sha1(os.fsencode(name)).hexdigest()[:8] for name in (nfc, nfd)}
    assert points == {f"{nfc}~{digest[nfc]}": 1.0, f"{nfd}~{digest[nfd]}": 0.0}
    assert "student folders read alike" in capsys.readouterr().err


def test_a_folder_named_like_another_s_label_keeps_its_own_name():
    ann = f"Ann~{hashlib.sha1(b'Ann').hexdigest()[:8]}"  # what the folder 'Ann' is called beside 'ann'
    labels = report.student_labels([Path("Ann"), Path("ann"), Path(ann), Path("ben")])
    assert len(set(labels.values())) == 4 and labels[Path("Ann")] == ann and labels[Path("ben")] == "ben"
    assert labels[Path(ann)].startswith(ann + "~")
    fullwidth = report.student_labels([Path("ann"), Path("ａｎｎ")])
    assert all("~" in label for label in fullwidth.values())


# ============================================================================================ the grader's memory
def test_a_notebook_of_millions_of_tiny_json_values_is_refused_unread(tmp_path, monkeypatch):
    """64 MB of ``{}`` took 1.4 GB of the grader's memory to read: a notebook with more JSON values (commas and
    brackets) than any real one is refused before it is read, saying what to do; a real one is read."""
    ref = reference.load_reference(reference_folder(tmp_path / "reference"))
    nb = json.loads(nbformat.writes(submission("a.ipynb")))
    (tmp_path / "fine.ipynb").write_text(json.dumps(nb))
    nb["cells"][-1]["outputs"] = [{"output_type": "execute_result", "data": {}, "metadata": {"x": [{}] * 5000},
                                   "execution_count": 1}]
    (tmp_path / "junk.ipynb").write_text(json.dumps(nb))
    monkeypatch.setattr(reference, "MAX_JSON_VALUES", 4000, raising=False)  # (absent before the bound)
    monkeypatch.setattr(reference.json, "loads", lambda *a, **k: pytest.fail("read before it was refused"))
    answers, why = reference.read_answers(tmp_path / "junk.ipynb", ref)
    assert answers is None and why.startswith("it holds over 4,000 JSON values") and "--clear-output" in why, why
    monkeypatch.undo()
    assert reference.read_answers(tmp_path / "fine.ipynb", ref)[0] == {"patchify_answer": [SOLUTIONS["patchify"]]}


def test_a_notebook_saved_under_another_notebook_s_name_is_graded_as_the_one_it_holds(tmp_path):
    """'Save as' with the wrong name: a.ipynb holding only b's answer cells is b's work (a is missing); a file whose
    answers are partly its namesake's, or none of any notebook's, keeps its name."""
    refs = reference.load_reference(reference_folder(tmp_path / "reference"))
    student = tmp_path / "student"
    student.mkdir()
    nbformat.write(submission("b.ipynb"), student / "a.ipynb")
    match = reference.match_notebooks(student, refs)
    assert {name: path.name for name, (path, _, _) in match.graded.items()} == {"b.ipynb": "a.ipynb"}
    assert match.notes == [("a.ipynb", "graded as b.ipynb (its answer cells are this notebook's)")]
    nb = submission("b.ipynb")
    nb.cells += submission("a.ipynb").cells
    nbformat.write(nb, student / "a.ipynb")
    assert list(reference.match_notebooks(student, refs).graded) == ["a.ipynb"]
    nbformat.write(nbformat.v4.new_notebook(), student / "a.ipynb")
    assert list(reference.match_notebooks(student, refs).graded) == ["a.ipynb"]


def test_the_grades_and_the_reference_inside_the_submissions_folder_are_no_students(tmp_path):
    """``cd submissions && python -m vit_edu grade . --reference reference``: neither the handed-out copies nor the
    per-student grades folder the first run wrote beside the students is graded as a student on the next run."""
    subs = tmp_path / "subs"
    ref = reference_folder(subs / "reference")
    (subs / "ann").mkdir(parents=True)
    nbformat.write(submission("a.ipynb"), subs / "ann" / "a.ipynb")
    for force in (False, True):
        rows = grading.grade(subs, subs / "grades.csv", reference_dir=ref, verbose=False, jobs=1, seed=5, force=force)
        assert {r["student"] for r in rows} == {"ann"}
    assert (subs / "grades" / "ann.csv").is_file()


@pytest.mark.parametrize("files", [[], ["submissions.zip"], ["notes.txt"]])
def test_a_folder_without_students_is_refused_saying_what_it_holds(tmp_path, files):
    """The LMS's zip not yet extracted, or the wrong folder: refused before any work, not an empty table."""
    ref = reference_folder(tmp_path / "reference")
    subs = tmp_path / "subs"
    subs.mkdir()
    for name in files:
        (subs / name).write_bytes(b"PK\x05\x06" + bytes(18))
    says = r"holds no student folder; expected .*/<student>/\*\.ipynb or the files of a Canvas download"
    with pytest.raises(ValueError, match=says + (r"; it holds submissions.zip: extract it" if "submissions.zip" in files
                                                  else "$")):
        grading.grade(subs, tmp_path / "g.csv", reference_dir=ref, verbose=False)
    assert not (tmp_path / "g.csv").exists() and not (tmp_path / "g").exists()


# ============================================================================================ intake mistakes
def test_a_canvas_file_handed_in_again_grades_the_latest(tmp_path, monkeypatch):
    """Canvas names a file handed in again ``-1``, ``-2``, ...: the highest number is the latest (``-10`` after
    ``-9``, compared as numbers), graded even when an earlier copy has more answers worked on (b-1 is the untouched
    stub, handed in last); the earlier ones are noted as duplicates naming the graded file."""
    from test_grading import WRONG_ORDER, _InstantBox

    ref_dir = reference_folder(tmp_path / "reference")
    refs = reference.load_reference(ref_dir)
    subs = _canvas(tmp_path / "subs", {
        "doejane_1001_777_a.ipynb": submission("a.ipynb", {"patchify": ZEROS}),
        "doejane_1001_777_a-9.ipynb": submission("a.ipynb", {"patchify": WRONG_ORDER}),
        "doejane_1001_777_a-10.ipynb": submission("a.ipynb"),
        "doejane_1001_777_b.ipynb": submission("b.ipynb"),
        "doejane_1001_777_b-1.ipynb": (ref_dir / "b.ipynb").read_text(),
    })
    staged = tmp_path / "staged"
    staged.mkdir()
    superseded = reference.stage_lms_download(reference.lms_download(subs, refs), staged)
    assert superseded == {"doejane_1001": {"777_a.ipynb": "a.ipynb", "a-9.ipynb": "a.ipynb", "777_b.ipynb": "b.ipynb"}}
    match = reference.match_notebooks(staged / "doejane_1001", refs, superseded["doejane_1001"])
    assert match.graded["a.ipynb"][1] == {"patchify_answer": [SOLUTIONS["patchify"]]}  # a-10's
    assert match.graded["b.ipynb"][1] == reference.read_answers(ref_dir / "b.ipynb")[0]  # b-1's: the stub
    later = "which was handed in later (Canvas numbers a file handed in again -1, -2, ...; the latest is graded)"
    assert sorted(match.notes) == [("777_a.ipynb", f"duplicate of a.ipynb, {later}: not graded"),
                                   ("777_b.ipynb", f"duplicate of b.ipynb, {later}: not graded"),
                                   ("a-9.ipynb", f"duplicate of a.ipynb, {later}: not graded")]
    ran = []

    def judge(student, ref_nb, answers, result, seed, limits):
        ran.append((ref_nb.name, dict(answers)))
        return []

    monkeypatch.setattr(grading.sandbox, "Sandbox", _InstantBox)
    monkeypatch.setattr(grading, "judge_notebook", judge)
    rows = grading.grade(subs, tmp_path / "g.csv", reference_dir=ref_dir, verbose=False, jobs=1, seed=1)
    assert ran == [("a.ipynb", {"patchify_answer": [SOLUTIONS["patchify"]]}),
                   ("b.ipynb", reference.read_answers(ref_dir / "b.ipynb")[0])]  # the latest: a-10, b-1
    assert {r["notebook"] for r in rows if r["exercise"] == "(notebook)"} == {"777_a.ipynb", "777_b.ipynb", "a-9.ipynb"}


def test_a_notebook_saved_with_an_added_suffix_is_graded_and_an_export_is_named(tmp_path):
    """``a.ipynb.json`` (a browser or an LMS that saved the notebook as JSON) is graded, with a note to rename it;
    ``b.py`` (an export) or ``b.ipynb.bak`` is no notebook: "notebook missing" names the file and what to do."""
    refs = reference.load_reference(reference_folder(tmp_path / "reference"))
    ann = tmp_path / "ann"
    ann.mkdir()
    (ann / "a.ipynb.json").write_text(nbformat.writes(submission("a.ipynb")))
    (ann / "b.py").write_text("# exported from b.ipynb\n")
    (ann / "helpers.py").write_text("def helper(): pass\n")
    match = reference.match_notebooks(ann, refs)
    assert match.graded["a.ipynb"][0].name == "a.ipynb.json"
    export = "b.py is an export of b.ipynb (.py), not the notebook: the grader reads only the .ipynb file; hand in " \
             "b.ipynb itself"
    assert match.notes == [("a.ipynb.json", "graded as a.ipynb (saved as .ipynb.json: rename it a.ipynb)"),
                           ("b.py", f"not graded: {export[len('b.py is '):]}")]
    rows, tasks = grading._prepare(ann, "ann", refs, False)
    assert [t.ref.name for t in tasks] == ["a.ipynb"]
    assert {r["message"] for r in rows if r["notebook"] == "b.ipynb"} == {
        f"notebook missing from the submission; {export}"}
    (ann / "b.py").unlink()
    (ann / "B.ipynb.bak").write_text(nbformat.writes(submission("b.ipynb")))
    (ann / "b.IPYNB.TXT").write_text("not JSON")  # read as a notebook: unreadable, and said so
    rows, _ = grading._prepare(ann, "ann", refs, False)
    assert {r["message"] for r in rows if r["notebook"] == "b.ipynb"} == {
        "could not read b.IPYNB.TXT: not a notebook (invalid JSON: Expecting value: line 1 column 1 (char 0))"}
    (ann / "b.IPYNB.TXT").unlink()
    rows, _ = grading._prepare(ann, "ann", refs, False)
    assert {r["message"] for r in rows if r["notebook"] == "b.ipynb"} == {
        "notebook missing from the submission; B.ipynb.bak is named like b.ipynb but no notebook file name: if it "
        "is the notebook, rename it b.ipynb and grade again"}


def _section(root: Path, students: dict) -> None:
    for where, nb in students.items():
        (root / where).parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, root / where)


def test_a_submissions_folder_one_level_too_high_is_refused_naming_the_folder_to_grade(tmp_path):
    """subs/section1/{alice,bob,carol}/a.ipynb: 'section1' is no student but a folder of students. Refused before
    any work (as a Canvas download mixed with folders is), naming the folder to grade."""
    ref = reference_folder(tmp_path / "reference")
    subs = tmp_path / "subs"
    _section(subs, {"section1/alice/a.ipynb": submission("a.ipynb"), "section1/bob/a.ipynb": submission("a.ipynb"),
                    "section1/carol/a.ipynb": submission("a.ipynb", {"patchify": ZEROS}),
                    "section2/dave/a.ipynb": submission("a.ipynb")})
    with pytest.raises(ValueError) as err:
        grading.grade(subs, tmp_path / "g.csv", reference_dir=ref, verbose=False)
    assert str(err.value).startswith(f"{subs} looks one level too high for a submissions folder: section1 holds "
                                     f"a.ipynb in 3 subfolders (alice, bob, carol), and none at its top")
    assert f"grade each such folder on its own, e.g. python -m vit_edu grade {subs / 'section1'} --out" in \
        str(err.value)
    assert not (tmp_path / "g.csv").exists() and not (tmp_path / "g").exists()
    assert grading.main([str(subs), "--reference", str(ref), "--out", str(tmp_path / "g.csv")]) == 2


def test_one_student_with_copies_in_several_subfolders_is_warned_about_and_graded(tmp_path, monkeypatch, capsys):
    """One folder of a class with v1/a.ipynb and v2/a.ipynb (and nothing at its top) may be one student's two tries
    or two students: graded as one student, warned about on stderr and noted in its rows. A copy at the top beside
    one in a subfolder is the usual duplicate, no warning."""
    ref = reference_folder(tmp_path / "reference")
    subs = tmp_path / "subs"
    _section(subs, {"ann/a.ipynb": submission("a.ipynb"), "ben/a.ipynb": submission("a.ipynb"),
                    "ben/backup/a.ipynb": submission("a.ipynb"), "cat/hw/a.ipynb": submission("a.ipynb"),
                    "eve/v1/a.ipynb": submission("a.ipynb", {"patchify": ZEROS}),
                    "eve/v2/a.ipynb": submission("a.ipynb")})
    assert [bool(reference.nested_students(subs / s)) for s in ("ann", "ben", "cat", "eve")] == [False] * 3 + [True]
    ran = []
    monkeypatch.setattr(grading, "_grade_all", lambda box, todo, *a, **k: ran.append(list(todo)))
    monkeypatch.setattr(grading.sandbox, "Sandbox", lambda *a, **k: type("Box", (), {"close": lambda self: None, "isolate": False})())
    grading.grade(subs, tmp_path / "g.csv", reference_dir=ref, verbose=False)
    assert ran == [["ann", "ben", "cat", "eve"]]
    err = capsys.readouterr().err
    assert f"warning: eve holds a.ipynb in 2 subfolders (v1, v2) and none at its top, as a folder of several " \
           f"students would: it is graded as one student, the other copies as duplicates; if these are students, " \
           f"grade {subs / 'eve'} on its own" in err and "ben" not in err, err
    notes = reference.match_notebooks(subs / "eve", reference.load_reference(ref)).notes
    assert notes[0] == ("a.ipynb", "copies in 2 subfolders (v1, v2) and none at the top, as in a folder of several "
                                   "students: if these are students, grade this folder on its own")


def test_a_submissions_folder_two_levels_too_high_names_the_folder_of_the_students(tmp_path):
    ref = reference_folder(tmp_path / "reference")
    subs = tmp_path / "subs"
    _section(subs, {"2026/section1/alice/a.ipynb": submission("a.ipynb"),
                    "2026/section1/bob/a.ipynb": submission("a.ipynb")})
    with pytest.raises(ValueError, match=r"2026 holds a.ipynb in 2 subfolders \(section1/alice, section1/bob\), and "
                                         r"none at its top") as err:
        grading.grade(subs, tmp_path / "g.csv", reference_dir=ref, verbose=False)
    assert f"python -m vit_edu grade {subs / '2026' / 'section1'} --out grades_2026.csv" in str(err.value)
