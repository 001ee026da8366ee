"""Reinforced datasets: torchvision datasets that replay stored augmentations with teacher soft targets.

:class:`ReinforcedDataset` wraps any torchvision-style dataset the package can identify (see
:mod:`imagenet_plus.adapters`) and a reinforcement store built over it. Training item ``i`` is
one of the sample's stored augmentations, replayed bit for bit from its stored parameters, with
the teacher's stored top-k probabilities densified to a soft target. :class:`ImageNetPlus`,
:class:`CIFAR100Plus`, :class:`Flowers102Plus` and :class:`Food101Plus` are thin wrappers of the
torchvision classes with the same ``root`` and ``split`` arguments.

Which augmentation an item uses depends only on ``(seed, epoch, sample)``, never on worker count
or batch size: call :meth:`ReinforcedDataset.set_epoch` before every epoch, as with
``DistributedSampler`` (the epoch lives in shared memory, so persistent DataLoader workers see it
too). The DataLoader fetches whole batches through :meth:`ReinforcedDataset.__getitems__`.

Several records per decode (``records_per_decode=M``, FKD's trick): each sample is decoded once
and ``M`` of its stored records are replayed from that decode. ``set_epoch(e)`` then selects pass
``e``, which serves for every sample the records of record-epochs ``e*M, ..., e*M+M-1``: view
``k`` is bit for bit the item ``records_per_decode=1`` serves in epoch ``e*M+k``. A pass is ``M``
epochs' worth of records. ``__getitems__`` of ``B`` indices returns ``B*M`` items, the views of a
sample together (grouped, as FKD); :class:`ShuffleBuffer` re-batches a DataLoader's batches so the
views of a sample spread over batches.

Example:
    >>> train = ImageNetPlus("data/imagenet", split="train", reinforcements="runs/imagenet-plus")
    >>> loader = DataLoader(train, batch_size=256, shuffle=True, num_workers=8)
    >>> loss_fn = SoftTargetCrossEntropy()
    >>> for epoch in range(epochs):
    ...     train.set_epoch(epoch)
    ...     for images, soft_targets in loader:
    ...         loss = loss_fn(model(images), soft_targets)
"""

from __future__ import annotations

import os
from typing import Any, Callable, ClassVar

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.datasets.vision import VisionDataset

from . import registry
from ._checks import check_choice, check_device, check_int, check_probability
from .adapters import (CIFAR100Adapter, DatasetAdapter, Flowers102Adapter, Food101Adapter, ImageNetAdapter,
                       SubsetAdapter, adapt)
from .augment import create_eval_transform, create_policy
from .device_decode import DECODE_MODES, collate_device_items, encodes
from .errors import AlignmentError, ArgumentError, ReinforcementError
from .hub import open_reinforcements
from .identity import CHECK_MODES, IdentityChecker
from .imageio import to_rgb_image
from .kernels import check_replay_kernel
from .replay import DENSIFY_MODES, SAMPLINGS, Chooser, ReplaySource, StoreRecords, draw_seed, record_epochs

__all__ = ["ReinforcedDataset", "ShuffleBuffer", "ImageNetPlus", "CIFAR100Plus", "Flowers102Plus", "Food101Plus",
           "open_reinforcements"]


def _generic(name: str) -> bool:
    """Whether an adapter's name says nothing about the data (any folder of images): the store's is not compared."""
    return not name or (name in registry.names() and registry.dataset_info(name).generic)


def _check_meta(adapter: DatasetAdapter, store, where: str) -> None:
    """The store was built for this dataset, split and class count (the one place these are compared)."""
    m = store.manifest
    if not _generic(adapter.name) and m.dataset != adapter.name:
        raise AlignmentError(f"{where} was built for dataset {m.dataset!r}, but the base dataset is "
                             f"{type(adapter.dataset).__name__} ({adapter.name!r}); pass reinforcements built for "
                             f"{adapter.name}")
    if adapter.split is not None and m.split != adapter.split:
        raise AlignmentError(f"{where} was built for split {m.split!r}, but the base dataset is split "
                             f"{adapter.split!r}; pass the {adapter.split!r} reinforcements or use split={m.split!r}")
    classes = adapter.num_classes
    if classes is not None and classes != m.num_classes:
        raise AlignmentError(f"{where} has {m.num_classes} classes but the base dataset has {classes}; use "
                             "reinforcements built for this dataset (and a copy with every class)")


