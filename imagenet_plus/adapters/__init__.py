"""Dataset adapters: one small class per supported dataset (see :mod:`imagenet_plus.adapters.base`).

:func:`adapt` picks the adapter of a dataset object; :func:`create_adapter` creates a dataset
from its name, root folder and split (the builder, the CLI and the importer use it). Adding a
dataset to the package means adding one adapter class to :data:`ADAPTERS`.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .._checks import check_choice
from ..errors import AlignmentError
from .base import ArrayAdapter, DatasetAdapter, FileAdapter, KeyedAdapter, LoadedSample, relative_key
from .digits import Digits, DigitsAdapter
from .torchvision import (CIFAR10Adapter, CIFAR100Adapter, Flowers102Adapter, Food101Adapter, ImageFolderAdapter,
                          ImageNetAdapter)

__all__ = ["ADAPTERS", "adapt", "create_adapter", "DatasetAdapter", "FileAdapter", "ArrayAdapter", "KeyedAdapter",
           "SubsetAdapter", "LoadedSample", "Digits", "relative_key", "ImageNetAdapter", "CIFAR100Adapter",
           "CIFAR10Adapter", "Flowers102Adapter", "Food101Adapter", "ImageFolderAdapter", "DigitsAdapter"]

#: Adapter class per dataset name (``--dataset`` choices, ``manifest.dataset`` values).
ADAPTERS: dict[str, type[DatasetAdapter]] = {
    cls.name: cls for cls in (ImageNetAdapter, CIFAR100Adapter, CIFAR10Adapter, Flowers102Adapter, Food101Adapter,
                              ImageFolderAdapter, DigitsAdapter)
}
# Most specific first: ImageNet before the ImageFolder it may be; CIFAR-100 before CIFAR-10.
_MATCH_ORDER = (ImageNetAdapter, CIFAR100Adapter, CIFAR10Adapter, Flowers102Adapter, Food101Adapter,
                ImageFolderAdapter, DigitsAdapter)


class SubsetAdapter(DatasetAdapter):
    """A ``torch.utils.data.Subset`` of an adaptable dataset: the wrapped samples' keys, labels and files."""

    def __init__(self, subset: Any, inner: DatasetAdapter) -> None:
        super().__init__(subset, inner.split)
        self.inner = inner
        self.indices = np.asarray(subset.indices, dtype=np.int64)

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.inner.name

    @property
    def classes(self) -> list[str] | None:
        return self.inner.classes

    def compute_keys(self) -> list[str]:
        keys = self.inner.keys()
        return [keys[int(i)] for i in self.indices]

    def labels(self) -> np.ndarray:
        return np.asarray([self.inner.label(int(i)) for i in self.indices], dtype=np.int64)

    def path(self, i: int) -> str | None:
        return self.inner.path(int(self.indices[i]))

    def read(self, i: int) -> bytes | None:
        return self.inner.read(int(self.indices[i]))

    def load(self, i: int) -> LoadedSample:
        return self.inner.load(int(self.indices[i]))


def adapt(dataset: Any) -> DatasetAdapter:
    """The adapter of ``dataset``: itself if it is one, else the first registered adapter that matches.

    Raises:
        AlignmentError: no adapter matches and the dataset has no ``keys``: the message says how to give it
            keys or an adapter.
    """
    if isinstance(dataset, DatasetAdapter):
        return dataset
    from torch.utils.data import Subset

    if isinstance(dataset, Subset):
        return SubsetAdapter(dataset, adapt(dataset.dataset))
    for cls in _MATCH_ORDER:
        if cls.matches(dataset):
            return cls(dataset)
    if KeyedAdapter.matches(dataset):
        return KeyedAdapter(dataset)
    raise AlignmentError(
        f"cannot tell which sample of {type(dataset).__name__} is which: a store is tied to a dataset by every "
        "sample's key (e.g. its file path), and this class is not one the package knows (torchvision's ImageNet, "
        "ImageFolder, CIFAR, Flowers102, Food101, a Subset of those, or imagenet_plus.adapters.Digits). Give it a "
        "`keys` attribute (one string per sample, in order: the same keys the store records, see "
        "`imagenet-plus info STORE`), pass the dataset it wraps (e.g. `wrapper.inner` when it wraps an "
        "ImageFolder), or pass `adapter=` a subclass of imagenet_plus.adapters.FileAdapter / ArrayAdapter")


def create_adapter(name: str, root: str | os.PathLike | None, split: str = "train", **kwargs: Any) -> DatasetAdapter:
    """Create dataset ``name`` from its ``root`` folder and ``split`` (never downloads) and return its adapter.

    Args:
        name: one of :data:`ADAPTERS` (``imagenet``, ``cifar100``, ``cifar10``, ``flowers102``, ``food101``,
            ``imagefolder``, ``digits``).
        root: the dataset's root folder in torchvision's layout (``digits``: unused).
        split: the split.
        **kwargs: passed to the adapter's ``create`` (e.g. ``image_size`` for digits).

    Raises:
        ArgumentError: unknown name or split.
        FileNotFoundError: the dataset is not under ``root``.
    """
    cls = ADAPTERS[check_choice(name, "dataset", tuple(ADAPTERS))]
    if root is None and cls is not DigitsAdapter:
        raise FileNotFoundError(f"dataset {name!r} needs its root folder (the folder holding it in torchvision's "
                                "layout)")
    return cls.create(root, split, **kwargs)
