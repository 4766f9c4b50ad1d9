"""One process or several: the device, the process group under torchrun, and sums over the processes.

``torchrun --nproc_per_node=2 -m vit_edu train`` starts two processes; each calls :func:`setup_distributed`
and joins the group. Every function here also works in a single plain process, where it does nothing
special, so the training loop has no "if distributed" branches of its own.
"""

from __future__ import annotations

import os
import sys
from typing import List, Optional, Tuple

import torch
import torch.distributed as dist
from torch import nn


def resolve_device(device: str = "auto") -> torch.device:
    """"auto" (cuda if available, else cpu), "cpu", "cuda", "cuda:N" or "mps" as a torch.device; a one-line
    ValueError for a name torch does not know or a device this machine does not have."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"unknown device {device!r}; expected auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device {device!r} requested but this machine has {torch.cuda.device_count()} CUDA "
                         f"device(s): cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    if dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ValueError(f"device {device!r} requested but MPS is not available; use --device cpu")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {device!r} is not supported here; expected auto, cpu, cuda, cuda:N or mps")
    return dev


def _env_int(name: str, default: Optional[str], low: int, high: Optional[int] = None) -> int:
    """An integer torchrun sets, checked: a stray or half-set environment is one line naming the variable."""
    text = os.environ.get(name, default)
    where = "torchrun sets it; unset WORLD_SIZE to train in one process"
    if text is None:
        raise ValueError(f"WORLD_SIZE is {os.environ.get('WORLD_SIZE')} but {name} is not set ({where})")
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {text!r} ({where})") from None
    if value < low or (high is not None and value >= high):
        span = f"from {low} to {high - 1}" if high is not None else f">= {low}"
        raise ValueError(f"environment variable {name} must be {span}, got {value} ({where})")
    return value


def setup_distributed(device: str = "auto") -> Tuple[int, int, torch.device]:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1). Returns (rank, world_size, device).

    The variables torchrun sets are checked before anything else happens (a WORLD_SIZE left over in a shell
    would otherwise end in a KeyError or wait for peers that never come); the wait itself is said in one line."""
    world = _env_int("WORLD_SIZE", "1", 1)
    dev = resolve_device(device)
    if world <= 1:
        return 0, 1, dev
    rank, local_rank = _env_int("RANK", None, 0, world), _env_int("LOCAL_RANK", "0", 0)
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(name):
            raise ValueError(f"WORLD_SIZE is {world} but {name} is not set (torchrun sets it; unset WORLD_SIZE "
                             f"to train in one process)")
    _env_int("MASTER_PORT", None, 1, 65536)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        if rank == 0:
            print(f"waiting for {world} processes at {os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']} "
                  f"(torchrun starts them)", flush=True)
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return rank, world, dev


def is_distributed() -> bool:
    """True inside a torchrun process group."""
    return dist.is_available() and dist.is_initialized()


def is_main_process() -> bool:
    """Rank 0, or the only process: the one that prints and saves."""
    return not is_distributed() or dist.get_rank() == 0


def all_reduce_sum(values: List[float], device: torch.device) -> List[float]:
    """Sum a few numbers over all processes (a no-op in a single process)."""
    if not is_distributed():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def any_process(flag: bool, device: torch.device) -> bool:
    """True if ``flag`` is true on any process: all of them must stop at the same step, or DDP hangs."""
    return all_reduce_sum([float(flag)], device)[0] > 0


def wrap(model: nn.Module, world_size: int, device: torch.device) -> nn.Module:
    """The model in DistributedDataParallel under torchrun (it averages the gradients), else the model itself."""
    if world_size <= 1:
        return model
    return nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def unwrap(model: nn.Module) -> nn.Module:
    """The VisionTransformer inside its wrappers: DistributedDataParallel (or DataParallel) and torch.compile's
    module, nested in any order and any number. A checkpoint or export of a wrapped model then holds the model's
    own names, not "module._orig_mod.blocks..." that nothing else would load."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif _is_compiled(model):
            model = model._orig_mod
        else:
            return model


def _is_compiled(model: nn.Module) -> bool:
    """Whether ``model`` is what torch.compile returns (torch._dynamo is imported by then: no import here)."""
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")
    return eval_frame is not None and isinstance(model, eval_frame.OptimizedModule)


def barrier(world_size: int) -> None:
    """Wait for every process (under torchrun), e.g. until rank 0 has written the export."""
    if world_size > 1:
        dist.barrier()


def cleanup_distributed(wait: bool = False) -> None:
    """Leave the process group (at the end of ``python -m vit_edu train``). ``wait``: after a run that ended
    well on every process, meet at a barrier first, so that no process tears the group down while another
    still talks to it (not after an error, where the others may never get there)."""
    if is_distributed():
        try:
            if wait:
                dist.barrier()
        finally:
            dist.destroy_process_group()
