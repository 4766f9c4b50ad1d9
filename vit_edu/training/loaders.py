"""From a TrainConfig to datasets and DataLoaders: the one way training (and the tests) build them.

The training order depends only on (seed, epoch), so a resumed run sees the same batches; under torchrun every
process gets its share. (Apart from :mod:`.data` because the config reads the data's defaults: data -> config
-> data would be a cycle.)
"""

from __future__ import annotations

import hashlib
import json
import os
import unicodedata
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Subset

from .config import TrainConfig
from .data import EPOCH_SEED_STRIDE, SHAPES_DEFAULT_SEEDS, dataset_info, get_dataset
from .imagefolder import check_apart, split_classes


def shapes_seeds(config: TrainConfig) -> Tuple[int, int]:
    """(train seed, test seed) of a run's generated data; the test seed is never a training seed (same seed = same
    images): with fresh data epoch e draws seed ``train + EPOCH_SEED_STRIDE * e``, see :func:`trained_on_seed`."""
    if config.data_seed is None:
        return SHAPES_DEFAULT_SEEDS["train"], SHAPES_DEFAULT_SEEDS["test"]
    return config.data_seed, config.data_seed + 1


def trained_on_seed(config: TrainConfig, seed: int) -> Optional[int]:
    """The epoch (0-based) whose training images ``config``'s run drew from ``seed``, or None: a test set drawn
    from such a seed holds the very images the model was trained on. Every epoch of the schedule counts (a
    resume may still draw it)."""
    if config.dataset != "shapes":
        return None
    offset = seed - shapes_seeds(config)[0]
    if offset < 0 or offset % EPOCH_SEED_STRIDE:
        return None
    epoch = offset // EPOCH_SEED_STRIDE
    return epoch if epoch < (config.epochs if config.draws_fresh_data else 1) else None


def build_datasets(config: TrainConfig) -> Tuple[Dataset, Dataset, dict]:
    """(train set, test set, dataset_info of the train set) for ``config``; refuses data a run cannot learn from."""
    common = dict(root=config.data_root, image_size=config.image_size, download=config.download)
    # generated data: the test split never shares a training seed; a fixed dataset takes no seed
    train_seed, test_seed = shapes_seeds(config) if config.dataset == "shapes" else (None, None)
    if config.dataset == "imagefolder":  # both splits' folders and class names, before any image is decoded
        root = Path(config.data_root)
        _check_same_classes(config.dataset, split_classes("train", root), split_classes("test", root))
    if config.classes is not None:
        common["classes"] = config.classes
    if config.clutter:
        common["clutter"] = config.clutter
    if config.palette != "colour":
        common["palette"] = config.palette
    train_ds = get_dataset(config.dataset, split="train", augment=config.augment, n=config.n_train,
                           seed=train_seed, fresh_each_epoch=config.draws_fresh_data, **common)
    test_ds = get_dataset(config.dataset, split="test", augment=False, n=config.n_test, seed=test_seed, **common)
    info = dataset_info(train_ds)
    if len(info["classes"]) < 2:  # one class: every prediction is right, "100 %" means nothing
        raise ValueError(f"{config.dataset} train has {len(info['classes'])} class {info['classes']}; "
                         f"expected at least two classes to learn to tell apart")
    _check_same_classes(config.dataset, info["classes"], dataset_info(test_ds)["classes"])
    if config.dataset == "imagefolder":
        check_apart(train_ds, test_ds)
    return train_ds, test_ds, info


def _check_same_classes(dataset: str, train_classes, test_classes) -> None:
    """Label k must mean the same class in both splits: the same class names, in the same order."""
    if list(test_classes) != list(train_classes):
        nfc = [sorted(unicodedata.normalize("NFC", c) for c in names) for names in (test_classes, train_classes)]
        how = ("; they differ only in how accented letters are encoded (Unicode NFC and NFD, e.g. a copy made on "
               "macOS): rename the folders of one split") if nfc[0] == nfc[1] else ""
        raise ValueError(f"{dataset}: the test split's classes {list(test_classes)} differ from the train "
                         f"split's {list(train_classes)}; expected the same class folders in both{how}")


