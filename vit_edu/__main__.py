"""The command line: ``python -m vit_edu <command>`` (also installed as ``vit-edu``).

    python -m vit_edu train                  # the course ViT on the built-in shapes data (about 5 minutes on CPU)
    python -m vit_edu evaluate               # the shipped checkpoint on a fresh test set
    python -m vit_edu demo                   # evaluate + draw attention rollout and position-embedding figures
    torchrun --nproc_per_node=2 -m vit_edu train    # the same run on two processes (DistributedDataParallel)
    python -m vit_edu assignments ...        # nbgrader metadata + student copies of the notebooks (vit_edu.assignments)
    python -m vit_edu handout OUT_DIR        # what students get: student notebooks, the package, a README
    python -m vit_edu grade ...              # grade a student's notebook (vit_edu.grading)
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from typing import List, Optional

# Errors a user can cause (a missing dataset, a bad flag value): one line on stderr, no traceback.
USER_ERRORS = (FileNotFoundError, ValueError, TypeError, NotADirectoryError, IsADirectoryError, PermissionError)
DEFAULT_TRAIN_BUDGET_S = 300.0
DEFAULT_SHAPES_N_TRAIN = 20_000  # the default run: 12 epochs x 20,000 fresh shapes images fit its 300 s budget
DEFAULT_CPU_THREADS = 1  # busy 2 cores: 1 thread 2-7x faster than 2; quiet: 2 are ~1.4x faster
DEMO_SEED = 2024
# The only two defaults of `train` that are the command line's own; every other one is TrainConfig's.
CLI_DEFAULTS = {"time_budget_s": DEFAULT_TRAIN_BUDGET_S, "n_train": DEFAULT_SHAPES_N_TRAIN}  # n_train: shapes only
# What a TrainConfig field's default of None means, for the help text.
NONE_MEANS = {
    "out_dir": "runs/<dataset>-<model>", "image_size": "the dataset's, 32 for shapes and imagefolder",
    "data_seed": "the dataset's: {train_seed} for train, {test_seed} for test", "n_train": "the dataset's",
    "n_test": "the dataset's, {n_test} for shapes", "time_budget_s": "no limit",
    "stop_after_epochs": "run to --epochs", "progress": "only on a terminal", "classes": "all of the dataset's",
    "fresh_data": "on for generated data (shapes), off otherwise",
}


def train_default(name: str) -> str:
    """TrainConfig's default of field ``name`` as the help text states it: the one source of the defaults."""
    from dataclasses import MISSING

    from .train import TrainConfig

    f = TrainConfig.__dataclass_fields__[name]
    value = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
    if value is None:
        from .data import SHAPES_DEFAULT_SEEDS, SHAPES_DEFAULT_SIZES

        return NONE_MEANS[name].format(train_seed=SHAPES_DEFAULT_SEEDS["train"], test_seed=SHAPES_DEFAULT_SEEDS["test"],
                                       n_test=SHAPES_DEFAULT_SIZES["test"])
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _help(text: str, name: str) -> str:
    """``text (default: <TrainConfig's default>)``; for the two CLI defaults also TrainConfig's own."""
    if name in CLI_DEFAULTS:
        cli = CLI_DEFAULTS[name]
        return f"{text} (default: {cli:g}{' for shapes' if name == 'n_train' else ''}; TrainConfig's: {train_default(name)})"
    return f"{text} (default: {train_default(name)})"


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", nargs="?", default=None,
                   help=_help("dataset name: shapes is generated in memory; e.g. cifar10 needs --download once",
                              "dataset"))
    p.add_argument("--data-root", default=None, help=_help("where real datasets live", "data_root"))
    p.add_argument("--download", action="store_true", default=None,
                   help=_help("download a real dataset if missing", "download"))
    p.add_argument("--image-size", type=int, default=None, help=_help("resize images to this size", "image_size"))
    p.add_argument("--device", default=None, help=_help("cpu, cuda, cuda:1, mps or auto", "device"))
    p.add_argument("--workers", type=int, default=None, help=_help("DataLoader worker processes", "num_workers"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m vit_edu",
                                     description="vit_edu: train, evaluate and look inside a Vision Transformer.")
    sub = parser.add_subparsers(dest="command", metavar="command")

    t = sub.add_parser("train", help=f"train a ViT (default: {train_default('model')} on the "
                                     f"{train_default('dataset')} data, ~5 min on CPU)",
                       description="Train a ViT with AdamW, warm-up + cosine schedule and label smoothing. "
                                   "Works under torchrun for several processes. Flags left out take the "
                                   "TrainConfig defaults, or the checkpoint's values with --resume (which "
                                   "may only change " + ", ".join(_resume_flags()) + ").")
    _add_data_args(t)
    t.add_argument("--model", default=None, help=_help("preset name, see vit_edu.list_models()", "model"))
    t.add_argument("--epochs", type=int, default=None, help=_help("epochs", "epochs"))
    t.add_argument("--batch-size", type=int, default=None, help=_help("global batch size", "batch_size"))
    t.add_argument("--lr", type=float, default=None, help=_help("peak learning rate", "lr"))
    t.add_argument("--weight-decay", type=float, default=None, help=_help("AdamW weight decay", "weight_decay"))
    t.add_argument("--optimizer", choices=["adamw", "sgd"], default=None, help=_help("optimizer", "optimizer"))
    t.add_argument("--warmup-epochs", type=float, default=None, help=_help("linear warm-up in epochs", "warmup_epochs"))
    t.add_argument("--label-smoothing", type=float, default=None, help=_help("label smoothing", "label_smoothing"))
    t.add_argument("--seed", type=int, default=None, help=_help("seed of initialisation and data order", "seed"))
    t.add_argument("--data-seed", type=int, default=None, help=_help("seed of the generated shapes data", "data_seed"))
    t.add_argument("--n-train", type=int, default=None, help=_help("number of training images", "n_train"))
    t.add_argument("--n-test", type=int, default=None, help=_help("number of test images", "n_test"))
    t.add_argument("--augment", action="store_true", default=None,
                   help=_help("random flips/crops on the training set", "augment"))
    t.add_argument("--fresh-data", action=argparse.BooleanOptionalAction, default=None,
                   help=_help("draw new shapes images every epoch (shapes only)", "fresh_data"))
    t.add_argument("--classes", type=lambda text: [c.strip() for c in text.split(",") if c.strip()], default=None,
                   help=_help("comma-separated shapes to draw, e.g. circle,square,triangle (shapes only)", "classes"))
    t.add_argument("--pos-lr-scale", type=float, default=None,
                   help=_help("learning rate of a learned position embedding = lr x this", "pos_embed_lr_scale"))
    t.add_argument("--dropout", type=float, default=None,
                   help=f"dropout of the model (default: the preset's, {_preset_dropout():g})")
    t.add_argument("--out-dir", default=None, help=_help("where last.pt goes", "out_dir"))
    t.add_argument("--time-budget", type=float, default=None,
                   help=_help("stop after this many seconds, then evaluate and save; 0 = no limit", "time_budget_s"))
    t.add_argument("--eval-every", type=int, default=None, help=_help("evaluate every N epochs", "eval_every"))
    t.add_argument("--resume", default=None, help="continue from this checkpoint (e.g. runs/.../last.pt)")
    t.add_argument("--stop-after-epochs", type=int, default=None,
                   help=_help("end this run after N epochs while the schedule still spans --epochs (resume it "
                              "later)", "stop_after_epochs"))
    t.add_argument("--export", default=None, help="also write the final weights to this .safetensors file")
    t.add_argument("--threads", type=int, default=None,
                   help=f"CPU threads for PyTorch (default: {DEFAULT_CPU_THREADS}: faster than 2 on a busy 2-core machine)")
    t.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help=_help("progress bars", "progress"))

    e = sub.add_parser("evaluate", help="loss and accuracy of a checkpoint (default: the shipped one)",
                       description="Evaluate a .pt checkpoint or .safetensors export on a dataset split.")
    _add_data_args(e)
    e.add_argument("--checkpoint", default=None, help="a .pt or .safetensors file (default: the shipped course model)")
    e.add_argument("--split", default="test", choices=["train", "test"], help="dataset split (default: test)")
    e.add_argument("--n", type=int, default=None, help="number of images (shapes; default: the dataset's)")
    e.add_argument("--seed", type=int, default=None, help="seed of the generated shapes data (a fresh one is fine)")
    e.add_argument("--batch-size", type=int, default=256, help="batch size (default: 256)")

    d = sub.add_parser("demo", help="a one-minute tour: evaluate the shipped model and draw what it attends to",
                       description="Loads the shipped checkpoint, evaluates it on a fresh shapes test set and "
                                   "writes attention-rollout and position-embedding figures into figures/.")
    d.add_argument("--n", type=int, default=1000, help="test images to evaluate (default: 1000)")
    d.add_argument("--seed", type=int, default=DEMO_SEED, help=f"seed of the fresh test set (default: {DEMO_SEED})")
    d.add_argument("--images", type=int, default=6, help="images in the rollout figure (default: 6)")
    d.add_argument("--figures-dir", default=None, help="where to write the figures (default: figures/)")

    sub.add_parser("assignments", add_help=False,
                   help="write the nbgrader metadata and the student copies of the notebooks (see: assignments --help)")
    sub.add_parser("handout", add_help=False,
                   help="write the student handout: notebooks without solutions, the package, a README "
                        "(see: handout --help)")
    sub.add_parser("grade", add_help=False, help="grade a student's notebook (see: grade --help)")
    return parser


