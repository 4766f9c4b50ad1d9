"""Accuracy against the number of distinct training images: a plain ViT vs a small ResNet (notebook 10).

The code of ``benchmarks/data_size_sweep.py`` (its command line) and of notebook 10 (which draws the stored
result and reruns a reduced sweep with these same functions).

The paper's central lesson (Dosovitskiy et al. 2020, Sec. 4.2-4.3, Figs. 3-4): a ViT lacks the CNN's
inductive biases (locality, translation equivariance) and needs more data to make up for them. This module
measures that at toy scale: each model is trained on nested subsets of one pool of generated shapes images,
with the SAME budget rule (the number of optimizer steps grows with the data, between a floor and a cap),
and tested on one fixed held-out set.

    python benchmarks/data_size_sweep.py                 # the full sweep (resumes: finished runs are skipped)
    python benchmarks/data_size_sweep.py --fresh         # start over
    python benchmarks/data_size_sweep.py --sizes 200,2000 --seeds 0 --models vit,cnn --out /tmp/s.json

Every finished (model, size, seed) run is written at once (atomically) to the result file
(default ``vit_edu/assets/data_size_sweep.json``, shipped with the package), so an interrupted sweep
continues where it stopped. One thread, as everywhere in this course.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, RandomSampler, Subset

from ..fileio import atomic_write
from ..models import create_model
from .cnn import ResNet, ResNetConfig, count_flops
from .data import ShapesDataset
from .loaders import build_eval_loader
from .loop import build_optimizer, build_scheduler, evaluate, seed_everything, train_one_epoch

ASSETS = Path(__file__).resolve().parents[1] / "assets"
DEFAULT_OUT = ASSETS / "data_size_sweep.json"  # the stored sweep (shipped with the package)
SHUFFLED_OUT = ASSETS / "data_size_sweep_shuffled.json"  # the same sweep on patch-shuffled images
MODELS = {"vit": "vit_nano_patch4_32", "cnn": "resnet_8_32_64", "hybrid": "vit_hybrid_s4_32"}
DEFAULTS = dict(sizes=[100, 316, 1000, 3162, 10000], seeds=[0, 1, 2], models=["vit", "cnn"],
                palette="mottled", clutter=4, n_test=2000, pool_seed=10, test_seed=11,
                batch_size=64, lr=2e-3, weight_decay=0.05, epochs=60, min_steps=600, max_steps=6000,
                warmup_frac=0.05, patch_shuffle_seed=None)

CLAIM = ("Pre-registered claim (written before the full sweep ran): the plain ViT needs more training images than "
         "the ResNet of comparable size and compute to reach the same accuracy, and this disadvantage shrinks as the "
         "number of images grows. Metric: the error ratio (1 - acc_ViT) / (1 - acc_CNN) at each size, accuracies "
         "averaged over the seeds, the CNN's error floored at one test image (1 / n_test). The claim holds if the "
         "ratio at the largest size is smaller than at the smallest size AND its least-squares slope against "
         "log10(images) is negative. Reported as well, not judged: the accuracy gap in points (which a CNN near "
         "100 % closes by itself) and the number of images each model needs to reach 50, 70 and 90 % "
         "(interpolated on the log axis).")


CLAIM_SHUFFLED = ("Pre-registered claim for the patch-shuffled task (written before its sweep ran): move the 4x4 "
                  "patches of every image, training and test, by one fixed random permutation. The ViT is indifferent "
                  "to a fixed order of its tokens (permuting its learned position embedding the same way gives exactly "
                  "the same function), so its accuracy stays within the seed-to-seed range of the original task; the "
                  "CNN's locality across patch borders no longer matches the images, so it loses accuracy. Metric: the "
                  "error ratio (1 - acc_ViT) / (1 - acc_CNN) as on the original task. The claim holds if the ratio on "
                  "shuffled patches is smaller than on the original images at every size where the CNN led the "
                  "original task by more than 10 points.")


class PatchShuffle:
    """Move the ``patch`` x ``patch`` tiles of a [C, H, W] image by one fixed random permutation (seeded).

    The same permutation for every image: the picture is scrambled, but consistently, so a model that does not
    assume neighbouring tiles belong together (a ViT, whose token order is learned) loses nothing."""

    def __init__(self, seed: int, image_size: int = 32, patch: int = 4) -> None:
        if image_size % patch:
            raise ValueError(f"patch {patch} must divide image_size {image_size}")
        self.patch, self.grid = patch, image_size // patch
        self.perm = torch.randperm(self.grid * self.grid, generator=torch.Generator().manual_seed(seed))

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        c, g, p = image.shape[0], self.grid, self.patch
        tiles = image.reshape(c, g, p, g, p).permute(1, 3, 0, 2, 4).reshape(g * g, c, p, p)  # (h w) c p1 p2
        tiles = tiles[self.perm]
        return tiles.reshape(g, g, c, p, p).permute(2, 0, 3, 1, 4).reshape(c, g * p, g * p)


def steps_for(n: int, batch_size: int, epochs: float, min_steps: int, max_steps: int) -> int:
    """The budget rule, the same for every model: ``epochs`` passes over the n images, clipped to
    [min_steps, max_steps] optimizer steps (small sets get enough steps to fit, large sets stop at the cap)."""
    return int(min(max_steps, max(min_steps, round(epochs * n / batch_size))))


def build(model_key: str, num_classes: int, seed: int) -> nn.Module:
    """The model of ``model_key``, initialised from ``seed``."""
    torch.manual_seed(seed)
    if model_key == "cnn":
        return ResNet(ResNetConfig(num_classes=num_classes))
    return create_model(MODELS[model_key], num_classes=num_classes)


def model_sizes(model_keys: Sequence[str], num_classes: int) -> Dict[str, dict]:
    """Parameters and forward FLOPs per 32x32 image of each model."""
    out = {}
    for key in model_keys:
        m = build(key, num_classes, 0)
        out[key] = {"name": MODELS[key], "parameters": sum(p.numel() for p in m.parameters()),
                    "flops_per_image": count_flops(m)}
    return out


def make_data(settings: dict, pool_size: int) -> tuple:
    """(training pool, fixed test set): a size-n training set is the pool's first n images (nested subsets).

    The pool's images depend on its size (the labels are one shuffle of all of them), so a sweep always draws
    the pool at the size it started with."""
    common = dict(palette=settings["palette"], clutter=settings["clutter"])
    if settings.get("patch_shuffle_seed") is not None:
        common["transform"] = PatchShuffle(settings["patch_shuffle_seed"])
    pool = ShapesDataset(n=pool_size, seed=settings["pool_seed"], **common)
    test = ShapesDataset(n=settings["n_test"], seed=settings["test_seed"], **common)
    return pool, test


def train_run(model_key: str, n: int, seed: int, pool: ShapesDataset, test: ShapesDataset, settings: dict) -> dict:
    """One run: the model of ``model_key`` on the pool's first ``n`` images for the budget rule's steps."""
    seed_everything(seed)
    num_classes = len(pool.classes)
    model = build(model_key, num_classes, seed)
    steps = steps_for(n, settings["batch_size"], settings["epochs"], settings["min_steps"], settings["max_steps"])
    train_set = Subset(pool, range(n))
    # One loader for the whole run: `steps` batches drawn as successive shuffles of the n images
    sampler = RandomSampler(train_set, num_samples=steps * settings["batch_size"],
                            generator=torch.Generator().manual_seed(seed))
    loader = DataLoader(train_set, batch_size=settings["batch_size"], sampler=sampler, drop_last=True)
    optimizer = build_optimizer(model, settings["lr"], settings["weight_decay"],
                                pos_embed_lr_scale=5.0 if model_key == "vit" else 1.0)
    scheduler = build_scheduler(optimizer, max(1, round(settings["warmup_frac"] * steps)), steps)
    t0 = time.monotonic()
    tr = train_one_epoch(model, loader, optimizer, scheduler, nn.CrossEntropyLoss(), torch.device("cpu"),
                         grad_clip=1.0, progress=False)
    train_s = time.monotonic() - t0
    te = evaluate(model, build_eval_loader(test, 500), "cpu")
    # how well the model fits its own training images (up to 2,000 of them): near 1 = trained to convergence
    fit_set = Subset(pool, range(min(n, 2000)))
    fi = evaluate(model, build_eval_loader(fit_set, 500), "cpu")
    return {"model": model_key, "n_train": n, "seed": seed, "steps": steps, "epochs": steps * settings["batch_size"] / n,
            "test_acc": te["acc"], "test_loss": te["loss"], "train_acc": fi["acc"], "train_loss": fi["loss"],
            "last_pass_train_loss": tr["loss"], "wall_s": round(time.monotonic() - t0, 2), "train_s": round(train_s, 2)}


def _write(path: Path, result: dict) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(result, indent=1) + "\n"), mode="w", encoding="utf-8")


def run_key(r: dict) -> tuple:
    return (r["model"], r["n_train"], r["seed"])


def _check_design(sizes: Sequence[int], seeds: Sequence[int], models: Sequence[str], settings: dict) -> None:
    """Before any run: at least one size, seed and model, each valid, and a budget rule that can run."""
    for what, values, low in (("sizes", sizes, 1), ("seeds", seeds, 0)):
        if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < low for v in values):
            raise ValueError(f"--{what} expects one or more comma-separated ints >= {low}, got {list(values)}")
    unknown = [key for key in models if key not in MODELS]
    if not models or unknown:
        raise ValueError(f"--models expects some of {sorted(MODELS)}, got {list(models)}")
    for name in ("n_test", "min_steps", "batch_size"):
        if settings[name] < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {settings[name]}")
    if settings["max_steps"] < settings["min_steps"]:
        raise ValueError(f"--max-steps {settings['max_steps']} must be >= --min-steps {settings['min_steps']}")
    for name in ("lr", "epochs"):
        if not (math.isfinite(settings[name]) and settings[name] > 0):
            raise ValueError(f"--{name} must be a finite number > 0, got {settings[name]}")


def _read_result(out: Path) -> dict:
    """A stored sweep result, or one ValueError naming the file (not a JSON traceback or a KeyError)."""
    try:
        result = json.loads(out.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{out} is not a sweep result (not JSON: {err}); expected a file this sweep wrote, or "
                         f"--fresh (or another --out) to start over") from None
    missing = [k for k in ("settings", "task", "runs", "models", "design") if not isinstance(result, dict)
               or k not in result]
    if missing:
        raise ValueError(f"{out} is not a sweep result: it lacks {', '.join(missing)}; expected a file this sweep "
                         f"wrote, or --fresh (or another --out) to start over")
    return result


def sweep(out: Path, sizes: Sequence[int], seeds: Sequence[int], models: Sequence[str], fresh: bool = False,
          overrides: Optional[dict] = None, command: str = "", log: Callable[[str], None] = print) -> dict:
    """Run every (model, size, seed) not yet in ``out``; each finished run is written to ``out`` at once.

    The settings that decide a run (task, budget rule, optimizer) are stored in the file; resuming with other
    settings is refused, so a result file never mixes two budget rules.
    """
    settings = {**DEFAULTS, **(overrides or {}), "sizes": sorted(int(s) for s in sizes)}
    _check_design(sizes, seeds, models, settings)
    fixed = {k: v for k, v in settings.items() if k not in ("sizes", "seeds", "models")}
    result = None
    if out.exists() and not fresh:
        result = _read_result(out)
        if result["settings"] != fixed:
            raise ValueError(f"{out} was made with other settings {result['settings']}; expected {fixed}. "
                             f"Use --fresh (or another --out) to start over")
        if max(sizes) > result["task"]["pool_size"]:
            raise ValueError(f"{out} drew a pool of {result['task']['pool_size']} images; size {max(sizes)} needs "
                             f"--fresh")
    pool_size = result["task"]["pool_size"] if result is not None else max(sizes)
    pool, test = make_data(settings, pool_size)
    if result is None:
        shuffled = settings.get("patch_shuffle_seed") is not None
        result = {
            "claim": CLAIM_SHUFFLED if shuffled else CLAIM,
            "task": {"dataset": "shapes", "classes": list(pool.classes), "palette": settings["palette"],
                     "clutter": settings["clutter"], "image_size": 32, "pool_size": len(pool),
                     "pool_seed": settings["pool_seed"], "n_test": len(test), "test_seed": settings["test_seed"],
                     "training_sets": "nested: size n uses the first n images of one pool",
                     "patch_shuffle_seed": settings.get("patch_shuffle_seed")},
            "budget_rule": (f"steps = clip(round({settings['epochs']} * n / {settings['batch_size']}), "
                            f"{settings['min_steps']}, {settings['max_steps']}) optimizer steps of batch "
                            f"{settings['batch_size']}, the same for every model; AdamW lr {settings['lr']} "
                            f"(weight decay {settings['weight_decay']} on weight matrices), linear warm-up over "
                            f"{settings['warmup_frac']:.0%} of the steps then cosine to 0, gradient clipping at norm 1; "
                            f"the ViT's learned position embedding at lr x 5 (its course recipe)"),
            "settings": fixed,
            "design": {"sizes": [], "seeds": [], "models": []},
            "models": {},
            "command": command,
            "torch_version": torch.__version__,
            "python_version": sys.version.split()[0],
            "threads": torch.get_num_threads(),
            "runs": [],
            "total_wall_s": 0.0,
        }
    sizes_info = model_sizes(models, len(pool.classes))
    result["models"].update(sizes_info)
    calls = result.setdefault("commands", [result["command"]] if result.get("command") else [])
    if command and (not calls or calls[-1] != command):
        calls.append(command)  # every call that added runs, in order
    result["command"] = command or result["command"]
    done = {run_key(r) for r in result["runs"]}
    # seed by seed: a sweep stopped early still holds whole learning curves
    todo = [(m, n, s) for s in seeds for n in sorted(sizes) for m in models if (m, n, s) not in done]
    log(f"{len(done)} runs stored in {out}, {len(todo)} to do: models {list(models)}, sizes {sorted(sizes)}, "
        f"seeds {list(seeds)}")
    t_all = time.monotonic()
    for i, (m, n, s) in enumerate(todo, 1):
        r = train_run(m, n, s, pool, test, settings)
        result["runs"].append(r)
        result["runs"].sort(key=lambda r: (r["model"], r["n_train"], r["seed"]))
        result["total_wall_s"] = round(result["total_wall_s"] + r["wall_s"], 1)
        _write(out, result)
        log(f"[{i}/{len(todo)}] {m:6s} n={n:6d} seed={s} steps={r['steps']:5d} test acc {r['test_acc']:.4f} "
            f"train acc {r['train_acc']:.4f}  {r['wall_s']:.0f} s")
    design = result["design"]  # every size, seed and model of a call that finished, so all of them are stored
    design["sizes"] = sorted(set(design["sizes"]) | {int(n) for n in sizes})
    design["seeds"] = sorted(set(design["seeds"]) | {int(x) for x in seeds})
    design["models"] = [m for m in MODELS if m in set(design["models"]) | set(models)]
    _write(out, result)
    log(f"done in {time.monotonic() - t_all:.0f} s this call; {result['total_wall_s']:.0f} s of runs in {out}")
    return result


def summarize(result: dict) -> Dict[str, Dict[int, dict]]:
    """{model: {n: {"mean", "min", "max", "seeds"}}} of the test accuracy."""
    table: Dict[str, Dict[int, dict]] = {}
    for r in result["runs"]:
        table.setdefault(r["model"], {}).setdefault(r["n_train"], {"accs": []})["accs"].append(r["test_acc"])
    for per_n in table.values():
        for row in per_n.values():
            a = row.pop("accs")
            row.update(mean=sum(a) / len(a), min=min(a), max=max(a), seeds=len(a))
    return table


def verdict(result: dict, a: str = "vit", b: str = "cnn") -> dict:
    """The pre-registered metric: error ratio (1 - acc_a) / (1 - acc_b) at every size, its slope against
    log10(n), and whether the claim holds (ratio at the largest size < at the smallest, and slope < 0)."""
    t = summarize(result)
    sizes = sorted(set(t[a]) & set(t[b]))
    floor = 1.0 / result["task"]["n_test"]  # one test image: a CNN with no error left would give an infinite ratio
    ratios = [(1 - t[a][n]["mean"]) / max(1 - t[b][n]["mean"], floor) for n in sizes]
    xs = [math.log10(n) for n in sizes]
    mx, my = sum(xs) / len(xs), sum(ratios) / len(ratios)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ratios)) / sum((x - mx) ** 2 for x in xs)
    holds = bool(ratios[-1] < ratios[0] and slope < 0)
    return {"sizes": sizes, "error_ratio": ratios, "slope_per_decade": slope, "holds": holds,
            "gap_points": [100 * (t[b][n]["mean"] - t[a][n]["mean"]) for n in sizes]}


def verdict_shuffled(original: dict, shuffled: dict, lead: float = 0.10) -> dict:
    """The patch-shuffled task's pre-registered metric: at every size where the CNN led the original task by more
    than ``lead``, is the error ratio ViT / CNN on shuffled patches smaller than on the original images?
    Reported, not judged: the ViT's shuffled accuracy against the original task's seed range."""
    if shuffled["settings"].get("patch_shuffle_seed") is None:
        raise ValueError("the second result must come from a sweep with --patch-shuffle-seed")
    same = {k: v for k, v in shuffled["settings"].items() if k != "patch_shuffle_seed"}
    if same != {k: v for k, v in original["settings"].items() if k != "patch_shuffle_seed"}:
        raise ValueError("the two sweeps differ in more than the patch shuffle; they cannot be compared")
    to, ts = summarize(original), summarize(shuffled)
    vo, vs = verdict(original), verdict(shuffled)
    ratio_o, ratio_s = dict(zip(vo["sizes"], vo["error_ratio"])), dict(zip(vs["sizes"], vs["error_ratio"]))
    judged = [n for n in vo["sizes"] if n in ratio_s and to["cnn"][n]["mean"] - to["vit"][n]["mean"] > lead]
    return {"judged_sizes": judged, "ratio_original": ratio_o, "ratio_shuffled": ratio_s,
            "holds": bool(judged) and all(ratio_s[n] < ratio_o[n] for n in judged),
            "vit_shift_points": {n: 100 * (ts["vit"][n]["mean"] - to["vit"][n]["mean"]) for n in ts.get("vit", {})},
            "vit_in_original_range": {n: to["vit"][n]["min"] <= ts["vit"][n]["mean"] <= to["vit"][n]["max"]
                                      for n in ts.get("vit", {})}}


def images_to_reach(result: dict, model: str, target: float) -> Optional[float]:
    """Images ``model`` needs for mean test accuracy ``target``: log-linear interpolation between the measured
    sizes; None if it never gets there."""
    per_n = summarize(result)[model]
    sizes = sorted(per_n)
    accs = [per_n[n]["mean"] for n in sizes]
    if accs[0] >= target:
        return float(sizes[0])
    for (n0, a0), (n1, a1) in zip(zip(sizes, accs), zip(sizes[1:], accs[1:])):
        if a0 < target <= a1:
            f = (target - a0) / (a1 - a0)
            return float(10 ** (math.log10(n0) + f * (math.log10(n1) - math.log10(n0))))
    return None


def _ints(text: str) -> List[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="result file (default vit_edu/assets/data_size_sweep.json)")
    p.add_argument("--sizes", type=_ints, default=DEFAULTS["sizes"], help="training-set sizes, comma-separated")
    p.add_argument("--seeds", type=_ints, default=DEFAULTS["seeds"], help="seeds, comma-separated")
    p.add_argument("--models", type=lambda s: [x for x in s.split(",") if x], default=DEFAULTS["models"],
                   help=f"some of {','.join(MODELS)}")
    p.add_argument("--fresh", action="store_true", help="discard the stored runs and start over")
    for name in ("palette", "clutter", "epochs", "min_steps", "max_steps", "n_test", "lr"):
        kind = type(DEFAULTS[name])
        p.add_argument("--" + name.replace("_", "-"), type=kind, default=DEFAULTS[name], help=f"default {DEFAULTS[name]}")
    p.add_argument("--patch-shuffle-seed", type=int, default=None,
                   help="move the 4x4 patches of every image by one fixed permutation drawn from this seed")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    overrides = {k: getattr(args, k) for k in ("palette", "clutter", "epochs", "min_steps", "max_steps", "n_test", "lr",
                                               "patch_shuffle_seed")}
    command = "python benchmarks/data_size_sweep.py " + " ".join(argv if argv is not None else sys.argv[1:])
    t0 = time.monotonic()
    try:
        result = sweep(args.out, args.sizes, args.seeds, args.models, args.fresh, overrides, command.strip())
    except ValueError as err:  # a bad value or result file: one line (the finished runs are in --out already)
        print(f"data_size_sweep: error: {err}", file=sys.stderr)
        return 2
    for model, per_n in summarize(result).items():
        print(model, "  ".join(f"{n}: {row['mean']:.3f}" for n, row in sorted(per_n.items())))
    if {"vit", "cnn"} <= set(summarize(result)):
        v = verdict(result)
        print("error ratio ViT/CNN:", ", ".join(f"{n}: {r:.2f}" for n, r in zip(v["sizes"], v["error_ratio"])),
              f"slope {v['slope_per_decade']:.2f} per decade; claim holds: {v['holds']}")
    print(f"total {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

