"""Write small multi-shard reinforcement stores with realistic random records (for any module's tests).

Example:
    >>> fake = write_fake_store(tmp_path / "store", num_samples=7, num_augmentations=5)
    >>> store = open_store(fake.root)
    >>> np.testing.assert_array_equal(store.params(3, 4)["crop"], fake.params["crop"][3, 4])
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from PIL import Image

from imagenet_plus.identity import digest_array, fingerprint
from imagenet_plus.schema import Field
from imagenet_plus.store import Manifest, write_store

#: Param fields shaped like the ImageNet+ recipe (crop box, flip + RandAugment ops, erasing box),
#: with several dtypes and shapes so round trips cover them.
DEFAULT_PARAM_FIELDS = (
    Field("crop", "<u2", (4,), 0, 65535, "crop box (y0, x0, h, w) as fractions of the image, 16-bit"),
    Field("ops", "<u2", (3,), 0, 4095, "flip bit and two RandAugment ops (op, magnitude, sign)"),
    Field("erase", "|u1", (4,), 0, 255, "erasing box as fractions of the output, 0 0 0 0 = no erasing"),
    Field("strength", "<i2", (), -1000, 1000, "a signed scalar (exercises 0-d fields)"),
    Field("mix_lambda", "<f4", (), 0.0, 1.0, "a float scalar (exercises float fields)"),
)


@dataclass
class FakeStore:
    """A written fake store and the arrays it was written from."""

    root: Path
    manifest: Manifest
    params: dict[str, np.ndarray]  # field -> [N, A, *shape]
    topk_ids: np.ndarray  # int64 [N, A, K]
    topk_probs: np.ndarray  # float32 [N, A, K], the teacher's (before encoding)
    labels: np.ndarray  # int32 [N]
    keys: list[str]
    hashes: np.ndarray  # uint8 [N, 8]
    sizes: np.ndarray  # uint32 [N, 2]: H, W
    fingerprints: np.ndarray  # uint8 [N, 64]
    images: list[np.ndarray]  # the RGB uint8 images the identity columns describe


def random_teacher_topk(rng: np.random.Generator, shape: tuple[int, ...], num_classes: int, topk: int,
                        temperatures: Sequence[float] = (0.3, 1.0, 3.0, 10.0)) -> tuple[np.ndarray, np.ndarray,
                                                                                         np.ndarray]:
    """Top-k of softmax(Gaussian logits * temperature): ``(ids int64, probs float32, dense float32)``.

    Temperatures mix flat and very peaked distributions, like a real teacher.
    """
    t = rng.choice(np.asarray(temperatures, dtype=np.float64), size=shape)[..., None]
    logits = rng.standard_normal((*shape, num_classes)) * t
    logits -= logits.max(-1, keepdims=True)
    dense = np.exp(logits)
    dense /= dense.sum(-1, keepdims=True)
    ids = np.argsort(-dense, axis=-1, kind="stable")[..., :topk]
    probs = np.take_along_axis(dense, ids, axis=-1)
    return ids.astype(np.int64), probs.astype(np.float32), dense.astype(np.float32)


def random_params(rng: np.random.Generator, fields: Sequence[Field], shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Uniform random values within each field's declared ``[low, high]``."""
    out = {}
    for f in fields:
        dt = np.dtype(f.dtype)
        full = (*shape, *f.shape)
        if dt.kind == "f":
            out[f.name] = rng.uniform(f.low, f.high, size=full).astype(dt)
        else:
            out[f.name] = rng.integers(int(f.low), int(f.high), size=full, endpoint=True).astype(dt)
    return out


def random_images(rng: np.random.Generator, num_samples: int) -> list[np.ndarray]:
    """Small RGB images of varied sizes (6..40 px a side) with smooth gradients plus noise, like photos."""
    out = []
    for _ in range(num_samples):
        h, w = (int(x) for x in rng.integers(6, 41, size=2))
        yy, xx = np.mgrid[0:h, 0:w]
        base = rng.uniform(0, 255, 3) + rng.uniform(-4, 4, 3) * yy[..., None] + rng.uniform(-4, 4, 3) * xx[..., None]
        out.append(np.clip(base + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8))
    return out


