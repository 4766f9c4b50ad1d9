"""The training loop: optimizer, learning-rate schedule, loss, one epoch, evaluation, and ``fit``.

The recipe is the paper's (Dosovitskiy et al. 2020, Sec. 4.1 and Appendix B.1) scaled down to a laptop:
AdamW with weight decay on the weight matrices only, a linear learning-rate warm-up followed by a cosine
decay (updated every step), optional label smoothing and gradient clipping at global norm 1.

    model, history = fit(TrainConfig())     # the default run, the same as `python -m vit_edu train`

The same code runs on several processes with ``torchrun --nproc_per_node=2 -m vit_edu train``:
every process sees its own share of each batch (``DistributedSampler``), ``DistributedDataParallel``
averages the gradients, so all processes take the same step as one process on the whole batch would.
"""

from __future__ import annotations

import math
import numbers
import os
import random
import signal
import sys
import threading
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Union

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm  # the terminal bar; tqdm.auto wants ipywidgets inside notebooks

from ..convert import load_checked
from ..fileio import check_space, check_writable_dir, check_writable_file, folder_lock, remove_stale_temp_files
from ..models import check_has_values, create_model
from ..vit import VisionTransformer
from .checkpoint import (EXPORT_RESERVED, check_export_name, check_export_replaceable, checkpoint_to_resume,
                         export_safetensors, metadata_strings, new_history, output_bytes, rng_state, save_checkpoint,
                         set_rng_state)
from .config import TrainConfig
from .data import DATASET_NAMES, SHAPE_CLASSES
from .loaders import (build_datasets, build_eval_loader, build_train_loader, check_overrides_fit, data_fingerprint,
                      fingerprint_changes, set_loader_epoch)
from .distributed import (all_reduce_sum, any_process, barrier, is_main_process, setup_distributed, unwrap,
                          wrap)

PathLike = Union[str, os.PathLike]
History = Dict[str, List[float]]