def _unwrap_subsets(adapter: DatasetAdapter) -> tuple[DatasetAdapter, np.ndarray | None]:
    """The dataset under any ``Subset`` wrappers and the rows of it the subset serves (``None``: not a subset)."""
    rows = None
    while isinstance(adapter, SubsetAdapter):
        idx = adapter.indices
        n = len(adapter.inner)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            bad = int(idx[(idx < -n) | (idx >= n)][0])
            raise ArgumentError(f"Subset index {bad} is out of range for its dataset of {n} samples")
        idx = idx % n if n else idx
        rows = idx if rows is None else idx[rows]
        adapter = adapter.inner
    return adapter, rows


def _align(adapter: DatasetAdapter, store) -> tuple[DatasetAdapter, np.ndarray | None, np.ndarray | None,
                                                    np.ndarray | None]:
    """Check the copy against the store: name, split, class count, keys, labels.

    A ``Subset`` serves part of the store's samples: each of its samples must be in the store; the
    store's other samples need not be served (a 10% run over a full store). Everything else must be the
    store's samples exactly, in any order.

    Returns:
        ``(source, rows, to_store, from_store)``: the adapter the replay loads from (the dataset under any
        ``Subset``), the rows of it that items ``0..len-1`` are (``None``: all, in order), and the maps
        source index -> store index and store index -> source index (``None``: identical orders; ``-1``:
        not in the copy / not in the store).
    """
    m = store.manifest
    where = f"the store at {store.root} ({m.dataset}/{m.split})"
    _check_meta(adapter, store, where)
    source, rows = _unwrap_subsets(adapter)
    keys, skeys = source.keys(), store.keys
    to_store = from_store = None
    if keys != skeys:
        index = {k: n for n, k in enumerate(skeys)}
        to_store = np.fromiter((index.get(k, -1) for k in keys), dtype=np.int64, count=len(keys))
        served = np.arange(len(keys)) if rows is None else rows
        extra = served[to_store[served] < 0]
        if extra.size:
            d = int(np.flatnonzero(to_store[served] < 0)[0])
            raise AlignmentError(f"{adapter.describe(d)} of the dataset is not in {where} ({extra.size} such "
                                 "samples): the copy holds a file the store was not built with: remove it, or use "
                                 "reinforcements built for this copy")
        from_store = np.full(len(skeys), -1, dtype=np.int64)
        mapped = np.flatnonzero(to_store >= 0)
        from_store[to_store[mapped]] = mapped
        missing = np.flatnonzero(from_store < 0)
        if missing.size and rows is None:
            s = int(missing[0])
            raise AlignmentError(f"sample {s} of {where} ({skeys[s]!r}) is missing from the dataset copy "
                                 f"({missing.size} of {len(skeys)} missing); restore the file(s) from the original "
                                 "dataset, or use reinforcements built for this copy (to train on part of the "
                                 "store's samples on purpose, pass a torch.utils.data.Subset of the copy)")
    served = np.arange(len(keys)) if rows is None else rows
    labels = np.asarray(source.labels(), dtype=np.int64)[served]
    stored = store.labels[served if to_store is None else to_store[served]]
    bad = np.flatnonzero(labels != stored)
    if bad.size:
        d = int(bad[0])
        raise AlignmentError(f"{adapter.describe(d)} of the dataset has label {int(labels[d])} but {where} has "
                             f"{int(stored[d])} ({bad.size} labels differ); the copy's class list or order differs "
                             "from the build's: use a complete copy with the same classes, or reinforcements built "
                             "for it")
    return source, rows, to_store, from_store


def _check_partners(policy, store, from_store: np.ndarray | None) -> None:
    """A mixing policy pairs records with partner samples from the whole store: all must be in the copy."""
    if not policy.uses_mix or from_store is None:
        return
    missing = np.flatnonzero(from_store < 0)
    if missing.size:
        s = int(missing[0])
        raise AlignmentError(f"the store at {store.root} uses policy {policy.name!r}, which mixes each record with a "
                             f"partner sample of the whole store, and sample {s} ({store.keys[s]!r}) is not in the "
                             f"dataset ({missing.size} of {len(from_store)} missing): take the Subset of a complete "
                             "copy of the dataset (the partners are loaded from it)")


