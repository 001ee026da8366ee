"""The replay core: which record an item uses, and fetching and replaying it. Every path calls this.

Three pieces, used by :class:`~imagenet_plus.datasets.ReinforcedDataset`, the ``datasets``
transform (:mod:`imagenet_plus.hf`), the CLI (``show``, ``verify --teacher``) and the builder's
own checks alike:

* :class:`Chooser` decides, for a sample's store index ``i`` and an epoch, whether the item is
  the original image (probability ``p_original``) and which stored augmentation ``j`` it
  replays: ``"random"`` (uniform per epoch) or ``"cycle"`` (every augmentation once per
  ``num_augmentations`` epochs). Draws are counter-based on ``(seed, i, epoch)``, so they
  depend on nothing else (worker count, batch size, order); the epoch lives in shared memory,
  so ``set_epoch`` reaches persistent DataLoader workers and copies of the object.
* :func:`original_params` draws an original image's ordinary random augmentation (every
  single-image stage of the policy, never mixed), and :func:`render` / :func:`make_targets`
  turn records into pixels and dense targets.
* :class:`ReplaySource` fetches and replays a batch of items from a records source
  (:class:`StoreRecords`: a dataset copy through its adapter and the store; the ``datasets``
  transform's :class:`imagenet_plus.hf.rows.RowRecords`: exported Parquet rows): choose, one
  batched read of params and targets, load each image (identity checked on every decode), the
  partners where :meth:`Policy.mixing` says a record mixes, crop each, finish the batch, densify.
  :func:`draw_seed` is the default seed of every path.

Several records per decode (``views=M``, FKD's trick): :meth:`ReplaySource.items` decodes each
sample of a batch once and replays ``M`` of its records from that one decode. Pass ``e`` then
serves, for every sample, the records of record-epochs ``e*M, ..., e*M+M-1`` (:func:`record_epochs`):
view ``k`` of a sample is bit for bit the item the one-record path serves for it in epoch
``e*M+k`` (its original-or-record choice, its ``cycle`` position, an original's fresh params, its
partner's own record). Items come out sample-major: the ``M`` views of a sample together.

:class:`DeviceReplay` finishes a collated batch of device-path items on a GPU.

Tolerance of the device path against the per-sample CPU path: on the CPU bit-exact; on CUDA,
float kernels (colour ops, MixUp blend) may round a few pixels differently: the stated bound
is a mean absolute difference of at most 1 grey level and >= 99% teacher top-1 agreement
(``benchmarks/gpu_check.py``; measured on an H200: 0.0 and 100%).
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np
import torch

from . import _rng
from ._checks import check_choice, check_device, check_int, check_probability
from .errors import ArgumentError, PolicyError

__all__ = ["SAMPLINGS", "DENSIFY_MODES", "SharedEpoch", "Chooser", "draw_seed", "original_params", "render",
           "make_targets", "record_epochs", "Plan", "StoreRecords", "ReplaySource", "DeviceReplay"]

#: Values of ``sampling=`` and ``densify=``.
SAMPLINGS = ("random", "cycle")
DENSIFY_MODES = ("smooth", "none")

# _rng streams of the replay (the policy's stages use small numbers).
_STREAM_CHOICE = 101  # original-or-replay draw and the random augmentation index
_STREAM_CYCLE = 102  # per-sample permutations of "cycle" sampling
_STREAM_ORIGINAL = 103  # seed of the fresh params of original images


class SharedEpoch:
    """An integer epoch in shared memory: seen by forked/spawned DataLoader workers and by deep copies."""

    def __init__(self) -> None:
        self._value = torch.zeros((), dtype=torch.int64).share_memory_()

    def set(self, epoch: int) -> None:
        self._value.fill_(check_int(epoch, "epoch", low=0))

    def get(self) -> int:
        return int(self._value)

    def __deepcopy__(self, memo) -> "SharedEpoch":
        return self  # shared on purpose: a copied transform or dataset must follow set_epoch


class Chooser:
    """Which record each item uses: ``(seed, epoch, store index) -> (is_original, j)``.

    Args:
        seed: seed of the draws.
        num_augmentations: augmentations to choose from (``j < num_augmentations``).
        p_original: probability of an original image.
        sampling: ``"random"`` or ``"cycle"``.
    """

    def __init__(self, seed: int, num_augmentations: int, p_original: float = 0.01, sampling: str = "random"):
        self.seed = check_int(seed, "seed", low=0)
        self.num_augmentations = check_int(num_augmentations, "num_augmentations", low=1)
        self.p_original = check_probability(p_original, "p_original")
        self.sampling = check_choice(sampling, "sampling", SAMPLINGS)
        self.epoch = SharedEpoch()

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch the choices depend on (call it before every epoch)."""
        self.epoch.set(epoch)

    def choose(self, store_index, epoch: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(is_original bool[B], j int64[B])`` for store indices ``[B]`` in ``epoch`` (default the current)."""
        e = self.epoch.get() if epoch is None else check_int(epoch, "epoch", low=0)
        i = np.asarray(store_index, dtype=np.int64).reshape(-1)
        u = _rng.uniforms(self.seed, i, e, 2, stream=_STREAM_CHOICE)
        na = self.num_augmentations
        if self.sampling == "random":
            j = np.minimum((u[:, 1] * na).astype(np.int64), na - 1)
        else:
            cycle, pos = divmod(e, na)
            perm = np.argsort(_rng.uniforms(self.seed, i, cycle, na, stream=_STREAM_CYCLE), axis=-1, kind="stable")
            j = perm[:, pos].astype(np.int64)
        return u[:, 0] < self.p_original, j

    def __repr__(self) -> str:
        return (f"Chooser(seed={self.seed}, num_augmentations={self.num_augmentations}, "
                f"p_original={self.p_original}, sampling={self.sampling!r}, epoch={self.epoch.get()})")


def original_params(policy, seed: int, store_index, epoch, heights, widths, num_samples: int
                    ) -> dict[str, np.ndarray]:
    """Params of original images: the policy's ordinary random augmentation for ``(seed, epoch, sample)``, unmixed.

    Every single-image field (crop, flip, RandAugment, erasing) is drawn by ``policy.sample`` with
    a seed derived from ``seed`` on the original-image stream, for records ``(i, epoch)`` of
    images ``heights x widths``; mixing fields say "no mix" (an original's target is one-hot).
    ``epoch``: one epoch for all, or one per image (``[B]``: several records per decode).

    Returns:
        ``{field: array [B, *field.shape]}``.
    """
    derived = int(_rng.record_keys(seed, 0, 0, stream=_STREAM_ORIGINAL)) >> 1
    i = np.asarray(store_index, dtype=np.int64).reshape(-1)
    e = np.broadcast_to(np.asarray(epoch, dtype=np.int64), i.shape).copy()
    return policy.sample(derived, i, e, heights, widths, num_samples, mix=False)


def _row(params: Mapping[str, np.ndarray], b: int) -> dict[str, np.ndarray]:
    return {k: np.asarray(v)[b] for k, v in params.items()}


def render(policy, images: Sequence, params: Mapping[str, np.ndarray], partners: Sequence | None = None,
           partner_params: Mapping[str, np.ndarray] | None = None, *, normalized: bool = True) -> torch.Tensor:
    """Replay a batch of records on the CPU: crop each image, then finish the batch.

    Bit-exact with :meth:`Policy.apply` per record (``finish`` on a batch equals ``finish`` per record).

    Args:
        policy: the store's policy.
        images: ``B`` decoded source images.
        params: ``{field: [B, ...]}``.
        partners: for mixing policies, ``B`` partner images (``None`` where a record does not mix).
        partner_params: the partners' own params ``{field: [B, ...]}`` (rows of non-mixing records ignored).
        normalized: return the normalised float32 training images (:meth:`Policy.finish_normalized`);
            ``False``: the uint8 pixels (:meth:`Policy.finish`).

    Returns:
        float32 (or uint8) ``[B, 3, S, S]``.
    """
    policy.check_params(params, what="replay params")
    crops = torch.stack([policy.crop(img, _row(params, b)) for b, img in enumerate(images)])
    finish = policy.finish_normalized if normalized else policy.finish
    mixes, _ = policy.mixing(params)
    if not mixes.any():
        return finish(crops, params)
    policy.check_params(partner_params, what="replay partner params")
    s = policy.output_size
    pcrops = torch.stack([policy.crop(partners[b], _row(partner_params, b)) if m else
                          torch.zeros((3, s, s), dtype=torch.uint8) for b, m in enumerate(mixes)])
    return finish(crops, params, pcrops, partner_params)


def make_targets(ids, probs, original, labels, num_classes: int, densify: str = "smooth"):
    """Dense float32 targets ``[B, C]``: densified top-k, one-hot labels where ``original``.

    ``ids``/``probs`` may be numpy or torch (any device; the result is torch on that device);
    ``original`` and ``labels`` are host arrays (decided on the host: no device sync).
    """
    from .targets import densify as _densify

    ids_t = torch.as_tensor(ids)
    probs_t = torch.as_tensor(probs).to(ids_t.device, torch.float32)
    dense = _densify(ids_t, probs_t, num_classes, mode=densify)
    original = np.asarray(original, dtype=bool).reshape(-1)
    if original.any():
        lab = np.asarray(labels, dtype=np.int64).reshape(-1)
        if lab[original].min() < 0 or lab[original].max() >= num_classes:
            raise PolicyError(f"labels must lie in [0, {num_classes}), got [{lab.min()}, {lab.max()}]")
        hot = torch.zeros_like(dense)
        rows = torch.from_numpy(np.flatnonzero(original)).to(dense.device, non_blocking=True)
        cols = torch.from_numpy(lab[original]).to(dense.device, non_blocking=True)
        hot[rows, cols] = 1.0
        keep = torch.from_numpy(original).to(dense.device, non_blocking=True).view(-1, 1)
        dense = torch.where(keep, hot, dense)
    return dense


def draw_seed(seed: int | None = None) -> int:
    """``seed`` checked, or (``None``) a fresh seed drawn once from the OS: the one default of every replay path."""
    if seed is None:
        return int(np.random.SeedSequence().entropy % (1 << 63))
    return check_int(seed, "seed", low=0)


def record_epochs(epoch: int, views: int) -> np.ndarray:
    """The record-epochs pass ``epoch`` serves with ``views`` records per decode: ``epoch*views + [0, views)``."""
    return int(epoch) * int(views) + np.arange(int(views), dtype=np.int64)


class Plan(NamedTuple):
    """What a batch of items uses (``views > 1``: ``B*views`` entries, the views of a sample together)."""

    index: np.ndarray  # the source's own item indices [B] (dataset indices; store indices for rows)
    store_index: np.ndarray  # store sample indices [B]
    original: np.ndarray  # bool [B]
    aug: np.ndarray  # augmentation index j [B] (meaningless where original)
    epoch: int  # the epoch asked for (with views > 1: the pass)
    record_epoch: np.ndarray | None = None  # int64 [B]: each entry's record-epoch (None: all ``epoch``)
    views: int = 1  # records per decode: entries b*views .. b*views+views-1 share one decoded sample

    @property
    def read_aug(self) -> np.ndarray:
        """The augmentation index to read: ``aug``, 0 for originals (their stored row is only a placeholder)."""
        return np.where(self.original, 0, self.aug)

    @property
    def epochs(self) -> np.ndarray:
        """int64 ``[B]``: the record-epoch of every entry (what its choice and an original's params depend on)."""
        if self.record_epoch is not None:
            return self.record_epoch
        return np.full(len(self.store_index), int(self.epoch), dtype=np.int64)

    def decoded(self) -> "Plan":
        """The entries that are decoded: one per sample (the first view of each)."""
        if self.views == 1:
            return self
        v = self.views
        return Plan(self.index[::v], self.store_index[::v], self.original[::v], self.aug[::v], self.epoch,
                    self.epochs[::v], 1)


class StoreRecords:
    """The records source of a dataset copy: images through the dataset's adapter, records from the store.

    Every record source answers the same four questions for :class:`ReplaySource` (the other
    one is :class:`imagenet_plus.hf.rows.RowRecords`, over exported Parquet rows):

    * ``locate(items) -> (index [B], store_index [B])``: where a batch of items sits;
    * ``samples(items, plan) -> [B]`` decoded samples (``.image``, ``.label``), identity checked;
    * ``records(items, plan) -> (params {field: [B, ...]}, ids [B, K], probs [B, K])`` of records
      ``(plan.store_index, plan.aug)``, checksums checked;
    * ``partners(p, aug, params) -> (images [M], params or None)``: the partner samples ``p`` and
      (``params=True``) their records ``(p, aug)``.

    Args:
        adapter: the dataset's :class:`~imagenet_plus.adapters.DatasetAdapter`.
        store: the opened store.
        checker: the :class:`~imagenet_plus.identity.IdentityChecker` (every decode is checked).
        to_store: dataset index -> store index (``None``: identical orders).
        from_store: store index -> dataset index (``None``: identical orders).
    """

    def __init__(self, adapter, store, checker, *, to_store: np.ndarray | None = None,
                 from_store: np.ndarray | None = None) -> None:
        self.adapter, self.store, self.checker = adapter, store, checker
        self.to_store, self.from_store = to_store, from_store
        self.num_samples, self.num_classes = len(store), store.num_classes

    def locate(self, items) -> tuple[np.ndarray, np.ndarray]:
        d = np.asarray(items, dtype=np.int64).reshape(-1)
        return d, (d if self.to_store is None else self.to_store[d])

    def dataset_index(self, store_index: int) -> int:
        return int(store_index) if self.from_store is None else int(self.from_store[store_index])

    def load(self, d: int, s: int | None = None):
        """Decode dataset item ``d`` through the adapter and check its identity against store sample ``s``."""
        s = int(d if self.to_store is None else self.to_store[d]) if s is None else int(s)
        sample = self.adapter.load(int(d))
        self.checker.check(s, sample.image, sample.digest, lambda: f"{self.adapter.describe(int(d))} of {self.store.root}")
        return sample

    def samples(self, items, plan: Plan) -> list:
        return [self.load(int(d), int(s)) for d, s in zip(plan.index, plan.store_index)]

    def records(self, items, plan: Plan):
        return self.store.records_batch(plan.store_index, plan.read_aug)

    def partners(self, p: np.ndarray, aug: np.ndarray, params: bool) -> tuple[list, dict | None]:
        decoded: dict[int, Any] = {}  # a partner met twice in a batch is decoded once
        for s in map(int, p):
            if s not in decoded:
                decoded[s] = self.load(self.dataset_index(s), s).image
        images = [decoded[int(s)] for s in p]
        return images, (self.store.params_batch(p, aug) if params else None)


class ReplaySource:
    """Fetch and replay items from a records source: the one implementation behind every replay path.

    Choose (the :class:`Chooser`), read the records (one batched read), decode each image with its
    identity checked, fill in the originals' fresh params, find the partners where records mix
    (:meth:`Policy.mixing`: record ``(p, j)``, or the partner's params stored inline for the ml-dr
    flavour), render, densify.

    Args:
        data: the records source: :class:`StoreRecords` (a dataset copy and its store) or
            :class:`imagenet_plus.hf.rows.RowRecords` (exported Parquet rows).
        policy: the store's policy.
        chooser: the :class:`Chooser`.
        densify: ``"smooth"`` or ``"none"``.
    """

    def __init__(self, data, policy, chooser: Chooser, *, densify: str = "smooth") -> None:
        self.data, self.policy, self.chooser = data, policy, chooser
        self.densify = check_choice(densify, "densify", DENSIFY_MODES)
        self.num_classes = data.num_classes

    @property
    def store(self):
        """The store of a :class:`StoreRecords` source."""
        return self.data.store

    @property
    def to_store(self) -> np.ndarray | None:
        """Dataset index -> store index of a :class:`StoreRecords` source (``None``: identical orders)."""
        return self.data.to_store

    # -- which records ---------------------------------------------------------------------------------
    def plan(self, items, epoch: int | None = None, aug=None, *, views: int = 1) -> Plan:
        """Choose the records of ``items`` in ``epoch`` (default the current one); ``aug``: records ``(i, aug)``.

        ``views=M > 1``: ``epoch`` is a pass, and each item gets ``M`` entries (sample-major), the
        records of record-epochs :func:`record_epochs` ``(epoch, M)``, each chosen exactly as the
        one-record path chooses it in that epoch.
        """
        index, s = self.data.locate(items)
        views = check_int(views, "records_per_decode", low=1)
        if aug is not None:  # exact records: no choice, never an original
            if views != 1:
                raise ArgumentError(f"records_per_decode={views}: an exact replay (aug=...) is one record per item; "
                                    "pass records_per_decode=1")
            return Plan(index, s, np.zeros(len(s), bool), np.broadcast_to(np.asarray(aug, np.int64), s.shape), 0)
        e = self.chooser.epoch.get() if epoch is None else int(epoch)
        if views == 1:
            original, j = self.chooser.choose(s, e)
            return Plan(index, s, original, j, e)
        rec = record_epochs(e, views)
        chosen = [self.chooser.choose(s, int(r)) for r in rec]  # each record-epoch as the one-record path has it
        original = np.stack([c[0] for c in chosen], axis=1).reshape(-1)
        j = np.stack([c[1] for c in chosen], axis=1).reshape(-1)
        return Plan(np.repeat(index, views), np.repeat(s, views), original, j, e, np.tile(rec, len(s)), views)

    # -- fetching --------------------------------------------------------------------------------------
    def _records(self, items, plan: Plan, samples: Sequence) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        """Params and top-k targets of a plan's items (originals: fresh params, one-hot placeholders)."""
        params, ids, probs = self.data.records(items, plan)
        if plan.original.any():
            o = np.flatnonzero(plan.original)
            fresh = original_params(self.policy, self.chooser.seed, plan.store_index[o], plan.epochs[o],
                                    [samples[b].image.height for b in o], [samples[b].image.width for b in o],
                                    self.data.num_samples)
            for name, v in fresh.items():  # every field, the mixing ones saying "no mix"
                params[name][o] = v.astype(params[name].dtype)
            ids[o], probs[o] = np.arange(ids.shape[1]), 0.0  # replaced by one-hot labels in make_targets
        return params, ids, probs

    def _partners(self, plan: Plan, params: Mapping[str, np.ndarray]) -> tuple[list, dict | None]:
        """Partner images and their own params where records mix (``None`` elsewhere)."""
        if not self.policy.uses_mix:
            return [None] * len(plan.index), None
        mixes, p = self.policy.mixing(params)
        mixes &= ~plan.original
        if not mixes.any():
            return [None] * len(plan.index), None
        inline = self.policy.partner_params(params)  # the ml-dr flavour: carried by the record itself
        m = np.flatnonzero(mixes)
        found, pparams = self.data.partners(p[m], plan.aug[m], inline is None)
        if inline is None:
            inline = {k: np.zeros((len(mixes), *v.shape[1:]), dtype=v.dtype) for k, v in pparams.items()}
            for k, v in pparams.items():
                inline[k][m] = v
        images: list = [None] * len(mixes)
        for b, image in zip(m, found):
            images[b] = image
        return images, inline

    def fetch(self, items, epoch: int | None = None, aug=None, *, views: int = 1):
        """Everything a batch of items needs: ``(plan, samples, params, ids, probs, partner images, partner params)``.

        ``views=M``: ``B*M`` entries (see :meth:`plan`); each sample is decoded once, its entries share it.
        """
        plan = self.plan(items, epoch, aug, views=views)
        if plan.views == 1:
            samples = self.data.samples(items, plan)
        else:
            samples = [sample for sample in self.data.samples(items, plan.decoded()) for _ in range(plan.views)]
            items = [item for item in items for _ in range(plan.views)]
        params, ids, probs = self._records(items, plan, samples)
        pimages, pparams = self._partners(plan, params)
        return plan, samples, params, ids, probs, pimages, pparams

    # -- items -----------------------------------------------------------------------------------------
    def items(self, items, epoch: int | None = None, *, normalized: bool = True, aug=None, views: int = 1
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Replayed images ``[B, 3, S, S]`` (normalised float32, or uint8) and dense targets ``[B, C]``.

        ``aug``: replay the stored records ``(i, aug)`` exactly instead of choosing (no originals).
        ``views=M > 1``: ``epoch`` is a pass; ``[B*M, ...]``, item ``b*M+k`` the record of record-epoch
        ``epoch*M+k`` of item ``b``, replayed from one decode of its sample (see :meth:`plan`).
        """
        plan, samples, params, ids, probs, pimages, pparams = self.fetch(items, epoch, aug, views=views)
        x = render(self.policy, [s.image for s in samples], params, pimages, pparams, normalized=normalized)
        targets = make_targets(ids, probs, plan.original, [s.label for s in samples], self.num_classes, self.densify)
        return x, targets

    def device_items(self, items, epoch: int | None = None, *, decode: str = "workers") -> list[dict[str, Any]]:
        """Device-path items of ``items`` for :class:`DeviceReplay`: params and sparse targets, and either the
        crops made here (``decode="workers"``) or the files' bytes, identity checked and not decoded
        (``decode="device"``; :mod:`imagenet_plus.device_decode`, for a :class:`StoreRecords` over image files)."""
        if decode == "device":
            return self._encoded_items(items, epoch)
        plan, samples, params, ids, probs, pimages, pparams = self.fetch(items, epoch)
        s = self.policy.output_size
        out = []
        for b, sample in enumerate(samples):
            row = _row(params, b)
            mixes = pimages[b] is not None
            prow = _row(pparams, b) if mixes else {k: np.zeros_like(v) for k, v in row.items()}
            out.append({
                "image": self.policy.crop(sample.image, row),
                "partner": self.policy.crop(pimages[b], prow) if mixes else torch.zeros((3, s, s), dtype=torch.uint8),
                "params": {k: torch.from_numpy(np.asarray(v).astype(np.int64)) for k, v in row.items()},
                "partner_params": {k: torch.from_numpy(np.asarray(v).astype(np.int64)) for k, v in prow.items()},
                "topk_ids": torch.from_numpy(np.asarray(ids[b], dtype=np.int64)),
                "topk_probs": torch.from_numpy(np.asarray(probs[b], dtype=np.float32)),
                "is_original": torch.tensor(bool(plan.original[b])),
                "label": torch.tensor(int(sample.label), dtype=torch.int64),
            })
        return out

    def _encoded_items(self, items, epoch: int | None) -> list[dict[str, Any]]:
        """``device_items(decode="device")``: the same choice, records and partners, read through
        :class:`~imagenet_plus.device_decode.EncodedRecords` (bytes, digest, identity, header; no decode)."""
        from .device_decode import EncodedRecords, encoded_item

        source = ReplaySource(EncodedRecords(self.data), self.policy, self.chooser, densify=self.densify)
        plan, samples, params, ids, probs, pimages, pparams = source.fetch(items, epoch)
        out: list[dict[str, Any]] = []
        if not samples:
            return out
        zeros = {k: np.zeros_like(np.asarray(v)[0]) for k, v in params.items()}  # shared: collated, never written
        for b, sample in enumerate(samples):
            row = _row(params, b)
            mixes = pimages[b] is not None
            prow = _row(pparams, b) if mixes else zeros
            out.append(encoded_item(sample, pimages[b] if mixes else None, row, prow, ids[b], probs[b],
                                    bool(plan.original[b])))
        return out

    def replay_record(self, store_index: int, aug: int) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
        """Replay stored record ``(i, j)`` of a :class:`StoreRecords` source exactly: uint8 ``[3, S, S]``, ids, probs."""
        plan, samples, params, ids, probs, pimages, pparams = self.fetch([self.data.dataset_index(store_index)],
                                                                         aug=[int(aug)])
        return render(self.policy, [samples[0].image], params, pimages, pparams, normalized=False)[0], ids[0], probs[0]


class DeviceReplay:
    """Finish a collated batch of device-path items on ``device``.

    Args:
        policy: the store's policy (a :class:`Policy`, preset name or config dict).
        num_classes: C, the width of the dense targets.
        densify: "smooth" (spread the tail mass uniformly, the paper's choice) or "none".
        device: where to run (``"cuda"``, ``"cpu"``, a ``torch.device``); default CUDA if
            available, else CPU.
        non_blocking: copy host tensors with ``non_blocking=True`` (use pinned memory).

    Call it on what the dataset's ``collate_fn``
    (:func:`~imagenet_plus.device_decode.collate_device_items`) makes of its device-path items.
    Two kinds of batch:

    * file bytes (``decode="device"``, the default of ``device="cuda"`` for datasets of image
      files): ``{"data", "offsets", "size", "jpeg", "path"}`` and the same with the ``partner_``
      prefix; the batch is decoded here (:func:`~imagenet_plus.device_decode.decode_images`: batched
      ``torchvision.io.decode_jpeg`` on ``device``, the package's CPU decode for what it cannot
      read) and each record's box cropped and resized here, partners alike;
    * crops made in the workers (``decode="workers"``, array-backed datasets): ``{"image": uint8
      [B,3,S,S], "partner": uint8 [B,3,S,S]}``.

    Both carry ``"params": {field: [B, ...]}``, ``"partner_params": {field: [B, ...]}``,
    ``"topk_ids"`` int64 ``[B,K]``, ``"topk_probs"`` float32 ``[B,K]``, ``"is_original"`` bool ``[B]``,
    ``"label"`` int64 ``[B]``. Returns ``(images float32 [B,3,S,S], targets float32 [B,C])`` on the
    device. Originals are finished like the others (their params carry the freshly drawn
    RandAugment ops and erasing box) but never mixed, and get one-hot targets. ``self.decoded``
    counts the images decoded by ``decode_jpeg`` (``"device"``) and by the CPU fallback
    (``"fallback"``).

    Example:
        >>> replay = train.create_device_replay("cuda")
        >>> loader = DataLoader(train, batch_size=256, num_workers=4, collate_fn=train.collate_fn,
        ...                     pin_memory=True)
        >>> for batch in loader:
        ...     images, targets = replay(batch)
    """

    def __init__(self, policy, num_classes: int, densify: str = "smooth", device: str | torch.device | None = None,
                 non_blocking: bool = True):
        from .augment import Policy, create_policy

        self.policy = policy if isinstance(policy, Policy) else create_policy(policy)
        self.num_classes = check_int(num_classes, "num_classes", low=1)
        self.densify = check_choice(densify, "densify", DENSIFY_MODES)
        device = device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
        self.device = check_device(device, f"DeviceReplay(device={str(device)!r})",
                                   "use device='cpu' or the dataset's CPU path")
        self.non_blocking = non_blocking
        self.decoded = {"device": 0, "fallback": 0}

    def __repr__(self) -> str:
        return (f"DeviceReplay(policy={self.policy.name!r}, num_classes={self.num_classes}, "
                f"densify={self.densify!r}, device={str(self.device)!r})")

    def _params(self, params: Mapping[str, Any]) -> dict[str, np.ndarray]:
        out = {}
        for f in self.policy.fields:
            if f.name not in params:
                raise PolicyError(f"DeviceReplay: batch params lack field {f.name!r}; expected "
                                  f"{[x.name for x in self.policy.fields]} (does the store's policy match?)")
            v = params[f.name]
            out[f.name] = v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
        return out

    def _decode_crops(self, batch: Mapping[str, Any], params, partner_params) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode a batch of file bytes (images and partners in one call) and crop each record on the device."""
        from .device_decode import _split, crop_images, decode_images

        for key in ("size", "jpeg", "partner_data", "partner_offsets", "partner_size", "partner_jpeg"):
            if key not in batch:
                raise PolicyError(f"DeviceReplay: batch of file bytes lacks {key!r}; collate the items with the "
                                  "dataset's collate_fn (imagenet_plus.device_decode.collate_device_items)")
        data, pdata = _split(batch, ""), _split(batch, "partner_")
        B = len(data)
        has = [b for b in range(B) if pdata[b].numel()]
        jpeg = np.asarray(torch.as_tensor(batch["jpeg"]).cpu(), bool).reshape(-1)
        pjpeg = np.asarray(torch.as_tensor(batch["partner_jpeg"]).cpu(), bool).reshape(-1)
        sizes = np.asarray(torch.as_tensor(batch["size"]).cpu()).reshape(-1, 2)
        psizes = np.asarray(torch.as_tensor(batch["partner_size"]).cpu()).reshape(-1, 2)
        paths, ppaths = list(batch.get("path", [])), list(batch.get("partner_path", []))
        decoded = decode_images(data + [pdata[b] for b in has], list(jpeg) + [pjpeg[b] for b in has],
                                np.concatenate([sizes, psizes[has]]).reshape(-1, 2), self.device,
                                (paths + [ppaths[b] for b in has]) if len(paths) == B and len(ppaths) == B else (),
                                stats=self.decoded)
        partners: list = [None] * B
        for n, b in enumerate(has):
            partners[b] = decoded[B + n]
        images = crop_images(self.policy, decoded[:B], params, self.device)
        return images, crop_images(self.policy, partners, partner_params if partner_params is not None else params,
                                   self.device)

    def _images(self, batch: Mapping[str, Any], params, partner_params) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The batch's crops and partner crops on the device: decoded here, or moved from the workers."""
        if "data" in batch:
            images, partners = self._decode_crops(batch, params, partner_params)
            return images, partners if self.policy.uses_mix else None
        images = batch["image"].to(self.device, non_blocking=self.non_blocking)
        if not self.policy.uses_mix:
            return images, None
        if "partner" not in batch:
            raise PolicyError("DeviceReplay: mixing policy needs 'partner' and 'partner_params' in the batch")
        return images, batch["partner"].to(self.device, non_blocking=self.non_blocking)

    def __call__(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Replay a collated batch; see the class docstring."""
        for key in ("params", "topk_ids", "topk_probs"):
            if key not in batch:
                raise PolicyError(f"DeviceReplay: batch lacks {key!r}; pass a collated batch of device-path items "
                                  "(ReinforcedDataset(..., device='cuda'))")
        if "image" not in batch and "data" not in batch:
            raise PolicyError("DeviceReplay: batch lacks 'image' (worker crops) and 'data' (file bytes); pass a "
                              "collated batch of device-path items (ReinforcedDataset(..., device='cuda'))")
        if "data" in batch and "offsets" not in batch:
            raise PolicyError("DeviceReplay: batch of file bytes lacks 'offsets'; collate the items with the "
                              "dataset's collate_fn (imagenet_plus.device_decode.collate_device_items)")
        B = len(batch["offsets"]) - 1 if "data" in batch else int(batch["image"].shape[0])
        is_orig = batch.get("is_original")
        is_orig = np.zeros(B, bool) if is_orig is None else np.asarray(torch.as_tensor(is_orig).cpu(), bool).reshape(B)
        params = self.policy.without_mixing(self._params(batch["params"]), is_orig)  # originals never mix
        partner_params = None
        if self.policy.uses_mix:
            if "partner_params" not in batch:
                raise PolicyError("DeviceReplay: mixing policy needs 'partner' and 'partner_params' in the batch")
            partner_params = self._params(batch["partner_params"])
            mixes, _ = self.policy.mixing(params)
            if len(mixes) != B:
                raise PolicyError(f"DeviceReplay: params hold {len(mixes)} records but the batch has {B} images")
        self.policy.check_params(params, what="DeviceReplay params")
        images, partners = self._images(batch, params, partner_params)
        x = self.policy.finish_normalized(images, params, partners, partner_params)
        if is_orig.any() and "label" not in batch:
            raise PolicyError("DeviceReplay: batch has is_original records but no 'label'")
        ids = torch.as_tensor(batch["topk_ids"]).to(self.device, non_blocking=self.non_blocking)
        probs = torch.as_tensor(batch["topk_probs"]).to(self.device, torch.float32, non_blocking=self.non_blocking)
        labels = batch["label"] if "label" in batch else np.zeros(B, np.int64)
        return x, make_targets(ids, probs, is_orig, np.asarray(torch.as_tensor(labels).cpu()), self.num_classes,
                               self.densify)
