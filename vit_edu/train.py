"""Train a Vision Transformer: the loop, the schedule, checkpoints that resume exactly, and export.

The recipe is the paper's (Dosovitskiy et al. 2020, Sec. 4.1 and Appendix B.1) scaled down to a laptop:
AdamW with weight decay on the weight matrices only, a linear learning-rate warm-up followed by a cosine
decay (updated every step), label smoothing and gradient clipping at global norm 1.

    model, history = fit(TrainConfig(epochs=5))

The same code runs on several processes with ``torchrun --nproc_per_node=2 -m vit_edu train``:
every process sees its own share of each batch (``DistributedSampler``), ``DistributedDataParallel``
averages the gradients, so all processes take the same step as one process on the whole batch would.

Checkpoints hold only tensors and plain Python values, so ``torch.load(..., weights_only=True)`` can
read them without running any pickled code. They are written atomically (temporary file + ``os.replace``):
a crash while saving leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Subset
from tqdm import tqdm  # the terminal bar; tqdm.auto wants ipywidgets inside notebooks

from .config import ViTConfig
from .convert import load_checked, load_safetensors_checked, torch_load_checked
from .fileio import check_writable_dir, check_writable_file, remove_stale_temp_files, temp_file_for
from .models import PRESETS, create_model
from .vit import VisionTransformer

CHECKPOINT_FORMAT = "vit_edu.checkpoint/1"
ASSETS_DIR = Path(__file__).resolve().parent / "assets"
COURSE_CHECKPOINT = ASSETS_DIR / "vit_course_shapes.safetensors"

PathLike = Union[str, os.PathLike]


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


# ============================================================================================ config
@dataclass
class TrainConfig:
    """Everything that decides a training run; stored in every checkpoint so a run can be repeated."""

    dataset: str = "shapes"
    model: str = "vit_course_patch8_32"  # a preset name from vit_edu.list_models(); the paper's plain ViT, 16 tokens
    epochs: int = 12  # the default run (12 x 20,000 fresh images) is sized for a 300 s budget on 1 CPU core
    batch_size: int = 128  # the global batch: split evenly over the processes under torchrun
    lr: float = 2e-3  # peak learning rate, reached at the end of the warm-up
    weight_decay: float = 0.05
    optimizer: str = "adamw"  # "adamw" (the paper's fine-tuning uses SGD, pre-training Adam) or "sgd" (momentum 0.9)
    warmup_epochs: float = 0.75  # linear warm-up length in epochs ...
    warmup_steps: Optional[int] = None  # ... or in optimizer steps (wins if set)
    min_lr_ratio: float = 0.0  # the cosine decays to lr * min_lr_ratio
    label_smoothing: float = 0.0  # the short default run under-fits, so smoothing buys nothing
    grad_clip: float = 1.0  # clip the global gradient norm (paper: 1); 0 disables
    seed: int = 0
    out_dir: Optional[str] = None  # None: runs/<dataset>-<model>
    num_workers: int = 0
    time_budget_s: Optional[float] = None  # stop early (then still evaluate + save) when the time is up
    eval_every: int = 1  # evaluate every N epochs (and always after the last)
    device: str = "auto"  # "auto": cuda if available, else cpu
    image_size: Optional[int] = None  # None: the dataset's own size
    data_root: str = "data"
    download: bool = False
    augment: bool = False
    fresh_data: Optional[bool] = None  # draw new training images every epoch; None: yes for generated data (shapes)
    classes: Optional[List[str]] = None  # shapes only: draw only these shapes (a smaller task); None: all eight
    pos_embed_lr_scale: float = 5.0  # learning rate of a learned position embedding = lr x this (the grid forms ~3x sooner)
    n_train: Optional[int] = None  # None: the dataset's default size (the CLI's for shapes: __main__.CLI_DEFAULTS)
    n_test: Optional[int] = None
    data_seed: Optional[int] = None  # seed of the generated shapes data; None: the dataset's default
    model_overrides: Dict[str, Any] = field(default_factory=dict)  # ViTConfig fields, e.g. {"dropout": 0.1}
    stop_after_epochs: Optional[int] = None  # end this run after N epochs (the schedule still spans `epochs`)
    progress: Optional[bool] = None  # tqdm bars; None: only when stderr is a terminal
    save_checkpoints: bool = True

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"TrainConfig.{name} must be a positive int, got {value!r}")
        _check_number("lr", self.lr, low=0.0, low_open=True)  # NaN and inf are refused too
        _check_number("weight_decay", self.weight_decay, low=0.0)
        _check_number("warmup_epochs", self.warmup_epochs, low=0.0)
        _check_number("min_lr_ratio", self.min_lr_ratio, low=0.0, high=1.0)
        _check_number("grad_clip", self.grad_clip, low=0.0)
        _check_number("pos_embed_lr_scale", self.pos_embed_lr_scale, low=0.0, low_open=True)
        if self.classes is not None:
            if isinstance(self.classes, str) or not isinstance(self.classes, (list, tuple)):
                raise TypeError(f"TrainConfig.classes must be None or a list of shape names, got {self.classes!r}")
            self.classes = list(self.classes)
        if self.time_budget_s is not None:
            _check_number("time_budget_s", self.time_budget_s, low=0.0, low_open=True, what="None (no limit) or ")
        for name, minimum in (("warmup_steps", 0), ("n_train", 1), ("n_test", 1), ("stop_after_epochs", 1),
                              ("data_seed", 0), ("seed", 0), ("num_workers", 0)):
            value = getattr(self, name)
            optional = name not in ("seed", "num_workers")
            if value is None and optional:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"TrainConfig.{name} must be {'None or ' if optional else ''}an int >= {minimum}, "
                                 f"got {value!r}")
        if self.model not in PRESETS:
            raise ValueError(f"unknown model {self.model!r}; expected a preset name: {', '.join(sorted(PRESETS))}")
        if not isinstance(self.label_smoothing, (int, float)) or not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"TrainConfig.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.optimizer not in ("adamw", "sgd"):
            raise ValueError(f"TrainConfig.optimizer must be 'adamw' or 'sgd', got {self.optimizer!r}")
        if not isinstance(self.model_overrides, dict):
            raise TypeError(f"TrainConfig.model_overrides must be a dict, got {type(self.model_overrides).__name__}")
        unknown = sorted(set(self.model_overrides) - set(ViTConfig.__dataclass_fields__))
        if unknown:  # a typo fails here, not after the data are built
            raise ValueError(f"TrainConfig.model_overrides has unknown ViTConfig fields {unknown}; "
                             f"expected some of {sorted(ViTConfig.__dataclass_fields__)}")
        for name in ("dropout", "attn_dropout", "drop_path"):
            if name in self.model_overrides:
                _check_number(f"model_overrides[{name!r}]", self.model_overrides[name], low=0.0, high=1.0,
                              high_open=True)
        if self.out_dir is None:
            self.out_dir = os.path.join("runs", f"{self.dataset}-{self.model}")

    @property
    def draws_fresh_data(self) -> bool:
        """New training images every epoch: ``fresh_data``, or by default whenever the data are generated."""
        return self.dataset == "shapes" if self.fresh_data is None else bool(self.fresh_data)

    def to_dict(self) -> dict:
        """Plain types only (a checkpoint must load with ``weights_only=True``)."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields {unknown}; expected a subset of {sorted(known)}")
        return cls(**d)


