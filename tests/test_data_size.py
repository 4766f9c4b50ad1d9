"""Notebook 10's measurement: the small ResNet, the stored data-size sweep, and the sweep's resume logic.

The stored result (vit_edu/assets/data_size_sweep.json) must be the design the docs promise (>= 5 sizes over
>= 100x, every stated seed for every model at every size, one budget rule for all); the verdict the notebook
prints must be the one computed from it; and a tiny sweep into a temp folder must skip finished runs.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest
import torch

from vit_edu.training.cnn import ResNet, ResNetConfig, count_flops, resnet_param_count

ROOT = Path(__file__).resolve().parents[1]
STORED = ROOT / "vit_edu" / "assets" / "data_size_sweep.json"
NOTEBOOK = ROOT / "notebooks" / "10_data_vs_inductive_bias.ipynb"


from vit_edu.training import data_size as sweep_mod  # the sweep's code: benchmarks/data_size_sweep.py runs it


# --------------------------------------------------------------------------------------------- the ResNet
@pytest.mark.parametrize("config", [ResNetConfig(num_classes=8),
                                    ResNetConfig(num_classes=3, widths=(8, 12), blocks=(1, 2), stem_stride=1)])
def test_resnet_shape_and_parameter_count(config: ResNetConfig) -> None:
    torch.manual_seed(0)
    model = ResNet(config)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, config.num_classes)
    assert model.num_parameters() == resnet_param_count(config)
    # no weight decay on biases and BatchNorm: every 1-D parameter, nothing else
    assert model.no_weight_decay() == {n for n, p in model.named_parameters() if p.ndim == 1}


def test_default_resnet_is_comparable_to_the_vit() -> None:
    """The default ResNet and vit_nano_patch4_32: parameters and FLOPs within a factor 1.5 of each other."""
    cnn = ResNet(ResNetConfig(num_classes=8))
    vit = sweep_mod.build("vit", 8, 0)
    p_cnn, p_vit = cnn.num_parameters(), sum(p.numel() for p in vit.parameters())
    f_cnn, f_vit = count_flops(cnn), count_flops(vit)
    assert p_cnn == 71_632 and 1 / 1.5 < p_cnn / p_vit < 1.5
    assert 1 / 1.5 < f_cnn / f_vit < 1.5


# --------------------------------------------------------------------------------------------- the stored sweep
@pytest.fixture(scope="module")
def stored() -> dict:
    return json.loads(STORED.read_text(encoding="utf-8"))


def test_stored_sweep_design(stored: dict) -> None:
    design = stored["design"]
    sizes, seeds = design["sizes"], design["seeds"]
    assert len(sizes) >= 5 and max(sizes) / min(sizes) >= 100
    assert len(seeds) >= 3
    assert {"vit", "cnn"} <= set(design["models"])
    assert stored["task"]["n_test"] >= 2000
    assert "re-registered claim" in stored["claim"]
    s = stored["settings"]
    got = {(r["model"], r["n_train"], r["seed"]) for r in stored["runs"]}
    for model in design["models"]:
        for n in sizes:
            for seed in seeds:
                assert (model, n, seed) in got, f"missing run {model} n={n} seed={seed}"
    for r in stored["runs"]:  # one budget rule for every model: steps depend on n only
        assert r["steps"] == sweep_mod.steps_for(r["n_train"], s["batch_size"], s["epochs"], s["min_steps"],
                                                 s["max_steps"])
        assert 0.0 <= r["test_acc"] <= 1.0
    for key in design["models"]:
        assert stored["models"][key]["parameters"] > 0 and stored["models"][key]["flops_per_image"] > 0


def test_notebook_prints_the_verdict_computed_from_the_json(stored: dict) -> None:
    v = sweep_mod.verdict(stored)
    nb = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    text = "".join("".join(o.get("text", "")) for c in nb["cells"] if c["cell_type"] == "code"
                   for o in c.get("outputs", []))
    m = re.search(r"pre-registered claim holds: (True|False)", text)
    assert m, "the notebook's outputs must print 'pre-registered claim holds: True|False'"
    assert m.group(1) == str(v["holds"])
    for n, ratio in zip(v["sizes"], v["error_ratio"]):
        assert f"{n:>6d} images: error ratio {ratio:.2f}" in text


# --------------------------------------------------------------------------------------------- resume
def test_tiny_sweep_resumes_and_skips_finished_runs(tmp_path: Path) -> None:
    out = tmp_path / "sweep.json"
    tiny = dict(n_test=64, min_steps=2, max_steps=2, epochs=1)
    lines: list = []
    first = sweep_mod.sweep(out, [64, 128], [0], ["cnn", "vit"], overrides=tiny, log=lines.append)
    assert len(first["runs"]) == 4 and all(r["steps"] == 2 for r in first["runs"])
    stored_before = json.loads(out.read_text())
    lines.clear()
    again = sweep_mod.sweep(out, [64, 128], [0, 1], ["cnn"], overrides=tiny, log=lines.append)
    assert "4 runs stored" in lines[0] and "2 to do" in lines[0]  # only seed 1 of the cnn was trained
    assert len(again["runs"]) == 6
    old = {sweep_mod.run_key(r): r for r in stored_before["runs"]}
    for r in again["runs"]:  # the finished runs are kept as they were
        if sweep_mod.run_key(r) in old:
            assert r == old[sweep_mod.run_key(r)]
    with pytest.raises(ValueError, match="other settings"):
        sweep_mod.sweep(out, [64], [0], ["cnn"], overrides={**tiny, "max_steps": 3}, log=lines.append)
    fresh = sweep_mod.sweep(out, [64], [0], ["cnn"], fresh=True, overrides=tiny, log=lines.append)
    assert len(fresh["runs"]) == 1
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())



@pytest.mark.parametrize("flags, words", [
    (["--sizes", "0"], "--sizes expects one or more comma-separated ints >= 1, got [0]"),
    (["--sizes", ""], "--sizes expects one or more comma-separated ints >= 1, got []"),
    (["--seeds", "-1"], "--seeds expects one or more comma-separated ints >= 0, got [-1]"),
    (["--models", "vit,foo"], "--models expects some of ['cnn', 'hybrid', 'vit'], got ['vit', 'foo']"),
    (["--n-test", "0"], "--n-test must be >= 1, got 0"),
    (["--min-steps", "5", "--max-steps", "2"], "--max-steps 2 must be >= --min-steps 5"),
    (["--lr", "nan"], "--lr must be a finite number > 0, got nan"),
    (["--out", "TEXT"], "is not a sweep result (not JSON"),
    (["--out", "EMPTY"], "is not a sweep result: it lacks settings, task, runs, models, design"),
])
def test_sweep_refuses_bad_values_in_one_line_before_any_run(tmp_path, capsys, flags, words) -> None:
    """A bad size, seed, budget or result file: one line naming the flag or file and status 2, before any run
    (no traceback from deep inside, no result file written)."""
    (tmp_path / "TEXT").write_text("{not json")
    (tmp_path / "EMPTY").write_text("{}")
    flags = [str(tmp_path / f) if f in ("TEXT", "EMPTY") else f for f in flags]
    out = tmp_path / "s.json"
    tiny = ["--out", str(out), "--sizes", "8", "--seeds", "0", "--models", "cnn", "--n-test", "16",
            "--min-steps", "1", "--max-steps", "1"]
    assert sweep_mod.main(tiny + flags) == 2
    err = capsys.readouterr().err
    assert err.startswith("data_size_sweep: error: ") and words in err and len(err.splitlines()) == 1, err
    assert not out.exists()

# --------------------------------------------------------------------------------------------- shuffled patches
SHUFFLED = ROOT / "vit_edu" / "assets" / "data_size_sweep_shuffled.json"


def test_patch_shuffle_is_one_fixed_permutation_of_the_tiles() -> None:
    """Against einops: cut into 4x4 tiles, reorder by perm, put back; every pixel kept, the same order for every image."""
    from einops import rearrange

    shuffle = sweep_mod.PatchShuffle(seed=1)
    x = torch.randn(2, 3, 32, 32)
    tiles = rearrange(x, "b c (h p) (w q) -> b (h w) c p q", p=4, q=4)[:, shuffle.perm]
    expected = rearrange(tiles, "b (h w) c p q -> b c (h p) (w q)", h=8)
    got = torch.stack([shuffle(im) for im in x])
    assert torch.equal(got, expected)
    assert sorted(shuffle.perm.tolist()) == list(range(64)) and shuffle.perm.tolist() != list(range(64))
    assert torch.equal(sweep_mod.PatchShuffle(seed=1).perm, shuffle.perm)  # one permutation per seed
    with pytest.raises(ValueError, match="must divide"):
        sweep_mod.PatchShuffle(seed=1, image_size=30)


def test_vit_with_permuted_position_embedding_is_the_same_function_on_shuffled_images() -> None:
    """Why the ViT loses nothing on shuffled patches: permute E_pos like the tiles and the logits are unchanged;
    the CNN's are not."""
    import copy

    shuffle = sweep_mod.PatchShuffle(seed=1)
    vit, cnn = sweep_mod.build("vit", 8, 0).eval(), sweep_mod.build("cnn", 8, 0).eval()
    twin = copy.deepcopy(vit)
    with torch.no_grad():
        twin.pos_embed[:, 1:] = vit.pos_embed[:, 1 + shuffle.perm]
        x = torch.randn(3, 3, 32, 32)
        xs = torch.stack([shuffle(im) for im in x])
        torch.testing.assert_close(twin(xs), vit(x), atol=1e-5, rtol=0)
        assert (cnn(xs) - cnn(x)).abs().max() > 1e-3


