"""Training a ViT: one module per job, read in this order.

* :mod:`.config`: :class:`TrainConfig`, every setting of a run and the one place its defaults live (the
  command line's ``train`` flags are built from it);
* :mod:`.data`: the generated shapes and the real datasets (:mod:`.imagefolder`: which files of an image folder
  a run reads, and the image loader);
* :mod:`.loaders`: a TrainConfig's datasets and the DataLoaders training uses (same batches after a resume);
* :mod:`.loop`: optimizer, warm-up + cosine schedule, loss, one epoch, :func:`evaluate`, :func:`fit`;
* :mod:`.checkpoint`: checkpoints that resume exactly, safetensors exports, :func:`load_model`, the shipped
  :func:`pretrained_course_model`;
* :mod:`.distributed`: the device, and what changes under ``torchrun`` (process group, sums over processes).

    from vit_edu.training import TrainConfig, fit
    model, history = fit(TrainConfig())     # the default run, the same as `python -m vit_edu train`

Dependencies run one way: this package uses the model modules (config, vit, models, convert, fileio);
none of them imports it.
"""

from . import checkpoint, config, data, distributed, loaders, loop
from .checkpoint import (
    CHECKPOINT_FORMAT,
    COURSE_CHECKPOINT,
    RESUME_MAY_CHANGE,
    check_classes_match,
    check_resumable,
    export_safetensors,
    load_checkpoint,
    load_model,
    new_history,
    pretrained_course_model,
    read_safetensors_metadata,
    resume_changes,
    save_checkpoint,
    stored_classes,
    stored_palette,
)
from .config import TrainConfig
from .loaders import build_datasets, build_eval_loader, build_train_loader, set_loader_epoch
from .distributed import all_reduce_sum, cleanup_distributed, is_main_process, resolve_device, setup_distributed, unwrap
from .loop import (
    build_criterion,
    build_model,
    build_optimizer,
    build_scheduler,
    evaluate,
    fit,
    seed_everything,
    TrainingDiverged,
    train_one_epoch,
    warmup_cosine,
)

__all__ = [
    "CHECKPOINT_FORMAT", "COURSE_CHECKPOINT", "RESUME_MAY_CHANGE", "TrainConfig", "all_reduce_sum", "build_criterion",
    "build_datasets", "build_eval_loader", "build_model", "build_optimizer", "build_scheduler", "build_train_loader",
    "check_classes_match", "check_resumable", "checkpoint", "cleanup_distributed", "config", "data", "distributed",
    "evaluate", "export_safetensors", "fit", "is_main_process", "load_checkpoint", "load_model", "loop", "new_history",
    "pretrained_course_model", "read_safetensors_metadata", "resolve_device", "resume_changes", "save_checkpoint",
    "seed_everything", "set_loader_epoch", "setup_distributed", "stored_classes", "stored_palette", "train_one_epoch", "TrainingDiverged", "unwrap",
    "warmup_cosine",
]
