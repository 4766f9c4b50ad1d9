"""Two processes with DistributedDataParallel take exactly the step one process takes on the whole batch.

The test launches ``torch.distributed.run --nproc_per_node=2`` (gloo on CPU, 127.0.0.1, a free port) on
a script that calls ``vit_edu.training.fit`` and saves each rank's final weights. Then it redoes the same
steps by hand in this process: each step's batch is rank 0's shard followed by rank 1's shard (as the
DistributedSampler deals them), one mean loss, one SGD step. DDP averages the two ranks' gradients,
and the mean over two equal halves is the mean over the whole, so the weights must agree.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DistributedSampler

from vit_edu.training import TrainConfig, build_model, build_scheduler, data

WORLD = 2
# SGD, not AdamW: Adam divides by sqrt(v), which blows float noise in near-zero gradients (the key bias
# gets none at all: softmax ignores it) up to full-size steps, so no tolerance would be meaningful.
CONFIG = dict(model="vit_nano_patch4_32", epochs=1, batch_size=32, lr=0.05, weight_decay=0.05, warmup_steps=2,
              optimizer="sgd",
              label_smoothing=0.1, n_train=128, n_test=64, seed=7, device="cpu", progress=False,
              save_checkpoints=False, model_overrides={"dropout": 0.0})

SCRIPT = """
import sys, torch
from vit_edu.training import TrainConfig, cleanup_distributed, fit
import torch.distributed as dist
cfg = TrainConfig(**{config!r}, out_dir=sys.argv[1])
model, history = fit(cfg)
torch.save(model.state_dict(), f"{{sys.argv[1]}}/rank{{dist.get_rank()}}_of_{{dist.get_world_size()}}.pt")
# a time budget that runs out: every rank must stop at the same step (else DDP hangs)
_, budget_history = fit(TrainConfig(**{{**cfg.to_dict(), "epochs": 5, "time_budget_s": 1e-3}}))
print(f"budget run stopped after {{budget_history['epoch'][-1]:.2f}} epochs on rank {{dist.get_rank()}}")
# SIGTERM to rank 1 alone, in its third step: both ranks stop at that step (no hang), rank 0 saves where it stopped
import os, signal
from torch import nn
clip, steps = nn.utils.clip_grad_norm_, []
def clip_and_signal(*args, **kwargs):
    steps.append(1)
    if dist.get_rank() == 1 and len(steps) == 3:
        os.kill(os.getpid(), signal.SIGTERM)
    return clip(*args, **kwargs)
def raise_interrupt(signum, frame):
    raise KeyboardInterrupt
nn.utils.clip_grad_norm_ = clip_and_signal
signal.signal(signal.SIGTERM, raise_interrupt)
try:
    fit(TrainConfig(**{{**cfg.to_dict(), "epochs": 5, "save_checkpoints": True}}), force=True)
except KeyboardInterrupt:
    print(f"signal run stopped on rank {{dist.get_rank()}}")
