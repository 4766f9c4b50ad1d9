"""Solution regions: what a teacher's cell keeps from students, and the checks that nothing of it reaches them.

A teacher marks the code a student writes with nbgrader's whole-line markers; :func:`_strip_solution` replaces
each region by nbgrader's stub, :func:`_check_stub` makes sure the stubbed cell still runs (so the cells after
a stuck exercise run too), and :func:`leaked_lines` looks for solution lines anywhere in a student copy
(sources, outputs, metadata, attachments). :mod:`.assignments` and :mod:`.handout` use them.
"""

from __future__ import annotations

import ast
import re
from typing import List, Sequence, Tuple

import nbformat

BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"
STUB = ("# YOUR CODE HERE", "raise NotImplementedError()")  # nbgrader's default code stub
TEXT_STUB = ("YOUR ANSWER HERE",)  # nbgrader's default for markdown cells
# nbgrader reads any line holding these words as a marker: one that is not exactly BEGIN/END is refused, never
# copied to students as it stands (nbgrader's hidden tests are not supported: the grader draws its own cases)
NEAR_MARKER_RE = re.compile(r"(BEGIN|END) (SOLUTION|HIDDEN TESTS)")


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
        elif NEAR_MARKER_RE.search(line):
            raise ValueError(f"{where}, line {i}: {marker[:80]!r} is not a marker of this course; expected "
                             f"'{BEGIN}' or '{END}' alone on its line (nbgrader would read it as a marker; "
                             f"hidden tests are not supported: they would reach the students)")
        elif inside:
            removed.append(line)
        else:
            out.append(line)
    if inside:
        raise ValueError(f"{where}: '{BEGIN}' at line {begin_line} has no matching '{END}'")
    return "\n".join(out), removed


def _has_region(source: str) -> bool:
    return any(line.strip() == BEGIN for line in source.split("\n"))


def solution_lines(nb: nbformat.NotebookNode, name: str = "<notebook>") -> List[str]:
    """Every line inside a solution region of ``nb`` (what must not reach a student)."""
    lines: List[str] = []
    for index, cell in enumerate(nb.cells):
        lines += _strip_solution(cell.source, f"{name}, cell {index}")[1]
    return lines


def _strings(value) -> List[str]:
    """Every string inside ``value`` (a cell or metadata: source, outputs, metadata, attachments)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in _strings(k) + _strings(v)]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in _strings(v)]
    return []


def leaked_lines(source_nb: nbformat.NotebookNode, student_nb: nbformat.NotebookNode,
                 name: str = "<notebook>") -> List[str]:
    """Solution lines of ``source_nb`` found anywhere in ``student_nb``: a cell's source, outputs, metadata or
    attachments, the notebook's metadata (a line the source also has outside any region, such as ``return x``,
    is not a leak)."""
    return [line for _, line in _leaks(source_nb, student_nb, name)]


def secret_lines(nb: nbformat.NotebookNode, name: str = "<notebook>") -> set:
    """The stripped lines that only ``nb``'s solution regions hold: none of them may reach a student."""
    solution = {l.strip() for l in solution_lines(nb, name) if l.strip()}
    return solution - {l.strip() for c in nb.cells for l in _strip_solution(c.source, name)[0].split("\n")}


def _leaks(source_nb: nbformat.NotebookNode, student_nb: nbformat.NotebookNode, name: str) -> List[Tuple[str, str]]:
    """(where, line) of every solution line of ``source_nb`` in ``student_nb``; where: 'cell N' or 'notebook'."""
    secret = secret_lines(source_nb, name)
    places = [(f"cell {i}", c) for i, c in enumerate(student_nb.cells)] + [("notebook", student_nb.metadata)]
    return [(where, l) for where, part in places for s in _strings(part) for l in s.split("\n")
            if l.strip() in secret]


def _check_stub(source: str, where: str) -> None:
    """The student's version of an answer cell must run: valid Python whose stub raises only when its function is
    called (a stub raising at the top of the cell, or in a class body, would leave the names undefined and break
    every later cell that uses them)."""
    stub = _strip_solution(source, where)[0]
    try:
        tree = ast.parse(stub)
    except SyntaxError as e:
        try:
            ast.parse(source)
        except SyntaxError:
            return  # not plain Python (IPython magics): the teacher's own cell is not ours to judge
        raise ValueError(f"{where}: the student copy of this answer cell is not valid Python ({e.msg}, line "
                         f"{e.lineno}: {(e.text or '').strip()!r}); a solution region must hold whole statements")

    def at_top(node: ast.AST) -> List[ast.AST]:  # nodes that run when the cell runs (not inside a def)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            return []
        return [node] + [n for child in ast.iter_child_nodes(node) for n in at_top(child)]

    lines = stub.split("\n")

    def is_stub(node: ast.AST) -> bool:
        return isinstance(node, ast.Raise) and lines[node.lineno - 1].strip() == STUB[1]

    stubbed = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))
               and any(is_stub(r) for r in ast.walk(n))}
    for node in at_top(tree):
        if is_stub(node):
            raise ValueError(f"{where}: a solution region outside a function body: its stub '{STUB[1]}' would "
                             f"raise when the cell runs (line {node.lineno} of the student copy), leaving the "
                             f"cell's names undefined for the cells after it; put the region inside a def")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in stubbed:
            raise ValueError(f"{where}, line {node.lineno}: {node.func.id}(...) is called when the cell runs; in the "
                             f"student copy it raises NotImplementedError there and the names after it stay "
                             f"undefined; call it in the check cell or in a later cell (through passed_or)")
