"""Reading a store: memory-mapped shards opened lazily, rows checked on first read, batched gathers, fork-safe."""

from __future__ import annotations

import math
import mmap
import os
import struct
import threading
import zlib
from collections import deque
from operator import index as _index
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .._checks import check_int
from ..errors import AlignmentError, IntegrityError, StoreError
from ..schema import PROB_CODE_SCALE, PROB_CODE_ZERO, Field, decode_topk_ids, decode_topk_probs, id_bits
from ._format import (MANIFEST_NAME, REPAIR, ROW_CRC_NAME, check_build_id, check_shard_metadata, check_teacher_id,
                      check_tensors, confined_path, read_header, row_checksums, row_mismatch_message, row_seeds,
                      shard_layout)
from ._manifest import BUILD_ID_FIELDS, Manifest, ShardEntry, compute_build_id, compute_teacher_id
from ._samples import SamplesFile

__all__ = ["Record", "ReinforcementStore", "open_store"]

# Same values as schema._CODE_VALUES, so the single-record path decodes bit-identically.
_CODE_VALUES = np.exp(-np.arange(256, dtype=np.float64) / PROB_CODE_SCALE)
_CODE_VALUES[PROB_CODE_ZERO] = 0.0

# Fewer unchecked rows of one shard in a batch than this: checked one by one (numpy's per-call cost
# outweighs its per-row gain on small runs; measured in benchmarks/store_access.py).
_ROWS_PER_VECTOR_CHECK = 16

_FOREIGN_FIX = f"this shard belongs to another build (the manifest's build_id differs): {REPAIR}"
_PLACE = struct.Struct("<QII")  # sample, a0, a1 after the build id: _format.row_place


class Record(NamedTuple):
    """One stored record: augmentation params and the teacher's top-k targets."""

    params: dict[str, np.ndarray]
    topk_ids: np.ndarray
    topk_probs: np.ndarray