class ReinforcedDataset(Dataset):
    """Replay a reinforcement store over a torchvision-style dataset.

    Training items are ``(image, soft_target)``: the replayed augmentation as a normalised
    float32 tensor ``[3, S, S]`` and a float32 distribution ``[C]`` summing to 1 (the teacher's
    top-k, densified). With probability ``p_original`` an item is the original image instead,
    with the policy's ordinary random augmentation (freshly drawn; never mixed) and a one-hot
    target. With ``device="cuda"`` items are dicts for
    :class:`~imagenet_plus.replay.DeviceReplay`, which finishes whole batches on the GPU (see
    :meth:`create_device_replay`).

    On construction every sample's key and label are compared with the store's (a copy in
    another order is aligned by key; a missing, extra or relabelled sample raises
    :class:`~imagenet_plus.errors.AlignmentError` naming it). Every time a sample is decoded its
    identity is checked too (``check``), so a swapped, truncated, re-encoded or resized file
    raises an error naming it instead of training on targets that are not its own.

    Args:
        base: the dataset the store was built over (torchvision's ImageNet, ImageFolder, CIFAR,
            Flowers102, Food101, a ``Subset`` of those, ``imagenet_plus.adapters.Digits``, any
            dataset with ``keys``, or a :class:`~imagenet_plus.adapters.DatasetAdapter`). Its own
            ``transform`` is not used.
        reinforcements: a store folder, a Hub repo id (``"org/name@revision"``) or an opened store.
        num_augmentations: use the first ``num_augmentations`` stored augmentations (default all).
        p_original: probability of an original image with its one-hot label.
        densify: ``"smooth"`` (spread the tail mass over the other classes) or ``"none"``.
        sampling: ``"random"`` (an augmentation drawn per epoch) or ``"cycle"`` (each
            augmentation exactly once per ``num_augmentations`` epochs).
        device: ``"cpu"`` to replay in the DataLoader workers; ``"cuda"`` to return device-path
            items (params and sparse targets, with file bytes or crops, see ``decode``) for
            :class:`~imagenet_plus.replay.DeviceReplay`; collate them with :attr:`collate_fn`.
        decode: where a dataset of image files is decoded on the device path: ``"device"`` (the
            default with ``device="cuda"``): workers only read each file, check its digest and
            identity and read its records; ``DeviceReplay`` decodes the batch (nvJPEG) and crops and
            resizes on the GPU (:mod:`imagenet_plus.device_decode`); ``"workers"``: workers decode
            and crop, the GPU finishes (bit-exact geometry). ``device="cpu"`` with
            ``decode="device"`` makes the same byte items for a ``DeviceReplay`` on the CPU (equal to
            the CPU path bit for bit). Array-backed datasets (CIFAR, digits) always crop in the workers.
        transform: replaces the normalisation: takes the replayed uint8 ``[3, S, S]`` tensor.
        target_transform: takes the float32 soft target ``[C]``.
        seed: seed of the per-epoch choices (default: drawn once, see ``self.seed``).
        check: ``"exact"`` (the file's bytes must be the build's) or ``"resized"`` (a resized or
            re-encoded copy: same picture, same aspect ratio); see :mod:`imagenet_plus.identity`.
        records_per_decode: ``M >= 1`` records of a sample replayed from one decode (CPU path). With
            ``M > 1`` an epoch is a pass: ``set_epoch(e)`` serves every sample's records of
            record-epochs ``e*M .. e*M+M-1``, each bit for bit the item ``M=1`` serves in that epoch
            (originals and ``cycle`` included); ``__getitems__`` of ``B`` indices returns ``B*M`` items
            (sample-major: item ``b*M+k`` is view ``k`` of index ``b``), ``__getitem__`` the ``M`` views
            stacked (``images [M, 3, S, S]``, ``targets [M, C]``); ``len`` stays the number of samples.
            Default 1: one record per decode.
    """

    def __init__(self, base, reinforcements, *, num_augmentations: int | None = None, p_original: float = 0.01,
                 densify: str = "smooth", sampling: str = "random", device: str | torch.device = "cpu",
                 transform: Callable | None = None, target_transform: Callable | None = None,
                 seed: int | None = None, check: str = "exact", decode: str | None = None,
                 records_per_decode: int = 1) -> None:
        check_choice(densify, "densify", DENSIFY_MODES)
        check_choice(sampling, "sampling", SAMPLINGS)
        check_choice(check, "check", CHECK_MODES)
        check_probability(p_original, "p_original")
        check_int(num_augmentations, "num_augmentations", low=1, optional=True)
        self.records_per_decode = check_int(records_per_decode, "records_per_decode", low=1)
        self.device = check_device(device, f"device={str(device)!r}",
                                   "use device='cpu' (replay in the DataLoader workers)")
        self.decode = check_choice("device" if decode is None and self.device.type == "cuda" else decode or "workers",
                                   "decode", DECODE_MODES)
        self._check_views_device()
        if (self.device.type != "cpu" or self.decode == "device") and (transform is not None or
                                                                        target_transform is not None):
            raise ArgumentError(f"transform/target_transform apply to the CPU path; with device='{self.device}' "
                                f"and decode={self.decode!r} DeviceReplay finishes the batch: apply them to its output")
        self.adapter = adapt(base)
        self.base = self.adapter.dataset
        self.transform, self.target_transform = transform, target_transform
        self.seed = draw_seed(seed)
        self.store = open_reinforcements(reinforcements, num_augmentations)
        self.num_augmentations = self.store.num_augmentations
        self.num_classes = self.store.num_classes
        self.policy = create_policy(self.store.policy_config)
        check_replay_kernel(self.store.manifest)  # once per process: another resize kernel than the build's
        source, self._rows, to_store, from_store = _align(self.adapter, self.store)
        _check_partners(self.policy, self.store, from_store)
        if hasattr(self.store, "check_manifest"):
            self.store.check_manifest()
        self.chooser = Chooser(self.seed, self.num_augmentations, p_original, sampling)
        records = StoreRecords(source, self.store, IdentityChecker(self.store, check), to_store=to_store,
                               from_store=from_store)
        self.source = ReplaySource(records, self.policy, self.chooser, densify=densify)
        self.check = check
        served = np.arange(len(source)) if self._rows is None else self._rows
        self._labels = np.asarray(self.store.labels[served if to_store is None else to_store[served]], np.int64)

    # -- epochs and choices ----------------------------------------------------------------------------
    @property
    def p_original(self) -> float:
        return self.chooser.p_original

    @property
    def sampling(self) -> str:
        return self.chooser.sampling

    @property
    def densify(self) -> str:
        return self.source.densify

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch that, with the seed and the sample, picks each item's augmentation.

        With ``records_per_decode=M > 1`` it is the pass: record-epochs ``epoch*M .. epoch*M+M-1``.
        """
        self.chooser.set_epoch(epoch)

    @property
    def epoch(self) -> int:
        """The current epoch (with ``records_per_decode > 1``: the pass)."""
        return self.chooser.epoch.get()

    @property
    def record_epochs(self) -> list[int]:
        """The record-epochs the current pass serves: ``[epoch*M, ..., epoch*M+M-1]`` (``[epoch]`` for ``M=1``)."""
        return [int(r) for r in record_epochs(self.epoch, self.records_per_decode)]

    def choose(self, index: int, epoch: int | None = None) -> tuple[bool, int]:
        """``(is_original, j)`` for dataset item ``index`` in ``epoch`` (default the current one)."""
        if self.records_per_decode != 1:
            raise ArgumentError(f"records_per_decode={self.records_per_decode}: an item has "
                                f"{self.records_per_decode} records per pass; use choose_views(index, epoch)")
        plan = self.source.plan([self._index(index)], epoch)
        return bool(plan.original[0]), int(plan.aug[0])

    def choose_views(self, index: int, epoch: int | None = None) -> list[tuple[int, bool, int]]:
        """``[(record_epoch, is_original, j)]`` of the ``M`` views of item ``index`` in pass ``epoch``.

        ``epoch`` defaults to the current one; with ``records_per_decode=1``: ``[(epoch, is_original, j)]``.
        """
        plan = self.source.plan([self._index(index)], epoch, views=self.records_per_decode)
        return [(int(r), bool(o), int(j)) for r, o, j in zip(plan.epochs, plan.original, plan.aug)]

    # -- items -----------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.adapter)

    def _index(self, index) -> int:
        """The replay's index of item ``index`` (its row in the dataset under a ``Subset``)."""
        n = len(self)
        if not -n <= int(index) < n:
            raise IndexError(f"index {index} out of range for a dataset of {n} samples")
        i = int(index) % n
        return i if self._rows is None else int(self._rows[i])

    def __getitem__(self, index: int):
        """Training item ``index``: ``(image, soft_target)`` on the CPU path, a dict on the device path.

        With ``records_per_decode=M > 1``: its ``M`` views stacked, ``(images [M, 3, S, S], targets [M, C])``
        (lists where a ``transform`` returns no tensors).
        """
        items = self.__getitems__([index])
        return items[0] if self.records_per_decode == 1 else _stack_views(items)

    def __getitems__(self, indices) -> list:
        """A whole batch of items at once (the DataLoader calls this): one batched read and finish.

        ``records_per_decode=M``: ``len(indices) * M`` items, item ``b*M+k`` view ``k`` of ``indices[b]``.
        """
        idx = [self._index(i) for i in indices]
        if self.device.type != "cpu" or self.decode == "device":
            self._check_views_device()
            device_decode = self.decode == "device" and encodes(self.source.data)
            return self.source.device_items(idx, decode="device" if device_decode else "workers")
        x, targets = self.source.items(idx, normalized=self.transform is None, views=self.records_per_decode)
        if self.transform is not None:
            x = [self.transform(v) for v in x]
        if self.target_transform is not None:
            return [(x[b], self.target_transform(targets[b])) for b in range(len(targets))]
        return [(x[b], targets[b]) for b in range(len(targets))]

    def _check_views_device(self) -> None:
        if self.records_per_decode != 1 and (self.device.type != "cpu" or self.decode == "device"):
            raise ArgumentError(f"records_per_decode={self.records_per_decode} is a CPU-path option; with "
                                f"device='{self.device}' and decode={self.decode!r} pass records_per_decode=1 "
                                "(or device='cpu', decode='workers')")

    @property
    def collate_fn(self):
        """The DataLoader ``collate_fn`` of this dataset's items (device path: variable-length file bytes packed
        into one tensor, :func:`~imagenet_plus.device_decode.collate_device_items`; CPU path: ``default_collate``)."""
        from torch.utils.data import default_collate

        return collate_device_items if (self.device.type != "cpu" or self.decode == "device") else default_collate

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
                f"device={str(self.device)!r}, decode={self.decode!r}, check={self.check!r}, seed={self.seed}"
                f"{f', records_per_decode={self.records_per_decode}' if self.records_per_decode != 1 else ''})")