# ============================================================================================ the pieces
def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch so that a run is repeatable."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_model(config: TrainConfig, num_classes: int, image_size: int, in_channels: int) -> VisionTransformer:
    """The preset, sized for the dataset; seeded so that every process starts from the same weights."""
    torch.manual_seed(config.seed)
    overrides = {"num_classes": num_classes, "image_size": image_size, "in_channels": in_channels,
                 **config.model_overrides}
    if config.weight_init is not None:
        overrides["weight_init"] = config.weight_init
    return create_model(config.model, **overrides)


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, name: str = "adamw",
                    pos_embed_lr_scale: float = 1.0) -> torch.optim.Optimizer:
    """AdamW (or SGD with momentum); no weight decay on biases, LayerNorms, the class token and the position embedding.

    ``pos_embed_lr_scale`` != 1 puts the learned position embedding in a third group with ``lr * scale``:
    its gradient is an average over every image of where things tend to be, small and slow to add up, so
    with the same step size as the weights the 2-D grid of the paper's Fig. 7 forms several times later
    (docs/training.md measures it).
    """
    for name_, value in (("lr", lr), ("weight_decay", weight_decay), ("pos_embed_lr_scale", pos_embed_lr_scale)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
            raise ValueError(f"build_optimizer: {name_} must be a finite number >= 0, got {value!r}")
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
    if warmup_steps < 0 or total_steps < 0 or not 0.0 <= min_ratio <= 1.0:
        raise ValueError(f"warmup_cosine expects warmup_steps >= 0, total_steps >= 0 and min_ratio in [0, 1], got "
                         f"warmup_steps={warmup_steps!r}, total_steps={total_steps!r}, min_ratio={min_ratio!r}")
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


def _bar_disabled(progress: Optional[bool]) -> bool:
    """tqdm bars only on a terminal: carriage returns would litter logs and notebook outputs."""
    if progress is None:
        return not (hasattr(sys.stderr, "isatty") and sys.stderr.isatty())
    return not progress


# ============================================================================================ labels, checked
def _check_has_head(model: nn.Module, what: str) -> None:
    """A model without a classifier (built with num_classes=0: its head is nn.Identity) returns features, not class
    scores; the loss and accuracy of features against labels are numbers that mean nothing. Refused up front."""
    if isinstance(getattr(unwrap(model), "head", None), nn.Identity):
        raise ValueError(f"{what}: the model has no classification head (built with num_classes=0, e.g. by "
                         f"load_state_dict_file of a file without head weights): it returns features, not class "
                         f"scores; expected a classifier: build it with num_classes=k, or give it a head, "
                         f"model.head = torch.nn.Linear(features, k)")


def _label_range(labels: Any, images: torch.Tensor, where: str) -> Tuple[int, int]:
    """(min, max) of a batch's labels, which must be class indices: a 1-D integer tensor with one per image. Read
    where the loader put them (on the CPU, no device sync), before the forward pass."""
    if not isinstance(labels, torch.Tensor):
        raise ValueError(f"{where}: expected labels as a tensor of class indices, got {type(labels).__name__}")
    batch = images.shape[0] if isinstance(images, torch.Tensor) and images.ndim > 0 else None
    if labels.ndim != 1 or labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex() or (
            batch is not None and labels.shape[0] != batch):
        hint = " (one-hot or soft labels? pass class indices: labels.argmax(-1))" if labels.ndim == 2 else ""
        raise ValueError(f"{where}: expected labels as class indices, a 1-D integer tensor of length {batch} (one per "
                         f"image), got {str(labels.dtype).replace('torch.', '')} of shape {tuple(labels.shape)}{hint}")
    if labels.numel() == 0:
        return 0, 0
    lo, hi = torch.stack(labels.aminmax()).tolist()
    return int(lo), int(hi)


def _check_labels_fit(logits: torch.Tensor, lo: int, hi: int, count: int, where: str) -> None:
    """Labels in [0, K) for the K outputs of the model: cross_entropy would raise a bare IndexError for K or more,
    and skip -100 (its ignore_index) without a word while the accuracy counts it wrong."""
    if logits.ndim != 2 or logits.shape[0] != count:
        raise ValueError(f"{where}: expected the model to return logits [B, classes] for the batch of {count}, got "
                         f"shape {tuple(logits.shape)}")
    k = logits.shape[1]
    if count and (lo < 0 or hi >= k):
        ignore = " (-100, cross_entropy's ignore_index, is not supported: every image needs its class)" if lo == -100 \
            else ""
        raise ValueError(f"{where}: labels must lie in [0, {k}) for the model's {k} outputs, got values in "
                         f"[{lo}, {hi}]{ignore}")


# ============================================================================================ one epoch
class TrainingDiverged(ValueError):
    """The loss or the weights became NaN or infinite: stop, name the step and the likely cause (the learning rate).

    A ValueError because it is the user's setting that caused it: the command line prints it as one line."""


def _too_high(scheduler: Any) -> str:
    """Which learning rate to lower: --lr, and --pos-lr-scale when the position embedding's group steps faster."""
    lrs = scheduler.get_last_lr()
    pos = (f", or --pos-lr-scale: the position embedding's rate is {lrs[2]:.2e}"
           if len(lrs) == 3 and lrs[2] > lrs[0] else "")  # build_optimizer's third group
    return f"the learning rate is too high (lower --lr{pos})"


def train_one_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer, scheduler: Any,
                    criterion: nn.Module, device: torch.device, grad_clip: float = 1.0,
                    deadline: Optional[float] = None, progress: Optional[bool] = None,
                    desc: str = "train", skip_batches: int = 0, rng_after_skip: Optional[dict] = None,
                    stop_requested: Optional[Callable[[], bool]] = None) -> Dict[str, Any]:
    """One pass over ``loader``; stops early (``stopped=True``) when ``time.monotonic()`` passes ``deadline``
    or ``stop_requested()`` says so (checked after each step, so a step is never cut in half), on any process.

    Returns the mean loss and accuracy, the ``batches`` trained, ``signalled`` (``stop_requested`` stopped it) and,
    when stopped, ``rng`` (the RNG states at
    that step, before anything else draws from them). ``skip_batches`` continues a stopped epoch: the loader's
    first batches are drawn (so the loader's own random draws repeat) but not trained on, then the RNG states
    become ``rng_after_skip``, the ones recorded where the epoch stopped.
    """
    _check_has_head(model, desc)
    model.train()
    loss_sum, correct, count, stopped, signalled, trained, rng = 0.0, 0.0, 0.0, False, False, 0, None
    batches = iter(loader)
    for _ in range(skip_batches):
        next(batches)
    if rng_after_skip is not None:
        set_rng_state(rng_after_skip)
    total = len(loader) if hasattr(loader, "__len__") else None
    bar = tqdm(batches, desc=desc, leave=False, initial=skip_batches, total=total,
               disable=_bar_disabled(progress) or not is_main_process())
    for step, batch in enumerate(bar, skip_batches + 1):
        lo, hi = _label_range(batch[1], batch[0], f"{desc}, batch {step}")
        images, labels = batch[0].to(device), batch[1].to(device).long()  # int32 (NumPy's) labels too
        logits = model(images)  # [B, num_classes]
        _check_labels_fit(logits, lo, hi, labels.shape[0], f"{desc}, batch {step}")
        loss = criterion(logits, labels)
        if any_process(not bool(torch.isfinite(loss)), device):  # every process stops at the same step
            bar.close()
            raise TrainingDiverged(
                f"{desc}, step {step}: the training loss is {loss.item()} at learning rate "
                f"{scheduler.get_last_lr()[0]:.2e}; the run diverged, most likely because {_too_high(scheduler)}. "
                f"Nothing of this epoch was saved: the last checkpoint, if any, is from before it")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # under DDP the gradients are averaged over the processes here
        if grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        scheduler.step()
        loss_sum += loss.item() * labels.numel()
        correct += (logits.argmax(dim=-1) == labels).sum().item()
        count += labels.numel()
        trained += 1
        bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
        if deadline is not None or stop_requested is not None:  # every process stops at the same step, or DDP hangs
            late = deadline is not None and time.monotonic() > deadline
            asked = stop_requested is not None and stop_requested()
            late, asked = (total > 0 for total in all_reduce_sum([float(late), float(asked)], device))
            if late or asked:
                stopped, signalled, rng = True, asked, rng_state()
                break
    bar.close()
    broken = [name for name, p in unwrap(model).named_parameters() if not bool(torch.isfinite(p).all())]
    if broken:  # a finite loss can still leave an infinite weight behind; never save or evaluate it
        raise TrainingDiverged(f"{desc}: {len(broken)} weight tensors hold NaN or infinite values after the epoch "
                               f"(first: {broken[0]}); the run diverged, most likely because {_too_high(scheduler)}. "
                               f"Nothing of this epoch was saved")
    loss_sum, correct, count = all_reduce_sum([loss_sum, correct, count], device)
    return {"loss": loss_sum / max(count, 1), "acc": correct / max(count, 1), "images": count, "stopped": stopped,
            "signalled": signalled, "batches": trained, "rng": rng}


