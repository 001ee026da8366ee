"""The dataset registry: one table of every dataset the package knows, importable without torch.

Each :class:`DatasetInfo` holds a dataset's name (the store's ``manifest.dataset``), its splits
and which one is trained on and which one evaluated, its default Hub repo, whether its images
may be redistributed, its default image size (datasets that generate their images, such as
scikit-learn's digits) and where its adapter class lives (``"module:Class"``, imported on first
use). Every list of datasets in the package and in the repository's scripts is read from here:
the ``--dataset`` choices of the commands and of ``builders/``, the training recipes' choices,
the Hub's default repos, the dataset wrappers exported by :mod:`imagenet_plus`, the adapters'
class attributes and the order in which :func:`imagenet_plus.adapters.adapt` tries them.

Adding a dataset means adding one entry here and one adapter class (plus a wrapper in
:mod:`imagenet_plus.datasets` if it has a torchvision twin); :func:`register` adds one at run
time (your own dataset, under its own name).

Example:
    >>> from imagenet_plus.registry import dataset_info, names
    >>> dataset_info("cifar100").eval_split
    'test'
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from ._checks import check_choice
from .errors import ArgumentError

__all__ = ["DEFAULT_ORG", "DatasetInfo", "register", "dataset_info", "names", "infos", "default_repo",
           "wrappers", "adapter_class", "bind_adapter", "unregister"]

#: Organisation of the package's default Hub repos. A placeholder until the stores are published:
#: pass your own ``"org/name"`` (or a local folder) until then.
DEFAULT_ORG = "imagenet-plus"

#: The adapter class attributes that the registry sets (one table, no second copy on the classes).
BOUND_ATTRIBUTES = ("pretty_name", "splits", "train_split", "eval_split", "redistributable", "default_repo")


@dataclass(frozen=True)
class DatasetInfo:
    """One dataset the package knows.

    Args:
        name: the store's ``manifest.dataset`` and the ``--dataset`` value.
        adapter: its adapter class, or ``"module:Class"`` (imported on first use).
        pretty_name: human-readable name (dataset cards, messages).
        splits: valid splits.
        train_split: the split reinforcements are built for (and students train on).
        eval_split: the split students are evaluated on.
        default_repo: the package's Hub dataset repo of its reinforcements (``None``: none published).
        redistributable: whether its licence lets an export carry its images: ``True``, ``False``
            (forbidden: never exported) or ``None`` (unknown: the publisher decides).
        image_size: default side of the images, for a dataset that generates them at a chosen size
            (its adapter's ``create`` takes ``image_size``); ``None``: the images are read at their
            own size and ``image_size`` is refused.
        needs_root: whether it is read from a root folder (``False``: it ships with a package).
        generic: its name says nothing about the data (any folder of images): a store's dataset name
            is not compared with it, and a card names the store, not the dataset.
        wrapper: the name of its torchvision-style wrapper in :mod:`imagenet_plus.datasets`
            (exported by :mod:`imagenet_plus`), or ``None``.
    """

    name: str
    adapter: Any
    pretty_name: str
    splits: tuple[str, ...] = ("train", "test")
    train_split: str = "train"
    eval_split: str = "test"
    default_repo: str | None = None
    redistributable: bool | None = None
    image_size: int | None = None
    needs_root: bool = True
    generic: bool = False
    wrapper: str | None = None

    def __post_init__(self) -> None:
        where = f"DatasetInfo({self.name!r})"
        if not isinstance(self.name, str) or not self.name:
            raise ArgumentError(f"{where}: name must be a non-empty string (the store's manifest.dataset)")
        for arg in ("train_split", "eval_split"):
            if getattr(self, arg) not in self.splits:
                raise ArgumentError(f"{where}: {arg}={getattr(self, arg)!r} is not one of its splits "
                                    f"{{{', '.join(self.splits)}}}; add it to splits or pick one of them")
        if not (isinstance(self.adapter, type) or (isinstance(self.adapter, str) and ":" in self.adapter)):
            raise ArgumentError(f"{where}: adapter={self.adapter!r} must be an adapter class or a "
                                "'module:Class' string")


def _tv(cls: str) -> str:
    return f"imagenet_plus.adapters.torchvision:{cls}"


# Most specific first (the order adapt() tries them in): ImageNet before the ImageFolder it may be,
# CIFAR-100 before CIFAR-10 (a subclass of it in torchvision).
_TABLE: dict[str, DatasetInfo] = {info.name: info for info in (
    DatasetInfo("imagenet", _tv("ImageNetAdapter"), "ImageNet+", splits=("train", "val"), eval_split="val",
                default_repo=f"{DEFAULT_ORG}/imagenet-plus", redistributable=False, wrapper="ImageNetPlus"),
    DatasetInfo("cifar100", _tv("CIFAR100Adapter"), "CIFAR-100+", default_repo=f"{DEFAULT_ORG}/cifar100-plus",
                redistributable=True, wrapper="CIFAR100Plus"),
    DatasetInfo("cifar10", _tv("CIFAR10Adapter"), "CIFAR-10+", redistributable=True),
    DatasetInfo("flowers102", _tv("Flowers102Adapter"), "Flowers-102+", splits=("train", "val", "test"),
                default_repo=f"{DEFAULT_ORG}/flowers102-plus", redistributable=True, wrapper="Flowers102Plus"),
    DatasetInfo("food101", _tv("Food101Adapter"), "Food-101+", default_repo=f"{DEFAULT_ORG}/food101-plus",
                redistributable=True, wrapper="Food101Plus"),
    DatasetInfo("imagefolder", _tv("ImageFolderAdapter"), "ImageFolder", splits=("train", "val", "test"),
                eval_split="val", generic=True),
    DatasetInfo("digits", "imagenet_plus.adapters.digits:DigitsAdapter", "Digits+",
                default_repo=f"{DEFAULT_ORG}/digits-plus", redistributable=True, image_size=32, needs_root=False),
)}


def register(info: DatasetInfo, *, replace: bool = False) -> DatasetInfo:
    """Add a dataset to the registry (tried by ``adapt`` after the ones already there).

    Raises:
        ArgumentError: ``info.name`` is registered already (pass ``replace=True`` to change it).
    """
    if not isinstance(info, DatasetInfo):
        raise ArgumentError(f"register: expected a DatasetInfo, got {type(info).__name__}")
    if info.name in _TABLE and not replace:
        raise ArgumentError(f"register: dataset {info.name!r} is registered already; pick another name or pass "
                            "replace=True")
    _TABLE[info.name] = info
    return info


def unregister(name: str) -> None:
    """Remove a dataset added by :func:`register` (tests)."""
    _TABLE.pop(dataset_info(name).name)


def names() -> tuple[str, ...]:
    """Every registered dataset name, in the registry's order."""
    return tuple(_TABLE)


def infos() -> tuple[DatasetInfo, ...]:
    """Every registered dataset, in the registry's order (the order ``adapt`` tries them in)."""
    return tuple(_TABLE.values())


def dataset_info(name: str, arg: str = "dataset") -> DatasetInfo:
    """The entry of dataset ``name``.

    Raises:
        ArgumentError: ``name`` is not registered (the message lists those that are).
    """
    return _TABLE[check_choice(name, arg, names())]


def default_repo(name: str) -> str | None:
    """The package's Hub repo of dataset ``name``'s reinforcements (``None``: unknown name or none published)."""
    info = _TABLE.get(name)
    return info.default_repo if info is not None else None


def wrappers() -> dict[str, str]:
    """Wrapper class name in :mod:`imagenet_plus.datasets` -> dataset name."""
    return {info.wrapper: info.name for info in _TABLE.values() if info.wrapper}


def adapter_class(name: str) -> type:
    """The adapter class of dataset ``name`` (imported on first use), its attributes set from the registry.

    Raises:
        ArgumentError: ``name`` is not registered, or its ``"module:Class"`` cannot be imported.
    """
    info = dataset_info(name)
    cls = info.adapter
    if isinstance(cls, str):
        module, _, attr = cls.partition(":")
        try:
            cls = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise ArgumentError(f"dataset {name!r}: its adapter {info.adapter!r} cannot be imported ({e}); fix the "
                                "registry entry's 'module:Class'") from e
    bind_adapter(cls, info)
    return cls


def bind_adapter(cls: type, info: DatasetInfo | None = None) -> None:
    """Set ``cls``'s registry attributes (``splits``, ``default_repo``, ...) from ``info`` (default: its name's).

    Called when an adapter class is defined and when the registry hands it out, so that a class and
    its entry never disagree.

    Raises:
        ArgumentError: the class body sets one of those attributes to another value than the registry's.
    """
    info = info if info is not None else _TABLE.get(cls.__dict__.get("name", ""))
    if info is None:
        return
    if cls.__dict__.get("name", info.name) != info.name:
        raise ArgumentError(f"{cls.__name__}.name is {cls.__dict__['name']!r} but the registry files it under "
                            f"{info.name!r}; make them equal")
    for attr in BOUND_ATTRIBUTES:
        value = getattr(info, attr)
        own = cls.__dict__.get(attr, value)
        if own != value:
            raise ArgumentError(f"{cls.__name__}.{attr} is {own!r} but the registry entry of {info.name!r} says "
                                f"{value!r}; the registry (imagenet_plus/registry.py) holds it: drop it from the class")
        setattr(cls, attr, value)
    cls.name = info.name