def _stack_views(items: list) -> tuple:
    """The ``M`` views of one item as ``(images [M, ...], targets [M, ...])`` (lists where they are not tensors)."""
    xs, ys = [x for x, _ in items], [y for _, y in items]
    return tuple(torch.stack(v) if all(isinstance(t, torch.Tensor) for t in v) else v for v in (xs, ys))


_SHUFFLE_STREAM = 0x56494557  # seed stream of ShuffleBuffer's draws


class ShuffleBuffer:
    """Re-batch a DataLoader's batches through a shuffle buffer, so the views of a sample spread over batches.

    With ``records_per_decode=M`` a DataLoader batch holds the ``M`` views of each of its samples
    together (grouped, as FKD). Iterating this object instead yields batches of ``batch_size`` items
    drawn from a buffer of the last ``buffer_size`` items, in the main process: every item of a pass
    comes out exactly once, and two views of a sample share a batch about as often as two items
    ``buffer_size`` apart do. The draws depend only on ``(seed, epoch)`` and the loader's items, so a
    run with the same sampler seed repeats itself; call :meth:`set_epoch` every epoch (it sets only
    the buffer's epoch: set the sampler's and the dataset's as usual). Under ``DistributedSampler``
    each rank buffers its own samples' views: none moves to another rank.

    Args:
        loader: an iterable of collated batches (tensors in tuples, lists or dicts, all with the same
            first dimension), e.g. a ``DataLoader``.
        batch_size: items per batch yielded.
        buffer_size: items held before the first batch is drawn (``>= batch_size``); memory is about
            ``buffer_size`` items plus one loader batch (uint8 items via ``transform`` take 4x less).
        seed: seed of the draws.
        drop_last: drop the last batch of a pass when it has fewer than ``batch_size`` items.
    """

    def __init__(self, loader, batch_size: int, *, buffer_size: int, seed: int = 0, drop_last: bool = False) -> None:
        self.loader = loader
        self.batch_size = check_int(batch_size, "batch_size", low=1)
        self.buffer_size = check_int(buffer_size, "buffer_size", low=self.batch_size)
        self.seed = check_int(seed, "seed", low=0)
        self.drop_last = bool(drop_last)
        self._epoch = torch.zeros((), dtype=torch.int64)

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch the draws depend on."""
        self._epoch.fill_(check_int(epoch, "epoch", low=0))

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def __repr__(self) -> str:
        return (f"ShuffleBuffer(batch_size={self.batch_size}, buffer_size={self.buffer_size}, seed={self.seed}, "
                f"drop_last={self.drop_last}, epoch={self.epoch})")

    def __iter__(self):
        from torch.utils._pytree import tree_flatten, tree_unflatten

        rng = np.random.default_rng([self.seed, self.epoch, _SHUFFLE_STREAM])
        pool: _Pool | None = None
        for batch in self.loader:
            leaves, spec = tree_flatten(batch)
            pool = _Pool(leaves, spec) if pool is None else pool
            pool.add(leaves, spec)
            while pool.held.size >= self.buffer_size:
                pick = rng.choice(pool.held.size, self.batch_size, replace=False)
                yield tree_unflatten(pool.take(pool.held[pick], np.delete(pool.held, pick)), spec)
        if pool is None:
            return
        order = pool.held[rng.permutation(pool.held.size)]  # the rest, in a random order
        for start in range(0, order.size, self.batch_size):
            slots = order[start:start + self.batch_size]
            if slots.size == self.batch_size or not self.drop_last:
                yield tree_unflatten(pool.take(slots, order[start + self.batch_size:]), spec)


class _Pool:
    """The items a :class:`ShuffleBuffer` holds: one growing tensor per leaf, slots reused as items leave."""

    def __init__(self, leaves: list, spec) -> None:
        self.spec = spec
        self.store = [self._check(t, leaves).new_empty((0, *t.shape[1:])) for t in leaves]
        self.held = np.zeros(0, dtype=np.int64)  # slots of the held items
        self.free: list[int] = []

    @staticmethod
    def _check(t, leaves) -> torch.Tensor:
        if not isinstance(t, torch.Tensor) or t.ndim == 0 or t.shape[0] != leaves[0].shape[0]:
            raise ArgumentError("ShuffleBuffer: a loader batch must hold tensors with one common first (item) "
                                f"dimension, got {type(t).__name__} {tuple(getattr(t, 'shape', ()))}; pass a "
                                "DataLoader with the default collate")
        return t

    def add(self, leaves: list, spec) -> None:
        """Hold a loader batch's items."""
        if spec != self.spec or any(self._check(t, leaves).dtype != s.dtype or t.shape[1:] != s.shape[1:]
                                    for t, s in zip(leaves, self.store)):
            raise ArgumentError("ShuffleBuffer: the loader's batches changed structure, dtype or item shape; every "
                                "batch must hold the same fields")
        n = int(leaves[0].shape[0])
        if len(self.free) < n:  # grow every leaf's storage by the missing slots
            grow, start = n - len(self.free), self.store[0].shape[0]
            self.store = [torch.cat([s, s.new_empty((grow, *s.shape[1:]))]) for s in self.store]
            self.free += range(start, start + grow)
        slots = np.asarray(self.free[:n], dtype=np.int64)
        del self.free[:n]
        index = torch.from_numpy(slots)
        for s, t in zip(self.store, leaves):
            s[index] = t
        self.held = np.concatenate([self.held, slots])

    def take(self, slots: np.ndarray, keep: np.ndarray) -> list:
        """The items in ``slots`` (they leave the pool; ``keep``: the slots still held)."""
        self.held = keep
        self.free += slots.tolist()
        index = torch.from_numpy(np.ascontiguousarray(slots))
        return [s[index] for s in self.store]


