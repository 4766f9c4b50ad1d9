"""TrainConfig: every setting of a training run, and the one place its defaults live.

``fit(TrainConfig())`` and ``python -m vit_edu train`` run the same thing: the command line builds its
``train`` flags from these fields (flag name, help text and default shown all come from here), so a default
changed here changes both, and ``tests/test_defaults.py`` checks that the docs say the same.

Each field's ``metadata`` holds its command-line form: ``flag`` (None: no flag), ``help``, ``choices``, and
``none`` (what a default of None means, in words; ``{shapes_n_train}`` and the like are filled in from the
dataset's own defaults).
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Dict, List, Optional

from ..config import WEIGHT_INITS, ViTConfig
from ..models import PRESETS, get_config
from .data import (DATASET_NAMES, MAX_CLUTTER, PALETTES, SHAPE_CLASSES,  # the renderer owns these bounds
                   SHAPES_DEFAULT_SEEDS, SHAPES_DEFAULT_SIZES, _check_classes)  # (data.py imports nothing from here)

OPTIMIZERS = ("adamw", "sgd")  # sgd: with momentum 0.9


def _arg(default: Any, help: str, flag: Optional[str] = None, none: Optional[str] = None,
         choices: Optional[tuple] = None) -> Any:
    """A dataclass field that also describes its command-line flag (see the module docstring)."""
    return field(default=default, metadata={"flag": flag, "help": help, "none": none, "choices": choices})


MAX_SEED = 2**31 - 1
MAX_EPOCHS = 10**6  # the per-epoch data seeds (seed + epoch x stride) stay far inside 64 bits
MAX_WORKERS = 256  # DataLoader processes: more is a typo that would fork the machine to a halt
MAX_THREADS = 1024
MIN_IMAGE_SIZE = 8  # data.get_dataset refuses smaller images; checked here too, so that it fails before any work
DEVICE_RE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
_BOOLS = ("download", "augment", "save_checkpoints")  # True or False
_OPTIONAL_BOOLS = ("fresh_data", "progress")  # None ("it depends"), True or False
_STRINGS = ("dataset", "model", "data_root", "device", "palette", "optimizer")
_SHAPES_ONLY = {"classes": None, "clutter": 0, "palette": "colour", "data_seed": None}  # value for a fixed dataset


def _physical_memory() -> Optional[int]:
    """Bytes of RAM, or None where the system does not say."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def check_images_fit(n: int, size: int, what: str) -> None:
    """Refuse ``n`` images of ``size`` x ``size`` (uint8, 3 channels) that this machine's memory cannot hold."""
    ram, need = _physical_memory(), n * 3 * size * size
    if ram is not None and need > ram:
        raise ValueError(f"{what}: {n:,} images of {size}x{size} need {need / 2**30:,.1f} GiB, more than this "
                         f"machine's {ram / 2**30:,.1f} GiB of memory")


