"""Saved runs: checkpoints that resume exactly, safetensors exports, and loading either back as a model.

* A checkpoint (``<out_dir>/last.pt``) holds only tensors and plain Python values, so it is read with
  ``torch.load(..., weights_only=True)`` and never runs pickled code. It carries everything a resumed run
  needs to take bitwise the steps an uninterrupted one takes: weights, optimizer, scheduler, epochs done,
  RNG states, history, and both configs.
* An export (``.safetensors``) holds the weights and, in its header, the model config and provenance.
* Files are written through :func:`vit_edu.fileio.atomic_write` (a crash leaves the previous file whole)
  and read through :mod:`vit_edu.convert`'s checked readers, the one place weight files are read.
* Every part of a loaded checkpoint is checked by type once, on loading (:func:`load_checkpoint`: epoch,
  configs, weights, notes; :func:`check_resumable`: optimizer, scheduler, RNG states, history, stop position),
  so a damaged file is one ValueError naming the file and the part. :func:`output_bytes` tells how large the
  files will be, for the free-space check before a run.
"""

from __future__ import annotations

import json
import math
import os
import random
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
import torch
from torch import nn

from ..config import ViTConfig, _not_plain
from ..convert import (TENSOR_DIGEST_KEY, load_checked, load_safetensors_checked, tensor_digest,
                       torch_load_checked)
from ..fileio import atomic_write, looks_like_safetensors, looks_like_torch_save
from ..models import check_has_values
from ..vit import VisionTransformer
from .config import MAX_EPOCHS, TrainConfig, model_field
from .distributed import unwrap

PathLike = Union[str, os.PathLike]

CHECKPOINT_FORMAT = "vit_edu.checkpoint/1"
COURSE_CHECKPOINT = Path(__file__).resolve().parent.parent / "assets" / "vit_course_shapes.safetensors"
HISTORY_KEYS = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "images_per_s", "elapsed_s")

# Fields that --resume may change: they decide where and how fast the run goes, or how long its schedule is
# (epochs: the cosine is recomputed for the new length, as the shipped checkpoint's recipe does), never what
# a step computes. Any other field that differs from the checkpoint's is refused: the optimizer and scheduler
# states would silently keep the old lr and weight decay, another batch size or data would break the exact resume.
RESUME_MAY_CHANGE = frozenset({"epochs", "stop_after_epochs", "time_budget_s", "eval_every", "out_dir", "device",
                               "num_workers", "progress", "data_root", "download", "save_checkpoints", "n_test",
                               "threads"})


def new_history() -> Dict[str, List[float]]:
    """The per-epoch record a run keeps (and its checkpoint carries): one empty list per metric."""
    return {k: [] for k in HISTORY_KEYS}


