"""Measure the course's claims and print one Markdown table (measured value, goal, pass/fail).

    python benchmarks/measure_claims.py                 # everything, incl. the default training run (its budget)
    python benchmarks/measure_claims.py --skip-train    # only the shipped checkpoint's numbers (~1 minute)

Claims:
1. the shipped checkpoint classifies a *fresh* seed of the shapes test set with >= 98 % accuracy;
2. the default ``python -m vit_edu train`` (no arguments: TrainConfig's defaults, its time budget included)
   reaches >= 95 % on 2 CPU cores;
3. what the plain ViT learned, the paper's Fig. 7, against the same model at random init: attention rollout
   on the object (mass on object patches / object's share >= 2.5), position embeddings that encode the 2-D
   grid (Spearman(cosine similarity, grid distance) <= -0.6), a local first-layer head (mean attention
   distance <= 0.6 x that of uniform attention) and a mean distance that rises with depth, and smooth
   patch-embedding filters.

Measurements are not tests: they take minutes and depend on the machine. The load average is printed
with the table, because two shared cores make every timing a snapshot.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from vit_edu.training import TrainConfig

REPO = Path(__file__).resolve().parent.parent
FRESH_SEED = 2024  # never used for training (train 0) or the default test set (1)
DEFAULT_BUDGET_S = TrainConfig().time_budget_s  # the default run's, as `python -m vit_edu train` uses it


def load_average() -> str:
    try:
        return "load average %.2f, %.2f, %.2f (1, 5, 15 min)" % os.getloadavg()
    except OSError:
        return "load average unavailable"


def shipped_accuracy(n: int, seed: int) -> dict:
    from vit_edu.training import data, evaluate, pretrained_course_model

    model, info = pretrained_course_model()
    ds = data.get_dataset("shapes", split="test", n=n, seed=seed, palette=info["palette"])
    t0 = time.monotonic()
    m = evaluate(model, DataLoader(ds, batch_size=500))
    m["images_per_s"] = n / (time.monotonic() - t0)
    m["info"] = info
    return m


def what_it_learned(n: int, seed: int) -> dict:
    """The paper's Fig. 7 measurements on the shipped checkpoint and on the same model at random init."""
    from vit_edu import VisionTransformer
    from vit_edu.explain import analysis
    from vit_edu.training import data, pretrained_course_model

    model, info = pretrained_course_model()
    ds = data.ShapesDataset(n=n, image_size=model.config.image_size[0], seed=seed, return_mask=True,
                            palette=info["palette"])  # drawn as its training images were
    images = torch.stack([ds[i][0] for i in range(n)])
    masks = torch.stack([ds[i][2] for i in range(n)])
    trained = analysis.what_the_model_learned(model, images, masks)
    torch.manual_seed(0)
    fresh = VisionTransformer(model.config)  # same architecture and init scheme, before training
    random_init = analysis.what_the_model_learned(fresh, images, masks)
    return {"trained": trained, "random": random_init}


def default_training_run(budget: float) -> dict:
    """`python -m vit_edu train` with no arguments except where to put the run (a temp dir), and the budget
    when it is not the default one."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "vit_edu", "train", "--out-dir", os.path.join(tmp, "run")]
        if budget != DEFAULT_BUDGET_S:
            cmd += ["--time-budget", str(budget)]
        load_before = load_average()
        t0 = time.monotonic()
        res = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True)
        wall = time.monotonic() - t0
    if res.returncode != 0:
        raise RuntimeError(f"training failed:\n{res.stderr[-3000:]}")
    print(res.stdout)
    acc = float(re.search(r"final test accuracy (\d\.\d+)", res.stdout).group(1))
    speeds = [float(v) for v in re.findall(r"(\d+) img/s", res.stdout)]
    return {"acc": acc, "wall_s": wall, "images_per_s": sum(speeds) / max(len(speeds), 1),
            "load_before": load_before, "load_after": load_average()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-train", action="store_true",
                        help=f"skip the default training run ({DEFAULT_BUDGET_S:g} s budget)")
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S,
                        help=f"time budget of the training run in s (default: TrainConfig's, {DEFAULT_BUDGET_S:g})")
    parser.add_argument("--n", type=int, default=10000, help="fresh test images for the accuracy")
    parser.add_argument("--n-attention", type=int, default=500, help="images for the Fig. 7 measurements")
    parser.add_argument("--seed", type=int, default=FRESH_SEED, help="seed of the fresh test set")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; {load_average()}")

    rows = []
    acc = shipped_accuracy(args.n, args.seed)
    rows.append((f"shipped checkpoint accuracy, {args.n} fresh shapes (seed {args.seed})",
                 f"{acc['acc'] * 100:.2f} %", ">= 98 %", acc["acc"] >= 0.98))
    rows.append(("shipped checkpoint inference speed", f"{acc['images_per_s']:.0f} img/s", "(info)", None))
    if not args.skip_train:
        run = default_training_run(args.budget)
        rows.append((f"default `python -m vit_edu train`, {args.budget:.0f} s budget: test accuracy",
                     f"{run['acc'] * 100:.2f} %", ">= 95 %", run["acc"] >= 0.95))
        rows.append(("default run: training speed / wall time",
                     f"{run['images_per_s']:.0f} img/s, {run['wall_s']:.0f} s", "(info)", None))
        rows.append(("machine load during the run", f"before: {run['load_before']}; after: {run['load_after']}",
                     "(info)", None))
    fig7 = what_it_learned(args.n_attention, args.seed)
    tr, rnd = fig7["trained"], fig7["random"]
    rows.append((f"rollout localisation (mass on object / object share), mean of {args.n_attention}",
                 f"{tr['localization']:.2f} (random init {rnd['localization']:.2f})", ">= 2.5", tr["localization"] >= 2.5))
    rows.append(("pos-embed Spearman(similarity, grid distance)", f"{tr['spearman']:+.3f} (random init {rnd['spearman']:+.3f})",
                 "<= -0.6", tr["spearman"] <= -0.6))
    d, d0 = tr["distance"], rnd["distance"]
    rows.append(("most local first-layer head, distance / uniform attention's",
                 f"{d['first_layer_min']:.2f} (random init {d0['first_layer_min']:.2f})", "<= 0.6", d["first_layer_min"] <= 0.6))
    rows.append(("mean attention distance per layer / uniform's, first -> last",
                 " ".join(f"{v:.2f}" for v in d["layer_mean"].tolist()), "rising", d["rising"]))
    rows.append(("patch filters: neighbour correlation of the top-8 principal components",
                 f"{tr['smoothness']:+.2f} (random init {rnd['smoothness']:+.2f}); top-8 explain "
                 f"{100 * tr['variance_top']:.0f} % of the variance (random {100 * rnd['variance_top']:.0f} %)",
                 "> random init", tr["smoothness"] > rnd["smoothness"] + 0.2))

    print()
    print("| claim | measured | goal | result |")
    print("|---|---|---|---|")
    for name, value, goal, ok in rows:
        print(f"| {name} | {value} | {goal} | {'' if ok is None else ('pass' if ok else 'FAIL')} |")
    print(f"\n{load_average()}")
    return 0 if all(ok is not False for *_, ok in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
