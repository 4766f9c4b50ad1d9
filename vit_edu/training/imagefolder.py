"""Image folders (``root/<split>/<class name>/<image>``): which files a run reads, checked before any work, and the
one image loader (any PIL mode to upright 8-bit RGB, one fixed scale per mode; a file it cannot read, or whose
values do not fit its mode's scale, is one ValueError naming the file).

The classes, files and order are torchvision ImageFolder's (class folders sorted by name, their images at any
depth, sorted by path), with these exceptions:

* hidden entries are no data: a folder such as ``.ipynb_checkpoints`` (Jupyter's copies of the images beside it),
  ``.git`` or macOS's ``__MACOSX``, and a file such as ``.DS_Store`` or ``._photo.jpg`` (macOS's metadata, not a
  picture) are left out at every depth;
* a file whose name is not an image's (``.gif``, ``.heic``, ``.txt``) is left out, and said on stderr;
* a folder reached twice through a link (a link to its own parent, or to another class's folder) is refused: its
  images would be read twice, some of them under the wrong class;
* a test split that holds training images, as the same files (a link) or as byte-for-byte copies, is refused
  (:func:`check_apart`): its accuracy would measure memory, not learning.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from torch.utils.data import Dataset

# The file names torchvision's ImageFolder takes for images (any case: .JPG too).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# The mid-grey that normalizes to 0 (MEAN 0.5): the transparent parts of an image are this, as the padding of the
# augmentation is, never the colour a file happens to store under them.
TRANSPARENT_GROUND = (128, 128, 128)


def _hidden(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"


def _visible_classes(directory: str) -> Tuple[List[str], Dict[str, int]]:
    """ImageFolder's classes without hidden folders (a Jupyter .ipynb_checkpoints folder is not a class)."""
    classes = sorted(e.name for e in os.scandir(directory) if e.is_dir() and not _hidden(e.name))
    if not classes:
        raise FileNotFoundError(f"Couldn't find any class folder in {directory}.")
    return classes, {c: i for i, c in enumerate(classes)}


def image_files(folder: str, class_to_idx: Dict[str, int], extensions: Tuple[str, ...]
                ) -> Tuple[List[Tuple[str, int]], List[str]]:
    """(samples, skipped): (path, class index) of every image under ``folder/<class>/`` at any depth, in
    torchvision's order (class, folder path, file name), and the files left out because their names are not of
    images. Links to folders are followed, but a folder reached twice is a ValueError naming the link."""
    samples: List[Tuple[str, int]] = []
    skipped: List[str] = []
    top = os.path.realpath(folder)
    seen = {top: folder}  # real path -> the path it was first reached by
    for name in sorted(class_to_idx):
        walked = []
        for where, folders, files in os.walk(os.path.join(folder, name), followlinks=True):
            real = os.path.realpath(where)
            if real in seen:  # name the path that goes through a link (the other one may be the folder itself)
                direct = os.path.join(top, os.path.relpath(where, folder)) == real
                raise ValueError(f"imagefolder: {seen[real] if direct else where} leads through a link to {real}, a "
                                 f"folder read already: its images would be read twice, or under another class; "
                                 f"expected every folder once under {folder}: remove the link, or copy the images")
            seen[real] = where
            folders[:] = sorted(f for f in folders if not _hidden(f))
            walked.append((where, [f for f in files if not _hidden(f)]))
        for where, files in sorted(walked):
            for file in sorted(files):
                path = os.path.join(where, file)
                if file.lower().endswith(extensions):
                    samples.append((path, class_to_idx[name]))
                else:
                    skipped.append(path)
    return samples, skipped


class ImageFolderDataset(Dataset):
    """(transform(image), class index) of the images under ``root/<class name>/``, with torchvision ImageFolder's
    attributes (root, classes, class_to_idx, samples, targets). A class of this module, not one made inside a
    function: DataLoader workers started by "spawn" (the default on macOS and Windows) unpickle it by its name."""

    def __init__(self, root: str, classes: List[str], samples: List[Tuple[str, int]],
                 transform: Optional[Callable] = None, digests: Optional[List[str]] = None) -> None:
        self.root, self.classes, self.samples, self.transform = root, list(classes), samples, transform
        self.digests = digests  # a hash of each file's bytes (check_apart), when it was read up front
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.targets = [target for _, target in samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, target = self.samples[index]
        image = load_image_checked(path)
        return (self.transform(image) if self.transform is not None else image), target


def split_classes(split: str, root: Path) -> List[str]:
    """The class folders of root/split (hidden ones left out), checked without reading any image: a root that is a
    file, a missing split or one without class folders is an error naming the layout expected."""
    folder = root / split
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"imagefolder: {root} is a file; expected a folder (--data-root) that holds "
                                 f"{split}/<class name>/*.jpg|png")
    if not folder.is_dir():
        raise FileNotFoundError(
            f"imagefolder: {folder} does not exist; expected the layout {root}/{split}/<class name>/*.jpg|png"
        )
    if not any(p.is_dir() for p in folder.iterdir()):
        raise FileNotFoundError(f"imagefolder: {folder} has no class folders; expected {folder}/<class name>/*.jpg|png")
    try:
        return _visible_classes(str(folder))[0]
    except FileNotFoundError as err:
        raise FileNotFoundError(f"imagefolder: no images found under {folder}/<class name>/ ({err})") from None