# ------------------------------------------------------------------------------------------ RNG states
def rng_state() -> dict:
    """RNG states of torch, NumPy and Python (and CUDA) as tensors and lists, so weights_only loading accepts them."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Undo :func:`rng_state`: the same "random" numbers come again (dropout masks, augmentations)."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    v, internal, gauss = state["python"]
    random.setstate((v, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ------------------------------------------------------------------------------------------ checkpoints
def save_checkpoint(path: PathLike, model: nn.Module, optimizer: Optional[torch.optim.Optimizer] = None,
                    scheduler: Optional[Any] = None, epoch: int = 0, history: Optional[dict] = None,
                    train_config: Optional[TrainConfig] = None, extra: Optional[dict] = None,
                    rng: Optional[dict] = None) -> Path:
    """Everything needed to resume: weights, optimizer, scheduler, epochs done, RNG states (``rng``, else the
    current ones), history, configs. A model whose ``config`` no longer builds its weights is refused before
    anything is written (:func:`check_config_matches`)."""
    vit = unwrap(model)
    check_has_values(vit, "save_checkpoint")
    check_config_matches(vit, path)
    if not _is_int(epoch) or not 0 <= epoch <= MAX_EPOCHS:  # load_checkpoint would refuse the file as damaged
        raise ValueError(f"save_checkpoint: epoch must be an int in [0, {MAX_EPOCHS}] (epochs done), got {epoch!r}")
    for name, value in (("extra", extra), ("history", history)):
        where = _not_plain(value, name, tensors=True) if value is not None else ""
        if where:  # torch.load(weights_only=True) could never read the file back, and it would replace a good one
            raise TypeError(f"save_checkpoint: {name} must hold plain values (str, int, float, bool, None, tensors, "
                            f"and lists and dicts of them) so the checkpoint reads back with weights_only=True; got {where} "
                            f"(convert it, e.g. float(x) or str(x))")
    if extra is not None and not isinstance(extra, dict):
        raise TypeError(f"save_checkpoint: extra must be a dict, got {type(extra).__name__}")
    ckpt = {
        "format": CHECKPOINT_FORMAT,
        "config": {"model": vit.config.to_dict(),
                   "train": train_config.to_dict() if train_config is not None else None},
        "model": {k: v.detach().cpu() for k, v in vit.state_dict().items()},
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "epoch": epoch,
        "rng": rng if rng is not None else rng_state(),
        "history": history if history is not None else new_history(),
        "extra": extra or {},
    }
    return atomic_write(path, lambda f: torch.save(ckpt, f))


def output_bytes(model: nn.Module, optimizer: str = "adamw") -> Tuple[int, int]:
    """(bytes of a checkpoint, bytes of an export) of ``model``, estimated from its tensors before any is
    written: fp32 weights and buffers, AdamW's two moments (SGD's one momentum) per parameter, and headroom
    for the RNG states, history and the file format. Over-estimates a little, never under."""
    vit = unwrap(model)
    params = sum(p.numel() for p in vit.parameters())
    tensors = sum(t.numel() for t in vit.state_dict().values())
    count = len(vit.state_dict())
    moments = 2 if optimizer == "adamw" else 1
    export = 4 * tensors + 256 * count + 64 * 1024  # the JSON header: names, shapes, the config
    checkpoint = 4 * (tensors + moments * params) + 3 * 512 * count + 1024 * 1024  # zip entries, RNG, history
    return int(checkpoint * 1.05), int(export * 1.05)


def load_checkpoint(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`, without unpickling code.

    Every bad file is one error that says what was expected and what came: FileNotFoundError (missing),
    IsADirectoryError (a folder), ValueError (empty, truncated, text, a .safetensors export, pickled code,
    another program's checkpoint, or a vit_edu checkpoint with parts missing).
    """
    path = Path(path)
    expected = f"a vit_edu training checkpoint (the last.pt that training writes, format {CHECKPOINT_FORMAT!r})"
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}; expected {expected}")
    if path.suffix == ".safetensors":
        raise ValueError(f"{path} is a .safetensors export (weights only); expected {expected}. An export can "
                         f"be evaluated (load_model) but not resumed")
    if looks_like_safetensors(path):  # renamed, or named ".safetensors" (no suffix): torch.load would misread it
        raise ValueError(f"{path} is a .safetensors export (weights only) under another name; expected {expected}. "
                         f"An export cannot be resumed; to evaluate it (evaluate --checkpoint, load_model) give it a "
                         f"name that ends in .safetensors")
    ckpt = torch_load_checked(path, expected, map_location=map_location)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        got = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"{path} is not a vit_edu training checkpoint: expected format "
                         f"{CHECKPOINT_FORMAT!r}, got {got!r}")
    missing = [k for k in ("config", "model", "epoch") if k not in ckpt]
    if not missing and (not isinstance(ckpt["config"], dict) or "model" not in ckpt["config"]):
        missing = ["config.model"]
    if missing:
        raise ValueError(f"{path} is an incomplete vit_edu checkpoint: it lacks {', '.join(missing)}")
    _check_parts(ckpt, path)
    return ckpt


