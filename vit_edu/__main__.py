"""The command line: ``python -m vit_edu <command>`` (also installed as ``vit-edu``).

    python -m vit_edu train                  # the course ViT on the built-in shapes data (about 5 minutes on CPU)
    python -m vit_edu evaluate               # the shipped checkpoint on a fresh test set
    python -m vit_edu demo                   # evaluate + draw attention rollout and position-embedding figures
    torchrun --nproc_per_node=2 -m vit_edu train    # the same run on two processes (DistributedDataParallel)
    python -m vit_edu assignments ...        # student copies of the notebooks (vit_edu.assignments)
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
USER_ERRORS = (FileNotFoundError, ValueError, TypeError, NotADirectoryError, PermissionError)
DEFAULT_TRAIN_BUDGET_S = 300.0
DEFAULT_SHAPES_N_TRAIN = 24_000  # the default run: 3 epochs x 24,000 shapes images fit its 300 s budget
DEFAULT_CPU_THREADS = 1  # busy 2 cores: 1 thread 2-7x faster than 2; quiet: 2 are ~1.4x faster
DEMO_SEED = 2024


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", nargs="?", default=None,
                   help="dataset name (default: shapes, generated in memory; e.g. cifar10 needs --download once)")
    p.add_argument("--data-root", default=None, help="where real datasets live (default: data)")
    p.add_argument("--download", action="store_true", default=None, help="download a real dataset if missing")
    p.add_argument("--image-size", type=int, default=None, help="resize images to this size (default: the dataset's)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 or auto (default: auto)")
    p.add_argument("--workers", type=int, default=None, help="DataLoader worker processes (default: 0)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m vit_edu",
                                     description="vit_edu: train, evaluate and look inside a Vision Transformer.")
    sub = parser.add_subparsers(dest="command", metavar="command")

    t = sub.add_parser("train", help="train a ViT (default: the course model on the shapes data, ~5 min on CPU)",
                       description="Train a ViT with AdamW, warm-up + cosine schedule and label smoothing. "
                                   "Works under torchrun for several processes. Flags left out take the "
                                   "TrainConfig defaults, or the checkpoint's values with --resume.")
    _add_data_args(t)
    t.add_argument("--model", default=None, help="preset name (default: vit_hybrid_s4_32; see vit_edu.list_models())")
    t.add_argument("--epochs", type=int, default=None, help="epochs (default: 5)")
    t.add_argument("--batch-size", type=int, default=None, help="global batch size (default: 64)")
    t.add_argument("--lr", type=float, default=None, help="peak learning rate (default: 1e-3)")
    t.add_argument("--weight-decay", type=float, default=None, help="AdamW weight decay (default: 0.05)")
    t.add_argument("--optimizer", choices=["adamw", "sgd"], default=None, help="optimizer (default: adamw)")
    t.add_argument("--warmup-epochs", type=float, default=None, help="linear warm-up in epochs (default: 0.25)")
    t.add_argument("--label-smoothing", type=float, default=None, help="label smoothing (default: 0)")
    t.add_argument("--seed", type=int, default=None, help="seed of initialisation and data order (default: 0)")
    t.add_argument("--data-seed", type=int, default=None, help="seed of the generated shapes data")
    t.add_argument("--n-train", type=int, default=None, help=f"number of training images (default: {DEFAULT_SHAPES_N_TRAIN} for shapes)")
    t.add_argument("--n-test", type=int, default=None, help="number of test images")
    t.add_argument("--augment", action="store_true", default=None, help="random flips/crops on the training set")
    t.add_argument("--dropout", type=float, default=None, help="dropout of the model (default: the preset's, 0)")
    t.add_argument("--out-dir", default=None, help="where last.pt goes (default: runs/<dataset>-<model>)")
    t.add_argument("--time-budget", type=float, default=None,
                   help=f"stop after this many seconds, then evaluate and save (default: {DEFAULT_TRAIN_BUDGET_S:.0f}; "
                        "0 = no limit)")
    t.add_argument("--eval-every", type=int, default=None, help="evaluate every N epochs (default: 1)")
    t.add_argument("--resume", default=None, help="continue from this checkpoint (e.g. runs/.../last.pt)")
    t.add_argument("--stop-after-epochs", type=int, default=None,
                   help="end this run after N epochs while the schedule still spans --epochs (resume it later)")
    t.add_argument("--export", default=None, help="also write the final weights to this .safetensors file")
    t.add_argument("--threads", type=int, default=None,
                   help=f"CPU threads for PyTorch (default: {DEFAULT_CPU_THREADS}: faster than 2 on a busy 2-core machine)")
    t.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bars (default: only on a terminal)")

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

    sub.add_parser("assignments", add_help=False, help="make student copies of the notebooks (see: assignments --help)")
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
    "stop_after_epochs": "stop_after_epochs", "progress": "progress",
}


def train_config_from_args(args: argparse.Namespace):
    """Flags given on the command line override the defaults (or, with --resume, the checkpoint's config)."""
    from .train import TrainConfig, load_checkpoint

    given = {field: getattr(args, flag) for flag, field in _TRAIN_FLAGS.items() if getattr(args, flag) is not None}
    if "time_budget_s" in given and given["time_budget_s"] <= 0:
        given["time_budget_s"] = None
    if args.resume:
        stored = load_checkpoint(args.resume)["config"]["train"]
        if stored is None:
            raise ValueError(f"{args.resume} holds no training config, so it cannot be resumed")
        # continue to the end of the schedule unless told otherwise
        return TrainConfig.from_dict({**stored, "stop_after_epochs": None, **given})
    given.setdefault("time_budget_s", DEFAULT_TRAIN_BUDGET_S)
    if given.get("dataset", "shapes") == "shapes":
        given.setdefault("n_train", DEFAULT_SHAPES_N_TRAIN)  # fresh images: 20,000 repeated over-fit after ~10 epochs
    if args.dropout is not None:
        given["model_overrides"] = {"dropout": args.dropout}
    return TrainConfig(**given)


def cmd_train(args: argparse.Namespace, argv: List[str]) -> int:
    from .train import cleanup_distributed, fit, is_main_process

    config = train_config_from_args(args)
    threads = DEFAULT_CPU_THREADS if args.threads is None else args.threads
    if threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    import torch

    torch.set_num_threads(threads)
    if args.export and not args.export.endswith(".safetensors"):
        raise ValueError(f"--export expects a path ending in .safetensors, got {args.export!r}")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    launcher = f"torchrun --nproc_per_node={world} -m vit_edu " if world > 1 else "python -m vit_edu "
    command = launcher + " ".join(shlex.quote(a) for a in argv)
    try:
        model, history = fit(config, resume=args.resume, export=args.export,
                             export_metadata={"command": command})
        if is_main_process():
            acc = history["test_acc"][-1] if history["test_acc"] else float("nan")
            print(f"final test accuracy {acc:.4f} ({acc * 100:.2f} %) after {history['epoch'][-1]:.2f} epochs, "
                  f"{history['elapsed_s'][-1]:.0f} s")
            if config.save_checkpoints:
                print(f"checkpoint saved to {os.path.join(config.out_dir, 'last.pt')}")
            if args.export:
                print(f"weights exported to {args.export}")
    finally:
        cleanup_distributed()
    return 0


# ============================================================================================= evaluate
def _load_for_eval(checkpoint: Optional[str], device):
    from .train import COURSE_CHECKPOINT, load_model, pretrained_course_model

    if checkpoint is None:
        model, info = pretrained_course_model(device=device)
        return model, str(COURSE_CHECKPOINT)
    return load_model(checkpoint, device=device), checkpoint


def cmd_evaluate(args: argparse.Namespace) -> int:
    from torch.utils.data import DataLoader

    from . import data
    from .train import evaluate, resolve_device

    device = resolve_device(args.device or "auto")
    model, source = _load_for_eval(args.checkpoint, device)
    kw = dict(split=args.split, root=args.data_root or "data", download=bool(args.download),
              image_size=args.image_size or model.config.image_size[0], n=args.n)
    if args.seed is not None:
        kw["seed"] = args.seed
    ds = data.get_dataset(args.dataset or "shapes", **kw)
    loader = DataLoader(ds, batch_size=args.batch_size, shuffle=False, num_workers=args.workers or 0)
    t0 = time.monotonic()
    m = evaluate(model, loader, device)
    print(f"{source} on {args.dataset or 'shapes'} {args.split} ({len(ds)} images"
          f"{'' if args.seed is None else f', seed {args.seed}'}): loss {m['loss']:.4f}  accuracy {m['acc']:.4f} "
          f"({m['acc'] * 100:.2f} %)  [{time.monotonic() - t0:.1f} s]")
    return 0


# ================================================================================================= demo
def cmd_demo(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")  # headless: only files, no window
    import matplotlib.pyplot as plt
    import torch
    from torch.utils.data import DataLoader

    from . import analysis, data, viz
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
def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "assignments":
        from .assignments import main as assignments_main

        return assignments_main(argv[1:])
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
        print(f"vit_edu {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vit_edu {args.command}: interrupted", file=sys.stderr)
        return 130
    parser.error(f"unknown command {args.command!r}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