@torch.no_grad()  # no autograd graph: evaluation needs no gradients, and recording them costs time and memory
def evaluate(model: nn.Module, loader: DataLoader, device: Union[str, torch.device, None] = None,
             progress: Optional[bool] = False) -> Dict[str, float]:
    """Mean cross-entropy and accuracy over ``loader`` (summed over processes under torchrun).

    Labels must be class indices in [0, K) for the model's K outputs (checked per batch: a min and a max), and the
    model must have a classification head: anything else is a ValueError naming what came, not a number."""
    model = unwrap(model)
    check_has_values(model, "evaluate()")  # no meta tensors, no NaN: a chance-level "accuracy" of a broken model
    _check_has_head(model, "evaluate()")
    device = _usable_device(device, "evaluate()") if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    loss_sum, correct, count = 0.0, 0.0, 0.0
    try:
        for step, batch in enumerate(tqdm(loader, desc="eval", leave=False, disable=_bar_disabled(progress)), 1):
            lo, hi = _label_range(batch[1], batch[0], f"evaluate(), batch {step}")
            images, labels = batch[0].to(device), batch[1].to(device).long()
            logits = model(images)  # [B, num_classes]
            _check_labels_fit(logits, lo, hi, labels.shape[0], f"evaluate(), batch {step}")
            loss_sum += nn.functional.cross_entropy(logits, labels, reduction="sum").item()
            correct += (logits.argmax(dim=-1) == labels).sum().item()
            count += labels.numel()
    finally:  # an error (bad labels, Ctrl-C) leaves the model in the mode it came in
        model.train(was_training)
    loss_sum, correct, count = all_reduce_sum([loss_sum, correct, count], device)
    if count == 0:
        raise ValueError("evaluate() got an empty loader")
    return {"loss": loss_sum / count, "acc": correct / count}