# ================================================================================================ train
_TRAIN_FLAGS = {  # argparse name -> TrainConfig field
    "dataset": "dataset", "model": "model", "epochs": "epochs", "batch_size": "batch_size", "lr": "lr",
    "weight_decay": "weight_decay", "optimizer": "optimizer", "warmup_epochs": "warmup_epochs",
    "label_smoothing": "label_smoothing",
    "seed": "seed", "data_seed": "data_seed", "n_train": "n_train", "n_test": "n_test", "augment": "augment",
    "out_dir": "out_dir", "time_budget": "time_budget_s", "eval_every": "eval_every", "device": "device",
    "workers": "num_workers", "image_size": "image_size", "data_root": "data_root", "download": "download",
    "stop_after_epochs": "stop_after_epochs", "progress": "progress", "fresh_data": "fresh_data", "classes": "classes",
    "pos_lr_scale": "pos_embed_lr_scale",
}


def _flag(field: str) -> str:
    """The command-line flag of a TrainConfig field (model_overrides: --dropout)."""
    if field == "model_overrides":
        return "--dropout"
    flags = [flag for flag, f in _TRAIN_FLAGS.items() if f == field]
    return "--" + flags[0].replace("_", "-") if flags else field


def _resume_flags() -> List[str]:
    from .train import RESUME_MAY_CHANGE

    return sorted(_flag(f) for f in RESUME_MAY_CHANGE if f in _TRAIN_FLAGS.values())


