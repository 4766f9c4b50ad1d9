"""The grader: student code runs in a sandboxed child, the verdict is made in the grader (issue 9, point 3).

Every attack of the issue is a student of the ``graded`` class below (one grading run, under a second of
child process each, but for the time limits): their answer cells hold the attack and a wrong (or honest)
answer, and the tests check that the wrong answers fail, the honest ones pass, and nothing outside the
sandbox changed. No IPython kernel runs the answers (plain ``exec`` in the child), so IPython's
``set_custom_exc`` and input transformers do not even exist there. Attacks that only the uid change can
stop (kill every process, write the repository) are in the class only when the tests run as root;
:func:`test_unprivileged_grader_survives_a_killed_server` runs the grader in its not-root mode, where a
student can kill the sandbox server.

The reference is synthetic: two notebooks built from tests/exercise_solutions.py with the nbgrader
metadata ``python -m vit_edu assignments`` writes (answer cells ``<name>_answer``, check cells
``<name>_check`` with points, setup cells tagged "setup"), stubbed into the student copy.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import nbformat
import pytest
import torch

from vit_edu.classroom import assignments, grading
from vit_edu.classroom import isolation, reference, report, sandbox

import exercise_solutions

ROOT = Path(__file__).resolve().parent.parent
ROOTED = sandbox.privileged()
SETUP = "import math\nimport torch\nimport torch.nn.functional as F\nfrom einops import rearrange\nfrom torch import nn"
SOLUTIONS = dict(exercise_solutions.EXERCISES)
OBJECT = {name: re.search(r"^(?:def|class) (\w+)", src, re.M).group(1) for name, src in exercise_solutions.EXERCISES}
# the reference: notebook a (1 point), notebook b (2 + 3 points)
LAYOUT = {"a.ipynb": [("patchify", 1)], "b.ipynb": [("attention", 2), ("mlp", 3)]}
MAX = 6
TIMEOUT, CELL_TIMEOUT, MEMORY_MB = 12, 4, 1024


def _namespaces_work() -> bool:
    """Whether a forked child may unshare mount and IPC namespaces here (root, and a kernel that lets it)."""
    if not ROOTED:
        return False
    pid = os.fork()
    if pid == 0:
        libc = __import__("ctypes").CDLL(None, use_errno=True)
        os._exit(0 if libc.unshare(isolation.CLONE_NEWNS | isolation.CLONE_NEWIPC) == 0 else 1)
    return os.waitpid(pid, 0)[1] == 0


def _cell(source: str, **nbgrader) -> nbformat.NotebookNode:
    cell = nbformat.v4.new_code_cell(source)
    if nbgrader:
        cell.metadata["nbgrader"] = dict(nbgrader, schema_version=3)
    return cell


def teacher(exercises, answers=None) -> nbformat.NotebookNode:
    """A teacher notebook with nbgrader metadata; ``answers`` replaces solutions (name -> source)."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    setup = nbformat.v4.new_code_cell(SETUP)
    setup.metadata["tags"] = ["setup"]
    nb.cells = [nbformat.v4.new_markdown_cell("# Exercises"), setup]
    for number, (name, points) in enumerate(exercises, 1):
        nb.cells += [
            nbformat.v4.new_markdown_cell(f"**Exercise {number} ({points} points): `{OBJECT[name]}`**"),
            _cell((answers or {}).get(name, SOLUTIONS[name]), grade=False, grade_id=f"{name}_answer", locked=False,
                  solution=True),
            _cell(f"from vit_edu.checks import check_{name}\ncheck_{name}({OBJECT[name]})", grade=True,
                  grade_id=f"{name}_check", locked=True, points=points, solution=False),
            _cell(f"print({OBJECT[name]})"),  # a demonstration cell: never run by the grader
        ]
    return nb


