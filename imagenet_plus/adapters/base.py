"""The dataset adapter protocol: everything the package needs to know about one kind of dataset.

An adapter wraps one dataset object (a torchvision dataset, or your own class) and tells the
package, in one place:

* its ``name`` (the store's ``manifest.dataset``), its ``splits`` and which one is trained on,
  its default Hub repo, and whether its images may be redistributed (Parquet export): for the
  package's datasets these come from :mod:`imagenet_plus.registry`, set on the class when it is
  defined (a class body that contradicts its entry is refused);
* how to create the dataset from ``(root, split)`` (:meth:`DatasetAdapter.create`);
* every sample's ``key`` (a stable name: a relative path, or ``"{split}/{index}"``) and
  ``label``, read from the dataset's metadata without decoding images;
* how to read a sample's source (:meth:`read`: the file's bytes, or the raw pixel array) and
  decode it the package's documented way (:func:`imagenet_plus.imageio.decode_rgb`: the pixels of
  :func:`~imagenet_plus.imageio.decode_bytes`, common JPEGs decoded straight to an array).

:meth:`DatasetAdapter.load` returns the decoded RGB image, the label and the sample's digest
(:mod:`imagenet_plus.identity`), the one path by which the builder, the replay, the CLI and the
importer read a sample. To use the package with your own dataset class, subclass
:class:`FileAdapter` (samples are image files: implement ``files()`` and ``labels()``) or
:class:`ArrayAdapter` (samples are uint8 arrays: implement ``array(i)`` and ``labels()``),
set ``name``, and pass ``adapter=YourAdapter(dataset)`` to ``ReinforcedDataset`` and the
builder. A dataset object that exposes ``keys`` (a list, or a method returning one) and yields
``(image, label)`` works without an adapter (its decoded pixels are hashed).

Example:
    >>> class MyPhotos(FileAdapter):
    ...     name = "my-photos"
    ...     def files(self):  # absolute paths, in the dataset's order
    ...         return self.dataset.paths
    ...     def labels(self):
    ...         return np.asarray(self.dataset.targets)
    ...     def key_root(self):  # keys are paths relative to this folder
    ...         return self.dataset.root
"""

from __future__ import annotations

import os
from typing import Any, ClassVar, NamedTuple, Sequence

import numpy as np
from PIL import Image

from ..errors import AlignmentError, ImageDecodeError
from ..identity import digest_array, digest_bytes
from ..imageio import RGBArray, decode_rgb, to_rgb_image
from ..registry import bind_adapter

__all__ = ["LoadedSample", "DatasetAdapter", "FileAdapter", "ArrayAdapter", "KeyedAdapter", "relative_key"]


class LoadedSample(NamedTuple):
    """A decoded sample: RGB image, label, digest (``uint8[8]``) and source file (``None`` for arrays).

    ``image`` is an :class:`~imagenet_plus.imageio.RGBArray` for file-backed samples (``uint8[H, W, 3]``
    with ``height``/``width``; :func:`~imagenet_plus.imageio.to_rgb_image` makes it a PIL image) and a
    PIL image otherwise; :func:`~imagenet_plus.imageio.image_size` and ``Policy.crop`` take both.
    """

    image: RGBArray | Image.Image
    label: int
    digest: np.ndarray
    path: str | None


def relative_key(path: str | os.PathLike, folder: str | os.PathLike) -> str:
    """``path`` relative to ``folder`` with ``/`` separators (the key of a file-backed sample)."""
    p, f = os.fspath(path), os.fspath(folder).rstrip("/\\")
    prefix = f + os.sep
    rel = p[len(prefix):] if p.startswith(prefix) else os.path.relpath(p, f)
    return rel.replace(os.sep, "/")


