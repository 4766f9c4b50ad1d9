"""The command line: ``python -m vit_edu <command>`` (also installed as ``vit-edu``).

    python -m vit_edu train                  # the default run: fit(TrainConfig()), its defaults listed by --help
    python -m vit_edu evaluate               # the shipped checkpoint on its own test set
    python -m vit_edu demo                   # evaluate + draw attention rollout and position-embedding figures
    torchrun --nproc_per_node=2 -m vit_edu train    # the same run on two processes (DistributedDataParallel)
    python -m vit_edu assignments ...        # nbgrader metadata + student copies (vit_edu.classroom.assignments)
    python -m vit_edu handout OUT_DIR        # what students get: student notebooks, the package, a README
    python -m vit_edu grade ...              # grade a class's submissions (vit_edu.classroom.grading)

The ``train`` flags are built from the fields of ``vit_edu.training.TrainConfig`` (name, help, default), so
the command line and ``fit(TrainConfig())`` cannot drift apart.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
import time
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Optional

from ._startup import OneLineParser, started
from .fileio import OutputError  # the standard library only: a fast start

# Errors a user can cause (a missing dataset, a bad flag value, an output folder that cannot take the result):
# one line on stderr, exit 2, no traceback. Other OSErrors (a disk filling up mid-run) exit 1, Ctrl-C 130,
# SIGTERM 143.
USER_ERRORS = (FileNotFoundError, ValueError, TypeError, NotADirectoryError, IsADirectoryError, PermissionError)
INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C
TERMINATED = 143  # 128 + SIGTERM, what a shell reports for `kill`


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a batch system ending a job) while a command runs: it stops as after Ctrl-C (a write in
    progress cleaned up, the last checkpoint whole and named with the command that continues it), instead of the
    process ending without a word."""


def _terminate(signum, frame) -> None:
    raise Terminated()


@contextmanager
def _sigterm_stops() -> Iterator[None]:
    """SIGTERM raises :class:`Terminated` for the block, where it would end the process at once (its default)."""
    import signal
    import threading

    catch = threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    if catch:
        signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        if catch:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


DEMO_SEED = 2024
DEMO_MAX_IMAGES = 16  # columns of the rollout figure: more make an unreadable strip (and take minutes to draw)
FIGURE_BYTES = 2 * 2**20  # room the demo's two figures need, at most (each PNG is some 100 KiB)
DATA_FIELDS = ("dataset", "data_root", "download", "image_size", "device", "num_workers")  # train and evaluate
EVALUATE_HELP = {"image_size": "draw or resize the images to this size (default: the size the checkpoint was built "
                               "for; another size only for a model with dynamic_img_size)"}  # not train's default


# ================================================================================================ flags
def _meta(name: str) -> dict:
    """A TrainConfig field's command-line description: flag, help, none, choices."""
    from .training.config import TrainConfig

    return TrainConfig.__dataclass_fields__[name].metadata


def flag_of(name: str) -> Optional[str]:
    """The command-line flag of a TrainConfig field (``--time-budget`` for time_budget_s), or None."""
    return _meta(name).get("flag")


def train_fields() -> List[str]:
    """The TrainConfig fields that have a flag, in declaration order."""
    from dataclasses import fields

    from .training.config import TrainConfig

    return [f.name for f in fields(TrainConfig) if f.metadata.get("flag")]


