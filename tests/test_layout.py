"""The package's layout as the README's Architecture section draws it: the model at the top of vit_edu/, the
tooling in rooms (training/, explain/, classroom/, convert.py, the command line), imports pointing one way.

The imports are read from the source (every ``import``/``from`` statement, also those inside functions), so a
lazy import that points the wrong way is caught too.
"""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

import vit_edu

PACKAGE = Path(vit_edu.__file__).parent
MODEL = {"config", "patch_embed", "pos_embed", "attention", "block", "vit", "hybrid", "models"}
ROOMS = {"training", "explain", "classroom"}
MOVED = {  # removed old path -> where it lives (CHANGELOG.md, 0.2.0)
    "train": "vit_edu.training", "data": "vit_edu.training.data",
    "analysis": "vit_edu.explain.analysis", "viz": "vit_edu.explain.viz",
    "grading": "vit_edu.classroom.grading", "assignments": "vit_edu.classroom.assignments",
}
OLD_PATHS = {f"vit_edu.{old}" for old in MOVED}


def _name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set:
    """Every vit_edu module this file imports, as dotted names (``from . import x`` -> the submodule x)."""
    tree = ast.parse(path.read_text())
    here = _name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "vit_edu"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.split(".")[0] == "vit_edu":
                target = node.module
            else:
                continue
            for alias in node.names:  # `from pkg import submodule` imports the submodule
                candidate = f"{target}.{alias.name}"
                sub = PACKAGE.parent / Path(*candidate.split("."))
                out.add(candidate if sub.with_suffix(".py").exists() or (sub / "__init__.py").exists() else target)
    return out


def _room(module: str) -> str:
    """The box of the README's diagram a module belongs to."""
    parts = module.split(".")
    if len(parts) == 1:
        return "vit_edu (package facade)"
    if parts[1] in ROOMS:
        return parts[1]
    if parts[1] == "checks":
        return "classroom"  # the classroom's front door, at the top so students type vit_edu.checks
    return parts[1] if parts[1] not in MODEL else f"model:{parts[1]}"


def _graph() -> dict:
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        module = _name(path)
        graph[module] = _imports(path)
    return graph


def test_the_model_imports_only_the_model():
    graph = _graph()
    for module in sorted(MODEL):
        wrong = sorted(m for m in graph[f"vit_edu.{module}"] if m.split(".")[1] not in MODEL)
        assert not wrong, f"vit_edu/{module}.py is part of the model but imports the tooling: {wrong}"


def test_nothing_imports_a_removed_path():
    for path in PACKAGE.rglob("*.py"):
        old = sorted(_imports(path) & OLD_PATHS)
        assert not old, f"{path.relative_to(PACKAGE.parent)} imports the removed path(s) {old}"


def _find_cycle(edges: dict):
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(edges):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_rooms_import_one_way():
    """Room-level graph (model modules one by one, each tooling room as one box) has no cycle."""
    rooms: dict = {}
    for module, targets in _graph().items():
        room = _room(module)
        if room.startswith("vit_edu ("):
            continue  # the package's __init__ re-exports names; it is not a room
        rooms.setdefault(room, set()).update(_room(t) for t in targets if _room(t) != room
                                             and not _room(t).startswith("vit_edu ("))
    assert _find_cycle(rooms) is None, f"import cycle between rooms: {' -> '.join(_find_cycle(rooms))}"
    assert "model:vit" in rooms and "training" in rooms["__main__"]


@pytest.mark.parametrize("old, new", sorted(MOVED.items()))
def test_old_paths_are_gone_and_the_new_ones_import(old, new):
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(f"vit_edu.{old}")
    importlib.import_module(new)


def test_the_top_of_the_package_carries_the_model():
    """At most 13 modules at the top of vit_edu/ (the model's eight, checks, convert, fileio, the command line and
    its start-up); the tooling lives in its rooms."""
    top = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")
    assert len(top) <= 13, top
    assert set(MODEL) <= set(top)


def test_no_import_cycle_between_modules():
    """Module by module (lazy and type-only imports included): no module's imports lead back to it."""
    cycle = _find_cycle(_graph())
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


# The public names a learner or a teacher types: a reshaping of the package must leave them as they are.
PUBLIC = ['Attention', 'Block', 'DropPath', 'HybridEmbed', 'LinearPatchEmbed', 'Mlp', 'PRESETS', 'PatchEmbed',
          'ResNetBackbone', 'ViTConfig', 'VisionTransformer', 'attention_with_weights', 'conv_to_linear_',
          'create_model', 'from_timm', 'from_torchvision', 'get_config', 'linear_to_conv_', 'list_models',
          'load_state_dict_file', 'patchify', 'resize_pos_embed', 'scaled_dot_product_attention',
          'sincos_2d_pos_embed', 'timm_pretrained', 'unpatchify']
CHECKS_PUBLIC = ['CHECKS', 'CheckError', 'Verdict', 'judge', 'passed_or', 'probe', 'reveal'] + [
    f"check_{n}" for n in ("attention", "bottleneck", "cls_and_pos", "encoder_block", "layer_norm", "lr_schedule",
                           "mean_attention_distance", "mlp", "multi_head_attention", "param_count",
                           "patch_embedding", "patchify", "pos_embed_similarity", "resize_pos_embed", "rollout",
                           "sincos_2d", "train_step", "vit_forward")]


