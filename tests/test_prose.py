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
    "06_training.ipynb": {"0.03": "the paper's weight decay for ImageNet-21k pre-training (its Table 3)"},
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


# ------------------------------------------------------------------------------------------------------------
# README.md and docs/*.md: a number in their prose is read here from its source of truth (the code, the shipped
# checkpoint, the notebooks' stored runs) and compared. A changed source, or a reworded sentence, fails here:
# then update the sentence (or the pattern, to the new wording).

WORDS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10}


def _prose(name: str) -> str:
    """A doc's text with every run of whitespace squeezed to one space, so wrapped lines read as one."""
    return " ".join((ROOT / name).read_text(encoding="utf-8").split())


def _all(pattern: str, name: str) -> list:
    found = re.findall(pattern, _prose(name))
    assert found, f"{name} no longer has the sentence {pattern!r}; update the pattern to the new wording"
    return found


def _int(text: str) -> int:
    return int(text.replace(",", ""))


def test_readme_preset_parameter_counts_are_the_models() -> None:
    """'With 1000 classes the parameter counts are exact: B/16 86,567,656; ...': each preset built on the meta
    device (no memory) and counted."""
    import torch

    import vit_edu

    short = {"Ti/16": "vit_tiny_patch16_224", "S/16": "vit_small_patch16_224", "B/16": "vit_base_patch16_224",
             "B/32": "vit_base_patch32_224", "L/16": "vit_large_patch16_224", "L/32": "vit_large_patch32_224",
             "H/14": "vit_huge_patch14_224", "R50+B/16": "vit_base_r50_s16_224"}
    sentence = _all(r"With 1000 classes the parameter counts are exact: ([^.]*)\.", "README.md")[0]
    stated = dict(re.findall(r"([\w+]+/\d+) ([\d,]+)", sentence))
    assert set(stated) == set(short), f"README names {sorted(stated)}; the test knows {sorted(short)}"
    for name, preset in short.items():
        with torch.device("meta"):
            model = vit_edu.create_model(preset)
        assert model.config.num_classes == 1000
        assert _int(stated[name]) == sum(p.numel() for p in model.parameters()), name


def test_readme_names_every_vit_config_field() -> None:
    """The README's `ViTConfig` bullet lists the fields a preset can override: all of them, and no other."""
    import dataclasses

    import vit_edu

    bullet = _all(r"\* `ViTConfig`: (.*?)\* Presets:", "README.md")[0]
    named = set(re.findall(r"(?:^|, )([a-z_]+)(?= |,|\(|$)", bullet))
    fields = {f.name for f in dataclasses.fields(vit_edu.ViTConfig)}
    assert fields <= named, f"README's ViTConfig bullet misses {sorted(fields - named)}"
    assert named <= fields, f"README's ViTConfig bullet names what ViTConfig lacks: {sorted(named - fields)}"


def test_shipped_checkpoint_numbers_in_the_docs() -> None:
    """Its parameter count, file size and recorded accuracy, and the shape of the preset, as README.md and
    docs/training.md state them."""
    from vit_edu.training import COURSE_CHECKPOINT, pretrained_course_model

    model, info = pretrained_course_model()
    c = model.config
    count = sum(p.numel() for p in model.parameters())
    kb = round(COURSE_CHECKPOINT.stat().st_size / 1000)
    for name in ("README.md", "docs/training.md"):
        for params, size in _all(r"([\d,]+) parameters, (\d+) KB", name):
            assert (_int(params), int(size)) == (count, kb), f"{name}: {params} parameters, {size} KB"
    patch, grid, depth, width = _all(r"`vit_course_patch4_32`: (\d+)x\d+ patches, (\d+)x\d+ grid, class token, "
                                     r"learned 1-D positions, (\d+) layers of width (\d+)", "README.md")[0]
    assert (int(patch), int(grid), int(depth), int(width)) == (c.patch_size[0], c.grid_size[0], c.depth, c.dim)
    depth, width, heads, mlp = _all(r"(\d+) pre-norm blocks of width (\d+) with (\d+) heads, MLP (\d+)",
                                    "docs/training.md")[0]
    assert (int(depth), int(width), int(heads), int(mlp)) == (c.depth, c.dim, c.heads, c.mlp_dim)
    (acc,) = _all(r"Final test accuracy on the default test set \([^)]*\): ([\d.]+) %", "docs/training.md")
    assert float(acc) == round(100 * info["test_acc"], 2)


