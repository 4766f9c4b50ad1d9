"""The shell commands README.md and docs/classroom.md show work as written, after the set-up.

Every line of their ```bash blocks is looked up in ``HOW`` below: run in a copy of the repository (its tracked
files) whose ``.venv`` is this environment, with ``source .venv/bin/activate`` first as the README says, and
tiny sizes appended where the command would train for minutes (argparse lets a later flag win); or not run, with
the reason (a server that never ends, a download, another environment, this very test suite). A command added to
those files without an entry here fails the test, and so does an entry whose command left the files.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

ROOT = Path(__file__).resolve().parent.parent
FILES = ("README.md", "docs/classroom.md")
TINY = "--epochs 1 --n-train 128 --n-test 64 --batch-size 32 --time-budget 0 --no-progress"
RUN, SKIP = "run", "skip"
SHARDS = " && ".join(f"python -m vit_edu grade submissions/ --shard {i}/8 --out parts/grades_{i}.csv"
                     for i in range(1, 9))

# command as written -> (RUN, what to append) or (SKIP, why)
HOW: Dict[str, Tuple[str, str]] = {
    "make lab": (SKIP, "starts JupyterLab, which serves until stopped (the browser test starts it)"),
    "make test": (SKIP, "this test suite"),
    "make browser-test": (SKIP, "its own target: JupyterLab in headless Chromium"),
    ".venv/bin/python -m pytest tests notebooks --nbval --nbval-current-env --nbval-sanitize-with "
    "notebooks/nbval_sanitize.cfg": (SKIP, "this test suite (what make test runs)"),
    "source .venv/bin/activate": (RUN, ""),
    "python -m vit_edu train": (RUN, TINY),
    "python -m vit_edu train --model vit_course_patch4_32 --epochs 10 --time-budget 0 --export my.safetensors":
        (RUN, TINY),
    "python -m vit_edu train --model vit_hybrid_s4_32": (RUN, TINY),
    "python -m vit_edu train cifar10 --download --augment":
        (SKIP, "downloads CIFAR-10 (170 MB); tests/test_cli.py holds the one-line error offline"),
    "python -m vit_edu train --resume runs/shapes-vit_course_patch8_32/last.pt --epochs 20":
        (RUN, "--epochs 2 --n-test 64 --time-budget 0 --no-progress"),
    "torchrun --nproc_per_node=2 -m vit_edu train --out-dir runs/ddp":
        (SKIP, "two processes training for minutes; tests/test_ddp.py runs DDP under torchrun's launcher"),
    "python -m vit_edu evaluate": (RUN, ""),
    "python -m vit_edu demo": (RUN, ""),
    "make assignments": (RUN, ""),
    "python -m vit_edu assignments --check": (RUN, ""),
    "python -m vit_edu assignments": (RUN, ""),
    "python -m vit_edu handout ~/vit-handout": (RUN, ""),
    "python -m vit_edu handout ~/vit-course-handout": (RUN, ""),
    "python -m vit_edu handout OUT_DIR": (SKIP, "OUT_DIR is a placeholder (the line with ~/vit-handout runs)"),
    "python -m vit_edu grade submissions/": (RUN, ""),  # the synopsis without its [optional] flags
    "python -m vit_edu grade --merge parts/grades_*.csv --out grades.csv": (RUN, ""),
    "python -m vit_edu grade submissions/ --shard 3/8 --out parts/grades_3.csv": (RUN, ""),
    "python -m vit_edu grade submissions/ --shard ${SLURM_ARRAY_TASK_ID}/8 --jobs 2 --seed 2026 --out "
    "parts/grades_${SLURM_ARRAY_TASK_ID}.csv": (SKIP, "the --shard 3/8 line with Slurm's array index"),
    ".venv/bin/pip install nbgrader && source .venv/bin/activate":
        (SKIP, "installs nbgrader (the teacher's choice); make nbgrader-check runs its route where it is installed"),
    "make venv && .venv/bin/pip install nbgrader": (SKIP, "installs nbgrader, as above"),
    "python -m vit_edu assignments --nbgrader-course ~/vit-course": (RUN, ""),
    "python -m vit_edu assignments --nbgrader-course ~/vit-course --notebooks 01_patch_embedding "
    "03_multi_head_attention": (RUN, ""),
    "cd ~/vit-course": (SKIP, "the nbgrader commands that follow need nbgrader (make nbgrader-check runs them)"),
    "nbgrader generate_assignment 01_patch_embedding": (SKIP, "nbgrader: make nbgrader-check"),
    "nbgrader autograde 01_patch_embedding && nbgrader export": (SKIP, "nbgrader: make nbgrader-check"),
    "nbgrader autograde 01_patch_embedding": (SKIP, "nbgrader: make nbgrader-check"),
    "nbgrader export": (SKIP, "nbgrader: make nbgrader-check"),
    "nbgrader generate_feedback 01_patch_embedding": (SKIP, "nbgrader: make nbgrader-check"),
    "make nbgrader-check": (SKIP, "minutes of real nbgrader, where it is installed"),
    'make nbgrader-check NOTEBOOKS="01_patch_embedding 06_training" NBGRADER_PY=/path/to/venv/bin/python':
        (SKIP, "a placeholder path to another environment"),
    "python3 -m venv .venv && .venv/bin/pip install -r requirements.txt -e .":
        (SKIP, "the students' set-up in a handout: a second environment (minutes, gigabytes)"),
    ".venv/bin/jupyter lab notebooks/00_overview.ipynb": (SKIP, "starts JupyterLab in a handout"),
}


def shown_commands(path: Path) -> List[str]:
    """The command lines of a markdown file's ```bash blocks: comments dropped, continuations joined, a usage
    synopsis reduced to its required part (``[--flag X]`` groups removed)."""
    out: List[str] = []
    inside, current = False, None
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            if inside and current:
                out.append(current)
            inside, current = (not inside and line.strip() == "```bash"), None
            continue
        if not inside:
            continue
        if current is not None and (current.endswith("\\") or line.startswith((" ", "\t"))):
            current = current.rstrip("\\").rstrip() + " " + line.strip()
            continue
        if current:
            out.append(current)
        current = None if not line.strip() or line.lstrip().startswith("#") else line.strip()
    commands = [re.sub(r"\s+#\s.*$", "", c) for c in out]
    return [re.sub(r"\s+", " ", re.sub(r"\[[^\]]*\]", "", c)).strip() for c in commands]


def test_every_shown_command_is_known():
    shown = {c for f in FILES for c in shown_commands(ROOT / f)}
    assert not shown - set(HOW), f"commands in {FILES} without an entry in HOW: {sorted(shown - set(HOW))}"
    assert not set(HOW) - shown, f"entries in HOW no longer in {FILES}: {sorted(set(HOW) - shown)}"


def _copy_of_the_repository(dst: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout  # the working tree as a commit would hold it
    for name in filter(None, files.decode().split("\0")):
        src = ROOT / name
        if src.is_file():
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / name)  # times kept: make sees the environment as up to date
    (dst / ".venv").symlink_to(Path(sys.prefix))
    # ... and never older than the files it was made from: else `make` in the copy would reinstall this very
    # environment, pointing its editable install at the copy (gone with tmp_path, and vit_edu with it)
    stamp = Path(sys.prefix) / ".installed"
    if not stamp.is_file():
        pytest.skip("the environment was not made by `make venv`: the README's make commands would reinstall it")
    for name in ("requirements.txt", "pyproject.toml"):
        made = min((dst / name).stat().st_mtime, stamp.stat().st_mtime - 1)
        os.utime(dst / name, (made, made))


@pytest.mark.skipif(not (ROOT / ".git").exists() or Path(sys.prefix) == Path(sys.base_prefix),
                    reason="needs the repository's git files and its virtual environment")
def test_the_shown_commands_run_as_written(tmp_path):
    """In README order (a later command may use what an earlier one made: the resume, the grading's shards)."""
    repo, home = tmp_path / "repo", tmp_path / "home"
    repo.mkdir()
    home.mkdir()
    _copy_of_the_repository(repo)
    student = repo / "submissions" / "ann"  # a class of one for the grading commands: the handed-out copies
    student.mkdir(parents=True)
    for nb in ("01_patch_embedding.ipynb", "03_multi_head_attention.ipynb"):
        shutil.copy2(repo / "assignments" / "student" / nb, student / nb)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON"))}
    env.update(HOME=str(home), PATH=os.defpath, PYTHONHASHSEED="0", OMP_NUM_THREADS="1",
               VIT_EDU_FIGURES=str(tmp_path / "figures"))
    ran = []
    for command in [c for f in FILES for c in shown_commands(ROOT / f)]:
        how, extra = HOW[command]
        if how == SKIP or command in ran:
            continue
        line = f"{command} {extra}".strip()
        if "--merge" in command:
            line = f"{SHARDS} && {line}"
        run = subprocess.run(["bash", "-c", f"set -e; source .venv/bin/activate; {line}"], cwd=repo, env=env,
                             capture_output=True, text=True, timeout=900)
        assert run.returncode == 0, f"{line}\n{run.stdout[-2000:]}\n{run.stderr[-3000:]}"
        assert "Traceback" not in run.stderr, f"{line}\n{run.stderr[-3000:]}"
        ran.append(command)
    assert (repo / "my.safetensors").is_file() and (home / "vit-handout" / ".vit_edu_handout").is_file()
    assert (repo / "grades.csv").is_file() and (home / "vit-course" / "nbgrader_config.py").is_file()
    assert len(ran) >= 15, ran


def test_every_shown_evaluate_and_demo_command_parses():
    """The evaluate and demo lines of README.md and docs/*.md (docs/training.md shows more of them than the README)
    use flags the commands have: a flag renamed or removed fails here, not in a newcomer's shell."""
    import shlex

    from vit_edu.__main__ import build_parser

    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    shown = [c for f in files for c in shown_commands(f) if re.match(r"python -m vit_edu (evaluate|demo)\b", c)]
    assert len(shown) >= 5, shown
    for command in shown:
        try:
            build_parser().parse_args(shlex.split(command)[3:])
        except SystemExit:
            pytest.fail(f"{command!r} (shown in the docs) is refused by the command line's parser")