def _usable_device(device: Any, what: str) -> torch.device:
    """``device`` as a torch.device this PyTorch can use, or a ValueError that says so (not CUDA's driver text)."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"{what}: device must be a torch device such as 'cpu' or 'cuda:0', got {device!r} "
                         f"({err})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{what}: device {str(device)!r} asked for, but this PyTorch sees no CUDA GPU; use 'cpu'")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{what}: device 'mps' asked for, but this PyTorch has no Apple GPU (MPS); use 'cpu'")
    return device


# ============================================================================================ fit, step by step
@dataclass
class Run:
    """Everything ``fit`` builds before the first step; the epochs read it and add to ``history``."""

    config: TrainConfig
    device: torch.device
    model: nn.Module  # in DistributedDataParallel under torchrun
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    criterion: nn.Module
    train_loader: DataLoader
    test_loader: DataLoader
    classes: List[str]
    steps_per_epoch: int
    history: History
    start_epoch: int = 0
    start_batch: int = 0  # > 0: the run stopped inside start_epoch after this many batches (a time budget)
    epoch_rng: Optional[dict] = None  # the RNG states at the start of that epoch
    stop_rng: Optional[dict] = None  # ... and where it stopped
    data: Optional[dict] = None  # data_fingerprint of the training set, stored in every checkpoint
    data_note: str = ""  # how the data differ from the resumed checkpoint's (a resume with force=True)
    world: int = 1  # processes (torchrun): they decide the order of the batches


@contextmanager
def _torch_threads(threads: Optional[int]) -> Iterator[None]:
    """``torch.set_num_threads(threads)`` for the run, the previous count restored after it (None: unchanged)."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _check_outputs(config: TrainConfig, export: Optional[PathLike], main: bool) -> None:
    """Somewhere to write, with room for what the run writes (its checkpoint, its export: sizes from the model
    built on the "meta" device, which allocates nothing), checked before any work (on every process, so that
    all of them stop together)."""
    if config.save_checkpoints:
        check_writable_dir(config.out_dir, "output folder (--out-dir)")
        if main:
            remove_stale_temp_files(Path(config.out_dir) / "last.pt")  # left by a write that was killed
    if export is not None:
        check_export_name(export, "export file (--export)")
        check_writable_file(export, "export file (--export)")
    if export is None and not config.save_checkpoints:
        return
    size = config.effective("image_size")
    try:
        with torch.device("meta"):
            model = build_model(config, _classes_hint(config), size, 3)
    except (ValueError, TypeError):  # a size the model cannot take: building it for real says why, by name
        return
    checkpoint, exported = output_bytes(model, config.optimizer)
    outputs = [(Path(config.out_dir) / "last.pt", checkpoint, "output folder (--out-dir)")] * config.save_checkpoints
    check_space(outputs + ([(Path(export), exported, "export file (--export)")] if export is not None else []))


def _classes_hint(config: TrainConfig) -> int:
    """The number of classes the run will have, as far as it can be told without reading the data (the
    model's head is a small part of it: a guess of 1000 where the folder cannot be read)."""
    if config.dataset == "shapes":
        return len(config.classes) if config.classes else len(SHAPE_CLASSES)
    if config.dataset in DATASET_NAMES and config.dataset != "imagefolder":
        return 10
    try:
        return max(2, sum(1 for e in os.scandir(Path(config.data_root) / "train")
                          if e.is_dir() and not e.name.startswith(".")))
    except OSError:
        return 1000


def _schedule_lengths(config: TrainConfig, steps_per_epoch: int, train_size: int) -> Tuple[int, int]:
    """(warm-up steps, total steps) of the learning-rate schedule."""
    if steps_per_epoch == 0:
        raise ValueError(f"the training set ({train_size} examples) is smaller than one batch "
                         f"({config.batch_size}); lower --batch-size or raise --n-train")
    total = config.epochs * steps_per_epoch
    warmup = config.warmup_steps if config.warmup_steps is not None else round(config.warmup_epochs * steps_per_epoch)
    return min(warmup, total), total