class _MissingKey(AlignmentError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class _Shard:
    """An opened shard: read-only numpy views over a shared mmap, and what checking a row needs."""

    __slots__ = ("path", "s0", "a0", "a1", "cols", "params", "ids", "probs", "flat", "rows", "row_views", "crc",
                 "build_id", "seed")

    def __init__(self, path: Path, entry: ShardEntry, fields: tuple[Field, ...], build_id: str,
                 teacher_id: str):
        (s0, s1), (a0, a1) = entry.samples, entry.augs
        tensors, meta, size = read_header(path)
        if size != entry.bytes:
            raise IntegrityError(f"{path}: {size} bytes, the manifest says {entry.bytes}; the file is truncated or "
                                 f"from another build: {REPAIR}")
        check_shard_metadata(path, meta, s0, s1, a0, a1)
        check_teacher_id(path, meta, teacher_id)
        check_build_id(path, meta, build_id, _FOREIGN_FIX)
        check_tensors(path, tensors, shard_layout(fields, s0, s1, a0, a1), size)
        self.build_id, self.seed = build_id, zlib.crc32(build_id.encode("utf-8"))
        with open(path, "rb") as f:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        # No MADV_RANDOM: measured, the kernel's read-around fills the page cache far faster
        # (cold median 25-30 us vs ~400 us per record on a 10M-record store, benchmarks/store_access.py).
        n, self.cols = s1 - s0, a1 - a0
        views = {}
        for fl in fields:
            t = tensors[fl.name]
            shape = (n, self.cols, *fl.shape)
            views[fl.name] = np.frombuffer(mm, dtype=np.dtype(fl.dtype), count=math.prod(shape),
                                           offset=t.start).reshape(shape)
        self.path, self.s0, self.a0, self.a1 = path, s0, a0, a1
        self.flat = {name: v.reshape(n * self.cols, *v.shape[2:]) for name, v in views.items()}
        self.params = tuple((fl.name, views[fl.name]) for fl in fields[:-2])
        self.ids, self.probs = views[fields[-2].name], views[fields[-1].name]
        # Row r of field f is bytes [start_f + r * row_f, start_f + (r + 1) * row_f) of the file.
        whole = memoryview(mm)
        self.rows = tuple((whole[tensors[fl.name].start:tensors[fl.name].end], self.cols * fl.nbytes) for fl in fields)
        self.row_views = tuple(views[fl.name].reshape(n, -1) for fl in fields)
        self.crc = np.frombuffer(mm, dtype="<u4", count=n, offset=tensors[ROW_CRC_NAME].start)

    def check_row(self, r: int) -> None:
        """Check row ``r`` against its checksum (bound to its place); raises :class:`IntegrityError` naming shard
        and sample."""
        crc = zlib.crc32(_PLACE.pack(self.s0 + r, self.a0, self.a1), self.seed)
        for buf, nb in self.rows:
            crc = zlib.crc32(buf[r * nb:(r + 1) * nb], crc)
        want = int(self.crc[r])
        if crc != want:
            raise IntegrityError(row_mismatch_message(self.path, self.s0 + r, self.a0, self.a1, crc, want))

    def check_rows(self, rows: np.ndarray) -> None:
        """Check the rows ``rows`` (unique, int64) in one pass: one CRC update per row instead of per field."""
        got = row_checksums([v[rows] for v in self.row_views],
                            row_seeds(self.build_id, (rows + self.s0).tolist(), self.a0, self.a1))
        bad = np.flatnonzero(got != self.crc[rows])
        if bad.size:
            r = int(rows[bad[0]])
            raise IntegrityError(row_mismatch_message(self.path, self.s0 + r, self.a0, self.a1, int(got[bad[0]]),
                                                      int(self.crc[r])))


class ReinforcementStore:
    """A reinforcement store opened for reading.

    Opening checks the manifest (its settings against the build id the files carry,
    recomputed with the samples file's keys), the samples file's sha256 and every
    needed shard's size. Shards are memory-mapped on first use (never read into RAM),
    at most ``max_open_shards`` at a time, and re-opened after a fork, so one store
    object can be shared with DataLoader workers. Each sample row of a shard is checked
    against its CRC32 the first time it is read, by single and batched reads alike.

    Args:
        path: the store folder (with ``manifest.json``).
        num_augmentations: use only the first ``num_augmentations`` augmentations
            (only their shards need to exist); default all stored.
        expected_num_samples: if given, the dataset size the store must match.
        expected_num_classes: if given, the class count the store must match.
        check_files: check at open that every needed shard exists with its manifest size
            (a ``stat`` per file).
        max_open_shards: cap on simultaneously mapped shards.

    Raises:
        StoreError: missing or malformed manifest or files.
        IntegrityError: a file is damaged, of another build, or the manifest was edited.
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
        self.manifest = m = Manifest.load(self.root)
        stored = m.num_augmentations
        num_augmentations = check_int(num_augmentations, "num_augmentations", low=1, optional=True)
        if num_augmentations is None:
            num_augmentations = stored
        if not num_augmentations <= stored:
            raise StoreError(f"{self.root}: num_augmentations={num_augmentations} but the store holds {stored} "
                             f"augmentations per sample; pick a value in [1, {stored}]")
        self._num_augs = int(num_augmentations)
        self._n = m.num_samples
        self._sps, self._aps = m.samples_per_shard, m.augs_per_shard
        self._nab = math.ceil(stored / self._aps)
        self._fields = tuple(m.fields)
        self._bits = id_bits(m.num_classes)
        self._k = m.topk
        self._max_open = check_int(max_open_shards, "max_open_shards", low=1)
        self._teacher_id = compute_teacher_id(m)
        self._needed = [k for k, e in enumerate(m.shards) if e.augs[0] < self._num_augs]
        if check_files:
            self._check_files()
        if expected_num_samples is not None or expected_num_classes is not None:
            self.check_compatible(expected_num_samples, expected_num_classes)
        self._samples: SamplesFile | None = self._open_samples(check_sha256=True)
        self._keys: list[str] | None = None
        self._key_index: dict[str, int] | None = None
        self.check_manifest()
        self._reset()

    # -- opening ---------------------------------------------------------------------------------------
    def _check_files(self) -> None:
        problems = []
        for e in [self.manifest.samples_file] + [self.manifest.shards[k] for k in self._needed]:
            p = confined_path(self.root, e.file)  # type: ignore[union-attr]
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

    def _open_samples(self, check_sha256: bool) -> SamplesFile:
        e = self.manifest.samples_file
        return SamplesFile(confined_path(self.root, e.file, "samples file"), e, self._n,  # type: ignore[union-attr]
                           self.manifest.build_id, check_sha256=check_sha256)

    @property
    def _samples_file(self) -> SamplesFile:
        if self._samples is None:  # a copy in a worker process: the parent checked the sha256
            self._samples = self._open_samples(check_sha256=False)
        return self._samples

    def check_manifest(self) -> str:
        """Recompute the build id from the manifest's settings and the stored keys; return it.

        Every shard and the samples file carry the build id of the settings they were
        written with, so an edited manifest setting (any of ``BUILD_ID_FIELDS``) or a
        manifest of other files is caught here. Runs at open; cheap (hashes the keys).

        Raises:
            IntegrityError: naming the manifest, both ids and the fix.
        """
        m = self.manifest
        got = compute_build_id(m, self._samples_file.keys_digest())
        if got != m.build_id:
            raise IntegrityError(
                f"{self.root / MANIFEST_NAME}: its settings and the samples file's keys give build id {got!r}, but "
                f"the manifest (and the files it lists) say {m.build_id!r}; the manifest was edited after the build "
                f"(one of {', '.join(BUILD_ID_FIELDS)}) or belongs to other files: re-download or rebuild the store")
        return got

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._open: list[_Shard | None] = [None] * len(self.manifest.shards)
        self._order: deque[int] = deque()
        self._lock = threading.Lock()
        # One bit per sample row (sample i, augmentation block b: row i * blocks + b): checked in this process.
        self._checked_np = np.zeros((self._n * self._nab + 7) // 8, dtype=np.uint8)
        self._checked = memoryview(self._checked_np)  # fast scalar access

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_open"], state["_order"], state["_pid"], state["_lock"] = None, None, -1, None
        state["_checked"] = state["_checked_np"] = None
        state["_samples"] = None  # an mmap: the receiving process maps the file again
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
            sh = _Shard(confined_path(self.root, entry.file, "shard"), entry, self._fields,
                        self.manifest.build_id, self._teacher_id)  # type: ignore[arg-type]
            if len(self._order) >= self._max_open:
                self._open[self._order.popleft()] = None
            self._open[k] = sh
            self._order.append(k)
            return sh

    def close(self) -> None:
        """Unmap every open shard (re-opened, and their rows checked again, on the next access)."""
        self._reset()

    def _locate(self, i: int, j: int) -> tuple[_Shard, int, int]:
        i, j = _index(i), _index(j)  # ints and numpy integers; floats raise TypeError
        if not (0 <= i < self._n and 0 <= j < self._num_augs):
            raise IndexError(f"record ({i}, {j}) outside [0, {self._n}) x [0, {self._num_augs}) of {self.root}")
        if self._pid != os.getpid():
            self._reset()
        b = j // self._aps
        k = (i // self._sps) * self._nab + b
        sh = self._open[k]
        if sh is None:
            sh = self._open_shard(k)
        r = i - sh.s0
        row = i * self._nab + b
        if not self._checked[row >> 3] >> (row & 7) & 1:
            sh.check_row(r)
            self._checked[row >> 3] |= 1 << (row & 7)  # a lost update (two threads) only means a re-check
        return sh, r, j - sh.a0

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
        """Stored values of ``names`` for records ``(i[b], j[b])``: one take per shard and field."""
        i, j = np.broadcast_arrays(np.asarray(i, dtype=np.int64), np.asarray(j, dtype=np.int64))
        i, j = i.ravel(), j.ravel()
        if i.size and (i.min() < 0 or i.max() >= self._n or j.min() < 0 or j.max() >= self._num_augs):
            raise IndexError(f"records outside [0, {self._n}) x [0, {self._num_augs}) of {self.root}")
        if self._pid != os.getpid():
            self._reset()
        fields = {f.name: f for f in self._fields}
        out = {n: np.empty((i.size, *fields[n].shape), dtype=np.dtype(fields[n].dtype)) for n in names}
        if not i.size:
            return out
        b = j // self._aps
        k = (i // self._sps) * self._nab + b
        rows = i * self._nab + b
        new = np.flatnonzero((self._checked_np[rows >> 3] >> (rows & 7) & 1) == 0)
        if new.size:
            self._check_rows(np.unique(rows[new]))
        order = np.argsort(k, kind="stable")
        ks, i, j = k[order], i[order], j[order]
        bounds = np.flatnonzero(ks[1:] != ks[:-1]) + 1
        for s, e in zip(np.r_[0, bounds].tolist(), np.r_[bounds, ks.size].tolist()):  # one run per shard
            sh = self._open[int(ks[s])] or self._open_shard(int(ks[s]))
            flat_idx = (i[s:e] - sh.s0) * sh.cols + (j[s:e] - sh.a0)
            for n in names:
                sh.flat[n].take(flat_idx, axis=0, out=out[n][s:e])
        inverse = np.empty_like(order)
        inverse[order] = np.arange(order.size)
        return {n: v[inverse] for n, v in out.items()}

    def _check_rows(self, rows: np.ndarray) -> None:
        """Check sample rows (``i * blocks + b``, unique, sorted) not checked yet in this process, shard by shard."""
        i, b = rows // self._nab, rows % self._nab
        k = (i // self._sps) * self._nab + b
        order = np.argsort(k, kind="stable")
        ks, i, rows = k[order], i[order], rows[order]
        bounds = np.flatnonzero(ks[1:] != ks[:-1]) + 1
        for s, e in zip(np.r_[0, bounds].tolist(), np.r_[bounds, ks.size].tolist()):
            sh = self._open[int(ks[s])] or self._open_shard(int(ks[s]))
            if e - s > _ROWS_PER_VECTOR_CHECK:
                sh.check_rows(i[s:e] - sh.s0)
            else:
                for r in (i[s:e] - sh.s0).tolist():
                    sh.check_row(r)
            np.bitwise_or.at(self._checked_np, rows[s:e] >> 3, (1 << (rows[s:e] & 7)).astype(np.uint8))

    def params_batch(self, i, j) -> dict[str, np.ndarray]:
        """Params of records ``(i[b], j[b])``: ``{field: array[B, *field.shape]}`` (``i``, ``j`` broadcast)."""
        return self._gather(i, j, [f.name for f in self.param_fields])

    def targets_batch(self, i, j) -> tuple[np.ndarray, np.ndarray]:
        """Targets of records ``(i[b], j[b])``: ``(ids int64[B, K], probs float32[B, K])``."""
        names = [f.name for f in self._fields[-2:]]
        raw = self._gather(i, j, names)
        m = self.manifest
        return decode_topk_ids(raw[names[0]], m.num_classes, m.topk), decode_topk_probs(raw[names[1]])

    def records_batch(self, i, j) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        """Params and targets of records ``(i[b], j[b])`` in one gather: ``(params, ids, probs)``.

        Example:
            >>> params, ids, probs = store.records_batch(indices, choices)  # a DataLoader batch
        """
        names = [f.name for f in self._fields]
        raw = self._gather(i, j, names)
        m = self.manifest
        ids = decode_topk_ids(raw[names[-2]], m.num_classes, m.topk)
        probs = decode_topk_probs(raw[names[-1]])
        return {n: raw[n] for n in names[:-2]}, ids, probs

    # -- samples ---------------------------------------------------------------------------------------
    @property
    def labels(self) -> np.ndarray:
        """``int32[N]`` labels recorded at build time (read-only)."""
        return self._samples_file.column("label")

    @property
    def content_hashes(self) -> np.ndarray:
        """``uint8[N, 8]`` content digests recorded at build time (read-only)."""
        return self._samples_file.column("content_hash")

    @property
    def image_sizes(self) -> np.ndarray:
        """``uint32[N, 2]``: ``H, W`` of each decoded image at build time (read-only)."""
        return self._samples_file.column("image_size")

    @property
    def fingerprints(self) -> np.ndarray:
        """``uint8[N, 64]`` 8x8 luma thumbnails (``identity.fingerprint``) recorded at build time (read-only)."""
        return self._samples_file.column("fingerprint")

    @property
    def keys(self) -> list[str]:
        """The ``N`` sample keys (relative paths or ``"{split}/{index}"``), decoded once."""
        if self._keys is None:
            self._keys = self._samples_file.keys()
        return self._keys

    def index_of_key(self, key: str) -> int:
        """Sample index of ``key``; raises :class:`AlignmentError` (also a ``KeyError``) if absent."""
        if self._key_index is None:
            self._key_index = dict(zip(self.keys, range(self._n)))
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
