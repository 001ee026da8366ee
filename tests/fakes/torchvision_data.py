"""Miniature copies of torchvision datasets, written in each dataset's own on-disk format.

The real torchvision classes load these folders unchanged (``CIFAR100``,
``Flowers102``, ``Food101``, ``ImageNet``, ``ImageFolder``), as in
torchvision's own ``test/test_datasets.py``. Images are small crops (24-48 px,
varied sizes and aspect ratios) of real photographs bundled with
scikit-learn and scikit-image, with a few grayscale and CMYK JPEGs (as in the
real ImageNet) and palette PNGs (in the plain class-folder layout).

The md5 checks of CIFAR and Flowers102 cannot pass on fake files; wrap the
dataset construction in :func:`skip_md5_checks` (it patches ``check_integrity``
in torchvision's own modules to an existence check).

Pickle is used here only because it is CIFAR's upstream format, which
torchvision itself reads.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import tarfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from unittest import mock

import numpy as np
import scipy.io
import torch
from PIL import Image

__all__ = [
    "FakeDataset",
    "photo_crops",
    "skip_md5_checks",
    "make_cifar100",
    "make_flowers102",
    "make_food101",
    "make_imagenet",
    "make_imagefolder",
]

#: Real WordNet ids and names of the first ImageNet classes (the rest are generated).
_IMAGENET_CLASSES = [
    ("n01440764", "tench, Tinca tinca"),
    ("n01443537", "goldfish, Carassius auratus"),
    ("n01484850", "great white shark, white shark, man-eater, man-eating shark, Carcharodon carcharias"),
    ("n01491361", "tiger shark, Galeocerdo cuvieri"),
    ("n01494475", "hammerhead, hammerhead shark"),
    ("n01496331", "electric ray, crampfish, numbfish, torpedo"),
    ("n01498041", "stingray"),
    ("n01514668", "cock"),
]
_FOOD_CLASSES = ["apple_pie", "baby_back_ribs", "baklava", "beef_carpaccio", "beef_tartare", "beet_salad"]


@dataclass
class FakeDataset:
    """What a writer made.

    Attributes:
        root: the folder to pass to the torchvision class as ``root``.
        classes: class names in label order.
        splits: per split, the written samples as ``{key: label}`` (keys as
            the adapters report them).
    """

    root: Path
    classes: list[str]
    splits: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@lru_cache(maxsize=1)
def _photos() -> tuple[np.ndarray, ...]:
    import skimage.data
    from sklearn.datasets import load_sample_images

    photos = list(load_sample_images().images)
    for name in ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry"):
        photos.append(getattr(skimage.data, name)())
    for name in ("camera", "coins"):  # grayscale photographs
        photos.append(np.repeat(getattr(skimage.data, name)()[..., None], 3, axis=-1))
    return tuple(np.ascontiguousarray(p[..., :3], dtype=np.uint8) for p in photos)


def photo_crops(n: int, seed: int, min_size: int = 24, max_size: int = 48, square: int | None = None):
    """``n`` RGB PIL images cropped from real photographs and resized to 24-48 px sides.

    Args:
        n: how many images.
        seed: seed of the crop choices (same seed, same images).
        min_size: smallest output side.
        max_size: largest output side.
        square: if given, every image is ``square x square`` (CIFAR's 32 x 32).
    """
    rng = np.random.default_rng(seed)
    photos = _photos()
    images = []
    for _ in range(n):
        photo = photos[rng.integers(len(photos))]
        h, w = photo.shape[:2]
        ch = int(rng.integers(h // 6, h // 2))
        cw = int(np.clip(ch * np.exp(rng.uniform(-0.6, 0.6)), 8, w - 1))
        y, x = int(rng.integers(0, h - ch)), int(rng.integers(0, w - cw))
        crop = Image.fromarray(photo[y:y + ch, x:x + cw])
        if square is not None:
            size = (square, square)
        else:
            size = (int(rng.integers(min_size, max_size + 1)), int(rng.integers(min_size, max_size + 1)))
        images.append(crop.resize(size, Image.Resampling.BILINEAR))
    return images


def _save(image: Image.Image, path: Path, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "P":
        image = image.quantize(colors=32)
    elif mode != "RGB":
        image = image.convert(mode)
    image.save(path, quality=90) if path.suffix.lower() in (".jpg", ".jpeg") else image.save(path)


def _jpeg_mode(k: int) -> str:
    """Mostly RGB; every 5th grayscale and every 11th CMYK, as some real ImageNet JPEGs are."""
    return "L" if k % 5 == 3 else "CMYK" if k % 11 == 7 else "RGB"


def _class_names(classes, defaults: list[str], prefix: str) -> list[str]:
    if isinstance(classes, int):
        extra = [f"{prefix}{k:03d}" for k in range(max(0, classes - len(defaults)))]
        return (defaults + extra)[:classes]
    return list(classes)


@contextlib.contextmanager
def skip_md5_checks():
    """Patch torchvision's md5 checks (CIFAR, Flowers102) to a file-existence check."""

    def exists(fpath, md5=None) -> bool:
        return os.path.isfile(fpath)

    with mock.patch("torchvision.datasets.cifar.check_integrity", exists), \
            mock.patch("torchvision.datasets.flowers102.check_integrity", exists):
        yield


def make_cifar100(root, n_train: int, n_test: int, seed: int = 0) -> FakeDataset:
    """Write ``root/cifar-100-python/{train,test,meta}`` as the real archive holds them.

    Each split file is a pickled dict with ``data`` (``uint8[N, 3072]``, planar
    RGB rows of 32 x 32 images), ``fine_labels``, ``coarse_labels``,
    ``filenames`` and ``batch_label``; ``meta`` holds ``fine_label_names`` (100)
    and ``coarse_label_names`` (20). Keys are ``"train/{i}"`` / ``"test/{i}"``.
    """
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    fine = [f"fine_{k:02d}" for k in range(100)]
    coarse = [f"coarse_{k:02d}" for k in range(20)]
    out = FakeDataset(Path(root), fine)
    for split, n, s in (("train", n_train, seed), ("test", n_test, seed + 1)):
        images = photo_crops(n, s, square=32)
        data = np.stack([np.asarray(im).transpose(2, 0, 1).reshape(-1) for im in images]) if n else \
            np.zeros((0, 3072), np.uint8)
        labels = [int(v) for v in rng.integers(0, 100, n)]
        entry = {
            "filenames": [f"fake_{split}_{i}.png" for i in range(n)],
            "batch_label": f"{split}ing batch 1 of 1",
            "fine_labels": labels,
            "coarse_labels": [lab // 5 for lab in labels],
            "data": data.astype(np.uint8),
        }
        with open(folder / split, "wb") as f:
            pickle.dump(entry, f, protocol=2)
        out.splits[split] = {f"{split}/{i}": lab for i, lab in enumerate(labels)}
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": fine, "coarse_label_names": coarse}, f, protocol=2)
    return out


def make_flowers102(root, n: int, seed: int = 0) -> FakeDataset:
    """Write ``root/flowers-102/`` with ``jpg/image_XXXXX.jpg``, ``imagelabels.mat`` and ``setid.mat``.

    Image ids ``1..n`` get random labels over the 102 classes (1-based in the
    file, as in the real one) and are dealt, in shuffled order as the real
    ``setid.mat`` lists them, to ``trnid`` / ``valid`` / ``tstid`` (about a
    third each; every split gets at least one image when ``n >= 3``).
    """
    from torchvision.datasets import Flowers102

    rng = np.random.default_rng(seed)
    folder = Path(root) / "flowers-102"
    images = photo_crops(n, seed)
    for k, image in enumerate(images, start=1):
        _save(image, folder / "jpg" / f"image_{k:05d}.jpg", _jpeg_mode(k))
    labels = rng.integers(1, 103, n).astype(np.uint8)
    scipy.io.savemat(folder / "imagelabels.mat", {"labels": labels[None, :]})
    ids = rng.permutation(np.arange(1, n + 1)).astype(np.uint16)
    parts = np.array_split(ids, 3)
    names = {"train": "trnid", "val": "valid", "test": "tstid"}
    scipy.io.savemat(folder / "setid.mat", {names[s]: p[None, :] for s, p in zip(names, parts)})
    out = FakeDataset(Path(root), list(Flowers102.classes))
    for split, part in zip(names, parts):
        out.splits[split] = {f"image_{int(k):05d}.jpg": int(labels[k - 1]) - 1 for k in part}
    return out


def make_food101(root, classes=3, n_per_class: int = 2, n_test_per_class: int | None = None,
                 seed: int = 0) -> FakeDataset:
    """Write ``root/food-101/`` with ``images/<class>/<id>.jpg`` and ``meta/{train,test}.json``.

    Also writes ``meta/classes.txt``, ``meta/labels.txt`` and ``meta/{train,test}.txt`` as
    the real archive has them. The json files list classes in reverse
    alphabetical order, so the sample order (json order) differs from the label
    order (sorted class names), as torchvision's ``Food101`` handles it.

    Args:
        root: output folder.
        classes: class names, or a count (real Food-101 names first).
        n_per_class: training images per class.
        n_test_per_class: test images per class (default ``n_per_class``).
        seed: seed of the image crops and ids.
    """
    names = sorted(_class_names(classes, list(_FOOD_CLASSES), "food_"))
    n_test = n_per_class if n_test_per_class is None else n_test_per_class
    rng = np.random.default_rng(seed)
    folder = Path(root) / "food-101"
    meta = folder / "meta"
    meta.mkdir(parents=True, exist_ok=True)
    ids = rng.choice(np.arange(100000, 4000000), size=len(names) * (n_per_class + n_test), replace=False)
    images = photo_crops(len(ids), seed)
    out = FakeDataset(Path(root), names, {"train": {}, "test": {}})
    split_lists: dict[str, dict[str, list[str]]] = {"train": {}, "test": {}}
    k = 0
    for label, name in reversed(list(enumerate(names))):
        for split, count in (("train", n_per_class), ("test", n_test)):
            rel = []
            for _ in range(count):
                _save(images[k], folder / "images" / name / f"{ids[k]}.jpg", _jpeg_mode(k))
                rel.append(f"{name}/{ids[k]}")
                out.splits[split][f"{name}/{ids[k]}.jpg"] = label
                k += 1
            split_lists[split][name] = rel
    for split, lists in split_lists.items():
        (meta / f"{split}.json").write_text(json.dumps(lists))
        (meta / f"{split}.txt").write_text("".join(f"{r}\n" for rel in lists.values() for r in rel))
    (meta / "classes.txt").write_text("".join(f"{c}\n" for c in names))
    (meta / "labels.txt").write_text("".join(f"{c.replace('_', ' ').capitalize()}\n" for c in names))
    return out


def _synsets(wnids: list[str], words: list[str], extra_parents: int = 2) -> np.ndarray:
    """The devkit's ``synsets`` struct array: leaves (ids 1..C) then a few non-leaf synsets."""
    dtype = [("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("gloss", "O"),
             ("num_children", "O"), ("children", "O"), ("wordnet_height", "O"), ("num_train_images", "O")]
    n = len(wnids) + extra_parents
    arr = np.zeros((n, 1), dtype=dtype)
    for k in range(n):
        leaf = k < len(wnids)
        arr[k, 0] = (
            np.array([[k + 1]], np.uint16),
            wnids[k] if leaf else f"n0999999{k}",
            words[k] if leaf else f"parent synset {k}",
            "a fake gloss",
            np.array([[0 if leaf else 2]], np.uint8),
            np.zeros((1, 0), np.uint8) if leaf else np.array([[1, 2]], np.uint16),
            np.array([[0 if leaf else 1]], np.uint8),
            np.array([[1300 if leaf else 0]], np.uint16),
        )
    return arr


def make_imagenet(root, classes=3, n_per_class: int = 2, n_val_per_class: int | None = None,
                  seed: int = 0, write_meta_bin: bool = True) -> FakeDataset:
    """Write an extracted ImageNet 2012 root as ``torchvision.datasets.ImageNet`` expects it.

    Writes ``ILSVRC2012_devkit_t12.tar.gz`` (``data/meta.mat`` with the
    ``synsets`` struct array, leaves first then non-leaf synsets, and
    ``data/ILSVRC2012_validation_ground_truth.txt``), ``train/<wnid>/<wnid>_<k>.JPEG``
    and ``val/<wnid>/ILSVRC2012_val_XXXXXXXX.JPEG``, and (``write_meta_bin``) the
    parsed ``meta.bin`` exactly as torchvision's ``parse_devkit_archive`` saves it:
    ``torch.save((wnid_to_classes, val_wnids))``, a tuple of a dict of str tuples
    and a list of str, which ``load_meta_file`` reads with ``weights_only=True``.
    Without ``meta.bin`` torchvision parses the devkit itself (its md5 check
    then needs patching: ``torchvision.datasets.imagenet._verify_archive``).

    Args:
        root: output folder.
        classes: WordNet ids, or a count (real first ids and names, then generated ones).
        n_per_class: training images per class.
        n_val_per_class: validation images per class (default ``n_per_class``).
        seed: seed of the image crops and of the validation file order.
        write_meta_bin: also write ``meta.bin``.
    """
    if isinstance(classes, int):
        pairs = list(_IMAGENET_CLASSES[:classes])
        pairs += [(f"n0{2000000 + 7919 * k:07d}", f"fake class {k}") for k in range(classes - len(pairs))]
    else:
        known = dict(_IMAGENET_CLASSES)
        pairs = [(w, known.get(w, f"class {w}")) for w in classes]
    pairs.sort()
    wnids, words = [p[0] for p in pairs], [p[1] for p in pairs]
    n_val = n_per_class if n_val_per_class is None else n_val_per_class
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images = iter(photo_crops(len(wnids) * (n_per_class + n_val), seed))
    out = FakeDataset(root, wnids, {"train": {}, "val": {}})
    k = 0
    for label, wnid in enumerate(wnids):
        for j in range(n_per_class):
            _save(next(images), root / "train" / wnid / f"{wnid}_{1000 + j}.JPEG", _jpeg_mode(k))
            out.splits["train"][f"{wnid}/{wnid}_{1000 + j}.JPEG"] = label
            k += 1
    val_labels = rng.permutation(np.repeat(np.arange(len(wnids)), n_val))
    for v, label in enumerate(val_labels, start=1):
        wnid = wnids[label]
        name = f"ILSVRC2012_val_{v:08d}.JPEG"
        _save(next(images), root / "val" / wnid / name, _jpeg_mode(k))
        out.splits["val"][f"{wnid}/{name}"] = int(label)
        k += 1

    mat = io.BytesIO()
    scipy.io.savemat(mat, {"synsets": _synsets(wnids, words)})
    truth = "".join(f"{int(label) + 1}\n" for label in val_labels).encode()
    with tarfile.open(root / "ILSVRC2012_devkit_t12.tar.gz", "w:gz") as tar:
        for name, payload in (("data/meta.mat", mat.getvalue()),
                              ("data/ILSVRC2012_validation_ground_truth.txt", truth)):
            info = tarfile.TarInfo(f"ILSVRC2012_devkit_t12/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    if write_meta_bin:
        wnid_to_classes = {w: tuple(t.split(", ")) for w, t in zip(wnids, words)}
        val_wnids = [wnids[label] for label in val_labels]
        torch.save((wnid_to_classes, val_wnids), root / "meta.bin")
    return out


def make_imagefolder(root, classes=3, n_per_class: int = 2, n_val_per_class: int | None = None,
                     seed: int = 0) -> FakeDataset:
    """Write the plain class-folder layout ``root/{train,val}/<class>/<file>`` (``ImageFolder``).

    Files are mostly JPEGs (some grayscale), with every 4th a palette PNG, so
    decoding covers the modes real folders hold.
    """
    names = sorted(_class_names(classes, [w for w, _ in _IMAGENET_CLASSES], "class_"))
    n_val = n_per_class if n_val_per_class is None else n_val_per_class
    images = iter(photo_crops(len(names) * (n_per_class + n_val), seed))
    out = FakeDataset(Path(root), names, {"train": {}, "val": {}})
    k = 0
    for split, count in (("train", n_per_class), ("val", n_val)):
        for label, name in enumerate(names):
            for j in range(count):
                png = k % 4 == 2
                fname = f"{name}_{split}_{j:04d}.{'png' if png else 'jpg'}"
                _save(next(images), Path(root) / split / name / fname, "P" if png else _jpeg_mode(k))
                out.splits[split][f"{name}/{fname}"] = label
                k += 1
    return out