class _PlusDataset(VisionDataset):
    """Shared body of the dataset wrappers: an adapter class creates the torchvision base."""

    _adapter: ClassVar[type[DatasetAdapter]]

    def __init__(self, root: str | os.PathLike, split: str = "train", reinforcements=None, *,
                 num_augmentations: int | None = None, p_original: float = 0.01, densify: str = "smooth",
                 sampling: str = "random", device: str | torch.device = "cpu",
                 transform: Callable | None = None, target_transform: Callable | None = None,
                 seed: int | None = None, check: str = "exact", decode: str | None = None,
                 records_per_decode: int = 1,
                 **base_kwargs: Any) -> None:
        super().__init__(root)
        self._split = check_choice(split, "split", self._adapter.splits)
        self.adapter = self._adapter.create(root, split, **base_kwargs)
        self.base = self.adapter.dataset
        self.reinforced: ReinforcedDataset | None = None
        if split == self._adapter.train_split:
            store = open_reinforcements(self._adapter.name if reinforcements is None else reinforcements,
                                        num_augmentations)  # dataset, split and classes: compared by _align
            self.reinforced = ReinforcedDataset(
                self.adapter, store, p_original=p_original, densify=densify, sampling=sampling, device=device,
                transform=transform, target_transform=target_transform, seed=seed, check=check, decode=decode,
                records_per_decode=records_per_decode)
            self.transform, self.target_transform = transform, target_transform
        else:
            self.transform = transform if transform is not None else create_eval_transform()
            self.target_transform = target_transform

    def __len__(self) -> int:
        return len(self.adapter)

    def __getitem__(self, idx: int):
        if self.reinforced is not None:
            return self.reinforced[idx]
        sample = self.adapter.load(idx)
        image = self.transform(to_rgb_image(sample.image))  # evaluation transforms take PIL images
        label = sample.label if self.target_transform is None else self.target_transform(sample.label)
        return image, label

    def __getitems__(self, indices) -> list:
        if self.reinforced is not None:
            return self.reinforced.__getitems__(indices)
        return [self[i] for i in indices]

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch of the training split (see :meth:`ReinforcedDataset.set_epoch`); no-op on others."""
        if self.reinforced is not None:
            self.reinforced.set_epoch(epoch)

    @property
    def collate_fn(self):
        """The DataLoader ``collate_fn`` of this split's items (see :attr:`ReinforcedDataset.collate_fn`)."""
        from torch.utils.data import default_collate

        return self.reinforced.collate_fn if self.reinforced is not None else default_collate

    def create_device_replay(self, device: str | torch.device | None = None):
        """The :class:`~imagenet_plus.replay.DeviceReplay` that finishes the training split's device-path batches."""
        if self.reinforced is None:
            raise ReinforcementError(f"{type(self).__name__}(split={self._split!r}) is an evaluation split: it has "
                                     "no reinforcements to replay; use the training split")
        return self.reinforced.create_device_replay(device)

    @property
    def classes(self) -> list:
        return list(self.adapter.classes or [])

    @property
    def num_classes(self) -> int | None:
        return self.adapter.num_classes

    def extra_repr(self) -> str:
        if self.reinforced is None:
            return f"split={self._split}"
        r = self.reinforced
        return (f"split={self._split}\nReinforcements: {r.store.root} ({r.num_augmentations} augmentations, "
                f"policy {r.policy.name!r}, p_original={r.p_original}, sampling={r.sampling!r}, check={r.check!r})")