# ============================================================================================ helpers
def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch so that a run is repeatable."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(device: str = "auto") -> torch.device:
    """"auto" (cuda if available, else cpu), "cpu", "cuda", "cuda:N" or "mps" as a torch.device; a one-line
    ValueError for a name torch does not know or a device this machine does not have."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"unknown device {device!r}; expected auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device {device!r} requested but this machine has {torch.cuda.device_count()} CUDA "
                         f"device(s): cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    if dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ValueError(f"device {device!r} requested but MPS is not available; use --device cpu")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {device!r} is not supported here; expected auto, cpu, cuda, cuda:N or mps")
    return dev


def is_main_process() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def setup_distributed(device: str = "auto") -> Tuple[int, int, torch.device]:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1). Returns (rank, world_size, device)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dev = resolve_device(device)
    if world <= 1:
        return 0, 1, dev
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return rank, world, dev


def all_reduce_sum(values: List[float], device: torch.device) -> List[float]:
    """Sum a few numbers over all processes (a no-op in a single process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def _any_process(flag: bool, device: torch.device) -> bool:
    """True if ``flag`` is true on any process: all of them must stop at the same step, or DDP hangs."""
    return all_reduce_sum([float(flag)], device)[0] > 0


def unwrap(model: nn.Module) -> nn.Module:
    """The VisionTransformer inside a DistributedDataParallel wrapper."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


# ============================================================================================ pieces
def build_model(config: TrainConfig, num_classes: int, image_size: int, in_channels: int) -> VisionTransformer:
    """The preset, sized for the dataset; seeded so that every process starts from the same weights."""
    torch.manual_seed(config.seed)
    overrides = {"num_classes": num_classes, "image_size": image_size, "in_channels": in_channels,
                 **config.model_overrides}
    return create_model(config.model, **overrides)


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, name: str = "adamw",
                    pos_embed_lr_scale: float = 1.0) -> torch.optim.Optimizer:
    """AdamW (or SGD with momentum); no weight decay on biases, LayerNorms, the class token and the position embedding.

    ``pos_embed_lr_scale`` != 1 puts the learned position embedding in a third group with ``lr * scale``:
    its gradient is an average over every image of where things tend to be, small and slow to add up, so
    with the same step size as the weights the 2-D grid of the paper's Fig. 7 forms several times later
    (docs/training.md measures it).
    """
    vit = unwrap(model)
    skip = vit.no_weight_decay()
    own_pos = pos_embed_lr_scale != 1.0 and isinstance(getattr(vit, "pos_embed", None), nn.Parameter)
    named = [(n, p) for n, p in vit.named_parameters() if p.requires_grad]
    decay = [p for n, p in named if n not in skip]
    no_decay = [p for n, p in named if n in skip and not (own_pos and n == "pos_embed")]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if own_pos:
        groups.append({"params": [vit.pos_embed], "weight_decay": 0.0, "lr": lr * pos_embed_lr_scale})
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9)
    if name != "adamw":
        raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {name!r}")
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999))


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> float:
    """Learning-rate factor of optimizer step ``step`` (0-based): linear warm-up, then half a cosine.

        warm-up:  (step + 1) / warmup_steps                                   for step < warmup_steps
        decay:    min_ratio + (1 - min_ratio) * (1 + cos(pi * t)) / 2,   t = (step - warmup) / (total - warmup)
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    t = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))


