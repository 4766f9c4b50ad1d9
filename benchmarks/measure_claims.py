"""Measure the course's claims and print one Markdown table (measured value, goal, pass/fail).

    python benchmarks/measure_claims.py                 # everything, incl. a 300 s default training run
    python benchmarks/measure_claims.py --skip-train    # only the shipped checkpoint's numbers (~1 minute)

Claims:
1. the shipped checkpoint classifies a *fresh* seed of the shapes test set with >= 98 % accuracy;
2. the default ``python -m vit_edu train`` (no arguments, 300 s budget) reaches >= 97 % on 2 CPU cores;
3. the class token's attention rollout sits on the object: mass on object patches / object's share of
   patches >= 2 (mean over images);
4. the learned position embeddings encode the 2-D grid: Spearman correlation between cosine similarity
   and grid distance <= -0.5 for the trained model, about 0 for a random initialisation.

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

REPO = Path(__file__).resolve().parent.parent
FRESH_SEED = 2024  # never used for training (train 0) or the default test set (1)


def load_average() -> str:
    try:
        return "load average %.2f, %.2f, %.2f (1, 5, 15 min)" % os.getloadavg()
    except OSError:
        return "load average unavailable"


def shipped_accuracy(n: int, seed: int) -> dict:
    from vit_edu import data
    from vit_edu.train import evaluate, pretrained_course_model

    model, info = pretrained_course_model()
    ds = data.get_dataset("shapes", split="test", n=n, seed=seed)
    t0 = time.monotonic()
    m = evaluate(model, DataLoader(ds, batch_size=500))
    m["images_per_s"] = n / (time.monotonic() - t0)
    m["info"] = info
    return m


def attention_and_pos_embed(n: int, seed: int) -> dict:
    from vit_edu import analysis, create_model, data
    from vit_edu.train import pretrained_course_model

    model, _ = pretrained_course_model()
    ds = data.ShapesDataset(n=n, image_size=model.config.image_size[0], seed=seed, return_mask=True)
    images = torch.stack([ds[i][0] for i in range(n)])
    masks = torch.stack([ds[i][2] for i in range(n)])
    grid, patch = model.config.grid_size, model.config.patch_size
    with torch.no_grad():
        _, attentions = model(images, return_attention=True)
    loc = analysis.attention_localization(analysis.rollout_cls_map(attentions, grid), masks, patch)
    trained = analysis.similarity_distance_correlation(analysis.pos_embed_similarity(model.pos_embed, grid))
    torch.manual_seed(0)
    fresh = create_model("vit_course_patch4_32", num_classes=model.config.num_classes)
    random_init = analysis.similarity_distance_correlation(analysis.pos_embed_similarity(fresh.pos_embed, grid))
    return {"localization_mean": loc["mean"], "localization_median": loc["median"],
            "spearman_trained": trained["spearman"], "spearman_random": random_init["spearman"]}


def default_training_run(budget: float) -> dict:
    """`python -m vit_edu train` with no arguments except where to put the run (a temp dir)."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "vit_edu", "train", "--out-dir", os.path.join(tmp, "run")]
        if budget != 300:
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
    parser.add_argument("--skip-train", action="store_true", help="skip the 300 s default training run")
    parser.add_argument("--budget", type=float, default=300.0, help="time budget of the training run (s)")
    parser.add_argument("--n", type=int, default=10000, help="fresh test images for the accuracy")
    parser.add_argument("--n-attention", type=int, default=500, help="images for the rollout localisation")
    parser.add_argument("--seed", type=int, default=FRESH_SEED, help="seed of the fresh test set")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; {load_average()}")

    rows = []
    acc = shipped_accuracy(args.n, args.seed)
    rows.append((f"shipped checkpoint accuracy, {args.n} fresh shapes (seed {args.seed})",
                 f"{acc['acc'] * 100:.2f} %", ">= 98 %", acc["acc"] >= 0.98))
    rows.append(("shipped checkpoint inference speed", f"{acc['images_per_s']:.0f} img/s", "(info)", None))
    if not args.skip_train:
        tr = default_training_run(args.budget)
        rows.append((f"default `python -m vit_edu train`, {args.budget:.0f} s budget: test accuracy",
                     f"{tr['acc'] * 100:.2f} %", ">= 97 %", tr["acc"] >= 0.97))
        rows.append(("default run: training speed / wall time",
                     f"{tr['images_per_s']:.0f} img/s, {tr['wall_s']:.0f} s", "(info)", None))
        rows.append(("machine load during the run", f"before: {tr['load_before']}; after: {tr['load_after']}",
                     "(info)", None))
    att = attention_and_pos_embed(args.n_attention, args.seed)
    rows.append((f"rollout localisation (mass on object / object share), mean of {args.n_attention}",
                 f"{att['localization_mean']:.2f} (median {att['localization_median']:.2f})", ">= 2.0",
                 att["localization_mean"] >= 2.0))
    rows.append(("pos-embed Spearman(similarity, grid distance), trained", f"{att['spearman_trained']:.3f}",
                 "<= -0.5", att["spearman_trained"] <= -0.5))
    rows.append(("pos-embed Spearman(similarity, grid distance), random init", f"{att['spearman_random']:.3f}",
                 "about 0 (|x| < 0.2)", abs(att["spearman_random"]) < 0.2))

    print()
    print("| claim | measured | goal | result |")
    print("|---|---|---|---|")
    for name, value, goal, ok in rows:
        print(f"| {name} | {value} | {goal} | {'' if ok is None else ('pass' if ok else 'FAIL')} |")
    print(f"\n{load_average()}")
    return 0 if all(ok is not False for *_, ok in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