def reference_folder(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for name, exercises in LAYOUT.items():
        nbformat.write(assignments.make_student_notebook(teacher(exercises), name), path / name)
    return path


def submission(name: str, answers=None, check_cells=None) -> nbformat.NotebookNode:
    """A student's notebook ``name`` with the solutions, ``answers`` replacing answer cells (exercise -> source)
    and ``check_cells`` replacing check cells (grade_id -> source, None: deleted)."""
    nb = teacher(LAYOUT[name], answers)
    for check_id, source in (check_cells or {}).items():
        index = next(i for i, c in enumerate(nb.cells) if c.metadata.get("nbgrader", {}).get("grade_id") == check_id)
        if source is None:
            del nb.cells[index]
        else:
            nb.cells[index].source = source
    return nb


ZEROS = '''def patchify(images, patch_size):
    b, c, h, w = images.shape
    return torch.zeros(b, (h // patch_size) * (w // patch_size), patch_size * patch_size * c)'''
WRONG_ORDER = '''def patchify(images, patch_size):
    return rearrange(images, "b c (h p1) (w p2) -> b (h w) (p2 p1 c)", p1=patch_size, p2=patch_size)'''
HONEST_A = SOLUTIONS["patchify"]


def _attack(code: str, then: str = ZEROS) -> str:
    return f"try:\n    {code.strip().replace(chr(10), chr(10) + '    ')}\nexcept BaseException as _e:\n    pass\n{then}"


MONKEYPATCH = '''import vit_edu.checks as c, vit_edu.classroom.engine as e
from vit_edu.checks import Verdict
for n in list(c.CHECKS):
    setattr(c, "check_" + n, lambda *a, **k: print("✓ check passed (5 cases)"))
c.probe = e.probe = lambda *a, **k: {"format": 1, "cases": []}
c.judge = e.judge = lambda *a, **k: Verdict(True, "✓ passed", 5)
c.CHECKS.clear()'''
IPYTHON = '''ip = get_ipython()
ip.set_custom_exc((BaseException,), lambda *a, **k: print("✓ check_patchify passed (5 cases)"))
ip.input_transformers_cleanup.append(lambda lines: ["print('✓ check_patchify passed (5 cases)')"])'''
ALLCLOSE = '''torch.allclose = lambda *a, **k: True
torch.equal = lambda *a, **k: True
torch.isclose = lambda a, b, *r, **k: torch.ones_like(a, dtype=torch.bool)
torch.Tensor.__eq__ = lambda self, other: True
import torch.testing
torch.testing.assert_close = lambda *a, **k: None'''
OUTPUT = '''for _ in range(3000):
    print("x" * 10_000)
import sys
sys.stderr.write("y" * 5_000_000)'''
BIG_WRITE = '''import os
while True:
    os.write(1, b"x" * 2**20)'''
LOOP = '''while True:
    try:
        while True:
            pass
    except BaseException:
        pass'''
SLEEP = "import time\ntime.sleep(1000)"
MEMORY = "big = torch.ones(2**30)  # 4 GB"
PACKAGE_ANSWER = "import vit_edu.patch_embed\npatchify = vit_edu.patch_embed.patchify"
SUBCLASS_ANSWER = "import vit_edu.block\nclass MLP(vit_edu.block.Mlp):\n    pass"
TABLE_ANSWER = ("from vit_edu.checks import CHECKS\n"  # the check's own right answer, taken from its table
                "def attention(q, k, v):\n    return CHECKS['attention'].reference(None, q, k, v)")
FORGED_PROBE = '''import vit_edu.classroom.engine as e
_real = e._probe_case
def _forged(ex, obj, case, index, seed):
    return _real(ex, lambda *a: ex.reference(None, *a), case, index, seed)
e._probe_case = _forged'''
WRAPPED = '''import vit_edu.patch_embed as pe
_original = pe.patchify
pe.patchify = lambda *a, **k: _original(*a, **k)'''


def _peek(ref: Path) -> str:
    """Read the reference and another student's folder (flagged whether or not the sandbox shows them)."""
    return f'''import os
for _p in [{str(ref / "a.ipynb")!r}, "/tmp/vit_edu_left_by_another.txt"]:
    try:
        open(_p).read()
    except OSError:
        pass
try:
    os.listdir(os.path.dirname(os.getcwd()))
except OSError:
    pass'''


JIT_ATTENTION = '''@torch.jit.script
def attention(q, k, v):
    weights = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(dim=-1)
    return weights @ v, weights'''
# an answer cell that forges its record from the child's frames (as the outside tester did) and defines no answer
FORGE_RECORD = '''import sys, importlib
_f = sys._getframe()
while _f is not None and _f.f_code.co_name != "_run":
    _f = _f.f_back
_L = _f.f_locals
for _step in _L["job"]["steps"]:
    if _step["kind"] == "check":
        _pkg = __import__("vit_edu.checks", fromlist=["CHECKS"]).CHECKS[_step["check"]].package[0]
        _mod, _, _attr = _pkg.rpartition(".")
        _L["record"]["exercises"][_step["name"]] = _L["probe"](_step["check"], getattr(importlib.import_module(_mod),
                                                                                      _attr), int(_L["job"]["seed"]))'''


def _cpu_share_probe(base: str, share: int, weight: int) -> str:
    """An honest patchify that raises instead unless the notebook, and a process it forks, sit in one cpu cgroup
    of the grader's (``vit_edu_...``) whose weight is the one every notebook gets."""
    return f'''import os
def _cpu_cgroup():
    for line in open("/proc/self/cgroup"):
        _, controllers, path = line.rstrip("\\n").split(":", 2)
        if "cpu" in controllers.split(",") or controllers == "":
            return path
mine = _cpu_cgroup()
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.setsid()  # a session of its own: outside a cpu cgroup, an autogroup (a CPU share) of its own
    os.write(w, (_cpu_cgroup() or "").encode()); os._exit(0)
os.waitpid(pid, 0)
child = os.read(r, 4096).decode()
folder = {base!r} + mine
value = [open(os.path.join(folder, f)).read().strip() for f in ("cpu.shares", "cpu.weight")
         if os.path.exists(os.path.join(folder, f))]
{HONEST_A}
if "vit_edu_" not in mine or child != mine or value not in (["{share}"], ["{weight}"]):
    def patchify(images, patch_size):
        raise RuntimeError(f"cpu cgroup {{mine!r}}, child {{child!r}}, weight {{value}}")
'''


def _writes_outside(drop: Path) -> str:
    """An honest patchify that raises instead if it could write into ``drop`` (a world-writable folder outside
    its own), or could not write where a notebook may: its folder, HOME, the temporary folders."""
    return f'''import os, tempfile
wrote = []
for path in [{str(drop / "fill.bin")!r}, {str(drop / "sub")!r}]:
    try:
        if path.endswith(".bin"):
            with open(path, "wb") as f:
                f.write(b"x" * 2**20)
        else:
            os.mkdir(path)
        wrote.append(path)
    except OSError:
        pass
for folder in (".", os.environ["HOME"], tempfile.gettempdir(), "/tmp", "/var/tmp", "/dev/shm"):
    with open(os.path.join(folder, "mine.txt"), "w") as f:
        f.write("mine")
with open("/dev/null", "w") as f:
    f.write("nothing")
{HONEST_A}
if wrote:
    def patchify(images, patch_size):
        raise RuntimeError("wrote outside its folder: " + ", ".join(wrote))
'''


def _world_writable_drop() -> "Path | None":
    """A fresh world-writable folder (mode 1777, like /var/crash) outside every folder a notebook gets privately
    or has covered, or None where none can be made (not root)."""
    if not ROOTED:
        return None
    for parent in ("/var/crash", "/srv", "/opt", "/var/lib", "/var"):
        if os.path.isdir(parent) and os.stat(parent).st_mode & 0o001 and os.access(parent, os.W_OK):
            drop = Path(tempfile.mkdtemp(prefix="vit_edu_test_drop_", dir=parent))
            os.chmod(drop, 0o1777)
            return drop
    return None


DELETE_SCRATCH = '''import os, shutil
for f in os.listdir("."):
    (shutil.rmtree if os.path.isdir(f) else os.remove)(f)'''


def _canary(repo: Path) -> str:
    """An honest patchify that raises instead when the sandbox is not what it should be (the message lists why)."""
    return f'''import os, resource
bad = []
if "VIT_EDU_TEST_SECRET" in os.environ:
    bad.append("the grader's environment leaked")
if os.environ.get("VIT_EDU_FIGURES") != os.getcwd() or os.environ.get("HOME") != os.getcwd():
    bad.append("VIT_EDU_FIGURES/HOME not the scratch folder")
if oct(os.stat(".").st_mode & 0o777) != "0o700" or not os.path.exists("data.txt"):
    bad.append("the scratch folder is not a private copy of the student's folder")
if torch.get_num_threads() != 1:
    bad.append("more than one thread")
if resource.getrlimit(resource.RLIMIT_CPU)[0] != {TIMEOUT + 2} or resource.getrlimit(resource.RLIMIT_FSIZE)[0] <= 0:
    bad.append("CPU or file-size limit missing")
if {ROOTED}:
    if os.getuid() < {isolation.UID_BASE} or os.getgid() != os.getuid() or os.getgroups():
        bad.append("still root or in root's groups")
    try:
        os.kill(os.getppid(), 0)
        bad.append("can signal the sandbox server")
    except PermissionError:
        pass
    try:
        open({str(repo / "vit_edu" / "__init__.py")!r}, "a").close()
        bad.append("can write the package")
    except OSError:
        pass
{HONEST_A}
if bad:
    def patchify(images, patch_size):
        raise RuntimeError("sandbox broken: " + "; ".join(bad))
'''


def _root_attacks(victim_nb: Path, repo: Path) -> dict:
    kill = '''import os, signal
os.kill(os.getppid(), signal.SIGKILL)
for pid in os.listdir("/proc"):
    if pid.isdigit() and int(pid) != os.getpid():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except OSError:
            pass
os.kill(-1, signal.SIGKILL)'''
    write = f'''import os, glob
targets = [{str(repo / "vit_edu" / "checks.py")!r}, {str(repo / "figures" / "pwned_by_grading_test.png")!r},
           {str(repo / "vit_edu" / "pwned_by_grading_test.py")!r}, {str(victim_nb)!r}]
targets += [d + "/pwned.ipynb" for d in glob.glob(os.path.dirname(os.getcwd()) + "/*")]
targets += [os.path.dirname(os.getcwd()) + f"/run{{i}}/pwned.ipynb" for i in range(100)]
for t in targets:
    try:
        with open(t, "a") as f:
            f.write("# pwned\\n")
    except OSError:
        pass
for t in [{str(victim_nb)!r}, {str(victim_nb.parent)!r}]:
    try:
        os.remove(t)
    except OSError:
        pass
try:
    os.setuid(0)
except OSError:
    pass'''
    return {"wes_kill": {"a.ipynb": submission("a.ipynb", {"patchify": _attack(kill, HONEST_A)})},
            "xia_write": {"a.ipynb": submission("a.ipynb", {"patchify": _attack(write)})}}


def _files_state(repo: Path, victim: Path) -> dict:
    watched = [repo / "vit_edu" / "checks.py", victim]
    return {"hashes": {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in watched},
            "figures": sorted(p.name for p in (repo / "figures").glob("*")) if (repo / "figures").is_dir() else [],
            "package": sorted(p.name for p in (repo / "vit_edu").glob("*"))}


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("grading")
    ref = reference_folder(tmp / "reference")
    subs = tmp / "submissions"
    honest = {"a.ipynb": submission("a.ipynb"), "b.ipynb": submission("b.ipynb")}
    students = {
        "ada_honest": honest,
        "bob_untouched": {n: nbformat.read(ref / n, as_version=4) for n in LAYOUT},
        "cy_wrong": {"a.ipynb": submission("a.ipynb", {"patchify": WRONG_ORDER}), "b.ipynb": submission("b.ipynb")},
        "dan_monkeypatch": {"a.ipynb": submission("a.ipynb", {"patchify": _attack(MONKEYPATCH)})},
        "eve_check_cell": {"a.ipynb": submission("a.ipynb", {"patchify": ZEROS}, {
            "patchify_check": "if False:\n    check_patchify(patchify)\nprint('✓ check_patchify passed (5 cases)')"})},
        "fay_no_check_cells": {"a.ipynb": submission("a.ipynb", check_cells={"patchify_check": None}),
                               "b.ipynb": submission("b.ipynb", check_cells={"attention_check": None,
                                                                             "mlp_check": None})},
        "gus_ipython": {"a.ipynb": submission("a.ipynb", {"patchify": _attack(IPYTHON)})},
        "hal_allclose": {"a.ipynb": submission("a.ipynb", {"patchify": _attack(ALLCLOSE)})},
        "jon_output": {"a.ipynb": submission("a.ipynb", {"patchify": OUTPUT + "\n" + HONEST_A})},
        "kim_big_write": {"a.ipynb": submission("a.ipynb"),
                          "b.ipynb": submission("b.ipynb", {"attention": SOLUTIONS["attention"] + "\n" + BIG_WRITE})},
        "lea_loop": {"a.ipynb": submission("a.ipynb", {"patchify": HONEST_A + "\n" + LOOP}),
                     "b.ipynb": submission("b.ipynb")},
        "max_sleep": {"b.ipynb": submission("b.ipynb", {"attention": SLEEP + "\n" + SOLUTIONS["attention"]})},
        "ned_memory": {"a.ipynb": submission("a.ipynb", {"patchify": MEMORY + "\n" + HONEST_A}),
                       "b.ipynb": submission("b.ipynb")},
        "oli_sys_exit": {"b.ipynb": submission("b.ipynb", {
            "attention": SOLUTIONS["attention"] + "\nimport sys\nsys.exit(0)"})},
        "pat_delete": {"a.ipynb": submission("a.ipynb", {"patchify": DELETE_SCRATCH + "\n" + HONEST_A})},
        "ren_renamed": {"a copy.ipynb": submission("a.ipynb"), "b-final.ipynb": submission("b.ipynb")},
        "sam_duplicated": {"a.ipynb": submission("a.ipynb"), "a (1).ipynb": submission("a.ipynb"),
                           "b.ipynb": submission("b.ipynb"), "scratch.ipynb": nbformat.v4.new_notebook()},
        "tom_missing": {"a.ipynb": submission("a.ipynb")},
        "vic_broken": {"a.ipynb": "{ this is not json", "b.ipynb": submission("b.ipynb")},
    }
    uma = submission("a.ipynb")
    answer = next(c for c in uma.cells if c.metadata.get("nbgrader", {}).get("solution"))
    second = nbformat.v4.new_code_cell(ZEROS)
    second.metadata["nbgrader"] = dict(answer.metadata["nbgrader"])
    uma.cells.insert(uma.cells.index(answer) + 1, second)
    students["uma_duplicate_cell"] = {"a.ipynb": uma}
    victim = subs / "ada_honest" / "a.ipynb"
    if ROOTED:
        students.update(_root_attacks(victim, ROOT))
    students["kai_canary"] = {"a.ipynb": submission("a.ipynb", {"patchify": _canary(ROOT)})}
    students["abe_package"] = {"a.ipynb": submission("a.ipynb", {"patchify": PACKAGE_ANSWER}),
                               "b.ipynb": submission("b.ipynb", {"mlp": SUBCLASS_ANSWER, "attention": TABLE_ANSWER})}
    students["bea_forged_probe"] = {"a.ipynb": submission("a.ipynb", {"patchify": _attack(FORGED_PROBE)})}
    students["cal_wrapped"] = {"a.ipynb": submission("a.ipynb", {"patchify": _attack(WRAPPED)})}
    students["dee_peeks"] = {"a.ipynb": submission("a.ipynb", {"patchify": _peek(ref) + "\n" + HONEST_A})}
    students["fio_jit"] = {"b.ipynb": submission("b.ipynb", {"attention": JIT_ATTENTION})}
    students["ivy_forged_record"] = {"a.ipynb": submission("a.ipynb", {"patchify": FORGE_RECORD}),
                                     "b.ipynb": submission("b.ipynb", {"attention": FORGE_RECORD, "mlp": "# nothing"})}
    cpu_root = isolation._cpu_cgroup_root() if ROOTED else None
    if cpu_root is not None:
        students["gil_cpu_share"] = {"a.ipynb": submission("a.ipynb", {
            "patchify": _cpu_share_probe(cpu_root, isolation.CPU_SHARES, isolation.CPU_WEIGHT)})}
    drop = _world_writable_drop() if _namespaces_work() else None
    if drop is not None:
        students["hux_writes_outside"] = {"a.ipynb": submission("a.ipynb", {"patchify": _writes_outside(drop)})}
    for student, notebooks in students.items():
        (subs / student).mkdir(parents=True)
        for name, nb in notebooks.items():
            if isinstance(nb, str):
                (subs / student / name).write_text(nb)
            else:
                nbformat.write(nb, subs / student / name)
    (subs / "kai_canary" / "data.txt").write_text("a data file next to the notebook")
    before = _files_state(ROOT, victim)
    made = []  # this run's scratch folders (not another grader's running beside the tests in the same /tmp)
    sandbox_init = sandbox.Sandbox.__init__

    def recording(self, *args, **kwargs):
        sandbox_init(self, *args, **kwargs)
        made.append(self.workdir)

    out = tmp / "out" / "grades.csv"
    cgroups_before = set(os.listdir(cpu_root)) if cpu_root else set()
    try:
        with pytest.MonkeyPatch.context() as env:
            env.setenv("VIT_EDU_TEST_SECRET", "the teacher's token")
            env.setattr(sandbox.Sandbox, "__init__", recording)
            rows = grading.grade(subs, out, timeout=TIMEOUT, reference_dir=ref, cell_timeout=CELL_TIMEOUT, jobs=2,
                                 memory_mb=MEMORY_MB, max_output_kb=64, seed=1234, verbose=False)
        dropped = sorted(p.name for p in drop.iterdir()) if drop is not None else None
    finally:
        if drop is not None:
            shutil.rmtree(drop, ignore_errors=True)
    cpu_cgroups_left = sorted(d for d in set(os.listdir(cpu_root)) - cgroups_before if d.startswith("vit_edu_")
                              and not (Path(cpu_root) / d / "cgroup.procs").read_text().strip()) if cpu_root else []
    after = _files_state(ROOT, victim)
    assert made, "the grader made no scratch folder"
    after["scratch left"] = sorted(str(p) for p in made if p.exists())
    for leftover in (ROOT / "vit_edu" / "pwned_by_grading_test.py", ROOT / "figures" / "pwned_by_grading_test.png"):
        leftover.unlink(missing_ok=True)  # only if the sandbox failed; the test below then fails
    before["scratch left"] = []
    return {"rows": rows, "by": _by_student(rows), "out": out, "ref": ref, "subs": subs, "before": before,
            "after": after, "dropped": dropped, "cpu_cgroups_left": cpu_cgroups_left}


def _by_student(rows):
    out: dict = {}
    for r in rows:
        out.setdefault(r["student"], {})[(r["notebook"], r["exercise"])] = r
    return out


def _total(graded, student):
    return sum(r["points"] for r in graded["by"][student].values())


def _message(graded, student, exercise):
    return next(r["message"] for (nb, ex), r in graded["by"][student].items() if ex == exercise)


def _passed(graded, student):
    return sorted(ex for (nb, ex), r in graded["by"][student].items() if r["passed"])


# ------------------------------------------------------------------------------------ honest, wrong, untouched
def test_honest_student_gets_full_marks(graded):
    ada = graded["by"]["ada_honest"]
    assert all(r["passed"] for r in ada.values()), {k: r["message"] for k, r in ada.items() if not r["passed"]}
    assert _total(graded, "ada_honest") == MAX and len(ada) == 3
    assert not any(r["flags"] for r in ada.values()), {k: r["flags"] for k, r in ada.items()}
    assert not any(r["flags"] for r in graded["by"]["kai_canary"].values())  # it opens the package, read-only


def test_untouched_copy_scores_zero(graded):
    bob = graded["by"]["bob_untouched"]
    assert _total(graded, "bob_untouched") == 0 and len(bob) == 3
    assert all("not implemented" in r["message"] for r in bob.values()), bob


def test_one_wrong_answer_costs_that_exercise_only(graded):
    assert _passed(graded, "cy_wrong") == ["attention", "mlp"]
    assert _message(graded, "cy_wrong", "patchify").startswith("check_patchify: ")


# ------------------------------------------------------------------------------------ forged passes
@pytest.mark.parametrize("student", ["dan_monkeypatch", "eve_check_cell", "gus_ipython", "hal_allclose"])
def test_forged_pass_scores_nothing(graded, student):
    """Monkeypatching vit_edu.checks (check_*, probe, judge, CHECKS) or torch.allclose & co. in an answer cell,
    an edited check cell, IPython's set_custom_exc / input transformers: the answer (zeros) still fails."""
    assert _passed(graded, student) == [], graded["by"][student]
    message = _message(graded, student, "patchify")
    if student in ("dan_monkeypatch", "hal_allclose"):  # the grader's tables or torch replaced: not probed
        assert message.startswith("patchify: not graded: the answer cells replaced "), message
        assert "replaced code the checks run" in graded["by"][student][("a.ipynb", "patchify")]["flags"]
    else:  # the zeros were judged
        assert message.startswith("check_patchify: "), message


def test_answers_that_reach_vit_edu_or_other_files_are_flagged(graded):
    """vit_edu's own implementation (called, or subclassed) passes but is flagged for the teacher; a probe or a
    package function replaced from an answer cell is not graded; reading outside the folder is flagged."""
    abe = graded["by"]["abe_package"]
    assert all(r["passed"] for r in abe.values())
    assert "ran vit_edu's own implementation of this exercise: vit_edu.patch_embed.patchify" in \
        abe[("a.ipynb", "patchify")]["flags"]
    assert "vit_edu.block.Mlp.forward" in abe[("b.ipynb", "mlp")]["flags"]
    assert "ran vit_edu's own implementation of this exercise: vit_edu.classroom.exercises_build._attention_reference" in \
        abe[("b.ipynb", "attention")]["flags"]  # the grader's own right answer, called from the answer
    for student, replaced in (("bea_forged_probe", "vit_edu.classroom.engine._probe_case"),
                              ("cal_wrapped", "vit_edu.patch_embed.patchify")):
        row = graded["by"][student][("a.ipynb", "patchify")]
        assert row["points"] == 0 and row["message"].startswith(f"patchify: not graded: the answer cells replaced "
                                                                f"{replaced}"), row
        assert f"replaced code the checks run: {replaced}" in row["flags"], row
    dee = graded["by"]["dee_peeks"][("a.ipynb", "patchify")]
    assert dee["passed"], dee
    for path in (graded["ref"] / "a.ipynb", "/tmp/vit_edu_left_by_another.txt"):
        assert f"opened {path}" in dee["flags"], dee["flags"]
    assert "listed " in dee["flags"]
    with open(grading.summary_path(graded["out"]), newline="") as f:
        summary = {r["student"]: r for r in csv.DictReader(f)}
    assert "a.ipynb: touched files outside its folder" in summary["dee_peeks"]["flags"]
    assert summary["ada_honest"]["flags"] == ""
    table = grading.format_table(graded["rows"], sorted(graded["by"]), grading.load_reference(graded["ref"]))
    marked = {line.split()[0] for line in table.splitlines() if line.endswith("  !")}
    assert {"abe_package", "bea_forged_probe", "cal_wrapped", "dee_peeks"} <= marked and "ada_honest" not in marked
    assert "flagged for you to look at" in table


def test_check_cells_are_taken_from_the_reference(graded):
    """A submission without its check cells is graded like one with them."""
    assert _total(graded, "fay_no_check_cells") == MAX


# ------------------------------------------------------------------------------------ limits
def test_long_output_is_dropped_not_fatal(graded):
    assert _total(graded, "jon_output") == 1


def test_file_size_limit_kills_only_that_notebook(graded):
    kim = graded["by"]["kim_big_write"]
    assert kim[("a.ipynb", "patchify")]["passed"]
    for ex in ("attention", "mlp"):
        assert kim[("b.ipynb", ex)]["message"].startswith("not graded: output too large"), kim[("b.ipynb", ex)]


def test_endless_loop_hits_the_time_limit(graded):
    lea = graded["by"]["lea_loop"]
    message = lea[("a.ipynb", "patchify")]["message"]  # on a busy machine, with how long it waited for a CPU
    assert re.fullmatch(rf"not graded: time limit {TIMEOUT} s(; it was ready to run but waited [\d.]+ s of it for a "
                        r"free CPU: .*--jobs 1 may let it finish)? \(during answer cell patchify_answer\)", message), message
    assert lea[("b.ipynb", "attention")]["passed"] and lea[("b.ipynb", "mlp")]["passed"]


def test_cell_time_limit_fails_that_cell_only(graded):
    message = _message(graded, "max_sleep", "attention")
    assert message == f"answer cell attention_answer raised CellTimeLimit: over the time limit of {CELL_TIMEOUT} s per cell"
    assert graded["by"]["max_sleep"][("b.ipynb", "mlp")]["passed"]  # the next cell runs


def test_memory_limit(graded):
    ned = graded["by"]["ned_memory"]
    message = ned[("a.ipynb", "patchify")]["message"]
    assert message.startswith("answer cell patchify_answer raised") and f"(memory limit {MEMORY_MB} MB)" in message
    assert ned[("b.ipynb", "attention")]["passed"] and ned[("b.ipynb", "mlp")]["passed"]


def test_sys_exit_stops_the_notebook(graded):
    oli = graded["by"]["oli_sys_exit"]
    assert oli[("b.ipynb", "attention")]["passed"]  # defined before the exit
    assert oli[("b.ipynb", "mlp")]["message"] == (
        "not reached: answer cell attention_answer raised SystemExit (the notebook stops there)")


def test_deleting_the_scratch_copy_costs_nothing(graded):
    assert _total(graded, "pat_delete") == 1


# ------------------------------------------------------------------------------------ totals
def test_renamed_duplicated_extra_and_missing_notebooks(graded):
    assert _total(graded, "ren_renamed") == MAX
    assert _total(graded, "sam_duplicated") == MAX
    notes = {r["notebook"]: r["message"] for r in graded["by"]["sam_duplicated"].values() if r["exercise"] == "(notebook)"}
    assert notes == {"a (1).ipynb": "duplicate of a.ipynb (same answer cells): not graded",
                     "scratch.ipynb": "extra notebook: not in the reference, not graded"}
    assert all(r["max_points"] == 0 for r in graded["by"]["sam_duplicated"].values() if r["exercise"] == "(notebook)")
    assert _total(graded, "tom_missing") == 1
    assert _message(graded, "tom_missing", "attention") == "notebook missing from the submission"
    vic = graded["by"]["vic_broken"]
    assert vic[("a.ipynb", "patchify")]["message"].startswith("could not read a.ipynb: not a notebook (invalid JSON")
    assert _total(graded, "vic_broken") == 5


def test_duplicated_answer_cell_runs_every_copy_in_order(graded):
    """As in Jupyter: the later, wrong definition (ZEROS, below the honest one) wins."""
    assert _total(graded, "uma_duplicate_cell") == 0
    assert "2 cells carry grade_id patchify_answer" in _message(graded, "uma_duplicate_cell", "patchify")


def test_csv_files_and_maximum(graded):
    out = graded["out"]
    with open(out, newline="") as f:
        written = list(csv.DictReader(f))
    assert list(written[0]) == grading.COLUMNS and len(written) == len(graded["rows"])
    with open(grading.summary_path(out), newline="") as f:
        summary = {r["student"]: r for r in csv.DictReader(f)}
    assert set(summary) == set(graded["by"])
    assert {r["max"] for r in summary.values()} == {str(MAX)}  # from the reference, whatever was handed in
    assert summary["ada_honest"]["total"] == "6" and summary["bob_untouched"]["total"] == "0"
    assert "duplicate of a.ipynb" in summary["sam_duplicated"]["notes"]
    per_student = grading.students_dir(out)
    assert sorted(p.stem for p in per_student.glob("*.csv")) == sorted(graded["by"])


# ------------------------------------------------------------------------------------ nothing outside changes
def test_sandbox_is_locked_down(graded):
    """The canary's answer is right only if, inside the sandbox: the grader's environment is gone, the working
    folder is a private copy (mode 700) of the student's folder with HOME and VIT_EDU_FIGURES pointing there,
    one torch thread, CPU and file-size limits set; as root also: another uid, no groups, the server cannot
    be signalled, the package cannot be written. The scratch copies are removed afterwards."""
    assert graded["by"]["kai_canary"][("a.ipynb", "patchify")]["passed"], graded["by"]["kai_canary"]
    assert graded["after"]["scratch left"] == []



def test_an_answer_that_needs_its_own_source_is_graded_as_in_jupyter(graded):
    """@torch.jit.script (and inspect.getsource, tracebacks) read a cell's source from linecache, where IPython
    puts every cell: the grader does too, so a scripted answer passes as it does in Jupyter."""
    row = graded["by"]["fio_jit"][("b.ipynb", "attention")]
    assert row["passed"] and not row["flags"], row


@pytest.mark.skipif(not ROOTED or isolation._cpu_cgroup_root() is None,
                    reason="per-notebook cpu cgroups need root and a writable cpu controller")
def test_every_notebook_gets_the_same_cpu_share_however_many_processes_it_starts(graded):
    """The notebook and a process it forks into a session of its own sit in one cpu cgroup of the grader's with the
    default weight (cpu.shares 1024 / cpu.weight 100): 30 busy processes of one student weigh what one busy
    process does, so they cannot use up another notebook's time limit. The cgroup is gone after the notebook."""
    row = graded["by"]["gil_cpu_share"][("a.ipynb", "patchify")]
    assert row["passed"], row["message"]
    assert graded["cpu_cgroups_left"] == []


@pytest.mark.skipif(not _namespaces_work(), reason="a read-only view of the file system needs mount namespaces")
def test_a_notebook_cannot_write_outside_its_folder_and_private_temporary_folders(graded):
    """Everything but the notebook's folder and its private /tmp, /var/tmp, /dev/shm is read-only in its mount
    namespace: a world-writable folder of the host (/var/crash, a 1777 folder) stays empty, while its folder,
    HOME, the temporary folders and /dev/null still take writes. The attempt is flagged as usual."""
    row = graded["by"]["hux_writes_outside"][("a.ipynb", "patchify")]
    assert row["passed"], row["message"]
    assert graded["dropped"] == []
    assert "touched files outside its folder" in row["flags"], row


def test_a_record_forged_from_an_answer_cell_is_flagged_and_honest_records_never_are(graded):
    """An answer cell can reach the child's record (it shares the process) and fill in observations of the
    package's own implementation for answers it never defined; the grader cannot stop that, but the careless
    forgery does not fit the run (observations for a check that raised NameError) and is flagged for the teacher.
    No other student of the class, killed at a limit or not, trips the wire."""
    forged = graded["by"]["ivy_forged_record"]
    for key in (("a.ipynb", "patchify"), ("b.ipynb", "attention"), ("b.ipynb", "mlp")):
        assert "the record does not fit the run (observations for" in forged[key]["flags"], forged[key]
    others = [(student, r["flags"]) for student, rows in graded["by"].items() if student != "ivy_forged_record"
              for r in rows.values() if "the record does not fit" in r["flags"]]
    assert others == []


def _step(kind: str, label: str, name: str = "") -> dict:
    return {"kind": kind, "label": label, **({"name": name} if name else {})}


def test_record_trip_wires():
    """Each trip-wire of grading.record_inconsistencies against the record an honest run writes at each step."""
    steps = [_step("setup", "setup cell 1"), _step("answer", "answer cell patchify_answer"),
             _step("check", "check cell patchify_check", "patchify"), _step("answer", "answer cell mlp_answer"),
             _step("check", "check cell mlp_check", "mlp")]

    def honest(seq: int) -> dict:  # what the child writes at the start of step seq (seq = len + 1: at the end)
        done = steps[:seq - 1]
        return {"seq": seq, "running": steps[seq - 1]["label"] if seq <= len(steps) else None,
                "cells": [{"label": s["label"], "error": None, "ran": True} for s in done if s["kind"] != "check"],
                "exercises": {s["name"]: {} for s in done if s["kind"] == "check" and s["name"] == "patchify"},
                "missing": {s["name"]: "NameError" for s in done if s["kind"] == "check" and s["name"] == "mlp"},
                "outside": ["opened /etc/x"] * (seq > 2), "package": {}, "replaced": [], "unwatched": []}

    for seq in range(1, len(steps) + 2):
        assert grading.record_inconsistencies(honest(seq), honest(seq - 1) if seq > 1 else None, steps) == [], seq
    end, before = honest(len(steps) + 1), honest(len(steps))
    forged = dict(end, exercises={"patchify": {}, "mlp": {}})
    assert "observations for mlp although its check failed" in grading.record_inconsistencies(forged, before, steps)
    early = dict(honest(4), exercises={"patchify": {}, "mlp": {}})
    assert any("results for mlp before its check ran" in w for w in
               grading.record_inconsistencies(early, honest(3), steps))
    for edit, words in (({"seq": 99}, "record number 99"), ({"running": "x"}, "says x was running"),
                        ({"cells": []}, "list of cells"), ({"outside": []}, "lost outside")):
        odd = grading.record_inconsistencies(dict(end, **edit), before, steps)
        assert any(words in w for w in odd), (edit, odd)
    assert any("not one step apart" in w for w in grading.record_inconsistencies(end, honest(2), steps))


def test_a_notebook_kept_from_the_cpu_says_so_at_its_time_limit(tmp_path):
    """A notebook killed at its time limit after waiting for a CPU for a good part of it (the scheduler's run-queue
    wait of its main thread, read before the kill) says so, instead of the limit alone blaming its cell."""
    assert sandbox._waited_s(os.getpid()) is not None or not os.path.exists("/proc/self/schedstat")
    box = type("Box", (), {"limits": sandbox.Limits(timeout_s=10), "uids": None})()
    reasons = []
    for waited in (0.5, 8.0):
        results = tmp_path / f"run{waited}.out"
        results.mkdir()
        run = sandbox._Running("k", tmp_path / "run", results, None, 0.0, 1.0, [], timed_out=True, waited_s=waited)
        reasons.append(sandbox.Sandbox._finish(box, run, -9, 0).outcome.reason)
    assert reasons[0] == "time limit 10 s"
    assert reasons[1].startswith("time limit 10 s; it was ready to run but waited 8.0 s of it for a free CPU"), reasons


@pytest.mark.skipif(not ROOTED, reason="the uid change needs root (run the grader as root in a container)")
def test_student_cannot_kill_or_write_outside_the_sandbox(graded):
    """os.kill(getppid()) / kill(-1) / killing every pid, writing vit_edu/checks.py, figures/, the package,
    another student's notebook and the other scratch folders, setuid(0): all refused."""
    assert graded["before"] == graded["after"]
    assert _total(graded, "wes_kill") == 1  # its own run went on; so did everybody else's
    assert _passed(graded, "xia_write") == []
    assert _total(graded, "ada_honest") == MAX


def test_unprivileged_grader_survives_a_killed_server(tmp_path, monkeypatch):
    """Without root, a student can kill the sandbox server: it is restarted, the notebook is retried alone,
    and the grades of the others are unaffected."""
    monkeypatch.setattr(sandbox, "privileged", lambda: False)
    ref = reference_folder(tmp_path / "reference")
    kill = "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n" + ZEROS
    for student, nb in {"ada": submission("a.ipynb"), "zed": submission("a.ipynb", {"patchify": kill})}.items():
        (tmp_path / "subs" / student).mkdir(parents=True)
        nbformat.write(nb, tmp_path / "subs" / student / "a.ipynb")
    rows = grading.grade(tmp_path / "subs", tmp_path / "g.csv", timeout=TIMEOUT, reference_dir=ref, jobs=2,
                         seed=5, verbose=False)
    by = {(r["student"], r["exercise"]): r for r in rows}
    assert by[("ada", "patchify")]["passed"]
    zed = by[("zed", "patchify")]
    assert not zed["passed"] and zed["message"].startswith(  # judged on what it did, or killed with the server
        ("check_patchify: ", "not graded: the sandbox server was killed while this notebook ran")), zed


# ------------------------------------------------------------------------------------ untrusted records
def _zip_of(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def test_observations_are_loaded_as_data_only(tmp_path):
    assert sandbox.load_observations(_zip_of({"x": torch.ones(2), "s": "a", "n": [1, 2.5, None]}))["s"] == "a"

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with pytest.raises(ValueError, match="unreadable"):
        sandbox.load_observations(_zip_of({"x": Evil()}))
    with pytest.raises(ValueError, match="a tensor of 1000000000000 numbers"):
        sandbox.load_observations(_zip_of({"x": torch.zeros(1).expand(10**12)}))
    compressed = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(_zip_of({"x": 1}))) as src, zipfile.ZipFile(compressed, "w") as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info), compress_type=zipfile.ZIP_DEFLATED)
    with pytest.raises(ValueError, match="compressed"):
        sandbox.load_observations(compressed.getvalue())
    with pytest.raises(ValueError, match="not a torch.save file"):
        sandbox.load_observations(b"garbage")
    (tmp_path / "big").write_bytes(b"x" * 100)
    (tmp_path / "link").symlink_to(tmp_path / "big")
    os.mkfifo(tmp_path / "fifo")
    assert sandbox.read_untrusted(tmp_path / "big", 10)[0] is None
    assert sandbox.read_untrusted(tmp_path / "link", 1000)[0] is None
    assert sandbox.read_untrusted(tmp_path / "fifo", 1000) == (None, "not a regular file")
    assert sandbox.read_untrusted(tmp_path / "big", 1000)[0] == b"x" * 100