def imagefolder_dataset(split: str, root: Path, transform: Optional[Callable] = None) -> ImageFolderDataset:
    """The images under root/split, checked up front: at least two class folders with images, and every image
    decoded once here (a corrupt file is a ValueError naming its path now, not an error mid-epoch)."""
    folder = root / split
    classes = split_classes(split, root)
    class_to_idx = {c: i for i, c in enumerate(classes)}
    hidden = sorted(p.name for p in folder.iterdir() if p.is_dir() and _hidden(p.name))
    if hidden:  # .ipynb_checkpoints, .git, __MACOSX: never a class
        print(f"imagefolder: ignoring hidden folder(s) in {folder}: {', '.join(hidden)}", file=sys.stderr)
    samples, skipped = image_files(str(folder), class_to_idx, IMAGE_EXTENSIONS)
    if skipped:  # no image of the run is lost unsaid
        shown = ", ".join(skipped[:3]) + (f" and {len(skipped) - 3} more" if len(skipped) > 3 else "")
        print(f"imagefolder: skipping {len(skipped)} file(s) under {folder} whose names are not of images "
              f"({', '.join(IMAGE_EXTENSIONS)}): {shown}", file=sys.stderr)
    found = {index for _, index in samples}
    empty = [name for name in classes if class_to_idx[name] not in found]
    if empty:
        raise FileNotFoundError(f"imagefolder: no images found under {folder}/<class name>/ (class folder(s) "
                                f"{', '.join(empty)} hold no image files: {', '.join(IMAGE_EXTENSIONS)})")
    if len(classes) < 2:  # one class: every prediction is right and training reports "100 %"
        raise ValueError(f"imagefolder: {folder} has {len(classes)} class folder {classes}; expected at "
                         f"least two classes, {folder}/<class name>/*.jpg|png")
    digests = []
    for path, _ in samples:  # decode every image now: a corrupt file fails here, named, not mid-epoch
        load_image_checked(path)
        digests.append(file_digest(path))
    first: Dict[str, Tuple[str, int]] = {}
    relabelled = []  # a copy of an image in another class's folder: it is learned (or scored) with both labels
    for (path, target), digest in zip(samples, digests):
        seen = first.setdefault(digest, (path, target))
        if seen[1] != target:
            relabelled.append((path, seen[0]))
    if relabelled:
        path, other = relabelled[0]
        print(f"imagefolder: {len(relabelled)} image(s) under {folder} are byte-for-byte copies of images in another "
              f"class's folder (e.g. {os.path.relpath(path, folder)} = {os.path.relpath(other, folder)}): each "
              f"copy carries another label", file=sys.stderr)
    return ImageFolderDataset(str(folder), classes, samples, transform, digests)


