"""Damaged files, resumes on other data, and inputs that would be refused only after the work (or never): each is
one clear error before anything is trained or replaced."""

from __future__ import annotations

import datetime
import json
import re
import shutil
import struct
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

import vit_edu
from vit_edu.convert import read_state_dict
from vit_edu.explain.explorer import ExplorerData, explore
from vit_edu.training import (COURSE_CHECKPOINT, TrainConfig, evaluate, export_safetensors, fit, load_checkpoint,
                              load_model, save_checkpoint)


def _model(classes: int = 3) -> vit_edu.VisionTransformer:
    torch.manual_seed(0)
    return vit_edu.create_model("vit_nano_patch4_32", num_classes=classes)


def _tiny(tmp_path: Path, **kw) -> TrainConfig:
    base = dict(model="vit_nano_patch4_32", epochs=1, batch_size=32, n_train=64, n_test=32, warmup_steps=1,
                out_dir=str(tmp_path / "run"), progress=False, device="cpu", seed=0)
    base.update(kw)
    return TrainConfig(**base)


def _flip_in_entry(path: Path, entry_part: str = "/data/") -> str:
    """Flip one bit inside the bytes of the largest stored entry whose name holds ``entry_part``; returns its name."""
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if entry_part in i.filename), key=lambda i: i.file_size)
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26: info.header_offset + 30])
    raw[info.header_offset + 30 + name_len + extra_len + 3] ^= 0x40  # the exponent of the first float
    path.write_bytes(bytes(raw))
    return info.filename


# ------------------------------------------------------------------------------------------ 1. damaged files
def test_a_bit_flipped_checkpoint_is_refused_naming_the_file_and_entry(tmp_path) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(path, _model())
    load_checkpoint(path)  # intact: loads
    entry = _flip_in_entry(path)
    for load in (load_checkpoint, load_model, read_state_dict):
        with pytest.raises(ValueError, match=rf"last\.pt.* is damaged: its entry '{entry}' does not match the CRC-32"):
            load(path)


def test_a_bit_flipped_export_is_refused(tmp_path) -> None:
    path = tmp_path / "m.safetensors"
    export_safetensors(_model(), path)
    load_model(path)
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0x40  # inside the last tensor's bytes
    path.write_bytes(bytes(raw))
    for load in (load_model, read_state_dict):
        with pytest.raises(ValueError, match=r"m\.safetensors.* is damaged: its tensor data .* do not match the "
                                             r"tensors_sha256 digest"):
            load(path)


