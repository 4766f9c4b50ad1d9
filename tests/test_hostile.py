"""Hostile input, table by table: every config field, every command-line flag, damaged files and output places.

Each row is one thing a careless or hostile user can do, and asserts the kind of outcome:

* library (``ViTConfig``, ``TrainConfig``, ``load_model``, the datasets): a ValueError or TypeError (or
  FileNotFoundError for a missing file) whose message names the field or the file;
* command line (``main(argv)`` in this process, so that hundreds of rows stay fast): a non-zero exit status,
  exactly one line on stderr naming the flag (or the file), no traceback, and no work done.

The tables are built from the dataclass fields and the parsers themselves, so a new field or flag without rows
fails ``test_every_field_and_flag_has_rows``. The faults a run meets half-way (a disk filling up, Ctrl-C) are at
the end.
"""

from __future__ import annotations

import errno
import io
import json
import math
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch

from vit_edu import ViTConfig
from vit_edu.__main__ import build_parser, flag_of, main, train_fields
from vit_edu.training import TrainConfig

pytestmark = pytest.mark.usefixtures("single_thread")

NAN, INF = float("nan"), float("inf")
HUGE = 2**70
NANO = dict(model="vit_nano_patch4_32", epochs=1, batch_size=32, n_train=64, n_test=32, progress=False,
            device="cpu", warmup_steps=1, time_budget_s=None)
NANO_FLAGS = ["--model", "vit_nano_patch4_32", "--epochs", "1", "--batch-size", "32", "--no-progress", "--device",
              "cpu", "--time-budget", "0", "--n-train", "64", "--n-test", "32"]


def _words(name: str) -> str:
    """A field's name as a message may write it: patch_size or "patch size"."""
    return re.escape(name).replace("_", "[_ ]")


def quiet(message: str) -> None:
    pass


# ============================================================================================ ViTConfig
INT_BAD = ["8", 8.0, True, None, -1, NAN, INF, [8], HUGE]
VIT_BAD = {
    **{name: INT_BAD + ([0] if name != "num_classes" else []) for name in
       ("in_channels", "num_classes", "dim", "depth", "heads", "mlp_dim")},
    **{name: ["32", 32.0, True, None, 0, -8, (32,), (32, 32, 3), (32.0, 32), ("32", "32"), NAN, HUGE]
       for name in ("image_size", "patch_size")},
    **{name: ["False", "True", "no", 0, 1, 1.0, [True]] + ([] if name == "fc_norm" else [None])
       for name in ("class_token", "qkv_bias", "fused_attn", "dynamic_img_size", "head_zero_init", "fc_norm")},
    **{name: ["0.1", True, None, -0.1, 1.0, 1.5, NAN, INF, -INF] for name in ("dropout", "attn_dropout", "drop_path")},
    **{name: [1, None, "", "CLS", ["cls"], b"cls", True] for name in ("pool", "pos_embedding", "patch_embed",
                                                                       "weight_init")},
    "norm_eps": ["1e-6", True, None, 0, 0.0, -1e-6, NAN, INF],
    "representation_size": [2.5, "8", True, 0, -1, HUGE, NAN, [8]],
    "hybrid_layers": [(0,), (), [1.5], "3,4", 3, (True,), (-1,), (HUGE,), [None], {1: 2}, (1,) * 40],
    "extra": [[], "x", None, 1],
}
VIT_CASES = [(name, value) for name, values in VIT_BAD.items() for value in values]
SMALL = dict(image_size=32, patch_size=8, num_classes=5, dim=32, depth=1, heads=4, mlp_dim=64)


@pytest.mark.parametrize("name, value", VIT_CASES, ids=[f"{n}={v!r}" for n, v in VIT_CASES])
def test_vit_config_refuses(name, value) -> None:
    base = {**SMALL, "pool": "mean", "class_token": True} if name == "class_token" else SMALL
    with pytest.raises((ValueError, TypeError)) as info:
        ViTConfig(**{**base, name: value})
    message = str(info.value)
    assert re.search(_words(name), message), message
    assert "\n" not in message


# ============================================================================================ TrainConfig
POS_INT = ["8", 8.0, True, None, 0, -1, NAN, INF]
FLOAT = ["0.1", True, [0.1], NAN, INF, -INF, -1.0]
TRAIN_BAD = {
    **{name: POS_INT + [HUGE] for name in ("epochs", "batch_size")},
    "eval_every": POS_INT,
    **{name: FLOAT + [None] for name in ("lr", "weight_decay", "warmup_epochs", "min_lr_ratio", "label_smoothing",
                                         "grad_clip", "pos_embed_lr_scale")},
    "lr": FLOAT + [None, 0.0],
    "min_lr_ratio": FLOAT + [None, 1.5],
    "label_smoothing": FLOAT + [None, 1.0],
    "pos_embed_lr_scale": FLOAT + [None, 0.0],
    "time_budget_s": FLOAT + [0.0],
    **{name: ["8", 8.0, True, -1, NAN, [8]] for name in ("warmup_steps", "stop_after_epochs")},
    **{name: ["8", 8.0, True, -1, 0, NAN, HUGE] for name in ("n_train", "n_test", "image_size", "threads")},
    "data_seed": ["8", 8.0, True, -1, NAN, HUGE, 2**31],
    "seed": ["8", 8.0, True, None, -1, NAN, HUGE, 2**31],
    "num_workers": ["1", 1.0, True, None, -1, HUGE, 10**5],
    "clutter": ["1", 1.5, True, None, -1, 33, HUGE],
    "dataset": [5, None, "", "CIFAR10", "nope", ["shapes"]],
    "model": [5, None, "", "vit_gigantic", ["vit_nano_patch4_32"]],
    "data_root": [5, None, ["data"]],
    "device": [5, None, "", "gpu", "cuda:x", "cpu:0:1", "meta"],
    "out_dir": [5, [], b"runs", "", "  "],
    "palette": [5, None, "", "color"],
    "optimizer": [5, None, "", "adam", "ADAMW"],
    "weight_init": [5, "", "xavier", True],
    **{name: ["False", "yes", 0, 1, 1.0, None] for name in ("download", "augment", "save_checkpoints")},
    **{name: ["False", "yes", 0, 1, 1.0] for name in ("fresh_data", "progress")},
    "classes": ["circle,square", [1, 2], ["circle"], ["hexagon", "circle"], [], ["circle", "circle"], 5,
                [None, "circle"]],
    "model_overrides": [[], "dropout=0.1", {"dropout": "0.1"}, {"dropout": 1.5}, {"heads": 0}, {"dim": 30},
                        {"dropuot": 0.1}, {"qkv_bias": "False"}, {"dim": 2**20}, {"patch_size": 5},
                        {"pool": "max"}, {"hybrid_layers": (0,)}],
}
TRAIN_CASES = [(name, value) for name, values in TRAIN_BAD.items() for value in values]
TRAIN_CASES += [("dataset", ("cifar10", {"classes": ["circle", "square"]})),  # shapes-only settings elsewhere
                ("dataset", ("mnist", {"clutter": 2})), ("dataset", ("imagefolder", {"palette": "grey"})),
                ("dataset", ("cifar10", {"fresh_data": True})),
                ("image_size", 4)]  # below the data's smallest (8): refused here, before any work


