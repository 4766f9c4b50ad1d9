"""The training loop: schedule, loss, checkpoints (atomic, weights_only, exact resume) and model loading.

Every run here is the nano preset on a few hundred generated shapes, so each fit takes a second or two.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
from torch import nn

import vit_edu
from vit_edu import training as T
from vit_edu.training import TrainConfig, evaluate, fit, load_checkpoint, load_model, loop, save_checkpoint
from vit_edu.training.checkpoint import set_rng_state


def tiny_config(tmp_path: Path, **kw) -> TrainConfig:
    base = dict(model="vit_nano_patch4_32", epochs=2, batch_size=64, lr=2e-3, n_train=256, n_test=128,
                warmup_steps=2, out_dir=str(tmp_path / "run"), progress=False, device="cpu", seed=3)
    base.update(kw)
    return TrainConfig(**base)


def quiet(msg: str) -> None:
    pass


# ------------------------------------------------------------------------------------------- schedule
def test_warmup_cosine_matches_closed_form() -> None:
    """LambdaLR stepped once per optimizer step follows warm-up then half a cosine down to min_ratio."""
    base_lr, warmup, total, min_ratio = 0.5, 4, 12, 0.1
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=base_lr)
    sched = T.build_scheduler(opt, warmup, total, min_ratio)
    got = []
    for _ in range(total):
        got.append(opt.param_groups[0]["lr"])  # the lr used by this step
        opt.step()
        sched.step()
    expected = [base_lr * (s + 1) / warmup for s in range(warmup)]
    expected += [base_lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * (s - warmup) / (total - warmup))))
                 for s in range(warmup, total)]
    assert got == pytest.approx(expected, rel=1e-12, abs=0)
    # spot values that need no formula: the peak right after warm-up and the cosine's midpoint
    assert got[warmup - 1] == pytest.approx(base_lr) and got[warmup] == pytest.approx(base_lr)
    assert got[warmup + (total - warmup) // 2] == pytest.approx(base_lr * (min_ratio + (1 - min_ratio) / 2))
    assert got[0] == pytest.approx(base_lr / warmup)


def test_optimizer_skips_weight_decay_on_norms_biases_and_embeddings() -> None:
    model = vit_edu.create_model("vit_nano_patch4_32")
    opt = T.build_optimizer(model, lr=1e-3, weight_decay=0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in opt.param_groups[0]["params"]}
    plain = {names[id(p)] for p in opt.param_groups[1]["params"]}
    assert opt.param_groups[0]["weight_decay"] == 0.05 and opt.param_groups[1]["weight_decay"] == 0.0
    assert {"pos_embed", "cls_token", "norm.weight", "head.bias", "blocks.0.attn.qkv.bias"} <= plain
    assert {"head.weight", "blocks.0.attn.qkv.weight", "patch_embed.proj.weight"} <= decayed
    assert decayed | plain == set(names.values()) and not decayed & plain


def test_label_smoothing_reaches_the_loss(monkeypatch, tmp_path) -> None:
    seen = []
    real = T.build_criterion

    def spy(config):
        crit = real(config)
        seen.append(crit)
        return crit

    monkeypatch.setattr(loop, "build_criterion", spy)  # the name fit looks up
    fit(tiny_config(tmp_path, epochs=1, label_smoothing=0.3, save_checkpoints=False, n_train=64), log=quiet)
    crit = seen[0]
    assert crit.label_smoothing == 0.3
    # and it is the textbook formula: (1 - eps) * CE(one-hot) + eps * mean_k(-log p_k)
    logits, target = torch.randn(5, 8), torch.tensor([0, 3, 7, 1, 1])
    logp = logits.log_softmax(-1)
    by_hand = (0.7 * -logp[torch.arange(5), target] + 0.3 * -logp.mean(-1)).mean()
    torch.testing.assert_close(crit(logits, target), by_hand)


def test_train_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(ValueError, match="label_smoothing"):
        TrainConfig(label_smoothing=1.5)
    with pytest.raises(ValueError, match="unknown TrainConfig"):
        TrainConfig.from_dict({"epochz": 3})
    assert TrainConfig(dataset="cifar10", model="vit_nano_patch4_32").out_dir == os.path.join(
        "runs", "cifar10-vit_nano_patch4_32")


# ------------------------------------------------------------------------------------------- the loop
def test_fit_reduces_the_loss(tmp_path) -> None:
    cfg = tiny_config(tmp_path, epochs=4, n_train=256, lr=3e-3, label_smoothing=0.0, save_checkpoints=False)
    train_ds, test_ds, _ = T.build_datasets(cfg)
    train_loader = torch.utils.data.DataLoader(train_ds, batch_size=128)
    before = evaluate(T.build_model(cfg, 8, 32, 3), train_loader)  # build_model seeds: the same init as fit's
    model, history = fit(cfg, log=quiet)
    after = evaluate(model, train_loader)
    assert history["epoch"] == [1.0, 2.0, 3.0, 4.0]
    assert set(history) == {"epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "images_per_s",
                            "elapsed_s"}
    assert history["train_loss"][-1] < history["train_loss"][0] - 0.02
    assert after["loss"] < before["loss"] - 0.02
    on_test = evaluate(model, torch.utils.data.DataLoader(test_ds, batch_size=100))
    assert on_test["acc"] == pytest.approx(history["test_acc"][-1])  # evaluate() is what fit reports
    assert not model.training


def test_evaluate_matches_a_hand_computed_mean() -> None:
    model = vit_edu.create_model("vit_nano_patch4_32", num_classes=8).eval()
    x, y = torch.randn(10, 3, 32, 32), torch.randint(0, 8, (10,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)  # 4 + 4 + 2
    got = evaluate(model, loader)
    with torch.no_grad():
        logits = model(x)
    assert got["loss"] == pytest.approx(nn.functional.cross_entropy(logits, y).item(), rel=1e-5)
    assert got["acc"] == pytest.approx((logits.argmax(-1) == y).float().mean().item())


def test_time_budget_stops_cleanly_and_still_saves(tmp_path) -> None:
    cfg = tiny_config(tmp_path, epochs=50, time_budget_s=1e-3)
    model, history = fit(cfg, log=quiet)
    assert len(history["epoch"]) == 1 and history["epoch"][0] < 1  # stopped inside the first epoch
    assert not math.isnan(history["test_acc"][0])  # ... but still evaluated
    ckpt = load_checkpoint(Path(cfg.out_dir) / "last.pt")
    assert ckpt["extra"]["stopped_early"] is True


# ------------------------------------------------------------------------------------------- checkpoints
def _state(model: nn.Module) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_checkpoint_loads_with_weights_only_and_restores_rng(tmp_path) -> None:
    model = vit_edu.create_model("vit_nano_patch4_32", num_classes=8)
    opt = T.build_optimizer(model, 1e-3, 0.05)
    sched = T.build_scheduler(opt, 2, 10)
    cfg = tiny_config(tmp_path)
    path = save_checkpoint(tmp_path / "c.pt", model, opt, sched, epoch=3, history={"epoch": [1.0]}, train_config=cfg)
    raw = torch.load(path, weights_only=True)  # no pickled code anywhere in it
    assert raw["epoch"] == 3 and raw["config"]["train"] == cfg.to_dict()
    assert vit_edu.ViTConfig.from_dict(raw["config"]["model"]) == model.config
    expected_next = (torch.rand(3), torch.tensor(__import__("numpy").random.rand(2)), __import__("random").random())
    set_rng_state(raw["rng"])  # back to the state at saving: the same "random" numbers come again
    again = (torch.rand(3), torch.tensor(__import__("numpy").random.rand(2)), __import__("random").random())
    torch.testing.assert_close(again[0], expected_next[0])
    torch.testing.assert_close(again[1], expected_next[1])
    assert again[2] == expected_next[2]


@pytest.mark.parametrize("fail_in", ["torch.save", "os.replace"])
def test_checkpoint_write_is_atomic(tmp_path, monkeypatch, fail_in) -> None:
    model = vit_edu.create_model("vit_nano_patch4_32", num_classes=8)
    path = tmp_path / "last.pt"
    save_checkpoint(path, model, epoch=1)
    old_bytes = path.read_bytes()
    with torch.no_grad():
        model.head.weight.add_(1.0)

    def crash(*args, **kwargs):
        if fail_in == "torch.save":
            args[1].write(b"half a checkpoint")  # bytes reach the temp file, then the "power cut"
        raise OSError(f"simulated crash in {fail_in}")

    if fail_in == "torch.save":
        monkeypatch.setattr(torch, "save", crash)
    else:
        monkeypatch.setattr(os, "replace", crash)  # what vit_edu.fileio.atomic_write calls
    with pytest.raises(OSError, match="simulated crash"):
        save_checkpoint(path, model, epoch=2)
    monkeypatch.undo()
    assert path.read_bytes() == old_bytes  # the old checkpoint is untouched ...
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # ... and no temp file is left behind
    assert load_checkpoint(path)["epoch"] == 1


def test_load_checkpoint_rejects_other_files(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    torch.save({"a": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a vit_edu training checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


@pytest.mark.parametrize("fresh_data", [False, True], ids=["same-images", "fresh-images"])
def test_resume_is_exact(tmp_path, fresh_data) -> None:
    """2 epochs straight == 1 epoch, stop, resume for the 2nd: bitwise, with dropout and augmentation on
    (so the restored RNG states matter) and the data order drawn from (seed, epoch); with fresh_data the
    2nd epoch's images are drawn from (data seed, epoch) and must be the same after a resume too."""
    kw = dict(model_overrides={"dropout": 0.1}, augment=True, epochs=2, fresh_data=fresh_data)
    straight, h_straight = fit(tiny_config(tmp_path / "a", **kw), log=quiet)

    cfg_b = tiny_config(tmp_path / "b", **kw)
    fit(TrainConfig.from_dict({**cfg_b.to_dict(), "stop_after_epochs": 1}), log=quiet)
    ckpt = Path(cfg_b.out_dir) / "last.pt"
    assert load_checkpoint(ckpt)["epoch"] == 1
    torch.manual_seed(12345)  # whatever the RNG is now, resume must restore the saved one
    resumed, h_resumed = fit(cfg_b, resume=ckpt, log=quiet)

    a, b = straight.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"
    for key in ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr"):
        assert h_resumed[key] == h_straight[key], key
    # and resuming really started from the checkpoint, not from scratch: a fresh 1-epoch run differs
    assert not torch.equal(a["head.weight"], fit(tiny_config(tmp_path / "c", **{**kw, "epochs": 1}),
                                                 log=quiet)[0].state_dict()["head.weight"])