def file_digest(path: str) -> str:
    """A hash of the file's bytes: two files with the same one hold the same image, whatever their names."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_apart(train, test) -> None:
    """Refuse a test split that holds images of the train split: the same files (test/ a link to train/, a class
    folder linked into both) or byte-for-byte copies (``cp -r train test``, a photo saved into both): its accuracy
    would be measured on images the model was trained on. ``train``, ``test``: the datasets of
    :func:`imagefolder_dataset`, or Subsets of them (all the folder's images count)."""
    def files(ds) -> Dict[str, Tuple[str, str]]:  # real path -> (path as listed, digest of its bytes)
        while not hasattr(ds, "samples") and hasattr(ds, "dataset"):
            ds = ds.dataset
        digests = getattr(ds, "digests", None) or [file_digest(path) for path, _ in ds.samples]
        return {os.path.realpath(path): (path, digest) for (path, _), digest in zip(ds.samples, digests)}

    train_files, test_files = files(train), files(test)
    shared = sorted(set(train_files) & set(test_files))
    if shared:
        raise ValueError(f"imagefolder: {len(shared)} of the {len(test_files)} test images are training images too "
                         f"(e.g. {test_files[shared[0]][0]} is the file {train_files[shared[0]][0]}); expected test "
                         f"images the model never trains on, or its test accuracy measures memory, not learning")
    by_digest = {digest: path for path, digest in train_files.values()}
    copies = sorted((path, by_digest[digest]) for path, digest in test_files.values() if digest in by_digest)
    if copies:
        raise ValueError(f"imagefolder: {len(copies)} of the {len(test_files)} test images are byte-for-byte copies "
                         f"of training images (e.g. {copies[0][0]} = {copies[0][1]}); expected test images the model "
                         f"never trains on, or its test accuracy measures memory, not learning: remove the copies "
                         f"from one of the two splits")


class ImageValuesError(ValueError):
    """An image whose pixel values do not fit the fixed scale of its mode (:func:`_to_rgb8`), named with its file."""


# How far a float ("F") image may stray outside [0, 1] and still be read (clipped): float rounding of values
# computed in [0, 1]; 1e-3 is a quarter of one 8-bit level, so what is clipped cannot be seen.
FLOAT_TOLERANCE = 1e-3


def _to_rgb8(image, path: str = "the image"):
    """8-bit RGB from any PIL mode. Grey images of more than 8 bits get one fixed scale per mode, the same for every
    image of a folder (never each image's own maximum, which would give two pictures of one folder two scales):

    * "I;16" (16-bit) and "I" (32-bit integer; older Pillow opens 16-bit PNGs so): read as 16-bit data, 0..65535 ->
      0..255 (PIL's own convert("RGB") clips at 255: a 16-bit photo would be all white). 8-bit values stored in
      such a file come out dark, as they are on this scale. Values outside 0..65535 are an :class:`ImageValuesError`
      naming the file, the mode and the range found.
    * "F" (32-bit float): values in [0, 1] (within FLOAT_TOLERANCE) -> 0..255; any other range is refused so.

    Transparent parts are laid over TRANSPARENT_GROUND: convert("RGB") alone would show whatever colour is stored
    under them."""
    import numpy as np
    from PIL import Image

    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        if image.mode == "F":
            if not (np.isfinite(lo) and np.isfinite(hi)) or lo < -FLOAT_TOLERANCE or hi > 1.0 + FLOAT_TOLERANCE:
                raise ImageValuesError(
                    f"imagefolder: {path} is a 32-bit float image (mode F) with values in [{lo:.6g}, {hi:.6g}]; "
                    f"expected values in [0, 1] (read as 0..255, the same scale for every image): rescale it to "
                    f"[0, 1], or save it as an 8-bit or 16-bit image")
            top = 1.0
        else:
            top = 65535.0
            if lo < 0 or hi > 65535:  # only mode "I" can hold them
                raise ImageValuesError(
                    f"imagefolder: {path} is a 32-bit integer image (mode {image.mode}) with values in [{lo:.0f}, "
                    f"{hi:.0f}]; it is read as 16-bit data, so expected values in [0, 65535] (-> 0..255, the same "
                    f"scale for every image): save it as an 8-bit (mode L or RGB) or 16-bit (I;16) image")
        grey = np.clip(np.round(values / top * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if image.mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, TRANSPARENT_GROUND + (255,)), rgba).convert("RGB")
    return image.convert("RGB")


def _upright(image):
    """The image as a viewer shows it: turned by its EXIF orientation (a phone stores portraits on their side). A
    damaged EXIF block leaves the pixels as stored."""
    from PIL import ImageOps

    try:
        return ImageOps.exif_transpose(image)
    except (OSError, ValueError, TypeError, KeyError, SyntaxError, ZeroDivisionError):
        return image


def load_image_checked(path: str):
    """ImageFolder's loader (PIL, upright, converted to RGB) whose failure is one ValueError naming the file."""
    from PIL import Image

    try:
        with open(path, "rb") as f:
            image = Image.open(f)
            image.load()  # decodes all the pixel data
            return _to_rgb8(_upright(image), path)
    except ImageValuesError:
        raise  # decoded: its values are the problem, said with the file's name
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        lines = str(err).splitlines()
        got = ("a file in no image format PIL knows" if isinstance(err, Image.UnidentifiedImageError)
               else f"{type(err).__name__}: {lines[0] if lines else ''}")
        raise ValueError(f"imagefolder: cannot decode image {path}: expected an image file PIL can read, "
                         f"got {got}") from None