def _build_run(config: TrainConfig, rank: int, world: int, device: torch.device,
               resumed: Optional[Tuple[dict, PathLike]], force: bool = False) -> Tuple[Run, str]:
    """Data, model, loaders, optimizer and schedule, in the order that fixes every random draw; returns the
    run and a line that describes it."""
    seed_everything(config.seed)
    train_ds, test_ds, info = build_datasets(config)
    classes = [str(c) for c in info["classes"]]
    check_overrides_fit(config, len(classes), info["image_size"], info["in_channels"])
    data, data_note = data_fingerprint(train_ds, config), ""
    if resumed is not None:
        extra = resumed[0].get("extra") or {}
        trained_on, images = extra.get("classes"), extra.get("train_images")
        if trained_on is not None and list(trained_on) != classes:
            raise ValueError(f"{resumed[1]} was trained on classes {list(trained_on)}, but {config.dataset} now has "
                             f"classes {classes}; expected the same data to resume on")
        if images is not None and images != len(train_ds):  # files added or removed: other batches and schedule
            raise ValueError(f"{resumed[1]} was trained on {images} {config.dataset} training images, but the data now "
                             f"have {len(train_ds)}; expected the same data to resume on")
        was = extra.get("world_size")  # None: a checkpoint from before it was recorded
        if extra.get("stopped_at") and was is not None and was != world:  # its skipped batches are another order's
            raise ValueError(f"{resumed[1]} stopped inside an epoch of a run on {was} process(es), whose batches are "
                             f"dealt in another order than on {world}: resuming there would train some of that "
                             f"epoch's images twice and skip others; expected the same number of processes to resume "
                             f"it ({'python -m vit_edu' if was == 1 else f'torchrun --nproc_per_node={was} -m vit_edu'})")
        data_note = fingerprint_changes(extra.get("data"), data)
        if data_note and not force:  # same names and count, other pictures: the resumed run would be another run
            raise ValueError(f"{resumed[1]} was trained on other {config.dataset} training data ({data_note}); "
                             f"expected the same data to resume on; resume anyway with --force "
                             f"(fit(..., force=True)), or start a new run")
    model = build_model(config, len(classes), info["image_size"], info["in_channels"]).to(device)
    train_loader = build_train_loader(train_ds, config, rank, world)
    test_loader = build_eval_loader(test_ds, max(256, config.batch_size), rank, world, config.num_workers)
    warmup, total = _schedule_lengths(config, len(train_loader), len(train_ds))
    optimizer = build_optimizer(model, config.lr, config.weight_decay, config.optimizer, config.pos_embed_lr_scale)
    run = Run(config, device, model, optimizer, build_scheduler(optimizer, warmup, total, config.min_lr_ratio),
              build_criterion(config), train_loader, test_loader, classes, len(train_loader), new_history(),
              data=data, data_note=data_note, world=world)
    about = (f"{config.model} ({model.num_parameters() / 1e6:.2f}M parameters) on {config.dataset}: "
             f"{len(train_ds)} train / {len(test_ds)} test images, {world} process(es) on {device}, "
             f"{config.epochs} epochs x {run.steps_per_epoch} steps of batch {config.batch_size}")
    return run, about