def build_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                    min_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR stepped after every optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, warmup_steps, total_steps, min_ratio))


def build_criterion(config: TrainConfig) -> nn.CrossEntropyLoss:
    """Cross-entropy against smoothed targets: (1 - eps) one-hot + eps / K (Szegedy et al. 2016)."""
    return nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)


def _data():
    """vit_edu.data, imported late so that `import vit_edu.train` stays light."""
    from . import data

    return data


def build_datasets(config: TrainConfig) -> Tuple[Dataset, Dataset, dict]:
    data = _data()
    common = dict(root=config.data_root, image_size=config.image_size, download=config.download)
    # generated data: the test split must never share the training seed (same seed = same images)
    train_seed = config.data_seed
    test_seed = None if config.data_seed is None else config.data_seed + 1
    if config.classes is not None:
        common["classes"] = config.classes
    train_ds = data.get_dataset(config.dataset, split="train", augment=config.augment, n=config.n_train,
                                seed=train_seed, fresh_each_epoch=config.draws_fresh_data, **common)
    test_ds = data.get_dataset(config.dataset, split="test", augment=False, n=config.n_test, seed=test_seed, **common)
    info = data.dataset_info(train_ds)
    if len(info["classes"]) < 2:  # one class: every prediction is right, "100 %" means nothing
        raise ValueError(f"{config.dataset} train has {len(info['classes'])} class {info['classes']}; "
                         f"expected at least two classes to learn to tell apart")
    test_classes = data.dataset_info(test_ds)["classes"]
    if list(test_classes) != list(info["classes"]):  # label k must mean the same class in both splits
        raise ValueError(f"{config.dataset}: the test split's classes {test_classes} differ from the train "
                         f"split's {info['classes']}; expected the same class folders in both")
    return train_ds, test_ds, info


