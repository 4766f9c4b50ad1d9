"""The grader seen from honest students: a right answer gets its points whatever harmless thing the notebook does
around it, and nothing is flagged.

One grading run against the course's real reference (``assignments/student``): every student hands in real
student copies whose answer cells hold the teacher's answers (``notebooks/``, the right answers in the notebooks'
own context), wrapped in what students do in Jupyter: IPython magics, shell escapes and help lines, displays,
progress bars and figures, long prints, imports, seeds, warnings, logging, a pause, helpers, names and comments
outside ASCII, extra methods, docstrings, ``from __future__``, ``if __name__ == "__main__":``, a debugger call
left in (these two in every notebook of the course); notebooks saved with CRLF line endings and tabs, sources as one string, stale error outputs, and by
VS Code, Colab or JupyterLab 4 (cell ids missing or repeated). An ``input()`` left in an answer cell fails that
cell at once, saying why; a finished answer over an earlier exercise's stub is told where the stub is.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest

from vit_edu.classroom import grading
from vit_edu.classroom.child import _without_magics

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "assignments" / "student"
NOTEBOOKS = ["01_patch_embedding.ipynb", "04_encoder_block.ipynb"]  # a function and classes, MLP used by the block
EVERY = sorted(p.name for p in REFERENCE.glob("[0-9][0-9]_*.ipynb"))  # the whole course, for the usual habits


def _exercises(names) -> int:
    return sum(_is_answer(c) for name in names for c in nbformat.read(REFERENCE / name, as_version=4).cells)


def _grade_id(cell) -> str:
    return cell.get("metadata", {}).get("nbgrader", {}).get("grade_id", "")


def _is_answer(cell) -> bool:
    return _grade_id(cell).endswith("_answer") and not _grade_id(cell).startswith("experiment_")


def _object(source: str) -> str:
    return re.search(r"^(?:def|class) (\w+)", source, re.M).group(1)


def _honest(name: str, edit=lambda source: source) -> dict:
    """The student copy ``name`` with the teacher's answers, each passed through ``edit``, as JSON."""
    teacher = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    right = {_grade_id(c): c.source for c in teacher.cells if _is_answer(c)}
    nb = nbformat.read(REFERENCE / name, as_version=4)
    for cell in nb.cells:
        if _is_answer(cell):
            cell.source = edit(right[_grade_id(cell)])
    return json.loads(nbformat.writes(nb))


def _ipython(source: str) -> str:
    name = _object(source)
    return ("%%time\n%matplotlib inline\n%load_ext autoreload\n%autoreload 2\n" + source +
            f"\n%timeit -n1 -r1 1 + 1\nt = %timeit -o -n1 -r1 1 + 1\nfiles = !ls\n!pip list\n{name}?\n??torch.cat\n")


def _outputs(source: str) -> str:
    name = _object(source)
    return ("from IPython.display import Markdown, display\nfrom tqdm import tqdm\nfrom tqdm.auto import tqdm as bar\n"
            "from tqdm.notebook import tqdm as widget\nimport matplotlib.pyplot as plt\n" + source +
            f"\ndisplay({name})\ndisplay(Markdown('**done**'))\nprint(torch.randn(1000, 1000))\n"
            "for _ in tqdm(range(200)):\n    pass\nfor _ in bar(range(20)):\n    pass\nfor _ in widget(range(20)):\n"
            "    pass\nfig, ax = plt.subplots()\nax.plot(range(10))\nax.imshow(torch.rand(8, 8))\nplt.show()\n"
            "fig.savefig('mine.png')\n")


