"""The default run has one set of defaults, TrainConfig's, and every place that states them says the same.

``python -m vit_edu train`` and ``fit(TrainConfig())`` are the same run: the command line builds its flags
from TrainConfig's fields. README.md and docs/training.md describe that run in prose; each number they state
(model preset, epochs, images per epoch, batch size, learning rate, warm-up, time budget, threads) is parsed
here by a regex anchored on the docs' own phrase and compared with TrainConfig's default. A number changed
in a doc but not in TrainConfig (or the other way round) fails here; so does a reworded phrase: then update
the pattern to the new sentence.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, Tuple

import pytest

from vit_edu.models import PRESETS
from vit_edu.training import TrainConfig
from vit_edu.training.config import default_value
from vit_edu.training.data import SHAPES_DEFAULT_SIZES

REPO = Path(__file__).resolve().parent.parent
DEFAULT = TrainConfig()


def images_per_epoch(config: TrainConfig) -> int:
    """n_train, or the dataset's own size when it is None (the shapes default)."""
    assert config.dataset == "shapes"
    return config.n_train if config.n_train is not None else SHAPES_DEFAULT_SIZES["train"]


def prose(name: str) -> str:
    """A doc's text with every run of whitespace squeezed to one space, so wrapped lines read as one."""
    return " ".join((REPO / name).read_text(encoding="utf-8").split())


def find(pattern: str, name: str) -> Tuple[str, ...]:
    found = re.search(pattern, prose(name))
    assert found, f"{name} no longer has the sentence {pattern!r}; update the pattern to the new wording"
    return found.groups()


def number(text: str) -> float:
    """'20,000' -> 20000.0, '2e-3' -> 0.002."""
    return float(text.replace(",", ""))


# ------------------------------------------------------------------------------------------- docs/training.md
def test_training_doc_command_line_comment() -> None:
    model, epochs, images, budget, threads = find(
        r"python -m vit_edu train # the plain ViT (\w+), (\d+) epochs x ([\d,]+) new shapes images, "
        r"(\d+) s budget, (\d+) thread", "docs/training.md")
    assert model == DEFAULT.model
    assert number(epochs) == DEFAULT.epochs
    assert number(images) == images_per_epoch(DEFAULT)
    assert number(budget) == DEFAULT.time_budget_s
    assert number(threads) == DEFAULT.threads


def test_training_doc_default_run_paragraph() -> None:
    model, epochs, images, batch, lr, pos_scale, warmup, threads, budget = find(
        r"The default run trains the paper's plain ViT: `(\w+)`.*?; (\d+) epochs of ([\d,]+) new shapes images, "
        r"batch (\d+), peak lr ([\d.e-]+) \(x([\d.]+) on the position embedding\), ([\d.]+) epoch of warm-up, "
        r"(\d+) CPU thread, (\d+) s budget\.", "docs/training.md")
    assert model == DEFAULT.model
    assert number(epochs) == DEFAULT.epochs
    assert number(images) == images_per_epoch(DEFAULT)
    assert number(batch) == DEFAULT.batch_size
    assert number(lr) == DEFAULT.lr
    assert number(pos_scale) == DEFAULT.pos_embed_lr_scale
    assert number(warmup) == DEFAULT.warmup_epochs and DEFAULT.warmup_steps is None
    assert number(threads) == DEFAULT.threads
    assert number(budget) == DEFAULT.time_budget_s


def test_training_doc_loop_bullets() -> None:
    assert number(*find(r"`pos_embed_lr_scale` \(default ([\d.]+), `--pos-lr-scale`\)", "docs/training.md")) \
        == DEFAULT.pos_embed_lr_scale
    assert number(*find(r"`time_budget_s` \(default ([\d.]+), `--time-budget`", "docs/training.md")) \
        == DEFAULT.time_budget_s
    assert number(*find(r"`threads` \(default (\d+), `--threads`\)", "docs/training.md")) == DEFAULT.threads
    find(r"(label smoothing off by default)", "docs/training.md")
    assert DEFAULT.label_smoothing == 0.0
    find(r"`fresh_data` \((default: on for the generated shapes)", "docs/training.md")
    assert DEFAULT.fresh_data is None and DEFAULT.draws_fresh_data


