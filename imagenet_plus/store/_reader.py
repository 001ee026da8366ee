"""Reading a store: memory-mapped shards opened lazily, O(1) per record, fork-safe."""

from __future__ import annotations

import math
from operator import index as _index
import mmap
import os
import threading
from collections import deque
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..errors import AlignmentError, IntegrityError, StoreError
from ..schema import Field, PROB_CODE_SCALE, PROB_CODE_ZERO, decode_topk_ids, decode_topk_probs, id_bits
from ._format import (MANIFEST_NAME, Manifest, ShardEntry, check_build_id, check_shard_metadata, check_tensors,
                      read_header, samples_expected, shard_expected)

__all__ = ["Record", "ReinforcementStore", "open_store"]

# Same values as schema._CODE_VALUES, so the single-record path decodes bit-identically.
_CODE_VALUES = np.exp(-np.arange(256, dtype=np.float64) / PROB_CODE_SCALE)
_CODE_VALUES[PROB_CODE_ZERO] = 0.0


_FOREIGN_FIX = ("this shard belongs to another build (the manifest's build_id differs): delete it and re-download it "
                "or rebuild the store")


class Record(NamedTuple):
    """One stored record: augmentation params and the teacher's top-k targets."""

    params: dict[str, np.ndarray]
    topk_ids: np.ndarray
    topk_probs: np.ndarray


