"""``python -m vit_edu``: help texts, a tiny train run in a subprocess, evaluate, clear errors, dispatch."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

from vit_edu.__main__ import build_parser, main

REPO = Path(__file__).resolve().parent.parent


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run the CLI with pipes (not a terminal), one thread, so it behaves as in a log file or CI."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    env.pop("VIT_EDU_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "vit_edu", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def test_help_lists_every_command(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("train", "evaluate", "demo", "assignments", "grade"):
        assert command in out
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for flag in ("--epochs", "--batch-size", "--lr", "--time-budget", "--resume", "--export", "--n-train"):
        assert flag in out


def test_train_then_evaluate_in_a_subprocess(tmp_path) -> None:
    out_dir, export = tmp_path / "run", tmp_path / "nano.safetensors"
    res = run_cli("train", "--model", "vit_nano_patch4_32", "--epochs", "1", "--n-train", "256", "--n-test", "128",
                  "--batch-size", "64", "--out-dir", str(out_dir), "--export", str(export), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert (out_dir / "last.pt").is_file() and export.is_file()
    assert re.search(r"final test accuracy 0\.\d{4}", res.stdout)
    assert f"checkpoint saved to {out_dir / 'last.pt'}" in res.stdout
    # not a terminal: one line per epoch, no tqdm bars redrawn with carriage returns
    assert "\r" not in res.stdout + res.stderr
    assert "it/s" not in res.stderr

    res = run_cli("evaluate", "--checkpoint", str(out_dir / "last.pt"), "--n", "96", "--seed", "5", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    printed = float(re.search(r"accuracy (\d\.\d{4})", res.stdout).group(1))

    # the same number computed here, in-process, from the exported weights
    import torch

    from vit_edu.training import data, evaluate, load_model

    model = load_model(export)
    ds = data.get_dataset("shapes", split="test", n=96, seed=5)
    expected = evaluate(model, torch.utils.data.DataLoader(ds, batch_size=32))["acc"]
    assert printed == pytest.approx(expected, abs=1e-4)


def test_missing_real_dataset_is_a_clear_error(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.delenv("VIT_EDU_DEBUG", raising=False)
    code = main(["train", "cifar10", "--data-root", str(tmp_path / "nothing_here"), "--epochs", "1",
                 "--out-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2
    assert "cifar10" in err and "not found" in err and "--download" in err
    assert "Traceback" not in err and len(err.splitlines()) <= 3


def test_bad_arguments_exit_nonzero(tmp_path, capsys) -> None:
    assert main(["evaluate", "--checkpoint", str(tmp_path / "missing.pt")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["train", "--model", "vit_nano_patch4_32", "--export", str(tmp_path / "x.pt")]) == 2
    assert "safetensors" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--epochs", "three"])
    assert exit_info.value.code == 2


def test_assignments_and_grade_dispatch_to_their_modules(monkeypatch) -> None:
    calls = []
    for name in ("assignments", "grading"):
        fake = types.ModuleType(f"vit_edu.classroom.{name}")
        fake.main = lambda argv, name=name: calls.append((name, argv)) or 7
        monkeypatch.setitem(sys.modules, f"vit_edu.classroom.{name}", fake)
    assert main(["assignments", "--out", "x"]) == 7
    assert main(["grade", "nb.ipynb", "--help"]) == 7
    assert calls == [("assignments", ["--out", "x"]), ("grading", ["nb.ipynb", "--help"])]


def test_train_flags_map_onto_train_config() -> None:
    from vit_edu.__main__ import train_config_from_args

    args = build_parser().parse_args(["train", "--epochs", "3", "--lr", "0.01", "--time-budget", "0",
                                      "--workers", "2", "--dropout", "0.1"])
    cfg = train_config_from_args(args)
    assert (cfg.epochs, cfg.lr, cfg.time_budget_s, cfg.num_workers) == (3, 0.01, None, 2)
    assert cfg.model_overrides == {"dropout": 0.1} and cfg.dataset == "shapes"
    default = train_config_from_args(build_parser().parse_args(["train"]))
    from vit_edu.training import TrainConfig

    assert default.time_budget_s == 300.0 and default.model == TrainConfig().model


def test_resume_from_the_command_line(tmp_path, capsys) -> None:
    out_dir = tmp_path / "run"
    common = ["--out-dir", str(out_dir), "--no-progress"]
    assert main(["train", "--model", "vit_nano_patch4_32", "--epochs", "2", "--stop-after-epochs", "1",
                 "--n-train", "128", "--n-test", "64", "--batch-size", "64", *common]) == 0
    from vit_edu.training import load_checkpoint

    assert load_checkpoint(out_dir / "last.pt")["epoch"] == 1
    capsys.readouterr()
    assert main(["train", "--resume", str(out_dir / "last.pt"), *common]) == 0
    out = capsys.readouterr().out
    assert "resumed from" in out and "epoch  2.00/2" in out
    ckpt = load_checkpoint(out_dir / "last.pt")
    assert ckpt["epoch"] == 2 and ckpt["config"]["train"]["n_train"] == 128  # the stored settings were kept


def test_demo_writes_figures(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("VIT_EDU_FIGURES", str(tmp_path))  # restored after the test
    assert main(["demo", "--n", "200", "--images", "4", "--figures-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"accuracy on 200 fresh shapes images \(seed 2024\): \d+\.\d\d %", out)
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == ["demo_attention_rollout.png", "demo_pos_embed_similarity.png"]
    for name in written:
        assert f"wrote {tmp_path / name}" in out and (tmp_path / name).stat().st_size > 1000


def _train_parser():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, __import__("argparse")._SubParsersAction))
    return sub.choices["train"]


def test_train_help_states_the_train_config_defaults(capsys) -> None:
    """Every train flag's help states TrainConfig's default, read from the dataclass (one source): change a
    default there and the help follows. There are no command-line defaults of its own."""
    from dataclasses import MISSING, fields

    from vit_edu.__main__ import flag_of, train_fields
    from vit_edu.training import TrainConfig
    from vit_edu.training.config import model_field

    defaults = {f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}
    by_flag = {opt: a for a in _train_parser()._actions for opt in a.option_strings or [a.dest]}

    def shown(field: str) -> str:
        value = defaults[field]
        if value is None:
            none = TrainConfig.__dataclass_fields__[field].metadata["none"]
            assert none, field
            return none.split("{")[0]  # the start of the sentence; the rest is filled in from the dataset
        if isinstance(value, bool):
            return "on" if value else "off"
        return f"{value:g}" if isinstance(value, float) else str(value)

    assert set(by_flag) == {  # the command line's flags, unchanged by building them from TrainConfig's fields
        "-h", "--help", "dataset", "--data-root", "--download", "--image-size", "--device", "--workers", "--model",
        "--epochs", "--batch-size", "--lr", "--weight-decay", "--optimizer", "--warmup-epochs", "--label-smoothing",
        "--seed", "--data-seed", "--n-train", "--n-test", "--augment", "--clutter", "--palette", "--fresh-data",
        "--no-fresh-data",
        "--classes", "--weight-init",
        "--pos-lr-scale", "--dropout", "--out-dir", "--time-budget", "--eval-every", "--resume", "--stop-after-epochs",
        "--export", "--force", "--threads", "--progress", "--no-progress"}
    for field in train_fields():
        text = by_flag[flag_of(field)].help
        if field == "model_overrides":
            assert f"(default: the preset's, {model_field(defaults['model'], {}, 'dropout'):g})" in text
        else:
            assert f"(default: {shown(field)}" in text, (field, text)
        assert by_flag[flag_of(field)].default is None  # "not given": the config's default, or the checkpoint's
    # and the rendered --help says the same (argparse wraps lines, so compare with whitespace squeezed)
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert f"epochs (default: {defaults['epochs']})" in out
    assert f"global batch size (default: {defaults['batch_size']})" in out
    assert f"AdamW weight decay (default: {defaults['weight_decay']:g})" in out


def test_the_command_line_defaults_are_what_the_help_says() -> None:
    """Flags left out give TrainConfig's defaults: `python -m vit_edu train` is `fit(TrainConfig())`."""
    from dataclasses import MISSING, fields

    from vit_edu.__main__ import train_config_from_args
    from vit_edu.training import TrainConfig

    cfg = train_config_from_args(build_parser().parse_args(["train"]))
    for f in fields(TrainConfig):
        if f.default is MISSING or f.name == "out_dir":
            continue
        assert getattr(cfg, f.name) == f.default, f.name
    assert cfg == TrainConfig()