# ------------------------------------------------------------------------------------------ its parts, checked
def _damaged(path: PathLike, part: str, expected: str, got: Any) -> ValueError:
    shown = repr(got) if not isinstance(got, (dict, list, torch.Tensor)) else type(got).__name__
    return ValueError(f"{path} is a damaged vit_edu checkpoint: its {part} must be {expected}, got {shown}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_parts(ckpt: dict, path: PathLike) -> None:
    """What every reader of a checkpoint needs, checked once: its epoch, configs, weights and notes. A damaged
    value is named with the file (never blamed on a flag the user did not give)."""
    if not _is_int(ckpt["epoch"]) or not 0 <= ckpt["epoch"] <= MAX_EPOCHS:
        raise _damaged(path, "epoch", f"an int in [0, {MAX_EPOCHS}]", ckpt["epoch"])
    try:
        ViTConfig.from_dict(ckpt["config"]["model"])
    except (TypeError, ValueError, AttributeError) as err:
        raise ValueError(f"{path} is a damaged vit_edu checkpoint: its model config is not valid ({err})") from None
    train = ckpt["config"].get("train")
    if train is not None:
        if not isinstance(train, dict):
            raise _damaged(path, "training config", "a dict", train)
        try:
            TrainConfig.from_dict(train)
        except (TypeError, ValueError) as err:  # "TrainConfig.lr" would be blamed on --lr: name the stored field
            raise ValueError(f"{path} is a damaged vit_edu checkpoint: its training config is not valid "
                             f"({str(err).replace('TrainConfig.', 'stored field ')})") from None
    weights = ckpt["model"]
    if not isinstance(weights, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                for k, v in weights.items()):
        raise _damaged(path, "weights ('model')", "a dict of tensors by name", weights)
    extra = ckpt.get("extra")
    if extra is not None and not isinstance(extra, dict):
        raise _damaged(path, "notes ('extra')", "a dict", extra)
    classes = (extra or {}).get("classes")
    if classes is not None and (not isinstance(classes, list) or not all(isinstance(c, str) for c in classes)):
        raise _damaged(path, "class names ('extra.classes')", "a list of strings", classes)


def _check_rng(state: Any, path: PathLike, part: str) -> None:
    """RNG states that can be set: tried, then the current ones put back."""
    if not isinstance(state, dict):
        raise _damaged(path, part, "a dict of RNG states", state)
    before = rng_state()
    try:
        set_rng_state(state)
    except (TypeError, ValueError, RuntimeError, KeyError, IndexError, AttributeError) as err:
        raise ValueError(f"{path} is a damaged vit_edu checkpoint: its {part} cannot be restored "
                         f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None
    finally:
        set_rng_state(before)


def _check_resume_parts(ckpt: dict, path: PathLike) -> None:
    """What a resumed run needs beyond the weights: optimizer, scheduler, RNG states, history, where it stopped."""
    opt = ckpt["optimizer"]
    if (not isinstance(opt, dict) or not isinstance(opt.get("state"), dict)
            or not isinstance(opt.get("param_groups"), list)
            or not all(isinstance(g, dict) for g in opt["param_groups"])):
        raise _damaged(path, "optimizer state", "a dict with 'state' and 'param_groups'", opt)
    for i, group in enumerate(opt["param_groups"]):
        for key in ("lr", "weight_decay", "initial_lr"):
            if key in group and not (_is_real(group[key]) and math.isfinite(group[key]) and group[key] >= 0):
                raise _damaged(path, f"optimizer's param_groups[{i}]['{key}']", "a finite number >= 0", group[key])
    for index, state in opt["state"].items():
        values = state.values() if isinstance(state, dict) else [state]
        for value in values:
            if isinstance(value, torch.Tensor):
                if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                    raise _damaged(path, f"optimizer state of parameter {index}", "finite", "NaN or inf values")
            elif not _is_real(value):
                raise _damaged(path, f"optimizer state of parameter {index}", "tensors and numbers", value)
    sched = ckpt["scheduler"]
    if not isinstance(sched, dict):
        raise _damaged(path, "scheduler state", "a dict", sched)
    if not _is_int(sched.get("last_epoch")) or sched["last_epoch"] < -1:
        raise _damaged(path, "scheduler's last_epoch", "an int >= -1", sched.get("last_epoch"))
    lrs = sched.get("base_lrs")
    if (not isinstance(lrs, list) or len(lrs) != len(opt["param_groups"])
            or not all(_is_real(v) and math.isfinite(v) and v >= 0 for v in lrs)):
        raise _damaged(path, "scheduler's base_lrs", f"{len(opt['param_groups'])} finite numbers (one per "
                                                      f"optimizer group)", lrs)
    _check_rng(ckpt["rng"], path, "RNG states ('rng')")
    history = ckpt["history"]
    if (not isinstance(history, dict) or any(not isinstance(history.get(k), list) for k in HISTORY_KEYS)
            or len({len(history[k]) for k in HISTORY_KEYS}) != 1
            or not all(_is_real(v) for k in HISTORY_KEYS for v in history[k])):
        raise _damaged(path, "history", f"a dict of equally long lists of numbers ({', '.join(HISTORY_KEYS)})", history)
    position = (ckpt.get("extra") or {}).get("stopped_at")
    if position is not None:
        if not isinstance(position, dict) or not _is_int(position.get("batches")) or position["batches"] < 1:
            raise _damaged(path, "stop position ('extra.stopped_at')", "None or {'batches': int >= 1, 'epoch_rng': "
                                                                         "...}", position)
        _check_rng(position.get("epoch_rng"), path, "RNG states at the start of the stopped epoch")


# ------------------------------------------------------------------------------------------ resuming
def check_resumable(ckpt: dict, path: PathLike) -> None:
    """A checkpoint ``fit(resume=...)`` can continue: it holds the optimizer, scheduler, RNG and train config."""
    missing = [k for k in ("optimizer", "scheduler", "rng", "history") if ckpt.get(k) is None]
    if ckpt["config"].get("train") is None:
        missing.append("the training config")
    if missing:
        raise ValueError(f"{path} cannot be resumed: it holds no {', '.join(missing)} (a checkpoint saved "
                         f"without them, e.g. save_checkpoint(path, model)); expected the last.pt that fit writes")
    _check_resume_parts(ckpt, path)


def resume_changes(stored: dict, config: TrainConfig) -> Tuple[Dict[str, Tuple[Any, Any]], Dict[str, Tuple[Any, Any]]]:
    """(allowed, refused): {field: (checkpoint's value, config's value)} for the fields whose effective values
    differ (TrainConfig.effective: a stored None and the value it stands for, e.g. image_size 32, are the same)."""
    before = TrainConfig.from_dict(stored)
    old, new = before.to_dict(), config.to_dict()
    allowed, refused = {}, {}
    for name in new:
        if name == "model_overrides":  # {} and {"dropout": 0.0} build the same model when the preset's is 0.0
            keys = set(old[name]) | set(new[name])
            same = all(model_field(old["model"], old[name], k) == model_field(new["model"], new[name], k)
                       for k in keys)
            if not same:
                refused[name] = (old[name], new[name])
            continue
        was, now = before.effective(name), config.effective(name)
        if was != now:
            (allowed if name in RESUME_MAY_CHANGE else refused)[name] = (was, now)
    return allowed, refused


def check_resume_epochs(ckpt: dict, config: TrainConfig, path: PathLike) -> None:
    """A resumed schedule cannot end before the epochs its checkpoint has trained (an epoch a time budget stopped
    counts as begun): the run would be taken for finished, and an export would record fewer epochs than it had."""
    stopped = bool((ckpt.get("extra") or {}).get("stopped_at"))
    begun = ckpt["epoch"] + stopped
    if config.epochs < begun:
        trained = f"{ckpt['epoch']} epochs" + (f" and part of epoch {begun}" if stopped else "")
        raise ValueError(f"--epochs {config.epochs} (TrainConfig.epochs) ends the schedule before what {path} has "
                         f"trained ({trained}); expected --epochs >= {begun} (or leave it out: the run's own "
                         f"{ckpt['config']['train'].get('epochs')})")


def checkpoint_to_resume(path: PathLike, config: TrainConfig, map_location: Union[str, torch.device] = "cpu",
                         allow_finished: bool = False) -> Tuple[dict, Dict[str, Tuple[Any, Any]]]:
    """(checkpoint, allowed changes) for ``fit(config, resume=path)``; a ValueError before any work if the
    checkpoint cannot be resumed, ``config`` would change what a step computes, or the run is finished (unless
    ``allow_finished``: a finished run resumed only to export its weights again)."""
    ckpt = load_checkpoint(path, map_location=map_location)
    check_resumable(ckpt, path)
    changed, refused = resume_changes(ckpt["config"]["train"], config)
    if refused:
        raise ValueError(f"resuming {path} would change " + ", ".join(
            f"{k} from {old!r} to {new!r}" for k, (old, new) in refused.items())
            + "; a resumed run keeps the checkpoint's settings (only "
            f"{', '.join(sorted(RESUME_MAY_CHANGE))} may change): start a new run to use other values")
    check_resume_epochs(ckpt, config, path)
    if ckpt["epoch"] >= config.epochs and not allow_finished:
        raise ValueError(f"{path} is a finished run ({ckpt['epoch']} of {config.epochs} epochs done): "
                         f"nothing to resume; to train longer, resume with more epochs (--epochs) than "
                         f"{ckpt['epoch']}; to write its weights again, resume it with --export; or start a new run")
    return ckpt, changed


# ------------------------------------------------------------------------------------------ exports
def export_safetensors(model: nn.Module, path: PathLike, metadata: Optional[Dict[str, Any]] = None) -> Path:
    """Weights only, as safetensors, with the model config (JSON) in the header metadata.

    Metadata values must be strings in safetensors; anything else is stored as JSON. A file already at ``path`` is
    replaced (atomically); ``fit`` checks first that it is not another run's (:func:`check_export_replaceable`). A
    model whose ``config`` no longer builds its weights is refused before anything is written.
    """
    from safetensors.torch import save

    vit = unwrap(model)
    check_has_values(vit, "export_safetensors")
    check_config_matches(vit, path)
    meta = {"format": "vit_edu", "config": json.dumps(vit.config.to_dict())}
    meta.update(metadata_strings(metadata, EXPORT_RESERVED, "export_safetensors: metadata"))
    tensors = {k: v.detach().cpu().contiguous() for k, v in vit.state_dict().items()}
    meta[TENSOR_DIGEST_KEY] = tensor_digest(tensors)  # load_model checks the bytes against it
    blob = save(tensors, metadata=meta)
    return atomic_write(path, lambda f: f.write(blob))


EXPORT_RESERVED = ("format", "config", TENSOR_DIGEST_KEY)  # what load_model reads from an export's header


def metadata_strings(metadata: Optional[Dict[str, Any]], reserved: Tuple[str, ...], what: str) -> Dict[str, str]:
    """``metadata`` as safetensors header strings (a str as it is, anything else as JSON), or one error naming the
    key: a key the header needs for itself (``reserved``), a key that is not a str, a value JSON cannot hold."""
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise TypeError(f"{what} must be a dict of str keys, got {type(metadata).__name__}")
    out = {}
    for k, v in metadata.items():
        if not isinstance(k, str):
            raise TypeError(f"{what}: keys must be str, got {k!r} ({type(k).__name__})")
        if k in reserved:
            raise ValueError(f"{what}: the key {k!r} is reserved (the header's own {', '.join(map(repr, reserved))}); "
                             f"store your value under another name")
        where = "" if isinstance(v, str) else _not_plain(v, f"key {k!r}")
        if where:
            raise TypeError(f"{what}: values must be str or plain JSON values (int, float, bool, None, lists and "
                            f"dicts of them); got {where} (convert it, e.g. float(x))")
        out[k] = v if isinstance(v, str) else json.dumps(v)
    return out


def check_config_matches(model: nn.Module, path: PathLike) -> None:
    """The config a file records must build the weights it holds, or the file cannot be loaded back: a model's
    ``config`` is a plain dataclass, and ``model.config.num_classes = 3`` after building changes the record, not the
    head. The config is built again on the "meta" device (no memory) and its state_dict's names and shapes compared
    with the model's; the first difference is a ValueError, raised before anything is written."""
    if not isinstance(model, VisionTransformer):
        return
    try:
        config = ViTConfig.from_dict(model.config.to_dict())
        with torch.device("meta"):
            built = VisionTransformer(config).state_dict()
    except (TypeError, ValueError, AttributeError) as err:
        raise ValueError(f"cannot save to {path}: the model's config is not valid any more ({err}); was model.config "
                         f"changed after the model was built? Expected a config that describes the model") from None
    have = model.state_dict()
    missing = [k for k in have if k not in built]
    extra = [k for k in built if k not in have]
    shapes = [(k, tuple(have[k].shape), tuple(built[k].shape)) for k in have
              if k in built and tuple(have[k].shape) != tuple(built[k].shape)]
    if missing or extra or shapes:
        first = (f"{shapes[0][0]} has shape {shapes[0][1]} in the model but {shapes[0][2]} in a model built from its "
                 f"config" if shapes else f"the model has {missing[0]}, a model built from its config does not"
                 if missing else f"a model built from its config has {extra[0]}, the model does not")
        raise ValueError(f"cannot save to {path}: the model's config does not build this model ({first}), so the "
                         f"file could not be loaded back; expected a config that describes the model. Was "
                         f"model.config changed after building (config.num_classes = k does not change the head: "
                         f"build a new model, create_model(name, num_classes=k)), or a layer replaced without it "
                         f"(after model.head = torch.nn.Linear(features, k) set model.config.num_classes = k too)?")


def check_export_replaceable(path: PathLike, config: TrainConfig, resume: Optional[PathLike] = None,
                             force: bool = False, what: str = "export file (--export)") -> None:
    """A run's export replaces a file already at ``path`` only with ``force``, or when that file is the export of the
    run being resumed: a vit_edu export whose recorded ``train_config`` ran in the folder of ``resume`` (its
    ``out_dir``) with the same settings (every field a resume may not change, :func:`resume_changes`). Another
    run's export, or a file of any other kind, would be lost without a word: a ValueError before any work."""
    p = Path(path)
    if force or not p.is_file():  # nothing there; a folder or a pipe: check_writable_file says why
        return
    try:
        meta = read_safetensors_metadata(p) if looks_like_safetensors(p) else None
    except ValueError:
        meta = None
    train = _maybe_json(meta.get("train_config", "null")) if meta and meta.get("format") == "vit_edu" else None
    ran_in = train.get("out_dir") if isinstance(train, dict) else None
    if resume is not None and isinstance(ran_in, str) and Path(ran_in).resolve() == Path(resume).resolve().parent:
        try:
            refused = resume_changes(train, config)[1]
        except (TypeError, ValueError, AttributeError):
            refused = {"train_config": None}
        if not refused:
            return  # this run's own export, written before it stopped (or finished): replace it
    if isinstance(ran_in, str):
        last = Path(ran_in) / "last.pt"
        again = (f"to write that run's weights there again resume it (--resume {last} --export {p}), "
                 if resume is None and last.is_file() else "")
        kind = f"the export of another run (trained in {ran_in})"
    else:
        again = ""
        kind = ("a vit_edu export with no record of its run" if meta and meta.get("format") == "vit_edu" else
                "a .safetensors file not written by vit_edu" if meta is not None else
                "a file that is not a vit_edu export")
    raise ValueError(f"{what} {p} already exists and is {kind}; {again}replace it with --force "
                     f"(fit(..., force=True)), or give another --export")


def check_export_name(path: PathLike, what: str = "export") -> None:
    """An export's name ends in .safetensors, with a name before it: a file named just ``.safetensors`` has no
    suffix (it is a hidden file), so load_model and evaluate would take it for a .pt checkpoint."""
    text = os.fspath(path)
    if not text.endswith(".safetensors") or Path(text).suffix != ".safetensors":
        bare = " (a name is needed before the .safetensors)" if Path(text).name == ".safetensors" else ""
        raise ValueError(f"{what} expects a path ending in .safetensors, e.g. model.safetensors, "
                         f"got {text!r}{bare}")


def read_safetensors_metadata(path: PathLike) -> Dict[str, str]:
    """The header metadata of a .safetensors file, without loading its tensors (damaged or foreign: one ValueError)."""
    return load_safetensors_checked(path, "a .safetensors file", with_tensors=False)[1]


# ------------------------------------------------------------------------------------------ loading a model
def load_model(path: PathLike, device: Union[str, torch.device] = "cpu") -> VisionTransformer:
    """A VisionTransformer in eval mode from a training checkpoint (.pt) or an exported .safetensors file.

    A missing path, a folder, or a file that is not one of the two gives one clear error (see load_checkpoint).
    """
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must be a torch device such as 'cpu' or 'cuda:0', got {device!r} ({err})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} asked for, but this PyTorch sees no CUDA GPU; use device='cpu'")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device 'mps' asked for, but this PyTorch has no Apple GPU (MPS); use device='cpu'")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model file not found: {path}; expected a .pt training checkpoint or a "
                                f".safetensors export")
    if path.suffix == ".safetensors":
        if looks_like_torch_save(path):  # torch.save's format: a checkpoint under an export's name
            raise ValueError(f"{path} is a torch.save file (a .pt training checkpoint?) under a .safetensors name; "
                             f"expected a .safetensors export. To load a checkpoint, give it a name that ends in .pt")
        state, meta = load_safetensors_checked(path, "a .safetensors export written by vit_edu")  # digests checked
        if TENSOR_DIGEST_KEY not in meta:
            warnings.warn(f"{path} has no digest of its weights (an export written before vit_edu stored one): "
                          f"damage to it cannot be detected; export it again to add one", stacklevel=2)
        if "config" not in meta:
            raise ValueError(f"{path} has no 'config' in its safetensors metadata; "
                             f"expected a file written by vit_edu.training.export_safetensors")
        try:
            config = ViTConfig.from_dict(json.loads(meta["config"]))
        except (ValueError, TypeError) as err:
            raise ValueError(f"{path}: its 'config' metadata is not a valid ViTConfig ({err})") from None
        state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    else:
        ckpt = load_checkpoint(path)
        config = ViTConfig.from_dict(ckpt["config"]["model"])
        state = ckpt["model"]
    model = VisionTransformer(config)
    load_checked(model, state, source=str(path))
    return model.to(device).eval()