def _check_number(name: str, value: Any, low: Optional[float] = None, high: Optional[float] = None,
                  low_open: bool = False, high_open: bool = False, what: str = "") -> None:
    """A finite real number inside [low, high] (open ends where asked); NaN, inf, bools and strings fail."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        lo = "" if low is None else f"{'>' if low_open else '>='} {low:g}"
        hi = "" if high is None else f"{'<' if high_open else '<='} {high:g}"
        rule = " and ".join(r for r in (lo, hi) if r)
        raise ValueError(f"TrainConfig.{name} must be {what}a finite number{' ' + rule if rule else ''}, got {value!r}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class TrainConfig:
    """Everything that decides a training run; stored in every checkpoint so a run can be repeated.

    The defaults are the default run: the plain ViT on freshly drawn shapes, sized to finish inside its
    time budget on one CPU thread (docs/training.md, "The default run", has its measured curve).
    """

    # --- what is trained, on what
    dataset: str = _arg("shapes", "dataset name: shapes is generated in memory; e.g. cifar10 needs --download once",
                        flag="dataset")  # positional on the command line
    model: str = _arg("vit_course_patch8_32", "preset name, see vit_edu.list_models()", flag="--model")
    image_size: Optional[int] = _arg(None, "resize images to this size", flag="--image-size",
                                     none="the dataset's, 32 for shapes and imagefolder")
    data_root: str = _arg("data", "where real datasets live", flag="--data-root")
    download: bool = _arg(False, "download a real dataset if missing", flag="--download")
    n_train: Optional[int] = _arg(None, "number of training images (per epoch with fresh data; of a fixed dataset, "
                                  "a fixed random subset mixed over the classes)", flag="--n-train",
                                  none="the dataset's, {shapes_n_train} for shapes")
    n_test: Optional[int] = _arg(None, "number of test images (of a fixed dataset, a fixed random subset)",
                                 flag="--n-test",
                                 none="the dataset's, {shapes_n_test} for shapes")
    data_seed: Optional[int] = _arg(None, "seed of the generated shapes data (shapes only)", flag="--data-seed",
                                    none="the dataset's: {shapes_train_seed} for train, {shapes_test_seed} for test")
    fresh_data: Optional[bool] = _arg(None, "draw new shapes images every epoch (shapes only)", flag="--fresh-data",
                                      none="on for generated data (shapes), off otherwise")
    classes: Optional[List[str]] = _arg(None, "comma-separated shapes to draw, e.g. circle,square,triangle "
                                        "(shapes only)", flag="--classes", none="all of the dataset's")
    augment: bool = _arg(False, "random flips/crops on the training set", flag="--augment")
    clutter: int = _arg(0, "short strokes of the object's colour drawn into the background of every shapes image, "
                        "train and test (distractors; shapes only)", flag="--clutter")
    palette: str = _arg("colour", "colours of the shapes images, train and test: colour (random colours, object "
                        "lighter), grey (light grey object on dark grey) or mottled (faint grey object under patch-sized "
                        "colour blotches; shapes only)", flag="--palette",
                        choices=PALETTES)
    weight_init: Optional[str] = _arg(None, "initialisation of the Linear layers: timm (N(0, 0.02^2)) or jax (the "
                                      "paper's Xavier-uniform, larger at small widths)", flag="--weight-init",
                                      none="the preset's, timm", choices=WEIGHT_INITS)
    model_overrides: Dict[str, Any] = field(  # ViTConfig fields, e.g. {"dropout": 0.1}; the CLI sets only dropout
        default_factory=dict, metadata={"flag": "--dropout", "help": "dropout of the model", "none": None, "choices": None})

    # --- the recipe (the paper's, Appendix B.1, scaled down)
    epochs: int = _arg(12, "epochs", flag="--epochs")
    batch_size: int = _arg(128, "global batch size", flag="--batch-size")  # split evenly over torchrun's processes
    lr: float = _arg(2e-3, "peak learning rate", flag="--lr")  # reached at the end of the warm-up
    weight_decay: float = _arg(0.05, "AdamW weight decay", flag="--weight-decay")
    optimizer: str = _arg("adamw", "optimizer (sgd: with momentum 0.9)", flag="--optimizer", choices=OPTIMIZERS)
    warmup_epochs: float = _arg(0.75, "linear warm-up in epochs", flag="--warmup-epochs")
    warmup_steps: Optional[int] = _arg(None, "linear warm-up in optimizer steps (wins over warmup_epochs)")
    min_lr_ratio: float = _arg(0.0, "the cosine decays to lr x this")
    label_smoothing: float = _arg(0.0, "label smoothing", flag="--label-smoothing")  # the short runs under-fit
    grad_clip: float = _arg(1.0, "clip the global gradient norm (paper: 1); 0 disables")
    pos_embed_lr_scale: float = _arg(5.0, "learning rate of a learned position embedding = lr x this",
                                     flag="--pos-lr-scale")  # the 2-D grid forms ~3x sooner (docs/training.md)
    seed: int = _arg(0, "seed of initialisation and data order", flag="--seed")

    # --- how the run goes: time, machine, output
    time_budget_s: Optional[float] = _arg(300.0, "stop after this many seconds, then evaluate and save; 0 = no limit",
                                          flag="--time-budget", none="no limit")
    threads: Optional[int] = _arg(1, "CPU threads for PyTorch during the run (1 is faster than 2 on a busy "
                                  "2-core machine)", flag="--threads", none="torch's choice")
    stop_after_epochs: Optional[int] = _arg(None, "end this run after N epochs while the schedule still spans "
                                            "--epochs (resume it later)", flag="--stop-after-epochs",
                                            none="run to --epochs")
    eval_every: int = _arg(1, "evaluate every N epochs", flag="--eval-every")  # and always after the last
    device: str = _arg("auto", "cpu, cuda, cuda:1, mps or auto", flag="--device")  # auto: cuda if available
    num_workers: int = _arg(0, "DataLoader worker processes", flag="--workers")
    out_dir: Optional[str] = _arg(None, "where last.pt goes", flag="--out-dir", none="runs/<dataset>-<model>")
    progress: Optional[bool] = _arg(None, "progress bars", flag="--progress", none="only on a terminal")
    save_checkpoints: bool = _arg(True, "write <out_dir>/last.pt after every epoch")

    def __post_init__(self) -> None:
        """Every field checked by type and range, here, once: the one boundary a run's settings cross (the
        command line builds a TrainConfig too). Errors name the field: ``TrainConfig.<name> must be ...``."""
        self._check_types()
        for name in ("epochs", "batch_size", "eval_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"TrainConfig.{name} must be a positive int, got {value!r}")
        if self.epochs > MAX_EPOCHS:
            raise ValueError(f"TrainConfig.epochs must be an int in [1, {MAX_EPOCHS:,}], got {self.epochs!r}")
        _check_number("lr", self.lr, low=0.0, low_open=True)  # NaN and inf are refused too
        _check_number("weight_decay", self.weight_decay, low=0.0)
        _check_number("warmup_epochs", self.warmup_epochs, low=0.0)
        if self.warmup_steps is None and self.warmup_epochs >= self.epochs:  # else the lr would still be rising
            raise ValueError(f"TrainConfig.warmup_epochs must be less than the run's epochs ({self.epochs}): the "
                             f"warm-up must end before the run does, got {self.warmup_epochs:g}")
        _check_number("min_lr_ratio", self.min_lr_ratio, low=0.0, high=1.0)
        _check_number("grad_clip", self.grad_clip, low=0.0)
        _check_number("pos_embed_lr_scale", self.pos_embed_lr_scale, low=0.0, low_open=True)
        if not _is_number(self.label_smoothing) or not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"TrainConfig.label_smoothing must be in [0, 1), got {self.label_smoothing!r}")
        if self.time_budget_s is not None:
            _check_number("time_budget_s", self.time_budget_s, low=0.0, low_open=True, what="None (no limit) or ")
        for name, minimum in (("warmup_steps", 0), ("n_train", 1), ("n_test", 1), ("stop_after_epochs", 1),
                              ("data_seed", 0), ("threads", 1), ("seed", 0), ("num_workers", 0), ("clutter", 0)):
            value = getattr(self, name)
            optional = name not in ("seed", "num_workers", "clutter")
            if value is None and optional:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"TrainConfig.{name} must be {'None or ' if optional else ''}an int >= {minimum}, "
                                 f"got {value!r}")
        for name, low, top in (("seed", 0, MAX_SEED), ("data_seed", 0, MAX_SEED), ("num_workers", 0, MAX_WORKERS),
                               ("threads", 1, MAX_THREADS)):  # NumPy, and the per-epoch seeds built on it, take 32 bits
            value = getattr(self, name)
            if value is not None and value > top:
                raise ValueError(f"TrainConfig.{name} must be an int in [{low}, {top}], got {value!r}")
        if self.image_size is not None and (isinstance(self.image_size, bool) or not isinstance(self.image_size, int)
                                            or self.image_size < MIN_IMAGE_SIZE):
            raise ValueError(f"TrainConfig.image_size must be None or an int >= {MIN_IMAGE_SIZE}, "
                             f"got {self.image_size!r}")
        if self.clutter > MAX_CLUTTER:  # checked here too, so a bad value fails before any work
            raise ValueError(f"TrainConfig.clutter must be an int in [0, {MAX_CLUTTER}] (strokes per image), got {self.clutter!r}")
        self._check_choices()
        self._check_data()
        self._check_memory()
        self._check_model_overrides()
        if self.out_dir is None:
            self.out_dir = os.path.join("runs", f"{self.dataset}-{self.model}")

    def _check_types(self) -> None:
        """Bools are bools ('False', a string, is not False), names are strings, paths are paths."""
        for name in _BOOLS + _OPTIONAL_BOOLS:
            value = getattr(self, name)
            if not isinstance(value, bool) and not (value is None and name in _OPTIONAL_BOOLS):
                raise TypeError(f"TrainConfig.{name} must be {'None, ' if name in _OPTIONAL_BOOLS else ''}True or "
                                f"False, got {type(value).__name__} {value!r}")
        for name in _STRINGS:
            value = getattr(self, name)
            if name == "data_root" and isinstance(value, os.PathLike):
                value = self.data_root = os.fspath(value)
            if not isinstance(value, str) or (not value and name != "data_root"):
                raise TypeError(f"TrainConfig.{name} must be a non-empty string, got {type(value).__name__} {value!r}")
        if isinstance(self.out_dir, os.PathLike):
            self.out_dir = os.fspath(self.out_dir)
        if self.out_dir is not None and (not isinstance(self.out_dir, str) or not self.out_dir.strip()):
            raise TypeError(f"TrainConfig.out_dir must be None or a folder name, got {type(self.out_dir).__name__} "
                            f"{self.out_dir!r}")
        if self.weight_init is not None and not isinstance(self.weight_init, str):
            raise TypeError(f"TrainConfig.weight_init must be None or one of {WEIGHT_INITS}, got "
                            f"{type(self.weight_init).__name__} {self.weight_init!r}")
        if not isinstance(self.model_overrides, dict):
            raise TypeError(f"TrainConfig.model_overrides must be a dict, got {type(self.model_overrides).__name__}")

    def _check_choices(self) -> None:
        if self.dataset not in DATASET_NAMES:
            raise ValueError(f"TrainConfig.dataset names an unknown dataset {self.dataset!r}; known: "
                             f"{', '.join(DATASET_NAMES)}")
        if self.model not in PRESETS:
            raise ValueError(f"TrainConfig.model names an unknown model {self.model!r}; expected a preset name: "
                             f"{', '.join(sorted(PRESETS))}")
        if self.weight_init is not None and self.weight_init not in WEIGHT_INITS:
            raise ValueError(f"TrainConfig.weight_init must be None or one of {WEIGHT_INITS}, got {self.weight_init!r}")
        if self.palette not in PALETTES:
            raise ValueError(f"TrainConfig.palette must be one of {PALETTES}, got {self.palette!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"TrainConfig.optimizer must be 'adamw' or 'sgd', got {self.optimizer!r}")
        if not DEVICE_RE.fullmatch(self.device):  # the syntax; whether this machine has it is asked when fit starts
            raise ValueError(f"TrainConfig.device: unknown device {self.device!r}; expected auto, cpu, cuda, cuda:N "
                             f"or mps")

    def _check_data(self) -> None:
        """The shapes-only settings: known shape names, and none of them on a fixed dataset."""
        if self.classes is not None:
            if isinstance(self.classes, str) or not isinstance(self.classes, (list, tuple)):
                raise TypeError(f"TrainConfig.classes must be None or a list of shape names, got {self.classes!r}")
            self.classes = list(self.classes)
        if self.dataset == "shapes":
            if self.classes is not None:
                try:
                    _check_classes(self.classes)
                except (TypeError, ValueError) as err:
                    raise type(err)(f"TrainConfig.classes: {err}") from None
            return
        for name, plain in {**_SHAPES_ONLY, "fresh_data": None}.items():
            value = getattr(self, name)
            if value != plain and not (name == "fresh_data" and value is False):
                raise ValueError(f"TrainConfig.{name} {value!r} is for the generated shapes data (shapes only); "
                                 f"{self.dataset} is a fixed dataset: leave {name} out")

    def _check_model_overrides(self) -> None:
        unknown = sorted(set(self.model_overrides) - set(ViTConfig.__dataclass_fields__))
        if unknown:  # a typo fails here, not after the data are built
            raise ValueError(f"TrainConfig.model_overrides has unknown ViTConfig fields {unknown}; "
                             f"expected some of {sorted(ViTConfig.__dataclass_fields__)}")
        for name in ("dropout", "attn_dropout", "drop_path"):
            if name in self.model_overrides:
                _check_number(f"model_overrides[{name!r}]", self.model_overrides[name], low=0.0, high=1.0,
                              high_open=True)
        size = self.effective("image_size")
        try:  # every other value by the model's own rules, on the image size the run will have
            get_config(self.model, **{"image_size": size, **self.model_overrides})
        except (TypeError, ValueError) as err:
            if self.model_overrides:
                raise type(err)(f"TrainConfig.model_overrides {self.model_overrides} on {self.model} with images of "
                                f"{size}x{size}: {err}") from None
            raise type(err)(f"TrainConfig.image_size {size} does not fit model {self.model}: {err}") from None

    def _check_memory(self) -> None:
        """Refuse, before anything is allocated, sizes this machine cannot hold: the generated shapes images
        (uint8, 3 x S x S each) and one batch's attention maps (batch x heads x N^2 float32 per layer, kept
        for the backward pass). Estimates, so only what surely cannot fit is refused."""
        ram = _physical_memory()
        if ram is None:
            return
        size = self.image_size or 32
        if self.dataset == "shapes":
            n = (self.n_train or SHAPES_DEFAULT_SIZES["train"]) + (self.n_test or SHAPES_DEFAULT_SIZES["test"])
            need = n * 3 * size * size
            if need > ram:
                raise ValueError(f"TrainConfig.n_train/n_test/image_size: {n:,} shapes images of {size}x{size} need "
                                 f"{need / 2**30:,.1f} GiB, more than this machine's {ram / 2**30:,.1f} GiB of memory; "
                                 f"lower --n-train, --n-test or --image-size")
        preset = {**PRESETS[self.model], **{k: v for k, v in self.model_overrides.items() if k in ("patch_size",)}}
        patch = preset.get("patch_size", 16)
        patch = patch[0] if isinstance(patch, (tuple, list)) else patch
        if isinstance(patch, int) and patch >= 1 and not preset.get("hybrid_layers"):
            tokens = (size // patch) ** 2 + 1
            need = self.batch_size * preset.get("heads", 1) * tokens ** 2 * 4 * preset.get("depth", 1)
            if need > ram:
                raise ValueError(f"TrainConfig.image_size/batch_size: {size}x{size} images in patches of {patch} make "
                                 f"{tokens:,} tokens; a batch of {self.batch_size} needs about {need / 2**30:,.0f} GiB "
                                 f"for its attention maps, more than this machine's {ram / 2**30:,.1f} GiB; lower "
                                 f"--image-size or --batch-size")

    @property
    def draws_fresh_data(self) -> bool:
        """New training images every epoch: ``fresh_data``, or by default whenever the data are generated."""
        return self.dataset == "shapes" if self.fresh_data is None else bool(self.fresh_data)

    def effective(self, name: str) -> Any:
        """The value field ``name`` has in the run, with what a None stands for filled in (the dataset's image
        size, its default seed and sizes, all its shapes, the preset's weight init): two configs whose fields
        differ only by a None and the value it means run the same. None where the data would have to be read
        (the size of a fixed dataset)."""
        value = getattr(self, name)
        shapes = self.dataset == "shapes"
        if name == "image_size":
            return value or (28 if self.dataset in ("mnist", "fashion_mnist") else 32)
        if name == "fresh_data":
            return self.draws_fresh_data
        if name == "weight_init":
            return value or model_field(self.model, self.model_overrides, "weight_init")
        if value is not None or not shapes:
            return value
        if name == "data_seed":
            return SHAPES_DEFAULT_SEEDS["train"]  # the test seed follows from it (loaders.shapes_seeds)
        if name in ("n_train", "n_test"):
            return SHAPES_DEFAULT_SIZES[name[2:]]
        return list(SHAPE_CLASSES) if name == "classes" else value

    def to_dict(self) -> dict:
        """Plain types only (a checkpoint must load with ``weights_only=True``)."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """The inverse of :meth:`to_dict`; a field this version does not know is an error, a missing one its default."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields {unknown}; expected a subset of {sorted(known)}")
        return cls(**d)


