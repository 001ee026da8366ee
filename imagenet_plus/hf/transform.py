"""A ``datasets`` transform replaying stored augmentations, through the same replay core as the datasets.

:func:`create_transform` returns a :class:`ReplayTransform` for ``datasets.Dataset.with_transform``:
rows of the Parquet export (``index``, ``key``, ``label``, ``image``, the param columns, ``topk_ids``,
``topk_probs``) become ``{"pixel_values": float32 [3, S, S], "soft_target": float32 [C]}``. Which
record a row uses comes from the same :class:`~imagenet_plus.replay.Chooser` as
:class:`~imagenet_plus.datasets.ReinforcedDataset` (same seed and epoch: same items, ``random`` or
``cycle``, the same ``p_original`` default), its epoch in shared memory (``set_epoch`` reaches
persistent DataLoader workers); the pixels come from :func:`~imagenet_plus.replay.render`, the
targets from :func:`~imagenet_plus.replay.make_targets`. Every row's image is checked against the
store's recorded identity (size and thumbnail) before its targets are used.
"""

from __future__ import annotations

import os
import secrets
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .._checks import check_choice, check_int, check_probability
from ..errors import AlignmentError, PolicyError, StoreError
from ..identity import IdentityChecker
from ..replay import DENSIFY_MODES, SAMPLINGS, Chooser, make_targets, original_params, render

__all__ = ["ReplayTransform", "create_transform"]

_SOURCES = ("auto", "row", "store")


