"""Per-sample identity: the key, label and content hash that tie a store to a dataset copy.

A store records, for every sample ``i`` of the base dataset's canonical order,
its ``key`` (the path relative to the dataset's image folder where the dataset
has files, else ``"{split}/{index}"``), its ``label`` and the
:func:`~imagenet_plus.schema.content_hash` of its decoded RGB pixels. A user's
copy is checked against these before any stored target is trusted.

Keys per torchvision class:

==========================  ===============================================
dataset                     key of sample ``i``
==========================  ===============================================
``ImageNet``                path relative to ``root/split``: ``n01440764/x.JPEG``
``ImageFolder`` (any        path relative to ``root``: ``<class>/<file>``
``DatasetFolder``)
``CIFAR10``, ``CIFAR100``   ``"train/{i}"`` or ``"test/{i}"``
``Flowers102``              ``image_00001.jpg``
``Food101``                 ``apple_pie/1005649.jpg``
``Subset``                  the key of the wrapped sample
anything with ``keys``      ``keys[i]`` (a list attribute or a method returning one)
anything with ``samples``   path relative to ``root`` (or the path itself)
anything with
``_image_files``            path relative to ``_images_folder`` or ``root``
otherwise                   ``"{i}"``
==========================  ===============================================

Decoding bypasses the base dataset's own ``transform`` where the class is
known (the loader or stored array is used directly), so a dataset built with
a transform still yields its raw pixels here.
"""

from __future__ import annotations

import os
from typing import Callable

import numpy as np
from PIL import Image
from torch.utils.data import Subset
from torchvision.datasets import CIFAR10, DatasetFolder, ImageNet

from .imageio import to_rgb_array, to_rgb_image
from .schema import content_hash

__all__ = ["sample_keys", "sample_labels", "sample_identity", "load_sample"]


def _relative_to(path, folder) -> str:
    p, f = str(path), str(folder).rstrip("/\\")
    prefix = f + os.sep
    rel = p[len(prefix):] if p.startswith(prefix) else os.path.relpath(p, f)
    return rel.replace(os.sep, "/")


def _has_files(base) -> bool:
    return hasattr(base, "_image_files") and hasattr(base, "_labels")


def _key_fn(base) -> Callable[[int], str]:
    """A function from index to key for ``base`` (computing shared state once)."""
    if isinstance(base, Subset):
        inner = _key_fn(base.dataset)
        indices = base.indices
        return lambda i: inner(int(indices[i]))
    keys = getattr(base, "keys", None)
    if keys is not None:
        keys = keys() if callable(keys) else keys
        return lambda i: str(keys[i])
    if isinstance(base, ImageNet):
        folder = os.path.join(base.root, base.split)
        return lambda i: _relative_to(base.samples[i][0], folder)
    if isinstance(base, DatasetFolder):
        return lambda i: _relative_to(base.samples[i][0], base.root)
    if isinstance(base, CIFAR10):
        split = "train" if base.train else "test"
        return lambda i: f"{split}/{i}"
    if hasattr(base, "_image_files"):
        folder = getattr(base, "_images_folder", None) or getattr(base, "root", "")
        return lambda i: _relative_to(base._image_files[i], folder)
    samples = getattr(base, "samples", None)
    if samples is not None:
        root = getattr(base, "root", None)

        def from_samples(i: int) -> str:
            s = samples[i]
            path = s[0] if isinstance(s, (tuple, list)) else s
            return _relative_to(path, root) if root else str(path).replace(os.sep, "/")

        return from_samples
    return str


def sample_keys(base) -> list[str]:
    """The key of every sample of ``base``, in its canonical order (see the module docstring).

    Args:
        base: a torchvision-style dataset.

    Returns:
        ``len(base)`` strings.

    Example:
        >>> sample_keys(torchvision.datasets.Food101(root))[:1]
        ['apple_pie/1005649.jpg']
    """
    fn = _key_fn(base)
    return [fn(i) for i in range(len(base))]


def sample_labels(base) -> np.ndarray:
    """Every sample's integer label as ``int64[N]``, read from the dataset's metadata when it has it.

    Datasets without a ``targets``/``_labels`` list (or ``Subset`` of one) are decoded sample by sample.
    """
    if isinstance(base, Subset):
        inner = sample_labels(base.dataset)
        return inner[np.asarray(base.indices, dtype=np.int64)]
    for name in ("targets", "_labels"):
        labels = getattr(base, name, None)
        if labels is not None and not callable(labels) and len(labels) == len(base):
            return np.asarray([int(t) for t in labels], dtype=np.int64)
    return np.asarray([load_sample(base, i)[1] for i in range(len(base))], dtype=np.int64)


def load_sample(base, i: int) -> tuple[Image.Image, int]:
    """Decode sample ``i`` of ``base`` to an RGB PIL image and its integer label.

    The base dataset's ``transform`` and ``target_transform`` are bypassed for
    torchvision's folder datasets, CIFAR, Flowers102, Food101 and ``Subset`` of them;
    any other dataset is indexed (``base[i]``) and must yield ``(image, int label)``.
    """
    if isinstance(base, Subset):
        return load_sample(base.dataset, int(base.indices[i]))
    if isinstance(base, DatasetFolder):
        path, label = base.samples[i]
        return to_rgb_image(base.loader(path)), int(label)
    if isinstance(base, CIFAR10):
        return to_rgb_image(Image.fromarray(base.data[i])), int(base.targets[i])
    if _has_files(base) and callable(getattr(base, "loader", None)):
        return to_rgb_image(base.loader(base._image_files[i])), int(base._labels[i])
    item = base[i]
    if not isinstance(item, (tuple, list)) or len(item) < 2:
        raise TypeError(
            f"{type(base).__name__}[{i}] returned {type(item).__name__}; expected an (image, label) pair"
        )
    image, label = item[0], item[1]
    try:
        label = int(label)
    except (TypeError, ValueError):
        raise TypeError(
            f"{type(base).__name__}[{i}] returned a label of type {type(label).__name__}; expected an integer "
            f"class index (remove the dataset's target_transform)"
        ) from None
    return to_rgb_image(image), label


def sample_identity(base, i: int) -> tuple[str, int, np.ndarray]:
    """Key, label and content hash of sample ``i`` (decodes the image).

    Args:
        base: a torchvision-style dataset.
        i: the sample index in ``base``'s canonical order.

    Returns:
        ``(key, label, content_hash)`` with ``content_hash`` a ``uint8[8]`` array
        (:func:`imagenet_plus.schema.content_hash` of :func:`imagenet_plus.imageio.to_rgb_array`).
    """
    image, label = load_sample(base, i)
    return _key_fn(base)(i), label, content_hash(to_rgb_array(image))