def test_an_export_without_a_digest_loads_with_a_warning_and_the_shipped_one_without(tmp_path) -> None:
    from safetensors.torch import save

    model = _model()
    meta = {"format": "vit_edu", "config": json.dumps(model.config.to_dict())}  # as earlier versions wrote it
    path = tmp_path / "old.safetensors"
    path.write_bytes(save({k: v.contiguous() for k, v in model.state_dict().items()}, metadata=meta))
    with pytest.warns(UserWarning, match=r"old\.safetensors has no digest of its weights"):
        load_model(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_model(COURSE_CHECKPOINT)


def test_random_bytes_are_not_called_pickled_objects(tmp_path) -> None:
    path = tmp_path / "noise.pt"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(ValueError, match="got 5000 bytes of binary data") as info:
        load_checkpoint(path)
    assert "pickled" not in str(info.value)


# ------------------------------------------------------------------------------------------ 2. resume on other data
def _save_png(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(path)


def _image_folder(root: Path, offset: int = 0) -> Path:
    for s, split in enumerate(("train", "test")):
        for c, name in enumerate(("a", "b")):
            for i in range(4 if split == "train" else 2):
                _save_png(root / split / name / f"{i}.png", seed=offset + 100 * s + 10 * c + i)
    return root


def test_resume_on_replaced_training_images_is_refused_unless_forced(tmp_path) -> None:
    root = _image_folder(tmp_path / "data")
    config = _tiny(tmp_path, dataset="imagefolder", data_root=str(root), n_train=None, n_test=None, batch_size=4,
                   image_size=32, epochs=2, stop_after_epochs=1)
    fit(config, log=lambda m: None)
    last = Path(config.out_dir) / "last.pt"
    shutil.copytree(root, tmp_path / "moved")  # the same files in another folder: the same data
    elsewhere = _tiny(tmp_path, dataset="imagefolder", data_root=str(tmp_path / "moved"), n_train=None, n_test=None,
                      batch_size=4, image_size=32, epochs=2, out_dir=str(tmp_path / "r2"))
    shutil.copytree(Path(config.out_dir), tmp_path / "r2")
    said = []
    fit(elsewhere, resume=tmp_path / "r2" / "last.pt", log=said.append)
    assert not any("training data" in line for line in said), said
    _save_png(root / "train" / "a" / "1.png", seed=999)  # same name, same count, another picture
    again = _tiny(tmp_path, dataset="imagefolder", data_root=str(root), n_train=None, n_test=None, batch_size=4,
                  image_size=32, epochs=2)
    with pytest.raises(ValueError, match=r"was trained on other imagefolder training data \(8 training files then, "
                                         r"8 now: 1 changed \(e.g. a/1.png\)\).*--force"):
        fit(again, resume=last, log=lambda m: None)
    said = []
    fit(again, resume=last, log=said.append, force=True)
    assert any("changed: training data: 8 training files then, 8 now: 1 changed" in line for line in said), said


# ------------------------------------------------------------------------------------------ 3. model_overrides
@pytest.mark.parametrize("overrides, name", [({"num_classes": 20}, "num_classes"), ({"image_size": 64}, "image_size"),
                                             ({"in_channels": 1}, "in_channels")])
def test_model_overrides_that_contradict_the_data_are_refused_up_front(tmp_path, overrides, name) -> None:
    with pytest.raises(ValueError, match=rf"TrainConfig.model_overrides\['{name}'\] is .*, but shapes has {name}"):
        fit(_tiny(tmp_path, model_overrides=overrides), log=lambda m: None)
    assert not (tmp_path / "run" / "last.pt").exists()


def test_model_overrides_checked_against_an_image_folder_before_training(tmp_path) -> None:
    root = _image_folder(tmp_path / "data")
    config = _tiny(tmp_path, dataset="imagefolder", data_root=str(root), n_train=None, n_test=None, batch_size=4,
                   image_size=32, model_overrides={"num_classes": 3})
    with pytest.raises(ValueError, match=r"model_overrides\['num_classes'\] is 3, but imagefolder has num_classes 2"):
        fit(config, log=lambda m: None)
    assert not (tmp_path / "run" / "last.pt").exists()


# ------------------------------------------------------------------------------------------ 4. save_checkpoint
@pytest.mark.parametrize("kwargs, error, match", [
    ({"extra": {"best_acc": np.float64(0.91)}}, TypeError, r"extra must hold plain values .* float64"),
    ({"extra": {"when": datetime.datetime(2024, 1, 1)}}, TypeError, r"extra must hold plain values .* datetime"),
    ({"history": {"epoch": [np.float32(1)]}}, TypeError, r"history must hold plain values"),
    ({"epoch": -1}, ValueError, r"epoch must be an int in \[0, \d+\] .*got -1"),
    ({"epoch": 1.5}, ValueError, r"epoch must be an int .*got 1.5"),
])
def test_save_checkpoint_refuses_what_cannot_be_read_back_and_keeps_the_good_file(tmp_path, kwargs, error,
                                                                                  match) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(path, _model(), epoch=3)
    before = path.read_bytes()
    with pytest.raises(error, match=match):
        save_checkpoint(path, _model(), **kwargs)
    assert path.read_bytes() == before and load_checkpoint(path)["epoch"] == 3


# ------------------------------------------------------------------------------------------ 5. export metadata
@pytest.mark.parametrize("key", ["config", "format", "tensors_sha256"])
def test_export_metadata_cannot_replace_the_headers_own_keys(tmp_path, key) -> None:
    with pytest.raises(ValueError, match=rf"the key '{key}' is reserved"):
        export_safetensors(_model(), tmp_path / "m.safetensors", {key: "my notes"})
    assert not (tmp_path / "m.safetensors").exists()


@pytest.mark.parametrize("metadata, error, match", [
    ({"classes": ["cat", "dog"]}, ValueError, r"fit\(export_metadata=...\): the key 'classes' is reserved"),
    ({"train_config": {}}, ValueError, r"the key 'train_config' is reserved"),
    ({"val_acc": np.float32(0.9)}, TypeError, r"fit\(export_metadata=...\): values must be str or plain JSON .*"
                                              r"float32 .* at key 'val_acc'"),
])
def test_fit_checks_export_metadata_before_training(tmp_path, metadata, error, match) -> None:
    said = []
    with pytest.raises(error, match=match):
        fit(_tiny(tmp_path), export=tmp_path / "m.safetensors", export_metadata=metadata, log=said.append)
    assert said == [] and not (tmp_path / "run" / "last.pt").exists()


# ------------------------------------------------------------------------------------------ 6. flags, evaluate
def test_create_model_refuses_a_str_for_pretrained() -> None:
    with pytest.raises(TypeError, match=r"pretrained must be True or False, got 'False' \(str\)"):
        vit_edu.create_model("vit_nano_patch4_32", pretrained="False")


def _loader(labels: torch.Tensor) -> DataLoader:
    return DataLoader(TensorDataset(torch.rand(len(labels), 3, 32, 32), labels), batch_size=4)


def test_evaluate_refuses_a_model_with_nan_weights() -> None:
    model = _model()
    with torch.no_grad():
        model.head.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"evaluate\(\): the model's weights hold NaN or infinite values in 1 tensors "
                                         r"\(head.weight\)"):
        evaluate(model, _loader(torch.tensor([0, 1, 2, 0])))


def test_evaluate_restores_training_mode_when_it_raises() -> None:
    model = _model().train()
    with pytest.raises(ValueError, match="labels must lie in"):
        evaluate(model, _loader(torch.tensor([0, 1, 2, 0, 1, 2, 0, 7])))
    assert model.training


# ------------------------------------------------------------------------------------------ 7. explorer
def test_explorer_refuses_labels_that_are_not_class_indices() -> None:
    model, x = _model(), torch.rand(3, 3, 32, 32)
    with pytest.raises(TypeError, match=r"labels\[0\] must be a class index \(an int\), got 0.7 \(float\)"):
        ExplorerData(model, x, labels=[0.7, 1.2, 2.9])
    with pytest.raises(ValueError, match=r"labels\[2\] must be a class index in \[0, 3\) .*got 5"):
        ExplorerData(model, x, labels=[0, 1, 5])
    data = ExplorerData(model, x, labels=torch.tensor([0, 1, 2]), class_names=("a", "b", "c"))  # tensors are fine
    assert data.labels == [0, 1, 2]
    with pytest.raises(TypeError, match=r"label must be a class index \(an int\), got 'circle'"):
        data.add_image(torch.rand(3, 32, 32), label="circle")
    with pytest.raises(TypeError, match=r"label must be a class index"):
        data.add_image(torch.rand(3, 32, 32), label=1.5)
    assert len(data) == 3


def test_explorer_refuses_class_names_that_do_not_name_the_classes() -> None:
    model, x = _model(), torch.rand(3, 3, 32, 32)
    with pytest.raises(TypeError, match=r"class_names must be a list of str, one per class, got 'abc'"):
        ExplorerData(model, x, class_names="abc")
    with pytest.raises(ValueError, match=r"class_names must name the model's 3 classes, got 1 names"):
        ExplorerData(model, x, class_names=["a"])


@pytest.mark.parametrize("flag", ["interactive", "clickable"])
def test_explore_refuses_str_flags(flag) -> None:
    with pytest.raises(TypeError, match=rf"explore: {flag} must be True or False.*got 'no' \(str\)"):
        explore(_model(), torch.rand(2, 3, 32, 32), **{flag: "no"})


# ------------------------------------------------------------------------------------------ 8. small ones
@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.int8])
def test_evaluate_takes_narrow_integer_labels(dtype) -> None:
    result = evaluate(_model(), _loader(torch.tensor([0, 1, 2, 0], dtype=dtype)))
    assert 0.0 <= result["acc"] <= 1.0


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_evaluate_on_cuda_without_a_gpu_says_so() -> None:
    with pytest.raises(ValueError, match=r"evaluate\(\): device 'cuda' asked for, but this PyTorch sees no CUDA GPU"):
        evaluate(_model(), _loader(torch.tensor([0, 1, 2, 0])), device="cuda")