def build_train_loader(dataset: Dataset, config: TrainConfig, rank: int = 0, world_size: int = 1) -> DataLoader:
    """Shuffled batches whose order depends only on (seed, epoch): call :func:`set_loader_epoch` each epoch.

    That is what makes a resumed run see the same batches as an uninterrupted one. Under torchrun each of
    the ``world_size`` processes gets ``batch_size / world_size`` images of every batch (DistributedSampler).
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
    """In order; under torchrun every process evaluates every world_size-th example, so together they see
    each example exactly once (no padding that would count some twice)."""
    if world_size > 1:
        dataset = Subset(dataset, list(range(rank, len(dataset), world_size)))
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)


# ------------------------------------------------------------------------------------------ what a run trained on
def data_fingerprint(dataset: Dataset, config: TrainConfig) -> Dict[str, Any]:
    """What the training images are, for a checkpoint to hold and a resume to compare (:func:`fingerprint_changes`).

    An image folder: every file used (its path under the train folder, its class, the hash of its bytes already
    taken when the folder was read), so replacing pictures under the same names is seen, and moving the same files to
    another ``--data-root`` is not. Generated or fixed data (shapes, CIFAR-10, ...): a digest of the settings that
    decide the images."""
    base, indices = dataset, None
    while isinstance(base, Subset):
        indices = [base.indices[i] for i in indices] if indices is not None else list(base.indices)
        base = base.dataset
    digests = getattr(base, "digests", None)
    if digests is not None and hasattr(base, "samples"):
        picked = indices if indices is not None else range(len(base.samples))
        files = {}
        for i in picked:
            path, target = base.samples[i]
            files[os.path.relpath(path, base.root).replace(os.sep, "/")] = f"{base.classes[target]}:{digests[i]}"
        whole = hashlib.sha256(json.dumps(sorted(files.items())).encode()).hexdigest()
        return {"kind": "files", "digest": whole, "files": files}
    settings = {k: config.effective(k) for k in ("dataset", "n_train", "data_seed", "classes", "clutter", "palette",
                                                 "image_size", "augment", "fresh_data")}  # a None as what it means
    settings["examples"] = len(dataset)
    return {"kind": "settings", "digest": hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()}


def fingerprint_changes(stored: Any, now: Dict[str, Any]) -> str:
    """'' when ``now`` describes the data ``stored`` (a checkpoint's :func:`data_fingerprint`; None for a checkpoint
    from before fingerprints: nothing to compare), else how they differ, in a few words."""
    if not isinstance(stored, dict) or stored.get("digest") == now["digest"]:
        return ""
    old, new = stored.get("files"), now.get("files")
    if stored.get("kind") != now["kind"] or not isinstance(old, dict) or new is None:
        return "the training data's settings differ"
    changed = sorted(k for k in old.keys() & new.keys() if old[k] != new[k])
    gone, added = sorted(old.keys() - new.keys()), sorted(new.keys() - old.keys())
    parts = [f"{len(v)} {what} (e.g. {v[0]})" for v, what in ((changed, "changed"), (gone, "removed"),
                                                            (added, "added")) if v]
    return f"{len(old)} training files then, {len(new)} now: " + ", ".join(parts)


def check_overrides_fit(config: TrainConfig, num_classes: Optional[int], image_size: Any = None,
                        in_channels: Optional[int] = None) -> None:
    """model_overrides may not contradict the data (the model would be refused at its first batch, or, for more
    outputs than classes, only when evaluated after the whole run): a ValueError before any step. None: not known."""
    data = {"num_classes": num_classes, "in_channels": in_channels,
            "image_size": tuple(image_size) if isinstance(image_size, (tuple, list)) else
            None if image_size is None else (image_size, image_size)}
    for name, value in data.items():
        if name not in config.model_overrides or value is None:
            continue
        given = config.model_overrides[name]
        same = (tuple(given) if isinstance(given, (tuple, list)) else (given, given)) == value \
            if name == "image_size" else given == value
        if not same:
            shown = f"{value[0]}x{value[1]}" if name == "image_size" else value
            raise ValueError(f"TrainConfig.model_overrides[{name!r}] is {given!r}, but {config.dataset} has {name} "
                             f"{shown}: the data decide it; expected no {name!r} in model_overrides (or {shown})")
