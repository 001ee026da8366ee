"""Reinforced datasets: torchvision datasets that replay stored augmentations with teacher soft targets.

:class:`ReinforcedDataset` wraps any torchvision-style dataset (``base[i] ->
(image, label)``) and a reinforcement store built over it. Training item ``i``
is one of the sample's stored augmentations, replayed bit for bit from its
stored parameters, with the teacher's stored top-k probabilities densified to a
soft target. :class:`ImageNetPlus`, :class:`CIFAR100Plus`,
:class:`Flowers102Plus` and :class:`Food101Plus` are thin wrappers of the
torchvision classes with the same ``root`` and ``split`` arguments.

Which augmentation an item uses depends only on ``(seed, epoch, sample)``,
never on worker count or batch size: call :meth:`ReinforcedDataset.set_epoch`
before every epoch, as with ``DistributedSampler`` (the epoch lives in shared
memory, so persistent DataLoader workers see it too).

Example:
    >>> train = ImageNetPlus("data/imagenet", split="train", reinforcements="runs/imagenet-plus")
    >>> loader = DataLoader(train, batch_size=256, shuffle=True, num_workers=8)
    >>> loss_fn = timm.loss.SoftTargetCrossEntropy()
    >>> for epoch in range(epochs):
    ...     train.set_epoch(epoch)
    ...     for images, soft_targets in loader:
    ...         loss = loss_fn(model(images), soft_targets)
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import datasets as tvd
from torchvision.datasets.vision import VisionDataset

from . import _rng
from .augment import create_eval_transform, create_policy
from .errors import AlignmentError, ReinforcementError, StoreError
from .identity import load_sample, sample_keys, sample_labels
from .imageio import to_rgb_array
from .schema import content_hash
from .targets import densify as _densify
from .targets import one_hot

__all__ = ["ReinforcedDataset", "ImageNetPlus", "CIFAR100Plus", "Flowers102Plus", "Food101Plus"]

# _rng streams of this module (the policy uses 1..8).
_STREAM_CHOICE = 101  # original-or-replay draw and the random augmentation index
_STREAM_CYCLE = 102  # per-sample permutations of "cycle" sampling
_STREAM_ORIGINAL = 103  # seed of the fresh params of original images (policy.sample under it)
_FAST_CHECK_SAMPLES = 16


def _original_params(policy, seed: int, i: int, epoch: int, height: int, width: int,
                     num_samples: int) -> dict[str, np.ndarray]:
    """The params of original image ``i`` in ``epoch``: the policy's ordinary random augmentation, unmixed.

    Every single-image field (crop, flip, RandAugment ops and signs, erasing) is drawn by
    ``policy.sample`` with a seed derived from ``seed`` on stream ``_STREAM_ORIGINAL``, for
    record ``(i, epoch)`` of an image ``height x width``, so it depends only on
    ``(seed, epoch, sample)``. Mixing fields say "no mix" (``mix_kind`` 0, ``mix_lam`` 1):
    an original's target is its one-hot label. ``imagenet_plus.hf`` uses this same function.
    """
    derived = int(_rng.record_keys(seed, 0, 0, stream=_STREAM_ORIGINAL)) >> 1
    drawn = policy.sample(derived, i, epoch, height, width, num_samples)
    params = {k: v[0] for k, v in drawn.items()}
    for name in ("mix_partner", "mix_kind", "mix_box"):
        if name in params:
            params[name] = np.zeros_like(params[name])
    if "mix_lam" in params:
        params["mix_lam"] = np.full_like(params["mix_lam"], 65535)
    return params


def _verify_choice(value, arg: str, valid: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in valid:
        raise ReinforcementError(f"Unknown value '{value}' for argument {arg}. "
                                 f"Valid values are {{{', '.join(valid)}}}.")
    return value


def _norm_name(name) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


def _describe(base) -> tuple[str | None, str | None]:
    """(dataset name, split) of a torchvision dataset, where the class tells them."""
    if isinstance(base, tvd.ImageNet):
        return "imagenet", base.split
    if isinstance(base, tvd.CIFAR100):
        return "cifar100", "train" if base.train else "test"
    if isinstance(base, tvd.CIFAR10):
        return "cifar10", "train" if base.train else "test"
    if isinstance(base, tvd.Flowers102):
        return "flowers102", base._split
    if isinstance(base, tvd.Food101):
        return "food101", base._split
    return None, None


def _num_classes(base) -> int | None:
    if isinstance(base, tvd.ImageNet):
        return len(base.wnids)
    classes = getattr(base, "classes", None)
    return len(classes) if classes is not None and not callable(classes) else None


def _open_reinforcements(reinforcements, num_augmentations: int | None):
    from .store import ReinforcementStore, open_store

    if isinstance(reinforcements, ReinforcementStore):
        if num_augmentations is None or num_augmentations == reinforcements.num_augmentations:
            return reinforcements
        return open_store(reinforcements.root, num_augmentations=num_augmentations)
    if not isinstance(reinforcements, (str, os.PathLike)):
        raise StoreError(f"reinforcements must be a store folder, a Hub repo id ('org/name@revision') or an "
                         f"opened ReinforcementStore, got {type(reinforcements).__name__}")
    try:
        from .hub import resolve_reinforcements
    except ImportError:
        path = Path(reinforcements).expanduser()
        if not path.is_dir():
            raise StoreError(f"reinforcements={str(reinforcements)!r}: no such folder, and Hub repo ids need "
                             "imagenet_plus.hub, which is not available in this install; pass the folder "
                             "written by the builder") from None
    else:
        path = resolve_reinforcements(reinforcements, num_augmentations)
    return open_store(path, num_augmentations=num_augmentations)


class ReinforcedDataset(Dataset):
    """Replay a reinforcement store over a torchvision-style dataset.

    Training items are ``(image, soft_target)``: the replayed augmentation as a
    normalised float32 tensor ``[3, S, S]`` and a float32 distribution ``[C]``
    summing to 1 (the teacher's top-k, densified). With probability
    ``p_original`` an item is the original image instead, with the policy's ordinary
    random augmentation (freshly drawn, not stored: crop, flip, RandAugment, erasing;
    never mixed) and a one-hot target. With ``device`` other than ``"cpu"`` items are dicts for
    :class:`~imagenet_plus.replay.DeviceReplay`, which finishes whole batches on
    the device (see :meth:`create_device_replay`).

    On construction the base dataset is aligned with the store: every sample's
    key and label are compared, and the pixels' content hashes of 16 random
    samples (``check="full"``: all; ``"none"``: none). A copy in another order is
    aligned by key; a missing, extra or changed sample raises
    :class:`~imagenet_plus.errors.AlignmentError` naming it.

    Args:
        base: the dataset the store was built over; ``base[i] -> (image, int label)``
            (its own ``transform`` is bypassed for torchvision's classes).
        reinforcements: a store folder, a Hub repo id (``"org/name@revision"``, via
            :func:`imagenet_plus.hub.resolve_reinforcements`) or an opened
            :class:`~imagenet_plus.store.ReinforcementStore`.
        num_augmentations: use the first ``num_augmentations`` stored augmentations
            (default all).
        p_original: probability of an original image (freshly augmented by the policy, never
            mixed) with its one-hot label.
        densify: ``"smooth"`` (spread the tail mass over the other classes) or ``"none"``.
        sampling: ``"random"`` (an augmentation drawn per epoch) or ``"cycle"`` (each
            augmentation exactly once per ``num_augmentations`` epochs).
        device: ``"cpu"`` to replay in ``__getitem__``; another device (``"cuda"``) to
            return crops and sparse targets for :class:`~imagenet_plus.replay.DeviceReplay`.
        transform: replaces the normalisation: takes the replayed uint8 ``[3, S, S]`` tensor.
        target_transform: takes the float32 soft target ``[C]``.
        seed: seed of the per-epoch choices (default: drawn once, see ``self.seed``).
        check: content-hash check, ``"fast"``, ``"full"`` or ``"none"``.
    """

    def __init__(self, base, reinforcements, *, num_augmentations: int | None = None, p_original: float = 0.01,
                 densify: str = "smooth", sampling: str = "random", device: str | torch.device = "cpu",
                 transform: Callable | None = None, target_transform: Callable | None = None,
                 seed: int | None = None, check: str = "fast") -> None:
        self.densify = _verify_choice(densify, "densify", ("smooth", "none"))
        self.sampling = _verify_choice(sampling, "sampling", ("random", "cycle"))
        self.check = _verify_choice(check, "check", ("fast", "full", "none"))
        if isinstance(p_original, bool) or not isinstance(p_original, (int, float)) or not 0 <= p_original <= 1:
            raise ReinforcementError(f"p_original must be a probability in [0, 1], got {p_original!r}")
        if num_augmentations is not None and (isinstance(num_augmentations, bool)
                                              or not isinstance(num_augmentations, (int, np.integer))
                                              or num_augmentations < 1):
            raise ReinforcementError(f"num_augmentations must be a positive integer or None, got "
                                     f"{num_augmentations!r}")
        self.device = torch.device(device)
        if self.device.type != "cpu" and (transform is not None or target_transform is not None):
            raise ReinforcementError(f"transform/target_transform apply to the CPU path; with device="
                                     f"'{self.device}' DeviceReplay finishes the batch: apply them to its output")
        self.base = base
        self.p_original = float(p_original)
        self.transform = transform
        self.target_transform = target_transform
        self.seed = int(seed) if seed is not None else int(np.random.SeedSequence().entropy % (1 << 63))
        self.store = _open_reinforcements(reinforcements, num_augmentations)
        self.num_augmentations = self.store.num_augmentations
        self.num_classes = self.store.num_classes
        self.policy = create_policy(self.store.policy_config)
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self._to_store, self._from_store = self._align()
        labels = self.store.labels[self._to_store] if self._to_store is not None else self.store.labels
        self._labels = np.asarray(labels, dtype=np.int64)

    # ------------------------------------------------------------------ alignment
    def _align(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Check identity; return (dataset -> store, store -> dataset) index maps, or Nones if identical."""
        store, m = self.store, self.store.manifest
        where = f"the store at {store.root} ({m.dataset}/{m.split})"
        name, split = _describe(self.base)
        if name is not None and _norm_name(m.dataset) != name:
            raise AlignmentError(f"{where} was built for dataset {m.dataset!r}, but the base dataset is "
                                 f"{type(self.base).__name__} ({name!r}); pass reinforcements built for {name}")
        if split is not None and m.split != split:
            raise AlignmentError(f"{where} was built for split {m.split!r}, but the base dataset is split "
                                 f"{split!r}; pass the {split!r} reinforcements or use split={m.split!r}")
        classes = _num_classes(self.base)
        if classes is not None and classes != m.num_classes:
            raise AlignmentError(f"{where} has {m.num_classes} classes but the base dataset has {classes}; "
                                 "use reinforcements built for this dataset (and a copy with every class)")
        keys = sample_keys(self.base)
        skeys = store.keys
        to_store = from_store = None
        if keys != skeys:
            index = {k: n for n, k in enumerate(skeys)}
            for d, k in enumerate(keys):
                if k not in index:
                    raise AlignmentError(f"sample {d} of the dataset ({k!r}) is not in {where}; the copy holds "
                                         "a file the store was not built with: remove it, or use reinforcements "
                                         "built for this copy")
            to_store = np.fromiter((index[k] for k in keys), dtype=np.int64, count=len(keys))
            from_store = np.full(len(skeys), -1, dtype=np.int64)
            from_store[to_store] = np.arange(len(keys), dtype=np.int64)
            missing = np.flatnonzero(from_store < 0)
            if missing.size:
                s = int(missing[0])
                raise AlignmentError(f"sample {s} of {where} ({skeys[s]!r}) is missing from the dataset copy "
                                     f"({missing.size} of {len(skeys)} missing); restore the file(s) from the "
                                     "original dataset, or use reinforcements built for this copy")
        labels = sample_labels(self.base)
        stored = store.labels if to_store is None else store.labels[to_store]
        bad = np.flatnonzero(labels != stored)
        if bad.size:
            d = int(bad[0])
            raise AlignmentError(f"sample {d} of the dataset ({keys[d]!r}) has label {int(labels[d])} but "
                                 f"{where} has {int(stored[d])} ({bad.size} labels differ); the copy's class "
                                 "list or order differs from the build's: use a complete copy with the same "
                                 "classes, or reinforcements built for it")
        self._check_hashes(keys, to_store, where)
        return to_store, from_store

    def _check_hashes(self, keys: list[str], to_store: np.ndarray | None, where: str) -> None:
        n = len(keys)
        if self.check == "none" or n == 0:
            return
        if self.check == "full" or n <= _FAST_CHECK_SAMPLES:
            picks = np.arange(n)
        else:
            picks = np.sort(np.random.default_rng(self.seed).choice(n, _FAST_CHECK_SAMPLES, replace=False))
        hashes = self.store.content_hashes
        for d in picks.tolist():
            s = d if to_store is None else int(to_store[d])
            h = content_hash(to_rgb_array(load_sample(self.base, d)[0]))
            if not np.array_equal(h, hashes[s]):
                raise AlignmentError(f"sample {d} of the dataset ({keys[d]!r}) has other pixels than the image "
                                     f"{where} was built on (content hash {h.tobytes().hex()} != "
                                     f"{hashes[s].tobytes().hex()}); restore the original file. A deliberately "
                                     "resized or re-encoded copy can be used with check='none' (replayed crops "
                                     "are then approximate)")

    # ------------------------------------------------------------------ epochs and choices
    def set_epoch(self, epoch: int) -> None:
        """Set the epoch that, with the seed and the sample, picks each item's augmentation."""
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ReinforcementError(f"set_epoch: epoch must be a non-negative integer, got {epoch!r}")
        self._epoch.fill_(int(epoch))

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def choose(self, index: int, epoch: int | None = None) -> tuple[bool, int]:
        """``(is_original, j)`` for dataset item ``index`` in ``epoch`` (default the current one).

        ``j`` is the stored augmentation replayed (meaningful when ``is_original`` is False).
        """
        e = self.epoch if epoch is None else int(epoch)
        i = self._store_index(index)
        u = _rng.uniforms(self.seed, i, e, 2, stream=_STREAM_CHOICE)
        na = self.num_augmentations
        if self.sampling == "random":
            j = min(int(u[1] * na), na - 1)
        else:
            cycle, pos = divmod(e, na)
            perm = np.argsort(_rng.uniforms(self.seed, i, cycle, na, stream=_STREAM_CYCLE), kind="stable")
            j = int(perm[pos])
        return bool(u[0] < self.p_original), j

    def _store_index(self, index: int) -> int:
        return int(index) if self._to_store is None else int(self._to_store[index])

    def _dataset_index(self, store_index: int) -> int:
        return int(store_index) if self._from_store is None else int(self._from_store[store_index])

    def _original_params(self, i: int, epoch: int, height: int, width: int) -> dict[str, np.ndarray]:
        return _original_params(self.policy, self.seed, i, epoch, height, width, len(self.store))

    def _one_hot_topk(self, label: int) -> tuple[np.ndarray, np.ndarray]:
        k, c = self.store.topk, self.num_classes
        ids = (label + np.arange(k, dtype=np.int64)) % c
        probs = np.zeros(k, dtype=np.float32)
        probs[0] = 1.0
        return ids, probs

    # ------------------------------------------------------------------ items
    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        """Training item ``index``: ``(image, soft_target)`` on the CPU path, a dict on the device path."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} samples")
        index = int(index) % len(self)
        epoch = self.epoch
        i = self._store_index(index)
        image, label = load_sample(self.base, index)
        original, j = self.choose(index, epoch)
        partner = partner_params = None
        if original:
            params = self._original_params(i, epoch, image.height, image.width)
            ids, probs = self._one_hot_topk(label)
        else:
            params = self.store.params(i, j)
            ids, probs = self.store.targets(i, j)
            if self.policy.uses_mix and int(params["mix_kind"]) != 0:
                p = int(params["mix_partner"])
                partner = load_sample(self.base, self._dataset_index(p))[0]
                partner_params = self.store.params(p, j)
        if self.device.type != "cpu":
            return self._device_item(image, params, partner, partner_params, ids, probs, original, label)
        x = self.policy.apply(image, params, partner, partner_params)
        if original:
            target = one_hot(torch.tensor(label), self.num_classes)
        else:
            target = torch.from_numpy(_densify(ids, probs, self.num_classes, mode=self.densify))
        x = self.transform(x) if self.transform is not None else self.policy.normalize(x)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return x, target

    def _device_item(self, image, params, partner, partner_params, ids, probs, original, label) -> dict:
        s = self.policy.output_size
        as_t = lambda d: {k: torch.from_numpy(np.asarray(v).astype(np.int64)) for k, v in d.items()}  # noqa: E731
        if partner is None:
            partner_img = torch.zeros((3, s, s), dtype=torch.uint8)
            partner_t = {k: torch.zeros_like(v) for k, v in as_t(params).items()}
        else:
            partner_img = self.policy.crop(partner, partner_params)
            partner_t = as_t(partner_params)
        return {
            "image": self.policy.crop(image, params),
            "partner": partner_img,
            "params": as_t(params),
            "partner_params": partner_t,
            "topk_ids": torch.from_numpy(np.asarray(ids, dtype=np.int64)),
            "topk_probs": torch.from_numpy(np.asarray(probs, dtype=np.float32)),
            "is_original": torch.tensor(bool(original)),
            "label": torch.tensor(int(label), dtype=torch.int64),
        }

    def create_device_replay(self, device: str | torch.device | None = None):
        """The :class:`~imagenet_plus.replay.DeviceReplay` that finishes this dataset's device-path batches."""
        from .replay import DeviceReplay

        return DeviceReplay(self.policy, self.num_classes, densify=self.densify,
                            device=self.device if device is None else device)

    @property
    def labels(self) -> np.ndarray:
        """``int64[N]`` label of every item (in the base dataset's order)."""
        return self._labels

    def __repr__(self) -> str:
        m = self.store.manifest
        return (f"{type(self).__name__}(base={type(self.base).__name__}, samples={len(self)}, "
                f"store={str(self.store.root)!r} ({m.dataset}/{m.split}), num_augmentations="
                f"{self.num_augmentations}, num_classes={self.num_classes}, policy={self.policy.name!r}, "
                f"p_original={self.p_original}, densify={self.densify!r}, sampling={self.sampling!r}, "
                f"device={str(self.device)!r}, seed={self.seed})")


class _PlusDataset(VisionDataset):
    """Shared body of the dataset wrappers; subclasses give the file table and build the torchvision base."""

    _name: str = ""
    _splits: tuple[str, ...] = ("train", "test")
    _train_split = "train"
    _base_folder = ""
    _files: tuple[str, ...] = ()

    def __init__(self, root: str | os.PathLike, split: str = "train", reinforcements=None, *,
                 num_augmentations: int | None = None, p_original: float = 0.01, densify: str = "smooth",
                 sampling: str = "random", device: str | torch.device = "cpu",
                 transform: Callable | None = None, target_transform: Callable | None = None,
                 seed: int | None = None, check: str = "fast", **base_kwargs: Any) -> None:
        super().__init__(root)
        self._split = _verify_choice(split, "split", self._splits)
        if not base_kwargs.get("download") and not self._check_exists():
            raise FileNotFoundError(self._not_found())
        self.base = self._make_base(split, **base_kwargs)
        self.reinforced: ReinforcedDataset | None = None
        if split == self._train_split:
            store = _open_reinforcements(self._name if reinforcements is None else reinforcements,
                                         num_augmentations)
            m = store.manifest
            if _norm_name(m.dataset) != self._name or m.split != split:
                raise AlignmentError(f"the store at {store.root} holds reinforcements of {m.dataset}/{m.split}, "
                                     f"not {self._name}/{split}; pass reinforcements built for "
                                     f"{type(self).__name__} split={split!r}")
            self.reinforced = ReinforcedDataset(
                self.base, store, p_original=p_original, densify=densify, sampling=sampling, device=device,
                transform=transform, target_transform=target_transform, seed=seed, check=check)
            self.transform, self.target_transform = transform, target_transform
        else:
            self.transform = transform if transform is not None else create_eval_transform()
            self.target_transform = target_transform

    def _make_base(self, split: str, **kwargs) -> Dataset:
        raise NotImplementedError

    def _not_found(self) -> str:
        missing = [f for f in self._files if not (Path(self.root) / self._base_folder / f).exists()]
        return (f"{type(self).__name__}: no {self._name} copy under root={str(self.root)!r}: missing "
                f"{', '.join(os.path.join(self._base_folder, f) for f in missing)}; pass the folder that "
                f"contains {self._base_folder}/, as for torchvision's own class")

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, idx: int):
        if self.reinforced is not None:
            return self.reinforced[idx]
        image, label = load_sample(self.base, idx)
        image = self.transform(image)
        if self.target_transform is not None:
            label = self.target_transform(label)
        return image, label

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch of the training split (see :meth:`ReinforcedDataset.set_epoch`); no-op on others."""
        if self.reinforced is not None:
            self.reinforced.set_epoch(epoch)

    def create_device_replay(self, device: str | torch.device | None = None):
        """The :class:`~imagenet_plus.replay.DeviceReplay` that finishes the training split's device-path batches."""
        if self.reinforced is None:
            raise ReinforcementError(f"{type(self).__name__}(split={self._split!r}) is an evaluation split: it has "
                                     "no reinforcements to replay; use the training split")
        return self.reinforced.create_device_replay(device)

    @property
    def classes(self) -> list:
        return list(self.base.classes)

    @property
    def num_classes(self) -> int:
        return _num_classes(self.base)

    def extra_repr(self) -> str:
        if self.reinforced is None:
            return f"split={self._split}"
        r = self.reinforced
        return (f"split={self._split}\nReinforcements: {r.store.root} ({r.num_augmentations} augmentations, "
                f"policy {r.policy.name!r}, p_original={r.p_original}, sampling={r.sampling!r})")

    def _check_exists(self) -> bool:
        return all((Path(self.root) / self._base_folder / f).exists() for f in self._files)


class ImageNetPlus(_PlusDataset):
    """`ImageNet <https://image-net.org/>`_ 2012 classification with reinforcements (ImageNet+).

    The training split replays the store's augmentations with the teacher's soft
    targets (see :class:`ReinforcedDataset`); the ``val`` split yields ``(image,
    label)`` through the evaluation transform (resize 256, centre crop 224).

    ``root`` is either torchvision's ImageNet root (``ILSVRC2012_devkit_t12.tar.gz`` or
    its parsed ``meta.bin``, plus ``train/`` and ``val/`` or their archives) or the
    common class-folder layout ``root/{train,val}/<wnid>/*.JPEG`` (read with
    ``ImageFolder``); sample keys are the same (``n01440764/xxx.JPEG``) in both.

    Args:
        root (str or ``pathlib.Path``): root directory of the ImageNet copy.
        split (string, optional): ``"train"`` (default) or ``"val"``.
        reinforcements (optional): store folder, Hub repo id (``"org/name@revision"``)
            or opened store; default the package's ImageNet+ repo. Training split only.
        num_augmentations, p_original, densify, sampling, device, seed, check: see
            :class:`ReinforcedDataset`.
        transform (callable, optional): training: replaces the normalisation of the
            replayed uint8 tensor; ``val``: replaces the evaluation transform (takes a PIL image).
        target_transform (callable, optional): takes the soft target (training) or the label.
    """

    _name = "imagenet"
    _splits = ("train", "val")
    _devkit = "ILSVRC2012_devkit_t12.tar.gz"
    _meta = "meta.bin"
    _archives = {"train": "ILSVRC2012_img_train.tar", "val": "ILSVRC2012_img_val.tar"}

    def _has_devkit(self) -> bool:
        return (Path(self.root) / self._meta).is_file() or (Path(self.root) / self._devkit).is_file()

    def _make_base(self, split: str, **kwargs) -> Dataset:
        if self._has_devkit():
            return tvd.ImageNet(self.root, split=split, **kwargs)
        return tvd.ImageFolder(os.path.join(self.root, split), **kwargs)

    def _check_exists(self) -> bool:
        root = Path(self.root)
        folder = root / self._split
        has_split = folder.is_dir() or (root / self._archives[self._split]).is_file()
        if self._has_devkit():
            return has_split
        return folder.is_dir() and any(p.is_dir() for p in folder.iterdir())

    def _not_found(self) -> str:
        return (f"ImageNetPlus: no ImageNet {self._split!r} split under root={str(self.root)!r}; expected "
                f"torchvision's layout ({self._devkit} or {self._meta}, plus {self._split}/ or "
                f"{self._archives[self._split]}) or class folders {self._split}/<wnid>/*.JPEG")


class CIFAR100Plus(_PlusDataset):
    """`CIFAR-100 <https://www.cs.toronto.edu/~kriz/cifar.html>`_ with reinforcements (CIFAR-100+).

    The ``train`` split replays the store's augmentations with the teacher's soft
    targets (see :class:`ReinforcedDataset`); ``test`` yields ``(image, label)``
    through the evaluation transform. Sample keys are ``"train/{index}"``.

    Args:
        root (str or ``pathlib.Path``): folder holding ``cifar-100-python/``.
        split (string, optional): ``"train"`` (default) or ``"test"``.
        reinforcements (optional): store folder, Hub repo id (``"org/name@revision"``)
            or opened store; default the package's CIFAR-100+ repo. Training split only.
        num_augmentations, p_original, densify, sampling, device, seed, check: see
            :class:`ReinforcedDataset`.
        transform (callable, optional): training: replaces the normalisation of the
            replayed uint8 tensor; ``test``: replaces the evaluation transform (takes a PIL image).
        target_transform (callable, optional): takes the soft target (training) or the label.
        download (bool, optional): download the images with torchvision's ``CIFAR100``.
    """

    _name = "cifar100"
    _splits = ("train", "test")
    _base_folder = "cifar-100-python"
    _files = ("train", "test", "meta")

    def _make_base(self, split: str, **kwargs) -> Dataset:
        return tvd.CIFAR100(self.root, train=split == "train", **kwargs)


class Flowers102Plus(_PlusDataset):
    """`Oxford 102 Flower <https://www.robots.ox.ac.uk/~vgg/data/flowers/102/>`_ with reinforcements.

    The ``train`` split replays the store's augmentations with the teacher's soft
    targets (see :class:`ReinforcedDataset`); ``val`` and ``test`` yield ``(image,
    label)`` through the evaluation transform. Sample keys are ``image_00001.jpg``.

    Args:
        root (str or ``pathlib.Path``): folder holding ``flowers-102/``.
        split (string, optional): ``"train"`` (default), ``"val"`` or ``"test"``.
        reinforcements (optional): store folder, Hub repo id (``"org/name@revision"``)
            or opened store; default the package's Flowers-102+ repo. Training split only.
        num_augmentations, p_original, densify, sampling, device, seed, check: see
            :class:`ReinforcedDataset`.
        transform (callable, optional): training: replaces the normalisation of the
            replayed uint8 tensor; others: replaces the evaluation transform (takes a PIL image).
        target_transform (callable, optional): takes the soft target (training) or the label.
        download (bool, optional): download the images with torchvision's ``Flowers102``.
    """

    _name = "flowers102"
    _splits = ("train", "val", "test")
    _base_folder = "flowers-102"
    _files = ("jpg", "imagelabels.mat", "setid.mat")

    def _make_base(self, split: str, **kwargs) -> Dataset:
        return tvd.Flowers102(self.root, split=split, **kwargs)


class Food101Plus(_PlusDataset):
    """`Food-101 <https://data.vision.ee.ethz.ch/cvl/datasets_extra/food-101/>`_ with reinforcements.

    The ``train`` split replays the store's augmentations with the teacher's soft
    targets (see :class:`ReinforcedDataset`); ``test`` yields ``(image, label)``
    through the evaluation transform. Sample keys are ``apple_pie/1005649.jpg``.

    Args:
        root (str or ``pathlib.Path``): folder holding ``food-101/``.
        split (string, optional): ``"train"`` (default) or ``"test"``.
        reinforcements (optional): store folder, Hub repo id (``"org/name@revision"``)
            or opened store; default the package's Food-101+ repo. Training split only.
        num_augmentations, p_original, densify, sampling, device, seed, check: see
            :class:`ReinforcedDataset`.
        transform (callable, optional): training: replaces the normalisation of the
            replayed uint8 tensor; ``test``: replaces the evaluation transform (takes a PIL image).
        target_transform (callable, optional): takes the soft target (training) or the label.
        download (bool, optional): download the images with torchvision's ``Food101``.
    """

    _name = "food101"
    _splits = ("train", "test")
    _base_folder = "food-101"
    _files = ("images", "meta/train.json", "meta/test.json")

    def _make_base(self, split: str, **kwargs) -> Dataset:
        return tvd.Food101(self.root, split=split, **kwargs)
