"""A ``datasets`` transform replaying stored augmentations: a thin layer over the replay core.

:func:`create_transform` returns a :class:`ReplayTransform` for ``datasets.Dataset.with_transform``:
rows of the Parquet export (``index``, ``key``, ``label``, ``image``, the param columns, ``topk_ids``,
``topk_probs``, ``checksum``) become ``{"pixel_values": float32 [3, S, S], "soft_target": float32 [C]}``.
Everything else is :class:`~imagenet_plus.replay.ReplaySource`, exactly as for
:class:`~imagenet_plus.datasets.ReinforcedDataset`, over the rows' records source
:class:`~imagenet_plus.hf.rows.RowRecords`: the same :class:`~imagenet_plus.replay.Chooser` (same
seed and epoch: same items, ``random`` or ``cycle``, the same ``p_original`` default; the epoch in
shared memory, so ``set_epoch`` reaches persistent DataLoader workers), the same partners, pixels
and targets. Every row is checked on its first use (key, label, and the checksum of its records
under the store's build id) and its image on every decode (see :mod:`imagenet_plus.hf.rows`).

``records_per_decode=M`` (as for the dataset): each row's image is decoded once and ``M`` of its
records replayed; ``set_epoch(e)`` is pass ``e``, record-epochs ``e*M .. e*M+M-1``. A batch of ``B``
rows becomes ``B*M`` outputs (row-major: output ``b*M+k`` is view ``k`` of row ``b``), so a DataLoader
over ``Dataset.with_transform`` yields ``B*M`` items per batch of ``B`` rows, as the dataset's
``__getitems__`` does. Single-row indexing (``ds[i]``) keeps only the first of a row's outputs
(``datasets`` picks one row of the transform's batch): use :meth:`ReplayTransform.item` for all ``M``.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .._checks import check_choice, check_int
from ..errors import ArgumentError, PolicyError, StoreError
from ..identity import CHECK_MODES
from ..kernels import check_replay_kernel
from ..replay import Chooser, ReplaySource, draw_seed, record_epochs
from .rows import ROW_SOURCES, RowRecords

__all__ = ["ReplayTransform", "create_transform"]


class ReplayTransform:
    """Rows -> ``{"pixel_values", "soft_target"}`` by replaying stored augmentations (see :func:`create_transform`).

    Call :meth:`set_epoch` before every epoch, as with :class:`~imagenet_plus.datasets.ReinforcedDataset`.
    ``records_per_decode=M``: ``M`` outputs per row, the records of record-epochs ``e*M .. e*M+M-1`` of pass ``e``.
    """

    def __init__(self, source: ReplaySource, records_per_decode: int = 1) -> None:
        self.source = source
        self.records_per_decode = check_int(records_per_decode, "records_per_decode", low=1)
        self.manifest, self.policy, self.chooser = source.data.manifest, source.policy, source.chooser

    def __repr__(self) -> str:
        m, d = self.manifest, self.source.data
        return (f"ReplayTransform(dataset={m.dataset!r}, policy={self.policy.name!r}, "
                f"num_augmentations={self.num_augmentations}, p_original={self.chooser.p_original}, "
                f"sampling={self.chooser.sampling!r}, seed={self.seed}, source={d.source!r}, "
                f"check={d.check or 'exact where rows carry their file'!r}, densify={self.densify!r}, "
                f"records_per_decode={self.records_per_decode})")

    @property
    def seed(self) -> int:
        return self.chooser.seed

    @property
    def num_augmentations(self) -> int:
        return self.chooser.num_augmentations

    @property
    def densify(self) -> str:
        return self.source.densify

    @property
    def store(self):
        """The store with its shards (opened on first use, when params or targets come from the shards)."""
        return self.source.data.store

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch the choices depend on (shared memory: persistent DataLoader workers see it).

        With ``records_per_decode=M > 1`` it is the pass: record-epochs ``epoch*M .. epoch*M+M-1``.
        """
        self.chooser.set_epoch(epoch)

    def choose(self, i: int, epoch: int | None = None) -> tuple[bool, int]:
        """``(is_original, j)`` for sample ``i`` in ``epoch`` (default the current one)."""
        if self.records_per_decode != 1:
            raise ArgumentError(f"records_per_decode={self.records_per_decode}: a row has "
                                f"{self.records_per_decode} records per pass; use choose_views(i, epoch)")
        original, j = self.chooser.choose([int(i)], epoch)
        return bool(original[0]), int(j[0])

    def choose_views(self, i: int, epoch: int | None = None) -> list[tuple[int, bool, int]]:
        """``[(record_epoch, is_original, j)]`` of sample ``i``'s ``M`` views in pass ``epoch`` (default current)."""
        e = self.chooser.epoch.get() if epoch is None else check_int(epoch, "epoch", low=0)
        out = []
        for r in record_epochs(e, self.records_per_decode):
            original, j = self.chooser.choose([int(i)], int(r))
            out.append((int(r), bool(original[0]), int(j[0])))
        return out

    # -- items -----------------------------------------------------------------------------------------
    def items(self, rows: Sequence[Mapping[str, Any]], epoch: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised images ``[B*M, 3, S, S]`` and dense targets ``[B*M, C]`` of ``rows`` in ``epoch`` (``M`` =
        ``records_per_decode``; output ``b*M+k`` is view ``k`` of row ``b``)."""
        return self.source.items(rows, epoch, views=self.records_per_decode)

    def replay(self, row: Mapping[str, Any], j: int) -> dict[str, torch.Tensor]:
        """Stored augmentation ``j`` of one row, exactly (no choice): ``{"pixel_values", "soft_target"}``."""
        if not 0 <= int(j) < self.num_augmentations:
            raise IndexError(f"augmentation {j} outside [0, {self.num_augmentations})")
        x, y = self.source.items([row], aug=[int(j)])
        return {"pixel_values": x[0], "soft_target": y[0]}

    def item(self, row: Mapping[str, Any], epoch: int | None = None) -> dict[str, torch.Tensor]:
        """The training item of one row (a ``dict`` of column values); ``records_per_decode=M > 1``: its ``M``
        views stacked (``pixel_values [M, 3, S, S]``, ``soft_target [M, C]``)."""
        x, y = self.items([row], epoch)
        if self.records_per_decode != 1:
            return {"pixel_values": x, "soft_target": y}
        return {"pixel_values": x[0], "soft_target": y[0]}

    def __call__(self, batch: Mapping[str, list]) -> dict[str, list]:
        if "index" not in batch:
            raise StoreError("rows have no 'index' column; load the Parquet export of the store")
        n = len(batch["index"])
        x, y = self.items([{name: values[b] for name, values in batch.items()} for b in range(n)])
        return {"pixel_values": list(x), "soft_target": list(y)}


class _OpenShards:
    """Opens the store with its shards on first need (picklable: spawned DataLoader workers get a copy)."""

    def __init__(self, store, spec, num_augmentations: int, hub_kwargs: Mapping[str, Any]) -> None:
        self.store, self.spec, self.num_augmentations, self.hub_kwargs = store, spec, num_augmentations, dict(hub_kwargs)

    def __call__(self):
        if self.store is not None:
            return self.store
        from ..hub import resolve_reinforcements
        from ..store import open_store

        n = self.num_augmentations
        return open_store(resolve_reinforcements(self.spec, n, **self.hub_kwargs), num_augmentations=n)


def create_transform(reinforcements, policy=None, num_augmentations: int | None = None, seed: int | None = None,
                     densify: str = "smooth", *, p_original: float = 0.01, sampling: str = "random",
                     source: str = "auto", check: str | None = None, partners=None, revision: str | None = None,
                     cache_dir: str | os.PathLike | None = None, local_files_only: bool | None = None,
                     records_per_decode: int = 1) -> ReplayTransform:
    """A transform for ``datasets.Dataset.with_transform`` that replays the stored augmentations.

    Args:
        reinforcements: the store: an open :class:`~imagenet_plus.store.ReinforcementStore`, a folder,
            or a Hub spec (``"org/name[@revision]"`` or a dataset name). With rows from the Parquet
            export only ``manifest.json`` and ``samples.safetensors`` are read; the shards only for
            ``source="store"``.
        policy: the augmentation policy (default: rebuilt from the manifest); it must declare the
            stored param fields.
        num_augmentations: draw ``j`` from the first ``num_augmentations`` augmentations (default all).
        seed: seed of the per-epoch choices (``None``: drawn once, see ``transform.seed``).
        densify: ``"smooth"`` (spread the tail mass over the other classes) or ``"none"``.
        p_original: probability of the original image with the policy's ordinary random augmentation
            and its one-hot label (default 0.01, as :class:`~imagenet_plus.datasets.ReinforcedDataset`).
        sampling: ``"random"`` or ``"cycle"`` (as :class:`~imagenet_plus.datasets.ReinforcedDataset`).
        source: where params and targets come from: ``"row"``, ``"store"`` or ``"auto"``.
        check: how a row's image is checked against the store: ``"exact"`` (the sha256 of the row's
            file bytes and the decoded size), ``"resized"`` (aspect ratio and thumbnail), or ``None``:
            ``"exact"`` wherever a row carries its file's bytes, ``"resized"`` elsewhere.
        partners: mixing policies only: the dataset (un-transformed) to read partner rows from.
        revision, cache_dir, local_files_only: Hub options, as in ``resolve_reinforcements``.
        records_per_decode: ``M >= 1`` records per decoded row (see the module docstring): a batch of ``B``
            rows gives ``B*M`` outputs, ``set_epoch(e)`` selects record-epochs ``e*M .. e*M+M-1``.

    Returns:
        A :class:`ReplayTransform`.

    Example:
        >>> ds = load_dataset("imagenet-plus/cifar100-plus", split="train")
        >>> transform = create_transform("imagenet-plus/cifar100-plus", seed=0)
        >>> ds = ds.with_transform(transform)
        >>> for epoch in range(epochs):
        ...     transform.set_epoch(epoch)
        ...     for batch in DataLoader(ds, batch_size=256, num_workers=8, persistent_workers=True): ...
    """
    from ..augment import create_policy
    from ..store import ReinforcementStore, open_store

    check_choice(source, "source", ROW_SOURCES)
    check_int(records_per_decode, "records_per_decode", low=1)
    if check is not None:
        check_choice(check, "check", CHECK_MODES)
    hub_kwargs = {"revision": revision, "cache_dir": cache_dir, "local_files_only": local_files_only}
    if isinstance(reinforcements, ReinforcementStore):
        store, identity = reinforcements, reinforcements
    else:
        from ..hub import resolve_identity

        store, identity = None, open_store(resolve_identity(reinforcements, **hub_kwargs), check_files=False)
    manifest = identity.manifest
    available = store.num_augmentations if store is not None else manifest.num_augmentations
    n = check_int(available if num_augmentations is None else num_augmentations, "num_augmentations", low=1)
    if n > available:
        raise StoreError(f"num_augmentations={n}: the store provides {available} augmentations per sample; pass an "
                         f"integer in [1, {available}] or None")
    pol = create_policy(manifest.policy if policy is None else policy)
    check_replay_kernel(manifest)  # once per process: another resize kernel than the build's
    want = [(f.name, np.dtype(f.dtype), tuple(f.shape)) for f in manifest.param_fields]
    if [(f.name, np.dtype(f.dtype), tuple(f.shape)) for f in pol.fields] != want:
        raise PolicyError(f"policy {pol.name!r} declares fields {[f.name for f in pol.fields]} but the store was "
                          f"built with {[w[0] for w in want]} (policy {manifest.policy.get('name')!r}); pass "
                          "policy=None to replay with the store's own policy")

    opener = _OpenShards(store, reinforcements, n, hub_kwargs)
    rows = RowRecords(identity, source=source, check=check, partners=partners, open_store=opener)
    chooser = Chooser(draw_seed(seed), n, p_original, sampling)
    return ReplayTransform(ReplaySource(rows, pol, chooser, densify=densify), records_per_decode)