def _value_type(name: str) -> Any:
    """int, float, str, bool or list (of str) for a TrainConfig field, Optional[...] unwrapped."""
    import typing

    from .training.config import TrainConfig

    hint = typing.get_type_hints(TrainConfig)[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is typing.Union and len(args) == 1:
        hint = args[0]
    return typing.get_origin(hint) or hint


def _comma_list(text: str) -> List[str]:
    return [c.strip() for c in text.split(",") if c.strip()]


PATH_FIELDS = ("data_root", "out_dir")  # the TrainConfig fields that name a file or folder


def path_arg(text: str) -> str:
    """The argparse type of every flag that names a file or folder: an empty one (``--out-dir ""``, e.g. an
    unset shell variable) is refused, not taken for "not given" (the default) or for the current folder."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"expected a file or folder name, got an empty one ({text!r})")
    return text


def _add_field(p: argparse.ArgumentParser, name: str, help: Optional[str] = None) -> None:
    """One flag, built from the TrainConfig field: its name, help, choices, and the default in words (``help``:
    another command's own text, where the flag means something else there).

    Every flag defaults to None ("not given"), so train_config_from_args can tell a flag left out (the
    config's default, or the checkpoint's value with --resume) from one given."""
    from .training.config import default_text, default_value

    meta = _meta(name)
    text = (help or f"{meta['help']} (default: {default_text(name)})").replace("%", "%%")
    if name == "model_overrides":  # --dropout sets model_overrides["dropout"]
        p.add_argument(meta["flag"], dest="dropout", type=float, default=None, help=text)
        return
    if not meta["flag"].startswith("--"):  # the dataset: positional
        p.add_argument(meta["flag"], nargs="?", default=None, help=text)
        return
    kind = _value_type(name)
    kw: Dict[str, Any] = {"dest": name, "default": None, "help": text}
    if kind is bool:  # a switch that is off by default, or an on/off pair when None means "it depends"
        kw["action"] = argparse.BooleanOptionalAction if default_value(name) is None else "store_true"
    else:
        kw["type"] = _comma_list if kind is list else path_arg if name in PATH_FIELDS else kind
        kw["choices"] = meta.get("choices")
        kw["metavar"] = None if kw["choices"] else meta["flag"][2:].upper().replace("-", "_")
    p.add_argument(meta["flag"], **kw)


def build_parser() -> argparse.ArgumentParser:
    from .training.config import default_text

    parser = OneLineParser(prog="python -m vit_edu",
                                     description="vit_edu: train, evaluate and look inside a Vision Transformer.")
    sub = parser.add_subparsers(dest="command", metavar="command")

    t = sub.add_parser("train", help=f"train a ViT (default: {default_text('model')} on the "
                                     f"{default_text('dataset')} data, {default_text('time_budget_s')} s budget)",
                       description="Train a ViT with AdamW, warm-up + cosine schedule and optional label smoothing. "
                                   "Works under torchrun for several processes. Flags left out take the "
                                   "TrainConfig defaults (fit(TrainConfig()) is the same run), or the checkpoint's "
                                   "values with --resume (which may only change " + ", ".join(_resume_flags()) + ").")
    for name in train_fields():
        _add_field(t, name)
    t.add_argument("--resume", default=None, type=path_arg,
                   help="continue from this checkpoint (e.g. runs/.../last.pt), saving into its folder (unless "
                        "--out-dir is given)")
    t.add_argument("--export", default=None, type=path_arg,
                   help="also write the final weights to this .safetensors file (a file already there is replaced "
                        "only when it is this run's own export, i.e. --resume of the run that wrote it, or with "
                        "--force)")
    t.add_argument("--force", action="store_true",
                   help="replace the checkpoint of another run in --out-dir, or a file at --export that is not this "
                        "run's own export, or --resume on training images that changed (all refused without it)")

    e = sub.add_parser("evaluate", help="loss and accuracy of a checkpoint (default: the shipped one)",
                       description="Evaluate a .pt checkpoint or .safetensors export on a dataset split.")
    for name in DATA_FIELDS:
        _add_field(e, name, EVALUATE_HELP.get(name))
    e.add_argument("--classes", type=_comma_list, default=None,
                   help="shapes only: draw only these shapes, e.g. circle,square (default: the classes the "
                        "checkpoint was trained on, all eight for the shipped model); some of its classes are "
                        "scored against all of its outputs")
    e.add_argument("--checkpoint", default=None, type=path_arg,
                   help="a .pt or .safetensors file (default: the shipped course model)")
    e.add_argument("--split", default="test", choices=["train", "test"], help="dataset split (default: test)")
    e.add_argument("--n", type=int, default=None,
                   help="number of images (default: shapes: the run's --n-test/--n-train, as its checkpoint records; "
                        "with --split train the first N of the run's training images; a fixed dataset: all of the "
                        "split, or with --n a fixed random subset mixed over the classes)")
    e.add_argument("--seed", type=int, default=None,
                   help="seed of the generated shapes images (shapes only; default: the run's own test seed, or train "
                        "seed with --split train; a seed the run trained on is refused as a test set)")
    e.add_argument("--batch-size", type=int, default=256, help="batch size (default: 256)")

    d = sub.add_parser("demo", help="a one-minute tour: evaluate the shipped model and draw what it attends to",
                       description="Loads the shipped checkpoint, evaluates it on a fresh shapes test set and "
                                   "writes attention-rollout and position-embedding figures into the figures "
                                   "folder (see --figures-dir).")
    d.add_argument("--n", type=int, default=1000, help="test images to evaluate (default: 1000)")
    d.add_argument("--seed", type=int, default=DEMO_SEED, help=f"seed of the fresh test set (default: {DEMO_SEED})")
    d.add_argument("--images", type=int, default=6,
                   help=f"images in the rollout figure, one column each (default: 6, at most {DEMO_MAX_IMAGES})")
    d.add_argument("--figures-dir", default=None, type=path_arg,
                   help="where to write the figures (default: $VIT_EDU_FIGURES if set, else build/figures/ when run "
                        "in the repository's root or notebooks/ folder, else figures/ in the current folder)")

    sub.add_parser("assignments", add_help=False,
                   help="write the nbgrader metadata and the student copies of the notebooks (see: assignments --help)")
    sub.add_parser("handout", add_help=False,
                   help="write the student handout: notebooks without solutions, the package, a README "
                        "(see: handout --help)")
    sub.add_parser("grade", add_help=False, help="grade a class's submissions (see: grade --help)")
    return parser


# ================================================================================================ train
def _resume_flags() -> List[str]:
    from .training.checkpoint import RESUME_MAY_CHANGE

    return sorted(flag_of(f) for f in RESUME_MAY_CHANGE if flag_of(f) and flag_of(f).startswith("--"))


def train_config_from_args(args: argparse.Namespace):
    """Flags given on the command line override the defaults (or, with --resume, the checkpoint's config).

    With --resume every flag given is either applied (those in RESUME_MAY_CHANGE, e.g. --epochs to
    lengthen the schedule, --out-dir, --time-budget) or refused with a ValueError that names it: a resumed
    run keeps the settings that decide its steps (--lr, --dropout, --batch-size, ...), so none is dropped.
    """
    from .training import TrainConfig, check_resumable, load_checkpoint, resume_changes
    from .training.checkpoint import check_resume_epochs
    from .training.config import default_text, model_field

    given = {name: getattr(args, name) for name in train_fields()
             if name != "model_overrides" and getattr(args, name) is not None}
    if "time_budget_s" in given:
        if given["time_budget_s"] < 0:
            raise ValueError(f"--time-budget expects seconds >= 0 (0 = no limit), got {given['time_budget_s']:g}")
        if given["time_budget_s"] == 0:
            given["time_budget_s"] = None
    if given.get("threads", 1) < 1:
        raise ValueError(f"--threads must be >= 1, got {given['threads']}")
    if not args.resume:
        if args.dropout is not None:
            given["model_overrides"] = {"dropout": args.dropout}
        return TrainConfig(**given)
    ckpt = load_checkpoint(args.resume)
    check_resumable(ckpt, args.resume)
    stored = ckpt["config"]["train"]
    # the run goes on where its checkpoint is (not in its recorded --out-dir, which may be relative to another
    # folder, or moved away since), unless told otherwise
    given.setdefault("out_dir", os.path.dirname(args.resume) or os.curdir)
    if args.dropout is not None:
        given["model_overrides"] = {**stored.get("model_overrides", {}), "dropout": args.dropout}
    # continue to the end of the schedule unless told otherwise
    config = TrainConfig.from_dict({**stored, "stop_after_epochs": None, **given})
    _, refused = resume_changes(stored, config)
    if refused:
        shown = []
        for name, (old, new) in refused.items():
            if name == "model_overrides":
                old = old.get("dropout", model_field(stored["model"], {}, "dropout"))
                new = new.get("dropout")
            had = old if old is not None else default_text(name)  # None: what it stands for, in words
            shown.append(f"{flag_of(name) or name} {_flag_text(new)} (the checkpoint has {_flag_text(had)})")
        raise ValueError(f"--resume continues {args.resume} with its own settings, so these flags are refused: "
                         f"{', '.join(shown)}; leave them out, or start a new run without --resume "
                         f"(with --resume only {', '.join(_resume_flags())} may change)")
    check_resume_epochs(ckpt, config, args.resume)
    if ckpt["epoch"] >= config.epochs and not args.export:  # with --export: write a finished run's weights again
        raise ValueError(f"{args.resume} has finished all {config.epochs} epochs, so there is nothing to resume; "
                         f"pass --epochs N with N > {ckpt['epoch']} to lengthen its schedule and go on, or "
                         f"--export FILE to write its weights again")
    return config


def _file_stamp(path: str) -> Optional[tuple]:
    """(inode, modification time) of a file, None if there is none: a checkpoint rewritten (atomically, a new
    inode) since the stamp was taken has another."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns)


def _flag_text(value: Any) -> str:
    """A value as it is typed after its flag: a list comma-separated (--classes circle,square), booleans on/off."""
    if isinstance(value, bool):
        return "on" if value else "off"
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def cmd_train(args: argparse.Namespace, argv: List[str]) -> int:
    from .training import cleanup_distributed, fit, is_main_process
    from .training.checkpoint import check_export_name

    if args.export is not None:
        check_export_name(args.export, "--export")
    config = train_config_from_args(args)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    launcher = f"torchrun --nproc_per_node={world} -m vit_edu " if world > 1 else "python -m vit_edu "
    command = launcher + " ".join(shlex.quote(a) for a in argv)
    last = os.path.join(config.out_dir, "last.pt")
    found = _file_stamp(last)  # a checkpoint already there may be another run's (--force): not this run's state
    try:
        model, history = fit(config, resume=args.resume, export=args.export,
                             export_metadata={"command": command}, force=args.force)
        if is_main_process():
            acc = history["test_acc"][-1] if history["test_acc"] else float("nan")
            print(f"final test accuracy {acc:.4f} ({acc * 100:.2f} %) after {history['epoch'][-1]:.2f} epochs, "
                  f"{history['elapsed_s'][-1]:.0f} s")
            if config.save_checkpoints and _file_stamp(last) != found:  # a finished run only exported: none saved
                print(f"checkpoint saved to {last}")
            if args.export:
                print(f"weights exported to {args.export}")
        cleanup_distributed(wait=True)
    except (KeyboardInterrupt, OSError, MemoryError, RuntimeError) as err:
        # the hint names last.pt only if it holds this run's state: written by this run, or the one it resumed
        # (not after a user error, which the same command would meet again)
        ours = _file_stamp(last) not in (None, found) or (
            found is not None and args.resume is not None and _file_stamp(args.resume) == found
            and not isinstance(err, USER_ERRORS))
        if is_main_process() and config.save_checkpoints and ours and not isinstance(err, OutputError):
            again = "--resume " + shlex.quote(last) + (f" --export {shlex.quote(args.export)}" if args.export else "")
            err.vit_edu_hint = (f"the last saved state of the run is in {last}; continue with: "  # type: ignore
                                f"python -m vit_edu train {again}")
        raise
    finally:
        cleanup_distributed()
    return 0


# ============================================================================================= evaluate
def _check_ranges(args: argparse.Namespace, rules: Dict[str, tuple]) -> None:
    """Flags given as integers, each in its range ({dest: (flag, low, high or a TrainConfig bound's name[,
    what])}), and images that fit in memory: one ValueError naming the flag, before any work."""
    from .training import config as bounds

    for dest, (flag, low, high, *what) in rules.items():
        value = getattr(args, dest)
        top = getattr(bounds, high) if isinstance(high, str) else high
        if value is None or (value >= low and (top is None or value <= top)):
            continue
        about = f" ({what[0]})" if what else ""
        rule = f"in [{low}, {top}]" if top is not None else f">= {low}"
        raise ValueError(f"{flag} must be {rule}{about}, got {value}")
    if getattr(args, "n", None) is not None:
        sized = getattr(args, "image_size", None) is not None
        bounds.check_images_fit(args.n, args.image_size if sized else 32, "--n/--image-size" if sized else "--n")


def _load_for_eval(checkpoint: Optional[str], device):
    """(model, source, the class names it was trained on or None, its run's TrainConfig dict or None): the run's data
    settings (palette, clutter, seeds, sizes) decide which shapes images it is evaluated on."""
    import json
    from pathlib import Path

    from .training import (COURSE_CHECKPOINT, load_checkpoint, load_model, pretrained_course_model,
                           read_safetensors_metadata, stored_classes)

    if checkpoint is None:
        model, info = pretrained_course_model(device=device)
        classes, train = info.get("classes"), info.get("train_config")
        classes = list(classes) if isinstance(classes, list) else None
        return model, str(COURSE_CHECKPOINT), classes, train if isinstance(train, dict) else None
    model = load_model(checkpoint, device=device)
    if Path(checkpoint).suffix == ".safetensors":  # the rule load_model and stored_classes follow
        try:
            train = json.loads(read_safetensors_metadata(checkpoint).get("train_config", "null"))
        except ValueError:  # an export written by other code: no record of its run
            train = None
    else:
        train = (load_checkpoint(checkpoint).get("config") or {}).get("train")
    return model, checkpoint, stored_classes(checkpoint), train if isinstance(train, dict) else None


def _shapes_data(args: argparse.Namespace, source: str, classes: Optional[List[str]], train: Optional[dict],
                 default_seed: Optional[int] = None) -> dict:
    """get_dataset's settings for shapes: those of the run (classes, palette, clutter, its own test seed and size),
    so the accuracy is of the task it learned; a test seed whose images it trained on is refused. A file that
    records no run is drawn with the data's defaults, and a note says so. ``default_seed``: the command's own
    default --seed, if it has one (demo)."""
    from .training import TrainConfig, data
    from .training.loaders import shapes_seeds, trained_on_seed

    command = "demo" if default_seed is not None else "evaluate"
    train = train or {}
    run = None
    if train.get("dataset") == "shapes":
        try:
            run = TrainConfig.from_dict(train)
        except (TypeError, ValueError) as err:
            print(f"vit_edu {command}: note: {source}'s recorded training settings are unreadable "
                  f"({one_line(err)}); its training seeds are unknown, so the data's default seed and size are used",
                  file=sys.stderr)
    elif not train:  # an export or checkpoint saved without its run's settings (export_safetensors(model, path))
        print(f"vit_edu {command}: note: {source} records no training settings (palette, clutter, seeds"
              f"{'' if classes else ', classes'}); drawing the shapes data's defaults, which may not be the images "
              f"it was trained on", file=sys.stderr)
    train_seed, test_seed = shapes_seeds(run) if run else (data.SHAPES_DEFAULT_SEEDS[s] for s in ("train", "test"))
    seed = args.seed if args.seed is not None else (test_seed if args.split == "test" else train_seed)
    epoch = trained_on_seed(run, seed) if run and args.split == "test" else None
    if epoch is not None:
        also = ", the default" if default_seed is None else f"; or {default_seed}, the default"
        raise ValueError(f"--seed {seed}: {source} was trained on the images of seed {seed} (its epoch {epoch + 1}), "
                         f"so they are no test set; expected a seed it never trained on, e.g. {test_seed} (its run's "
                         f"test seed{also})")
    n = args.n if args.n is not None or run is None else getattr(run, f"n_{args.split}")
    drawn = dict(seed=seed, n=n, classes=args.classes if args.classes is not None else classes,
                 palette=train.get("palette", "colour"), clutter=train.get("clutter", 0))
    ran = (classes or run.effective("classes")) if run is not None else None
    if run is not None and args.split == "train" and trained_on_seed(run, seed) is not None and (
            args.classes is None or set(args.classes) <= set(ran)):  # other classes: refused below
        # a seed's images depend on how many are drawn and of which classes: the run's own training images are
        # drawn as the run drew them, then the first --n of them (of the --classes asked), never other images
        full = run.effective("n_train")
        if args.n is not None and args.n > full:
            raise ValueError(f"--split train --n {args.n}: {source} trained on {full} images of seed {seed}; "
                             f"expected --n <= {full}")
        drawn.update(n=full, classes=ran, keep=(args.n, args.classes))
    return drawn


def _training_part(ds, n: Optional[int], classes: Optional[List[str]]):
    """The first ``n`` images of a ShapesDataset (of ``classes`` only, if given), labels unchanged."""
    import torch

    keep = torch.arange(len(ds))
    if classes is not None:
        keep = keep[torch.isin(ds.labels, torch.tensor([ds.classes.index(c) for c in classes]))]
    keep = keep[:n]
    ds.images, ds.labels, ds.masks, ds.n = ds.images[keep], ds.labels[keep], ds.masks[keep], len(keep)
    return ds


def cmd_evaluate(args: argparse.Namespace) -> int:
    import torch
    from torch.utils.data import DataLoader

    from .training import check_classes_match, data, evaluate, resolve_device
    from .training.config import MIN_IMAGE_SIZE, default_value

    _check_ranges(args, {"batch_size": ("--batch-size", 1, None), "num_workers": ("--workers", 0, "MAX_WORKERS"),
                         "n": ("--n", 1, None), "seed": ("--seed", 0, "MAX_SEED"),
                         "image_size": ("--image-size", MIN_IMAGE_SIZE, None)})
    if args.classes is not None:
        try:
            data._check_classes(args.classes)
        except (TypeError, ValueError) as err:
            raise ValueError(f"--classes {','.join(args.classes)!r}: {err}") from None
    try:
        device = resolve_device(default_value("device") if args.device is None else args.device)
    except ValueError as err:
        raise ValueError(f"--device: {err}") from None
    name = args.dataset or default_value("dataset")
    if name != "shapes" and args.seed is not None:  # before the model is loaded: nothing to do with it
        raise ValueError(f"--seed {args.seed} picks the generated shapes images (shapes only); {name} is a fixed "
                         f"dataset: leave --seed out")
    model, source, classes, train = _load_for_eval(args.checkpoint, device)
    size = tuple(model.config.image_size)
    if args.image_size is not None and not model.config.dynamic_img_size and (args.image_size,) * 2 != size:
        raise ValueError(f"--image-size {args.image_size}: {source} was built for {size[0]}x{size[1]} images "
                         f"(and has no dynamic_img_size); leave --image-size out")
    kw = dict(split=args.split, root=args.data_root or default_value("data_root"), download=bool(args.download),
              image_size=args.image_size or size[0], n=args.n)
    trained_on = (train or {}).get("dataset")
    foreign = classes is not None and not set(classes) <= set(data.SHAPE_CLASSES)
    known = trained_on not in (None, "shapes")  # a run on a fixed dataset
    if name == "shapes" and args.classes is None and (foreign or (known and args.dataset is None)):
        own = (f"{trained_on} --data-root {shlex.quote(str(train.get('data_root')))}" if known
               else "imagefolder --data-root ...")
        raise ValueError(f"{source} was trained on {trained_on if known else f'classes {classes}'}, not on shapes; "
                         f"evaluate it on its own dataset, e.g. python -m vit_edu evaluate {own} "
                         f"--checkpoint {shlex.quote(source)}")
    if name == "shapes":  # drawn as the run drew its own: its classes, palette, clutter, test seed and size
        kw.update(_shapes_data(args, source, classes, train))
    elif name == "imagefolder" == trained_on and args.data_root is None and train.get("data_root") != kw["root"]:
        print(f"vit_edu evaluate: note: {source} was trained on the imagefolder under {train.get('data_root')}; this "
              f"evaluates it on the one under {kw['root']} (the default --data-root)", file=sys.stderr)
    elif args.classes is not None:
        raise ValueError(f"--classes picks shapes of the generated data; {name!r} has its own classes")
    keep = kw.pop("keep", None)
    ds = data.get_dataset(name, **kw)
    if keep is not None:  # the run's training images (evaluate --split train)
        ds = _training_part(ds, *keep)
    subset = classes is not None and args.classes is not None and set(args.classes) <= set(classes)
    if subset and list(args.classes) != list(classes):  # some of its classes: labels are the model's outputs
        ds.labels = torch.tensor([classes.index(c) for c in ds.classes])[ds.labels]
        ds.classes = list(classes)
    check_classes_match(model, classes, data.dataset_info(ds)["classes"], source, f"{name} {args.split}")
    loader = DataLoader(ds, batch_size=args.batch_size, shuffle=False, num_workers=args.num_workers or 0)
    t0 = time.monotonic()
    m = evaluate(model, loader, device)
    drawn = f", seed {kw['seed']}" if "seed" in kw else ""  # only generated data has a seed
    if subset and list(args.classes) != list(classes):
        drawn = f" of {', '.join(args.classes)} only{drawn}"
    print(f"{source} on {name} {args.split} ({len(ds)} images{drawn}): loss {m['loss']:.4f}  accuracy {m['acc']:.4f} "
          f"({m['acc'] * 100:.2f} %)  [{time.monotonic() - t0:.1f} s]")
    return 0


# ================================================================================================= demo
def cmd_demo(args: argparse.Namespace) -> int:
    from .fileio import check_space, check_writable_dir

    _check_ranges(args, {"n": ("--n", 1, None, "test images to evaluate"), "seed": ("--seed", 0, "MAX_SEED"),
                         "images": ("--images", 1, DEMO_MAX_IMAGES, "images in the rollout figure")})
    if args.images > args.n:
        raise ValueError(f"--images {args.images}: the rollout figure shows some of the --n {args.n} test images; "
                         f"expected --images <= --n")
    import matplotlib

    matplotlib.use("Agg")  # headless: only files, no window
    import matplotlib.pyplot as plt
    import torch
    from torch.utils.data import DataLoader

    from .explain import analysis, viz

    figures = args.figures_dir or str(viz.figures_dir(create=False))  # checked before any work is done
    check_writable_dir(figures, "--figures-dir" if args.figures_dir else "figures folder")
    check_space([(figures, FIGURE_BYTES, "--figures-dir" if args.figures_dir else "figures folder")])
    from .training import COURSE_CHECKPOINT, data, evaluate, pretrained_course_model

    t0 = time.monotonic()
    torch.manual_seed(0)
    model, info = pretrained_course_model()
    # its own test data (palette, clutter, classes), as evaluate draws it; a seed it trained on is refused
    asked = argparse.Namespace(seed=args.seed, split="test", n=args.n, classes=None)
    drawn = _shapes_data(asked, COURSE_CHECKPOINT.name, info.get("classes"), info.get("train_config"), DEMO_SEED)
    print(f"loaded {COURSE_CHECKPOINT.name}: {model.num_parameters() / 1e6:.2f}M parameters, classes "
          f"{', '.join(info['classes'])}; test accuracy at export {info.get('test_acc', float('nan')):.4f}")
    ds = data.ShapesDataset(image_size=model.config.image_size[0], return_mask=True, **drawn)
    m = evaluate(model, DataLoader(ds, batch_size=250))
    print(f"accuracy on {args.n} fresh shapes images (seed {args.seed}): {m['acc'] * 100:.2f} %  (loss {m['loss']:.4f})")

    k = min(args.images, len(ds))
    images = torch.stack([ds[i][0] for i in range(k)])
    labels = torch.tensor([int(ds[i][1]) for i in range(k)])
    masks = torch.stack([ds[i][2] for i in range(k)])
    with torch.no_grad():
        logits, attentions = model(images, return_attention=True)
    grid = model.config.grid_size
    maps = analysis.rollout_cls_map(attentions, grid)  # [k, gh, gw]
    loc = analysis.attention_localization(maps, masks, model.config.patch_size[0])
    if args.figures_dir:  # save_figure writes there (set only now: a refusal above leaves the environment alone)
        os.environ["VIT_EDU_FIGURES"] = args.figures_dir
    written = []
    titles = [f"{ds.classes[int(p)]} ({'ok' if p == y else 'true: ' + ds.classes[int(y)]})"  # predicted (truth)
              for p, y in zip(logits.argmax(-1), labels)]
    fig = viz.plot_rollout(data.denormalize(images), maps, masks=masks, titles=titles)
    written.append(viz.save_figure(fig, "demo_attention_rollout"))
    plt.close(fig)
    sim = analysis.pos_embed_similarity(model.pos_embed.detach(), grid)
    corr = analysis.similarity_distance_correlation(sim)
    fig = viz.plot_pos_embed_similarity(sim, title="Position embedding similarity (shipped model)")
    written.append(viz.save_figure(fig, "demo_pos_embed_similarity"))
    plt.close(fig)
    print(f"attention rollout: {loc['mean']:.2f}x more mass on the object than its area share (mean over {k} images) "
          f"(labels: {', '.join(ds.classes[int(y)] for y in labels)})")
    print(f"position embeddings: Spearman(cosine similarity, grid distance) = {corr['spearman']:.3f}")
    for path in written:
        print(f"wrote {path}")
    print(f"demo finished in {time.monotonic() - t0:.1f} s")
    return 0


# ================================================================================================= main
def one_line(err: BaseException) -> str:
    """An error message on one line: a multi-line one (e.g. a list of mismatched keys) joined with '; '."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    if any(line.startswith("Original Traceback") for line in lines):  # re-raised from a DataLoader worker
        return lines[-1].split(": ", 1)[-1]
    return lines[0] + (" " + "; ".join(lines[1:]) if len(lines) > 1 else "")


def _out_of_memory(err: BaseException) -> bool:
    return isinstance(err, MemoryError) or (isinstance(err, RuntimeError) and any(
        words in str(err) for words in ("can't allocate memory", "out of memory", "not enough memory")))


def _worker_died(err: BaseException) -> bool:
    """A DataLoader worker process that died (killed, out of shared memory in a container): the machine's doing."""
    return isinstance(err, RuntimeError) and "DataLoader worker" in str(err)


def _with_flags(match: "re.Match[str]") -> str:
    """``TrainConfig.image_size`` -> ``--image-size (TrainConfig.image_size)``, and a list of fields
    (``TrainConfig.n_train/n_test``) -> ``--n-train/--n-test (...)``: name the flags the user typed, too."""
    flags = [flag_of(name) if name in train_fields() else None for name in match.group(1).split("/")]
    return f"{'/'.join(flags)} ({match.group(0)})" if all(flags) else match.group(0)


def _report(command: str, err: BaseException) -> int:
    """One line on stderr for an error that ends a command; returns the exit status."""
    hint = getattr(err, "vit_edu_hint", None)
    tail = f"; {hint}" if hint else ""
    prog = f"vit_edu {command}".strip()
    if isinstance(err, Terminated):
        print(f"{prog}: terminated (SIGTERM){tail}", file=sys.stderr)
        return TERMINATED
    if isinstance(err, KeyboardInterrupt):
        print(f"{prog}: interrupted{tail}", file=sys.stderr)
        return INTERRUPTED
    if _out_of_memory(err):
        print(f"{prog}: error: not enough memory ({one_line(err)}); lower --batch-size or --image-size{tail}",
              file=sys.stderr)
        return 1
    if _worker_died(err):
        print(f"{prog}: error: a data-loading worker process died ({one_line(err)}); run with --workers 0, or give "
              f"the machine more shared memory (a container: --shm-size){tail}", file=sys.stderr)
        return 1
    if isinstance(err, USER_ERRORS + (OutputError,)):
        message = one_line(err).replace("TrainConfig.model_overrides['dropout'] ",
                                        "--dropout (TrainConfig.model_overrides['dropout']) ")
        message = re.sub(r"\bTrainConfig\.(\w+(?:/\w+)*)(?=[ :])", _with_flags, message)
        print(f"{prog}: error: {message}{tail}", file=sys.stderr)
        return 2
    # the machine, not the user: a full disk, a file-size limit, a vanished folder
    where = f" ({err.filename})" if getattr(err, "filename", None) else ""
    text = getattr(err, "strerror", None) or one_line(err)
    print(f"{prog}: error: {text}{where}{tail}", file=sys.stderr)
    return 1


def main(argv: Optional[List[str]] = None) -> int:
    started()  # from here on Ctrl-C is a KeyboardInterrupt, reported below as one line
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and argv[0] in ("assignments", "handout", "grade") else None
    try:
        if command is not None:  # the classroom commands parse their own flags
            return _classroom(command, argv[1:])
        parser = build_parser()
        args = parser.parse_args(argv)
        command = args.command
        if args.command is None:
            parser.print_help()
            return 0
        with _sigterm_stops():
            if args.command == "train":
                return cmd_train(args, argv)
            if args.command == "evaluate":
                return cmd_evaluate(args)
            if args.command == "demo":
                return cmd_demo(args)
    except KeyboardInterrupt as err:  # Ctrl-C at any moment: one line, status 130 (SIGTERM: 143)
        return _report(command or "", err)
    except (OSError, MemoryError, RuntimeError, ValueError, TypeError) as err:
        if os.environ.get("VIT_EDU_DEBUG") or (isinstance(err, RuntimeError) and not _out_of_memory(err)
                                               and not _worker_died(err)):
            raise
        return _report(command or "", err)
    parser.error(f"unknown command {args.command!r}")
    return 2


def _classroom(command: str, argv: List[str]) -> int:
    if command == "assignments":
        from .classroom.assignments import main as assignments_main

        return assignments_main(argv)
    if command == "handout":
        from .classroom.handout import handout_main

        return handout_main(argv)
    from .classroom.grading import main as grade_main

    return grade_main(argv)


def run() -> None:
    """``python -m vit_edu``: after Ctrl-C, the status is 130 however the interpreter's shutdown goes (a second
    KeyboardInterrupt from a library's clean-up would otherwise end the process by SIGINT)."""
    code = main()
    if code == INTERRUPTED:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001 - a closed pipe: nothing left to say
                pass
        os._exit(INTERRUPTED)
    sys.exit(code)


if __name__ == "__main__":
    run()