def pretrained_course_model(device: Union[str, torch.device] = "cpu") -> Tuple[VisionTransformer, dict]:
    """The course ViT trained on the shapes data and shipped with the package: (model, info).

    ``info`` holds the class names, the test accuracy measured at export, the command that produced it, its seed
    and the ``palette`` of the shapes images it was trained on (draw test images with the same one).
    """
    if not COURSE_CHECKPOINT.is_file():
        raise FileNotFoundError(f"the shipped checkpoint is missing: {COURSE_CHECKPOINT}")
    meta = read_safetensors_metadata(COURSE_CHECKPOINT)
    info = {k: _maybe_json(v) for k, v in meta.items() if k not in ("config", TENSOR_DIGEST_KEY)}
    info["palette"] = _palette_of(info.get("train_config"))  # draw its test images as it was trained
    return load_model(COURSE_CHECKPOINT, device=device), info


def _maybe_json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


# ------------------------------------------------------------------------------------------ its classes
def stored_classes(path: PathLike) -> Optional[List[str]]:
    """The class names a .pt checkpoint or .safetensors export was trained on, or None if it does not say."""
    path = Path(path)
    if path.suffix == ".safetensors":
        classes = _maybe_json(read_safetensors_metadata(path).get("classes", "null"))
    else:
        classes = (load_checkpoint(path).get("extra") or {}).get("classes")
    return [str(c) for c in classes] if isinstance(classes, list) else None