def test_fresh_data_draws_new_images_each_epoch_and_a_larger_lr_for_the_position_embedding(tmp_path) -> None:
    from vit_edu.training import build_datasets, build_optimizer, build_train_loader, set_loader_epoch

    cfg = tiny_config(tmp_path, fresh_data=True, classes=["circle", "square", "star"], pos_embed_lr_scale=5.0)
    train_ds, test_ds, info = build_datasets(cfg)
    assert info["classes"] == ["circle", "square", "star"] and test_ds.classes == info["classes"]
    loader = build_train_loader(train_ds, cfg)
    set_loader_epoch(loader, cfg.seed, 0)
    first = train_ds.images.clone()
    set_loader_epoch(loader, cfg.seed, 1)
    assert not torch.equal(train_ds.images, first)
    assert not torch.equal(train_ds.images[:4], test_ds.images[:4])
    model = vit_edu.create_model(cfg.model, num_classes=3)
    opt = build_optimizer(model, 1e-3, 0.05, pos_embed_lr_scale=cfg.pos_embed_lr_scale)
    groups = {id(p): g for g in opt.param_groups for p in g["params"]}
    assert groups[id(model.pos_embed)]["lr"] == pytest.approx(5e-3) and groups[id(model.pos_embed)]["weight_decay"] == 0
    assert groups[id(model.head.weight)]["lr"] == pytest.approx(1e-3)
    assert len(build_optimizer(model, 1e-3, 0.05).param_groups) == 2  # scale 1: the usual two groups
    with pytest.raises(ValueError, match="pos_embed_lr_scale"):
        TrainConfig(pos_embed_lr_scale=0.0)