@pytest.mark.parametrize("name, value", TRAIN_CASES, ids=[f"{n}={v!r}" for n, v in TRAIN_CASES])
def test_train_config_refuses(name, value) -> None:
    kw = {**NANO, name: value}
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], dict):
        kw = {**NANO, name: value[0], **value[1]}
    with pytest.raises((ValueError, TypeError)) as info:
        TrainConfig(**kw)
    message = str(info.value)
    named = list(value[1]) if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], dict) else [name]
    assert any(re.search(rf"TrainConfig\.[\w/]*\b{n}\b", message) for n in named), message
    assert "\n" not in message


def test_every_field_and_flag_has_rows() -> None:
    """A field or flag added later without hostile rows fails here."""
    assert set(VIT_BAD) == set(ViTConfig.__dataclass_fields__)
    assert set(TRAIN_BAD) == {f.name for f in fields(TrainConfig)}
    given = {case[1][0] for case in CLI_CASES}
    for command in ("train", "evaluate", "demo"):
        parser = build_parser()._subparsers._group_actions[0].choices[command]
        flags = {a.option_strings[0] if a.option_strings else a.dest for a in parser._actions} - {"-h"}
        missing = sorted(f for f in flags if f"{command} {f}" not in given)
        assert not missing, f"{command}: no hostile rows for {missing}"
    assert len(VIT_CASES) + len(TRAIN_CASES) + len(CLI_CASES) >= 300


# ============================================================================================ command line
def _flag_rows() -> list:
    """(command flag, argv tail, words the line must hold) for every flag of train, evaluate and demo."""
    ints = ["abc", "", "1.5", "1e3", "0x10"]  # argparse refuses these itself
    floats = ["abc", "", "nan", "inf", "-inf", "1e999"]
    rows = []

    def add(command, flag, values, words=None):
        for v in values:
            tail = [v] if flag.startswith("--") is False else [flag, v]
            rows.append((f"{command} {flag}", tail, words or flag))

    # train: every flag built from a TrainConfig field
    int_ranges = {"--epochs": ["0", "-1", str(10**7)], "--batch-size": ["0", "-3", str(10**12)],
                  "--eval-every": ["0"], "--n-train": ["0", "-1", str(10**12)], "--n-test": ["0", str(10**12)],
                  "--data-seed": ["-1", str(2**40)], "--seed": ["-1", str(10**23)],
                  "--image-size": ["0", "-4", "4", "100000"],
                  "--threads": ["0", "-1", str(10**6)], "--workers": ["-1", str(10**6)],
                  "--stop-after-epochs": ["0", "-1"], "--clutter": ["-1", "33"]}
    float_ranges = {"--lr": ["0", "-1"], "--weight-decay": ["-1"], "--warmup-epochs": ["-0.5", "1", "5"],
                    "--label-smoothing": ["1", "-0.1"], "--pos-lr-scale": ["0", "-2"], "--time-budget": ["-5"],
                    "--dropout": ["1.5", "-0.1", "1"]}
    for name in train_fields():
        flag = flag_of(name)
        if flag in int_ranges:
            add("train", flag, ints + int_ranges[flag])
        elif flag in float_ranges:
            add("train", flag, floats + float_ranges[flag])
    add("train", "--model", ["bogus", "", "VIT_NANO_PATCH4_32"])
    add("train", "--optimizer", ["adam", ""])
    add("train", "--palette", ["color", ""])
    add("train", "--weight-init", ["xavier"])
    add("train", "--device", ["bogus", "", "cuda:x", "meta"])
    add("train", "--classes", ["", ",", "hexagon", "circle", "circle,circle", "circle,1"])
    add("train", "--data-root", ["{a_file}"], "cifar10")  # a real dataset under a file: named
    rows += [("train dataset", ["bogus"], "bogus"), ("train dataset", ["CIFAR10"], "CIFAR10")]
    for switch in ("--download", "--augment", "--fresh-data", "--progress"):
        rows.append((f"train {switch}", [f"{switch}=yes"], switch))
    rows += [("train --resume", ["--resume", "{missing}"], "missing.pt"),
             ("train --resume", ["--resume", "{folder}"], "folder"),
             ("train --export", ["--export", "{out}/w.pt"], "--export"),
             ("train --export", ["--export", "{folder_st}"], "--export"),
             ("train --force", ["--force=yes"], "--force"),
             ("train --out-dir", ["--out-dir", "{a_file}"], "--out-dir")]
    # an empty path ("$UNSET") is refused by every path flag, not taken for "not given"
    rows += [(f"train {flag}", [flag, ""], flag) for flag in ("--resume", "--export", "--out-dir", "--data-root")]
    rows += [("train --export", ["--export", "{out}/.safetensors"], "--export"),  # no name before the suffix
             ("train --export", ["--export", ".safetensors"], "--export")]
    # evaluate
    for flag, extra in (("--batch-size", ["0", "-1"]), ("--n", ["0", "-1", str(10**12)]),
                        ("--seed", ["-1", str(10**23)]), ("--image-size", ["0", "-4", "4", "7", "64", "100000"]),
                        ("--workers", ["-1", str(10**6)])):
        add("evaluate", flag, ints + extra)
    add("evaluate", "--split", ["val", ""])
    add("evaluate", "--classes", ["hexagon", "circle", "circle,circle", ""])
    add("evaluate", "--device", ["bogus", ""])
    add("evaluate", "--checkpoint", ["{missing}", "{folder}", "{a_file}"], "a_file")
    add("evaluate", "--data-root", ["{a_file}"], "cifar10")
    add("evaluate", "--data-root", [""])
    add("evaluate", "--checkpoint", [""])
    add("evaluate", "--download", ["--download=1"])
    rows += [("evaluate dataset", ["bogus"], "bogus")]
    # demo
    for flag, extra in (("--n", ["0", "-1", str(10**12)]), ("--seed", ["-1", str(10**23)]),
                        ("--images", ["0", "-1", str(10**9)])):
        add("demo", flag, ints + extra)
    add("demo", "--figures-dir", ["{a_file}", "{a_file}/figs", "/proc/vit_edu_figures", ""])
    # fix the rows whose words differ from the flag: the missing file is named, not the flag
    fixed = []
    for rid, tail, words in rows:
        if rid.endswith("--checkpoint") and tail[-1] == "{missing}":
            words = "missing.pt"
        elif rid.endswith("--checkpoint") and tail[-1] == "{folder}":
            words = "folder"
        fixed.append((rid, tail, words))
    return fixed