def test_stored_shuffled_sweep_matches_the_original_design(stored: dict) -> None:
    shuffled = json.loads(SHUFFLED.read_text(encoding="utf-8"))
    assert shuffled["settings"]["patch_shuffle_seed"] is not None
    assert "patch-shuffled task" in shuffled["claim"]
    got = {(r["model"], r["n_train"], r["seed"]) for r in shuffled["runs"]}
    for n in stored["design"]["sizes"]:
        for seed in stored["design"]["seeds"]:
            assert ("cnn", n, seed) in got, f"missing shuffled cnn n={n} seed={seed}"
        assert any(m == "vit" and size == n for m, size, _ in got), f"no shuffled vit run at n={n}"
    v = sweep_mod.verdict_shuffled(stored, shuffled)  # refuses sweeps that differ in more than the shuffle
    assert v["judged_sizes"]
    with pytest.raises(ValueError, match="patch-shuffle-seed"):
        sweep_mod.verdict_shuffled(stored, stored)
    nb = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    text = "".join("".join(o.get("text", "")) for c in nb["cells"] if c["cell_type"] == "code"
                   for o in c.get("outputs", []))
    m = re.search(r"pre-registered claim \(shuffled patches\) holds: (True|False)", text)
    assert m and m.group(1) == str(v["holds"])
    for n in stored["design"]["sizes"]:
        assert f"{v['ratio_original'][n]:14.2f} {v['ratio_shuffled'][n]:9.2f}" in text