def test_judge_rows_from_a_garbled_record():
    """A record of the wrong types is a failure with a reason, never a crash."""
    ref = reference.RefNotebook("a.ipynb", [], [reference.RefExercise("a.ipynb", "patchify", "patchify", 1, "patchify",
                                                                  ("patchify_answer",))], ["patchify_answer"], [])
    outcome = sandbox.Outcome("k", 0, None, 0.1)
    for record in ({"exercises": {"patchify": "not observations"}}, {"exercises": []}, ["x"], None,
                   {"cells": [{"label": ["unhashable"], "error": 1}, 3], "missing": {"patchify": {"x": 1}},
                    "stopped": ["x"], "running": 5}):
        result = sandbox.Result("k", outcome, record, "" if record is not None else "missing", [])
        (row,) = grading.judge_notebook("s", ref, {"patchify_answer": ["x"]}, result, 0, sandbox.Limits())
        assert not row["passed"] and row["message"], row


def test_a_notebook_that_ends_itself_or_closes_its_output_says_where_and_why(tmp_path):
    """os._exit(0) in an answer cell (exit code 0: no reason of its own) still says in which cell the notebook
    ended; a child that failed after closing its output file says why instead of an empty '()'."""
    ref = reference.RefNotebook("a.ipynb", [], [reference.RefExercise("a.ipynb", "patchify", "patchify", 1, "patchify",
                                                                  ("patchify_answer",))], ["patchify_answer"], [])
    result = sandbox.Result("k", sandbox.Outcome("k", 0, None, 0.1), {"running": "answer cell patchify_answer"}, "", [])
    (row,) = grading.judge_notebook("s", ref, {"patchify_answer": ["x"]}, result, 0, sandbox.Limits())
    assert row["message"] == ("not graded: the notebook's process ended before this check (during answer cell "
                              "patchify_answer)"), row
    results = tmp_path / "run.out"
    results.mkdir()
    (results / sandbox.OUTPUT).write_bytes(b"")
    run = sandbox._Running("k", tmp_path / "run", results, None, 0.0, 1.0, [])
    box = type("Box", (), {"limits": sandbox.Limits(), "uids": None})()
    reason = sandbox.Sandbox._finish(box, run, sandbox.RUN_FAILED, 0).outcome.reason
    assert "()" not in reason and "closed or broke the files it writes" in reason, reason