class ImageNetPlus(_PlusDataset):
    """`ImageNet <https://image-net.org/>`_ 2012 classification with reinforcements (ImageNet+).

    The training split replays the store's augmentations with the teacher's soft targets (see
    :class:`ReinforcedDataset`); the ``val`` split yields ``(image, label)`` through the
    evaluation transform (resize 256, centre crop 224). ``root`` is either torchvision's
    ImageNet root (``ILSVRC2012_devkit_t12.tar.gz`` or its parsed ``meta.bin``, plus ``train/``
    and ``val/``) or the common class-folder layout ``root/{train,val}/<wnid>/*.JPEG``; sample
    keys are ``n01440764/xxx.JPEG`` in both.

    Args:
        root (str or ``pathlib.Path``): root directory of the ImageNet copy.
        split (string, optional): ``"train"`` (default) or ``"val"``.
        reinforcements (optional): store folder, Hub repo id (``"org/name@revision"``) or opened
            store; default the package's ImageNet+ repo. Training split only.
        num_augmentations, p_original, densify, sampling, device, seed, check, decode, records_per_decode: see
            :class:`ReinforcedDataset`.
        transform (callable, optional): training: replaces the normalisation of the replayed uint8
            tensor; ``val``: replaces the evaluation transform (takes a PIL image).
        target_transform (callable, optional): takes the soft target (training) or the label.
    """

    _adapter = ImageNetAdapter


