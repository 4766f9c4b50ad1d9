"""Small training runs for experiments: one setting changed, everything else held, in seconds on one core.

An experiment asks "what does this one choice change?" (class token or mean pooling, patch size, position
embedding). Its runs must differ in that choice only: same data, same recipe, same seed, same budget.
:func:`quick_train` trains a small plain ViT on a four-class shapes task with a fixed recipe and a fixed
number of images, and returns the final test accuracy, the wall time and the model's size and compute.

    from vit_edu.training.quick import quick_train
    cls = quick_train({"pool": "cls"})
    gap = quick_train({"pool": "mean", "class_token": False})
    print(cls.acc, gap.acc)

The recipe is notebook 06's in-notebook run, with a smaller default budget (3 epochs x 5,000 new images).
``acc`` repeats exactly on one machine; another CPU rounds the last bits of every sum differently, so over a
few hundred steps accuracies drift by a point or so: compare settings by gaps larger than that (or by
several seeds), never by the last digit. ``seconds`` depends on the machine and on what else runs on it;
``flops`` (one forward pass on one image, counted by PyTorch) does not.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .config import TrainConfig
from .loop import fit

QUICK_CLASSES: List[str] = ["circle", "square", "triangle", "diamond"]
# The fixed part of every quick run (notebook 06's in-notebook recipe); a keyword of quick_train overrides one.
QUICK_RECIPE: Dict[str, Any] = dict(
    classes=QUICK_CLASSES, n_train=5_000, n_test=1_000, epochs=3, fresh_data=True, batch_size=128, lr=3e-3,
    warmup_epochs=0.5, weight_decay=0.05, pos_embed_lr_scale=1.0, time_budget_s=None, threads=1,
    save_checkpoints=False, progress=False,
)
QUICK_MODEL = "vit_nano_patch4_32"  # 2 layers, width 64, 4 heads
QUICK_OVERRIDES: Dict[str, Any] = {"patch_size": 8}  # a 4x4 grid: 16 tokens (+ the class token)


@dataclass(frozen=True)
class QuickResult:
    """What one quick run measured."""

    acc: float                   # final test accuracy on the run's test images (n_test, drawn with another seed)
    loss: float                  # final mean test cross-entropy
    seconds: float               # wall time of the training run (machine-dependent)
    parameters: int              # trainable parameters of the model
    flops: int                   # floating-point operations of one forward pass on one image (multiply-add = 2)
    tokens: int                  # sequence length the encoder sees (patches + class token, if any)
    history: Dict[str, List[float]]  # fit's per-epoch history
    config: TrainConfig          # the exact configuration (rerun it with fit(config))
    model: nn.Module             # the trained model, in eval mode


def forward_flops(model: nn.Module, image_size: int = 32, in_channels: int = 3) -> int:
    """Floating-point operations of one forward pass on one image, counted by ``FlopCounterMode``."""
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(torch.zeros(1, in_channels, image_size, image_size))
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def quick_config(model_overrides: Optional[Mapping[str, Any]] = None, *, model: str = QUICK_MODEL, seed: int = 0,
                 **recipe: Any) -> TrainConfig:
    """The TrainConfig of a quick run: QUICK_OVERRIDES updated by ``model_overrides`` (ViTConfig fields, e.g.
    ``{"pool": "mean", "class_token": False}``), QUICK_RECIPE updated by ``recipe`` (TrainConfig fields, e.g.
    ``epochs=4``). Unknown fields fail here, before any work (TrainConfig checks them)."""
    if model_overrides is not None and not isinstance(model_overrides, Mapping):
        raise TypeError(f"model_overrides must be a dict of ViTConfig fields, got {type(model_overrides).__name__}")
    overrides = {**QUICK_OVERRIDES, **dict(model_overrides or {})}
    return TrainConfig(model=model, model_overrides=overrides, seed=seed, **{**QUICK_RECIPE, **recipe})


def quick_train(model_overrides: Optional[Mapping[str, Any]] = None, *, model: str = QUICK_MODEL, seed: int = 0,
                **recipe: Any) -> QuickResult:
    """Train one quick run (see :func:`quick_config`) and return what it measured.

    ``seed`` seeds the initialization and the data order (the images are the same for every seed); the
    defaults take about 5-10 s on one core for the 16-token model.
    """
    config = quick_config(model_overrides, model=model, seed=seed, **recipe)
    start = time.perf_counter()
    trained, history = fit(config, log=lambda message: None)  # fit's lines hold timings; the result holds the rest
    seconds = time.perf_counter() - start
    image_size = trained.config.image_size[0]
    return QuickResult(acc=float(history["test_acc"][-1]), loss=float(history["test_loss"][-1]), seconds=seconds,
                       parameters=int(trained.num_parameters()),
                       flops=forward_flops(trained, image_size, trained.config.in_channels),
                       tokens=int(trained.config.num_tokens), history=history, config=config, model=trained)


def summarize(results: Sequence[QuickResult]) -> Dict[str, float]:
    """Mean and spread of several seeds' results: {"acc_mean", "acc_min", "acc_max", "seconds_mean"}."""
    if not results:
        raise ValueError("summarize needs at least one QuickResult")
    first = results[0].config.to_dict()
    for r in results[1:]:  # a mean over two settings would pass for one setting's
        other = r.config.to_dict()
        differ = sorted(k for k in first if k != "seed" and other[k] != first[k])
        if differ:
            raise ValueError(f"summarize averages the seeds of one setting, but these runs differ in "
                             + ", ".join(f"{k} ({first[k]!r} vs {other[k]!r})" for k in differ)
                             + "; expected runs that differ only in seed (summarize each setting on its own)")
    accs = [r.acc for r in results]
    return {"acc_mean": sum(accs) / len(accs), "acc_min": min(accs), "acc_max": max(accs),
            "seconds_mean": sum(r.seconds for r in results) / len(results)}


__all__ = ["QUICK_CLASSES", "QUICK_MODEL", "QUICK_OVERRIDES", "QUICK_RECIPE", "QuickResult", "forward_flops",
           "quick_config", "quick_train", "summarize"]