def identity_columns(images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(hashes uint8[N, 8], sizes uint32[N, 2], fingerprints uint8[N, 64])`` of RGB images."""
    n = len(images)
    hashes = np.stack([digest_array(im) for im in images]) if n else np.zeros((0, 8), np.uint8)
    sizes = np.array([im.shape[:2] for im in images], dtype=np.uint32).reshape(n, 2)
    prints = np.stack([fingerprint(Image.fromarray(im)) for im in images]) if n else np.zeros((0, 64), np.uint8)
    return hashes, sizes, prints


def imagenet_like_keys(num_samples: int, labels: np.ndarray) -> list[str]:
    """Keys shaped like ImageNet relative paths, ``n0XXXXXXX/n0XXXXXXX_NNNNN.JPEG``."""
    return [f"n{1440764 + int(c) * 977:08d}/n{1440764 + int(c) * 977:08d}_{10026 + 37 * i}.JPEG"
            for i, c in enumerate(labels)]


def write_fake_store(root: str | Path, *, num_samples: int = 11, num_augmentations: int = 7, num_classes: int = 10,
                     topk: int = 3, samples_per_shard: int = 4, augs_per_shard: int = 3, seed: int = 0,
                     param_fields: Sequence[Field] = DEFAULT_PARAM_FIELDS, labels: np.ndarray | None = None,
                     keys: Sequence[str] | None = None, hashes: np.ndarray | None = None,
                     params: dict[str, np.ndarray] | None = None, policy: dict | None = None,
                     dataset: str = "fake", split: str = "train", extra: dict | None = None,
                     reports: dict | None = None, teacher: dict | None = None) -> FakeStore:
    """Write a multi-shard store of random but realistic records; returns it with its source arrays.

    Args:
        root: output folder.
        num_samples, num_augmentations, num_classes, topk: store dimensions.
        samples_per_shard, augs_per_shard: shard shape (defaults give several shards in both directions).
        seed: numpy seed of the random records.
        param_fields: param fields (default: a crop/ops/erase-like set of several dtypes and shapes).
        labels, keys: per-sample identity (default: random labels, ImageNet-like keys).
        hashes: content digests to store instead of those of the generated images (the
            sizes and fingerprints always describe the generated images, ``FakeStore.images``).
        params: param arrays ``[N, A, *field.shape]`` to store instead of random ones (e.g. from a
            real ``Policy.sample`` so that replay tests get valid params).
        policy: the manifest's policy config (default: a placeholder naming the fake).
        dataset, split: manifest names.
        extra, reports: the manifest's ``extra`` (in the build id) and ``reports`` (outside it).
        teacher: the manifest's teacher description (in the build id; default names the random teacher).
    """
    rng = np.random.default_rng(seed)
    if labels is None:
        labels = rng.integers(0, num_classes, size=num_samples).astype(np.int32)
    if keys is None:
        keys = imagenet_like_keys(num_samples, labels)
    images = random_images(rng, num_samples)
    own_hashes, sizes, prints = identity_columns(images)
    hashes = own_hashes if hashes is None else hashes
    if params is None:
        params = random_params(rng, param_fields, (num_samples, num_augmentations))
    ids, probs, _ = random_teacher_topk(rng, (num_samples, num_augmentations), num_classes, topk)
    m = write_store(root, dataset=dataset, split=split, num_classes=num_classes,
                    policy=policy or {"name": "fake", "fields": [f.to_json() for f in param_fields]},
                    param_fields=param_fields, teacher=teacher or {"name": "random-gaussian-logits", "seed": seed},
                    seed=seed,
                    builder_version="tests", params=params, topk_ids=ids, topk_probs=probs, labels=labels,
                    keys=list(keys), hashes=hashes, sizes=sizes, fingerprints=prints,
                    samples_per_shard=samples_per_shard, augs_per_shard=augs_per_shard, extra=extra, reports=reports)
    return FakeStore(Path(root), m, params, ids, probs, np.asarray(labels, dtype=np.int32), list(keys),
                     np.asarray(hashes, dtype=np.uint8), sizes, prints, images)