class CIFAR100Plus(_PlusDataset):
    """`CIFAR-100 <https://www.cs.toronto.edu/~kriz/cifar.html>`_ with reinforcements (CIFAR-100+).

    The ``train`` split replays the store's augmentations with the teacher's soft targets (see
    :class:`ReinforcedDataset`); ``test`` yields ``(image, label)`` through the evaluation
    transform. Sample keys are ``"train/{index}"``.

    Args:
        root (str or ``pathlib.Path``): folder holding ``cifar-100-python/``.
        split (string, optional): ``"train"`` (default) or ``"test"``.
        reinforcements (optional): store folder, Hub repo id or opened store; default the
            package's CIFAR-100+ repo. Training split only.
        num_augmentations, p_original, densify, sampling, device, seed, check, decode, records_per_decode: see
            :class:`ReinforcedDataset`.
        transform (callable, optional): training: replaces the normalisation of the replayed uint8
            tensor; ``test``: replaces the evaluation transform (takes a PIL image).
        target_transform (callable, optional): takes the soft target (training) or the label.
        download (bool, optional): download the images with torchvision's ``CIFAR100``.
    """

    _adapter = CIFAR100Adapter


class Flowers102Plus(_PlusDataset):
    """`Oxford 102 Flower <https://www.robots.ox.ac.uk/~vgg/data/flowers/102/>`_ with reinforcements.

    The ``train`` split replays the store's augmentations with the teacher's soft targets (see
    :class:`ReinforcedDataset`); ``val`` and ``test`` yield ``(image, label)`` through the
    evaluation transform. Sample keys are ``image_00001.jpg``.

    Args:
        root (str or ``pathlib.Path``): folder holding ``flowers-102/``.
        split (string, optional): ``"train"`` (default), ``"val"`` or ``"test"``.
        reinforcements (optional): store folder, Hub repo id or opened store; default the
            package's Flowers-102+ repo. Training split only.
        num_augmentations, p_original, densify, sampling, device, seed, check, decode, records_per_decode: see
            :class:`ReinforcedDataset`.
        transform (callable, optional): training: replaces the normalisation of the replayed uint8
            tensor; others: replaces the evaluation transform (takes a PIL image).
        target_transform (callable, optional): takes the soft target (training) or the label.
        download (bool, optional): download the images with torchvision's ``Flowers102``.
    """

    _adapter = Flowers102Adapter


class Food101Plus(_PlusDataset):
    """`Food-101 <https://data.vision.ee.ethz.ch/cvl/datasets_extra/food-101/>`_ with reinforcements.

    The ``train`` split replays the store's augmentations with the teacher's soft targets (see
    :class:`ReinforcedDataset`); ``test`` yields ``(image, label)`` through the evaluation
    transform. Sample keys are ``apple_pie/1005649.jpg``.

    Args:
        root (str or ``pathlib.Path``): folder holding ``food-101/``.
        split (string, optional): ``"train"`` (default) or ``"test"``.
        reinforcements (optional): store folder, Hub repo id or opened store; default the
            package's Food-101+ repo. Training split only.
        num_augmentations, p_original, densify, sampling, device, seed, check, decode, records_per_decode: see
            :class:`ReinforcedDataset`.
        transform (callable, optional): training: replaces the normalisation of the replayed uint8
            tensor; ``test``: replaces the evaluation transform (takes a PIL image).
        target_transform (callable, optional): takes the soft target (training) or the label.
        download (bool, optional): download the images with torchvision's ``Food101``.
    """

    _adapter = Food101Adapter

