"""Adapters of torchvision's dataset classes: ImageNet, CIFAR-100 (and CIFAR-10), Flowers-102, Food-101, ImageFolder.

==================  ===========================================  ==========================
adapter             key of sample ``i``                          images redistributable
==================  ===========================================  ==========================
ImageNet            path relative to ``root/split``              no (licence)
                    (``n01440764/x.JPEG``)
CIFAR-100 / -10     ``"train/{i}"`` / ``"test/{i}"``             yes
Flowers-102         ``image_00001.jpg``                          yes
Food-101            ``apple_pie/1005649.jpg``                    yes
ImageFolder         path relative to the folder (``cat/1.jpg``)  no (unknown licence)
==================  ===========================================  ==========================

Their names, splits, default repos and licences are :mod:`imagenet_plus.registry`'s entries.

Every file-backed dataset is read and decoded by the package (see
:func:`imagenet_plus.imageio.decode_bytes`), not by torchvision's loader; the dataset
object supplies only the file list, the labels and the class names.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .._checks import check_choice
from .base import ArrayAdapter, FileAdapter

__all__ = ["ImageNetAdapter", "CIFAR100Adapter", "CIFAR10Adapter", "Flowers102Adapter", "Food101Adapter",
           "ImageFolderAdapter"]

def _tvd():
    import torchvision.datasets as tvd

    return tvd


def _require_dir(root: str | os.PathLike, what: str) -> Path:
    p = Path(root)
    if not p.is_dir():
        raise FileNotFoundError(f"{what}: folder {p} does not exist; pass the folder that holds the dataset in "
                                "torchvision's layout (this package never downloads)")
    return p


def _create_torchvision(cls, root, split: str, download: bool, split_kwargs: dict, **kwargs: Any):
    """torchvision's class ``cls._cls`` over ``root`` (checked first unless downloading), wrapped in ``cls``."""
    check_choice(split, "split", cls.splits)
    if not download:
        _require_dir(root, f"{cls.name} root={root}")
    ds = _wrap_missing(f"{cls._cls}({root}, split={split!r})", getattr(_tvd(), cls._cls), str(root),
                       download=download, **split_kwargs, **kwargs)
    return cls(ds, split)