# ------------------------------------------------------------------------------------------- loading
def test_load_model_from_checkpoint_and_safetensors(tmp_path) -> None:
    cfg = tiny_config(tmp_path, epochs=1)
    export = tmp_path / "model.safetensors"
    model, history = fit(cfg, export=export, export_metadata={"command": "pytest"}, log=quiet)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
    for path in (Path(cfg.out_dir) / "last.pt", export):
        loaded = load_model(path)
        assert isinstance(loaded, vit_edu.VisionTransformer) and not loaded.training
        assert loaded.config == model.config
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), expected, rtol=0, atol=0)
    meta = T.read_safetensors_metadata(export)
    assert meta["command"] == "pytest" and float(meta["test_acc"]) == history["test_acc"][-1]
    assert meta["classes"] == '["circle", "square", "triangle", "diamond", "cross", "ring", "crescent", "star"]'
    assert oct(export.stat().st_mode & 0o777) != oct(0o600)  # readable by others, unlike a raw mkstemp file


def test_load_model_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "missing.safetensors")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "bare.safetensors"))
    with pytest.raises(ValueError, match="no 'config'"):
        load_model(tmp_path / "bare.safetensors")


def test_safetensors_metadata_reads_the_header_only(tmp_path) -> None:
    from safetensors.torch import save_file

    from vit_edu.convert import load_safetensors_checked

    path = tmp_path / "m.safetensors"
    save_file({"w": torch.arange(6.0)}, str(path), metadata={"classes": '["a", "b"]'})
    tensors, meta = load_safetensors_checked(path)
    assert torch.equal(tensors["w"], torch.arange(6.0)) and meta == {"classes": '["a", "b"]'}
    assert load_safetensors_checked(path, with_tensors=False) == ({}, meta)
    assert T.read_safetensors_metadata(path) == meta
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(path.read_bytes()[:20])
    with pytest.raises(ValueError, match="cannot read .*expected a .safetensors file"):
        T.read_safetensors_metadata(damaged)


def test_weight_init_flag_reaches_the_model() -> None:
    jax = loop.build_model(TrainConfig(model="vit_nano_patch4_32", weight_init="jax"), 4, 32, 3)
    timm_ = loop.build_model(TrainConfig(model="vit_nano_patch4_32"), 4, 32, 3)
    assert jax.config.weight_init == "jax" and timm_.config.weight_init == "timm"
    assert torch.count_nonzero(jax.head.weight) == 0 and torch.count_nonzero(timm_.head.weight) > 0
    with pytest.raises(ValueError, match="weight_init"):
        TrainConfig(weight_init="xavier")


@pytest.mark.parametrize("budgets", [(5.0,), (12.0,), (5.0, 9.0)], ids=["in-epoch-1", "in-epoch-2", "twice"])
def test_a_time_budget_stop_resumes_to_the_uninterrupted_weights(tmp_path, monkeypatch, budgets) -> None:
    """A run stopped by --time-budget inside an epoch (dropout, drop-path and augmentation drawing from the RNG)
    resumes to bitwise the weights of an uninterrupted run. The clock is a counter, so the stop is reproducible."""
    import itertools
    import types

    kw = dict(model="vit_nano_patch4_32", epochs=2, batch_size=32, n_train=256, n_test=32, progress=False,
              device="cpu", warmup_steps=1, model_overrides={"dropout": 0.1, "drop_path": 0.1}, augment=True, seed=1)
    straight, _ = fit(TrainConfig(**kw, out_dir=str(tmp_path / "a")), log=quiet)
    last = tmp_path / "b" / "last.pt"
    for i, budget in enumerate(budgets):
        clock = itertools.count()
        monkeypatch.setattr(loop, "time", types.SimpleNamespace(monotonic=lambda: float(next(clock))))
        fit(TrainConfig(**kw, out_dir=str(tmp_path / "b"), time_budget_s=budget), resume=last if i else None,
            log=quiet)
        monkeypatch.undo()
        ckpt = load_checkpoint(last)
        position = ckpt["extra"]["stopped_at"]
        assert ckpt["extra"]["stopped_early"] is True and position is not None
        assert 0 < position["batches"] < 8 and ckpt["epoch"] in (0, 1)  # inside an epoch, which is not counted done
    resumed, history = fit(TrainConfig(**kw, out_dir=str(tmp_path / "b")), resume=last, log=quiet)
    assert history["epoch"][-1] == 2
    for k, v in straight.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k