def _preset_dropout() -> float:
    from .train import _model_field

    return float(_model_field(train_default("model"), {}, "dropout"))


def train_config_from_args(args: argparse.Namespace):
    """Flags given on the command line override the defaults (or, with --resume, the checkpoint's config).

    With --resume every flag given is either applied (those in train.RESUME_MAY_CHANGE, e.g. --epochs to
    lengthen the schedule, --out-dir, --time-budget) or refused with a ValueError that names it: a resumed
    run keeps the settings that decide its steps (--lr, --dropout, --batch-size, ...), so none is dropped.
    """
    from .train import TrainConfig, check_resumable, load_checkpoint, resume_changes

    given = {field: getattr(args, flag) for flag, field in _TRAIN_FLAGS.items() if getattr(args, flag) is not None}
    if "time_budget_s" in given:
        if given["time_budget_s"] < 0:
            raise ValueError(f"--time-budget expects seconds >= 0 (0 = no limit), got {given['time_budget_s']:g}")
        if given["time_budget_s"] == 0:
            given["time_budget_s"] = None
    if args.resume:
        ckpt = load_checkpoint(args.resume)
        check_resumable(ckpt, args.resume)
        stored = ckpt["config"]["train"]
        if args.dropout is not None:
            given["model_overrides"] = {**stored.get("model_overrides", {}), "dropout": args.dropout}
        # continue to the end of the schedule unless told otherwise
        config = TrainConfig.from_dict({**stored, "stop_after_epochs": None, **given})
        _, refused = resume_changes(stored, config)
        if refused:
            shown = []
            for field, (old, new) in refused.items():
                if field == "model_overrides":
                    old, new = old.get("dropout", _preset_dropout()), new.get("dropout")
                shown.append(f"{_flag(field)} {new} (the checkpoint has {old})")
            raise ValueError(f"--resume continues {args.resume} with its own settings, so these flags are refused: "
                             f"{', '.join(shown)}; leave them out, or start a new run without --resume "
                             f"(with --resume only {', '.join(_resume_flags())} may change)")
        if ckpt["epoch"] >= config.epochs:
            raise ValueError(f"{args.resume} has finished all {config.epochs} epochs, so there is nothing to resume; "
                             f"pass --epochs N with N > {ckpt['epoch']} to lengthen its schedule and go on")
        return config
    given.setdefault("time_budget_s", CLI_DEFAULTS["time_budget_s"])
    if given.get("dataset", "shapes") == "shapes":
        given.setdefault("n_train", CLI_DEFAULTS["n_train"])  # new images every epoch: 20,000 per epoch
    if args.dropout is not None:
        given["model_overrides"] = {"dropout": args.dropout}
    return TrainConfig(**given)