def stored_palette(path: PathLike) -> str:
    """The shapes palette ("colour", "grey" or "mottled") a .pt checkpoint or .safetensors export was trained on
    ("colour", the default, when it does not say): its test images must be drawn the same way."""
    path = Path(path)
    if path.suffix == ".safetensors":
        train = _maybe_json(read_safetensors_metadata(path).get("train_config", "null"))
    else:
        train = (load_checkpoint(path).get("config") or {}).get("train")
    return _palette_of(train)


def _palette_of(train_config: Any) -> str:
    """The palette recorded in a run's TrainConfig dict; "colour" when there is none (runs from before the option)."""
    palette = train_config.get("palette", "colour") if isinstance(train_config, dict) else "colour"
    return palette if isinstance(palette, str) else "colour"


def check_classes_match(model: VisionTransformer, model_classes: Optional[List[str]], data_classes: List[str],
                        source: str, data_name: str) -> None:
    """Refuse to evaluate a model on data whose classes are not the ones it was trained on (in that order).

    Otherwise label k of the data is scored against output k of the model, and a model that is right
    about every image can report 0 %.
    """
    data_classes = list(data_classes)
    if model_classes is not None and list(model_classes) != data_classes:
        how = "in another order" if sorted(model_classes) == sorted(data_classes) else ""
        raise ValueError(f"classes do not match: {source} was trained on {len(model_classes)} classes "
                         f"{_short_list(model_classes)}, but {data_name} has {len(data_classes)} classes "
                         f"{_short_list(data_classes)}{' ' + how if how else ''}")
    if model.config.num_classes != len(data_classes):
        raise ValueError(f"classes do not match: {source} has {model.config.num_classes} outputs, but {data_name} "
                         f"has {len(data_classes)} classes {_short_list(data_classes)}")


def _short_list(items: List[str], limit: int = 10) -> str:
    shown = ", ".join(map(str, items[:limit]))
    return f"[{shown}{f', ... ({len(items) - limit} more)' if len(items) > limit else ''}]"