def _restore(run: Run, ckpt: dict, source: PathLike) -> None:
    """Continue where the checkpoint stopped: weights, optimizer, scheduler, history, RNG states."""
    stored, built = ckpt["config"]["model"], unwrap(run.model).config.to_dict()
    differ = [k for k in stored if k != "extra" and stored[k] != built.get(k)]
    if differ:  # the preset (or its defaults) changed since the run began; weights of the same shapes would load
        raise ValueError(f"{source} was trained with a model that has " + ", ".join(
            f"{k}={stored[k]!r}" for k in differ) + f", but {run.config.model} now builds one with " + ", ".join(
            f"{k}={built.get(k)!r}" for k in differ) + "; expected the same model to resume (load_model still "
            "loads the checkpoint as it was trained)")
    load_checked(run.model, ckpt["model"], source=str(source))
    try:  # the parts' types were checked on loading; here, whether they fit this model and optimizer
        run.optimizer.load_state_dict(ckpt["optimizer"])
    except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as err:
        raise ValueError(f"{source} is a damaged vit_edu checkpoint: its optimizer state does not fit the model "
                         f"({type(err).__name__}: {err})") from None
    for group in run.optimizer.param_groups:
        for p in group["params"]:
            for key, value in run.optimizer.state.get(p, {}).items():
                if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != p.shape:
                    raise ValueError(f"{source} is a damaged vit_edu checkpoint: its optimizer state {key!r} has "
                                     f"shape {tuple(value.shape)}, but its parameter has {tuple(p.shape)}")
    run.scheduler.load_state_dict(ckpt["scheduler"])
    # the optimizer kept the rate of the checkpoint's schedule; a lengthened one (--epochs) has another at this step
    # (a finished run's is the cosine's end, 0): the next step takes the rate of the schedule that runs now
    sched = run.scheduler
    sched._last_lr = [base * f(sched.last_epoch) for base, f in zip(sched.base_lrs, sched.lr_lambdas)]
    for group, lr in zip(run.optimizer.param_groups, sched._last_lr):
        group["lr"] = lr
    run.history, run.start_epoch = ckpt["history"], ckpt["epoch"]
    position = (ckpt.get("extra") or {}).get("stopped_at")
    if position:  # stopped inside an epoch: replay its start, skip the batches done, continue from the stop
        if position["batches"] >= run.steps_per_epoch:
            raise ValueError(f"{source} is a damaged vit_edu checkpoint: it stopped after {position['batches']} "
                             f"batches of an epoch that has {run.steps_per_epoch}")
        run.start_batch, run.epoch_rng, run.stop_rng = int(position["batches"]), position["epoch_rng"], ckpt["rng"]
    set_rng_state(ckpt["rng"])


