"""Image folders as users really have them, and models as users really wrap them.

Image folders: hidden files and folders (macOS, Jupyter), files whose names are not of images, links that lead to
a folder twice or from the test split into the train split, EXIF-rotated and transparent images, a --data-root that
is a file, nested folders, upper-case extensions and unicode class names. Models: a checkpoint or export of a model
in DistributedDataParallel and torch.compile, nested in either order, holds the model's own names.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vit_edu.training import TrainConfig
from vit_edu.training.data import get_dataset
from vit_edu.training.data import load_image_checked
from vit_edu.training.loaders import build_datasets


def _save(path: Path, seed: int = 0, size=(8, 8), **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, **kw)
    return path


def _folder(root: Path, layout=None) -> Path:
    """root/<split>/<class>/<i>.png; layout = {split: {class: count}} (default: two classes, both splits)."""
    layout = layout or {"train": {"a": 2, "b": 2}, "test": {"a": 1, "b": 1}}
    for split, classes in layout.items():
        for name, count in classes.items():
            for i in range(count):
                _save(root / split / name / f"{i}.png", seed=hash((split, name, i)) % 1000)
    return root


def _files(ds) -> list:
    return [(Path(p).relative_to(Path(ds.root)).as_posix(), y) for p, y in ds.samples]


def test_hidden_files_and_folders_are_no_data(tmp_path):
    """macOS's ._photo.png (metadata, no picture) and .DS_Store, a Jupyter .ipynb_checkpoints copy inside a class
    folder and a __MACOSX folder beside the classes are neither images nor classes, at any depth."""
    root = _folder(tmp_path / "data")
    (root / "train" / "a" / "._0.png").write_bytes(b"\x00\x05\x16\x07" + b"\0" * 80)  # AppleDouble: not a PNG
    (root / "train" / "a" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    _save(root / "train" / "a" / ".ipynb_checkpoints" / "0-checkpoint.png")  # a copy: would count twice
    _save(root / "train" / "__MACOSX" / "a" / "0.png")
    ds = get_dataset("imagefolder", "train", root=root)
    assert ds.classes == ["a", "b"]
    assert _files(ds) == [("a/0.png", 0), ("a/1.png", 0), ("b/0.png", 1), ("b/1.png", 1)]


def test_files_left_out_for_their_names_are_said(tmp_path, capsys):
    """A .gif or .txt in a class folder is not read: stderr names it, so no image is lost unsaid; .JPG counts."""
    root = _folder(tmp_path / "data")
    _save(root / "train" / "b" / "photo.gif", format="GIF")
    _save(root / "train" / "b" / "upper.JPG", format="JPEG")
    (root / "train" / "a" / "notes.txt").write_text("a note")
    ds = get_dataset("imagefolder", "train", root=root)
    assert ("b/upper.JPG", 1) in _files(ds) and len(ds) == 5
    err = capsys.readouterr().err
    assert "skipping 2 file(s)" in err and "photo.gif" in err and "notes.txt" in err and "upper.JPG" not in err


def test_nested_folders_unicode_names_and_the_test_splits_class_indices(tmp_path):
    """Images in sub-folders of a class belong to it; unicode class names work; a test split whose folders were
    made in another order, with a nested folder, gets the same index per class name as the train split."""
    root = tmp_path / "data"
    for k, name in enumerate(("zèbre", "ábaco", "b")):  # other pixels in every file: no copies across the splits
        _save(root / "train" / name / "deep" / "er" / "0.png", seed=10 + k)
        _save(root / "train" / name / "1.png", seed=20 + k)
    for k, name in enumerate(("b", "zèbre", "ábaco")):  # created in another order
        _save(root / "test" / name / "nested" / "0.png", seed=30 + k)
    config = TrainConfig(dataset="imagefolder", data_root=str(root), n_train=None, n_test=None)
    train, test, info = build_datasets(config)
    assert info["classes"] == sorted(["zèbre", "ábaco", "b"])
    index = {name: i for i, name in enumerate(info["classes"])}
    assert {Path(p).relative_to(root / "test").parts[0]: y for p, y in test.samples} == index
    assert sorted(y for _, y in train.samples) == sorted(list(index.values()) * 2)


@pytest.mark.parametrize("link, target", [("train/a/loop", ".."), ("train/a/more", "../b")])
def test_a_folder_reached_twice_through_a_link_is_refused(tmp_path, link, target):
    """A link to a class folder's parent (a loop) or to another class folder: its images would be read twice,
    those of class b also as class a. Refused, naming the link; a link to a folder outside the split is fine."""
    root = _folder(tmp_path / "data")
    os.symlink(target, root / link)
    with pytest.raises(ValueError, match=r"imagefolder: .*/train/a/(loop|more) leads through a link to .*/train(/b)?, "
                                         r"a folder read already: its images would be read twice"):
        get_dataset("imagefolder", "train", root=root)
    os.remove(root / link)
    outside = _save(tmp_path / "elsewhere" / "x.png").parent
    os.symlink(outside, root / "train" / "a" / "linked")
    assert ("a/linked/x.png", 0) in _files(get_dataset("imagefolder", "train", root=root))


@pytest.mark.parametrize("shared", ["test", "test/a"])
def test_a_test_split_that_holds_training_images_is_refused(tmp_path, shared):
    """test/ (or one of its class folders) a link into train/: the test accuracy would be the training accuracy."""
    root = _folder(tmp_path / "data", {"train": {"a": 2, "b": 2}, "test": {"b": 1}})
    if shared == "test/a":
        os.symlink(root / "train" / "a", root / "test" / "a")
    else:
        import shutil

        shutil.rmtree(root / "test")
        os.symlink(root / "train", root / "test")
    config = TrainConfig(dataset="imagefolder", data_root=str(root), n_train=None, n_test=None)
    with pytest.raises(ValueError, match=r"imagefolder: [24] of the [34] test images are training images too \(e.g. "
                                         r".*test/a/0.png is the file .*train/a/0.png\)"):
        build_datasets(config)


def test_a_test_split_that_holds_copies_of_training_images_is_refused(tmp_path):
    """Byte-for-byte copies under other names (``cp -r``, a photo saved into both splits): refused, naming one copy
    and its original; the same picture saved again in another format is another file and left alone."""
    import shutil

    root = _folder(tmp_path / "data", {"train": {"a": 3, "b": 3}, "test": {"a": 2, "b": 2}})
    config = TrainConfig(dataset="imagefolder", data_root=str(root), n_train=None, n_test=None)
    build_datasets(config)  # apart
    shutil.copyfile(root / "train" / "b" / "2.png", root / "test" / "b" / "holiday.png")
    with pytest.raises(ValueError, match=r"imagefolder: 1 of the 5 test images are byte-for-byte copies of training "
                                         r"images \(e.g. .*test/b/holiday.png = .*train/b/2.png\); .*remove the copies"):
        build_datasets(config)
    os.remove(root / "test" / "b" / "holiday.png")
    _save(root / "test" / "b" / "holiday.bmp", seed=hash(("train", "b", 2)) % 1000)  # the same pixels as a BMP
    build_datasets(config)


def test_a_copy_of_an_image_in_another_class_is_said(tmp_path, capsys):
    """The same bytes in two class folders: learned with both labels. Said on stderr (one line, one example);
    a copy inside its own class is only a duplicate, and nothing is said."""
    import shutil

    root = _folder(tmp_path / "data")
    shutil.copyfile(root / "train" / "a" / "0.png", root / "train" / "a" / "again.png")
    get_dataset("imagefolder", "train", root=root)
    assert "byte-for-byte" not in capsys.readouterr().err
    shutil.copyfile(root / "train" / "a" / "0.png", root / "train" / "b" / "mislabelled.png")
    ds = get_dataset("imagefolder", "train", root=root)
    assert len(ds) == 6
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"imagefolder: 1 image(s) under {root / 'train'} are byte-for-byte copies of images in another "
                   f"class's folder (e.g. b/mislabelled.png = a/0.png): each copy carries another label"], err


def test_images_arrive_upright(tmp_path):
    """A phone's portrait (pixels stored on their side, EXIF orientation 6) arrives as a viewer shows it."""
    stored = np.zeros((4, 8, 3), dtype=np.uint8)  # 8 wide, 4 high; the left half white
    stored[:, :4] = 255
    image = Image.fromarray(stored)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to view"
    image.save(tmp_path / "portrait.jpg", exif=exif.tobytes(), quality=100)
    upright = np.asarray(load_image_checked(str(tmp_path / "portrait.jpg")))
    assert upright.shape == (8, 4, 3)  # 4 wide, 8 high
    assert upright[:3].mean() > 200 and upright[5:].mean() < 50  # the left half turned to the top