def build_train_loader(dataset: Dataset, config: TrainConfig, rank: int = 0, world_size: int = 1) -> DataLoader:
    """Shuffled batches whose order depends only on (seed, epoch): call ``set_loader_epoch`` each epoch.

    That is what makes a resumed run see the same batches as an uninterrupted one.
    """
    if config.batch_size % world_size:
        raise ValueError(f"batch_size {config.batch_size} must be divisible by the number of processes {world_size}")
    if world_size > 1:
        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True,
                                     seed=config.seed, drop_last=True)
    else:
        sampler = RandomSampler(dataset, generator=torch.Generator())
    return DataLoader(dataset, batch_size=config.batch_size // world_size, sampler=sampler, drop_last=True,
                      num_workers=config.num_workers, persistent_workers=False)


def set_loader_epoch(loader: DataLoader, seed: int, epoch: int) -> None:
    """Re-seed the shuffling for this epoch (DistributedSampler.set_epoch or the RandomSampler's generator),
    and let a generated dataset draw this epoch's images (``ShapesDataset.set_epoch``)."""
    if hasattr(loader.dataset, "set_epoch"):
        loader.dataset.set_epoch(epoch)
    sampler = loader.sampler
    if isinstance(sampler, DistributedSampler):
        sampler.set_epoch(epoch)
    elif isinstance(sampler, RandomSampler) and sampler.generator is not None:
        sampler.generator.manual_seed(seed + epoch)


def build_eval_loader(dataset: Dataset, batch_size: int, rank: int = 0, world_size: int = 1,
                      num_workers: int = 0) -> DataLoader:
    """Every process evaluates every world_size-th example, so together they see each example once."""
    if world_size > 1:
        dataset = Subset(dataset, list(range(rank, len(dataset), world_size)))
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)


@torch.no_grad()
@torch.no_grad()  # no autograd graph: evaluation needs no gradients, and recording them costs time and memory
def evaluate(model: nn.Module, loader: DataLoader, device: Union[str, torch.device, None] = None,
             progress: Optional[bool] = False) -> Dict[str, float]:
    """Mean cross-entropy and accuracy over ``loader`` (summed over processes under torchrun)."""
    model = unwrap(model)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    loss_sum, correct, count = 0.0, 0.0, 0.0
    for batch in tqdm(loader, desc="eval", leave=False, disable=_bar_disabled(progress)):
        images, labels = batch[0].to(device), batch[1].to(device)
        logits = model(images)  # [B, num_classes]
        loss_sum += nn.functional.cross_entropy(logits, labels, reduction="sum").item()
        correct += (logits.argmax(dim=-1) == labels).sum().item()
        count += labels.numel()
    model.train(was_training)
    loss_sum, correct, count = all_reduce_sum([loss_sum, correct, count], device)
    if count == 0:
        raise ValueError("evaluate() got an empty loader")
    return {"loss": loss_sum / count, "acc": correct / count}


def _bar_disabled(progress: Optional[bool]) -> bool:
    """tqdm bars only on a terminal: carriage returns would litter logs and notebook outputs."""
    if progress is None:
        return not (hasattr(sys.stderr, "isatty") and sys.stderr.isatty())
    return not progress