def cmd_train(args: argparse.Namespace, argv: List[str]) -> int:
    from .train import cleanup_distributed, fit, is_main_process

    threads = DEFAULT_CPU_THREADS if args.threads is None else args.threads
    if threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    if args.export and not args.export.endswith(".safetensors"):
        raise ValueError(f"--export expects a path ending in .safetensors, got {args.export!r}")
    config = train_config_from_args(args)
    import torch

    torch.set_num_threads(threads)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    launcher = f"torchrun --nproc_per_node={world} -m vit_edu " if world > 1 else "python -m vit_edu "
    command = launcher + " ".join(shlex.quote(a) for a in argv)
    last = os.path.join(config.out_dir, "last.pt")
    try:
        model, history = fit(config, resume=args.resume, export=args.export,
                             export_metadata={"command": command})
        if is_main_process():
            acc = history["test_acc"][-1] if history["test_acc"] else float("nan")
            print(f"final test accuracy {acc:.4f} ({acc * 100:.2f} %) after {history['epoch'][-1]:.2f} epochs, "
                  f"{history['elapsed_s'][-1]:.0f} s")
            if config.save_checkpoints:
                print(f"checkpoint saved to {last}")
            if args.export:
                print(f"weights exported to {args.export}")
    except KeyboardInterrupt:
        if is_main_process() and config.save_checkpoints and os.path.isfile(last):
            print(f"vit_edu train: the last finished epoch is saved in {last}; continue with: "
                  f"python -m vit_edu train --resume {shlex.quote(last)}", file=sys.stderr)
        raise
    finally:
        cleanup_distributed()
    return 0