def _wrap_missing(what: str, fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except (RuntimeError, FileNotFoundError) as e:
        raise FileNotFoundError(f"{what}: the dataset is missing or incomplete ({e}); place the files in "
                                "torchvision's layout under the root folder (this package never downloads)") from e


class ImageFolderAdapter(FileAdapter):
    """Any ``torchvision.datasets.ImageFolder`` / ``DatasetFolder``: keys are paths relative to its root."""

    name = "imagefolder"

    @classmethod
    def create(cls, root, split: str = "train", **kwargs: Any) -> "ImageFolderAdapter":
        """``root/split`` when that folder exists, else ``root`` itself, read with ``ImageFolder``."""
        base = _require_dir(root, f"imagefolder root={root}")
        folder = base / split if (base / split).is_dir() else base
        return cls(_wrap_missing(f"ImageFolder({folder})", _tvd().ImageFolder, str(folder), **kwargs), split)

    @classmethod
    def matches(cls, dataset: Any) -> bool:
        """torchvision's folder datasets, and any dataset with ``samples`` (``(path, label)`` pairs) and ``root``."""
        if isinstance(dataset, _tvd().DatasetFolder):
            return True
        samples, root = getattr(dataset, "samples", None), getattr(dataset, "root", None)
        return isinstance(root, (str, os.PathLike)) and isinstance(samples, (list, tuple)) and \
            all(isinstance(s, (list, tuple)) and len(s) == 2 for s in samples[:1])

    def files(self) -> Sequence[str]:
        return [s[0] for s in self.dataset.samples]

    def key_root(self) -> str:
        return self.dataset.root

    def labels(self) -> np.ndarray:
        return np.asarray([s[1] for s in self.dataset.samples], dtype=np.int64)


class ImageNetAdapter(ImageFolderAdapter):
    """ImageNet 2012: torchvision's ``ImageNet`` (devkit layout) or class folders ``root/{train,val}/<wnid>/``."""

    name = "imagenet"
    _devkit = ("ILSVRC2012_devkit_t12.tar.gz", "meta.bin")

    @classmethod
    def create(cls, root, split: str = "train", **kwargs: Any) -> "ImageNetAdapter":
        check_choice(split, "split", cls.splits)
        base = _require_dir(root, f"imagenet root={root}")
        if any((base / f).is_file() for f in cls._devkit):
            ds = _wrap_missing(f"ImageNet({root}, split={split!r})", _tvd().ImageNet, str(base), split=split, **kwargs)
        else:
            folder = _require_dir(base / split, f"imagenet root={root} split={split!r} (class folders "
                                  f"{split}/<wnid>/*.JPEG, or torchvision's devkit layout)")
            ds = _wrap_missing(f"ImageFolder({folder})", _tvd().ImageFolder, str(folder), **kwargs)
        return cls(ds, split)

    @classmethod
    def matches(cls, dataset: Any) -> bool:
        return isinstance(dataset, _tvd().ImageNet)

    def key_root(self) -> str:
        if isinstance(self.dataset, _tvd().ImageNet):
            return os.path.join(self.dataset.root, self.dataset.split)
        return self.dataset.root

    @property
    def classes(self) -> list[str] | None:
        wnids = getattr(self.dataset, "wnids", None)
        return list(wnids) if wnids is not None else super().classes


class _TorchvisionClass:
    """Created as torchvision's class ``_cls`` over ``(root, split)``, and matched by it."""

    _cls = ""

    @classmethod
    def _split_kwargs(cls, split: str) -> dict:
        return {"split": split}

    @classmethod
    def create(cls, root, split: str = "train", *, download: bool = False, **kwargs: Any):
        return _create_torchvision(cls, root, split, download, cls._split_kwargs(split), **kwargs)

    @classmethod
    def matches(cls, dataset: Any) -> bool:
        return isinstance(dataset, getattr(_tvd(), cls._cls))


class CIFAR100Adapter(_TorchvisionClass, ArrayAdapter):
    """``torchvision.datasets.CIFAR100``: 32x32 RGB arrays, keys ``"{split}/{index}"``."""

    name = "cifar100"
    _cls = "CIFAR100"  # matched before CIFAR10 (the registry's order), of which it is a subclass

    @classmethod
    def _split_kwargs(cls, split: str) -> dict:
        return {"train": split == "train"}

    def _split_of(self, dataset: Any) -> str | None:
        return "train" if dataset.train else "test"

    def array(self, i: int) -> np.ndarray:
        return self.dataset.data[i]

    def labels(self) -> np.ndarray:
        return np.asarray(self.dataset.targets, dtype=np.int64)


class CIFAR10Adapter(CIFAR100Adapter):
    """``torchvision.datasets.CIFAR10``."""

    name = "cifar10"
    _cls = "CIFAR10"


class _TorchvisionFiles(_TorchvisionClass, FileAdapter):
    """Shared body of torchvision's file datasets that list ``_image_files`` and ``_labels``."""

    def _split_of(self, dataset: Any) -> str | None:
        return dataset._split

    def files(self) -> Sequence[str]:
        return [os.fspath(p) for p in self.dataset._image_files]

    def key_root(self) -> str:
        return os.fspath(self.dataset._images_folder)

    def labels(self) -> np.ndarray:
        return np.asarray(self.dataset._labels, dtype=np.int64)


class Flowers102Adapter(_TorchvisionFiles):
    """``torchvision.datasets.Flowers102``: keys ``image_00001.jpg``."""

    name = "flowers102"
    _cls = "Flowers102"


class Food101Adapter(_TorchvisionFiles):
    """``torchvision.datasets.Food101``: keys ``apple_pie/1005649.jpg``."""

    name = "food101"
    _cls = "Food101"