def test_exercise_counts_in_the_docs_are_the_course() -> None:
    """'18 checked exercises (43 points', '... grades only the 43 points of the checked exercises'."""
    from vit_edu.classroom.assignments import course_exercises

    exercises = course_exercises(ROOT / "notebooks")
    n, points = len(exercises), sum(ex.points for _, ex in exercises)
    stated = _all(r"(\d+) checked exercises \((\d+) points", "README.md") + \
        _all(r"(\d+) checked exercises worth (\d+) points", "README.md")
    assert {(int(a), int(b)) for a, b in stated} == {(n, points)}, stated
    for name in ("README.md", "docs/classroom.md"):
        assert {int(p) for p in _all(r"(\d+) points of the checked exercises", name)} == {points}, name


# How the README's list of the course's exercises names each one (in the course's order)
README_EXERCISE_NAMES = {
    "param_count": "a parameter count", "patchify": "patchify", "patch_embedding": "the patch embedding",
    "cls_and_pos": "the class token", "sincos_2d": "2-D sin-cos", "attention": "attention",
    "multi_head_attention": "multi-head attention", "layer_norm": "LayerNorm", "mlp": "the MLP",
    "encoder_block": "the encoder block", "vit_forward": "the forward pass", "lr_schedule": "a learning-rate schedule",
    "train_step": "a training step", "rollout": "rollout", "mean_attention_distance": "mean attention distance",
    "pos_embed_similarity": "position-embedding similarity", "resize_pos_embed": "resizing",
    "bottleneck": "the hybrid's bottleneck",
}


def test_the_readmes_list_of_exercises_is_the_course() -> None:
    """'18 checked exercises (43 points, at least one in each of notebooks 00-09: a parameter count, patchify, ...)':
    every exercise of the notebooks, in their order, and nothing else."""
    from vit_edu.classroom.assignments import course_exercises

    exercises = course_exercises(ROOT / "notebooks")
    assert [ex.check for _, ex in exercises] == list(README_EXERCISE_NAMES), "a new exercise: name it in README.md"
    notebooks = sorted({nb[:2] for nb, _ in exercises})
    first, last = notebooks[0], notebooks[-1]
    (listed,) = _all(rf"\d+ checked exercises \(\d+ points, at least one in each of notebooks {first}-{last}: "
                     r"(.*?)\) state a contract", "README.md")
    names = list(README_EXERCISE_NAMES.values())
    names[-3:-1] = [f"{names[-3]} and {names[-2]}"]  # "position-embedding similarity and resizing"
    assert " ".join(listed.split()) == ", ".join(names), listed


def _stored_seconds(nb: dict) -> float:
    """Wall time of the notebook's stored run: first cell started to last cell done (nbclient's cell timings)."""
    from datetime import datetime

    stamps = [datetime.fromisoformat(t.replace("Z", "+00:00")) for c in nb["cells"] if c["cell_type"] == "code"
              for k, t in c.get("metadata", {}).get("execution", {}).items()
              if k in ("iopub.execute_input", "shell.execute_reply")]
    assert stamps, "no cell timings stored: re-run the notebook with `make notebooks`"
    return (max(stamps) - min(stamps)).total_seconds()


def test_readme_notebook_run_times_are_the_stored_runs() -> None:
    """'Each notebook runs top to bottom in under five minutes ...: notebook 06 ... takes longest, and most take
    under a minute', read from the cell timings the notebooks store."""
    limit, longest = _all(r"Each notebook runs top to bottom in under (\w+) minutes on 2 CPU cores .*? notebook "
                          r"(\d\d), which trains several small models, takes longest, and most take under a minute",
                          "README.md")[0]
    seconds = {p.name[:2]: _stored_seconds(_load(p)) for p in NOTEBOOKS}
    assert max(seconds.values()) < 60 * WORDS[limit], seconds
    assert max(seconds, key=seconds.get) == longest, seconds
    assert sum(s < 60 for s in seconds.values()) > len(seconds) / 2, seconds


