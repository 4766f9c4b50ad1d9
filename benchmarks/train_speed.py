"""Training throughput (images/s) of the course presets on this machine: forward + backward + AdamW step.

    python benchmarks/train_speed.py                     # nano, course and fast, batch 128, 1 and all threads
    python benchmarks/train_speed.py --models vit_course_patch4_32 --batch-sizes 32 64 128 --steps 10
    python benchmarks/train_speed.py --data              # how long drawing the shapes data takes

Prints a Markdown table and the machine's load average: on shared cores the numbers are snapshots,
and several threads can be *slower* than one when other processes compete for the cores.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from torch import nn

import vit_edu
from vit_edu.training import build_optimizer
from vit_edu.training.data import SHAPES_DEFAULT_SIZES, ShapesDataset, make_shapes


def images_per_second(model_name: str, batch_size: int, threads: int, steps: int, warmup: int = 2) -> float:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = vit_edu.create_model(model_name, num_classes=8)
    opt = build_optimizer(model, 1e-3, 0.05)
    x, y = torch.randn(batch_size, 3, 32, 32), torch.randint(0, 8, (batch_size,))
    for i in range(warmup + steps):
        if i == warmup:
            start = time.perf_counter()
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return batch_size * steps / (time.perf_counter() - start)


def data_speed() -> None:
    """Drawing the shapes data (fresh images every epoch cost this much per epoch). CPU time is shown next to
    wall time because on a busy shared machine the wall time mostly measures the other processes."""
    def timed(label: str, fn) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        print(f"| {label} | {wall:.2f} | {cpu:.2f} | {torch.get_num_threads()} |", flush=True)

    n = SHAPES_DEFAULT_SIZES["train"]
    print("\n| data | wall s | cpu s | torch threads |\n|---|---|---|---|")
    timed(f"ShapesDataset(n={n}) (one epoch of the default run)", lambda: ShapesDataset(n=n))
    for size, count in ((32, 50_000), (64, 5_000), (96, 2_000)):
        timed(f"make_shapes({count}, image_size={size})", lambda: make_shapes(count, image_size=size, seed=0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+",
                        default=["vit_nano_patch4_32", "vit_course_patch4_32", "vit_fast_patch8_32"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[128])
    parser.add_argument("--threads", nargs="+", type=int, default=sorted({1, os.cpu_count() or 1}))
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--data", action="store_true", help="time drawing the shapes data instead")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, load average before: "
          + ", ".join(f"{v:.2f}" for v in os.getloadavg()))
    if args.data:
        data_speed()
        return
    print("\n| model | parameters | batch | threads | train images/s |\n|---|---|---|---|---|")
    for name in args.models:
        params = vit_edu.create_model(name, num_classes=8).num_parameters()
        for bs in args.batch_sizes:
            for th in args.threads:
                ips = images_per_second(name, bs, th, args.steps)
                print(f"| {name} | {params / 1e6:.2f}M | {bs} | {th} | {ips:.0f} |", flush=True)
    print("\nload average after: " + ", ".join(f"{v:.2f}" for v in os.getloadavg()))


if __name__ == "__main__":
    main()