class _MissingKey(AlignmentError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class _Shard:
    """An opened shard: one read-only numpy view per field over a shared mmap."""

    __slots__ = ("s0", "a0", "cols", "params", "ids", "probs", "views", "flat")

    def __init__(self, path: Path, entry: ShardEntry, fields: tuple[Field, ...], build_id: str | None = None):
        (s0, s1), (a0, a1) = entry.samples, entry.augs
        tensors, meta, size = read_header(path)
        if size != entry.bytes:
            raise IntegrityError(f"{path}: {size} bytes, the manifest says {entry.bytes}; the file is truncated or "
                                 "from another build: delete it and re-download or rebuild it")
        check_shard_metadata(path, meta, s0, s1, a0, a1)
        check_build_id(path, meta, build_id, _FOREIGN_FIX)
        check_tensors(path, tensors, shard_expected(fields, s0, s1, a0, a1), size)
        with open(path, "rb") as f:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        # No MADV_RANDOM: measured, the kernel's read-around fills the page cache far faster
        # (cold median 25-30 us vs ~400 us per record on a 10M-record store, benchmarks/store_access.py).
        self.views = {}
        for fl in fields:
            t = tensors[fl.name]
            shape = (s1 - s0, a1 - a0, *fl.shape)
            self.views[fl.name] = np.frombuffer(mm, dtype=np.dtype(fl.dtype), count=math.prod(shape),
                                                offset=t.start).reshape(shape)
        self.s0, self.a0, self.cols = s0, a0, a1 - a0
        self.flat = {fl.name: v.reshape((s1 - s0) * (a1 - a0), *fl.shape) for fl, v in zip(fields, self.views.values())}
        self.params = tuple((fl.name, self.views[fl.name]) for fl in fields[:-2])
        self.ids = self.views[fields[-2].name]
        self.probs = self.views[fields[-1].name]


class ReinforcementStore:
    """A reinforcement store opened for reading.

    Shards are memory-mapped on first use (never read into RAM), at most
    ``max_open_shards`` at a time, and re-opened after a fork, so one store object
    can be shared with DataLoader workers.

    Args:
        path: the store folder (with ``manifest.json``).
        num_augmentations: use only the first ``num_augmentations`` augmentations
            (only their shards need to exist); default all stored.
        expected_num_samples: if given, the dataset size the store must match.
        expected_num_classes: if given, the class count the store must match.
        check_files: check at open that every needed shard and the samples file
            exist with their manifest sizes (a ``stat`` per file).
        max_open_shards: cap on simultaneously mapped shards.

    Raises:
        StoreError: missing or malformed manifest or files.
        FormatVersionError: written by an incompatible release.
        AlignmentError: ``expected_num_samples`` / ``expected_num_classes`` disagree.

    Example:
        >>> store = ReinforcementStore("imagenet-plus/train")
        >>> ids, probs = store.targets(0, 3)
    """

    def __init__(self, path: str | os.PathLike, *, num_augmentations: int | None = None,
                 expected_num_samples: int | None = None, expected_num_classes: int | None = None,
                 check_files: bool = True, max_open_shards: int = 512):
        self.root = Path(path)
        if self.root.suffix == ".json":
            self.root = self.root.parent
        self.manifest = Manifest.load(self.root)
        m = self.manifest
        stored = m.num_augmentations
        if num_augmentations is None:
            num_augmentations = stored
        if not (1 <= int(num_augmentations) <= stored):
            raise StoreError(f"{self.root}: num_augmentations={num_augmentations} but the store holds {stored} "
                             f"augmentations per sample; pick a value in [1, {stored}]")
        self._num_augs = int(num_augmentations)
        self._n = m.num_samples
        self._sps, self._aps = m.samples_per_shard, m.augs_per_shard
        self._nab = math.ceil(stored / self._aps)
        self._fields = tuple(m.fields)
        self._bits = id_bits(m.num_classes)
        self._k = m.topk
        self._max_open = max(1, int(max_open_shards))
        self._needed = [k for k, e in enumerate(m.shards) if e.augs[0] < self._num_augs]
        if check_files:
            self._check_files()
        if expected_num_samples is not None or expected_num_classes is not None:
            self.check_compatible(expected_num_samples, expected_num_classes)
        self._samples_info = self._check_samples()
        self._reset()
        self._labels: np.ndarray | None = None
        self._hashes: np.ndarray | None = None
        self._keys: list[str] | None = None
        self._key_index: dict[str, int] | None = None

    # -- opening ---------------------------------------------------------------------------------------
    def _check_files(self) -> None:
        problems = []
        for e in [self.manifest.samples_file] + [self.manifest.shards[k] for k in self._needed]:
            p = self.root / e.file  # type: ignore[union-attr]
            try:
                size = p.stat().st_size
            except FileNotFoundError:
                problems.append(f"{p}: missing")
                continue
            if size != e.bytes:  # type: ignore[union-attr]
                problems.append(f"{p}: {size} bytes, manifest says {e.bytes}")  # type: ignore[union-attr]
        if problems:
            more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
            raise IntegrityError(f"{self.root}: {len(problems)} store file(s) missing or of the wrong size: "
                                 + "; ".join(problems[:5]) + more
                                 + "; re-download them (or open with a smaller num_augmentations) or rebuild the store")

    def _check_samples(self):
        p = self.root / self.manifest.samples_file.file  # type: ignore[union-attr]
        tensors, meta, size = read_header(p)
        if "build_id" in meta:  # samples files written without a build id are not compared
            check_build_id(p, meta, self.manifest.build_id, _FOREIGN_FIX.replace("shard", "samples file"))
        kb = tensors["key_bytes"].shape[0] if "key_bytes" in tensors and len(tensors["key_bytes"].shape) == 1 else -1
        check_tensors(p, tensors, samples_expected(self._n, kb), size)
        return p, tensors

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._open: list[_Shard | None] = [None] * len(self.manifest.shards)
        self._order: deque[int] = deque()
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_open"], state["_order"], state["_pid"], state["_lock"] = None, None, -1, None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset()

    def _open_shard(self, k: int) -> _Shard:
        if self._pid != os.getpid():
            self._reset()
        with self._lock:
            sh = self._open[k]
            if sh is not None:  # another thread opened it meanwhile
                return sh
            entry = self.manifest.shards[k]
            sh = _Shard(self.root / entry.file, entry, self._fields, self.manifest.build_id)
            if len(self._order) >= self._max_open:
                self._open[self._order.popleft()] = None
            self._open[k] = sh
            self._order.append(k)
            return sh

    def close(self) -> None:
        """Unmap every open shard (they are re-opened on the next access)."""
        self._reset()

    def _locate(self, i: int, j: int) -> tuple[_Shard, int, int]:
        i, j = _index(i), _index(j)  # ints and numpy integers; floats raise TypeError
        if not (0 <= i < self._n and 0 <= j < self._num_augs):
            raise IndexError(f"record ({i}, {j}) outside [0, {self._n}) x [0, {self._num_augs}) of {self.root}")
        if self._pid != os.getpid():
            self._reset()
        k = (i // self._sps) * self._nab + j // self._aps
        sh = self._open[k]
        if sh is None:
            sh = self._open_shard(k)
        return sh, i - sh.s0, j - sh.a0

    # -- properties ------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._n

    def __repr__(self) -> str:
        m = self.manifest
        return (f"ReinforcementStore({str(self.root)!r}, dataset={m.dataset!r}, split={m.split!r}, "
                f"num_samples={m.num_samples}, num_augmentations={self._num_augs}/{m.num_augmentations}, "
                f"topk={m.topk}, num_classes={m.num_classes}, shards={len(m.shards)})")

    @property
    def num_augmentations(self) -> int:
        """Augmentations per sample available through this reader (``manifest.num_augmentations`` stored)."""
        return self._num_augs

    @property
    def topk(self) -> int:
        return self.manifest.topk

    @property
    def num_classes(self) -> int:
        return self.manifest.num_classes

    @property
    def policy_config(self) -> dict:
        return self.manifest.policy

    @property
    def param_fields(self) -> tuple[Field, ...]:
        return self.manifest.param_fields

    def check_compatible(self, num_samples: int | None = None, num_classes: int | None = None,
                         source: str = "the dataset") -> None:
        """Raise :class:`AlignmentError` unless the store matches a dataset's size and class count."""
        m = self.manifest
        if num_samples is not None and int(num_samples) != m.num_samples:
            raise AlignmentError(f"{self.root}: the store has {m.num_samples} samples ({m.dataset}/{m.split}) but "
                                 f"{source} has {num_samples}; use the same split and a complete copy of the "
                                 "dataset, or a store built for your copy")
        if num_classes is not None and int(num_classes) != m.num_classes:
            raise AlignmentError(f"{self.root}: the store has {m.num_classes} classes but {source} has "
                                 f"{num_classes}; use a store built for this dataset")

    # -- records ---------------------------------------------------------------------------------------
    def params(self, i: int, j: int) -> dict[str, np.ndarray]:
        """Augmentation params of record ``(i, j)``: ``{field: array}`` in stored dtypes and field shapes."""
        sh, r, c = self._locate(i, j)
        return {name: v[r, c, ...].copy() for name, v in sh.params}

    def targets(self, i: int, j: int) -> tuple[np.ndarray, np.ndarray]:
        """Teacher targets of record ``(i, j)``: ``(ids int64[K], probs float32[K])``, descending, sum = 1 - tail."""
        sh, r, c = self._locate(i, j)
        return self._decode_one(sh.ids[r, c], sh.probs[r, c])

    def record(self, i: int, j: int) -> Record:
        """Params and targets of record ``(i, j)``."""
        sh, r, c = self._locate(i, j)
        ids, probs = self._decode_one(sh.ids[r, c], sh.probs[r, c])
        return Record({name: v[r, c, ...].copy() for name, v in sh.params}, ids, probs)

    def _decode_one(self, packed: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        b = self._bits
        v = int.from_bytes(packed.tobytes(), "little")
        mask = (1 << b) - 1
        ids = np.array([(v >> (b * k)) & mask for k in range(self._k)], dtype=np.int64)
        x = _CODE_VALUES.take(codes)
        total = np.add.reduce(x)
        probs = (x[:-1] / (total if total > 0 else 1.0)).astype(np.float32)
        return ids, probs

    def _gather(self, i, j, names: list[str]) -> dict[str, np.ndarray]:
        i = np.asarray(i, dtype=np.int64)
        j = np.asarray(j, dtype=np.int64)
        i, j = np.broadcast_arrays(i, j)
        i, j = i.ravel(), j.ravel()
        if i.size and (i.min() < 0 or i.max() >= self._n or j.min() < 0 or j.max() >= self._num_augs):
            raise IndexError(f"records outside [0, {self._n}) x [0, {self._num_augs}) of {self.root}")
        fields = {f.name: f for f in self._fields}
        out = {n: np.empty((i.size, *fields[n].shape), dtype=np.dtype(fields[n].dtype)) for n in names}
        k = (i // self._sps) * self._nab + j // self._aps
        order = np.argsort(k, kind="stable")
        ks, i, j = k[order], i[order], j[order]
        bounds = np.flatnonzero(ks[1:] != ks[:-1]) + 1
        starts, ends = np.r_[0, bounds].tolist(), np.r_[bounds, ks.size].tolist()
        for s, e in zip(starts, ends):  # one contiguous run of the sorted batch per shard
            sh, _, _ = self._locate(int(i[s]), int(j[s]))
            flat_idx = (i[s:e] - sh.s0) * sh.cols + (j[s:e] - sh.a0)
            for n in names:
                sh.flat[n].take(flat_idx, axis=0, out=out[n][s:e])
        inverse = np.empty_like(order)
        inverse[order] = np.arange(order.size)
        return {n: v[inverse] for n, v in out.items()}

    def params_batch(self, i, j) -> dict[str, np.ndarray]:
        """Params of records ``(i[b], j[b])``: ``{field: array[B, *field.shape]}`` (``i``, ``j`` broadcast)."""
        return self._gather(i, j, [f.name for f in self.param_fields])

    def targets_batch(self, i, j) -> tuple[np.ndarray, np.ndarray]:
        """Targets of records ``(i[b], j[b])``: ``(ids int64[B, K], probs float32[B, K])``."""
        names = [f.name for f in self._fields[-2:]]
        raw = self._gather(i, j, names)
        m = self.manifest
        return decode_topk_ids(raw[names[0]], m.num_classes, m.topk), decode_topk_probs(raw[names[1]])

    def raw_batch(self, i, j) -> dict[str, np.ndarray]:
        """Every stored field (params, packed ids, prob codes) of records ``(i[b], j[b])``, undecoded."""
        return self._gather(i, j, [f.name for f in self._fields])

    # -- samples ---------------------------------------------------------------------------------------
    def _samples_array(self, name: str) -> np.ndarray:
        p, tensors = self._samples_info
        t = tensors[name]
        dt = {"label": "<i4", "content_hash": "|u1", "key_bytes": "|u1", "key_offsets": "<i8"}[name]
        with open(p, "rb") as f:
            f.seek(t.start)
            buf = f.read(t.end - t.start)
        if len(buf) != t.end - t.start:
            raise IntegrityError(f"{p}: truncated while reading {name!r}; re-download or rebuild the store")
        return np.frombuffer(buf, dtype=dt).reshape(t.shape).copy()

    @property
    def labels(self) -> np.ndarray:
        """``int32[N]`` labels recorded at build time."""
        if self._labels is None:
            self._labels = self._samples_array("label")
        return self._labels

    @property
    def content_hashes(self) -> np.ndarray:
        """``uint8[N, 8]`` content hashes recorded at build time."""
        if self._hashes is None:
            self._hashes = self._samples_array("content_hash")
        return self._hashes

    @property
    def keys(self) -> list[str]:
        """The ``N`` sample keys (relative paths or ``"{split}/{index}"``)."""
        if self._keys is None:
            data = self._samples_array("key_bytes").tobytes()
            off = self._samples_array("key_offsets")
            if off[0] != 0 or off[-1] != len(data) or (np.diff(off) < 0).any():
                raise IntegrityError(f"{self._samples_info[0]}: key offsets are inconsistent; re-download or "
                                     "rebuild the store")
            o = off.tolist()
            try:
                self._keys = [data[o[k]:o[k + 1]].decode("utf-8") for k in range(self._n)]
            except UnicodeDecodeError as e:
                raise IntegrityError(f"{self._samples_info[0]}: keys are not UTF-8 ({e}); re-download or "
                                     "rebuild the store") from e
        return self._keys

    def index_of_key(self, key: str) -> int:
        """Sample index of ``key``; raises :class:`AlignmentError` (also a ``KeyError``) if absent."""
        if self._key_index is None:
            self._key_index = {k: n for n, k in enumerate(self.keys)}
        try:
            return self._key_index[key]
        except KeyError:
            raise _MissingKey(f"{self.root}: key {key!r} is not in the store ({self._n} samples of "
                              f"{self.manifest.dataset}/{self.manifest.split}); the dataset copy has a file the "
                              "store was not built with") from None


def open_store(path: str | os.PathLike, **kwargs) -> ReinforcementStore:
    """Open a store folder for reading; keyword arguments as :class:`ReinforcementStore`."""
    p = Path(path)
    if not (p / MANIFEST_NAME).is_file() and not (p.suffix == ".json" and p.is_file()):
        raise StoreError(f"{p}: no {MANIFEST_NAME}; point to a store folder (an unfinished build has no manifest: "
                         "rerun it to completion)")
    return ReinforcementStore(p, **kwargs)