cleanup_distributed(wait=True)
"""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reference_weights() -> dict:
    """One process, the concatenated batches, mean loss, the same optimizer and schedule."""
    cfg = TrainConfig(**CONFIG, out_dir="unused")
    assert cfg.epochs == 1  # one epoch: the images are the dataset as built (fresh ones start with epoch 2)
    ds = data.get_dataset("shapes", split="train", n=cfg.n_train)
    model = build_model(cfg, num_classes=8, image_size=32, in_channels=3)
    model.train()
    skip = model.no_weight_decay()
    opt = torch.optim.SGD([
        {"params": [p for n, p in model.named_parameters() if n not in skip], "weight_decay": cfg.weight_decay},
        {"params": [p for n, p in model.named_parameters() if n in skip and n != "pos_embed"], "weight_decay": 0.0},
        {"params": [model.pos_embed], "weight_decay": 0.0, "lr": cfg.lr * cfg.pos_embed_lr_scale},
    ], lr=cfg.lr, momentum=0.9)
    per_rank = cfg.batch_size // WORLD
    steps = cfg.n_train // cfg.batch_size
    sched = build_scheduler(opt, cfg.warmup_steps, steps)
    shards = []
    for rank in range(WORLD):
        sampler = DistributedSampler(ds, num_replicas=WORLD, rank=rank, shuffle=True, seed=cfg.seed, drop_last=True)
        sampler.set_epoch(0)
        shards.append(list(sampler))
    for step in range(steps):
        idx = [i for shard in shards for i in shard[step * per_rank:(step + 1) * per_rank]]
        images = torch.stack([ds[i][0] for i in idx])  # [32, 3, 32, 32]
        labels = torch.tensor([ds[i][1] for i in idx])
        loss = nn.functional.cross_entropy(model(images), labels, label_smoothing=cfg.label_smoothing)
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    return model.state_dict()


def test_two_process_ddp_equals_one_process_on_the_whole_batch(tmp_path: Path) -> None:
    script = tmp_path / "ddp_fit.py"
    script.write_text(textwrap.dedent(SCRIPT.format(config=CONFIG)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "PYTHONHASHSEED": "0"}
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={WORLD}", "--nnodes=1",
           "--master_addr=127.0.0.1", f"--master_port={free_port()}", str(script), str(tmp_path)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    assert "2 process(es)" in res.stdout  # it really ran distributed, and only rank 0 printed
    assert res.stdout.count("final") == 0 and res.stdout.count("epoch  1.00/1") == 1
    for rank in range(WORLD):  # the budget run ended (no hang) inside its first epoch on both ranks
        assert f"budget run stopped after 0.25 epochs on rank {rank}" in res.stdout, res.stdout
        assert f"signal run stopped on rank {rank}" in res.stdout, res.stdout  # rank 0 without a signal of its own
    assert "a signal to another process received: stopped after 0.75 epochs" in res.stdout, res.stdout
    stopped = torch.load(tmp_path / "last.pt", weights_only=True)["extra"]["stopped_at"]
    assert stopped["batches"] == 3, stopped

    ranks = [torch.load(tmp_path / f"rank{r}_of_{WORLD}.pt", weights_only=True) for r in range(WORLD)]
    expected = reference_weights()
    assert ranks[0].keys() == expected.keys()
    for k in expected:
        assert torch.equal(ranks[0][k], ranks[1][k]), f"ranks disagree on {k}"
        torch.testing.assert_close(ranks[0][k], expected[k], rtol=1e-5, atol=1e-6, msg=lambda m: f"{k}: {m}")
    # and training moved the weights (so the comparison is not trivially true)
    init = build_model(TrainConfig(**CONFIG, out_dir="unused"), 8, 32, 3).state_dict()
    assert not torch.allclose(init["head.weight"], expected["head.weight"])


def test_a_stray_or_half_set_torchrun_environment_is_one_line_before_any_work(tmp_path: Path) -> None:
    """WORLD_SIZE left over in a shell, or set by hand without the rest: one line naming the variable, not a
    KeyError, a bare int() error or a wait for peers that never come."""
    import pytest

    from vit_edu.training.distributed import setup_distributed

    cases = [({"WORLD_SIZE": "abc"}, "WORLD_SIZE must be an integer, got 'abc'"),
             ({"WORLD_SIZE": "0"}, "WORLD_SIZE must be >= 1, got 0"),
             ({"WORLD_SIZE": "2"}, "WORLD_SIZE is 2 but RANK is not set"),
             ({"WORLD_SIZE": "2", "RANK": "5"}, "RANK must be from 0 to 1, got 5"),
             ({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "-1"}, "LOCAL_RANK must be >= 0, got -1"),
             ({"WORLD_SIZE": "2", "RANK": "1"}, "WORLD_SIZE is 2 but MASTER_ADDR is not set"),
             ({"WORLD_SIZE": "2", "RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "x"},
              "MASTER_PORT must be an integer, got 'x'")]
    keys = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    for env, message in cases:
        with pytest.MonkeyPatch.context() as mp:
            for key in keys:
                mp.delenv(key, raising=False)
            for key, value in env.items():
                mp.setenv(key, value)
            with pytest.raises(ValueError, match=message.replace("(", r"\(")) as err:
                setup_distributed("cpu")
            assert "\n" not in str(err.value)
    # and through the command line: one line, exit 2, nothing trained
    env = {k: v for k, v in os.environ.items() if k not in keys} | {"WORLD_SIZE": "2"}
    done = subprocess.run([sys.executable, "-m", "vit_edu", "train", "--out-dir", str(tmp_path / "run"), "--epochs",
                           "1", "--no-progress"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2 and "RANK is not set" in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert not (tmp_path / "run" / "last.pt").exists()