class StopOnSignals:
    """Ctrl-C (SIGINT) or ``kill`` (SIGTERM) while the epochs run: the step in progress finishes, the run saves
    where it stopped, as at a time budget (``--resume`` then finishes that epoch exactly), and only then stops as
    the signal would have stopped it (KeyboardInterrupt, the command line's own handler, or the default action).
    A second signal stops at once. Handlers live in the main thread only: elsewhere nothing changes."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: Optional[int] = None
        self._previous: Dict[int, Any] = {}

    def __enter__(self) -> "StopOnSignals":
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                handler = signal.getsignal(signum)
                if callable(handler) or handler == signal.SIG_DFL:  # one ignored (nohup) stays ignored
                    self._previous[signum] = handler
                    signal.signal(signum, self._receive)
        return self

    def __exit__(self, *exc: Any) -> None:
        previous, self._previous = self._previous, {}
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    def requested(self) -> bool:
        return self.received is not None

    def _receive(self, signum: int, frame: Any) -> None:
        again, self.received = self.received is not None, signum
        if again:
            self.stop(frame)

    def stop(self, frame: Any = None) -> None:
        """Hand the signal received to the handler it would have met (which raises, or ends the process)."""
        signum = self.received
        handler = self._previous.get(signum) if signum is not None else None
        self.__exit__()
        if signum is None:  # the signal went to another process of the run: this one stops as after Ctrl-C
            raise KeyboardInterrupt
        if callable(handler):
            handler(signum, frame)
        else:  # the default action: the process ends as the signal would have ended it
            os.kill(os.getpid(), signum)
        raise KeyboardInterrupt


def _train_epochs(run: Run, start: float, say: Callable[[str], None], main: bool, signals: StopOnSignals) -> None:
    """The epochs of this run, each: train (until the deadline or a signal), evaluate when due, log, save
    last.pt."""
    config = run.config
    deadline = start + config.time_budget_s if config.time_budget_s else None
    elapsed_before = run.history["elapsed_s"][-1] if run.history["elapsed_s"] else 0.0
    end_epoch = config.epochs if config.stop_after_epochs is None else min(
        config.epochs, run.start_epoch + config.stop_after_epochs)
    last_eval_s = 0.0
    for epoch in range(run.start_epoch, end_epoch):
        set_loader_epoch(run.train_loader, config.seed, epoch)
        skip, after_skip = 0, None
        if epoch == run.start_epoch and run.start_batch:  # the rest of an epoch a time budget stopped
            set_rng_state(run.epoch_rng)
            skip, after_skip = run.start_batch, run.stop_rng
        epoch_rng = rng_state()  # what the epoch starts from: its loader draws from it
        t0 = time.monotonic()
        stop_at = deadline - last_eval_s if deadline is not None else None  # leave time for the last evaluation
        tr = train_one_epoch(run.model, run.train_loader, run.optimizer, run.scheduler, run.criterion, run.device,
                             config.grad_clip, stop_at, config.progress, desc=f"epoch {epoch + 1}/{config.epochs}",
                             skip_batches=skip, rng_after_skip=after_skip,
                             stop_requested=signals.requested)
        train_s = time.monotonic() - t0
        budget_hit = tr["stopped"]
        stopped = budget_hit and skip + tr["batches"] < run.steps_per_epoch  # inside the epoch, not at its end
        # An uninterrupted run evaluates when due; an evaluation only this run makes (at a stop) must not move
        # the RNG states the checkpoint records (creating a DataLoader iterator draws from them).
        due = epoch + 1 == config.epochs or (epoch + 1) % config.eval_every == 0
        rng_before_eval = tr["rng"] if stopped else rng_state()
        if budget_hit or due or epoch + 1 == end_epoch:
            t1 = time.monotonic()
            te = evaluate(run.model, run.test_loader, run.device, progress=False)
            last_eval_s = time.monotonic() - t1
        else:
            te = {"loss": float("nan"), "acc": float("nan")}
        done = epoch + (1 if not stopped else (skip + tr["batches"]) / run.steps_per_epoch)
        row = {"epoch": done, "train_loss": tr["loss"], "train_acc": tr["acc"], "test_loss": te["loss"],
               "test_acc": te["acc"], "lr": run.scheduler.get_last_lr()[0], "images_per_s": tr["images"] / train_s,
               "elapsed_s": elapsed_before + time.monotonic() - start}
        for k, v in row.items():
            run.history[k].append(float(v))
        say(f"epoch {done:5.2f}/{config.epochs}  train loss {tr['loss']:.4f} acc {tr['acc']:.4f}  "
            f"test loss {te['loss']:.4f} acc {te['acc']:.4f}  lr {row['lr']:.2e}  "
            f"{row['images_per_s']:.0f} img/s  {row['elapsed_s']:.0f} s")
        if main and config.save_checkpoints:
            # a stopped epoch is recorded as not done, with where it stopped: --resume finishes it exactly
            position = {"batches": skip + tr["batches"], "epoch_rng": epoch_rng} if stopped else None
            save_checkpoint(Path(config.out_dir) / "last.pt", run.model, run.optimizer, run.scheduler,
                            epoch if stopped else epoch + 1, run.history, config,
                            extra={"stopped_early": budget_hit, "stopped_at": position, "classes": run.classes,
                                   "train_images": len(run.train_loader.dataset), "data": run.data,
                                   "world_size": run.world},
                            rng=rng_before_eval if stopped or not due else None)
        # a signal to any process stops them all (one without a signal of its own too), at the same step
        if tr["signalled"] or any_process(signals.requested(), run.device):
            name = signal.Signals(signals.received).name if signals.received else "a signal to another process"
            saved = f"saved to {Path(config.out_dir) / 'last.pt'}, " if main and config.save_checkpoints else ""
            say(f"{name} received: stopped after {done:.2f} epochs ({saved}--resume continues from there)")
            signals.stop()
        if budget_hit:
            say(f"time budget of {config.time_budget_s:.0f} s reached: stopped after {done:.2f} epochs "
                f"(--resume continues from there)")
            break


def _export(run: Run, path: PathLike, metadata: Optional[dict]) -> None:
    """The final weights as .safetensors, with the run's provenance in the header."""
    history, config = run.history, run.config
    meta = {"test_acc": history["test_acc"][-1] if history["test_acc"] else None,
            "classes": list(run.classes), "seed": config.seed, "train_config": config.to_dict(),
            "epochs_done": history["epoch"][-1] if history["epoch"] else 0, **(metadata or {})}
    export_safetensors(run.model, path, meta)


FIT_RESERVED = EXPORT_RESERVED + ("test_acc", "classes", "seed", "train_config", "epochs_done")  # what _export writes


def _check_not_another_run(config: TrainConfig, resume: Optional[PathLike], force: bool) -> None:
    """A new run never replaces another run's checkpoint unless asked to (``force``, the CLI's --force)."""
    last = Path(config.out_dir) / "last.pt"
    if force or not config.save_checkpoints or not last.is_file():
        return
    if resume is not None and Path(resume).resolve() == last.resolve():
        return  # continuing the run that wrote it
    what = "continue it with --resume " + str(last) + ", " if resume is None else ""
    raise ValueError(f"{last} holds the checkpoint of another run; {what}replace it with --force "
                     f"(fit(..., force=True)), or give another --out-dir")