def test_a_model_on_the_meta_device_is_refused_before_work(tmp_path: Path) -> None:
    """A model built under `with torch.device("meta")` (shapes only) gave raw errors from deep inside:
    "Tensor.item() cannot be called on meta tensors", "Cannot copy out of meta tensor; no data!"."""
    from vit_edu.explain import analysis
    from vit_edu.training import save_checkpoint

    with torch.device("meta"):
        meta = _model()
    images = torch.rand(2, 3, 32, 32)
    calls = {
        "evaluate()": lambda: evaluate(meta, _loader(torch.tensor([0, 1]))),
        "save_checkpoint": lambda: save_checkpoint(tmp_path / "last.pt", meta),
        "export_safetensors": lambda: export_safetensors(meta, tmp_path / "m.safetensors"),
        "explaining the model": lambda: ExplorerData(meta, images),
    }
    for what, call in calls.items():
        with pytest.raises(ValueError, match=rf"{re.escape(what)}: the model's tensors are on the meta device "
                                             r"\(shapes, no values\): \d+ of them, e.g. cls_token"):
            call()
    with pytest.raises(ValueError, match=r"explaining the model: .* meta device"):
        analysis.what_the_model_learned(meta, images, torch.ones(2, 32, 32, dtype=torch.bool))
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize("build, message", [
    (lambda: vit_edu.Mlp(16, 0), r"hidden_dim must be a positive int, got int 0"),
    (lambda: vit_edu.Mlp(16.0, 32), r"dim must be a positive int, got float 16.0"),
    (lambda: vit_edu.PatchEmbed(32, 8, 0, 16), r"in_channels must be a positive int, got int 0"),
    (lambda: vit_edu.PatchEmbed(32, 8, 3.0, 16), r"in_channels must be a positive int, got float 3.0"),
    (lambda: vit_edu.PatchEmbed(32, 8, 3, 0), r"dim must be a positive int, got int 0"),
    (lambda: vit_edu.LinearPatchEmbed(32, 8, 3, -4), r"dim must be a positive int, got int -4"),
    (lambda: vit_edu.Attention(True, 1), r"dim must be a positive int, got bool True"),
])
def test_modules_used_alone_refuse_sizes_that_are_not_positive_ints(build, message) -> None:
    """Mlp(16, 0) was accepted (zero-width layers), PatchEmbed(32, 8, 3.0, 16) failed inside torch.empty."""
    with pytest.raises(ValueError, match=message):
        build()