def new_history() -> Dict[str, List[float]]:
    keys = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "images_per_s", "elapsed_s")
    return {k: [] for k in keys}


# ============================================================================================ checkpoints
def _rng_state() -> dict:
    """RNG states as tensors and lists, so that weights_only loading accepts them."""
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


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    v, internal, gauss = state["python"]
    random.setstate((v, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _atomic_write(path: PathLike, write: Callable[[Any], None]) -> Path:
    """Write via ``write(file)`` into a temp file next to ``path``, fsync, then ``os.replace`` it into place.

    ``os.replace`` is atomic on POSIX and Windows: readers see the old file or the new one, never half.
    On any error the temp file is removed and the old file stays untouched. A write killed outright (SIGKILL,
    power cut) cannot clean up, so temp files of writers that are gone are removed before each write.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(path)
    fd, tmp = temp_file_for(path)  # .<name>.<pid>-<random>.tmp
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_checkpoint(path: PathLike, model: nn.Module, optimizer: Optional[torch.optim.Optimizer] = None,
                    scheduler: Optional[Any] = None, epoch: int = 0, history: Optional[dict] = None,
                    train_config: Optional[TrainConfig] = None, extra: Optional[dict] = None) -> Path:
    """Everything needed to resume: weights, optimizer, scheduler, epochs done, RNG states, history, configs."""
    vit = unwrap(model)
    ckpt = {
        "format": CHECKPOINT_FORMAT,
        "config": {"model": vit.config.to_dict(),
                   "train": train_config.to_dict() if train_config is not None else None},
        "model": {k: v.detach().cpu() for k, v in vit.state_dict().items()},
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "epoch": int(epoch),
        "rng": _rng_state(),
        "history": history if history is not None else new_history(),
        "extra": extra or {},
    }
    return _atomic_write(path, lambda f: torch.save(ckpt, f))


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
    return ckpt


def check_resumable(ckpt: dict, path: PathLike) -> None:
    """A checkpoint ``fit(resume=...)`` can continue: it holds the optimizer, scheduler, RNG and train config."""
    missing = [k for k in ("optimizer", "scheduler", "rng", "history") if ckpt.get(k) is None]
    if ckpt["config"].get("train") is None:
        missing.append("the training config")
    if missing:
        raise ValueError(f"{path} cannot be resumed: it holds no {', '.join(missing)} (a checkpoint saved "
                         f"without them, e.g. save_checkpoint(path, model)); expected the last.pt that fit writes")


# Fields that --resume may change: they decide where and how fast the run goes, or how long its schedule is
# (epochs: the cosine is recomputed for the new length, as the shipped checkpoint's recipe does), never what
# a step computes. Any other field that differs from the checkpoint's is refused: the optimizer and scheduler
# states would silently keep the old lr and weight decay, another batch size or data would break the exact resume.
RESUME_MAY_CHANGE = frozenset({"epochs", "stop_after_epochs", "time_budget_s", "eval_every", "out_dir", "device",
                               "num_workers", "progress", "data_root", "download", "save_checkpoints", "n_test"})


def resume_changes(stored: dict, config: TrainConfig) -> Tuple[Dict[str, Tuple[Any, Any]], Dict[str, Tuple[Any, Any]]]:
    """(allowed, refused): {field: (checkpoint's value, config's value)} for the fields that differ."""
    old = TrainConfig.from_dict(stored).to_dict()
    new = config.to_dict()
    allowed, refused = {}, {}
    for name in new:
        if name == "model_overrides":  # {} and {"dropout": 0.0} build the same model when the preset's is 0.0
            keys = set(old[name]) | set(new[name])
            same = all(_model_field(old["model"], old[name], k) == _model_field(new["model"], new[name], k)
                       for k in keys)
            if not same:
                refused[name] = (old[name], new[name])
        elif old.get(name) != new[name]:
            (allowed if name in RESUME_MAY_CHANGE else refused)[name] = (old.get(name), new[name])
    return allowed, refused


def _model_field(model: str, overrides: dict, name: str) -> Any:
    """The value of ViTConfig field ``name`` that preset ``model`` with ``overrides`` gets."""
    if name in overrides:
        return overrides[name]
    if name in PRESETS.get(model, {}):
        return PRESETS[model][name]
    f = ViTConfig.__dataclass_fields__.get(name)
    return f.default if f is not None else None


def export_safetensors(model: nn.Module, path: PathLike, metadata: Optional[Dict[str, Any]] = None) -> Path:
    """Weights only, as safetensors, with the model config (JSON) in the header metadata.

    Metadata values must be strings in safetensors; anything else is stored as JSON.
    """
    from safetensors.torch import save

    vit = unwrap(model)
    meta = {"format": "vit_edu", "config": json.dumps(vit.config.to_dict())}
    for k, v in (metadata or {}).items():
        meta[k] = v if isinstance(v, str) else json.dumps(v)
    tensors = {k: v.detach().cpu().contiguous() for k, v in vit.state_dict().items()}
    blob = save(tensors, metadata=meta)
    return _atomic_write(path, lambda f: f.write(blob))


def read_safetensors_metadata(path: PathLike) -> Dict[str, str]:
    """The header metadata of a .safetensors file (a damaged or foreign file: one ValueError)."""
    from safetensors import safe_open

    from .convert import check_readable_file
    from .fileio import describe_file

    expected = "a .safetensors file"
    check_readable_file(path, expected)
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as err:  # noqa: BLE001 - SafetensorError: truncated, text, ...
        raise ValueError(f"cannot read {path}: expected {expected}, got {describe_file(path)} "
                         f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None


def load_model(path: PathLike, device: Union[str, torch.device] = "cpu") -> VisionTransformer:
    """A VisionTransformer in eval mode from a training checkpoint (.pt) or an exported .safetensors file.

    A missing path, a folder, or a file that is not one of the two gives one clear error (see load_checkpoint).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model file not found: {path}; expected a .pt training checkpoint or a "
                                f".safetensors export")
    if path.suffix == ".safetensors":
        state, meta = load_safetensors_checked(path, "a .safetensors export written by vit_edu")
        if "config" not in meta:
            raise ValueError(f"{path} has no 'config' in its safetensors metadata; "
                             f"expected a file written by vit_edu.train.export_safetensors")
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

    ``info`` holds the class names, the test accuracy measured at export, the command that produced it and its seed.
    """
    if not COURSE_CHECKPOINT.is_file():
        raise FileNotFoundError(f"the shipped checkpoint is missing: {COURSE_CHECKPOINT}")
    meta = read_safetensors_metadata(COURSE_CHECKPOINT)
    info = {k: _maybe_json(v) for k, v in meta.items() if k != "config"}
    return load_model(COURSE_CHECKPOINT, device=device), info


def _maybe_json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def stored_classes(path: PathLike) -> Optional[List[str]]:
    """The class names a .pt checkpoint or .safetensors export was trained on, or None if it does not say."""
    path = Path(path)
    if path.suffix == ".safetensors":
        classes = _maybe_json(read_safetensors_metadata(path).get("classes", "null"))
    else:
        classes = (load_checkpoint(path).get("extra") or {}).get("classes")
    return [str(c) for c in classes] if isinstance(classes, list) else None


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


# ============================================================================================ the loop
def train_one_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer, scheduler: Any,
                    criterion: nn.Module, device: torch.device, grad_clip: float = 1.0,
                    deadline: Optional[float] = None, progress: Optional[bool] = None,
                    desc: str = "train") -> Dict[str, Any]:
    """One pass over ``loader``; stops early (``stopped=True``) when ``time.monotonic()`` passes ``deadline``."""
    model.train()
    loss_sum, correct, count, stopped = 0.0, 0.0, 0.0, False
    bar = tqdm(loader, desc=desc, leave=False, disable=_bar_disabled(progress) or not is_main_process())
    for batch in bar:
        images, labels = batch[0].to(device), batch[1].to(device)
        logits = model(images)  # [B, num_classes]
        loss = criterion(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # under DDP the gradients are averaged over the processes here
        if grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        scheduler.step()
        loss_sum += loss.item() * labels.numel()
        correct += (logits.argmax(dim=-1) == labels).sum().item()
        count += labels.numel()
        bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
        if deadline is not None and _any_process(time.monotonic() > deadline, device):
            stopped = True
            break
    bar.close()
    loss_sum, correct, count = all_reduce_sum([loss_sum, correct, count], device)
    return {"loss": loss_sum / max(count, 1), "acc": correct / max(count, 1), "images": count, "stopped": stopped}


def fit(config: Optional[TrainConfig] = None, resume: Optional[PathLike] = None,
        export: Optional[PathLike] = None, export_metadata: Optional[dict] = None,
        log: Callable[[str], None] = print) -> Tuple[VisionTransformer, Dict[str, List[float]]]:
    """Train ``config.model`` on ``config.dataset``; returns (model in eval mode, history of lists).

    Saves ``<out_dir>/last.pt`` after every epoch (rank 0 only). ``resume`` continues a run from its
    checkpoint exactly where it stopped. ``export`` also writes the final weights as .safetensors.
    """
    config = config or TrainConfig()
    rank, world, device = setup_distributed(config.device)
    main = rank == 0
    say = log if main else (lambda msg: None)
    start = time.monotonic()

    # Everything that can be checked before the work starts is checked here, on every process (so that
    # all of them stop together): somewhere to write, a checkpoint that can be resumed with this config.
    if config.save_checkpoints:
        check_writable_dir(config.out_dir, "output folder (--out-dir)")
        if main:
            remove_stale_temp_files(Path(config.out_dir) / "last.pt")  # left by a write that was killed
    if export is not None:
        check_writable_file(export, "export file (--export)")
    ckpt = None
    if resume is not None:
        ckpt = load_checkpoint(resume, map_location=device)
        check_resumable(ckpt, resume)
        changed, refused = resume_changes(ckpt["config"]["train"], config)
        if refused:
            raise ValueError(f"resuming {resume} would change " + ", ".join(
                f"{k} from {old!r} to {new!r}" for k, (old, new) in refused.items())
                + "; a resumed run keeps the checkpoint's settings (only "
                f"{', '.join(sorted(RESUME_MAY_CHANGE))} may change): start a new run to use other values")
        if ckpt["epoch"] >= config.epochs:
            raise ValueError(f"{resume} is a finished run ({ckpt['epoch']} of {config.epochs} epochs done): "
                             f"nothing to resume; to train longer, resume with more epochs (--epochs) than "
                             f"{ckpt['epoch']}, or start a new run")

    seed_everything(config.seed)
    train_ds, test_ds, info = build_datasets(config)
    if ckpt is not None:
        trained_on = (ckpt.get("extra") or {}).get("classes")
        if trained_on is not None and list(trained_on) != list(info["classes"]):
            raise ValueError(f"{resume} was trained on classes {list(trained_on)}, but {config.dataset} now has "
                             f"classes {list(info['classes'])}; expected the same data to resume on")
    model = build_model(config, len(info["classes"]), info["image_size"], info["in_channels"]).to(device)
    train_loader = build_train_loader(train_ds, config, rank, world)
    test_loader = build_eval_loader(test_ds, max(256, config.batch_size), rank, world, config.num_workers)
    steps_per_epoch = len(train_loader)
    if steps_per_epoch == 0:
        raise ValueError(f"the training set ({len(train_ds)} examples) is smaller than one batch "
                         f"({config.batch_size}); lower --batch-size or raise --n-train")
    total_steps = config.epochs * steps_per_epoch
    warmup = config.warmup_steps if config.warmup_steps is not None else round(config.warmup_epochs * steps_per_epoch)
    warmup = min(warmup, total_steps)

    optimizer = build_optimizer(model, config.lr, config.weight_decay, config.optimizer, config.pos_embed_lr_scale)
    scheduler = build_scheduler(optimizer, warmup, total_steps, config.min_lr_ratio)
    criterion = build_criterion(config)
    history, start_epoch = new_history(), 0

    if ckpt is not None:
        load_checked(model, ckpt["model"], source=str(resume))
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        history, start_epoch = ckpt["history"], ckpt["epoch"]
        _set_rng_state(ckpt["rng"])
        note = "; ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changed.items()
                         if k not in ("progress", "out_dir", "stop_after_epochs"))
        say(f"resumed from {resume} after epoch {start_epoch}" + (f" (changed: {note})" if note else ""))

    if world > 1:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)

    vit = unwrap(model)
    say(f"{config.model} ({vit.num_parameters() / 1e6:.2f}M parameters) on {config.dataset}: "
        f"{len(train_ds)} train / {len(test_ds)} test images, {world} process(es) on {device}, "
        f"{config.epochs} epochs x {steps_per_epoch} steps of batch {config.batch_size}")
    deadline = start + config.time_budget_s if config.time_budget_s else None
    elapsed_before = history["elapsed_s"][-1] if history["elapsed_s"] else 0.0
    out_dir = Path(config.out_dir)
    last_eval_s, epoch, stopped = 0.0, start_epoch, False
    end_epoch = config.epochs if config.stop_after_epochs is None else min(
        config.epochs, start_epoch + config.stop_after_epochs)
    for epoch in range(start_epoch, end_epoch):
        set_loader_epoch(train_loader, config.seed, epoch)
        t0 = time.monotonic()
        # leave time for the final evaluation inside the budget
        stop_at = deadline - last_eval_s if deadline is not None else None
        tr = train_one_epoch(model, train_loader, optimizer, scheduler, criterion, device, config.grad_clip,
                             stop_at, config.progress, desc=f"epoch {epoch + 1}/{config.epochs}")
        train_s = time.monotonic() - t0
        stopped = tr["stopped"]
        last = stopped or epoch + 1 == end_epoch
        if last or (epoch + 1) % config.eval_every == 0:
            t1 = time.monotonic()
            te = evaluate(model, test_loader, device, progress=False)
            last_eval_s = time.monotonic() - t1
        else:
            te = {"loss": float("nan"), "acc": float("nan")}
        done = epoch + (1 if not stopped else tr["images"] / (steps_per_epoch * config.batch_size))
        row = {"epoch": done, "train_loss": tr["loss"], "train_acc": tr["acc"], "test_loss": te["loss"],
               "test_acc": te["acc"], "lr": scheduler.get_last_lr()[0], "images_per_s": tr["images"] / train_s,
               "elapsed_s": elapsed_before + time.monotonic() - start}
        for k, v in row.items():
            history[k].append(float(v))
        say(f"epoch {done:5.2f}/{config.epochs}  train loss {tr['loss']:.4f} acc {tr['acc']:.4f}  "
            f"test loss {te['loss']:.4f} acc {te['acc']:.4f}  lr {row['lr']:.2e}  "
            f"{row['images_per_s']:.0f} img/s  {row['elapsed_s']:.0f} s")
        if main and config.save_checkpoints:
            save_checkpoint(out_dir / "last.pt", model, optimizer, scheduler, epoch + 1, history, config,
                            extra={"stopped_early": stopped, "classes": [str(c) for c in info["classes"]]})
        if stopped:
            say(f"time budget of {config.time_budget_s:.0f} s reached: stopped after {done:.2f} epochs")
            break

    if main and export is not None:
        meta = {"test_acc": history["test_acc"][-1] if history["test_acc"] else None,
                "classes": list(info["classes"]), "seed": config.seed, "train_config": config.to_dict(),
                "epochs_done": history["epoch"][-1] if history["epoch"] else 0, **(export_metadata or {})}
        export_safetensors(model, export, meta)
        say(f"exported weights to {export}")
    if world > 1:
        dist.barrier()
    return vit.eval(), history


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