# ============================================================================================= evaluate
def _load_for_eval(checkpoint: Optional[str], device):
    """(model, source, the class names it was trained on or None)."""
    from .train import COURSE_CHECKPOINT, load_model, pretrained_course_model, stored_classes

    if checkpoint is None:
        model, info = pretrained_course_model(device=device)
        classes = info.get("classes")
        return model, str(COURSE_CHECKPOINT), list(classes) if isinstance(classes, list) else None
    model = load_model(checkpoint, device=device)
    return model, checkpoint, stored_classes(checkpoint)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from torch.utils.data import DataLoader

    from . import data
    from .train import check_classes_match, evaluate, resolve_device

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.workers is not None and args.workers < 0:
        raise ValueError(f"--workers must be >= 0, got {args.workers}")
    device = resolve_device(args.device or train_default("device"))
    model, source, classes = _load_for_eval(args.checkpoint, device)
    size = tuple(model.config.image_size)
    if args.image_size is not None and not model.config.dynamic_img_size and (args.image_size,) * 2 != size:
        raise ValueError(f"--image-size {args.image_size}: {source} was built for {size[0]}x{size[1]} images "
                         f"(and has no dynamic_img_size); leave --image-size out")
    name = args.dataset or train_default("dataset")
    kw = dict(split=args.split, root=args.data_root or train_default("data_root"), download=bool(args.download),
              image_size=args.image_size or size[0], n=args.n)
    if args.seed is not None:
        kw["seed"] = args.seed
    ds = data.get_dataset(name, **kw)
    check_classes_match(model, classes, data.dataset_info(ds)["classes"], source, f"{name} {args.split}")
    loader = DataLoader(ds, batch_size=args.batch_size, shuffle=False, num_workers=args.workers or 0)
    t0 = time.monotonic()
    m = evaluate(model, loader, device)
    print(f"{source} on {name} {args.split} ({len(ds)} images"
          f"{'' if args.seed is None else f', seed {args.seed}'}): loss {m['loss']:.4f}  accuracy {m['acc']:.4f} "
          f"({m['acc'] * 100:.2f} %)  [{time.monotonic() - t0:.1f} s]")
    return 0


# ================================================================================================= demo
def cmd_demo(args: argparse.Namespace) -> int:
    from .fileio import check_writable_dir

    if args.n < 1:
        raise ValueError(f"--n must be >= 1 (test images to evaluate), got {args.n}")
    if args.images < 1:
        raise ValueError(f"--images must be >= 1 (images in the rollout figure), got {args.images}")
    if args.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}")
    import matplotlib

    matplotlib.use("Agg")  # headless: only files, no window
    import matplotlib.pyplot as plt
    import torch
    from torch.utils.data import DataLoader

    from . import analysis, data, viz

    figures = args.figures_dir or str(viz.figures_dir(create=False))  # checked before any work is done
    check_writable_dir(figures, "--figures-dir" if args.figures_dir else "figures folder")
    from .train import COURSE_CHECKPOINT, evaluate, pretrained_course_model

    if args.figures_dir:
        os.environ["VIT_EDU_FIGURES"] = args.figures_dir
    t0 = time.monotonic()
    torch.manual_seed(0)
    model, info = pretrained_course_model()
    print(f"loaded {COURSE_CHECKPOINT.name}: {model.num_parameters() / 1e6:.2f}M parameters, classes "
          f"{', '.join(info['classes'])}; test accuracy at export {info.get('test_acc', float('nan')):.4f}")
    ds = data.ShapesDataset(n=args.n, image_size=model.config.image_size[0], seed=args.seed, return_mask=True)
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
    written = []
    titles = [f"{ds.classes[int(p)]} ({'ok' if p == y else ds.classes[int(y)]})"
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


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "assignments":
        from .assignments import main as assignments_main

        return assignments_main(argv[1:])
    if argv and argv[0] == "handout":
        from .assignments import handout_main

        return handout_main(argv[1:])
    if argv and argv[0] == "grade":
        from .grading import main as grade_main

        return grade_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        if args.command == "train":
            return cmd_train(args, argv)
        if args.command == "evaluate":
            return cmd_evaluate(args)
        if args.command == "demo":
            return cmd_demo(args)
    except USER_ERRORS as err:
        if os.environ.get("VIT_EDU_DEBUG"):
            raise
        message = one_line(err)
        names = [(flag.replace("_", "-"), field) for flag, field in _TRAIN_FLAGS.items()]
        for flag, field in names + [("dropout", "model_overrides['dropout']")]:  # the flag the user typed, too
            message = message.replace(f"TrainConfig.{field} ", f"--{flag} (TrainConfig.{field}) ")
        print(f"vit_edu {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vit_edu {args.command}: interrupted", file=sys.stderr)
        return 130
    parser.error(f"unknown command {args.command!r}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