def model_field(model: str, overrides: dict, name: str) -> Any:
    """The value of ViTConfig field ``name`` that preset ``model`` with ``overrides`` gets (e.g. its dropout)."""
    if name in overrides:
        return overrides[name]
    if name in PRESETS.get(model, {}):
        return PRESETS[model][name]
    f = ViTConfig.__dataclass_fields__.get(name)
    return f.default if f is not None else None


def default_value(name: str) -> Any:
    """TrainConfig's default of field ``name`` (as the dataclass declares it, before ``__post_init__``)."""
    f = TrainConfig.__dataclass_fields__[name]
    return f.default_factory() if callable(f.default_factory) else f.default  # type: ignore[misc]


def default_text(name: str) -> str:
    """TrainConfig's default of field ``name`` in words, as ``--help`` shows it: ``12``, ``0.002``, ``on``,
    ``no limit``; model_overrides: the preset's dropout."""
    value = default_value(name)
    if name == "model_overrides":
        return f"the preset's, {model_field(default_value('model'), value, 'dropout'):g}"
    if value is None:
        from .data import SHAPES_DEFAULT_SEEDS, SHAPES_DEFAULT_SIZES

        return TrainConfig.__dataclass_fields__[name].metadata["none"].format(
            shapes_n_train=SHAPES_DEFAULT_SIZES["train"], shapes_n_test=SHAPES_DEFAULT_SIZES["test"],
            shapes_train_seed=SHAPES_DEFAULT_SEEDS["train"], shapes_test_seed=SHAPES_DEFAULT_SEEDS["test"])
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