class _Signalled(Exception):
    pass


@pytest.fixture
def sigint_as_on_a_terminal():
    """Ctrl-C raises KeyboardInterrupt, also where the tests run as a background job (SIGINT ignored there)."""
    import signal

    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def _signal_at_steps(monkeypatch, signum: int, steps) -> None:
    """The process sends itself ``signum`` inside the given steps (during gradient clipping): reproducible."""
    import signal

    real, calls = nn.utils.clip_grad_norm_, []

    def clip(*args, **kwargs):
        calls.append(1)
        for _ in range(list(steps).count(len(calls))):
            os.kill(os.getpid(), signum)
        return real(*args, **kwargs)

    monkeypatch.setattr(nn.utils, "clip_grad_norm_", clip)
    assert signal.getsignal(signum) is not signal.SIG_IGN


@pytest.mark.usefixtures("sigint_as_on_a_terminal")
@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_a_signal_finishes_the_step_saves_where_it_stopped_and_resumes_exactly(tmp_path, monkeypatch, signame):
    """Ctrl-C or kill during a step: the step finishes, last.pt records where the epoch stopped, the run then stops
    as the signal would have stopped it (here: KeyboardInterrupt, or the SIGTERM handler in place), the handlers
    are the same after as before, and resuming gives bitwise the weights of an uninterrupted run."""
    import signal

    signum = getattr(signal, signame)
    kw = dict(model="vit_nano_patch4_32", epochs=2, batch_size=32, n_train=256, n_test=32, progress=False,
              device="cpu", warmup_steps=1, model_overrides={"dropout": 0.1, "drop_path": 0.1}, augment=True, seed=1)
    straight, _ = fit(TrainConfig(**kw, out_dir=str(tmp_path / "a")), log=quiet)

    def raise_signalled(signum, frame):
        raise _Signalled

    before = signal.getsignal(signum)
    if signum == signal.SIGTERM:
        before = signal.signal(signal.SIGTERM, raise_signalled)
    try:
        handler = signal.getsignal(signum)
        _signal_at_steps(monkeypatch, signum, [11])  # epoch 2, its third step
        lines = []
        with pytest.raises(KeyboardInterrupt if signum == signal.SIGINT else _Signalled):
            fit(TrainConfig(**kw, out_dir=str(tmp_path / "b")), log=lines.append)
        monkeypatch.undo()
        assert signal.getsignal(signum) is handler
        assert lines[-1] == (f"{signame} received: stopped after 1.38 epochs (saved to {tmp_path / 'b' / 'last.pt'}, "
                             f"--resume continues from there)"), lines
    finally:
        signal.signal(signal.SIGTERM, before) if signum == signal.SIGTERM else None
    last = tmp_path / "b" / "last.pt"
    ckpt = load_checkpoint(last)
    assert ckpt["epoch"] == 1 and ckpt["extra"]["stopped_at"]["batches"] == 3
    resumed, history = fit(TrainConfig(**kw, out_dir=str(tmp_path / "b")), resume=last, log=quiet)
    assert history["epoch"][-1] == 2
    for k, v in straight.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k


@pytest.mark.usefixtures("sigint_as_on_a_terminal")
def test_a_second_signal_stops_at_once(tmp_path, monkeypatch) -> None:
    """Two Ctrl-C in one step: the second raises there, nothing more is saved (last.pt is the end of epoch 1)."""
    import signal

    kw = dict(model="vit_nano_patch4_32", epochs=2, batch_size=32, n_train=256, n_test=32, progress=False,
              device="cpu", out_dir=str(tmp_path))
    _signal_at_steps(monkeypatch, signal.SIGINT, [11, 11])
    with pytest.raises(KeyboardInterrupt):
        fit(TrainConfig(**kw), log=quiet)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt["epoch"] == 1 and ckpt["extra"]["stopped_at"] is None


# ------------------------------------------------------------------------------------------ the command line
CLI_NANO = ["--model", "vit_nano_patch4_32", "--n-train", "64", "--n-test", "32", "--batch-size", "32",
            "--time-budget", "0", "--no-progress", "--device", "cpu"]


