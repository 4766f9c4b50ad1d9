"""The student handout: ``python -m vit_edu handout OUT_DIR [--src notebooks] [--force]``.

One folder a student can take home: notebooks/ (the student copies of :mod:`.assignments`), vit_edu/,
pyproject.toml, requirements.txt, a README.md (install, where to write, how checks work, the exercises with
their points), a Makefile, and the docs and figures the notebooks cite. It is built in a temporary folder
beside ``OUT_DIR`` and renamed into place, so a failure leaves no half-written handout.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from .._startup import OneLineParser
from ..fileio import build_folder, check_space, check_writable_dir, error_line, exit_status, folder_bytes
from .assignments import (DEFAULT_OUT, DEFAULT_SRC, PACKAGE_DIR, Exercise, _points, _read, _render, _sources, _write_atomic,
                          course_exercises, secret_lines)

HANDOUT_MARKER = ".vit_edu_handout"  # marks a folder made by `handout`, the only kind --force replaces


# ================================================================================================ handout
STUDENT_README = """\
# Vision Transformer course: your copy

You build a Vision Transformer (Dosovitskiy et al., 2020) piece by piece in the notebooks of `notebooks/`,
from `{first_stem}` to `{last}`. Everything runs offline on a laptop CPU once installed.

## Install and open (two commands)

```bash
python3 -m venv .venv && .venv/bin/pip install -r requirements.txt -e .
.venv/bin/jupyter lab notebooks/{first}
```

or just `make lab`, which does both (it adds `--allow-root`, which Jupyter needs when you are root, as in
most containers). Python 3.10 or newer. On Windows: `py -m venv .venv`, then
`.venv\\Scripts\\pip install -r requirements.txt -e .` and `.venv\\Scripts\\jupyter lab notebooks`.

## Where you write code

Each exercise starts with a cell **Exercise N (P points): title** that gives the idea and the contract
(the signature, the shapes, conventions such as the order of pixels, the errors to raise) and the paper's
equation. Stuck? Open the hints under it (click "Hint 1", "Hint 2", ...): they go from a nudge to nearly the
answer, so open one at a time. The next cell
holds the function or class to complete, with

```python
# YOUR CODE HERE
raise NotImplementedError()
```

Replace these two lines with your code; keep the names and signatures the statement gives. Put all of your
code in these answer cells: the grader runs the notebook's set-up cells (the imports at the top) and your
answer cells, not cells you add. Use only what the set-up cells import and what you wrote in earlier
exercises of the same notebook. Run the notebook from the top (Run > Run All Cells).

## How the checks work

The cell after yours is a check, e.g. `check_patchify(patchify)`; it is locked (read-only). It calls your
code on several random inputs (other sizes, batch 1, ...) and compares the values, the gradients, the dtype
and the device with the reference; it also checks that your code leaves its inputs unchanged and does what
the statement asks (errors included). A correct answer prints one line:

```
✓ check_patchify passed (N cases)
```

A wrong one stops with a single `CheckError: ...` message that names the mistake and the inputs it used;
`not implemented yet` means the stub is still there. Your teacher's grader runs your answer cells again on
fresh random inputs, so code written to fit the check's inputs fails there.

If you cannot solve an exercise yet, go on: the cells after it use the course's reference instead of your
code until its check passes (they say so in one line), so the rest of the notebook still runs.

## Predictions and experiments

A cell **Predict, then run.** asks what a measurement will show before you see it: write your guess in
`my_prediction = ...` and run on; a later cell prints your prediction next to the measured value. These are
not graded; guessing first is how the measurement teaches something.

A cell **Experiment N (P points, graded by hand): title** asks a question without one right answer: design a
small experiment in the code cell under it (`# YOUR CODE HERE`), run it, and write what you found and why in
the answer cell (`YOUR ANSWER HERE`). The statement says how it is graded; your teacher grades it by reading.

## The exercises

| notebook | exercise | points |
|---|---|---|
{table}

Total: {total} points.

## What to hand in

Your notebooks from `notebooks/`, under their names (e.g. `01_patch_embedding.ipynb`), where your teacher
says. Figures the notebooks draw go to `build/figures/`; they are not graded.

The package `vit_edu/` contains the reference implementation of every piece (the checks need it); your
teacher says whether you may read it. Copying it into your answers passes the checks but teaches nothing.
"""


STUDENT_MAKEFILE = """\
# make lab: creates .venv if missing, installs the course package, opens JupyterLab on the notebooks.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: lab install