class ReplayTransform:
    """Rows -> ``{"pixel_values", "soft_target"}`` by replaying stored augmentations (see :func:`create_transform`).

    Call :meth:`set_epoch` before every epoch, as with :class:`~imagenet_plus.datasets.ReinforcedDataset`.
    """

    def __init__(self, manifest, policy, identity, chooser: Chooser, *, densify: str, source: str, spec=None,
                 store=None, partners=None, hub_kwargs: Mapping[str, Any] | None = None) -> None:
        self.manifest, self.policy, self.chooser = manifest, policy, chooser
        self.identity = IdentityChecker(identity, "resized")
        self.densify, self.source, self.partners = densify, source, partners
        self._spec, self._store, self._hub_kwargs = spec, store, dict(hub_kwargs or {})

    def __repr__(self) -> str:
        m = self.manifest
        return (f"ReplayTransform(dataset={m.dataset!r}, policy={self.policy.name!r}, "
                f"num_augmentations={self.num_augmentations}, p_original={self.chooser.p_original}, "
                f"sampling={self.chooser.sampling!r}, seed={self.seed}, source={self.source!r}, "
                f"densify={self.densify!r})")

    @property
    def seed(self) -> int:
        return self.chooser.seed

    @property
    def num_augmentations(self) -> int:
        return self.chooser.num_augmentations

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch the choices depend on (shared memory: persistent DataLoader workers see it)."""
        self.chooser.set_epoch(epoch)

    def choose(self, i: int, epoch: int | None = None) -> tuple[bool, int]:
        """``(is_original, j)`` for sample ``i`` in ``epoch`` (default the current one)."""
        original, j = self.chooser.choose([int(i)], epoch)
        return bool(original[0]), int(j[0])

    # -- pieces ----------------------------------------------------------------------------------------
    @property
    def store(self):
        """The store (opened on first use, when params or targets come from the shards)."""
        if self._store is None:
            from ..hub import resolve_reinforcements
            from ..store import open_store

            path = resolve_reinforcements(self._spec, self.num_augmentations, **self._hub_kwargs)
            self._store = open_store(path, num_augmentations=self.num_augmentations)
        return self._store

    def _from_rows(self, row: Mapping[str, Any]) -> bool:
        if self.source != "auto":
            return self.source == "row"
        return all(f.name in row for f in self.manifest.param_fields) and "topk_ids" in row and "topk_probs" in row

    def _records(self, rows: Sequence[Mapping[str, Any]], index: np.ndarray, aug: np.ndarray):
        """Params ``{field: [B, ...]}``, ids ``[B, K]`` and probs ``[B, K]`` of records ``(index[b], aug[b])``."""
        fields = self.manifest.param_fields
        if rows and self._from_rows(rows[0]):
            missing = [c for c in [f.name for f in fields] + ["topk_ids", "topk_probs"] if c not in rows[0]]
            if missing:
                raise StoreError(f"row {int(index[0])} has no column(s) {missing}; load the Parquet export with all "
                                 "its columns or create the transform with source='store'")
            params = {f.name: np.stack([np.asarray(r[f.name][j], dtype=np.dtype(f.dtype)).reshape(f.shape)
                                        for r, j in zip(rows, aug)]) for f in fields}
            ids = np.stack([np.asarray(r["topk_ids"][j], dtype=np.int64) for r, j in zip(rows, aug)])
            probs = np.stack([np.asarray(r["topk_probs"][j], dtype=np.float32) for r, j in zip(rows, aug)])
            return params, ids, probs
        store = self.store
        for r, i in zip(rows, index):
            if "key" in r and r["key"] != store.keys[int(i)]:
                raise AlignmentError(f"row {int(i)} has key {r['key']!r} but the store {store.root} records "
                                     f"{store.keys[int(i)]!r} at that index; the rows and the store are from "
                                     "different builds")
        return store.records_batch(index, aug)

    def _image(self, row: Mapping[str, Any], i: int):
        from ..imageio import to_rgb_image

        m = self.manifest
        if not 0 <= i < m.num_samples:
            raise AlignmentError(f"row index {i} is outside the store's {m.num_samples} samples ({m.dataset}/{m.split});"
                                 " the rows and the store are from different builds")
        if row.get("image") is None:
            hint = " ImageNet+ rows carry no pixels (licence): add your own copy's images as an 'image' column " \
                   "(match rows by 'key')" if m.dataset == "imagenet" else ""
            raise StoreError(f"row {i} has no 'image'; the transform replays augmentations on the row's image.{hint}")
        image = to_rgb_image(row["image"])
        key = row.get("key", f"index {i}")
        self.identity.check(i, image, None, f"row {i} (key {key!r})")
        return image

    def _partners(self, params, original: np.ndarray, aug: np.ndarray):
        mixes = (np.asarray(params["mix_kind"]).reshape(-1) != 0) & ~original
        if not mixes.any():
            return None, None
        if self.partners is None:
            raise PolicyError(f"policy {self.policy.name!r} mixes images: pass partners= (the dataset without "
                              "transform, e.g. load_dataset(...)) to create_transform so partner images can be read")
        p = np.asarray(params["mix_partner"], dtype=np.int64).reshape(-1)
        rows = []
        for b in np.flatnonzero(mixes):
            prow = self.partners[int(p[b])]
            if int(prow["index"]) != int(p[b]):
                raise AlignmentError(f"partners[{p[b]}] has index {prow['index']}; pass the full dataset, unshuffled "
                                     "and unfiltered, as partners=")
            rows.append(prow)
        full = self.policy.partner_params(params)  # the ml-dr flavour: carried by the record itself
        if full is None:
            pparams, _, _ = self._records(rows, p[mixes], aug[mixes])
            full = {k: np.zeros((len(p), *v.shape[1:]), dtype=v.dtype) for k, v in pparams.items()}
            for k in full:
                full[k][mixes] = pparams[k]
        images = [None] * len(p)
        for b, prow in zip(np.flatnonzero(mixes), rows):
            images[b] = self._image(prow, int(p[b]))
        return images, full

    # -- items -----------------------------------------------------------------------------------------
    def items(self, rows: Sequence[Mapping[str, Any]], epoch: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised images ``[B, 3, S, S]`` and dense targets ``[B, C]`` of ``rows`` in ``epoch``."""
        index = self._index(rows)
        e = self.chooser.epoch.get() if epoch is None else int(epoch)
        original, aug = self.chooser.choose(index, e)
        return self._replay(rows, index, original, np.where(original, 0, aug), e)

    def replay(self, row: Mapping[str, Any], j: int) -> dict[str, torch.Tensor]:
        """Stored augmentation ``j`` of one row, exactly (no choice): ``{"pixel_values", "soft_target"}``."""
        if not 0 <= int(j) < self.num_augmentations:
            raise IndexError(f"augmentation {j} outside [0, {self.num_augmentations})")
        index = self._index([row])
        x, y = self._replay([row], index, np.zeros(1, bool), np.array([int(j)]), 0)
        return {"pixel_values": x[0], "soft_target": y[0]}

    @staticmethod
    def _index(rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        if any("index" not in r for r in rows):
            raise StoreError("rows have no 'index' column; load the Parquet export of the store (or keep the "
                             "'index' column when selecting columns)")
        return np.asarray([int(r["index"]) for r in rows], dtype=np.int64)

    def _replay(self, rows, index: np.ndarray, original: np.ndarray, aug: np.ndarray, epoch: int):
        images = [self._image(r, int(i)) for r, i in zip(rows, index)]
        params, ids, probs = self._records(rows, index, aug)
        labels = np.asarray([int(r.get("label", -1)) for r in rows], dtype=np.int64)
        if original.any():
            o = np.flatnonzero(original)
            if (labels[o] < 0).any():
                raise StoreError("rows have no 'label'; original images (p_original > 0) are paired with it")
            fresh = original_params(self.policy, self.seed, index[o], epoch, [images[b].height for b in o],
                                    [images[b].width for b in o], self.manifest.num_samples)
            for k, v in fresh.items():
                params[k][o] = v.astype(params[k].dtype)
        pimages, pparams = self._partners(params, original, aug) if self.policy.uses_mix else (None, None)
        x = render(self.policy, images, params, pimages, pparams)
        return x, make_targets(ids, probs, original, labels, self.manifest.num_classes, self.densify)

    def item(self, row: Mapping[str, Any], epoch: int | None = None) -> dict[str, torch.Tensor]:
        """The training item of one row (a ``dict`` of column values)."""
        x, y = self.items([row], epoch)
        return {"pixel_values": x[0], "soft_target": y[0]}

    def __call__(self, batch: Mapping[str, list]) -> dict[str, list]:
        if "index" not in batch:
            raise StoreError("rows have no 'index' column; load the Parquet export of the store")
        n = len(batch["index"])
        x, y = self.items([{name: values[b] for name, values in batch.items()} for b in range(n)])
        return {"pixel_values": list(x), "soft_target": list(y)}


def create_transform(reinforcements, policy=None, num_augmentations: int | None = None, seed: int | None = None,
                     densify: str = "smooth", *, p_original: float = 0.01, sampling: str = "random",
                     source: str = "auto", partners=None, revision: str | None = None,
                     cache_dir: str | os.PathLike | None = None, local_files_only: bool | None = None
                     ) -> ReplayTransform:
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
        partners: mixing policies only: the dataset (un-transformed) to read partner rows from.
        revision, cache_dir, local_files_only: Hub options, as in ``resolve_reinforcements``.

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

    check_choice(source, "source", _SOURCES)
    check_choice(densify, "densify", DENSIFY_MODES)
    check_choice(sampling, "sampling", SAMPLINGS)
    check_probability(p_original, "p_original")
    hub_kwargs = {"revision": revision, "cache_dir": cache_dir, "local_files_only": local_files_only}
    if isinstance(reinforcements, ReinforcementStore):
        store, spec, identity = reinforcements, None, reinforcements
    else:
        from ..hub import resolve_identity

        store, spec = None, reinforcements
        identity = open_store(resolve_identity(reinforcements, **hub_kwargs), check_files=False)
    manifest = identity.manifest
    available = store.num_augmentations if store is not None else manifest.num_augmentations
    n = check_int(available if num_augmentations is None else num_augmentations, "num_augmentations", low=1)
    if n > available:
        raise StoreError(f"num_augmentations={n}: the store provides {available} augmentations per sample; pass an "
                         f"integer in [1, {available}] or None")
    pol = create_policy(manifest.policy if policy is None else policy)
    want = [(f.name, np.dtype(f.dtype), tuple(f.shape)) for f in manifest.param_fields]
    if [(f.name, np.dtype(f.dtype), tuple(f.shape)) for f in pol.fields] != want:
        raise PolicyError(f"policy {pol.name!r} declares fields {[f.name for f in pol.fields]} but the store was "
                          f"built with {[w[0] for w in want]} (policy {manifest.policy.get('name')!r}); pass "
                          "policy=None to replay with the store's own policy")
    chooser = Chooser(secrets.randbits(63) if seed is None else seed, n, p_original, sampling)
    return ReplayTransform(manifest, pol, identity, chooser, densify=densify, source=source, spec=spec, store=store,
                           partners=partners, hub_kwargs=hub_kwargs)