def _cli(argv, capsys) -> tuple:
    """(status, stdout, stderr) of ``python -m vit_edu <argv>`` run in this process."""
    from vit_edu.__main__ import main

    try:
        code = main(argv)
    except SystemExit as stop:  # argparse's refusals
        code = stop.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_a_resumed_run_goes_on_in_its_checkpoint_folder(tmp_path, monkeypatch, capsys) -> None:
    """--resume A/run/last.pt from another folder (or after the run folder moved) trains on into that file, not
    into the --out-dir the run recorded (relative to where it started); --out-dir given: there. A longer
    --epochs still passes the warm-up check."""
    (tmp_path / "A").mkdir()
    (tmp_path / "B").mkdir()
    monkeypatch.chdir(tmp_path / "A")
    assert _cli(["train", *CLI_NANO, "--epochs", "2", "--stop-after-epochs", "1", "--out-dir", "run"], capsys)[0] == 0
    monkeypatch.chdir(tmp_path / "B")
    code, out, err = _cli(["train", "--resume", "../A/run/last.pt", "--stop-after-epochs", "1"], capsys)
    assert code == 0, err
    assert "resumed from ../A/run/last.pt after epoch 1; saving to ../A/run/last.pt" in out
    assert load_checkpoint(tmp_path / "A" / "run" / "last.pt")["epoch"] == 2 and not (tmp_path / "B" / "run").exists()
    code, out, err = _cli(["train", "--resume", "../A/run/last.pt", "--epochs", "3", "--out-dir", "elsewhere"], capsys)
    assert code == 0, err
    assert "saving to elsewhere/last.pt" in out
    assert load_checkpoint(tmp_path / "B" / "elsewhere" / "last.pt")["epoch"] == 3
    assert load_checkpoint(tmp_path / "A" / "run" / "last.pt")["epoch"] == 2  # left as it was


