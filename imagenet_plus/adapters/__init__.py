"""Dataset adapters: one small class per supported dataset (see :mod:`imagenet_plus.adapters.base`).

:func:`adapt` picks the adapter of a dataset object; :func:`create_adapter` creates a dataset
from its name, root folder and split (the builder, the CLI and the importer use it), and
:func:`create_store_adapter` the user's copy of the data a store was built over. Which datasets
exist, and their splits, repos and licences, is :mod:`imagenet_plus.registry`'s table: adding a
dataset means adding one entry there and one adapter class.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Iterator

import numpy as np

from .. import registry
from ..errors import AlignmentError, ArgumentError
from .base import ArrayAdapter, DatasetAdapter, FileAdapter, KeyedAdapter, LoadedSample, relative_key
from .digits import Digits, DigitsAdapter
from .torchvision import (CIFAR10Adapter, CIFAR100Adapter, Flowers102Adapter, Food101Adapter, ImageFolderAdapter,
                          ImageNetAdapter)

__all__ = ["ADAPTERS", "adapt", "create_adapter", "create_store_adapter", "DatasetAdapter", "FileAdapter",
           "ArrayAdapter", "KeyedAdapter", "SubsetAdapter", "LoadedSample", "Digits", "relative_key",
           "ImageNetAdapter", "CIFAR100Adapter", "CIFAR10Adapter", "Flowers102Adapter", "Food101Adapter",
           "ImageFolderAdapter", "DigitsAdapter"]


class _Adapters(Mapping):
    """Adapter class per registered dataset name, read from :mod:`imagenet_plus.registry` on every lookup."""

    def __getitem__(self, name: str) -> type[DatasetAdapter]:
        if name not in registry.names():
            raise KeyError(name)
        return registry.adapter_class(name)

    def __iter__(self) -> Iterator[str]:
        return iter(registry.names())

    def __len__(self) -> int:
        return len(registry.names())

    def __repr__(self) -> str:
        return f"ADAPTERS({', '.join(registry.names())})"


#: Adapter class per dataset name (``--dataset`` choices, ``manifest.dataset`` values), in the
#: registry's order: the order :func:`adapt` tries them in (most specific first).
ADAPTERS: Mapping[str, type[DatasetAdapter]] = _Adapters()


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
    for cls in ADAPTERS.values():
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


def create_adapter(name: str, root: str | os.PathLike | None, split: str | None = None, *,
                   image_size: int | None = None, **kwargs: Any) -> DatasetAdapter:
    """Create dataset ``name`` from its ``root`` folder and ``split`` (never downloads) and return its adapter.

    Args:
        name: a dataset of :mod:`imagenet_plus.registry` (``imagenet``, ``cifar100``, ``cifar10``,
            ``flowers102``, ``food101``, ``imagefolder``, ``digits``, and any registered since).
        root: the dataset's root folder in torchvision's layout (``None`` for a dataset that needs none,
            such as ``digits``).
        split: the split (default: the registry's training split).
        image_size: the side of the images of a dataset that generates them (``digits``; default the
            registry's); refused for a dataset whose images are read at their own size.
        **kwargs: passed to the adapter's ``create``.

    Raises:
        ArgumentError: unknown name or split, or an ``image_size`` the dataset does not take.
        FileNotFoundError: the dataset is not under ``root``.
    """
    info = registry.dataset_info(name)
    cls = registry.adapter_class(name)
    if root is None and info.needs_root:
        raise FileNotFoundError(f"dataset {name!r} needs its root folder (the folder holding it in torchvision's "
                                "layout)")
    if info.image_size is not None:
        kwargs["image_size"] = info.image_size if image_size is None else image_size
    elif image_size is not None:
        sized = [i.name for i in registry.infos() if i.image_size is not None]
        raise ArgumentError(f"image_size={image_size!r}: dataset {name!r} reads its images at their own size; drop "
                            f"the image size (source_size) setting, it applies to {', '.join(sized) or 'no dataset'}")
    return cls.create(root, info.train_split if split is None else split, **kwargs)


def create_store_adapter(store, root: str | os.PathLike | None, *, dataset: str | None = None,
                         split: str | None = None, **kwargs: Any) -> DatasetAdapter:
    """The adapter of the user's copy of the data that ``store`` was built over.

    The dataset and split default to the manifest's; a dataset that generates its images does so at
    the size the store recorded; a build limited to its first ``limit_samples`` samples gets the same
    first samples. Arguments otherwise as :func:`create_adapter`.
    """
    m = store.manifest
    dataset = dataset or m.dataset
    if registry.dataset_info(dataset).image_size is not None and "image_size" not in kwargs:
        kwargs["image_size"] = int(store.image_sizes[0][0])  # recorded per sample: the size the build decoded
    adapter = create_adapter(dataset, root, split or m.split, **kwargs)
    limit = (m.extra or {}).get("limit_samples")
    if limit is not None and int(limit) < len(adapter):
        from torch.utils.data import Subset

        adapter = SubsetAdapter(Subset(adapter.dataset, range(int(limit))), adapter)
    return adapter