# ------------------------------------------------------------------------------------ resume and journal
def test_resume_skips_students_already_graded(graded, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("a notebook ran although every student was graded")

    monkeypatch.setattr(sandbox, "Sandbox", never)
    rows = grading.grade(graded["subs"], graded["out"], reference_dir=graded["ref"], verbose=False, timeout=TIMEOUT,
                         cell_timeout=CELL_TIMEOUT, memory_mb=MEMORY_MB, max_output_kb=64)  # the settings it had
    assert sorted(map(str, rows), key=str) == sorted(map(str, graded["rows"]), key=str)


def test_resume_regrades_a_changed_submission_and_marks_a_grader_killer(tmp_path, monkeypatch):
    ref = reference_folder(tmp_path / "reference")
    for student in ("ann", "ben", "cat"):
        (tmp_path / "subs" / student).mkdir(parents=True)
        nbformat.write(submission("a.ipynb"), tmp_path / "subs" / student / "a.ipynb")
    out = tmp_path / "g.csv"
    graded_now = []
    monkeypatch.setattr(grading, "_grade_all", lambda box, todo, *a, **k: graded_now.append(list(todo)))
    monkeypatch.setattr(sandbox, "Sandbox", lambda *a, **k: type("Box", (), {"close": lambda self: None, "isolate": False})())
    folder = grading.students_dir(out)
    folder.mkdir()
    for student in ("ann", "ben"):  # graded before, by a grader that was then killed while cat's notebooks ran
        (folder / f"{student}.csv").write_text(",".join(grading.COLUMNS) + "\n")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    hashes = {s: grading.submission_hash(tmp_path / "subs" / s) for s in ("ann", "ben")}
    state = {"reference": grading.fingerprint(grading.load_reference(ref)), "checks": grading.checks_fingerprint(),
             "grader_pid": dead.pid, "running": ["cat"], "suspects": {},
             "students": {s: {"files": h} for s, h in hashes.items()}}
    (folder / grading.STATE_FILE).write_text(json.dumps(state))
    grading.grade(tmp_path / "subs", out, reference_dir=ref, verbose=False)
    assert graded_now == [["cat"]]  # a first kill may be a power cut, nobody's doing: cat is retried (alone)
    assert json.loads((folder / grading.STATE_FILE).read_text())["suspects"] == {"cat": 1}
    state.update(suspects={"cat": 1})  # ... and the grader was killed again while cat's notebooks ran alone
    (folder / grading.STATE_FILE).write_text(json.dumps(state))
    nbformat.write(submission("a.ipynb", {"patchify": ZEROS}), tmp_path / "subs" / "ben" / "a.ipynb")
    grading.grade(tmp_path / "subs", out, reference_dir=ref, verbose=False)
    assert graded_now[1:] == [["ben"]]  # ann unchanged: skipped; ben changed: regraded; cat: marked
    cat = grading.read_student_csv(folder / "cat.csv")
    assert cat and all(not r["passed"] and "the grader itself was killed" in r["message"] for r in cat)
    assert json.loads((folder / grading.STATE_FILE).read_text())["running"] == []


class _InstantBox:
    """Stands in for the sandbox in tests of the bookkeeping only: every notebook 'ends' at once, unrecorded."""

    isolate = False

    def __init__(self, *args, **kwargs):
        self.started = []

    def free(self):
        return 1

    def start(self, key, student_dir, steps, seed):
        self.started.append(key)

    def wait(self, timeout=0.05):
        keys, self.started = self.started, []
        return [sandbox.Result(k, sandbox.Outcome(k, 0, None, 0.0), None, "missing", []) for k in keys]

    def close(self):
        pass


def test_interrupt_keeps_the_students_done_and_blames_nobody(tmp_path, monkeypatch):
    """Ctrl-C while bob's notebook is judged: alice's grades are on disk (her CSV, grades.csv, the summary),
    and bob is not marked as having killed the grader."""
    ref = reference_folder(tmp_path / "reference")
    for student in ("alice", "bob"):
        (tmp_path / "subs" / student).mkdir(parents=True)
        nbformat.write(submission("a.ipynb"), tmp_path / "subs" / student / "a.ipynb")

    def judge(student, ref_nb, answers, result, seed, limits):
        if student == "bob":
            raise KeyboardInterrupt
        return [grading._row(student, ref_nb.name, ex.name, True, ex.points, ex.points, "") for ex in ref_nb.exercises]

    monkeypatch.setattr(sandbox, "Sandbox", _InstantBox)
    monkeypatch.setattr(grading, "judge_notebook", judge)
    out = tmp_path / "g.csv"
    with pytest.raises(KeyboardInterrupt):
        grading.grade(tmp_path / "subs", out, reference_dir=ref, jobs=1, verbose=False)
    with open(out, newline="", encoding="utf-8") as fh:
        assert [(r["student"], r["exercise"], r["points"]) for r in csv.DictReader(fh)] == [
            ("alice", "patchify", "1"), ("alice", "attention", "0"), ("alice", "mlp", "0")]  # b.ipynb: missing
    assert grading.summary_path(out).read_text().splitlines()[1:] == ["alice,1,0,0,1,6,,"]
    folder = grading.students_dir(out)
    assert sorted(p.name for p in folder.glob("*.csv")) == ["alice.csv"]
    assert json.loads((folder / grading.STATE_FILE).read_text())["running"] == []
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_two_students_running_at_a_grader_kill_are_retried_alone(tmp_path, monkeypatch):
    ref = reference_folder(tmp_path / "reference")
    for student in ("ann", "ben", "cat"):
        (tmp_path / "subs" / student).mkdir(parents=True)
        nbformat.write(submission("a.ipynb"), tmp_path / "subs" / student / "a.ipynb")
    seen = []
    monkeypatch.setattr(grading, "_grade_all", lambda box, todo, *a, **k: seen.append((list(todo), a[-4])))
    monkeypatch.setattr(sandbox, "Sandbox", lambda *a, **k: type("Box", (), {"close": lambda self: None, "isolate": False})())
    out = tmp_path / "g.csv"
    folder = grading.students_dir(out)
    folder.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (folder / grading.STATE_FILE).write_text(json.dumps({"grader_pid": dead.pid, "running": ["ben", "cat"]}))
    grading.grade(tmp_path / "subs", out, reference_dir=ref, verbose=False)
    (todo, suspects), = seen
    assert todo == ["ben", "cat", "ann"] and suspects == {"ben": 1, "cat": 1}  # suspects first, each alone


# ------------------------------------------------------------------------------------ reference and CLI
def test_reference_is_read_from_nbgrader_metadata(tmp_path):
    ref = grading.load_reference(reference_folder(tmp_path / "ref"))
    assert [(nb.name, [(e.name, e.check, e.points, e.expr, e.answers) for e in nb.exercises]) for nb in ref] == [
        ("a.ipynb", [("patchify", "patchify", 1.0, "patchify", ("patchify_answer",))]),
        ("b.ipynb", [("attention", "attention", 2.0, "attention", ("attention_answer",)),
                     ("mlp", "mlp", 3.0, "MLP", ("mlp_answer",))])]
    assert [s["kind"] for s in ref[1].steps] == ["setup", "answer", "check", "answer", "check"]
    assert "einops" in ref[0].imports and "torch.nn.functional" in ref[0].imports


@pytest.mark.parametrize("edit, message", [
    (lambda nb: nb.cells[4].metadata.pop("nbgrader"), r"a check cell without nbgrader metadata; regenerate"),
    (lambda nb: nb.cells[4].metadata["nbgrader"].update(points=-1), r"points must be a number >= 0, got -1"),
    (lambda nb: setattr(nb.cells[4], "source", "check_nope(x)"), r"calls check_nope, which vit_edu.checks does not"),
    (lambda nb: setattr(nb.cells[4], "source", "check_patchify(a)\ncheck_patchify(b)"), r"exactly one check"),
])
def test_bad_reference_is_refused(tmp_path, edit, message):
    nb = assignments.make_student_notebook(teacher(LAYOUT["a.ipynb"]), "a.ipynb")
    edit(nb)
    (tmp_path / "ref").mkdir()
    nbformat.write(nb, tmp_path / "ref" / "a.ipynb")
    with pytest.raises(ValueError, match=message):
        grading.load_reference(tmp_path / "ref")


@pytest.mark.parametrize("argv, message", [
    (["{missing}"], r"submissions folder not found"),
    (["{subs}", "--jobs", "0"], r"--jobs must be at least 1, got 0"),
    (["{subs}", "--timeout", "nan"], r"--timeout must be a positive number of seconds, got nan"),
    (["{subs}", "--cell-timeout", "0"], r"--cell-timeout must be a positive number"),
    (["{subs}", "--memory-mb", "10"], r"--memory-mb must be at least 64, got 10"),
    (["{subs}", "--max-output-kb", "-1"], r"--max-output-kb must be at least 0"),
    (["{subs}", "--seed", "-3"], r"--seed must be in \[0, 2\*\*63\), got -3"),
    (["{subs}", "--reference", "{missing}"], r"reference folder .*missing not found"),
    (["{subs}", "--reference", "{subs}"], r"reference folder .*subs holds no .ipynb notebooks"),
    (["{subs}", "--reference", "{plain_ref}"], r"holds no graded check cells"),
    (["{loose}"], r"holds notebooks directly \(x.ipynb\) but no student folders"),
    (["--merge", "{subs}/p.csv", "--force", "--seed", "3"], r"--merge grades nothing: --seed, --force apply"),
])
def test_cli_usage_errors(tmp_path, capsys, argv, message):
    ref = reference_folder(tmp_path / "ref")
    (tmp_path / "subs" / "ann").mkdir(parents=True)
    nbformat.write(submission("a.ipynb"), tmp_path / "subs" / "ann" / "a.ipynb")
    (tmp_path / "plain_ref").mkdir()
    nbformat.write(nbformat.v4.new_notebook(), tmp_path / "plain_ref" / "a.ipynb")
    (tmp_path / "loose").mkdir()
    nbformat.write(nbformat.v4.new_notebook(), tmp_path / "loose" / "x.ipynb")
    paths = {"missing": tmp_path / "missing", "subs": tmp_path / "subs", "plain_ref": tmp_path / "plain_ref",
             "loose": tmp_path / "loose"}
    argv = [a.format(**paths) for a in argv]
    if "--reference" not in argv:
        argv += ["--reference", str(ref)]
    assert grading.main(argv + ["--out", str(tmp_path / "g.csv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(message, err[0]), err
    assert not (tmp_path / "g.csv").exists()


def test_course_student_copies_are_a_valid_reference(tmp_path):
    """The course's student copies, as `python -m vit_edu assignments` writes them, define the grading: every
    exercise has points and answer cells, every notebook with exercises has its setup cells."""
    assignments.generate(ROOT / "notebooks", tmp_path)
    notebooks = grading.load_reference(tmp_path)
    exercises = [e for nb in notebooks for e in nb.exercises]
    assert len(exercises) >= 16 and all(e.points > 0 and e.answers for e in exercises), exercises
    assert all(any(step["kind"] == "setup" for step in nb.steps) for nb in notebooks if nb.exercises)


def test_the_printed_table_fits_a_terminal_and_shows_no_escape_codes() -> None:
    """25 students x 10 notebooks x 2 exercises: under 100 columns; names with escape codes are shown defused;
    the per-notebook points add up to the total; --detail keeps one ✓/✗ column per exercise."""
    from vit_edu.classroom.reference import RefExercise, RefNotebook
    from vit_edu.classroom.report import format_table

    reference = [RefNotebook(f"{i:02d}_notebook", [], [RefExercise(f"{i:02d}_notebook", f"ex{i}_{j}", "patchify",
                                                                    float(j + 1), "x", ()) for j in range(2)], [], [])
                 for i in range(10)]
    students = [f"student_{k:02d}" for k in range(24)] + ["\x1b]0;pwned\x07\x1b[32mfake 43/43 a very long name"]
    rows = [{"student": s, "notebook": nb.name, "exercise": ex.name, "passed": k % 2 == 0 or ex.points == 1,
             "points": ex.points if (k % 2 == 0 or ex.points == 1) else 0.0, "max_points": ex.points, "message": ""}
            for k, s in enumerate(students) for nb in reference for ex in nb.exercises if not (k == 3 and nb.name == "05_notebook")]
    text = format_table(rows, students, reference)
    lines = text.splitlines()
    assert max(len(line) for line in lines) < 100
    assert "\x1b" not in text and "\x07" not in text
    assert lines[0].split()[1:] == [f"{i:02d}" for i in range(10)] + ["total"]
    odd = next(line for line in lines if line.startswith("student_01"))
    assert odd.split()[1:] == ["1/3"] * 10 + ["10/30"]
    skipped = next(line for line in lines if line.startswith("student_03"))
    assert skipped.split()[6] == "·" and skipped.split()[-1] == "9/30"
    detail = format_table(rows, students, reference, detail=True)
    assert "ex9_1" in detail.splitlines()[0] and "✗" in detail and "\x1b" not in detail


def test_no_submission_stops_the_class(tmp_path, monkeypatch, capsys):
    """Names that are not UTF-8 or start with '-', the grader's own file names inside a submission, a lone
    surrogate in an error message, a symlinked folder, and a grader failure on one notebook: each costs at most
    that student's marks, with the reason in the CSV, and everybody else is graded."""
    ref = reference_folder(tmp_path / "reference")
    subs = tmp_path / "subs"

    def put(student, answers=None, name="a.ipynb", file_name=None):
        folder = os.path.join(os.fsencode(subs), os.fsencode(student))
        os.makedirs(folder, exist_ok=True)
        target = os.path.join(folder, os.fsencode(file_name or name))
        nbformat.write(submission(name, answers), os.fsdecode(target))
        return Path(os.fsdecode(folder))

    put("ann"), put("ann", name="b.ipynb")
    put("-dash")
    put(b"bad\xffname")
    put("sur", {"patchify": "raise ValueError('bad \\ud800 value')"})
    put("\x1b[32mesc", {"patchify": "print('\\x1b]0;pwned\\x07')\nraise ValueError('\\x1b[32m4/4 passed\\x1b[0m')"})
    own = put("own")
    (own / sandbox.JOB).mkdir()
    (own / sandbox.OUTPUT).mkdir()
    (own / sandbox.OBSERVATIONS).write_bytes(b"planted")
    put("ann2", file_name=b"a\xfe.ipynb")
    put("zed")
    (subs / "link").symlink_to(subs / "ann")
    real_judge = grading.judge_notebook

    def judge(student, *args, **kwargs):
        if student == "zed":
            raise RuntimeError("a judge that fails on this record")
        return real_judge(student, *args, **kwargs)

    monkeypatch.setattr(grading, "judge_notebook", judge)
    out = tmp_path / "grades.csv"
    grading.grade(subs, out, reference_dir=ref, timeout=TIMEOUT, memory_mb=MEMORY_MB, jobs=2)
    printed = capsys.readouterr()
    assert "not following 1 symbolic link(s)" in printed.err
    assert "sandbox: each notebook runs with" in printed.out  # which isolation ran, said
    with open(grading.summary_path(out), newline="", encoding="utf-8") as f:
        totals = {report._cell_value(r["student"]): float(r["total"]) for r in csv.DictReader(f)}
    assert totals == {"ann": 6, "-dash": 1, "bad\\xffname": 1, "sur": 0, "own": 1, "ann2": 1, "zed": 0,
                      "\\x1b[32mesc": 0}
    assert "\x1b" not in printed.out and "\x1b" not in printed.err  # no escape code reaches the terminal
    with open(out, newline="", encoding="utf-8") as f:
        text = f.read()
    assert "\x1b" not in text and "\x07" not in text and "?[32m4/4 passed?[0m" in text
    rows = grading.read_student_csv(grading.students_dir(out) / "zed.csv")
    assert "not graded: the grader could not judge this notebook (RuntimeError" in rows[0]["message"]
    sur = grading.read_student_csv(grading.students_dir(out) / "sur.csv")
    assert "ValueError: bad ? value" in sur[0]["message"]
    notes = [r["notebook"] for r in grading.read_student_csv(grading.students_dir(out) / "ann2.csv")]
    assert "a\\xfe.ipynb" in notes


def test_the_grader_s_own_names_are_not_copied(tmp_path):
    src = tmp_path / "student"
    (src / sandbox.JOB).mkdir(parents=True)
    (src / sandbox.OBSERVATIONS).write_bytes(b"planted")
    (src / "keep.txt").write_text("mine")
    (src / "sub").mkdir()
    (src / "sub" / sandbox.OBSERVATIONS).write_text("inside a subfolder it is just a file")
    notes = sandbox.copy_folder(src, tmp_path / "scratch")
    got = sorted(p.relative_to(tmp_path / "scratch").as_posix() for p in (tmp_path / "scratch").rglob("*"))
    assert got == ["keep.txt", "sub", f"sub/{sandbox.OBSERVATIONS}"]
    assert sum("a name the grader keeps for itself" in n for n in notes) == 2


def test_a_folder_of_very_many_files_is_copied_only_up_to_the_cap(tmp_path):
    """The copy runs in the grader before each notebook: a submission of a million empty files would stall the
    whole class. Past ``max_entries`` files and folders nothing more is copied, and a note says so."""
    src = tmp_path / "student"
    for d in ("a", "b", "c"):
        (src / d).mkdir(parents=True)
        for i in range(4):
            (src / d / f"{i}.txt").write_text("x")
    (src / "notebook.ipynb").write_text("{}")
    notes = sandbox.copy_folder(src, tmp_path / "scratch", max_entries=6)
    copied = list((tmp_path / "scratch").rglob("*"))
    assert 0 < len(copied) <= 6, copied
    assert sum("over 6 files and folders" in n for n in notes) == 1, notes
    assert sandbox.copy_folder(src, tmp_path / "all") == []  # under the default cap: everything
    assert len(list((tmp_path / "all").rglob("*"))) == 16


def test_a_stub_beside_the_renamed_answer_and_a_notebook_without_metadata_are_graded(tmp_path):
    """Two honest students the matching used to fail: one saved the answers under another name next to the
    untouched handed-out file; one edited in a tool that dropped the nbgrader metadata. Both get full marks."""
    ref = reference_folder(tmp_path / "reference")
    subs = tmp_path / "subs"
    (subs / "una").mkdir(parents=True)
    shutil_copy = __import__("shutil").copy
    shutil_copy(ref / "a.ipynb", subs / "una" / "a.ipynb")  # the stub as handed out
    nbformat.write(submission("a.ipynb"), subs / "una" / "a_final.ipynb")
    nbformat.write(submission("b.ipynb"), subs / "una" / "b.ipynb")
    (subs / "vic").mkdir()
    for name in ("a.ipynb", "b.ipynb"):
        nb = submission(name)
        for cell in nb.cells:
            cell.metadata.pop("nbgrader", None)
            cell.metadata.pop("tags", None)
        nbformat.write(nb, subs / "vic" / name)
    stub_only = nbformat.read(ref / "b.ipynb", as_version=4)  # the stub without metadata: nothing to take
    for cell in stub_only.cells:
        cell.metadata.pop("nbgrader", None)
    (subs / "wes").mkdir()
    nbformat.write(stub_only, subs / "wes" / "b.ipynb")
    rows = grading.grade(subs, tmp_path / "g.csv", reference_dir=ref, timeout=TIMEOUT, memory_mb=MEMORY_MB,
                         verbose=False)
    total = {s: sum(r["points"] for r in rows if r["student"] == s) for s in ("una", "vic", "wes")}
    assert total == {"una": MAX, "vic": MAX, "wes": 0}
    notes = {r["notebook"]: r["message"] for r in rows if r["student"] == "una" and r["exercise"] == "(notebook)"}
    assert notes == {"a_final.ipynb": "graded as a.ipynb (renamed; a.ipynb beside it has fewer answers worked on)",
                     "a.ipynb": "duplicate of a.ipynb (fewer answers worked on than a_final.ipynb): not graded"}


@pytest.mark.skipif(not _namespaces_work(), reason="mount and IPC namespaces need root and a kernel that allows them")
def test_a_notebook_sees_only_its_own_folder_and_leaves_nothing(tmp_path):
    """With namespaces: answer cells cannot read the reference, other submissions, the grades, the teacher's
    repository (solutions, tests), a backup outside the system's folders, another run's /tmp files or see other
    uids' processes; what they leave in /tmp, /dev/shm or SysV shared memory is gone when the notebook ends. The
    answer is right only if it saw none of it."""
    import ctypes

    ref = reference_folder(tmp_path / "reference")
    subs = tmp_path / "subs"
    planted = Path(tempfile.mkdtemp(prefix="vit_edu_planted_")) / "answer.txt"  # another student's leftovers,
    planted.write_text("def patchify(...)")  # readable by everybody
    places = [p for p in ("/srv", "/opt", "/mnt", "/media", "/home") if os.access(p, os.W_OK)]
    backup = Path(tempfile.mkdtemp(prefix="vit_edu_planted_", dir=places[0])) / "solutions.py" if places else planted
    backup.write_text("def patchify(...)")  # a teacher's world-readable backup outside the system's folders
    for path in {planted, backup}:
        os.chmod(path.parent, 0o755)
        os.chmod(path, 0o644)
    spy = f'''import ctypes, os
seen = [p for p in {[str(ref / "a.ipynb"), str(subs / "ann" / "a.ipynb"), str(tmp_path / "grades"),
                     str(ROOT / "notebooks"), str(ROOT / "tests" / "exercise_solutions.py"), str(ROOT / ".git"),
                     str(planted), str(backup)]!r} if os.path.exists(p)]
def uid_of(pid):
    try:
        return os.stat("/proc/" + pid).st_uid
    except OSError:  # gone meanwhile
        return os.getuid()
others = sorted({{uid_of(p) for p in os.listdir("/proc") if p.isdigit()}} - {{os.getuid()}})
seen += ["processes of uids %s" % others] if others else []
open("/tmp/left_in_tmp", "w").write("x")
open("/dev/shm/left_in_shm", "w").write("x") if os.path.isdir("/dev/shm") else None
libc = ctypes.CDLL(None, use_errno=True)
libc.shmget(0x7e57ab1e, 4096, 0o1666)  # IPC_CREAT | 0o666
{HONEST_A}
if seen:
    def patchify(images, patch_size):
        raise RuntimeError("saw " + ", ".join(seen))
'''
    for student, answers in (("ann", None), ("spy", {"patchify": spy})):
        (subs / student).mkdir(parents=True)
        nbformat.write(submission("a.ipynb", answers), subs / student / "a.ipynb")
    try:
        rows = grading.grade(subs, tmp_path / "grades.csv", reference_dir=ref, timeout=TIMEOUT,
                             memory_mb=MEMORY_MB, verbose=False)
    finally:
        for path in {planted, backup}:
            path.unlink()
            path.parent.rmdir()
    spy_row = next(r for r in rows if r["student"] == "spy" and r["exercise"] == "patchify")
    assert spy_row["passed"], spy_row["message"]
    assert "opened /tmp/left_in_tmp" in spy_row["flags"], spy_row  # outside its folder: reported all the same
    assert not Path("/tmp/left_in_tmp").exists() and not Path("/dev/shm/left_in_shm").exists()
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.shmget(0x7e57ab1e, 0, 0) == -1  # the segment died with the notebook's IPC namespace


@pytest.mark.skipif(not _namespaces_work(), reason="a notebook's own file system needs mount namespaces")
def test_disk_and_file_count_are_capped_per_notebook(tmp_path):
    """A notebook's folder is a file system of its own: writing past --disk-mb or making more than the file
    limit fails in the student's code (ENOSPC) and costs nobody else anything; the answer still counts."""
    ref = reference_folder(tmp_path / "reference")
    subs = tmp_path / "subs"
    hog = f'''import errno, os
hit = []
try:
    for k in range(6):
        with open(f"big{{k}}.bin", "wb") as f:
            f.write(b"x" * 6 * 2**20)
except OSError as e:
    hit.append(("disk", e.errno, k))
for k in range(6):
    if os.path.exists(f"big{{k}}.bin"):
        os.remove(f"big{{k}}.bin")
try:
    os.mkdir("many")
    for k in range(30_000):
        open(f"many/{{k}}", "w").close()
except OSError as e:
    hit.append(("files", e.errno, k))
{HONEST_A}
if [h[:2] for h in hit] != [("disk", errno.ENOSPC), ("files", errno.ENOSPC)] or not 1 <= hit[0][2] <= 3 \
        or not 15_000 < hit[1][2] < 25_000:
    def patchify(images, patch_size):
        raise RuntimeError(f"limits not as expected: {{hit}}")
'''
    (subs / "hog").mkdir(parents=True)
    nbformat.write(submission("a.ipynb", {"patchify": hog}), subs / "hog" / "a.ipynb")
    rows = grading.grade(subs, tmp_path / "grades.csv", reference_dir=ref, timeout=TIMEOUT, memory_mb=MEMORY_MB,
                         disk_mb=16, verbose=False)
    row = next(r for r in rows if r["exercise"] == "patchify")
    assert row["passed"], row["message"]


@pytest.mark.skipif(not ROOTED or shutil.which("bwrap") is None or not _namespaces_work(),
                    reason="bubblewrap runs the sandbox server as root where it is installed (apt-get install bubblewrap)")
def test_under_bubblewrap_a_notebook_sees_no_process_but_the_notebooks(tmp_path, monkeypatch, capsys):
    """bubblewrap puts the server and its notebooks in a PID namespace: the grader, the test runner and the
    machine's other processes are not in /proc. Switched off (VIT_EDU_NO_BWRAP), the grader says so and works."""
    ref = reference_folder(tmp_path / "reference")
    subs = tmp_path / "subs"
    look = f'''import os
pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
{HONEST_A}
if os.path.exists("/proc/{os.getpid()}") or max(pids) > 10_000 or 1 not in pids:
    def patchify(images, patch_size):
        raise RuntimeError(f"not in a PID namespace of its own: {{sorted(pids)[:10]}}")
'''
    (subs / "pid").mkdir(parents=True)
    nbformat.write(submission("a.ipynb", {"patchify": look}), subs / "pid" / "a.ipynb")
    rows = grading.grade(subs, tmp_path / "grades.csv", reference_dir=ref, timeout=TIMEOUT, memory_mb=MEMORY_MB)
    assert "under bubblewrap: a PID namespace" in capsys.readouterr().out
    assert next(r for r in rows if r["exercise"] == "patchify")["passed"]
    monkeypatch.setenv("VIT_EDU_NO_BWRAP", "1")
    rows = grading.grade(subs, tmp_path / "grades2.csv", reference_dir=ref, timeout=TIMEOUT, memory_mb=MEMORY_MB)
    assert "bubblewrap switched off (VIT_EDU_NO_BWRAP)" in capsys.readouterr().out
    row = next(r for r in rows if r["exercise"] == "patchify")
    assert not row["passed"] and "not in a PID namespace" in row["message"]


@pytest.mark.skipif(not ROOTED, reason="sandbox uids are used as root only")
def test_two_graders_never_share_a_sandbox_uid():
    """Each grader reserves its uids with lock files, so a second grader on the machine takes others (and
    cannot kill the first one's children); closing a pool frees its uids."""
    first = sandbox.UidPool(3)
    second = sandbox.UidPool(3)
    try:
        assert not set(first.free) & set(second.free)
    finally:
        second.close()
    third = sandbox.UidPool(3)
    try:
        assert third.free == second.free  # freed, so taken again
    finally:
        third.close()
        first.close()


@pytest.mark.skipif(not ROOTED, reason="sandbox uids are used as root only")
def test_uid_reservations_planted_in_the_lock_folder_are_removed_never_followed(tmp_path, monkeypatch):
    """/run/lock is world-writable, and a notebook of the weaker mode (no namespaces: the machine's /run/lock)
    could leave entries named like the next uids' lock files there: a folder made the next grader stop with
    "Is a directory" before any student was graded, and a link made root create a file wherever it pointed. They
    are removed, never followed, and the uids reserved; a notebook's own leftovers in /run/lock go with it."""
    folder = tmp_path / "lock"
    folder.mkdir()
    folder.chmod(0o1777)
    monkeypatch.setattr(isolation, "_lock_folder", lambda: str(folder))
    base = 64800
    target = tmp_path / "created_through_the_link"
    (folder / f"vit_edu_sandbox_uid_{base}.lock").symlink_to(target)
    (folder / f"vit_edu_sandbox_uid_{base + 1}.lock").mkdir()
    (folder / f"vit_edu_sandbox_uid_{base + 1}.lock" / "inside").write_text("x")
    (folder / f"vit_edu_sandbox_uid_{base + 2}.lock").write_text("")
    os.chown(folder / f"vit_edu_sandbox_uid_{base + 2}.lock", base + 5, base + 5)
    pool = isolation.UidPool(3, base=base)
    try:
        assert pool.free == [base, base + 1, base + 2]
        assert not os.path.lexists(target)
        for uid in pool.free:
            st = os.lstat(folder / f"vit_edu_sandbox_uid_{uid}.lock")
            assert stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid()
    finally:
        pool.close()
    assert "/run/lock" in isolation.TEMP_FOLDERS


@pytest.mark.skipif(os.uname().machine not in ("x86_64", "aarch64"), reason="the filter is tested on x86_64, aarch64")
def test_fallocate_cannot_step_around_the_file_size_limit(tmp_path):
    """RLIMIT_FSIZE does not cover fallocate(FALLOC_FL_KEEP_SIZE): through its output or record file, on the
    grader's disk, a notebook reserved gigabytes without growing the file (tried: the disk filled and the
    classmates graded beside and after it lost every point to "No space left on device"). The child's seccomp
    filter refuses fallocate and io_uring; posix_fallocate still works, by writing, within the limits."""
    import ctypes

    from vit_edu.classroom import child

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
            libc.syscall.restype = ctypes.c_long
            libc.prctl(38, 1, 0, 0, 0)  # no_new_privs, as the child sets it
            problem = child._refuse_fallocate()
            fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
            kept = libc.fallocate(fd, 1, 0, 64 << 20), ctypes.get_errno(), os.fstat(fd).st_blocks
            os.posix_fallocate(fd, 0, 1 << 20)
            ring = libc.syscall(ctypes.c_long(425), ctypes.c_long(1), ctypes.c_long(0)), ctypes.get_errno()
            os.write(w, json.dumps([problem, kept, os.fstat(fd).st_size, ring]).encode())
        finally:
            os._exit(0)
    os.close(w)
    problem, kept, size, ring = json.loads(os.read(r, 4000))
    os.waitpid(pid, 0)
    assert problem == ""
    assert kept == [-1, 95, 0]  # EOPNOTSUPP, nothing reserved
    assert size == 1 << 20
    assert ring == [-1, 38]  # ENOSYS


@pytest.mark.skipif(not ROOTED or not os.path.exists("/proc/sysvipc/shm"), reason="as root, with SysV IPC")
def test_sysv_shared_memory_of_a_notebook_does_not_outlive_it():
    """Where a notebook has no IPC namespace of its own (the weaker mode), a SysV segment it writes and detaches
    without removing it outlived the notebook and the grader (memory nothing frees; tried: 4 x 128 MB left by
    one answer cell, for the next notebook of its uid to read). Killing the job removes its uid's segments and
    message queues (those it made and those it owns)."""
    import ctypes

    from vit_edu.classroom import child

    pool = isolation.UidPool(1)
    uid = pool.free[0]
    libc = ctypes.CDLL(None, use_errno=True)

    def owned() -> list:
        found = []
        for kind in ("shm", "msg"):
            head, *rows = [line.split() for line in open(f"/proc/sysvipc/{kind}")]
            found += [kind for r in rows if str(uid) in (r[head.index("uid")], r[head.index("cuid")])]
        return found

    try:
        pid = os.fork()
        if pid == 0:
            try:
                isolation._drop_privileges({"uid": uid, "gid": uid, "isolate": False})
                assert libc.shmget(0, 1 << 20, 0o1000 | 0o600) >= 0 and libc.msgget(0, 0o1000 | 0o600) >= 0
                os._exit(0)
            except BaseException:  # noqa: BLE001
                os._exit(1)
        assert os.waitpid(pid, 0)[1] == 0
        assert sorted(owned()) == ["msg", "shm"]
        child._kill_job(None, uid, uid)
        assert owned() == []
    finally:
        pool.close()


@pytest.mark.skipif(not ROOTED or sandbox._memory_cgroup_root() is None,
                    reason="per-notebook memory cgroups need root and a writable cgroup file system")
def test_memory_is_capped_per_notebook_not_per_process(tmp_path):
    """Every process of a notebook sits in one memory cgroup whose limit is the notebook's --memory-mb (plus
    room for what a forked child copies): four processes of 1 GB cannot pass a 2 GB limit. The cgroup is gone
    after the notebook. The answer is right only if it finds itself, and a forked child, inside that cgroup."""
    ref = reference_folder(tmp_path / "reference")
    subs = tmp_path / "subs"
    probe = f'''import os
def _memory_cgroup():
    for line in open("/proc/self/cgroup"):
        _, controllers, path = line.rstrip("\\n").split(":", 2)
        if "memory" in controllers.split(",") or controllers == "":
            return path
mine = _memory_cgroup()
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.write(w, (_memory_cgroup() or "").encode()); os._exit(0)
os.waitpid(pid, 0)
child = os.read(r, 4096).decode()
base = "/sys/fs/cgroup/memory" if os.path.isdir("/sys/fs/cgroup/memory") else "/sys/fs/cgroup"
limit_file = [f for f in ("memory.limit_in_bytes", "memory.max") if os.path.exists(base + mine + "/" + f)]
limit = int(open(base + mine + "/" + limit_file[0]).read()) if limit_file else -1
{HONEST_A}
if "vit_edu_" not in mine or child != mine or limit != {MEMORY_MB} * 2**20 + 256 * 2**20:
    def patchify(images, patch_size):
        raise RuntimeError(f"cgroup {{mine!r}}, child {{child!r}}, limit {{limit}}")
'''
    (subs / "mem").mkdir(parents=True)
    nbformat.write(submission("a.ipynb", {"patchify": probe}), subs / "mem" / "a.ipynb")
    base = sandbox._memory_cgroup_root()
    before = {d for d in os.listdir(base) if d.startswith("vit_edu_")}  # another grader's, running now
    rows = grading.grade(subs, tmp_path / "grades.csv", reference_dir=ref, timeout=TIMEOUT, memory_mb=MEMORY_MB,
                         verbose=False)
    row = next(r for r in rows if r["exercise"] == "patchify")
    assert row["passed"], row["message"]
    assert not {d for d in os.listdir(base) if d.startswith("vit_edu_")} - before  # removed with the notebook


# ------------------------------------------------------------------------------------ a class on many machines
def test_shards_split_by_name_and_merge_into_the_whole_class(tmp_path, capsys):
    from vit_edu.classroom import shards

    assert [shards.shard_of(name, 4) for name in ("alice", "bob", "carol")] == \
        [shards.shard_of(name, 4) for name in ("alice", "bob", "carol")]  # no state between calls
    counts = [0] * 4
    for k in range(4000):
        counts[shards.shard_of(f"student{k}", 4) - 1] += 1
    assert min(counts) > 900, counts  # an even split
    ref = reference_folder(tmp_path / "reference")
    names = ["ann", "ben", "cat", "dov", "eli", "fox"]
    for k, student in enumerate(names):
        (tmp_path / "subs" / student).mkdir(parents=True)
        answers = {"patchify": ZEROS} if k % 2 else None
        nbformat.write(submission("a.ipynb", answers), tmp_path / "subs" / student / "a.ipynb")
    parts = []
    for i in (1, 2, 3):
        part = tmp_path / f"grades_{i}.csv"
        assert grading.main([str(tmp_path / "subs"), "--reference", str(ref), "--out", str(part), "--shard", f"{i}/3",
                             "--jobs", "2", "--seed", "5"]) == 0
        parts.append(part)
        graded_here = {r["student"] for r in grading.read_student_csv(part)}
        assert graded_here == {s for s in names if shards.shard_of(s, 3) == i}
    assert f"shard 1/3: {sum(shards.shard_of(s, 3) == 1 for s in names)} of the 6 students" in capsys.readouterr().out
    merged = tmp_path / "grades.csv"
    summaries = [str(grading.summary_path(p)) for p in parts]  # what a shell's grades_*.csv adds: left out
    assert grading.main(["--merge", *map(str, parts), *summaries, "--reference", str(ref), "--out", str(merged)]) == 0
    rows = grading.read_student_csv(merged)
    assert sorted({r["student"] for r in rows}) == names
    totals = {r["student"]: r["points"] for r in rows if r["exercise"] == "patchify"}
    assert totals == {s: (0.0 if k % 2 else 1.0) for k, s in enumerate(names)}
    with open(grading.summary_path(merged), newline="") as f:
        assert [r["student"] for r in csv.DictReader(f)] == names
    assert "merged 3 shards (6 students)" in capsys.readouterr().out
    # parts that do not fit together are refused before anything is written
    for argv, message in [
        ([parts[0], parts[2]], "shard(s) 2/3 missing"),
        ([parts[0], parts[0], parts[1], parts[2]], "shard 1/3 given twice"),
        ([parts[0], parts[1], parts[2], merged], "was not graded with --shard"),
    ]:
        assert grading.main(["--merge", *map(str, argv), "--reference", str(ref), "--out", str(tmp_path / "x.csv")]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
        assert not (tmp_path / "x.csv").exists()
    other = reference_folder(tmp_path / "other_reference")
    nb = nbformat.read(other / "a.ipynb", as_version=4)
    next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("points")).metadata["nbgrader"]["points"] = 7
    nbformat.write(nb, other / "a.ipynb")
    assert grading.main(["--merge", *map(str, parts), "--reference", str(other), "--out", str(tmp_path / "x.csv")]) == 2
    assert "graded against another reference" in capsys.readouterr().err
    for argv in (["--shard", "0/3"], ["--shard", "4/3"], ["--shard", "three"]):
        assert grading.main([str(tmp_path / "subs"), "--reference", str(ref), *argv]) == 2
        assert "--shard" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ magics, copied cells, subfolders
BLACK_STYLE = '''def patchify(images, patch_size):
    b, c, h, w = images.shape
    if (
        h % patch_size
        != 0
    ):
        raise ValueError("h must be divisible by patch_size")
    unused = (w
              % patch_size)
    return rearrange(images, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=patch_size, p2=patch_size)'''


def test_a_magic_is_a_line_that_starts_a_statement():
    """Black starts continuation lines with `!= 0` or `% patch_size`: valid Python, which runs unchanged; a
    magic or shell line is skipped only where a statement starts (as IPython reads it)."""
    from vit_edu.classroom.child import _without_magics

    assert _without_magics(BLACK_STYLE) == BLACK_STYLE
    cell = "\n".join(["%matplotlib inline", "!pip install einops \\", "    --quiet", "x = (10", "     % 3)",
                      'text = """', "!not a shell line", '"""', "for i in range(2):", "    !echo {i}",
                      "    y = x \\", "        % 2", ""])
    expected = "\n".join(["pass  # %matplotlib inline", "pass  # !pip install einops \\", "    # --quiet", "x = (10",
                          "     % 3)", 'text = """', "!not a shell line", '"""', "for i in range(2):",
                          "    pass  # !echo {i}", "    y = x \\", "        % 2", ""])
    assert _without_magics(cell) == expected
    namespace: dict = {}
    exec(compile(_without_magics(cell), "<cell>", "exec"), namespace)
    assert (namespace["x"], namespace["y"], namespace["text"]) == (1, 1, "\n!not a shell line\n")


def _stub_copied_above(name: str, exercise: str, ref: Path) -> nbformat.NotebookNode:
    """The student's ``name`` (solutions) with the handed-out stub of ``exercise`` copied above its answer cell,
    metadata and all, as Jupyter's copy and paste does."""
    nb = submission(name)
    stubs = reference.load_reference_notebook(ref / name).stubs
    answer = next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == f"{exercise}_answer")
    copy = nbformat.v4.new_code_cell(stubs[f"{exercise}_answer"])
    copy.metadata["nbgrader"] = dict(answer.metadata["nbgrader"])
    nb.cells.insert(nb.cells.index(answer), copy)
    return nb


def _solution_cell(source: str, grade_id: str) -> nbformat.NotebookNode:
    return _cell(source, grade=False, grade_id=grade_id, locked=False, solution=True)


def test_every_cell_carrying_an_answer_s_grade_id_runs_in_notebook_order(tmp_path):
    """A copied answer cell runs as in Jupyter: every copy, in notebook order, so the later definition wins.
    Cells given another cell's grade_id gain nothing: a check cell's id runs nowhere, another answer's id runs
    at that answer's place (as if written in that answer's cell)."""
    ref_dir = reference_folder(tmp_path / "reference")
    ref = {nb.name: nb for nb in grading.load_reference(ref_dir)}
    b = ref["b.ipynb"]
    nb = _stub_copied_above("b.ipynb", "attention", ref_dir)
    nb.cells.insert(1, _solution_cell("EARLY_MLP = 1", "mlp_answer"))  # above attention's answer
    nb.cells += [_solution_cell("LATE = 1", "attention_answer"), _solution_cell("FORGED = 1", "mlp_check")]
    nbformat.write(nb, tmp_path / "b.ipynb")
    answers, problem = reference.read_answers(tmp_path / "b.ipynb", list(ref.values()))
    steps = reference.job_steps(b, answers)
    assert [s["kind"] for s in steps] == ["setup", "answer", "answer", "answer", "check", "answer", "answer", "check"]
    assert [(s["label"], s["source"]) for s in steps if s["kind"] == "answer"] == [
        ("answer cell attention_answer", b.stubs["attention_answer"]),
        ("answer cell attention_answer", SOLUTIONS["attention"]), ("answer cell attention_answer", "LATE = 1"),
        ("answer cell mlp_answer", "EARLY_MLP = 1"), ("answer cell mlp_answer", SOLUTIONS["mlp"])]
    assert [s for s in steps if s["kind"] != "answer"] == [s for s in b.steps if s["kind"] != "answer"]
    # the copy above the worked answer counts as worked on: it beats the untouched stub of the reference's name
    student = tmp_path / "student"
    student.mkdir()
    shutil.copy(ref_dir / "a.ipynb", student / "a.ipynb")
    nbformat.write(_stub_copied_above("a.ipynb", "patchify", ref_dir), student / "a_final.ipynb")
    match = reference.match_notebooks(student, list(ref.values()))
    assert match.graded["a.ipynb"][0].name == "a_final.ipynb", match.notes


def test_notebooks_in_subfolders_and_with_an_upper_case_suffix_are_found(tmp_path):
    """A zipped folder extracted one level down, or a suffix in capitals, is graded and said so; the most worked
    on copy wins, one at the top on a tie; hidden folders and links to folders are not entered."""
    ref_dir = reference_folder(tmp_path / "reference")
    ref = grading.load_reference(ref_dir)
    subs = tmp_path / "subs"
    for folder in ("tie/sub", "stub/work", "deep/x/y/z", "deep/.ipynb_checkpoints", "elsewhere"):
        (subs / folder).mkdir(parents=True)
    for path in ("tie/a.ipynb", "tie/sub/a.ipynb", "stub/work/a.ipynb", "deep/.ipynb_checkpoints/b-checkpoint.ipynb",
                 "elsewhere/a.ipynb"):
        nbformat.write(submission(Path(path).name if Path(path).name in LAYOUT else "b.ipynb"), subs / path)
    shutil.copy(ref_dir / "a.ipynb", subs / "stub" / "a.ipynb")  # the untouched stub at the top
    nbformat.write(submission("b.ipynb"), subs / "deep" / "x" / "y" / "z" / "b.Ipynb")
    (subs / "deep" / "linked").symlink_to(subs / "elsewhere", target_is_directory=True)

    def matched(student):
        match = reference.match_notebooks(subs / student, ref)
        graded = {name: path.relative_to(subs / student).as_posix() for name, (path, _, _) in match.graded.items()}
        return graded, dict(match.notes)

    assert matched("tie") == ({"a.ipynb": "a.ipynb"},
                              {"sub/a.ipynb": "duplicate of a.ipynb (same answer cells): not graded"})
    assert matched("stub") == ({"a.ipynb": "work/a.ipynb"}, {
        "work/a.ipynb": "graded as a.ipynb (found in a subfolder; a.ipynb at the top has fewer answers worked on)",
        "a.ipynb": "duplicate of a.ipynb (fewer answers worked on than work/a.ipynb): not graded"})
    assert matched("deep") == ({"b.ipynb": "x/y/z/b.Ipynb"},
                               {"x/y/z/b.Ipynb": "graded as b.ipynb (found in a subfolder, its suffix is .Ipynb)"})
    before = reference.submission_hash(subs / "deep")
    nbformat.write(submission("b.ipynb", {"mlp": ZEROS}), subs / "deep" / "x" / "y" / "z" / "b.Ipynb")
    assert reference.submission_hash(subs / "deep") != before  # resuming regrades a changed nested notebook


def test_a_copied_answer_cell_and_a_nested_or_capitalised_notebook_get_full_marks(tmp_path):
    """The whole grader on the two layouts above: the stub copied above the worked answer, and notebooks one
    folder down or ending in .IPYNB."""
    ref = reference_folder(tmp_path / "reference")
    subs = tmp_path / "subs"
    (subs / "dup").mkdir(parents=True)
    nbformat.write(_stub_copied_above("a.ipynb", "patchify", ref), subs / "dup" / "a.ipynb")
    (subs / "kim" / "homework").mkdir(parents=True)
    nbformat.write(submission("a.ipynb"), subs / "kim" / "homework" / "a.ipynb")
    nbformat.write(submission("b.ipynb"), subs / "kim" / "b.IPYNB")
    rows = grading.grade(subs, tmp_path / "g.csv", reference_dir=ref, timeout=TIMEOUT, memory_mb=MEMORY_MB,
                         verbose=False)
    total = {s: sum(r["points"] for r in rows if r["student"] == s) for s in ("dup", "kim")}
    assert total == {"dup": 1, "kim": MAX}, [r["message"] for r in rows if r["message"]]
    notes = {r["notebook"]: r["message"] for r in rows if r["student"] == "kim" and r["exercise"] == "(notebook)"}
    assert notes == {"homework/a.ipynb": "graded as a.ipynb (found in a subfolder)",
                     "b.IPYNB": "graded as b.ipynb (its suffix is .IPYNB)"}


# ------------------------------------------------------------------------------------ students' names
def test_folders_that_read_alike_and_names_too_long_for_a_file_keep_their_own_grades(tmp_path, capsys, monkeypatch):
    """b'eve\\xff' and a folder literally named 'eve\\xff' read alike; 250 bytes, or 60 bytes that are not UTF-8
    (240 characters as \\xNN), make grades/<student>.csv too long a file name. Each keeps its own grades, the
    teacher is told which folder is which, and the rest of the class is graded."""
    ref = reference_folder(tmp_path / "reference")
    subs = tmp_path / "subs"
    right, blank = submission("a.ipynb"), nbformat.read(ref / "a.ipynb", as_version=4)
    folders = {b"eve\xff": right, b"eve\\xff": blank, b"a" * 250: right, b"\xe9" * 60: right, b"zoe": blank}
    for raw, nb in folders.items():
        os.makedirs(os.fsencode(subs) + b"/" + raw)
        nbformat.write(nb, os.fsdecode(os.fsencode(subs) + b"/" + raw + b"/a.ipynb"))
    rows = grading.grade(subs, tmp_path / "g.csv", reference_dir=ref, timeout=TIMEOUT, memory_mb=MEMORY_MB,
                         verbose=False)
    points = {r["student"]: r["points"] for r in rows if r["exercise"] == "patchify"}
    labels = report.student_labels([Path(os.fsdecode(os.fsencode(subs) + b"/" + raw)) for raw in folders])
    assert len(set(labels.values())) == len(folders) == len(points)
    assert {name: points[name] for name in labels.values()} == {
        labels[Path(os.fsdecode(os.fsencode(subs) + b"/" + raw))]: (1.0 if nb is right else 0.0)
        for raw, nb in folders.items()}
    assert sorted(n for n in points if n.startswith("eve")) == sorted(
        f"eve\\xff~{hashlib.sha1(raw).hexdigest()[:8]}" for raw in (b"eve\xff", b"eve\\xff"))
    err = capsys.readouterr().err
    assert "b'eve\\xff' in bytes is eve\\xff~" in err and "b'eve\\\\xff' in bytes is eve\\xff~" in err, err
    files = sorted(p.name for p in grading.students_dir(tmp_path / "g.csv").glob("*.csv"))
    assert len(files) == len(folders) and all(len(os.fsencode(f)) <= report.MAX_NAME_BYTES + 4 for f in files)
    # a second run finds every student's CSV by the same names: nothing left to grade
    monkeypatch.setattr(grading, "_grade_all", lambda *a, **k: pytest.fail(f"regraded: {list(a[1])}"))
    again = grading.grade(subs, tmp_path / "g.csv", reference_dir=ref, timeout=TIMEOUT, memory_mb=MEMORY_MB,
                          verbose=False)
    key = lambda r: (r["student"], r["notebook"], r["exercise"], float(r["points"]))  # noqa: E731
    assert sorted(map(key, again)) == sorted(map(key, rows))


def test_student_labels_differ_only_where_names_read_alike():
    folders = [Path(n) for n in ("ann", "Ann", "ben", "eve")]
    labels = report.student_labels(folders)
    assert labels[Path("ben")] == "ben" and labels[Path("eve")] == "eve"
    assert labels[Path("ann")].startswith("ann~") and labels[Path("Ann")].startswith("Ann~")  # case-blind disks
    assert report.student_labels(folders[:1]) == {Path("ann"): "ann"}
    assert report.student_csv(Path("g"), "ann") == Path("g/ann.csv")
    long = report.student_csv(Path("g"), "é" * 200)
    assert len(long.name.encode()) <= report.MAX_NAME_BYTES + 4 and long != report.student_csv(Path("g"), "é" * 201)


def test_going_on_with_other_limits_or_another_seed_is_refused_unless_forced(tmp_path, monkeypatch):
    """Kept grades made with --timeout 2 would sit beside new ones made with --timeout 30, unsaid: the rerun
    names what changed and asks for --force (or the same settings)."""
    ref = reference_folder(tmp_path / "reference")
    (tmp_path / "subs" / "ann").mkdir(parents=True)
    nbformat.write(submission("a.ipynb"), tmp_path / "subs" / "ann" / "a.ipynb")
    ran = []
    monkeypatch.setattr(grading, "_grade_all", lambda box, todo, *a, **k: ran.append(list(todo)))
    monkeypatch.setattr(sandbox, "Sandbox", lambda *a, **k: type("Box", (), {"close": lambda self: None, "isolate": False})())
    out = tmp_path / "g.csv"

    def run(**kw):
        return grading.grade(tmp_path / "subs", out, reference_dir=ref, verbose=False, **kw)

    run(timeout=2, seed=7)
    (grading.students_dir(out) / "ann.csv").write_text(",".join(grading.COLUMNS) + "\n")  # as if ann was graded
    state = json.loads((grading.students_dir(out) / grading.STATE_FILE).read_text())
    state["students"]["ann"] = {"seed": 7, "files": grading.submission_hash(tmp_path / "subs" / "ann")}
    (grading.students_dir(out) / grading.STATE_FILE).write_text(json.dumps(state))
    run(timeout=2, seed=7)  # the same settings: nothing to do
    run(timeout=2)  # no seed asked for: the kept grades stand
    assert ran == [["ann"]]
    for kw, said in [(dict(timeout=30, seed=7), "--timeout 2.0 then, 30.0 now"),
                     (dict(timeout=2, seed=8), "--seed 7 then, 8 now"),
                     (dict(timeout=2, memory_mb=4096), "--memory-mb 2048 then, 4096 now")]:
        with pytest.raises(ValueError, match="holds grades made with other settings") as err:
            run(**kw)
        assert said in str(err.value) and "--force" in str(err.value)
    run(timeout=30, seed=8, force=True)
    assert ran == [["ann"], ["ann"]]


def test_the_warm_up_imports_what_a_first_figure_needs_where_pyplot_is_preloaded(tmp_path):
    """A sandboxed child that cannot read the Python installation imports only what the server preloaded: an
    honest answer cell that draws (its setup cells import pyplot) must find what matplotlib imports lazily."""
    script = """if True:
        import json, sys
        import torch, matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from vit_edu.classroom import child
        for name in child._warm_up_modules():
            try:  # as the server does: some names (Cython's shared modules) import only as a part of another
                __import__(name)
            except ImportError:
                pass
        before = set(sys.modules)
        fig, ax = plt.subplots()
        ax.plot([1, 2, 3])
        ax.imshow(torch.rand(4, 4).numpy())
        fig.savefig(sys.argv[1])
        plt.show()
        print(json.dumps(sorted(set(sys.modules) - before)))
    """
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "f.png")],
                         capture_output=True, text=True, check=True).stdout
    assert json.loads(out.splitlines()[-1]) == []