def test_evaluate_tests_a_model_on_the_shapes_it_was_trained_on(tmp_path, capsys) -> None:
    """A checkpoint trained with --classes is evaluated on those classes without being told (and --classes
    can pick them explicitly); a set the model does not know is refused before any work."""
    out_dir = tmp_path / "run"
    code = main(["train", "--model", "vit_nano_patch4_32", "--classes", "circle,square", "--epochs", "1",
                 "--n-train", "128", "--n-test", "64", "--batch-size", "64", "--out-dir", str(out_dir),
                 "--no-progress"])
    assert code == 0, capsys.readouterr().err
    capsys.readouterr()
    ckpt = str(out_dir / "last.pt")
    assert main(["evaluate", "--checkpoint", ckpt, "--n", "40", "--seed", "3"]) == 0
    implicit = capsys.readouterr().out
    assert main(["evaluate", "--checkpoint", ckpt, "--n", "40", "--seed", "3", "--classes", "circle,square"]) == 0
    assert capsys.readouterr().out.split("[")[0] == implicit.split("[")[0]  # same images, same numbers
    assert "(40 images, seed 3)" in implicit
    assert main(["evaluate", "--checkpoint", ckpt, "--n", "40", "--classes", "circle,star"]) == 2
    assert "star" in capsys.readouterr().err
    assert main(["evaluate", "cifar10", "--checkpoint", ckpt, "--classes", "circle"]) == 2
    assert "--classes" in capsys.readouterr().err