def test_classroom_nbgrader_config_is_the_one_written() -> None:
    """docs/classroom.md shows the nbgrader_config.py that `assignments --nbgrader-course` writes: its settings
    (the lines that assign, comments aside) are the file's."""
    from vit_edu.classroom.assignments import NBGRADER_CONFIG

    def settings(text: str) -> list:
        lines = [re.sub(r"\s+#.*$", "", line).strip() for line in text.splitlines()]
        return [line for line in lines if line.startswith("c") and "=" in line]

    page = (ROOT / "docs" / "classroom.md").read_text(encoding="utf-8")
    shown = re.search(r"`nbgrader_config.py`:\n\n```python\n(.*?)```", page, re.S)
    assert shown, "docs/classroom.md no longer shows nbgrader_config.py; update the pattern"
    assert settings(shown.group(1)) == settings(NBGRADER_CONFIG)
    (timeout,) = _all(r"a (\d+) s cell timeout \(`c.Execute.timeout`", "README.md")
    assert f"c.Execute.timeout = {timeout}" in settings(NBGRADER_CONFIG)


def test_readme_position_embedding_learning_rate_is_the_default() -> None:
    """'the position embedding gets a 5x learning rate, `--pos-lr-scale`' (README's Training bullet)."""
    from vit_edu.training import TrainConfig

    (scale,) = _all(r"the position embedding gets a (\d+)x learning rate, `--pos-lr-scale`", "README.md")
    assert float(scale) == TrainConfig().pos_embed_lr_scale


def test_training_doc_sweep_sizes_are_the_stored_files() -> None:
    """docs/training.md's 'Result' paragraphs: runs, minutes and commands, read from the stored sweep files."""
    def stored(name: str) -> dict:
        return json.loads((ROOT / "vit_edu" / "assets" / name).read_text(encoding="utf-8"))

    sweep, shuffled = stored("data_size_sweep.json"), stored("data_size_sweep_shuffled.json")
    models, sizes, seeds, minutes, commands = _all(
        r"`vit_edu/assets/data_size_sweep.json`: (\d+) models x (\d+) sizes x (\d+) seeds, (\d+) min of runs on one "
        r"thread; made by the (\w+) commands stored in the file", "docs/training.md")[0]
    runs = sweep["runs"]
    assert (int(models), int(sizes), int(seeds)) == tuple(len({r[k] for r in runs}) for k in ("model", "n_train", "seed"))
    assert int(models) * int(sizes) * int(seeds) == len(runs)
    assert int(minutes) == round(sweep["total_wall_s"] / 60) and WORDS[commands] == len(sweep["commands"])
    n, minutes, commands = _all(r"`vit_edu/assets/data_size_sweep_shuffled.json`: (\d+) runs, (\d+) min on one "
                                r"thread, made by the (\w+) commands stored in the file", "docs/training.md")[0]
    assert int(n) == len(shuffled["runs"]) and int(minutes) == round(shuffled["total_wall_s"] / 60)
    assert WORDS[commands] == len(shuffled["commands"])
    assert sweep["threads"] == shuffled["threads"] == 1


def test_readme_grade_csv_columns_are_the_reports(tmp_path) -> None:
    """'`grades.csv` (student, notebook, ...)' and '`grades_summary.csv` (student, points per exercise, ...)': the
    header lines the grader writes (here for a reference without exercises, so no per-exercise column)."""
    import csv

    from vit_edu.classroom import report

    rows, summary = _all(r"`grades.csv` \(([a-z_, ]+)\) and `grades_summary.csv` \(([a-z_, ]+)\)", "README.md")[0]
    out = tmp_path / "grades.csv"
    report.write_results(out, [], [], [])
    with open(out, newline="", encoding="utf-8") as f:
        assert rows.split(", ") == next(csv.reader(f))
    with open(report.summary_path(out), newline="", encoding="utf-8") as f:
        assert [c for c in summary.split(", ") if c != "points per exercise"] == next(csv.reader(f))