@pytest.mark.skipif(not _namespaces_work(), reason="a notebook's own file system needs mount namespaces")
def test_every_folder_outside_the_system_s_is_out_of_a_notebook_s_sight(tmp_path, monkeypatch):
    """An allow-list at the top of the file system: only the system's folders (/usr, /etc, /var, ...) stay in
    sight; /home, /root, /opt, /mnt (Windows' drives under WSL), a /work are covered wherever the grader runs, a
    link at the top counts as the folder it leads to (Fedora Atomic's /home -> var/home), and what Python and the
    package read is bound back. A teacher's backup in ~/Downloads is then out of sight."""
    top, scratch = tmp_path / "fs", tmp_path / "scratch"
    files = {"home/teacher/Downloads/solutions.zip": False, "opt/course/key.txt": False, "mnt/c/answers.py": False,
             "var/home/bob/notes.txt": False, "usr/share/doc.txt": True, "etc/hosts": True, "work/py/lib/os.py": True}
    for name in files:
        (top / name).parent.mkdir(parents=True, exist_ok=True)
        (top / name).write_text("x")
    (top / "srv").symlink_to("var/home")
    (top / "lib").symlink_to("usr")  # a system link: never followed into a cover
    scratch.mkdir()
    monkeypatch.setattr(isolation, "TOP", str(top))  # tmp_path/fs plays /
    monkeypatch.setattr(isolation, "NEVER_HIDDEN", {str(top), *(str(top / name) for name in isolation.SYSTEM)})
    monkeypatch.setattr(isolation, "PRIVATE_TMP", ("/var/tmp",))  # tmp_path stays in sight, but for the covers
    monkeypatch.setattr(isolation, "WORK", str(tmp_path / "work"))
    assert isolation.outside_the_system() == {str(top / n) for n in ("home", "opt", "mnt", "var/home", "work")}
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the namespace is this child's own and dies with it
        try:
            isolation._isolate({"hide": [], "expose": [str(top / "work" / "py")], "scratch": str(scratch)})
            os.write(w, json.dumps({name: (top / name).exists() for name in files}).encode())
        finally:
            os._exit(0)
    os.close(w)
    seen = os.read(r, 4096)
    os.close(r)
    os.waitpid(pid, 0)
    assert json.loads(seen) == files