def test_what_transparent_pixels_store_is_never_seen(tmp_path):
    """Transparent pixels (here storing pure red) arrive as the grey that normalizes to 0, opaque ones as stored."""
    rgba = np.zeros((6, 6, 4), dtype=np.uint8)
    rgba[..., 0] = 255  # red everywhere, ...
    rgba[2:4, 2:4] = [0, 0, 255, 255]  # ... but only a blue square is opaque
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(rgba, "RGBA").convert("LA").save(tmp_path / "la.png")
    for name in ("rgba.png", "la.png"):
        rgb = np.asarray(load_image_checked(str(tmp_path / name))).astype(int)
        assert (rgb[0, 0] == 128).all(), name
        assert not (rgb[2:4, 2:4] == 128).all(), name  # the opaque square keeps its own value
    assert (np.asarray(load_image_checked(str(tmp_path / "rgba.png")))[2, 2] == [0, 0, 255]).all()


def test_a_data_root_that_is_a_file_says_so(tmp_path):
    (tmp_path / "data.zip").write_bytes(b"PK\x03\x04")
    with pytest.raises(NotADirectoryError, match=r"imagefolder: .*data.zip is a file; expected a folder "
                                                 r"\(--data-root\) that holds train/<class name>/"):
        get_dataset("imagefolder", "train", root=tmp_path / "data.zip")