def test_evaluate_draws_the_palette_a_model_was_trained_on(tmp_path, capsys, monkeypatch) -> None:
    """A run trained with --palette grey records it (checkpoint and export); evaluate draws its test images
    in grey without being told, and the shipped checkpoint says which palette it was trained on."""
    from vit_edu.training import data as data_module
    from vit_edu.training import stored_palette

    out_dir = tmp_path / "run"
    export = tmp_path / "grey.safetensors"
    code = main(["train", "--model", "vit_nano_patch4_32", "--palette", "grey", "--epochs", "1", "--n-train", "64",
                 "--n-test", "32", "--batch-size", "32", "--out-dir", str(out_dir), "--export", str(export),
                 "--no-progress"])
    assert code == 0, capsys.readouterr().err
    assert stored_palette(out_dir / "last.pt") == "grey" and stored_palette(export) == "grey"
    seen = []
    real = data_module.ShapesDataset.__init__

    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("palette", "colour"))
        real(self, *args, **kwargs)

    monkeypatch.setattr(data_module.ShapesDataset, "__init__", spy)
    assert main(["evaluate", "--checkpoint", str(export), "--n", "16"]) == 0
    assert seen == ["grey"]
    from vit_edu.training import COURSE_CHECKPOINT, pretrained_course_model

    _, info = pretrained_course_model()
    assert info["palette"] == stored_palette(COURSE_CHECKPOINT) == "mottled"


def _final_test_numbers(checkpoint: Path) -> str:
    """The run's own last test loss and accuracy, as evaluate prints them."""
    from vit_edu.training import load_checkpoint

    history = load_checkpoint(checkpoint)["history"]
    return f"loss {history['test_loss'][-1]:.4f}  accuracy {history['test_acc'][-1]:.4f}"