def test_a_notebook_saved_with_a_bom_or_as_utf_16_is_read(tmp_path):
    """An editor that saves UTF-8 with a byte-order mark (Windows Notepad) or UTF-16 changes no answer: JSON allows
    both, and the student keeps the marks. Bytes that are no JSON text are still refused with the reason."""
    ref = reference.load_reference(reference_folder(tmp_path / "reference"))
    text = nbformat.writes(submission("a.ipynb"))
    for name, data in (("bom.ipynb", b"\xef\xbb\xbf" + text.encode()), ("utf16.ipynb", text.encode("utf-16")),
                       ("bad.ipynb", b"\xff\xfe\x00")):
        (tmp_path / name).write_bytes(data)
        answers, why = reference.read_answers(tmp_path / name, ref)
        if name == "bad.ipynb":
            assert answers is None and why.startswith("not a notebook (invalid JSON"), why
        else:
            assert answers == {"patchify_answer": [SOLUTIONS["patchify"]]}, (name, why)


def test_a_submission_cannot_fill_the_grader_s_memory(tmp_path, monkeypatch):
    """The grader keeps every student's answers until they run: a notebook whose answer cells hold megabytes of
    code is refused with the reason, and of a folder of many copies only the first notebooks are read."""
    ref = reference.load_reference(reference_folder(tmp_path / "reference"))
    student = tmp_path / "student"
    student.mkdir()
    nbformat.write(submission("a.ipynb", {"patchify": HONEST_A + "\n#" + "x" * reference.MAX_ANSWER_CHARS}),
                   student / "a.ipynb")
    answers, why = reference.read_answers(student / "a.ipynb", ref)
    assert answers is None and "answer cells hold" in why and "more than the 2,000,000 allowed" in why, why
    monkeypatch.setattr(reference, "MAX_NOTEBOOKS", 3)
    for i in range(5):
        nbformat.write(submission("b.ipynb"), student / f"b copy {i}.ipynb")
    read = []
    real = reference.read_answers
    monkeypatch.setattr(reference, "read_answers", lambda p, r=(): read.append(p.name) or real(p, r))
    match = reference.match_notebooks(student, ref)
    assert len(read) == 3 and "b.ipynb" in match.graded, read
    assert any("not read, nor the 2 after it: over 3 notebooks" in note for _, note in match.notes), match.notes