# ------------------------------------------------------------------------------------------ wrapped models
def test_a_wrapped_models_checkpoint_and_export_hold_its_own_names(tmp_path):
    """DistributedDataParallel and torch.compile nest in either order (keys "module._orig_mod." or
    "_orig_mod.module."); unwrap takes every layer off, so the files load into a plain model."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from vit_edu import create_model
    from vit_edu.training import export_safetensors, load_checkpoint, load_model, save_checkpoint, unwrap

    model = create_model("vit_nano_patch4_32", num_classes=3)
    names = list(model.state_dict())
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        wrapped = {"ddp(compile)": DDP(torch.compile(model)), "compile(ddp)": torch.compile(DDP(model)),
                   "dataparallel(compile(ddp))": torch.nn.DataParallel(torch.compile(DDP(model)))}
        for how, outer in wrapped.items():
            assert unwrap(outer) is model, how
            assert any(k.startswith(("module.", "_orig_mod.")) for k in outer.state_dict()), how  # the wrapper's names
            save_checkpoint(tmp_path / f"{how}.pt", outer)
            assert list(load_checkpoint(tmp_path / f"{how}.pt")["model"]) == names, how
            export_safetensors(outer, tmp_path / f"{how}.safetensors")
            for path in (tmp_path / f"{how}.pt", tmp_path / f"{how}.safetensors"):
                loaded = load_model(path)
                assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items()), path
    finally:
        dist.destroy_process_group()


def test_an_image_folder_loads_in_spawned_workers(tmp_path):
    """DataLoader workers started by "spawn" (macOS's and Windows' default, --workers N) unpickle the dataset: its
    class must be importable by name, not one made inside a function."""
    ds = get_dataset("imagefolder", "train", root=_folder(tmp_path / "data"), image_size=8)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=1, multiprocessing_context="spawn")
    images, labels = next(iter(loader))
    assert images.shape == (4, 3, 8, 8) and labels.tolist() == [0, 0, 1, 1]


def test_class_names_that_differ_only_in_their_unicode_form_are_explained(tmp_path):
    """"café" typed on Linux (NFC: é is one code point) and copied from macOS (NFD: e + a combining accent) look
    alike but are other names: the refusal says why the two lists it prints look the same."""
    import unicodedata

    root = tmp_path / "data"
    for split, form in (("train", "NFC"), ("test", "NFD")):
        for name in ("café", "thé"):
            _save(root / split / unicodedata.normalize(form, name) / "0.png")
    config = TrainConfig(dataset="imagefolder", data_root=str(root), n_train=None, n_test=None)
    with pytest.raises(ValueError, match=r"differ from the train split's .*; expected the same class folders in both; "
                                         r"they differ only in how accented letters are encoded \(Unicode NFC and NFD"):
        build_datasets(config)


# ------------------------------------------------------------------------------------------ deep grey, one scale
def test_float_and_32_bit_grey_images_get_one_fixed_scale_per_mode(tmp_path) -> None:
    """'F' and 'I' images were scaled by each image's own maximum: [0, 1.0001] came out black where [0, 1] was
    grey, one pixel of 300 in an 'I' image moved the whole image to another scale, negatives were clipped. Now one
    scale per mode (I;16 and I: /65535; F: [0, 1]), and values outside it are refused naming file, mode, range."""
    ramp = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)

    def grey(name: str, array: np.ndarray, mode=None) -> np.ndarray:
        path = tmp_path / name
        Image.fromarray(array, mode=mode).save(path)
        return np.asarray(load_image_checked(str(path)))[..., 0]

    exact = grey("f1.tif", ramp, "F")
    np.testing.assert_array_equal(exact, np.round(ramp * 255).astype(np.uint8))
    np.testing.assert_array_equal(grey("f_over.tif", ramp * 1.0001, "F"), exact)  # rounding: the same picture
    with pytest.raises(ValueError, match=r"f1000\.tif is a 32-bit float image \(mode F\) with values in \[0, 1000\]; "
                                         r"expected values in \[0, 1\]"):
        grey("f1000.tif", ramp * 1000, "F")
    a = (np.arange(64).reshape(8, 8) * 3).astype(np.int32)  # 0 .. 189: read at the 16-bit scale, as I;16 is
    b = a.copy()
    b[0, 0] = 300
    np.testing.assert_array_equal(grey("i_a.tif", a)[1:], grey("i_b.tif", b)[1:])  # one pixel moves no other
    np.testing.assert_array_equal(grey("i_a.tif", a), np.round(a / 65535 * 255).astype(np.uint8))
    with pytest.raises(ValueError, match=r"i_neg\.tif is a 32-bit integer image \(mode I\) with values in \[-32, "
                                         r"31\]; it is read as 16-bit data, so expected values in \[0, 65535\]"):
        grey("i_neg.tif", (np.arange(64).reshape(8, 8) - 32).astype(np.int32))
    sixteen = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1024)
    np.testing.assert_array_equal(grey("g16.png", sixteen), np.round(sixteen / 65535 * 255).astype(np.uint8))
    root = _folder(tmp_path / "data")
    Image.fromarray(ramp * 1000, mode="F").save(root / "train" / "a" / "odd.tif")
    with pytest.raises(ValueError, match=r"odd\.tif is a 32-bit float image"):  # up front, named
        get_dataset("imagefolder", "train", root=root)


@pytest.mark.parametrize("broken", ["no test split", "other class names"])
def test_a_test_split_that_cannot_match_is_refused_before_any_image_is_decoded(tmp_path, monkeypatch, broken):
    """A missing test/ folder, or test class folders named otherwise than train's, was found only after every
    training image had been decoded and hashed (minutes for a large folder): both are seen from the folder names."""
    from vit_edu.training import imagefolder

    layout = {"train": {"a": 2, "b": 2}}
    if broken == "other class names":
        layout["test"] = {"a": 1, "B": 1}
    root = _folder(tmp_path / "data", layout)
    decoded = []
    monkeypatch.setattr(imagefolder, "load_image_checked", lambda path: decoded.append(path))
    config = TrainConfig(dataset="imagefolder", data_root=str(root))
    error = FileNotFoundError if broken == "no test split" else ValueError
    with pytest.raises(error, match=r"test does not exist|the test split's classes \['B', 'a'\] differ"):
        build_datasets(config)
    assert decoded == []


def test_the_augmentations_padding_is_the_grey_of_transparent_pixels(tmp_path):
    """--augment pads an image folder's pictures before the random crop: with the mid-grey that transparent pixels
    get (0 after normalization, as the shapes data pad), not black (-1), which the module promised and did not do."""
    root = tmp_path / "data"
    for name in ("a", "b"):
        (root / "train" / name).mkdir(parents=True)
        Image.fromarray(np.full((32, 32, 3), 255, np.uint8)).save(root / "train" / name / "white.png")
    ds = get_dataset("imagefolder", "train", root=root, augment=True)
    torch.manual_seed(0)
    values = torch.cat([ds[0][0].flatten() for _ in range(30)])
    assert values.min() > -0.01, "a padded border came out black"
    assert ((values.abs() < 0.01) | (values > 0.99)).all()  # white picture, grey border only
    assert (values.abs() < 0.01).any()  # some crop was shifted: the border is there