def test_public_names_are_unchanged():
    """vit_edu's names exactly; vit_edu.checks keeps every name it had (a new exercise adds its check)."""
    import vit_edu.checks

    assert sorted(vit_edu.__all__) == sorted(PUBLIC)
    assert set(CHECKS_PUBLIC) <= set(vit_edu.checks.__all__)
    assert all(hasattr(vit_edu, n) for n in PUBLIC) and all(hasattr(vit_edu.checks, n) for n in vit_edu.checks.__all__)


def test_an_exercise_is_one_table_entry():
    """Every entry of an exercise table is a check of vit_edu.checks, with nothing else to write: the tables
    are the only place that names them (the checks module lists none), and each check runs its own entry."""
    import pkgutil

    import vit_edu.checks
    import vit_edu.classroom as classroom

    tables = {}
    for info in pkgutil.iter_modules(classroom.__path__):
        if info.name.startswith("exercises_"):
            tables.update(importlib.import_module(f"vit_edu.classroom.{info.name}").EXERCISES)
    assert tables == vit_edu.checks.CHECKS, "vit_edu/checks.py gathers every table of vit_edu/classroom/exercises_*.py"
    text = (PACKAGE / "checks.py").read_text()
    for name, ex in tables.items():
        check = getattr(vit_edu.checks, f"check_{name}")
        assert f"check_{name}" in vit_edu.checks.__all__
        assert check.__doc__ == ex.doc and check.__name__ == f"check_{name}"
        assert f'"{name}"' not in text, f"vit_edu/checks.py names the exercise {name!r}; the table is enough"


def test_the_exercise_example_of_the_docs_works_as_written():
    """docs/classroom.md's one-page exercise runs as printed: the right answer passes, each mistake is named
    with the words the page shows, and a wrong answer that is no usual mistake still fails."""
    from vit_edu.classroom.engine import CheckError
    from vit_edu.classroom.judge import run_check

    page = (PACKAGE.parent / "docs" / "classroom.md").read_text(encoding="utf-8")
    section = page.split("### An exercise, whole", 1)[1]
    code, shown = re.findall(r"```(?:python)?\n(.*?)```", section, re.S)[:2]
    scope: dict = {}
    exec(compile(code, "docs/classroom.md", "exec"), scope)
    ex = scope["MEAN_POOL_EX"]
    assert ex.package == ("vit_edu.vit.VisionTransformer.pool",)
    run_check(ex, lambda tokens: tokens[:, 1:].mean(dim=1))
    with pytest.raises(CheckError) as err:
        run_check(ex, lambda tokens: tokens.mean(dim=1))
    assert f"CheckError: {err.value}".strip() == shown.strip()
    with pytest.raises(CheckError, match=r"the class token \(tokens\[:, 0\]\)"):
        run_check(ex, lambda tokens: tokens[:, 0])
    with pytest.raises(CheckError, match="none of the usual mistakes"):
        run_check(ex, lambda tokens: tokens[:, 1:].sum(dim=1))
    # "Add MEAN_POOL_EX to a table's EXERCISES and check_mean_pool works": in a fresh interpreter
    script = (code + "\nimport vit_edu.classroom.exercises_look as table\ntable.EXERCISES['mean_pool'] = MEAN_POOL_EX\n"
              "from vit_edu.checks import check_mean_pool, __all__\nassert 'check_mean_pool' in __all__\n"
              "check_mean_pool(lambda tokens: tokens[:, 1:].mean(dim=1))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "check_mean_pool passed" in done.stdout, done.stderr[-2000:]


def test_the_readme_architecture_names_every_module():
    """README's Architecture map tells the import graph's story: every module of vit_edu is on it, in its room,
    nothing on it is missing from the package, and the number of exercises it states is CHECKS's."""
    import vit_edu.checks

    readme = (PACKAGE.parent / "README.md").read_text(encoding="utf-8")
    drawing = readme.split("## Architecture", 1)[1].split("```", 2)[1]
    rooms = {"training/": "training", "explain/": "explain", "classroom/": "classroom"}
    placed, room = set(), ""
    for line in drawing.splitlines():
        room = next((r for key, r in rooms.items() if f"+-- {key}" in line), room if line.startswith("  |   ") else "")
        for name in re.findall(r"\b([a-z_]+(?:_\*)?)\.py\b", line):
            placed.add(f"{room}/{name}" if room and not line.lstrip(" |").startswith("(") else name)
    modules = {str(p.relative_to(PACKAGE).with_suffix("")) for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"}
    modules = {m if not m.startswith("classroom/exercises_") else "classroom/exercises_*" for m in modules}
    assert modules - placed == set(), f"modules missing from README's Architecture: {sorted(modules - placed)}"
    gone = sorted(placed - modules)
    assert not gone, f"README's Architecture names modules that do not exist: {gone}"
    stated = re.search(r"the (\d+) exercises as tables", drawing)
    assert stated and int(stated.group(1)) == len(vit_edu.checks.CHECKS)


def test_no_module_is_over_700_lines():
    """A teacher who audits a piece reads one module of at most 700 lines (issue: the lesson outweighs the
    machinery)."""
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 700}
    assert not long, long