def test_a_user_site_python_reads_stays_in_a_notebook_s_sight(tmp_path, monkeypatch):
    """Grading from /root (a container's default) covers the folders in it, so the packages of `pip install
    --user`, which Python reads from there, are bound back like the rest of the installation."""
    import site

    monkeypatch.setattr(site, "ENABLE_USER_SITE", True)
    monkeypatch.setattr(site, "getusersitepackages", lambda: str(tmp_path))
    assert str(tmp_path.resolve()) in isolation.needed_paths()
    monkeypatch.setattr(site, "ENABLE_USER_SITE", False)  # a virtual environment: Python does not read it
    assert str(tmp_path.resolve()) not in isolation.needed_paths()


def test_a_device_or_fifo_named_like_a_notebook_is_never_opened(tmp_path, monkeypatch):
    """A tar extracted as root can hold a device node called a.ipynb; opening some devices acts (a watchdog
    reboots the machine), so the grader looks before it opens: only regular files are opened."""
    os.mkfifo(tmp_path / "a.ipynb")
    (tmp_path / "b.ipynb").write_text("{}")
    opened = []
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda path, *a, **k: opened.append(os.fspath(path)) or real_open(path, *a, **k))
    assert sandbox.read_untrusted(tmp_path / "a.ipynb", 1000) == (None, "not a regular file")
    assert sandbox.read_untrusted(tmp_path / "b.ipynb", 1000) == (b"{}", "")
    assert opened == [str(tmp_path / "b.ipynb")]


def test_a_notebook_without_metadata_keeps_its_answers_when_other_cells_were_edited(tmp_path):
    """An editor dropped the nbgrader metadata of a notebook whose student also did what the course asks
    elsewhere (wrote a prediction, an experiment: here the demonstration cell edited), added a helper cell above
    an answer and a scratch cell at the end. The check cells still line up: every answer is found, the helper
    runs in the answer's place. A check cell edited too (half of the anchors left) moves no answer; a notebook
    whose check cells were all changed matches nothing."""
    ref = reference_folder(tmp_path / "reference")
    refs = reference.load_reference(ref)
    nb = submission("b.ipynb")
    for cell in nb.cells:
        cell.metadata.pop("nbgrader", None)
    demo = next(i for i, c in enumerate(nb.cells) if c.source.startswith("print("))
    nb.cells[demo].source = "my_prediction = 3"
    answer = next(i for i, c in enumerate(nb.cells) if c.source == SOLUTIONS["mlp"])
    nb.cells.insert(answer, nbformat.v4.new_code_cell("def helper():\n    return 1"))
    nb.cells.append(nbformat.v4.new_code_cell("print('scratch')"))
    nbformat.write(nb, tmp_path / "b.ipynb")
    answers, problem = reference.read_answers(tmp_path / "b.ipynb", refs)
    assert problem == "" and answers == {"attention_answer": [SOLUTIONS["attention"]],
                                         "mlp_answer": ["def helper():\n    return 1", SOLUTIONS["mlp"]]}
    check = next(c for c in nb.cells if c.source.startswith("from vit_edu.checks import check_mlp"))
    check.source = "check_mlp(MLP)  # passes"
    nbformat.write(nb, tmp_path / "b.ipynb")
    assert reference.read_answers(tmp_path / "b.ipynb", refs) == (answers, "")
    other = next(c for c in nb.cells if c.source.startswith("from vit_edu.checks import check_attention"))
    other.source = "check_attention(attention)"
    nbformat.write(nb, tmp_path / "b.ipynb")
    assert reference.read_answers(tmp_path / "b.ipynb", refs) == ({}, "")


def test_a_helper_in_a_cell_the_grader_does_not_run_is_named_in_the_message(tmp_path):
    """A student defined a helper in a cell added above the answer (it ran in Jupyter). The grader runs only the
    answer cells, so the check fails on a NameError; the message says where the name is and what to do."""
    ref = reference_folder(tmp_path / "reference")
    nb = submission("a.ipynb", {"patchify": "def patchify(images, patch_size):\n    return _cut(images, patch_size)"})
    answer = next(i for i, c in enumerate(nb.cells) if "_cut(images" in c.source)
    nb.cells.insert(answer, nbformat.v4.new_code_cell(
        "from einops import rearrange as _r\n\ndef _cut(images, p):\n"
        "    return _r(images, 'b c (h p1) (w p2) -> b (h w) (p1 p2 c)', p1=p, p2=p)"))
    (tmp_path / "subs" / "ann").mkdir(parents=True)
    nbformat.write(nb, tmp_path / "subs" / "ann" / "a.ipynb")
    retyped = submission("b.ipynb")  # an answer cell deleted (Colab lets one) and typed again in a new cell
    next(c for c in retyped.cells if c.source == SOLUTIONS["mlp"]).metadata.pop("nbgrader")
    (tmp_path / "subs" / "bo").mkdir()
    nbformat.write(retyped, tmp_path / "subs" / "bo" / "b.ipynb")
    rows = grading.grade(tmp_path / "subs", tmp_path / "g.csv", reference_dir=ref, timeout=TIMEOUT,
                         memory_mb=MEMORY_MB, verbose=False)
    ann = next(r for r in rows if r["exercise"] == "patchify" and r["student"] == "ann")
    bo = next(r for r in rows if r["exercise"] == "mlp" and r["student"] == "bo")
    assert not ann["passed"] and "name '_cut' is not defined" in ann["message"]
    assert ann["message"].endswith("_cut is defined in a cell that is no answer cell, which the grader does not run: "
                                   "move it into the answer cell")
    mlp = OBJECT["mlp"]
    assert not bo["passed"] and bo["message"].startswith(f"{mlp} is not defined (no answer cell to run)")
    assert bo["message"].endswith(f"{mlp} is defined in a cell that is no answer cell, which the grader does not "
                                  f"run: move it into the answer cell")
    assert reference._defined_elsewhere([nb.cells[answer], {"cell_type": "code", "source": [
        "import os.path, numpy as np\n", "x: int = 1\n", "y == 2\n", "from a.b import (c as d,\n"]}]) == {
        "_r", "_cut", "os", "np", "x", "d"}


def test_a_zipped_submission_is_named_with_what_to_do(tmp_path):
    """An LMS hands in a student's zip as it was uploaded: the grader opens no archive, but says so (the rows of
    that student, and the refusal when no folder holds a notebook) instead of only 'notebook missing'."""
    ref = reference_folder(tmp_path / "reference")
    refs = reference.load_reference(ref)
    moodle = tmp_path / "subs" / "Doe, Jane_12345_assignsubmission_file_"
    moodle.mkdir(parents=True)
    with zipfile.ZipFile(moodle / "Notebooks.ZIP", "w") as z:
        z.writestr("a.ipynb", nbformat.writes(submission("a.ipynb")))
    assert reference.match_notebooks(moodle, refs).notes == [
        ("Notebooks.ZIP", "an archive, not opened: extract it into the student's folder and grade again")]
    with pytest.raises(ValueError, match=r"holds a notebook; .*; 1 hold archives \(.zip, .*\): extract them first"):
        grading.grade(tmp_path / "subs", tmp_path / "g.csv", reference_dir=ref, verbose=False)