@contextmanager
def _one_run_per_folder(config: TrainConfig, main: bool, device: torch.device) -> Iterator[None]:
    """The output folder locked for the whole run (rank 0 holds the lock; every process stops if it is taken).
    Folders the lock created are removed again if the run fails before it writes into them (a refused run leaves
    no empty runs/<name>)."""
    folder = Path(config.out_dir).absolute()
    made = [p for p in (folder, *folder.parents) if not p.exists()] if config.save_checkpoints and main else []
    with ExitStack() as held:
        error: Optional[ValueError] = None
        if config.save_checkpoints and main:
            try:
                held.enter_context(folder_lock(config.out_dir))
            except ValueError as err:
                error = err
        if config.save_checkpoints and any_process(error is not None, device):
            raise error or ValueError(f"another run is writing to output folder (--out-dir) {config.out_dir}")
        try:
            yield
        except BaseException:
            for path in made:  # the deepest first; rmdir removes only an empty folder
                try:
                    path.rmdir()
                except OSError:
                    break
            raise


def fit(config: Optional[TrainConfig] = None, resume: Optional[PathLike] = None,
        export: Optional[PathLike] = None, export_metadata: Optional[dict] = None,
        log: Callable[[str], None] = print, force: bool = False) -> Tuple[VisionTransformer, History]:
    """Train ``config.model`` on ``config.dataset``; returns (model in eval mode, history of lists).

    Saves ``<out_dir>/last.pt`` after every epoch (rank 0 only). ``resume`` continues a run from its
    checkpoint exactly where it stopped. ``export`` also writes the final weights as .safetensors.
    One run per ``out_dir`` at a time (a lock), and a checkpoint already there is replaced only by the run
    that resumes from it, or with ``force=True``. The same holds for a file already at ``export``, checked before
    any work: replaced only when it is the export of the run being resumed (a vit_edu export that ran in the
    resumed checkpoint's folder with the same settings), or with ``force=True``.
    """
    config = config or TrainConfig()
    rank, world, device = setup_distributed(config.device)
    main = rank == 0
    say = log if main else (lambda msg: None)
    start = time.monotonic()
    metadata_strings(export_metadata, FIT_RESERVED, "fit(export_metadata=...)")  # not after the whole run
    if config.dataset != "imagefolder":  # the number of classes (and shapes' size) is known without the data
        shapes = config.dataset == "shapes"
        check_overrides_fit(config, _classes_hint(config), config.effective("image_size") if shapes else None,
                            3 if shapes else None)
    with _torch_threads(config.threads):
        _check_outputs(config, export, main)
        _check_not_another_run(config, resume, force)
        if export is not None:
            check_export_replaceable(export, config, resume, force)
        with _one_run_per_folder(config, main, device):
            ckpt, changed = (checkpoint_to_resume(resume, config, device, allow_finished=export is not None)
                             if resume is not None else (None, {}))
            run, about = _build_run(config, rank, world, device, None if ckpt is None else (ckpt, resume), force)
            if ckpt is not None:
                _restore(run, ckpt, resume)
                note = "; ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changed.items()
                                 if k not in ("progress", "out_dir", "stop_after_epochs"))
                note = "; ".join(filter(None, [note, run.data_note and f"training data: {run.data_note}"]))
                where = (f"; saving to {Path(config.out_dir) / 'last.pt'}" if config.save_checkpoints else
                         "; saving no checkpoints")
                say(f"resumed from {resume} after epoch {run.start_epoch}" + (f" (changed: {note})" if note else "")
                    + where)
            run.model = wrap(run.model, world, device)
            say(about)
            if ckpt is not None and run.start_epoch >= config.epochs:
                say(f"{resume} is a finished run: nothing left to train, exporting its weights")
            with StopOnSignals() as signals:
                _train_epochs(run, start, say, main, signals)
                # a signal during the last evaluation or save: the run is whole, and it stops as asked
                if any_process(signals.requested(), device):
                    signals.stop()
            if main and export is not None:
                _export(run, export, export_metadata)
                say(f"exported weights to {export}")
            barrier(world)
    return unwrap(run.model).eval(), run.history
