"""Student copies of the course notebooks: every solution region becomes a stub to fill in.

The source notebooks mark the code a student should write with whole-line markers (nbgrader's convention,
so a teacher using nbgrader can take the source notebooks as they are)::

    def patchify(images, patch_size):
        ### BEGIN SOLUTION
        return rearrange(images, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=patch_size, p2=patch_size)
        ### END SOLUTION

becomes, in the student copy::

    def patchify(images, patch_size):
        # YOUR CODE HERE
        raise NotImplementedError()

In a markdown cell the region becomes ``YOUR ANSWER HERE``. Outputs and execution counts are cleared,
so students start from a clean notebook. Every notebook is copied (with or without exercises) so the
numbering of the course stays the same.

    python -m vit_edu assignments [--src notebooks] [--out assignments/student] [--check]
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import nbformat

BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"
STUB = ("# YOUR CODE HERE", "raise NotImplementedError()")  # nbgrader's default code stub
TEXT_STUB = ("YOUR ANSWER HERE",)  # nbgrader's default for markdown cells
DEFAULT_SRC = "notebooks"
DEFAULT_OUT = "assignments/student"


def _strip_solution(source: str, where: str, stub: Sequence[str] = STUB) -> Tuple[str, List[str]]:
    """Replace each BEGIN/END region of one cell by the stub; return (new source, the removed lines)."""
    out: List[str] = []
    removed: List[str] = []
    inside = False
    begin_line = 0
    lines = source.split("\n")
    for i, line in enumerate(lines, start=1):
        marker = line.strip()
        if marker == BEGIN:
            if inside:
                raise ValueError(f"{where}: nested '{BEGIN}' at line {i} (the region opened at line {begin_line} "
                                 f"has no '{END}' yet)")
            inside, begin_line = True, i
            indent = line[: len(line) - len(line.lstrip())]
            out.extend(indent + s for s in stub)
        elif marker == END:
            if not inside:
                raise ValueError(f"{where}: '{END}' at line {i} without a matching '{BEGIN}'")
            inside = False
        elif inside:
            removed.append(line)
        else:
            out.append(line)
    if inside:
        raise ValueError(f"{where}: '{BEGIN}' at line {begin_line} has no matching '{END}'")
    return "\n".join(out), removed


def solution_lines(nb: nbformat.NotebookNode, name: str = "<notebook>") -> List[str]:
    """Every line inside a solution region of ``nb`` (what must not reach a student)."""
    lines: List[str] = []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type in ("code", "markdown"):
            lines += _strip_solution(cell.source, f"{name}, cell {index}")[1]
    return lines


def has_exercises(nb: nbformat.NotebookNode) -> bool:
    return any(cell.cell_type == "code" and any(l.strip() == BEGIN for l in cell.source.split("\n"))
               for cell in nb.cells)


def make_student_notebook(nb: nbformat.NotebookNode, name: str = "<notebook>") -> nbformat.NotebookNode:
    """A copy of ``nb`` with every solution region replaced by the stub, outputs and counts cleared.

    ``name`` only labels error messages (e.g. unpaired markers: ValueError naming the notebook and cell).
    """
    if not isinstance(nb, nbformat.NotebookNode):
        raise TypeError(f"make_student_notebook expects an nbformat NotebookNode, got {type(nb).__name__}")
    student = copy.deepcopy(nb)
    for index, cell in enumerate(student.cells):
        if cell.cell_type == "markdown":  # a written answer, as nbgrader does
            cell.source = _strip_solution(cell.source, f"{name}, cell {index}", TEXT_STUB)[0]
        if cell.cell_type != "code":
            continue
        cell.source = _strip_solution(cell.source, f"{name}, cell {index}")[0]
        cell.outputs = []
        cell.execution_count = None
        cell.metadata.pop("execution", None)  # run timestamps from the teacher's machine
    return student


def _render(path: Path) -> str:
    nb = nbformat.read(path, as_version=4)
    text = nbformat.writes(make_student_notebook(nb, path.name))
    return text if text.endswith("\n") else text + "\n"


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _sources(src_dir: Path) -> List[Path]:
    if not src_dir.is_dir():
        raise FileNotFoundError(f"source folder not found: {src_dir}")
    return sorted(p for p in src_dir.glob("*.ipynb") if not p.name.startswith("."))


def render_all(src_dir: "str | Path" = DEFAULT_SRC) -> Dict[str, str]:
    """{file name: student notebook JSON} for every notebook in ``src_dir``, in memory."""
    return {p.name: _render(p) for p in _sources(Path(src_dir))}


def generate(src_dir: "str | Path" = DEFAULT_SRC, out_dir: "str | Path" = DEFAULT_OUT) -> List[Path]:
    """Write the student copy of every notebook in ``src_dir`` to ``out_dir``; returns the written paths.

    Copies whose source notebook no longer exists are removed, so ``out_dir`` mirrors ``src_dir``.
    """
    out = Path(out_dir)
    rendered = render_all(src_dir)
    written = []
    for name, text in rendered.items():
        path = out / name
        _write_atomic(path, text)
        written.append(path)
    if out.is_dir():
        for stale in out.glob("*.ipynb"):
            if stale.name not in rendered:
                stale.unlink()
    return written


def stale(src_dir: "str | Path" = DEFAULT_SRC, out_dir: "str | Path" = DEFAULT_OUT) -> List[str]:
    """What differs between the committed student copies and a fresh generation (empty list: up to date)."""
    out = Path(out_dir)
    rendered = render_all(src_dir)
    problems = []
    for name, text in rendered.items():
        path = out / name
        if not path.exists():
            problems.append(f"missing: {path}")
        elif path.read_text(encoding="utf-8") != text:
            problems.append(f"out of date: {path}")
    if out.is_dir():
        problems += [f"no source notebook: {p}" for p in sorted(out.glob("*.ipynb")) if p.name not in rendered]
    return problems


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m vit_edu assignments [--src notebooks] [--out assignments/student] [--check]``."""
    parser = argparse.ArgumentParser(
        prog="python -m vit_edu assignments",
        description="Make student copies of the course notebooks: solution regions (### BEGIN SOLUTION ... "
                    "### END SOLUTION) become '# YOUR CODE HERE / raise NotImplementedError()', outputs cleared.")
    parser.add_argument("--src", default=DEFAULT_SRC, help=f"source notebooks (default: {DEFAULT_SRC})")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"where the student copies go (default: {DEFAULT_OUT})")
    parser.add_argument("--check", action="store_true",
                        help="do not write; exit 1 if the student copies in --out are out of date")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        if args.check:
            problems = stale(args.src, args.out)
            if problems:
                print(f"student notebooks in {args.out} are stale ({len(problems)} problem(s)); "
                      f"regenerate with: python -m vit_edu assignments --src {args.src} --out {args.out}")
                for p in problems:
                    print(f"  {p}")
                return 1
            print(f"student notebooks in {args.out} are up to date")
            return 0
        paths = generate(args.src, args.out)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    n_ex = sum(has_exercises(nbformat.read(Path(args.src) / p.name, as_version=4)) for p in paths)
    print(f"wrote {len(paths)} student notebooks ({n_ex} with exercises) to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