def test_a_module_installed_but_unreadable_in_the_sandbox_says_what_to_do(tmp_path, monkeypatch):
    """Where Python lies in a folder other users cannot read (a pyenv under /root), an answer's import of a module
    the grader did not preload fails in the sandbox only; the row says so and what to change. A module that lies
    outside Python's folders (an editable install, a PYTHONPATH folder), which a notebook's view covers, gets
    its own note. A module that is not installed, or a submodule that does not exist, gets no such note."""
    import logging.config  # noqa: F401 - in sys.modules, as in the grader

    (tmp_path / "course_helpers.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))

    ref = reference.RefNotebook("a.ipynb", [], [reference.RefExercise("a.ipynb", "patchify", "patchify", 1, "patchify",
                                                                  ("patchify_answer",))], ["patchify_answer"], [])
    outcome = sandbox.Outcome("k", 0, None, 0.1)
    messages = []
    for module in ("logging.config", "course_helpers", "surely_not_installed_anywhere", "vit_edu.no_such_module"):
        record = {"cells": [{"label": "answer cell patchify_answer",
                             "error": f"ModuleNotFoundError: No module named '{module}'"}],
                  "missing": {"patchify": "NameError: name 'patchify' is not defined"}}
        result = sandbox.Result("k", outcome, record, "", [])
        (row,) = grading.judge_notebook("s", ref, {"patchify_answer": ["x"]}, result, 0, sandbox.Limits())
        messages.append(row["message"])
    assert messages[0].endswith("; logging.config is installed here but the sandbox user cannot read it: let other "
                                "users read it (chmod -R o+rX on Python's folders) and grade again")
    assert messages[1].endswith(f"; course_helpers is installed here in {tmp_path.resolve()}, outside Python's "
                                "folders, which a notebook does not see: install it into Python's site-packages "
                                "(pip install, without -e) and grade again"), messages[1]
    assert [m.endswith("'") for m in messages[2:]] == [True, True]


def test_a_notebook_too_large_for_its_outputs_says_how_to_shrink_it(tmp_path, monkeypatch):
    """A training notebook saved with its logs and pictures can pass the size limit; its row says to clear
    the outputs (what the answers never need) and grade again."""
    ref = reference_folder(tmp_path / "reference")
    nb = submission("a.ipynb")
    nb.cells[-1].outputs = [nbformat.v4.new_output("stream", text="loss 0.1\n" * 2000)]
    nbformat.write(nb, tmp_path / "a.ipynb")
    monkeypatch.setattr(reference, "MAX_NOTEBOOK_BYTES", 10_000)
    answers, problem = reference.read_answers(tmp_path / "a.ipynb", reference.load_reference(ref))
    assert answers is None and problem.endswith(
        "over the limit of 10000; clear its outputs (jupyter nbconvert --clear-output --inplace FILE) and grade again")


# ------------------------------------------------------------------------------------ folder trees without recursion
def _chain(top: Path, depth: int) -> None:
    """``depth`` nested folders d/d/d/... in ``top``, made through file descriptors (no path past PATH_MAX)."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=fd)
            fd, parent = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd), fd
            os.close(parent)
    finally:
        os.close(fd)


def test_a_chain_of_thousands_of_folders_is_copied_to_a_depth_and_removed_without_recursion(tmp_path):
    """shutil.rmtree and os.walk recurse once per folder level and stop at Python's recursion limit (a
    RecursionError that rmtree's ignore_errors does not catch): the grader's copy stops at MAX_DEPTH levels with
    one note, and its removal takes a chain of any length, follows no link and never raises."""
    src = tmp_path / "student"
    src.mkdir()
    (src / "a.ipynb").write_text("{}")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "keep.txt").write_text("not the student's")
    os.symlink(tmp_path / "outside", src / "link")
    try:  # pytest's own clean-up of its temporary folders recurses too: the chains never outlive the test
        _chain(src, 3000)
        notes = sandbox.copy_folder(src, tmp_path / "scratch")
        assert notes == ["link: a link, not copied",
                         f"d/...: folders nested deeper than {isolation.MAX_DEPTH} levels, not copied"]
        deepest = max(len(p.relative_to(tmp_path / "scratch").parts) for p in (tmp_path / "scratch").rglob("d"))
        assert deepest == isolation.MAX_DEPTH and (tmp_path / "scratch" / "a.ipynb").is_file()
        readonly = src / "d" / "d"
        (readonly / "f.txt").write_text("x")
        readonly.chmod(0o500)  # what a student's code may leave: its owner (root, or the grader's user) removes it
        assert isolation.remove_tree(src) is True and not src.exists()
        assert (tmp_path / "outside" / "keep.txt").read_text() == "not the student's"
        assert isolation.remove_tree(tmp_path / "scratch") is True and not (tmp_path / "scratch").exists()
    finally:
        subprocess.run(["rm", "-rf", str(src), str(tmp_path / "scratch")], check=False)
    assert isolation.remove_tree(tmp_path / "gone") is True
    (tmp_path / "file").write_text("x")
    assert isolation.remove_tree(tmp_path / "file") is True and not (tmp_path / "file").exists()


def test_a_chain_of_folders_in_a_submission_or_left_by_its_code_costs_nobody(tmp_path, monkeypatch):
    """The mode where the notebook writes on the real disk (not root here; as root where the kernel refuses
    namespaces, alike): an answer that leaves a 1200-deep chain in its folder, and a submitted folder holding a
    1100-deep one, are graded like everybody else, the class goes on, and nothing is left in the temporary
    folder. The submitted chain is cut at the copy, with a note in the summary."""
    monkeypatch.setattr(sandbox, "privileged", lambda: False)
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # where the grader's scratch copies go
    ref = reference_folder(tmp_path / "reference")
    deep = "import os\nfor _ in range(1200):\n    os.mkdir('d')\n    os.chdir('d')\n" + SOLUTIONS["patchify"]
    subs = tmp_path / "subs"
    for student, nb in {"ann": submission("a.ipynb", {"patchify": deep}), "ben": submission("a.ipynb"),
                        "cat": submission("a.ipynb")}.items():
        (subs / student).mkdir(parents=True)
        nbformat.write(nb, subs / student / "a.ipynb")
    try:
        _chain(subs / "ben", 1100)
        rows = grading.grade(subs, tmp_path / "g.csv", reference_dir=ref, jobs=2, seed=5, verbose=False,
                             timeout=TIMEOUT)
        assert list((tmp_path / "tmp").iterdir()) == []
    finally:  # pytest's own clean-up of its temporary folders recurses too: the chains never outlive the test
        subprocess.run(["rm", "-rf", str(subs / "ben" / "d"), str(tmp_path / "tmp")], check=False)
    by = {(r["student"], r["exercise"]): r for r in rows}
    assert [by[(s, "patchify")]["passed"] for s in ("ann", "ben", "cat")] == [True, True, True], rows
    assert by[("ben", "(notebook)")]["notebook"] == "(folder)"
    assert by[("ben", "(notebook)")]["message"] == ("not copied into the sandbox: d/...: folders nested deeper than "
                                                     f"{isolation.MAX_DEPTH} levels, not copied")
    assert ("ann", "(notebook)") not in by and ("cat", "(notebook)") not in by


def test_a_preload_guess_that_is_no_module_is_no_noise():
    """``from vit_edu.training.cnn import count_flops`` in a setup cell is preloaded as the module and, in case it
    is one, as vit_edu.training.cnn.count_flops: that guess failing is no news, and a notebook whose sandbox could
    not be set up gets the reason, not the server's preload notes."""
    with pytest.raises(ModuleNotFoundError) as guess:
        __import__("vit_edu.checks.CHECKS")
    assert sandbox._not_a_module("vit_edu.checks.CHECKS", guess.value)
    with pytest.raises(ModuleNotFoundError) as missing:
        __import__("surely_not_installed_anywhere")
    assert not sandbox._not_a_module("surely_not_installed_anywhere", missing.value)


def test_a_setup_failure_names_its_reason_not_the_preload_notes(tmp_path):
    log = tmp_path / "sandbox_server.log"
    log.write_text("sandbox server: could not preload seaborn: ModuleNotFoundError: No module named 'seaborn'\n"
                   "sandbox setup failed: OSError: mount tmpfs on /tmp: Operation not permitted\n"
                   "sandbox server: could not preload seaborn.x: ModuleNotFoundError: No module named 'seaborn'\n")
    assert sandbox.output_tail(log, 3, skip="sandbox server: could not preload") == \
        "sandbox setup failed: OSError: mount tmpfs on /tmp: Operation not permitted"


# ------------------------------------------------------------------------------------ the checks' version
def test_the_checks_fingerprint_follows_the_files_that_decide_a_verdict(tmp_path):
    """vit_edu's version and a digest of checks.py and the classroom's exercise tables, engine and judge: a copy
    gives the same, one changed byte of the judge another; a file that decides no verdict changes nothing."""
    package = Path(grading.__file__).resolve().parents[1]
    copy = tmp_path / "vit_edu"
    (copy / "classroom").mkdir(parents=True)
    for path in [package / "checks.py", *sorted((package / "classroom").glob("*.py"))]:
        shutil.copy(path, copy / path.relative_to(package))
    now = grading.checks_fingerprint()
    assert grading.checks_fingerprint(copy) == now and now.startswith(__import__("vit_edu").__version__ + "+")
    (copy / "classroom" / "grading.py").write_text("# not a verdict's source\n")
    assert grading.checks_fingerprint(copy) == now
    for name in ("judge.py", "exercises_build.py", "../checks.py"):
        (copy / "classroom" / name).write_bytes((package / "classroom" / name).read_bytes() + b"\n# changed\n")
        assert grading.checks_fingerprint(copy) != now, name
        shutil.copy(package / "classroom" / name, copy / "classroom" / name)
    assert grading.checks_fingerprint(copy) == now


def test_going_on_after_the_checks_changed_is_refused_unless_forced(tmp_path, monkeypatch):
    """A course update between two runs into the same --out changed a check: the kept verdicts are another
    version's, so going on is refused like another --seed, naming both versions; --force regrades everybody."""
    ref = reference_folder(tmp_path / "reference")
    for student in ("ann", "ben"):
        (tmp_path / "subs" / student).mkdir(parents=True)
        nbformat.write(submission("a.ipynb"), tmp_path / "subs" / student / "a.ipynb")
    ran = []
    monkeypatch.setattr(grading, "_grade_all", lambda box, todo, *a, **k: ran.append(list(todo)))
    monkeypatch.setattr(sandbox, "Sandbox", lambda *a, **k: type("Box", (), {"close": lambda self: None, "isolate": False})())
    out = tmp_path / "g.csv"
    state_path = grading.students_dir(out) / grading.STATE_FILE

    def run(**kw):
        return grading.grade(tmp_path / "subs", out, reference_dir=ref, verbose=False, seed=7, **kw)

    run()
    state = json.loads(state_path.read_text())
    assert state["checks"] == grading.checks_fingerprint()
    (grading.students_dir(out) / "ann.csv").write_text(",".join(grading.COLUMNS) + "\n")  # as if ann was graded
    state["students"]["ann"] = {"seed": 7, "files": grading.submission_hash(tmp_path / "subs" / "ann")}
    state_path.write_text(json.dumps(state))
    run()  # the same checks: ann is kept
    assert ran == [["ann", "ben"], ["ben"]]
    monkeypatch.setattr(grading, "checks_fingerprint", lambda: "9.9.9+0123456789ab")
    with pytest.raises(ValueError, match="holds grades made with other settings") as err:
        run()
    assert f"the checks (vit_edu's exercise tables, engine and judge) {state['checks']} then, 9.9.9+0123456789ab " \
           f"now" in str(err.value) and "--force" in str(err.value)
    assert ran == [["ann", "ben"], ["ben"]]  # refused before any work
    del state["checks"]  # grades of a vit_edu that did not record its checks
    state_path.write_text(json.dumps(state))
    with pytest.raises(ValueError, match=r"the checks .* unrecorded \(an older vit_edu\) then"):
        run()
    run(force=True)
    assert ran[-1] == ["ann", "ben"] and json.loads(state_path.read_text())["checks"] == "9.9.9+0123456789ab"


def test_shards_graded_with_other_checks_are_not_merged(tmp_path, capsys):
    ref = reference_folder(tmp_path / "reference")
    fp = grading.fingerprint(grading.load_reference(ref))

    def part(i: int, checks: str) -> Path:
        path = tmp_path / f"grades_{i}.csv"
        rows = [grading._row(f"s{i}", "a.ipynb", "patchify", True, 1.0, 1.0, "")]
        grading._write_csv(path, grading.COLUMNS, grading._csv_rows(rows))
        grading.students_dir(path).mkdir()
        (grading.students_dir(path) / grading.STATE_FILE).write_text(json.dumps(
            {"shard": [i, 2], "reference": fp, "checks": checks, "running": []}))
        return path

    parts = [part(1, "0.1.0+aaaaaaaaaaaa"), part(2, "0.1.0+bbbbbbbbbbbb")]
    argv = ["--merge", *map(str, parts), "--reference", str(ref), "--out", str(tmp_path / "all.csv")]
    assert grading.main(argv) == 2
    err = capsys.readouterr().err
    assert "grades_2.csv was graded with other checks (0.1.0+bbbbbbbbbbbb) than" in err and \
        "grades_1.csv (0.1.0+aaaaaaaaaaaa)" in err and "Traceback" not in err, err
    assert not (tmp_path / "all.csv").exists()
    state = json.loads((grading.students_dir(parts[1]) / grading.STATE_FILE).read_text())
    state["checks"] = "0.1.0+aaaaaaaaaaaa"
    (grading.students_dir(parts[1]) / grading.STATE_FILE).write_text(json.dumps(state))
    assert grading.main(argv) == 0


def test_a_shard_interrupted_before_every_student_was_graded_is_not_merged(tmp_path, monkeypatch, capsys):
    """Ctrl-C in shard 1/1 after alice, before bob: the part is not 'running' any more, but bob has no rows; the
    merge must refuse it (naming bob) rather than write a class without him. Resuming the shard makes it whole."""
    ref = reference_folder(tmp_path / "reference")
    for student in ("alice", "bob"):
        (tmp_path / "subs" / student).mkdir(parents=True)
        nbformat.write(submission("a.ipynb"), tmp_path / "subs" / student / "a.ipynb")
    interrupt = [True]

    def judge(student, ref_nb, answers, result, seed, limits):
        if student == "bob" and interrupt[0]:
            raise KeyboardInterrupt
        return [grading._row(student, ref_nb.name, ex.name, True, ex.points, ex.points, "") for ex in ref_nb.exercises]

    monkeypatch.setattr(sandbox, "Sandbox", _InstantBox)
    monkeypatch.setattr(grading, "judge_notebook", judge)
    part = tmp_path / "grades_1.csv"
    with pytest.raises(KeyboardInterrupt):
        grading.grade(tmp_path / "subs", part, reference_dir=ref, jobs=1, verbose=False, shard=(1, 1), seed=3)
    merged = tmp_path / "grades.csv"
    assert grading.main(["--merge", str(part), "--reference", str(ref), "--out", str(merged)]) == 2
    err = capsys.readouterr().err
    assert "shard 1/1 has not finished" in err and "bob" in err, err
    assert not merged.exists()
    interrupt[0] = False
    grading.grade(tmp_path / "subs", part, reference_dir=ref, jobs=1, verbose=False, shard=(1, 1), seed=3)
    assert grading.main(["--merge", str(part), "--reference", str(ref), "--out", str(merged)]) == 0
    assert sorted({r["student"] for r in grading.read_student_csv(merged)}) == ["alice", "bob"]


def test_an_out_without_a_suffix_is_refused_before_any_grading(tmp_path, capsys, monkeypatch):
    """--out grades: the per-student folder (named after --out without its suffix) would be grades itself; the
    grader made it, graded the first student, then failed to write grades.csv ('Is a directory')."""
    ref = reference_folder(tmp_path / "ref")
    (tmp_path / "subs" / "ann").mkdir(parents=True)
    nbformat.write(submission("a.ipynb"), tmp_path / "subs" / "ann" / "a.ipynb")
    monkeypatch.setattr(sandbox, "Sandbox", _InstantBox)
    for out in ("grades", ".csv"):
        assert grading.main([str(tmp_path / "subs"), "--reference", str(ref), "--out", str(tmp_path / out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "needs a suffix (e.g. " in err[0], err
        assert not (tmp_path / out).exists()


def test_an_out_that_is_a_file_of_the_teacher_s_is_not_replaced(tmp_path, capsys, monkeypatch):
    """--out roster.csv (a class list) was replaced by the grades without a word; the grader's own CSVs (a
    resumed run, an earlier merge) are still written over."""
    ref = reference_folder(tmp_path / "ref")
    (tmp_path / "subs" / "ann").mkdir(parents=True)
    nbformat.write(submission("a.ipynb"), tmp_path / "subs" / "ann" / "a.ipynb")
    monkeypatch.setattr(sandbox, "Sandbox", _InstantBox)
    monkeypatch.setattr(grading, "judge_notebook", lambda student, ref_nb, *a: [
        grading._row(student, ref_nb.name, ex.name, True, ex.points, ex.points, "") for ex in ref_nb.exercises])
    roster, summary = tmp_path / "roster.csv", tmp_path / "g_summary.csv"
    roster.write_text("name,email\nann,ann@example.org\n")
    summary.write_text("my notes\n")
    for out, kept in ((roster, roster), (tmp_path / "g.csv", summary)):
        assert grading.main([str(tmp_path / "subs"), "--reference", str(ref), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "exists and is not the grader's" in err[0] and str(kept) in err[0], err
        assert not grading.students_dir(out).exists()
    assert roster.read_text() == "name,email\nann,ann@example.org\n" and summary.read_text() == "my notes\n"
    summary.unlink()
    monkeypatch.setattr(sandbox.Sandbox, "isolation", "test box", raising=False)
    for _ in range(2):  # the second run finds its own files and goes on
        assert grading.main([str(tmp_path / "subs"), "--reference", str(ref), "--out", str(tmp_path / "g.csv")]) == 0
    assert [r["student"] for r in grading.read_student_csv(tmp_path / "g.csv")] == ["ann"] * 3


def test_python_under_a_private_folder_is_noted_only_where_a_notebook_s_view_does_not_bind_it_back(tmp_path):
    """Python in a folder other users cannot enter (a pyenv under /root, mode 700): without views of their own the
    notebooks cannot import from it, so the grader says so; with them the installation is bound back under covers
    anyone may read, and the note would be false. A folder unreadable inside what is bound back counts still."""
    home = tmp_path / "root"
    python = home / ".pyenv" / "versions" / "3.x"
    (python / "lib").mkdir(parents=True)
    home.chmod(0o700)
    try:
        assert grading._unreadable_by_others([python / "lib"]) == [str(python / "lib")]
        assert grading._unreadable_by_others([python / "lib"], within=[str(python)]) == []
        (python / "lib").chmod(0o700)
        assert grading._unreadable_by_others([python / "lib"], within=[str(python)]) == [str(python / "lib")]
    finally:
        home.chmod(0o755)
        (python / "lib").chmod(0o755)
