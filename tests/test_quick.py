"""vit_edu.training.quick: one setting changed, everything else held (the helper of notebook 06's experiments)."""

from __future__ import annotations

import pytest
import torch

from vit_edu.training import TrainConfig
from vit_edu.training.quick import (QUICK_CLASSES, QUICK_OVERRIDES, QUICK_RECIPE, QuickResult, forward_flops,
                                    quick_config, quick_train, summarize)

TINY = dict(n_train=256, n_test=64, epochs=1, batch_size=64)  # a second on one core: the mechanics, not accuracy


def test_quick_config_changes_only_what_is_asked() -> None:
    base = quick_config()
    assert base.model_overrides == QUICK_OVERRIDES and base.classes == QUICK_CLASSES
    assert base.n_train == QUICK_RECIPE["n_train"] and base.time_budget_s is None and not base.save_checkpoints
    changed = quick_config({"pool": "mean", "class_token": False}, seed=3, epochs=2)
    assert changed.model_overrides == {**QUICK_OVERRIDES, "pool": "mean", "class_token": False}
    assert (changed.seed, changed.epochs) == (3, 2)
    different = {k for k, v in changed.to_dict().items() if v != base.to_dict()[k]}
    assert different == {"model_overrides", "seed", "epochs"}


def test_quick_config_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="unknown ViTConfig fields"):
        quick_config({"pooling": "mean"})
    with pytest.raises(TypeError, match="model_overrides"):
        quick_config("mean")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        quick_config(epochs_per_run=2)  # not a TrainConfig field


def test_quick_train_repeats_and_reports() -> None:
    a = quick_train(**TINY)
    b = quick_train(**TINY)
    assert isinstance(a, QuickResult) and isinstance(a.config, TrainConfig)
    assert a.acc == b.acc and a.history["test_loss"] == b.history["test_loss"]  # same seed, same machine: same run
    assert 0.0 <= a.acc <= 1.0 and a.seconds > 0 and a.tokens == 17  # 16 patches of 8x8 + the class token
    assert a.parameters == sum(p.numel() for p in a.model.parameters() if p.requires_grad)
    assert not a.model.training
    assert len(a.history["test_acc"]) == TINY["epochs"]


def test_forward_flops_grow_with_the_tokens() -> None:
    small = quick_train({"patch_size": 8}, **TINY)
    fine = quick_train({"patch_size": 4}, **TINY)
    assert fine.tokens == 65
    assert 3.0 < fine.flops / small.flops < 5.0  # 4x the tokens: linear layers 4x, attention ~15x (a small share)
    model = small.model.train()
    assert forward_flops(model) == small.flops and model.training  # counting leaves the mode as it was


def test_summarize() -> None:
    runs = [quick_train(seed=s, **TINY) for s in (0, 1)]
    s = summarize(runs)
    assert s["acc_min"] <= s["acc_mean"] <= s["acc_max"] and s["seconds_mean"] > 0
    with pytest.raises(ValueError):
        summarize([])
    other = quick_train({"pool": "mean", "class_token": False}, seed=0, **TINY)
    with pytest.raises(ValueError, match=r"^summarize averages the seeds of one setting, but these runs differ in "
                                         r"model_overrides \(\{'patch_size': 8\} vs \{'patch_size': 8, 'pool': 'mean', "
                                         r"'class_token': False\}\); expected runs that differ only in seed"):
        summarize(runs + [other])
