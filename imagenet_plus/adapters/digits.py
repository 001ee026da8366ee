"""scikit-learn's real handwritten digits as a torchvision-style dataset (the demo's data), and its adapter.

``sklearn.datasets.load_digits`` ships 1,797 real 8x8 greyscale scans (16 grey levels) of the
digits 0-9. :class:`Digits` scales them to 8 bits, upsamples them to ``image_size`` pixels
(bilinear) and yields RGB PIL images, so the whole pipeline (policy, teacher, store, replay)
runs on real data without a download. Needs scikit-learn (``pip install imagenet-plus[demo]``).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
from PIL import Image

from .._checks import check_choice, check_int
from .base import ArrayAdapter

__all__ = ["Digits", "DigitsAdapter"]


def _upsample(pixels: np.ndarray, image_size: int) -> Image.Image:
    gray = Image.fromarray(pixels, mode="L")
    if image_size != gray.width:
        gray = gray.resize((image_size, image_size), Image.BILINEAR)
    return gray.convert("RGB")


class Digits:
    """`scikit-learn digits <https://scikit-learn.org/stable/datasets/toy_dataset.html#digits-dataset>`_ dataset.

    The split is deterministic and stratified: within each class, every fifth scan of
    ``load_digits()`` (the 1st, 6th, 11th, ...) is in ``test`` (364 images), the others in
    ``train`` (1,433 images). Sample keys are ``"{split}/{index}"``.

    Args:
        root (str, optional): unused (the data ships with scikit-learn); kept for the
            torchvision signature.
        split (string, optional): ``"train"`` or ``"test"``.
        image_size (int, optional): side of the upsampled square image (>= 8).
        transform (callable, optional): a function/transform that takes in a PIL image and
            returns a transformed version.
        target_transform (callable, optional): a function/transform that takes in the target
            and transforms it.
    """

    classes = [str(d) for d in range(10)]

    def __init__(self, root: str | None = None, split: str = "train", image_size: int = 32,
                 transform: Callable | None = None, target_transform: Callable | None = None) -> None:
        try:
            from sklearn.datasets import load_digits
        except ImportError as e:
            raise ImportError("Digits needs scikit-learn: pip install 'imagenet-plus[demo]'") from e

        self.split = check_choice(split, "split", ("train", "test"))
        self.image_size = check_int(image_size, "image_size", low=8)
        self.root = root
        self.transform = transform
        self.target_transform = target_transform
        d = load_digits()
        # Within each class, every fifth scan (the 1st, 6th, ...) is a test image: balanced classes.
        rank = np.zeros(len(d.target), dtype=np.int64)
        for c in range(10):
            idx = np.flatnonzero(d.target == c)
            rank[idx] = np.arange(len(idx))
        sel = (rank % 5 == 0) == (split == "test")
        # 16 grey levels (0..16) -> 8 bits, white digits on black like MNIST.
        self.data = np.rint(d.images[sel] * (255.0 / 16.0)).astype(np.uint8)
        self.targets = [int(t) for t in d.target[sel]]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        image = _upsample(self.data[index], self.image_size)
        target = self.targets[index]
        if self.transform is not None:
            image = self.transform(image)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return image, target

    def extra_repr(self) -> str:
        return f"Split: {self.split}, image size: {self.image_size}"

    def __repr__(self) -> str:
        lines = [f"Dataset {type(self).__name__}", f"    Number of datapoints: {len(self)}",
                 f"    Root location: {self.root}", f"    {self.extra_repr()}"]
        return "\n".join(lines)


class DigitsAdapter(ArrayAdapter):
    """:class:`Digits`: the digest covers the raw 8x8 scan; the image size records ``image_size``."""

    name = "digits"

    @classmethod
    def create(cls, root, split: str = "train", *, image_size: int = 32, **kwargs: Any) -> "DigitsAdapter":
        return cls(Digits(root, split=split, image_size=image_size, **kwargs), split)

    @classmethod
    def matches(cls, dataset: Any) -> bool:
        return isinstance(dataset, Digits)

    def array(self, i: int) -> np.ndarray:
        return self.dataset.data[i]

    def decode(self, pixels: np.ndarray) -> Image.Image:
        return _upsample(pixels, self.dataset.image_size)

    def labels(self) -> np.ndarray:
        return np.asarray(self.dataset.targets, dtype=np.int64)