class DatasetAdapter:
    """Base class of every adapter (see the module docstring for the protocol).

    Args:
        dataset: the dataset object this adapter reads.
        split: its split name (``None``: the adapter reads it from the dataset where it can).
    """

    #: Name recorded as the store's ``manifest.dataset`` ("imagenet", "cifar100", ...). For a dataset
    #: of :mod:`imagenet_plus.registry`, the attributes below are set from its entry (one table).
    name: ClassVar[str] = ""
    #: Human-readable name (dataset cards, messages).
    pretty_name: ClassVar[str] = ""
    #: Valid splits, the one reinforcements are built for, the one students are evaluated on.
    splits: ClassVar[tuple[str, ...]] = ("train", "test")
    train_split: ClassVar[str] = "train"
    eval_split: ClassVar[str] = "test"
    #: Whether the dataset's licence lets the Parquet export / Hub repo carry its images: ``True``,
    #: ``False`` (forbidden: never exported) or ``None`` (unknown: the publisher decides with ``--images``).
    redistributable: ClassVar[bool | None] = None
    #: The package's Hub repo of this dataset's reinforcements (``None``: none published).
    default_repo: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        bind_adapter(cls)  # a registered dataset's class takes its splits, repo, licence from the registry

    def __init__(self, dataset: Any, split: str | None = None) -> None:
        self.dataset = dataset
        self.split = split if split is not None else self._split_of(dataset)
        self._keys: list[str] | None = None
        self._label_array: np.ndarray | None = None

    # -- what every adapter provides ----------------------------------------------------------------
    @classmethod
    def create(cls, root: str | os.PathLike, split: str, **kwargs: Any) -> "DatasetAdapter":
        """Create the dataset from its root folder and split, and wrap it (never downloads)."""
        raise NotImplementedError(f"{cls.__name__} cannot create its dataset from a root folder; wrap a dataset "
                                  f"object instead: {cls.__name__}(dataset)")

    @classmethod
    def matches(cls, dataset: Any) -> bool:
        """Whether this adapter reads ``dataset`` (used by :func:`imagenet_plus.adapters.adapt`)."""
        return False

    def _split_of(self, dataset: Any) -> str | None:
        return getattr(dataset, "split", None) if isinstance(getattr(dataset, "split", None), str) else None

    def __len__(self) -> int:
        return len(self.dataset)

    def labels(self) -> np.ndarray:
        """Every sample's integer label, ``int64[N]``, from the dataset's metadata."""
        raise NotImplementedError

    def label(self, i: int) -> int:
        """Sample ``i``'s label (from :meth:`labels`, computed once)."""
        if self._label_array is None:
            self._label_array = np.asarray(self.labels(), dtype=np.int64)
        return int(self._label_array[i])

    def compute_keys(self) -> list[str]:
        """Every sample's key, in order (see :meth:`keys`, which caches this)."""
        raise NotImplementedError

    def keys(self) -> list[str]:
        """Every sample's key, in the dataset's order (computed once)."""
        if self._keys is None:
            self._keys = [str(k) for k in self.compute_keys()]
            if len(self._keys) != len(self):
                raise AlignmentError(f"{type(self).__name__}: {len(self._keys)} keys for {len(self)} samples")
        return self._keys

    @property
    def classes(self) -> list[str] | None:
        """Class names where the dataset lists them."""
        classes = getattr(self.dataset, "classes", None)
        return list(classes) if classes is not None and not callable(classes) else None

    @property
    def num_classes(self) -> int | None:
        """Number of classes where the dataset lists them (``None``: unknown)."""
        classes = self.classes
        return len(classes) if classes is not None else None

    def path(self, i: int) -> str | None:
        """Sample ``i``'s file (``None`` when it has none)."""
        return None

    def read(self, i: int) -> bytes | None:
        """The bytes of sample ``i``'s file (``None`` for samples without a file)."""
        return None

    def load(self, i: int) -> LoadedSample:
        """Decode sample ``i``: RGB image, label, digest and file."""
        raise NotImplementedError

    def describe(self, i: int) -> str:
        """``"sample 12 (key 'n01/x.JPEG', file /data/train/n01/x.JPEG)"`` for messages."""
        key = self.keys()[i]
        path = self.path(i)
        return f"sample {i} (key {key!r}" + (f", file {path})" if path else ")")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.dataset).__name__}, split={self.split!r}, samples={len(self)})"