def test_evaluate_draws_the_runs_own_test_set(tmp_path, capsys) -> None:
    """A run trained with --clutter is evaluated on cluttered images (checkpoint and export), and plain evaluate
    draws the run's own test set (its seed and size): it prints the run's final test numbers again."""
    out_dir, export = tmp_path / "run", tmp_path / "clutter.safetensors"
    n_test = "48"
    code = main(["train", "--model", "vit_nano_patch4_32", "--clutter", "8", "--epochs", "1", "--n-train", "128",
                 "--n-test", n_test, "--batch-size", "32", "--time-budget", "0", "--out-dir", str(out_dir),
                 "--export", str(export), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    capsys.readouterr()
    own = _final_test_numbers(out_dir / "last.pt")
    from vit_edu.training.data import SHAPES_DEFAULT_SEEDS

    test_seed = str(SHAPES_DEFAULT_SEEDS["test"])  # the run's: it has no --data-seed
    for source in (out_dir / "last.pt", export):
        for flags in (["--n", n_test, "--seed", test_seed], []):  # as the run drew them; then by default
            assert main(["evaluate", "--checkpoint", str(source), *flags]) == 0
            out = capsys.readouterr().out
            assert f"({n_test} images, seed {test_seed}): {own}" in out, out


def test_evaluate_refuses_a_test_seed_the_run_trained_on(tmp_path, capsys) -> None:
    """A run with --data-seed S draws epoch 1's training images from seed S: evaluate --seed S would score the
    model on them as a "test" set. Refused in one line naming a safe seed; the default is the run's test seed."""
    from vit_edu.training.data import EPOCH_SEED_STRIDE, SHAPES_DEFAULT_SEEDS

    data_seed = SHAPES_DEFAULT_SEEDS["test"]  # the dataset's default test seed: the old evaluate default
    out_dir = tmp_path / "run"
    code = main(["train", "--model", "vit_nano_patch4_32", "--data-seed", str(data_seed), "--epochs", "2",
                 "--n-train", "64", "--n-test", "32", "--batch-size", "32", "--time-budget", "0",
                 "--out-dir", str(out_dir), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    capsys.readouterr()
    ckpt = str(out_dir / "last.pt")
    for epoch in (0, 1):
        seed = data_seed + EPOCH_SEED_STRIDE * epoch
        assert main(["evaluate", "--checkpoint", ckpt, "--n", "16", "--seed", str(seed)]) == 2
        err = capsys.readouterr().err
        assert f"--seed {seed}:" in err and f"(its epoch {epoch + 1})" in err and f"e.g. {data_seed + 1}" in err
        assert len(err.strip().splitlines()) == 1
    assert main(["evaluate", "--checkpoint", ckpt]) == 0
    assert f"seed {data_seed + 1}): {_final_test_numbers(out_dir / 'last.pt')}" in capsys.readouterr().out
    assert main(["evaluate", "--checkpoint", ckpt, "--split", "train", "--n", "16", "--seed", str(data_seed)]) == 0


def test_seeds_are_refused_on_fixed_datasets(tmp_path, capsys) -> None:
    """--data-seed (train) and --seed (evaluate) choose generated shapes images: on a fixed dataset they would
    change nothing, so they are refused before any work, as --clutter and --palette are."""
    root = str(tmp_path / "images")
    assert main(["train", "imagefolder", "--data-root", root, "--data-seed", "5", "--out-dir",
                 str(tmp_path / "run")]) == 2
    assert "--data-seed (TrainConfig.data_seed) 5 is for the generated shapes data" in capsys.readouterr().err
    assert main(["evaluate", "imagefolder", "--data-root", root, "--seed", "5"]) == 2
    err = capsys.readouterr().err
    assert "--seed 5 picks the generated shapes images (shapes only)" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------- evaluate and demo: what they score
def _nano_model(num_classes: int = 8):
    import vit_edu

    return vit_edu.create_model("vit_nano_patch4_32", num_classes=num_classes)


def test_demo_refuses_a_seed_its_model_trained_on(tmp_path, capsys) -> None:
    """The shipped run drew epoch 1's training images from seed 0: demo --seed 0 would call them "fresh" test
    images. Refused as evaluate refuses it, before any figure (or its folder) is written."""
    from vit_edu.training.data import EPOCH_SEED_STRIDE, SHAPES_DEFAULT_SEEDS

    figures = tmp_path / "figures"
    for epoch in (0, 2):
        seed = SHAPES_DEFAULT_SEEDS["train"] + EPOCH_SEED_STRIDE * epoch  # the shipped run has no --data-seed
        assert main(["demo", "--seed", str(seed), "--n", "20", "--images", "2", "--figures-dir", str(figures)]) == 2
        err = capsys.readouterr().err
        assert f"--seed {seed}:" in err and f"(its epoch {epoch + 1})" in err and "the default" in err
        assert len(err.strip().splitlines()) == 1 and not figures.exists()
        assert os.environ.get("VIT_EDU_FIGURES") != str(figures)  # in-process: the environment is left alone


def test_demo_titles_say_which_class_is_predicted_and_which_is_true(tmp_path, capsys, monkeypatch) -> None:
    """A wrong prediction's title names the prediction and, marked as such, the true class (a bare "triangle
    (crescent)" reads either way). The head is rolled so that every confident prediction is wrong."""
    import torch

    from vit_edu import training
    from vit_edu.explain import viz

    real_model, real_plot, seen = training.pretrained_course_model, viz.plot_rollout, []

    def rolled(*args, **kwargs):
        model, info = real_model(*args, **kwargs)
        with torch.no_grad():  # output k now says what output k-1 said: class c is predicted as class c+1
            model.head.weight.copy_(model.head.weight.roll(1, 0))
            model.head.bias.copy_(model.head.bias.roll(1, 0))
        return model, info

    monkeypatch.setattr(training, "pretrained_course_model", rolled)
    monkeypatch.setattr(viz, "plot_rollout", lambda *a, **kw: seen.append(kw["titles"]) or real_plot(*a, **kw))
    monkeypatch.setenv("VIT_EDU_FIGURES", str(tmp_path))
    assert main(["demo", "--n", "20", "--images", "4", "--figures-dir", str(tmp_path)]) == 0
    labels = re.search(r"\(labels: ([^)]*)\)", capsys.readouterr().out).group(1).split(", ")
    (titles,) = seen
    wrong = [t for t in titles if not t.endswith(" (ok)")]
    assert wrong and all(t.endswith(f" (true: {y})") for t, y in zip(titles, labels) if t in wrong), titles


def test_demo_caps_the_rollout_figure(tmp_path, capsys) -> None:
    """--images 400 drew a 8-minute, 80,000-pixel-wide strip: the columns are capped, before any work."""
    from vit_edu.__main__ import DEMO_MAX_IMAGES

    figures = tmp_path / "figures"
    assert main(["demo", "--n", "400", "--images", str(DEMO_MAX_IMAGES + 1), "--figures-dir", str(figures)]) == 2
    err = capsys.readouterr().err
    assert f"--images must be in [1, {DEMO_MAX_IMAGES}]" in err and f"got {DEMO_MAX_IMAGES + 1}" in err
    assert not figures.exists()


def test_demo_help_names_the_figures_folder_it_writes(tmp_path, monkeypatch) -> None:
    """Not "figures/": in the repository the figures go to build/figures/, and $VIT_EDU_FIGURES comes first."""
    import argparse

    from vit_edu.explain import viz

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    demo = sub.choices["demo"]
    text = next(a.help for a in demo._actions if "--figures-dir" in a.option_strings)
    assert "$VIT_EDU_FIGURES" in text and "build/figures/" in text and "figures/ in the current folder" in text
    assert "see --figures-dir" in demo.description
    monkeypatch.delenv("VIT_EDU_FIGURES", raising=False)
    monkeypatch.chdir(REPO)
    assert viz.figures_dir(create=False) == REPO / "build" / "figures"
    monkeypatch.chdir(tmp_path)
    assert viz.figures_dir(create=False) == tmp_path.resolve() / "figures"
    monkeypatch.setenv("VIT_EDU_FIGURES", str(tmp_path / "elsewhere"))
    assert viz.figures_dir(create=False) == tmp_path / "elsewhere"


def test_evaluate_says_when_a_file_records_no_training_settings(tmp_path, capsys) -> None:
    """An export or checkpoint saved without its run's settings (palette, clutter, seeds, classes) is drawn with
    the data's defaults: evaluate says so on stderr instead of scoring it silently on maybe other images."""
    from vit_edu.training import export_safetensors, save_checkpoint
    from vit_edu.training.data import SHAPE_CLASSES

    model = _nano_model()
    bare = [export_safetensors(model, tmp_path / "bare.safetensors"), save_checkpoint(tmp_path / "bare.pt", model)]
    for path in bare:
        assert main(["evaluate", "--checkpoint", str(path), "--n", "8"]) == 0
        out, err = capsys.readouterr()
        assert f"{path} records no training settings (palette, clutter, seeds, classes)" in err
        assert "(8 images, seed 1)" in out
    recorded = tmp_path / "recorded.safetensors"
    export_safetensors(model, recorded, {"classes": list(SHAPE_CLASSES),
                                         "train_config": {"dataset": "shapes", "model": "vit_nano_patch4_32"}})
    assert main(["evaluate", "--checkpoint", str(recorded), "--n", "8"]) == 0
    assert "note" not in capsys.readouterr().err


def test_evaluate_refuses_shapes_for_a_run_on_another_dataset(tmp_path, capsys) -> None:
    """A run recorded as trained on a fixed dataset is not scored on the default shapes (even when its file does
    not list its classes and its outputs happen to number eight); the error gives the command for its own data."""
    from vit_edu.training import TrainConfig, export_safetensors

    train = TrainConfig(dataset="imagefolder", data_root="my images", model="vit_nano_patch4_32").to_dict()
    unlisted = export_safetensors(_nano_model(8), tmp_path / "unlisted.safetensors", {"train_config": train})
    listed = export_safetensors(_nano_model(2), tmp_path / "listed.safetensors",
                                {"train_config": train, "classes": ["cat", "dog"]})
    for path in (unlisted, listed):
        assert main(["evaluate", "--checkpoint", str(path), "--n", "8"]) == 2
        err = capsys.readouterr().err
        assert f"{path} was trained on imagefolder, not on shapes" in err
        assert f"python -m vit_edu evaluate imagefolder --data-root 'my images' --checkpoint {path}" in err
        assert len(err.strip().splitlines()) == 1


def test_evaluate_scores_some_of_a_models_classes(capsys) -> None:
    """--classes circle,square on the eight-class shipped model (as its help offers): only those shapes are
    drawn, and each is scored against all eight outputs (label = the model's index of its class)."""
    import torch

    from vit_edu.training import data, pretrained_course_model

    assert main(["evaluate", "--classes", "square,circle", "--n", "40"]) == 0
    out = capsys.readouterr().out
    assert "(40 images of square, circle only, seed 1)" in out
    printed = float(re.search(r"accuracy (\d\.\d{4})", out).group(1))
    model, info = pretrained_course_model()
    ds = data.ShapesDataset(n=40, seed=1, classes=["square", "circle"], palette=info["palette"])
    with torch.no_grad():
        predicted = model(torch.stack([ds[i][0] for i in range(len(ds))])).argmax(-1)
    truth = torch.tensor([info["classes"].index(ds.classes[int(y)]) for y in ds.labels])
    assert printed == pytest.approx((predicted == truth).float().mean().item(), abs=1e-4)
    assert main(["evaluate", "--classes", "circle,banana"]) == 2  # still: only shapes it knows
    assert "banana" in capsys.readouterr().err


def test_evaluate_names_a_checkpoint_under_an_export_name(tmp_path, capsys) -> None:
    """A .pt checkpoint renamed .safetensors is named as such, not guessed "damaged or cut short"."""
    from vit_edu.training import save_checkpoint

    path = save_checkpoint(tmp_path / "model.safetensors", _nano_model())
    assert main(["evaluate", "--checkpoint", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path} is a torch.save file (a .pt training checkpoint?) under a .safetensors name" in err
    assert "cut short" not in err and len(err.strip().splitlines()) == 1


def test_evaluate_says_when_an_imagefolder_is_not_the_runs(tmp_path, capsys, monkeypatch) -> None:
    """An imagefolder is its folder: a run trained on images/ and evaluated without --data-root reads data/, maybe
    other pictures of the same class names. evaluate says so (and not when the folder is given)."""
    import numpy as np
    from PIL import Image

    from vit_edu.training import TrainConfig, export_safetensors

    for split in ("train", "test"):
        for c, name in enumerate(("cat", "dog")):
            folder = tmp_path / "data" / split / name
            folder.mkdir(parents=True)
            for i in range(2):
                Image.fromarray(np.full((32, 32, 3), 60 * (c + i), np.uint8)).save(folder / f"{i}.png")
    train = TrainConfig(dataset="imagefolder", data_root="images", model="vit_nano_patch4_32").to_dict()
    export = export_safetensors(_nano_model(2), tmp_path / "pets.safetensors",
                                {"train_config": train, "classes": ["cat", "dog"]})
    monkeypatch.chdir(tmp_path)
    assert main(["evaluate", "imagefolder", "--checkpoint", str(export)]) == 0
    out, err = capsys.readouterr()
    assert "on imagefolder test (4 images)" in out
    assert "was trained on the imagefolder under images; this evaluates it on the one under data" in err
    assert main(["evaluate", "imagefolder", "--checkpoint", str(export), "--data-root", "data"]) == 0
    assert "note" not in capsys.readouterr().err


def test_evaluate_image_size_help_states_the_checkpoints_size(tmp_path, capsys) -> None:
    """evaluate draws a checkpoint's images at the size it was built for (not train's "32 for shapes"): a model
    built for 48x48 images is evaluated on 48x48 images without --image-size, as the help now says."""
    import argparse

    import vit_edu
    from vit_edu.training import TrainConfig, export_safetensors

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    text = next(a.help for a in sub.choices["evaluate"]._actions if "--image-size" in a.option_strings)
    assert "(default: the size the checkpoint was built for" in text and "32 for shapes" not in text
    model = vit_edu.create_model("vit_nano_patch4_32", num_classes=8, image_size=48)
    train = TrainConfig(model="vit_nano_patch4_32", image_size=48).to_dict()
    path = export_safetensors(model, tmp_path / "big.safetensors", {"train_config": train})
    assert main(["evaluate", "--checkpoint", str(path), "--n", "8"]) == 0, capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", str(path), "--n", "8", "--image-size", "32"]) == 2
    assert "was built for 48x48 images" in capsys.readouterr().err


def test_sigterm_stops_a_run_with_its_checkpoint_whole_and_named(tmp_path) -> None:
    """`kill` (SIGTERM, how batch systems end a job) during training: one line that names the last checkpoint and
    the command that continues it, status 143, no temp file left; the checkpoint loads and resumes."""
    import signal

    from vit_edu.training import load_checkpoint

    out = tmp_path / "run dir"  # a path with a space: the printed command quotes it
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("VIT_EDU_DEBUG", None)
    proc = subprocess.Popen([sys.executable, "-m", "vit_edu", "train", "--model", "vit_nano_patch4_32", "--epochs",
                             "500", "--batch-size", "32", "--n-train", "64", "--n-test", "32", "--no-progress",
                             "--device", "cpu", "--time-budget", "0", "--out-dir", str(out)],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:  # epoch 2 printed: epoch 1's checkpoint is on disk
            if line.startswith("epoch  2.00/"):
                break
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    last = out / "last.pt"
    assert proc.returncode == 143, (proc.returncode, err)
    assert err.strip().splitlines() == [f"vit_edu train: terminated (SIGTERM); the last saved state of the run is in "
                                        f"{last}; continue with: python -m vit_edu train --resume '{last}'"], err
    assert sorted(p.name for p in out.iterdir()) == ["last.pt"]
    assert 1 <= load_checkpoint(last)["epoch"] < 500


def test_evaluate_split_train_scores_the_runs_own_training_images(tmp_path, capsys, monkeypatch) -> None:
    """A seed's shapes images depend on how many are drawn (and of which classes): evaluate --split train --n 16 of a
    run trained on 64 images must score 16 of those 64, not 16 other images it never saw; --classes picks some of
    them; an --n above the run's is refused."""
    import torch

    import vit_edu.training as training
    from vit_edu.training import data

    out_dir = tmp_path / "run"
    assert main(["train", "--model", "vit_nano_patch4_32", "--classes", "circle,square,ring", "--epochs", "1",
                 "--n-train", "64", "--n-test", "16", "--batch-size", "32", "--time-budget", "0",
                 "--out-dir", str(out_dir), "--no-progress"]) == 0
    capsys.readouterr()
    trained = data.ShapesDataset(n=64, seed=data.SHAPES_DEFAULT_SEEDS["train"], classes=["circle", "square", "ring"])
    seen, evaluate = [], training.evaluate
    monkeypatch.setattr(training, "evaluate", lambda model, loader, *a, **k: seen.append(loader.dataset) or
                        evaluate(model, loader, *a, **k))
    ckpt = str(out_dir / "last.pt")
    for flags, n, labels in ((["--n", "16"], 16, None), (["--classes", "ring,circle", "--n", "10"], 10, (0, 2))):
        assert main(["evaluate", "--checkpoint", ckpt, "--split", "train", *flags]) == 0, capsys.readouterr().err
        ds = seen.pop()
        assert len(ds) == n
        keep = torch.arange(64) if labels is None else torch.isin(trained.labels, torch.tensor(labels)).nonzero()[:, 0]
        assert torch.equal(ds.images, trained.images[keep[:n]]) and torch.equal(ds.labels, trained.labels[keep[:n]])
    assert main(["evaluate", "--checkpoint", ckpt, "--split", "train", "--n", "65"]) == 2
    assert "--n <= 64" in capsys.readouterr().err