FLAG_ROWS = _flag_rows()
CLI_CASES = [(rid.split()[0], (rid, tail, words)) for rid, tail, words in FLAG_ROWS]


@pytest.fixture(scope="module")
def places(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("places")
    (d / "a_file").write_text("a file where a folder is expected")
    (d / "folder").mkdir()
    (d / "folder.safetensors").mkdir()
    return {"a_file": d / "a_file", "folder": d / "folder", "folder_st": d / "folder.safetensors",
            "missing": d / "missing.pt", "dir": d}


def _run_cli(argv, capsys, monkeypatch) -> tuple:
    """main(argv) in this process: (status, stderr lines, stdout). argparse's refusals exit: status from SystemExit."""
    monkeypatch.delenv("VIT_EDU_DEBUG", raising=False)
    try:
        code = main(argv)
    except SystemExit as stop:
        code = stop.code
    captured = capsys.readouterr()
    return code, captured.err.strip().splitlines(), captured.out, captured.err


def _assert_one_line(code, lines, err, words) -> None:
    assert code not in (0, None), f"exit status {code}: accepted"
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    assert words in lines[0], (words, lines[0])


@pytest.mark.parametrize("command, row", CLI_CASES, ids=[f"{r[0]} {' '.join(r[1])}" for _, r in CLI_CASES])
def test_command_line_refuses(places, tmp_path, capsys, monkeypatch, command, row) -> None:
    rid, tail, words = row
    out = tmp_path / "run"
    monkeypatch.setenv("VIT_EDU_FIGURES", str(tmp_path / "figures"))
    tail = [t.format(out=out, **places) for t in tail]
    if command == "train":
        dataset = ["cifar10"] if words == "cifar10" else []
        argv = ["train", *dataset, *NANO_FLAGS, "--out-dir", str(out), *tail]
    elif command == "evaluate":
        dataset = ["cifar10"] if words == "cifar10" else []
        argv = ["evaluate", *dataset, "--n", "16", *tail]
    else:
        argv = ["demo", "--n", "16", "--images", "1", *tail]
    code, lines, stdout, err = _run_cli(argv, capsys, monkeypatch)
    _assert_one_line(code, lines, err, words)
    assert "epoch" not in stdout and "accuracy" not in stdout  # refused before any work
    assert not (out / "last.pt").exists() and not (tmp_path / "figures").exists()


# ============================================================================================ damaged files
@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    """A real run stopped after 1 of 2 epochs (resumable), its export, and the folder damaged copies go in."""
    from vit_edu.training import fit

    d = tmp_path_factory.mktemp("damaged")
    torch.manual_seed(0)
    fit(TrainConfig(**{**NANO, "epochs": 2, "stop_after_epochs": 1}, out_dir=str(d / "run")),
        export=d / "nano.safetensors", log=quiet)
    return {"dir": d, "last": d / "run" / "last.pt", "export": d / "nano.safetensors"}


def _set(path: str, value):
    """A damage: put ``value`` at ``path`` ("a/b/c") of the checkpoint dict (``DELETE``: remove the key)."""
    def damage(ckpt: dict) -> None:
        *parents, last = path.split("/")
        node = ckpt
        def key_of(node, key):  # list indices and the optimizer's integer keys are written as digits
            return int(key) if key.isdigit() and (isinstance(node, list) or key not in node) else key

        for key in parents:
            node = node[key_of(node, key)]
        last = key_of(node, last)
        if value is DELETE:
            del node[last]
        else:
            node[last] = value(node[last]) if callable(value) else value
    return damage


DELETE = object()
W = "blocks.0.attn.qkv.weight"
CHECKPOINT_DAMAGE = {
    **{f"no-{key}": _set(key, DELETE) for key in ("format", "config", "model", "epoch", "optimizer", "scheduler",
                                                     "rng", "history")},
    "format-other": _set("format", "someone.else/1"),
    **{f"epoch={v!r}": _set("epoch", v) for v in ("1", -1, 1.5, None, True, HUGE)},
    "config-list": _set("config", []),
    "config-no-model": _set("config/model", DELETE),
    "config-model-dim-str": _set("config/model/dim", "64"),
    "config-model-unknown-field": _set("config/model/hidden", 3),
    "config-model-heads-0": _set("config/model/heads", 0),
    "config-train-lr-nan": _set("config/train/lr", NAN),
    "config-train-str": _set("config/train", "lr=0.002"),
    "config-train-unknown-field": _set("config/train/epochz", 3),
    "config-train-bool-str": _set("config/train/augment", "False"),
    "model-list": _set("model", []),
    "model-int-weight": _set(f"model/{W}", lambda t: t.round().to(torch.int32)),
    "model-bool-weight": _set(f"model/{W}", lambda t: t > 0),
    "model-wrong-shape": _set(f"model/{W}", lambda t: t[:-1]),
    "model-missing-key": _set(f"model/{W}", DELETE),
    "model-extra-key": _set("model/blocks.9.attn.qkv.weight", torch.zeros(3)),
    "model-nan": _set(f"model/{W}", lambda t: t * NAN),
    "model-inf": _set("model/head.bias", lambda t: t + INF),
    "model-not-tensor": _set(f"model/{W}", [[0.0]]),
    "optimizer-list": _set("optimizer", []),
    "optimizer-no-groups": _set("optimizer/param_groups", DELETE),
    "optimizer-state-wrong-shape": _set("optimizer/state/0/exp_avg", lambda t: t.flatten()[:3]),
    "optimizer-state-nan": _set("optimizer/state/0/exp_avg_sq", lambda t: t * NAN),
    "optimizer-lr-nan": _set("optimizer/param_groups/0/lr", NAN),
    "optimizer-lr-str": _set("optimizer/param_groups/0/lr", "0.1"),
    "optimizer-step-str": _set("optimizer/state/0/step", "three"),
    "scheduler-list": _set("scheduler", []),
    "scheduler-last-epoch-str": _set("scheduler/last_epoch", "two"),
    "scheduler-base-lrs-nan": _set("scheduler/base_lrs", [NAN, NAN, NAN]),
    "scheduler-base-lrs-short": _set("scheduler/base_lrs", [0.1]),
    "rng-list": _set("rng", []),
    "rng-torch-float": _set("rng/torch", lambda t: t.float()),
    "rng-torch-short": _set("rng/torch", lambda t: t[:10]),
    "rng-numpy-short": _set("rng/numpy/keys", lambda t: t[:5]),
    "rng-python-garbage": _set("rng/python", [3, [1, 2], None]),
    "rng-no-numpy": _set("rng/numpy", DELETE),
    "history-list": _set("history", []),
    "history-no-key": _set("history/test_acc", DELETE),
    "history-ragged": _set("history/train_loss", [1.0, 2.0, 3.0]),
    "history-str": _set("history/lr", ["high"]),
    "extra-list": _set("extra", [1]),
    "stopped-at-negative": _set("extra/stopped_at", {"batches": -1, "epoch_rng": None}),
    "stopped-at-huge": _set("extra/stopped_at", {"batches": HUGE, "epoch_rng": {}}),
    "stopped-at-str": _set("extra/stopped_at", {"batches": "two", "epoch_rng": {}}),
    "stopped-at-no-rng": _set("extra/stopped_at", {"batches": 1}),
    "classes-str": _set("extra/classes", "circle,square"),
    "classes-other": _set("extra/classes", ["a", "b"]),
}
TRUNCATIONS = (0.01, 0.1, 0.5, 0.9, 0.99)
# which damages each entry point must see: evaluate reads the weights and configs, resume reads it all
EVALUATE_SEES = {k for k in CHECKPOINT_DAMAGE
                 if not k.startswith(("no-optimizer", "no-scheduler", "no-rng", "no-history", "optimizer", "scheduler",
                                      "rng", "history", "stopped-at", "config-train", "extra-list"))}
FILE_CASES = ([("resume", k) for k in CHECKPOINT_DAMAGE] + [("evaluate", k) for k in sorted(EVALUATE_SEES)]
              + [("load_model", k) for k in sorted(EVALUATE_SEES - {"classes-str", "classes-other"})]
              + [(entry, f"truncated-{f}") for f in TRUNCATIONS for entry in ("resume", "evaluate", "load_model")])


def _damaged(run: dict, name: str, where: Path) -> Path:
    path = where / f"{name}.pt"
    if name.startswith("truncated-"):
        blob = run["last"].read_bytes()
        path.write_bytes(blob[: int(len(blob) * float(name.split("-")[1]))])
        return path
    ckpt = torch.load(run["last"], weights_only=True)
    CHECKPOINT_DAMAGE[name](ckpt)
    torch.save(ckpt, path)
    return path


def _refused_by_load_model(path: Path) -> None:
    from vit_edu.training import load_model

    with pytest.raises((ValueError, TypeError)) as info:
        load_model(path)
    assert str(path) in str(info.value), str(info.value)  # the command line joins its lines into one


@pytest.mark.parametrize("entry, name", FILE_CASES, ids=[f"{e}-{n}" for e, n in FILE_CASES])
def test_damaged_checkpoint_is_refused(run, tmp_path, capsys, monkeypatch, entry, name) -> None:
    path = _damaged(run, name, tmp_path)
    if entry == "load_model":
        _refused_by_load_model(path)
        return
    out = tmp_path / "out"
    if entry == "resume":
        argv = ["train", "--resume", str(path), "--out-dir", str(out), "--no-progress"]
    else:
        argv = ["evaluate", "--checkpoint", str(path), "--n", "16"]
    code, lines, stdout, err = _run_cli(argv, capsys, monkeypatch)
    _assert_one_line(code, lines, err, str(path) if "classes-other" not in name else "classes")
    assert "TrainConfig." not in lines[0]  # a damaged stored value is never blamed on a flag the user did not give
    assert "epoch" not in stdout and "accuracy" not in stdout
    assert not out.exists() or not (out / "last.pt").exists()


def _safetensors(header: dict, tensors: dict) -> bytes:
    from safetensors.torch import save

    return save(tensors, metadata=header)


def _export_damage(run: dict, name: str, where: Path) -> Path:
    from safetensors.torch import load_file

    from vit_edu.training import read_safetensors_metadata

    path = where / f"{name}.safetensors"
    blob = run["export"].read_bytes()
    meta = read_safetensors_metadata(run["export"])
    tensors = load_file(str(run["export"]))
    config = json.loads(meta["config"])
    if name.startswith("truncated-"):
        path.write_bytes(blob[: int(len(blob) * float(name.split("-")[1]))])
        return path
    if name == "header-length-huge":
        path.write_bytes(struct.pack("<Q", 2**60) + blob[8:])
        return path
    if name == "header-not-json":
        n = struct.unpack("<Q", blob[:8])[0]
        path.write_bytes(blob[:8] + b"{" * n + blob[8 + n:])
        return path
    if name == "no-config":
        del meta["config"]
    elif name == "config-not-json":
        meta["config"] = "{dim: 64"
    elif name == "config-list":
        meta["config"] = "[1, 2]"
    elif name == "config-bad-field":
        meta["config"] = json.dumps({**config, "heads": "4"})
    elif name == "config-nan-eps":
        meta["config"] = json.dumps({**config, "norm_eps": NAN})
    elif name == "int-weights":
        tensors[W] = tensors[W].round().to(torch.int32)
    elif name == "wrong-shape":
        tensors[W] = tensors[W][:-1].contiguous()
    elif name == "nan-weights":
        tensors[W] = tensors[W] * NAN
    elif name == "missing-weight":
        del tensors[W]
    path.write_bytes(_safetensors(meta, tensors))
    return path


EXPORT_DAMAGE = ["header-length-huge", "header-not-json", "no-config", "config-not-json", "config-list",
                 "config-bad-field", "config-nan-eps", "int-weights", "wrong-shape", "nan-weights", "missing-weight",
                 *(f"truncated-{f}" for f in TRUNCATIONS)]
EXPORT_CASES = [(e, n) for n in EXPORT_DAMAGE for e in ("evaluate", "load_model")]


@pytest.mark.parametrize("entry, name", EXPORT_CASES, ids=[f"{e}-{n}" for e, n in EXPORT_CASES])
def test_damaged_export_is_refused(run, tmp_path, capsys, monkeypatch, entry, name) -> None:
    path = _export_damage(run, name, tmp_path)
    if entry == "load_model":
        _refused_by_load_model(path)
        return
    code, lines, stdout, err = _run_cli(["evaluate", "--checkpoint", str(path), "--n", "16"], capsys, monkeypatch)
    _assert_one_line(code, lines, err, str(path))
    assert "accuracy" not in stdout


# ============================================================================================ image folders
def _png_bomb(path: Path) -> None:
    """A PNG that declares 40000 x 40000 pixels in a few bytes (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    header = struct.pack(">IIBBBBB", 40000, 40000, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 100))
                     + chunk(b"IEND", b""))


def _odd(root: Path, name: str) -> tuple:
    """Lay out root/{train,test}/{a,b}/*.png and add the odd thing; returns (split to read, expected outcome,
    the path an error must name)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(2):
                Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / split / cls / f"{i}.png")
    a = root / "train" / "a"
    odd = a / "odd.png"
    if name == "hidden-class-folder":
        (root / "train" / ".ipynb_checkpoints").mkdir()
        shutil.copy(a / "0.png", root / "train" / ".ipynb_checkpoints" / "0.png")
        return "train", "ok", None
    if name == "hidden-file":
        (a / ".DS_Store").write_bytes(b"\0\1\2")
        return "train", "ok", None
    if name == "file-beside-the-classes":
        (root / "train" / "README.txt").write_text("notes")
        return "train", "ok", None
    if name == "unknown-extension":
        (a / "notes.xyz").write_text("notes")
        return "train", "ok", None
    if name in ("text-as-png", "empty-png", "truncated-png", "bomb", "jpeg-cut"):
        if name == "text-as-png":
            odd.write_text("not an image")
        elif name == "empty-png":
            odd.touch()
        elif name == "truncated-png":
            blob = (a / "0.png").read_bytes()
            odd.write_bytes(blob[: len(blob) // 2])
        elif name == "bomb":
            _png_bomb(odd)
        else:
            odd = a / "cut.jpg"
            buf = io.BytesIO()
            Image.fromarray(np.full((32, 32, 3), 90, dtype=np.uint8)).save(buf, "JPEG")
            odd.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
        return "train", "error", odd
    if name == "empty-class":
        (root / "train" / "c").mkdir()
        return "train", "error", root / "train"
    if name == "one-class":
        shutil.rmtree(root / "train" / "b")
        return "train", "error", root / "train"
    if name == "split-missing":
        shutil.rmtree(root / "test")
        return "test", "error", root / "test"
    if name == "root-is-a-file":
        shutil.rmtree(root)
        root.write_text("a file")
        return "train", "error", root
    kinds = {  # (mode, pixels): images PIL reads that are not 8-bit RGB
        "grey16": ("I;16", np.full((8, 8), 30000, dtype=np.uint16)),
        "one-pixel": ("RGB", np.full((1, 1, 3), 200, dtype=np.uint8)),
        "rgba": ("RGBA", np.full((8, 8, 4), 100, dtype=np.uint8)),
        "grey-alpha": ("LA", np.full((8, 8, 2), 100, dtype=np.uint8)),
        "one-bit": ("1", np.zeros((8, 8), dtype=bool)),
        "float-tiff": ("F", np.full((8, 8), 0.5, dtype=np.float32)),
        "cmyk-jpeg": ("CMYK", np.full((8, 8, 4), 60, dtype=np.uint8)),
        "palette-transparent": ("P", np.zeros((8, 8), dtype=np.uint8)),
        "wide": ("RGB", np.full((2, 300, 3), 50, dtype=np.uint8)),
    }
    mode, pixels = kinds[name]
    image = Image.fromarray(pixels) if mode not in ("CMYK", "LA", "P") else Image.fromarray(pixels, mode)
    if mode == "P":
        image.info["transparency"] = 0
    suffix = {"F": ".tif", "CMYK": ".jpg"}.get(mode, ".png")
    image.save(a / f"odd{suffix}")
    return "train", "ok", a / f"odd{suffix}"


IMAGE_CASES = ["hidden-class-folder", "hidden-file", "file-beside-the-classes", "unknown-extension", "text-as-png",
               "empty-png", "truncated-png", "bomb", "jpeg-cut", "empty-class", "one-class", "split-missing",
               "root-is-a-file", "grey16", "one-pixel", "rgba", "grey-alpha", "one-bit", "float-tiff", "cmyk-jpeg",
               "palette-transparent", "wide"]


@pytest.mark.parametrize("name", IMAGE_CASES)
def test_image_folder_with_odd_files(tmp_path, name) -> None:
    from vit_edu.training import data

    root = tmp_path / "images"
    split, outcome, named = _odd(root, name)
    if outcome == "error":
        with pytest.raises((ValueError, FileNotFoundError, NotADirectoryError)) as info:
            data.get_dataset("imagefolder", split, root=root)
        assert str(named) in str(info.value), str(info.value)
        return
    ds = data.get_dataset("imagefolder", split, root=root)
    assert ds.classes == ["a", "b"]  # hidden folders are never a class
    for i in range(len(ds)):
        image, label = ds[i]
        assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and bool(torch.isfinite(image).all())
    if name == "grey16":  # 30000 of 65535: mid grey, not the all-white image a clip at 255 gives
        odd = [i for i, (p, _) in enumerate(ds.samples) if p.endswith("odd.png")][0]
        pixel = data.denormalize(ds[odd][0].unsqueeze(0))[0].mean().item()
        assert 0.35 < pixel < 0.6, pixel


# ============================================================================================ output places
def _tiny_course(root: Path) -> Path:
    import nbformat

    src = root / "course"
    src.mkdir(parents=True, exist_ok=True)
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# 01"), nbformat.v4.new_code_cell("print(1)")]
    nbformat.write(nb, src / "01_a.ipynb")
    return src


PLACE_KINDS = ["a-file", "under-a-file", "unwritable", "dev-null", "full", "file-size-limit", "dangling-link"]
TARGETS = ["train --out-dir", "train --export", "demo --figures-dir", "handout", "assignments --out"]
PLACE_CASES = [(t, k) for t in TARGETS for k in PLACE_KINDS]


def _place(tmp_path: Path, kind: str, target: str) -> Path:
    if kind == "a-file":
        path = tmp_path / ("a_file" if target != "train --export" else "a_folder.safetensors")
        path.mkdir() if target == "train --export" else path.write_text("a file")
        return path
    if kind == "under-a-file":
        (tmp_path / "a_file").write_text("a file")
        return tmp_path / "a_file" / ("w.safetensors" if target == "train --export" else "out")
    if kind == "unwritable":  # nobody, root included, creates files in /proc
        return Path("/proc") / ("vit_edu_w.safetensors" if target == "train --export" else "vit_edu_out")
    if kind == "dev-null":
        return Path("/dev/null")
    if kind == "dangling-link":
        link = tmp_path / ("link.safetensors" if target == "train --export" else "link")
        link.symlink_to(tmp_path / "gone" / "nowhere")
        (tmp_path / "gone").mkdir()
        (tmp_path / "gone").rmdir()
        return link
    return tmp_path / ("w.safetensors" if target == "train --export" else "out")  # full, file-size-limit


@pytest.mark.parametrize("target, kind", PLACE_CASES, ids=[f"{t}-{k}" for t, k in PLACE_CASES])
def test_output_place_is_refused_before_the_work(tmp_path, capsys, monkeypatch, target, kind) -> None:
    import resource

    if kind == "dangling-link" and target == "train --export":
        pytest.skip("a link to none: the export writes the file it names, as asked")
    place = _place(tmp_path, kind, target)
    if kind == "full":
        real = shutil.disk_usage
        monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=0))
    if kind == "file-size-limit":
        real_limit = resource.getrlimit
        monkeypatch.setattr(resource, "getrlimit", lambda r: (100, resource.RLIM_INFINITY)
                            if r == resource.RLIMIT_FSIZE else real_limit(r))
    monkeypatch.setenv("VIT_EDU_FIGURES", str(tmp_path / "figures"))
    out = tmp_path / "run"
    argv = {"train --out-dir": ["train", *NANO_FLAGS, "--out-dir", str(place)],
            "train --export": ["train", *NANO_FLAGS, "--out-dir", str(out), "--export", str(place)],
            "demo --figures-dir": ["demo", "--n", "16", "--images", "1", "--figures-dir", str(place)],
            "handout": ["handout", str(place), "--src", str(_tiny_course(tmp_path))],
            "assignments --out": ["assignments", "--src", str(_tiny_course(tmp_path)), "--out", str(place)]}[target]
    before = sorted(p.name for p in tmp_path.iterdir())
    code, lines, stdout, err = _run_cli(argv, capsys, monkeypatch)
    checkpoint_first = target == "train --export" and kind == "file-size-limit"  # last.pt is over the limit too
    _assert_one_line(code, lines, err, "--out-dir" if checkpoint_first else str(place))
    words = {"full": "free", "file-size-limit": "file-size limit"}.get(kind)
    assert words is None or words in lines[0], lines[0]
    assert "epoch" not in stdout and "accuracy" not in stdout
    assert not (out / "last.pt").exists() and not (tmp_path / "figures").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "run") == sorted(set(before) - {"run"})


# ============================================================================================ faults mid-run
def _no_temp_files(folder: Path) -> None:
    assert not [p.name for p in folder.iterdir() if p.name.endswith((".tmp", ".old"))], list(folder.iterdir())


def test_a_full_disk_at_the_second_checkpoint_keeps_the_first(tmp_path, capsys, monkeypatch) -> None:
    """The disk fills up while the second epoch's checkpoint is written: one line (status 1) that says so and how
    to go on; the first checkpoint stays loadable; once there is room, --resume reaches the weights of a run
    that never stopped, bit for bit."""
    from vit_edu.training import load_checkpoint, load_model

    assert main(["train", *NANO_FLAGS, "--epochs", "2", "--out-dir", str(tmp_path / "straight")]) == 0
    straight = load_model(tmp_path / "straight" / "last.pt")
    real_save, calls = torch.save, []

    def full_disk(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            f.write(b"the first bytes fit")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    out = tmp_path / "run"
    flags = ["train", *NANO_FLAGS, "--epochs", "2", "--out-dir", str(out)]
    monkeypatch.setattr(torch, "save", full_disk)
    code, lines, stdout, err = _run_cli(flags, capsys, monkeypatch)
    monkeypatch.undo()
    assert code == 1 and len(lines) == 1 and "Traceback" not in err, err
    assert "No space left on device" in lines[0] and f"--resume {out / 'last.pt'}" in lines[0], lines[0]
    assert load_checkpoint(out / "last.pt")["epoch"] == 1
    _no_temp_files(out)
    code, lines, stdout, err = _run_cli(["train", "--resume", str(out / "last.pt"), "--no-progress"], capsys,
                                        monkeypatch)
    assert code == 0, err
    resumed = load_model(out / "last.pt")
    for k, v in straight.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k


def _in_a_process(code: str, limit: int, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """Run python with a file-size limit (RLIMIT_FSIZE), as ``ulimit -f`` does."""
    import resource

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("VIT_EDU_DEBUG", None)
    return subprocess.run([sys.executable, *(["-c", code] if code else []), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=180,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))


def test_a_file_size_limit_is_refused_up_front_in_a_real_process(tmp_path) -> None:
    res = _in_a_process("", 200_000, tmp_path, "-m", "vit_edu", "train", *NANO_FLAGS, "--out-dir",
                        str(tmp_path / "run"))
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert "file-size limit of 195.3 KiB (200,000 bytes, ulimit -f)" in lines[0] and "--out-dir" in lines[0], lines[0]
    assert not (tmp_path / "run" / "last.pt").exists()


def test_a_write_past_the_file_size_limit_names_the_cause_and_keeps_the_old_file(tmp_path) -> None:
    """torch.save hides a failed write behind RuntimeError("unexpected pos"); the writer reports the real cause
    (EFBIG, "File too large") with the file it meant, and the previous file is untouched."""
    (tmp_path / "last.pt").write_bytes(b"the previous checkpoint")
    code = (f"import torch\nfrom vit_edu.fileio import atomic_write\n"
            f"try:\n    atomic_write({str(tmp_path / 'last.pt')!r}, lambda f: torch.save(torch.zeros(100_000), f))\n"
            f"except OSError as err:\n    print(type(err).__name__, err.errno, err.strerror)\n")
    res = _in_a_process(code, 100_000, tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"OSError 27 cannot write {tmp_path / 'last.pt'}: File too large", res.stdout
    assert (tmp_path / "last.pt").read_bytes() == b"the previous checkpoint"
    _no_temp_files(tmp_path)


def test_the_space_estimate_covers_the_files_written(tmp_path) -> None:
    """The up-front check asks for at least what a run writes, and not much more."""
    from vit_edu.training import fit
    from vit_edu.training.checkpoint import output_bytes
    from vit_edu.training.loop import build_model

    for optimizer in ("adamw", "sgd"):
        config = TrainConfig(**{**NANO, "optimizer": optimizer}, out_dir=str(tmp_path / optimizer))
        fit(config, export=tmp_path / f"{optimizer}.safetensors", log=quiet)
        with torch.device("meta"):
            need_ckpt, need_export = output_bytes(build_model(config, 8, 32, 3), optimizer)
        ckpt = (tmp_path / optimizer / "last.pt").stat().st_size
        export = (tmp_path / f"{optimizer}.safetensors").stat().st_size
        assert ckpt <= need_ckpt <= 3 * ckpt + 2**20 and export <= need_export <= 1.5 * export, (ckpt, need_ckpt)


# ============================================================================================ Ctrl-C
def test_ctrl_c_during_training_is_one_line(tmp_path, capsys, monkeypatch) -> None:
    from vit_edu.training import load_checkpoint, loop

    real, calls = loop.train_one_epoch, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "train_one_epoch", interrupted)
    out = tmp_path / "run"
    code, lines, stdout, err = _run_cli(["train", *NANO_FLAGS, "--epochs", "2", "--out-dir", str(out)], capsys,
                                        monkeypatch)
    assert code == 130 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("vit_edu train: interrupted; the last saved state of the run is in"), lines[0]
    assert load_checkpoint(out / "last.pt")["epoch"] == 1


def test_a_dead_data_loader_worker_is_one_line_with_the_resume_command(tmp_path, capsys, monkeypatch) -> None:
    """A worker process killed mid-run (in a container: out of shared memory) ends the command with one line that
    says what to do and where the run's last state is, not a traceback."""
    import torch.utils.data as tud

    from vit_edu.training import data

    real = data.ShapesDataset.__getitem__

    def dies_in_epoch_2(self, index):
        if self.epoch == 1 and tud.get_worker_info() is not None:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(self, index)

    monkeypatch.setattr(data.ShapesDataset, "__getitem__", dies_in_epoch_2)
    out = tmp_path / "run"
    code, lines, _, err = _run_cli(["train", *NANO_FLAGS, "--epochs", "2", "--workers", "1", "--out-dir", str(out)],
                                   capsys, monkeypatch)
    assert code == 1 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("vit_edu train: error: a data-loading worker process died (DataLoader worker"), lines[0]
    assert "run with --workers 0" in lines[0] and lines[0].endswith(f"train --resume {out / 'last.pt'}"), lines[0]


def test_ctrl_c_names_no_checkpoint_of_another_run(tmp_path, capsys, monkeypatch) -> None:
    """A run that replaces another's checkpoint (--force) and stops before its first save must not send the user
    to --resume the other run's last.pt; a resumed run stopped before its first save still names its own."""
    from vit_edu.training import load_checkpoint, loop

    out = tmp_path / "run"
    code, *_ = _run_cli(["train", *NANO_FLAGS, "--seed", "5", "--out-dir", str(out)], capsys, monkeypatch)
    assert code == 0

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "train_one_epoch", interrupted)
    code, lines, _, err = _run_cli(["train", *NANO_FLAGS, "--seed", "6", "--out-dir", str(out), "--force"], capsys,
                                   monkeypatch)
    assert code == 130 and lines == ["vit_edu train: interrupted"], err
    assert load_checkpoint(out / "last.pt")["config"]["train"]["seed"] == 5  # the other run's, untouched
    code, lines, _, err = _run_cli(["train", "--resume", str(out / "last.pt"), "--epochs", "2"], capsys, monkeypatch)
    assert code == 130 and len(lines) == 1 and f"--resume {out / 'last.pt'}" in lines[0], err


def test_ctrl_c_while_the_command_line_starts_is_one_line(tmp_path) -> None:
    """KeyboardInterrupt while torch is imported (faked by an import hook: deterministic), before main runs."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import sys\n"
        "class Stop:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch':\n"
        "            raise KeyboardInterrupt\n"
        "sys.meta_path.insert(0, Stop())\n")
    env = {**os.environ, "PYTHONPATH": str(hook)}
    res = subprocess.run([sys.executable, "-m", "vit_edu", "train"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 130 and res.stderr == "vit_edu: interrupted\n", res.stderr
    res = subprocess.run([sys.executable, "-c", "import vit_edu"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=120)
    assert "Traceback" in res.stderr  # imported as a library, nothing changes


def test_ctrl_c_while_numpy_loads_is_not_swallowed(tmp_path) -> None:
    """A real SIGINT while torch imports NumPy (sent by an import hook: deterministic). Raised there, the
    KeyboardInterrupt was swallowed by the extension's initialisation and the whole run went on, status 0."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import os, signal, sys\n"
        "class Interrupt:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'numpy':\n"
        "            sys.meta_path.remove(self)\n"
        "            os.kill(os.getpid(), signal.SIGINT)\n"
        "sys.meta_path.insert(0, Interrupt())\n")
    env = {**os.environ, "PYTHONPATH": str(hook), "OMP_NUM_THREADS": "1"}
    env.pop("VIT_EDU_DEBUG", None)
    res = subprocess.run([sys.executable, "-m", "vit_edu", "train", *NANO_FLAGS, "--out-dir", str(tmp_path / "run")],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, preexec_fn=_sigint_default)
    assert (res.returncode, res.stderr, res.stdout) == (130, "vit_edu: interrupted\n", ""), res
    assert not (tmp_path / "run").exists()


def _sigint_default() -> None:
    """In the child: Ctrl-C as on a terminal, also when the tests run in the background (a shell's background job
    starts with SIGINT ignored, and Python keeps it so)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("delay", [0.8, 2.5])
def test_sigint_at_a_random_moment_is_one_line(tmp_path, delay) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("VIT_EDU_DEBUG", None)
    proc = subprocess.Popen([sys.executable, "-m", "vit_edu", "train", *NANO_FLAGS, "--epochs", "50", "--out-dir",
                             str(tmp_path / "run")], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_sigint_default)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    lines = stderr.strip().splitlines()
    assert proc.returncode == 130 and len(lines) == 1 and "Traceback" not in stderr, stderr
    assert "interrupted" in lines[0]


# ============================================================================================ classroom
def test_a_handout_that_fails_half_way_leaves_nothing(tmp_path, capsys, monkeypatch) -> None:
    """A full disk, then Ctrl-C, while the handout is copied (half of the package's files written): no folder (not
    even a temporary one), one line."""
    src, out = _tiny_course(tmp_path), tmp_path / "handout"
    real = shutil.copy2
    for fault, status, words in ((OSError(errno.ENOSPC, "No space left on device"), 1, "No space left on device"),
                                 (KeyboardInterrupt(), 130, "interrupted")):
        calls = []

        def failing(*args, fault=fault, calls=calls, **kwargs):
            calls.append(real(*args, **kwargs))
            if len(calls) == 10:
                raise fault

        monkeypatch.setattr(shutil, "copy2", failing)
        code, lines, stdout, err = _run_cli(["handout", str(out), "--src", str(src)], capsys, monkeypatch)
        assert code == status and len(lines) == 1 and "Traceback" not in err and words in lines[0], err
        assert len(calls) == 10 and sorted(p.name for p in tmp_path.iterdir()) == ["course"]
    monkeypatch.undo()
    assert main(["handout", str(out), "--src", str(src)]) == 0 and (out / "notebooks" / "01_a.ipynb").is_file()


def test_student_copies_that_fail_half_way_keep_the_previous_ones(tmp_path, capsys, monkeypatch) -> None:
    import nbformat

    from vit_edu.classroom import assignments

    src, out = _tiny_course(tmp_path), tmp_path / "student"
    nbformat.write(nbformat.read(src / "01_a.ipynb", as_version=4), src / "02_b.ipynb")
    assert main(["assignments", "--src", str(src), "--out", str(out)]) == 0
    (out / "notes.md").write_text("the teacher's notes stay")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (src / "03_c.ipynb").write_text((src / "01_a.ipynb").read_text())
    real, calls = assignments._write_atomic, []

    for fault, status in ((OSError(errno.ENOSPC, "No space left on device"), 1), (KeyboardInterrupt(), 130)):
        def failing(path, text, fault=fault):
            calls.append(path)
            if len(calls) % 2 == 0:
                raise fault
            real(path, text)

        monkeypatch.setattr(assignments, "_write_atomic", failing)
        code, lines, stdout, err = _run_cli(["assignments", "--src", str(src), "--out", str(out)], capsys, monkeypatch)
        assert code == status and len(lines) == 1 and "Traceback" not in err, err
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the previous copies, whole
        assert sorted(p.name for p in tmp_path.iterdir()) == ["course", "student"]
    monkeypatch.undo()
    assert main(["assignments", "--src", str(src), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["01_a.ipynb", "02_b.ipynb", "03_c.ipynb", "notes.md"]