lab: install
\t$(VENV)/bin/jupyter lab --allow-root notebooks/{first}  # --allow-root: containers often run as root

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
\ttest -x $(PY) || $(PYTHON) -m venv $(VENV)
\t$(PY) -m pip install -r requirements.txt
\t$(PY) -m pip install -e . --no-deps
\ttouch $(STAMP)
"""


HANDOUT_IGNORE = ("__pycache__", "*.pyc", "*.pyo", ".*", "*.egg-info", "*~")


# a repository file a notebook's text points a learner to ("docs/training.md tells how ..."): copied into the
# handout at the same place, so every such pointer resolves there too
CITED_FILE = re.compile(r"(?<![\w/.])((?:docs|figures)/[\w.-]+\.(?:md|png))")


def package_files() -> List[Path]:
    """The files of vit_edu/ a handout carries: those git tracks in a checkout (a teacher's untracked scratch, say
    ``vit_edu/my_answers.py``, stays home), else every file but caches and hidden ones."""
    root = PACKAGE_DIR.parent
    try:
        run = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--", PACKAGE_DIR.name], capture_output=True,
                             text=True, timeout=60)
        tracked = [root / f for f in run.stdout.split("\0") if f] if run.returncode == 0 else []
    except (OSError, subprocess.SubprocessError):
        tracked = []
    if tracked:
        return sorted(p for p in tracked if p.is_file())
    ignore = shutil.ignore_patterns(*HANDOUT_IGNORE)
    files = []
    for folder, dirs, names in os.walk(PACKAGE_DIR):
        dirs[:] = [d for d in dirs if not ignore(folder, [d])]
        files += [Path(folder) / n for n in names if not ignore(folder, [n])]
    return sorted(files)


def cited_files(texts: Sequence[str]) -> List[str]:
    """The repository files (docs/*.md, figures/*.png) the notebooks' texts name, sorted."""
    return sorted({m.group(1) for text in texts for m in CITED_FILE.finditer(text)})


def student_readme(exercises: Sequence[Tuple[str, Exercise]], notebooks: Sequence[str]) -> str:
    """The handout's README.md: install, where to write, how checks work, the exercises with their points."""
    rows = [(nb, ex.number, ex.title.replace("|", "\\|"), _points(ex.points)) for nb, ex in exercises]  # '|' ends a cell
    table = "\n".join(f"| {nb} | {number}: {title} | {points} |" for nb, number, title, points in rows)
    return STUDENT_README.format(first=notebooks[0], first_stem=Path(notebooks[0]).stem,
                                 last=Path(notebooks[-1]).stem, table=table,
                                 total=_points(sum(ex.points for _, ex in exercises)))


def handout(out_dir: "str | Path", src_dir: "str | Path" = DEFAULT_SRC, force: bool = False) -> Path:
    """Write the student handout to ``out_dir``: notebooks/ (student copies), vit_edu/, pyproject.toml,
    requirements.txt, README.md, Makefile and the docs the notebooks cite (docs/training.md); nothing else from
    the repository (no teacher notebooks, no tests).

    Refuses a non-empty ``out_dir`` unless ``force`` and it is a previous handout; the handout is built in a
    temporary folder beside it and renamed into place, so a failure leaves no half-written handout.
    """
    out = Path(out_dir).absolute()
    root = PACKAGE_DIR.parent
    src = Path(src_dir)
    real = Path(os.path.realpath(out))  # where it lands: '..' and links followed, as the copy will
    shown = str(out) if real == out else f"{out} (that is {real})"
    for inside in (PACKAGE_DIR, Path(os.path.realpath(src))):
        if real == inside or inside in real.parents:
            raise ValueError(f"{shown} is inside {inside}; choose a folder outside the package and the notebooks")
    if real == root or real in root.parents:
        raise ValueError(f"{shown} holds the repository; choose another folder")
    for name in ("pyproject.toml", "requirements.txt"):
        if not (root / name).is_file():
            raise FileNotFoundError(f"{root / name} not found: make the handout from the course repository "
                                    f"(vit_edu installed with pip install -e .)")
    if out.exists():
        if not out.is_dir():
            raise NotADirectoryError(f"{out} exists and is not a folder")
        if any(out.iterdir()):
            if not force:
                raise FileExistsError(f"{out} is not empty; choose an empty or new folder, or --force to replace "
                                      f"a previous handout")
            if not (out / HANDOUT_MARKER).is_file():
                raise FileExistsError(f"{out} is not empty and is not a handout made by this command (no "
                                      f"{HANDOUT_MARKER}); refusing to replace it, even with --force")
    sources = _sources(src)
    students = {path.name: _render(path) for path in sources}  # ValueError naming the cell if a solution is left
    exercises = course_exercises(src)
    cited = cited_files(students.values())
    missing = [name for name in cited if not (root / name).is_file()]
    if missing:
        raise FileNotFoundError(f"the notebooks point to {', '.join(missing)}, which {root} does not have; "
                                f"expected every cited file to exist so the handout can carry it")
    secrets = {line: p.name for p in sources for line in secret_lines(_read(p), p.name)}
    for name in (n for n in cited if n.endswith(".md")):  # the docs travel with the handout: no answer in them
        for number, line in enumerate((root / name).read_text(encoding="utf-8").split("\n"), start=1):
            if line.strip() in secrets:
                raise ValueError(f"{name}, line {number}: {line.strip()[:80]!r} is a solution line of "
                                 f"{secrets[line.strip()]}; the handout carries {name}, so expected no answer in it")

    check_writable_dir(out, "handout folder")
    check_writable_dir(out.parent, f"handout folder {out}: the folder it goes in,")
    need = folder_bytes(PACKAGE_DIR) + sum(len(t.encode("utf-8")) + 64 * 1024 for t in students.values())
    check_space([(out, need + sum((root / name).stat().st_size for name in cited), "handout folder")])

    def build(tmp: Path) -> None:
        for name, text in students.items():
            _write_atomic(tmp / "notebooks" / name, text)
        for path in package_files():
            target = tmp / "vit_edu" / path.relative_to(PACKAGE_DIR)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
        for name in ("pyproject.toml", "requirements.txt", *cited):
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / name, tmp / name)
        names = sorted(students)
        (tmp / "README.md").write_text(student_readme(exercises, names), encoding="utf-8")
        (tmp / "Makefile").write_text(STUDENT_MAKEFILE.format(first=names[0]), encoding="utf-8")
        (tmp / HANDOUT_MARKER).write_text("made by: python -m vit_edu handout (safe to replace with --force)\n",
                                          encoding="utf-8")

    return build_folder(out, build)


def handout_main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m vit_edu handout OUT_DIR [--src notebooks] [--force]``."""
    parser = OneLineParser(
        prog="python -m vit_edu handout",
        description="Write what students get: the student notebooks (no solutions), the vit_edu package, "
                    "pyproject.toml, requirements.txt, a student README and Makefile, and the docs/ and figures/ files "
                    "the notebooks cite; nothing else.")
    parser.add_argument("out_dir", help="an empty or new folder")
    parser.add_argument("--src", default=DEFAULT_SRC, help=f"teacher notebooks (default: {DEFAULT_SRC})")
    parser.add_argument("--force", action="store_true", help="replace a previous handout in OUT_DIR")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        out = handout(args.out_dir, args.src, force=args.force)
    except (OSError, ValueError, AssertionError) as e:  # OSError: also an unwritable or full disk, found up front
        print(f"vit_edu handout: error: {error_line(e)}", file=sys.stderr)
        return exit_status(e)
    n = len(list((out / "notebooks").glob("*.ipynb")))
    total = sum(ex.points for _, ex in course_exercises(args.src))
    cited = sorted(str(p.relative_to(out)) for d in ("docs", "figures") if (out / d).is_dir()
                   for p in (out / d).iterdir())
    print(f"wrote the handout to {out}: {n} student notebooks ({_points(total)} points), vit_edu/, README.md, "
          f"Makefile, pyproject.toml, requirements.txt" + "".join(f", {name}" for name in cited))
    differ = unlike_reference(out, Path(args.src))
    if differ:
        print(f"warning: {DEFAULT_OUT}, what `grade` grades against by default, differs from this handout in "
              f"{', '.join(differ[:3])}{', ...' if len(differ) > 3 else ''} (points, exercises or cells): run "
              f"python -m vit_edu assignments before grading", file=sys.stderr)
    left = untracked_modules()
    if left:
        print(f"warning: {', '.join(left[:3])}{', ...' if len(left) > 3 else ''} not tracked by git, so not in the "
              f"handout: git add it if the package imports it (the handout's vit_edu would fail to import)",
              file=sys.stderr)
    return 0


def untracked_modules() -> List[str]:
    """The .py files in vit_edu/ that git neither tracks nor ignores: :func:`package_files` leaves them home (a
    teacher's scratch), which breaks the handout's package where a new module was only not committed yet."""
    try:
        run = subprocess.run(["git", "-C", str(PACKAGE_DIR.parent), "ls-files", "-z", "--others", "--exclude-standard",
                              "--", PACKAGE_DIR.name], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return []
    return sorted(f for f in run.stdout.split("\0") if f.endswith(".py")) if run.returncode == 0 else []


def unlike_reference(out: Path, src: Path) -> List[str]:
    """The handout's notebooks whose copy in the repository's assignments/student (the grader's default
    reference) is missing or other: the course's notebooks changed since ``assignments`` last ran."""
    reference = PACKAGE_DIR.parent / DEFAULT_OUT
    if not reference.is_dir() or src.resolve() != (PACKAGE_DIR.parent / DEFAULT_SRC).resolve():
        return []
    mine = sorted((out / "notebooks").glob("*.ipynb"))
    return [p.name for p in mine if not (reference / p.name).is_file()
            or (reference / p.name).read_bytes() != p.read_bytes()]