class FileAdapter(DatasetAdapter):
    """An adapter for datasets whose samples are image files (decoded by the package, hashed by their bytes)."""

    def files(self) -> Sequence[str]:
        """Every sample's file path, in order (called once; :meth:`path` reads the cached list)."""
        raise NotImplementedError

    def key_root(self) -> str:
        """The folder keys are relative to."""
        raise NotImplementedError

    def compute_keys(self) -> list[str]:
        root = os.fspath(self.key_root()).rstrip("/\\")
        prefix, n = root + os.sep, len(root) + 1
        keys = [p[n:] if p.startswith(prefix) else relative_key(p, root) for p in self._file_list()]
        return keys if os.sep == "/" else [k.replace(os.sep, "/") for k in keys]

    def _file_list(self) -> Sequence[str]:
        cached = getattr(self, "_files_cache", None)
        if cached is None:
            cached = self._files_cache = [os.fspath(p) for p in self.files()]
        return cached

    def path(self, i: int) -> str:
        return self._file_list()[i]

    def read(self, i: int) -> bytes:
        """The bytes of sample ``i``'s file."""
        path = self.path(i)
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError as e:
            raise ImageDecodeError(f"{self.describe(i)}: cannot read the file ({type(e).__name__}: {e}); restore "
                                   "it from the original dataset") from e

    def load(self, i: int) -> LoadedSample:
        """Decode sample ``i``'s file to an :class:`~imagenet_plus.imageio.RGBArray` (:func:`~imagenet_plus.imageio.decode_rgb`)."""
        data = self.read(i)
        path = self.path(i)
        return LoadedSample(decode_rgb(data, lambda: self.describe(i)), self.label(i), digest_bytes(data), path)


class ArrayAdapter(DatasetAdapter):
    """An adapter for datasets that hold their images as uint8 arrays (digest over the raw array)."""

    def array(self, i: int) -> np.ndarray:
        """Sample ``i``'s raw uint8 pixels (``[H, W]`` or ``[H, W, C]``)."""
        raise NotImplementedError

    def decode(self, pixels: np.ndarray) -> Image.Image:
        """The RGB image of a raw array (default: :func:`imagenet_plus.imageio.to_rgb_image`)."""
        return to_rgb_image(pixels)

    def compute_keys(self) -> list[str]:
        return [f"{self.split}/{i}" for i in range(len(self))]

    def load(self, i: int) -> LoadedSample:
        pixels = self.array(i)
        return LoadedSample(self.decode(pixels), self.label(i), digest_array(pixels), None)


class KeyedAdapter(DatasetAdapter):
    """Any dataset exposing ``keys`` (a list, or a method returning one) and yielding ``(image, label)``.

    Images come from ``dataset[i]`` (its own transform must leave them images); the digest is taken
    over the decoded RGB pixels.
    """

    name = ""

    @classmethod
    def matches(cls, dataset: Any) -> bool:
        return getattr(dataset, "keys", None) is not None and not isinstance(dataset, dict)

    def compute_keys(self) -> list[str]:
        keys = self.dataset.keys
        return list(keys() if callable(keys) else keys)

    def labels(self) -> np.ndarray:
        for attr in ("targets", "labels", "_labels"):
            v = getattr(self.dataset, attr, None)
            if v is not None and not callable(v) and len(v) == len(self):
                return np.asarray([int(t) for t in v], dtype=np.int64)
        return np.asarray([self._item(i)[1] for i in range(len(self))], dtype=np.int64)

    def _item(self, i: int) -> tuple[Any, int]:
        item = self.dataset[i]
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise AlignmentError(f"{type(self.dataset).__name__}[{i}] returned {type(item).__name__}; expected an "
                                 "(image, label) pair")
        try:
            return item[0], int(item[1])
        except (TypeError, ValueError):
            raise AlignmentError(f"{type(self.dataset).__name__}[{i}] returned a label of type "
                                 f"{type(item[1]).__name__}; expected an integer class index (remove the dataset's "
                                 "target_transform)") from None

    def load(self, i: int) -> LoadedSample:
        image, label = self._item(i)
        image = to_rgb_image(image)
        return LoadedSample(image, label, digest_array(np.asarray(image)), None)