def test_resume_accepts_the_values_the_run_already_has(tmp_path, capsys) -> None:
    """A flag given with the value the run used (a None stored: the default it stands for) is no change; one that
    differs is refused, showing the run's effective value, not None."""
    last = tmp_path / "run" / "last.pt"
    code, _, err = _cli(["train", *CLI_NANO, "--epochs", "3", "--stop-after-epochs", "1", "--out-dir",
                         str(last.parent)], capsys)
    assert code == 0, err
    same = ["--image-size", "32", "--data-seed", "0", "--fresh-data", "--weight-init", "timm", "--n-train", "64"]
    code, out, err = _cli(["train", "--resume", str(last), *same, "--stop-after-epochs", "1"], capsys)
    assert code == 0, err
    assert load_checkpoint(last)["epoch"] == 2 and "changed:" not in out
    other = ["--image-size", "64", "--data-seed", "5", "--no-fresh-data", "--weight-init", "jax"]
    code, out, err = _cli(["train", "--resume", str(last), *other], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "epoch" not in out, err
    for words in ("--image-size 64 (the checkpoint has 32)", "--data-seed 5 (the checkpoint has 0)",
                  "--fresh-data off (the checkpoint has on)", "--weight-init jax (the checkpoint has timm)"):
        assert words in lines[0], lines[0]
    assert "None" not in lines[0]


def test_effective_values_fill_in_what_none_stands_for() -> None:
    plain, spelled = TrainConfig(), TrainConfig(image_size=32, data_seed=0, fresh_data=True, weight_init="timm",
                                                n_train=20_000, n_test=2_000, classes=list(T.data.SHAPE_CLASSES))
    allowed, refused = T.resume_changes(plain.to_dict(), spelled)
    assert allowed == {} and refused == {}
    assert TrainConfig(dataset="mnist", model="vit_nano_patch4_32").effective("image_size") == 28
    assert TrainConfig(dataset="cifar10").effective("fresh_data") is False
    assert TrainConfig(dataset="cifar10").effective("n_train") is None  # the data would have to be read


def test_a_warm_up_longer_than_the_run_is_refused(tmp_path, capsys) -> None:
    """The lr would still be rising when the run ends: refused before any work, in TrainConfig (every entry point)."""
    for warmup in (5.0, 2.0):
        with pytest.raises(ValueError, match=r"^TrainConfig\.warmup_epochs must be less than the run's epochs \(2\)"):
            TrainConfig(epochs=2, warmup_epochs=warmup)
    assert TrainConfig(epochs=2, warmup_epochs=1.5).warmup_epochs == 1.5
    assert TrainConfig(epochs=2, warmup_epochs=5.0, warmup_steps=3).warmup_steps == 3  # steps win: epochs unused
    code, out, err = _cli(["train", *CLI_NANO, "--epochs", "2", "--warmup-epochs", "5", "--out-dir",
                           str(tmp_path / "run")], capsys)
    assert code == 2 and "epoch" not in out and not (tmp_path / "run").exists()
    assert err.strip().splitlines() == ["vit_edu train: error: --warmup-epochs (TrainConfig.warmup_epochs) must be "
                                        "less than the run's epochs (2): the warm-up must end before the run does, "
                                        "got 5"]


def test_a_safetensors_export_under_another_name_is_named(tmp_path, capsys) -> None:
    """An export renamed to .pt is recognised by its bytes (no torch pickle warning, no "pickled objects"); an
    export named just .safetensors is refused before the run."""
    import warnings

    from vit_edu.fileio import describe_file, looks_like_safetensors

    export = tmp_path / "w.safetensors"
    fit(tiny_config(tmp_path, epochs=1), export=export, log=quiet)
    renamed = tmp_path / "w.pt"
    renamed.write_bytes(export.read_bytes())
    assert looks_like_safetensors(renamed) and describe_file(renamed).startswith("a .safetensors file")
    assert not looks_like_safetensors(Path(tiny_config(tmp_path).out_dir) / "last.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's "Detected pickle protocol" UserWarning would fail here
        for read in (load_checkpoint, load_model):
            with pytest.raises(ValueError, match=r"w\.pt is a \.safetensors export \(weights only\) under another "
                                                 r"name; .* give it a name that ends in \.safetensors$"):
                read(renamed)
    for argv in (["evaluate", "--checkpoint", str(renamed), "--n", "16"], ["train", "--resume", str(renamed)]):
        code, _, err = _cli(argv, capsys)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and "is a .safetensors export" in lines[0], err
        assert "pickled" not in err and "Warning" not in err
    code, out, err = _cli(["train", *CLI_NANO, "--epochs", "1", "--out-dir", str(tmp_path / "r2"), "--export",
                           str(tmp_path / ".safetensors")], capsys)
    assert code == 2 and "epoch" not in out and not (tmp_path / ".safetensors").exists()
    assert err.strip().splitlines() == [f"vit_edu train: error: --export expects a path ending in .safetensors, "
                                        f"e.g. model.safetensors, got {str(tmp_path / '.safetensors')!r} (a name is "
                                        f"needed before the .safetensors)"]


def test_resume_refuses_a_preset_that_changed_since_the_run_began(tmp_path, monkeypatch) -> None:
    """The resumed model is built from the preset's name: if the preset now means another model whose weights
    have the same shapes (here another LayerNorm eps), loading them would succeed and the run would go on as
    another model. Refused, naming the field and both values."""
    from vit_edu import models

    config = tiny_config(tmp_path, stop_after_epochs=1)
    fit(config, log=quiet)
    last = Path(config.out_dir) / "last.pt"
    monkeypatch.setitem(models.PRESETS, "vit_nano_patch4_32", {**models.PRESETS["vit_nano_patch4_32"], "norm_eps": 1e-5})
    with pytest.raises(ValueError, match=r"norm_eps=1e-06, .* norm_eps=1e-05; expected the same model") as info:
        fit(tiny_config(tmp_path), resume=last, log=quiet)
    assert str(last) in str(info.value)
    assert load_checkpoint(last)["epoch"] == 1  # nothing was trained or saved
    monkeypatch.undo()
    fit(tiny_config(tmp_path), resume=last, log=quiet)  # the same preset: resumes
    assert load_checkpoint(last)["epoch"] == 2


def test_resume_cannot_end_the_schedule_before_what_was_trained(tmp_path, capsys) -> None:
    """--epochs below the epochs a checkpoint has trained used to pass as "a finished run" (with --export: an
    export recording fewer epochs than it had); an epoch a time budget stopped counts as begun."""
    last, export = tmp_path / "run" / "last.pt", tmp_path / "w.safetensors"
    code, _, err = _cli(["train", *CLI_NANO, "--epochs", "4", "--stop-after-epochs", "2", "--out-dir",
                         str(last.parent)], capsys)
    assert code == 0, err
    code, out, err = _cli(["train", "--resume", str(last), "--epochs", "1", "--export", str(export)], capsys)
    assert code == 2 and "epoch" not in out and not export.exists(), err
    assert err.strip().splitlines() == [f"vit_edu train: error: --epochs 1 (TrainConfig.epochs) ends the schedule "
                                        f"before what {last} has trained (2 epochs); expected --epochs >= 2 (or leave "
                                        f"it out: the run's own 4)"]
    ckpt = torch.load(last, weights_only=True)  # as a time budget leaves it: stopped after 1 batch of epoch 3
    ckpt["extra"]["stopped_at"] = {"batches": 1, "epoch_rng": ckpt["rng"]}
    torch.save(ckpt, tmp_path / "stopped.pt")
    with pytest.raises(ValueError, match=r"\(2 epochs and part of epoch 3\); expected --epochs >= 3"):
        stored = {**ckpt["config"]["train"], "epochs": 2, "stop_after_epochs": None, "out_dir": str(tmp_path / "r2")}
        fit(TrainConfig.from_dict(stored), resume=tmp_path / "stopped.pt", export=export, log=quiet)
    assert not export.exists()
    code, out, err = _cli(["train", "--resume", str(last), "--epochs", "2", "--export", str(export)], capsys)
    assert code == 0 and export.is_file(), err  # all it trained, exported again
    assert f"weights exported to {export}" in out and "checkpoint saved" not in out  # none was: nothing trained


def test_a_run_refused_after_the_lock_leaves_no_empty_folders(tmp_path, capsys) -> None:
    """The data are checked once the output folder is locked (the lock creates it): a refusal there removes the
    folders this run created, and only those."""
    flags = [*CLI_NANO, "--n-train", "10", "--epochs", "1"]  # fewer images than one batch: refused after the lock
    code, out, err = _cli(["train", *flags, "--out-dir", str(tmp_path / "runs" / "a")], capsys)
    assert code == 2 and "smaller than one batch" in err, err
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "mine").mkdir()  # there before the run: kept
    code, out, err = _cli(["train", *flags, "--out-dir", str(tmp_path / "mine")], capsys)
    assert code == 2 and (tmp_path / "mine").is_dir()


def test_a_run_diverged_by_the_position_embeddings_lr_names_that_flag(tmp_path: Path) -> None:
    """--pos-lr-scale far too high: the position embedding's group diverges, not the one --lr steps; the message
    names that flag and that group's rate too, not only the 2e-3 of --lr."""
    config = tiny_config(tmp_path, pos_embed_lr_scale=1e30, lr=2e-3, warmup_steps=0, save_checkpoints=False)
    with pytest.raises(T.TrainingDiverged, match=r"at learning rate \d\.\d\de-03; the run diverged, most likely "
                                                 r"because the learning rate is too high \(lower --lr, or "
                                                 r"--pos-lr-scale: the position embedding's rate is \d\.\d\de\+27\)"):
        fit(config, log=quiet)


# ------------------------------------------------------------------------------------------- exports are not lost
def test_an_export_replaces_only_this_runs_own_file_unless_forced(tmp_path, capsys) -> None:
    """--export used to replace whatever was at its path (another run's export, a text file), while last.pt was
    protected. Now refused before any work, unless --force or the file is the export of the run being resumed."""
    import json

    shared, notes = tmp_path / "shared.safetensors", tmp_path / "notes.safetensors"
    notes.write_text("not a model: my notes")
    first = tiny_config(tmp_path, stop_after_epochs=1)
    fit(first, export=shared, log=quiet)
    exported = shared.read_bytes()
    last = Path(first.out_dir) / "last.pt"
    other = tiny_config(tmp_path, out_dir=str(tmp_path / "other"), seed=4, epochs=1)
    with pytest.raises(ValueError, match=rf"shared\.safetensors already exists and is the export of another run "
                                         rf"\(trained in .*run\); to write that run's weights there again resume it "
                                         rf"\(--resume .*last\.pt --export .*\), replace it with --force"):
        fit(other, export=shared, log=quiet)
    with pytest.raises(ValueError, match=r"notes\.safetensors already exists and is a file that is not a vit_edu "
                                         r"export; replace it with --force \(fit\(\.\.\., force=True\)\), or give "
                                         r"another --export"):
        fit(other, export=notes, log=quiet)
    assert shared.read_bytes() == exported and notes.read_text() == "not a model: my notes"
    assert not (tmp_path / "other").exists()  # refused before any work
    code, out, err = _cli(["train", *CLI_NANO, "--epochs", "1", "--out-dir", str(tmp_path / "cli"), "--export",
                           str(notes)], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--force" in err and "epoch" not in out, err
    assert notes.read_text() == "not a model: my notes"
    # the run that wrote it, resumed: its own export, replaced
    fit(tiny_config(tmp_path), resume=last, export=shared, log=quiet)
    assert shared.read_bytes() != exported and json.loads(T.read_safetensors_metadata(shared)["epochs_done"]) == 2
    # another run forced into the same folder is not the run that wrote the export (other settings: seed)
    fit(tiny_config(tmp_path, seed=9, stop_after_epochs=1), log=quiet, force=True)
    with pytest.raises(ValueError, match=r"is the export of another run"):
        fit(tiny_config(tmp_path, seed=9), resume=last, export=shared, log=quiet)
    code, out, err = _cli(["train", *CLI_NANO, "--epochs", "1", "--out-dir", str(tmp_path / "cli"), "--export",
                           str(notes), "--force"], capsys)
    assert code == 0 and T.read_safetensors_metadata(notes)["format"] == "vit_edu", err


def test_help_of_train_says_what_force_and_export_replace(capsys) -> None:
    code, out, _ = _cli(["train", "--help"], capsys)
    text = " ".join(out.split())
    assert "a file at --export that is not this run's own export" in text
    assert "replaced only when it is this run's own export" in text


def test_saving_a_model_whose_config_was_changed_after_building_is_refused(tmp_path) -> None:
    """model.config.num_classes = 3 after building changed the record, not the head: the file written could not
    be loaded back. Refused before writing, naming the first difference; a head replaced together with its config
    is saved and loads."""
    model = vit_edu.create_model("vit_nano_patch4_32", num_classes=10)
    model.config.num_classes = 3
    for save, path in ((T.export_safetensors, tmp_path / "m.safetensors"),
                       (lambda m, p: save_checkpoint(p, m), tmp_path / "m.pt")):
        with pytest.raises(ValueError, match=r"the model's config does not build this model \(head\.weight has shape "
                                             r"\(10, 64\) in the model but \(3, 64\) in a model built from its "
                                             r"config\), so the file could not be loaded back"):
            save(model, path)
        assert not path.exists()
    model.config.num_classes, model.config.pool = 10, "bogus"
    with pytest.raises(ValueError, match=r"the model's config is not valid any more \(pool must be one of"):
        T.export_safetensors(model, tmp_path / "m.safetensors")
    model.config.pool = "cls"
    model.head = nn.Linear(64, 3)
    model.config.num_classes = 3
    T.export_safetensors(model, tmp_path / "m.safetensors")
    assert load_model(tmp_path / "m.safetensors").config.num_classes == 3


def test_evaluate_and_train_one_epoch_check_the_labels_against_the_outputs() -> None:
    """Labels were never compared with the model's outputs: a headless model was "evaluated", one-hot labels
    broadcast, -100 labels were skipped by the loss and counted wrong, a label K gave torch's IndexError."""
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    x = torch.randn(6, 3, 32, 32)
    model = vit_edu.create_model("vit_nano_patch4_32", num_classes=3)
    loader = lambda y: DataLoader(TensorDataset(x, y), batch_size=3)  # noqa: E731
    good = torch.tensor([0, 1, 2, 0, 1, 2])
    assert 0 <= evaluate(model, loader(good))["acc"] <= 1
    with pytest.raises(ValueError, match=r"evaluate\(\): the model has no classification head \(built with "
                                         r"num_classes=0"):
        evaluate(vit_edu.create_model("vit_nano_patch4_32", num_classes=0), loader(good))
    cases = [(torch.eye(3)[good], r"batch 1: expected labels as class indices, a 1-D integer tensor of length 3 "
                                  r"\(one per image\), got float32 of shape \(3, 3\) \(one-hot or soft labels\? pass "
                                  r"class indices: labels\.argmax\(-1\)\)"),
             (torch.tensor([0, 1, 2, -100, -100, 1]), r"batch 2: labels must lie in \[0, 3\) for the model's 3 "
                                                      r"outputs, got values in \[-100, 1\] \(-100, cross_entropy's "
                                                      r"ignore_index, is not supported"),
             (torch.tensor([0, 1, 2, 3, 0, 0]), r"batch 2: labels must lie in \[0, 3\) for the model's 3 outputs, got "
                                                r"values in \[0, 3\]$")]
    for labels, message in cases:
        with pytest.raises(ValueError, match=r"evaluate\(\), " + message):
            evaluate(model, loader(labels))
    optimizer = T.build_optimizer(model, 1e-3, 0.0)
    before = [p.detach().clone() for p in model.parameters()]
    for labels, message in cases:
        with pytest.raises(ValueError, match=r"train, " + message):
            T.train_one_epoch(model, loader(labels), optimizer, T.build_scheduler(optimizer, 1, 4),
                              nn.CrossEntropyLoss(), torch.device("cpu"))
    assert sum(not torch.equal(a, b) for a, b in zip(before, model.parameters())) > 0  # batch 1 of cases 2, 3 trained
    with pytest.raises(ValueError, match=r"train: the model has no classification head"):
        headless = vit_edu.create_model("vit_nano_patch4_32", num_classes=0)
        T.train_one_epoch(headless, loader(good), T.build_optimizer(headless, 1e-3, 0.0), None,
                          nn.CrossEntropyLoss(), torch.device("cpu"))


def test_schedule_and_optimizer_refuse_values_that_make_nan_rates() -> None:
    model = vit_edu.create_model("vit_nano_patch4_32")
    with pytest.raises(ValueError, match=r"warmup_steps >= 0, total_steps >= 0 .* got warmup_steps=-5"):
        T.warmup_cosine(0, -5, 10)
    for kw, name in ((dict(weight_decay=float("nan")), "weight_decay"), (dict(pos_embed_lr_scale=float("nan")),
                                                                         "pos_embed_lr_scale"),
                     (dict(lr=-1.0), "lr")):
        args = {"lr": 1e-3, "weight_decay": 0.0, **kw}
        with pytest.raises(ValueError, match=rf"build_optimizer: {name} must be a finite number >= 0, got"):
            T.build_optimizer(model, **args)


def test_a_lengthened_resume_steps_at_the_new_schedules_rate(tmp_path, monkeypatch) -> None:
    """--resume with more --epochs recomputes the cosine: the first resumed step must take the new schedule's rate,
    not the one the optimizer state carried over (a finished run's is the old cosine's end, 0: a lost step)."""
    rates, step = [], torch.optim.AdamW.step
    monkeypatch.setattr(torch.optim.AdamW, "step", lambda self, *a, **k: rates.append(self.param_groups[0]["lr"])
                        or step(self, *a, **k))
    config = tiny_config(tmp_path, n_train=128, epochs=2)  # 2 steps per epoch
    fit(config, log=quiet)
    assert rates[-1] > 0 and len(rates) == 4
    rates.clear()
    fit(tiny_config(tmp_path, n_train=128, epochs=4), resume=Path(config.out_dir) / "last.pt", log=quiet)
    expected = [config.lr * loop.warmup_cosine(s, 2, 8) for s in range(4, 8)]
    assert rates == pytest.approx(expected, rel=1e-12)


def test_a_stop_inside_an_epoch_resumes_only_on_as_many_processes(tmp_path) -> None:
    """Under torchrun the DistributedSampler deals an epoch's batches in another order than one process's sampler:
    a run stopped inside an epoch and resumed on another number of processes would skip batches it never trained
    and train others twice. Checkpoints record the number of processes; such a resume is refused, naming it."""
    config = tiny_config(tmp_path, epochs=1, n_train=256, batch_size=32, time_budget_s=1e-3)
    fit(config, log=quiet)
    path = Path(config.out_dir) / "last.pt"
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["extra"]["stopped_at"] and ckpt["extra"]["world_size"] == 1
    ckpt["extra"]["world_size"] = 2  # as a run under torchrun --nproc_per_node=2 records it
    torch.save(ckpt, path)
    with pytest.raises(ValueError, match=r"on 2 process\(es\).*torchrun --nproc_per_node=2"):
        fit(tiny_config(tmp_path, epochs=1, n_train=256, batch_size=32), resume=path, log=quiet)
