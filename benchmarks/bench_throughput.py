"""Throughput of vit_edu against timm, same config and same weights (a script, not a test).

    python benchmarks/bench_throughput.py                       # vit_tiny_patch16_224 on CPU (+ CUDA if present)
    python benchmarks/bench_throughput.py --model vit_base_patch16_224 --device cuda --batch-size 128

Three contestants run the same weights: timm, vit_edu with fused attention
(``F.scaled_dot_product_attention``) and vit_edu with the explicit softmax(QK^T/sqrt(d))V.
Two modes: inference (eval, ``torch.inference_mode``) and a training step (forward + cross-entropy +
backward, no optimizer). Each repeat runs every contestant once, in rotating order, so a machine
that gets busier or cooler during the run slows all of them alike; the median over repeats is reported.
Prints a Markdown table ready for the README.

On a shared machine the run-to-run noise can exceed any real difference: ``--control`` adds a second
copy of the timm model, whose "ratio" to timm is that noise floor, and ``--threads 1 --clock process``
counts only this process's CPU time.
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time
from typing import Callable, Dict, List

import torch
import torch.nn.functional as F
from torch import nn

import vit_edu

try:
    import timm
except ImportError as e:  # pragma: no cover - timm is a dev dependency
    raise SystemExit("the benchmark compares against timm: pip install timm") from e


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="vit_tiny_patch16_224", help=f"one of {vit_edu.list_models()}")
    p.add_argument("--batch-size", type=int, default=None, help="default: 16 on CPU, 128 on CUDA")
    p.add_argument("--image-size", type=int, default=None, help="default: the preset's size")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds per contestant and mode")
    p.add_argument("--iters", type=int, default=10, help="timed repeats per contestant and mode (median reported)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--device", default="all", choices=["all", "cpu", "cuda"],
                   help="'all': CPU, and CUDA when available")
    p.add_argument("--clock", default="wall", choices=["wall", "process"],
                   help="'process': CPU time of this process (CPU only), steadier on a shared machine with --threads 1")
    p.add_argument("--control", action="store_true",
                   help="add a copy of the timm model as a 4th contestant: its ratio to timm shows the noise floor")
    p.add_argument("--modes", default="inference,train", help="comma-separated subset of inference,train")
    return p.parse_args()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_models(args: argparse.Namespace, device: torch.device) -> Dict[str, nn.Module]:
    """timm model with random weights, and vit_edu copies of it (fused / explicit attention)."""
    kwargs = dict(pretrained=False, num_classes=args.num_classes)
    if args.image_size is not None:
        kwargs["img_size"] = args.image_size
    torch.manual_seed(0)
    if timm.is_model(args.model):
        tm = timm.create_model(args.model, **kwargs)
    else:  # a vit_edu-only preset (the 32x32 course models): the same architecture built with timm's class
        c = vit_edu.get_config(args.model, num_classes=args.num_classes,
                               **({"image_size": args.image_size} if args.image_size else {}))
        if c.hybrid_layers is not None or c.pos_embedding != "learned":
            raise SystemExit(f"{args.model} has no timm counterpart to compare with")
        tm = timm.models.vision_transformer.VisionTransformer(
            img_size=c.image_size, patch_size=c.patch_size, in_chans=c.in_channels, num_classes=c.num_classes,
            embed_dim=c.dim, depth=c.depth, num_heads=c.heads, mlp_ratio=c.mlp_dim / c.dim, qkv_bias=c.qkv_bias,
            class_token=c.class_token, global_pool="token" if c.pool == "cls" else "avg")
    fused = vit_edu.from_timm(tm).set_fused_attn(True)
    explicit = copy.deepcopy(fused).set_fused_attn(False)
    models = {"timm": tm, "vit_edu fused": fused, "vit_edu explicit": explicit}
    if args.control:
        models["timm copy"] = copy.deepcopy(tm)  # same model twice: any 'speed-up' it shows is noise
    return {name: m.to(device) for name, m in models.items()}


def check_parity(models: Dict[str, nn.Module], x: torch.Tensor) -> float:
    """Max |logit difference| to timm: a benchmark of models that disagree would be meaningless."""
    with torch.inference_mode():
        ref = models["timm"].eval()(x).float()
        return max((m.eval()(x).float() - ref).abs().max().item() for m in models.values())


def make_step(model: nn.Module, mode: str, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    if mode == "inference":
        model.eval()

        def step() -> None:
            with torch.inference_mode():
                model(x)
    else:
        model.train()  # dropout and drop-path are 0 in the presets, so train mode costs the same work

        def step() -> None:
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            model.zero_grad(set_to_none=True)
    return step


def time_contestants(steps: Dict[str, Callable[[], None]], device: torch.device, warmup: int, iters: int,
                     clock: Callable[[], float] = time.perf_counter) -> Dict[str, List[float]]:
    names = list(steps)
    for _ in range(warmup):
        for name in names:
            steps[name]()
    synchronize(device)
    times: Dict[str, List[float]] = {name: [] for name in names}
    for r in range(iters):
        order = names[r % len(names):] + names[:r % len(names)]  # rotate who goes first
        for name in order:
            synchronize(device)
            start = clock()
            steps[name]()
            synchronize(device)
            times[name].append(clock() - start)
    return times


def run_device(args: argparse.Namespace, device: torch.device) -> List[dict]:
    batch = args.batch_size or (128 if device.type == "cuda" else 16)
    models = build_models(args, device)
    cfg = models["vit_edu fused"].config
    h, w = cfg.image_size
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, cfg.in_channels, h, w, generator=g).to(device)
    y = torch.randint(0, cfg.num_classes, (batch,), generator=g).to(device)
    diff = check_parity(models, x[:4])
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    print(f"\n## {args.model} on {device.type} ({name}), batch {batch}, image {h}x{w}, "
          f"max |logit diff| to timm {diff:.2e}")
    rows = []
    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
        steps = {n: make_step(m, mode, x, y) for n, m in models.items()}
        clock = time.process_time if (args.clock == "process" and device.type == "cpu") else time.perf_counter
        times = time_contestants(steps, device, args.warmup, args.iters, clock)
        ips = {n: batch / statistics.median(t) for n, t in times.items()}
        spread = {n: (max(t) - min(t)) / statistics.median(t) for n, t in times.items()}
        rows.append(dict(device=device.type, mode=mode, batch=batch, ips=ips, spread=spread))
        print(f"{mode:>9}: " + ", ".join(f"{n} {v:7.1f} img/s (spread {spread[n]:.0%})" for n, v in ips.items()),
              flush=True)
    return rows


def markdown_table(rows: List[dict]) -> str:
    lines = [
        "| device | mode | batch | timm (img/s) | vit_edu fused (img/s) | vit_edu explicit (img/s) "
        "| fused / timm | explicit / timm |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ips = r["ips"]
        t, f, e = ips["timm"], ips["vit_edu fused"], ips["vit_edu explicit"]
        lines.append(f"| {r['device']} | {r['mode']} | {r['batch']} | {t:.1f} | {f:.1f} | {e:.1f} "
                     f"| {f / t:.2f} | {e / t:.2f} |")
    controls = [f"{r['device']} {r['mode']} {r['ips']['timm copy'] / r['ips']['timm']:.2f}" for r in rows if "timm copy" in r["ips"]]
    if controls:
        lines.append("\nnoise floor, timm copy / timm: " + ", ".join(controls))
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    devices = []
    if args.device in ("all", "cpu"):
        devices.append(torch.device("cpu"))
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but torch.cuda.is_available() is False")
    if args.device in ("all", "cuda") and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    print(f"torch {torch.__version__}, timm {timm.__version__}, vit_edu {vit_edu.__version__}, "
          f"python {platform.python_version()}, {torch.get_num_threads()} CPU threads, "
          f"warmup {args.warmup}, {args.iters} timed repeats (median), {args.clock} clock")
    rows = []
    for device in devices:
        rows += run_device(args, device)
    print("\n" + markdown_table(rows))


if __name__ == "__main__":
    main()