# ------------------------------------------------------------------------------------------- README.md
def test_readme_train_command_comment() -> None:
    model, budget = find(r"python -m vit_edu train # default: the plain ViT (\w+) on fresh shapes, (\d+) s budget",
                         "README.md")
    assert model == DEFAULT.model and DEFAULT.draws_fresh_data
    assert number(budget) == DEFAULT.time_budget_s


def test_readme_presets_name_the_default_model() -> None:
    assert find(r"`(\w+)` \(the default training run\)", "README.md") == (DEFAULT.model,)


def test_readme_measured_claim_of_the_default_run() -> None:
    patch, budget, images = find(
        r"default `python -m vit_edu train` \(plain ViT, patch (\d+)\), test accuracy within (\d+) s on one core "
        r"\| \*\*[\d.]+ %\*\* \([\d.]+ epochs of ([\d,]+) new images", "README.md")
    assert number(patch) == PRESETS[DEFAULT.model]["patch_size"]
    assert number(budget) == DEFAULT.time_budget_s
    assert DEFAULT.threads == 1  # "on one core"
    assert number(images) == images_per_epoch(DEFAULT)


# ------------------------------------------------------------------------------------------- --help
def _help_entries(text: str) -> Dict[str, str]:
    """argparse's option list as {first flag (or the positional's name): its help, whitespace squeezed}."""
    entries: Dict[str, str] = {}
    key = None
    for line in text.split("options:", 1)[1].splitlines() + text.split("positional arguments:", 1)[1].splitlines():
        start = re.match(r"^  (-\S+?|dataset)[ ,]", line + " ")
        if start:
            key = start.group(1)
            entries[key] = line
        elif key and line.startswith("   "):
            entries[key] += " " + line
        else:
            key = None
    return {k: " ".join(v.split()) for k, v in entries.items()}


@pytest.fixture(scope="module")
def train_help() -> Dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "100"}
    res = subprocess.run([sys.executable, "-m", "vit_edu", "train", "--help"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return _help_entries(res.stdout)


@pytest.mark.parametrize("flag, field, shown", [
    ("--model", "model", DEFAULT.model),
    ("--epochs", "epochs", str(DEFAULT.epochs)),
    ("--batch-size", "batch_size", str(DEFAULT.batch_size)),
    ("--lr", "lr", f"{DEFAULT.lr:g}"),
    ("--warmup-epochs", "warmup_epochs", f"{DEFAULT.warmup_epochs:g}"),
    ("--pos-lr-scale", "pos_embed_lr_scale", f"{DEFAULT.pos_embed_lr_scale:g}"),
    ("--time-budget", "time_budget_s", f"{DEFAULT.time_budget_s:g}"),
    ("--threads", "threads", str(DEFAULT.threads)),
    ("--n-train", "n_train", f"the dataset's, {SHAPES_DEFAULT_SIZES['train']} for shapes"),
    ("dataset", "dataset", DEFAULT.dataset),
])
def test_train_help_shows_the_train_config_defaults(train_help, flag, field, shown) -> None:
    """`python -m vit_edu train --help` states, for each flag, the default TrainConfig itself holds."""
    assert default_value(field) == getattr(DEFAULT, field)  # (out_dir aside, __post_init__ changes none)
    assert f"(default: {shown})" in train_help[flag], train_help[flag]


def test_train_help_lists_a_default_for_every_config_flag(train_help) -> None:
    from vit_edu.__main__ import flag_of, train_fields

    for field in train_fields():
        assert "(default: " in train_help[flag_of(field)], field