def _habits(source: str) -> str:
    name = _object(source)
    extra = ("\n\n    def extra_repr(self) -> str:\n        \"\"\"Shown by print.\"\"\"\n        return 'mine'\n\n"
             "    @property\n    def n_params(self) -> int:\n        return sum(p.numel() for p in self.parameters())\n"
             if source.startswith("class") else "")
    return ('from __future__ import annotations\n\nimport math, random, time, warnings\nimport numpy as np\n'
            'from typing import Optional\nimport einops\n\ntorch.manual_seed(0)\nnp.random.seed(0)\n'
            'warnings.warn("my own warning")\ntime.sleep(1)\nimport logging\nlogging.basicConfig(level=logging.INFO)\n'
            'logging.info("début ✓")\ngröße = 2  # 计算: a name and a comment outside ASCII\n\n\n'
            'def _double(x: int) -> int:\n    """A helper of mine (naïve)."""\n    return größe * x\n\n\n' +
            source + extra +
            f'\n\n\nif __name__ == "__main__":\n    print({name}, _double(2))\n    torch.manual_seed(42)\n'
            'import pdb\npdb.set_trace()\nbreakpoint()\n')  # left in after debugging: nobody types, they go on


def _crlf_tabs(source: str) -> str:
    return re.sub(r"(?m)^((?:    )+)", lambda m: "\t" * (len(m.group(1)) // 4), source).replace("\n", "\r\n")


def _saved_oddly(nb: dict) -> dict:
    """Sources as one string, the outputs of an earlier run that failed, VS Code's metadata."""
    nb["metadata"] = {"kernelspec": {"display_name": "Python 3.12.1", "language": "python", "name": "python3"},
                      "language_info": {"name": "python", "version": "3.12.1"},
                      "vscode": {"interpreter": {"hash": "ab" * 32}}}
    for cell in nb["cells"]:
        cell["source"] = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        cell["metadata"]["vscode"] = {"languageId": "python"}
        if cell["cell_type"] == "code":
            cell["execution_count"] = 7
            cell["outputs"] = [{"output_type": "error", "ename": "NotImplementedError", "evalue": "",
                                "traceback": ["\x1b[0;31mNotImplementedError\x1b[0m", "Cell In[3], line 1"]}]
    return nb


def _colab(nb: dict) -> dict:
    nb["metadata"] = {"colab": {"provenance": []}, "kernelspec": {"name": "python3", "display_name": "Python 3"},
                      "language_info": {"name": "python"}, "accelerator": "GPU"}
    nb["nbformat_minor"] = 0
    for k, cell in enumerate(nb["cells"]):
        cell.pop("id", None)
        cell["metadata"]["id"] = f"c{k:04x}"
    return nb


def _lab4(ids: str):
    def edit(nb: dict) -> dict:
        nb["metadata"]["kernelspec"] = {"display_name": "python3 (ipykernel)", "language": "python", "name": "python3"}
        nb["nbformat_minor"] = 5
        for cell in nb["cells"]:
            if ids == "missing":
                cell.pop("id", None)
            else:
                cell["id"] = "same-id"
        return nb
    return edit


def _input_before(source: str) -> str:
    return "name = input('your name: ')\n" + source if "patchify" in _object(source) else source


def _input_after(source: str) -> str:
    return source + "\nanswer = input('press enter')\n" if "patchify" not in _object(source) else source


def _mlp_left_as_stub(source: str) -> str:
    if _object(source) != "MLP":
        return source
    return ("class MLP(nn.Module):\n    def __init__(self, dim, hidden_dim):\n        super().__init__()\n"
            "        # YOUR CODE HERE\n        raise NotImplementedError()\n\n    def forward(self, x):\n"
            "        # YOUR CODE HERE\n        raise NotImplementedError()\n")


# student -> (edit of each answer's source, edit of the saved notebook, notebooks)
STUDENTS = {
    "ipython_syntax": (_ipython, None, EVERY),
    "outputs": (_outputs, None, NOTEBOOKS[:1]),
    "habits": (_habits, None, EVERY),
    "crlf_tabs_vscode": (_crlf_tabs, _saved_oddly, NOTEBOOKS[:1]),
    "colab": (lambda s: s, _colab, NOTEBOOKS[:1]),
    "lab4_ids_missing": (lambda s: s, _lab4("missing"), NOTEBOOKS[:1]),
    "lab4_ids_repeated": (lambda s: s, _lab4("repeated"), NOTEBOOKS[:1]),
    "input_left": (lambda s: _input_after(_input_before(s)), None, NOTEBOOKS[:1]),
    "mlp_stub": (_mlp_left_as_stub, None, NOTEBOOKS[1:]),
}
PARTLY_DONE = ("input_left", "mlp_stub")


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    subs = tmp_path_factory.mktemp("honest") / "submissions"
    for student, (edit, saved, names) in STUDENTS.items():
        (subs / student).mkdir(parents=True)
        for name in names:
            nb = _honest(name, edit)
            (subs / student / name).write_text(json.dumps(saved(nb) if saved else nb, indent=1))
    out = subs.parent / "out" / "grades.csv"
    rows = grading.grade(subs, out, reference_dir=REFERENCE, timeout=60, jobs=2, seed=7, verbose=False)
    by: dict = {}
    for r in rows:
        if r["notebook"] in STUDENTS[r["student"]][2]:  # the other notebooks were not handed in
            by.setdefault(r["student"], {})[r["exercise"]] = r
    return by


@pytest.mark.parametrize("student", [s for s in STUDENTS if s not in PARTLY_DONE])
def test_right_answers_get_full_points_whatever_the_notebook_does_around_them(graded, student):
    rows = graded[student]
    assert len(rows) == _exercises(STUDENTS[student][2]), rows
    assert {ex: (r["points"], r["message"]) for ex, r in rows.items() if r["points"] != r["max_points"]} == {}
    assert {ex: r["flags"] for ex, r in rows.items() if r["flags"]} == {}


def test_input_left_in_an_answer_fails_that_cell_at_once_saying_why(graded):
    """In Jupyter input() waits for the student; here nobody types: the cell fails at once with the reason (no
    wait for the time limit), an answer defined before the call keeps its points."""
    rows = graded["input_left"]
    assert rows["patch_embedding"]["passed"] and not rows["patch_embedding"]["flags"]
    failed = rows["patchify"]
    assert not failed["passed"] and not failed["flags"]
    assert "answer cell patchify_answer raised EOFError: input() waits for someone to type, and nobody can while " \
           "the notebook is graded: remove the call from the answer cell" in failed["message"], failed["message"]


def test_ipython_assignments_and_help_lines_are_skipped_where_a_statement_starts():
    """``t = %timeit -o f()``, ``files = !ls``, ``f?`` and ``??torch.cat`` are IPython's, like ``%timeit``; the
    same characters inside an expression or a string stay code."""
    cell = "\n".join(["def f():", "    return 1", "t = %timeit -o f()", "a, b = !echo 1 2", "f?", "??torch.cat",
                      "f.__doc__??", "x = (f()", "     != 2)", "y = '?' if x else '!'", 'z = """', "w = !ls",
                      '"""', ""])
    expected = cell.replace("t = %", "pass  # t = %").replace("a, b = !", "pass  # a, b = !").replace(
        "f?\n", "pass  # f?\n").replace("??torch", "pass  # ??torch").replace("f.__doc__??", "pass  # f.__doc__??")
    assert _without_magics(cell) == expected
    namespace: dict = {}
    exec(compile(_without_magics(cell), "<cell>", "exec"), namespace)
    assert (namespace["x"], namespace["y"], namespace["z"]) == (True, "?", "\nw = !ls\n")


def test_a_finished_answer_over_an_earlier_stub_is_told_where_the_stub_is(graded):
    """The block is written, the MLP it builds is still the stub: the block's row names the MLP's stub."""
    rows = graded["mlp_stub"]
    assert not rows["mlp"]["passed"] and "Replace `raise NotImplementedError()`" in rows["mlp"]["message"]
    block = rows["encoder_block"]
    assert not block["passed"] and not block["flags"]
    assert "raised NotImplementedError in MLP.__init__, which your EncoderBlock calls" in block["message"], \
        block["message"]
