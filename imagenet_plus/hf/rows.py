"""The records source of exported Parquet rows, for :class:`~imagenet_plus.replay.ReplaySource`.

:class:`RowRecords` answers the replay core's four questions (see
:class:`~imagenet_plus.replay.StoreRecords`) from rows of the Parquet export
(:mod:`imagenet_plus.hf.export`) instead of a dataset copy and the store's shards. Each row is
checked on its first use in a process, as the store reader checks a shard row:

* its ``key`` and ``label`` against the store's samples file;
* with records from the row (``source="row"``, or ``"auto"`` when the row has them): its
  ``checksum`` against its params and targets, the store's build id and its sample index, so
  an edited or corrupted value, or a row of another store, is refused;
* its image on every decode: the row's bytes are decoded by the package (as the store path
  decodes files: no EXIF rotation) and checked against the samples file; ``check="exact"``
  (the default where a row carries its file's bytes) compares the sha256 of the bytes and the
  decoded size, ``"resized"`` the aspect ratio and the thumbnail (the default for rows without
  their file's bytes: a PNG rendering of an array dataset, or an image decoded by ``datasets``).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..errors import AlignmentError, IntegrityError, PolicyError, StoreError
from ..identity import IdentityChecker, digest_bytes
from .export import images_forbidden, row_checksum

__all__ = ["ROW_SOURCES", "RowRecords"]

#: Values of ``source=``: where params and targets come from.
ROW_SOURCES = ("auto", "row", "store")


class _Sample:
    __slots__ = ("image", "label")

    def __init__(self, image, label: int) -> None:
        self.image, self.label = image, label


class RowRecords:
    """Exported Parquet rows as a records source (see the module docstring).

    Args:
        identity: the opened store (its manifest and samples file; shards only for ``source="store"``).
        source: ``"row"``, ``"store"`` or ``"auto"`` (the row's own records where it has them).
        check: ``"exact"``, ``"resized"`` or ``None`` (``"exact"`` where a row carries its file's bytes).
        partners: mixing policies: the rows (un-transformed) to read partner rows from by index.
        open_store: returns the store with its shards (called once, for ``source="store"``).
    """

    def __init__(self, identity, *, source: str, check: str | None, partners=None,
                 open_store: Callable[[], Any] | None = None) -> None:
        self.identity, self.manifest = identity, identity.manifest
        self.source, self.check, self.partner_rows = source, check, partners
        self.num_samples, self.num_classes = self.manifest.num_samples, self.manifest.num_classes
        self._checkers = {mode: IdentityChecker(identity, mode) for mode in ("exact", "resized")}
        self._open_store, self._store = open_store, None
        self._keys, self._labels = identity.keys, np.asarray(identity.labels, dtype=np.int64)
        self._checked = np.zeros(self.num_samples, dtype=bool)  # key and label passed (this process)
        self._summed = np.zeros(self.num_samples, dtype=bool)  # checksum passed (this process)
        self._columns = [f.name for f in self.manifest.param_fields] + ["topk_ids", "topk_probs"]

    @property
    def store(self):
        """The store with its shards (opened on first use: ``source="store"`` or rows without records)."""
        if self._store is None:
            self._store = self._open_store()
        return self._store

    def _from_rows(self, row: Mapping[str, Any]) -> bool:
        if self.source != "auto":
            return self.source == "row"
        return all(c in row for c in self._columns)

    # -- the source interface --------------------------------------------------------------------------
    def locate(self, rows: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
        if any("index" not in r for r in rows):
            raise StoreError("rows have no 'index' column; load the Parquet export of the store (or keep the "
                             "'index' column when selecting columns)")
        index = np.asarray([int(r["index"]) for r in rows], dtype=np.int64)
        bad = index[(index < 0) | (index >= self.num_samples)]
        if bad.size:
            m = self.manifest
            raise AlignmentError(f"row index {int(bad[0])} is outside the store's {m.num_samples} samples "
                                 f"({m.dataset}/{m.split}); the rows and the store are from different builds")
        return index, index

    def samples(self, rows: Sequence[Mapping[str, Any]], plan) -> list:
        from_rows = bool(rows) and self._from_rows(rows[0])
        return [self._sample(r, int(i), from_rows) for r, i in zip(rows, plan.store_index)]

    def records(self, rows: Sequence[Mapping[str, Any]], plan):
        if not (rows and self._from_rows(rows[0])):
            return self.store.records_batch(plan.store_index, plan.read_aug)
        return self._row_records(rows, plan.read_aug)

    def partners(self, p: np.ndarray, aug: np.ndarray, params: bool) -> tuple[list, dict | None]:
        if self.partner_rows is None:
            raise PolicyError("the store's policy mixes images: pass partners= (the dataset without transform, "
                              "e.g. load_dataset(...)) to create_transform so partner images can be read")
        rows = []
        for s in p:
            row = self.partner_rows[int(s)]
            if int(row["index"]) != int(s):
                raise AlignmentError(f"partners[{s}] has index {row['index']}; pass the full dataset, unshuffled "
                                     "and unfiltered, as partners=")
            rows.append(row)
        from_rows = self._from_rows(rows[0])
        decoded: dict[int, Any] = {}  # a partner met twice in a batch is decoded once
        for r, s in zip(rows, map(int, p)):
            if s not in decoded:
                decoded[s] = self._sample(r, s, from_rows).image
        images = [decoded[int(s)] for s in p]
        if not params:
            return images, None
        return images, (self._row_records(rows, aug)[0] if from_rows else self.store.params_batch(p, aug))

    # -- rows ------------------------------------------------------------------------------------------
    def _row_records(self, rows: Sequence[Mapping[str, Any]], aug: np.ndarray):
        missing = [c for c in self._columns if c not in rows[0]]
        if missing:
            raise StoreError(f"row {int(rows[0]['index'])} has no column(s) {missing}; load the Parquet export with "
                             "all its columns or create the transform with source='store'")
        params = {f.name: np.stack([np.asarray(r[f.name][j], dtype=np.dtype(f.dtype)).reshape(f.shape)
                                    for r, j in zip(rows, aug)]) for f in self.manifest.param_fields}
        ids = np.stack([np.asarray(r["topk_ids"][j], dtype=np.int64) for r, j in zip(rows, aug)])
        probs = np.stack([np.asarray(r["topk_probs"][j], dtype=np.float32) for r, j in zip(rows, aug)])
        return params, ids, probs

    def _where(self, row: Mapping[str, Any], i: int) -> str:
        return f"row {i} (key {row.get('key', self._keys[i])!r}) of the rows for the store {self.identity.root}"

    def _check_row(self, row: Mapping[str, Any], i: int, from_rows: bool) -> None:
        """Key and label against the samples file; with the row's records, its checksum (first use only)."""
        if not self._checked[i]:
            key, label = row.get("key"), row.get("label")
            if key is not None and key != self._keys[i]:
                raise AlignmentError(f"row {i} has key {key!r} but the store {self.identity.root} records "
                                     f"{self._keys[i]!r} at that index; the rows and the store are from different "
                                     "builds: pass the store the rows were exported from")
            if label is not None and int(label) != int(self._labels[i]):
                raise AlignmentError(f"{self._where(row, i)}: label {int(label)}, the store records "
                                     f"{int(self._labels[i])}; the row was edited or belongs to another store: "
                                     "re-export the rows from this store")
            self._checked[i] = True
        if from_rows and not self._summed[i]:
            self._check_checksum(row, i)
            self._summed[i] = True

    def _check_checksum(self, row: Mapping[str, Any], i: int) -> None:
        m = self.manifest
        got = row.get("checksum")
        if got is None:
            raise StoreError(f"{self._where(row, i)} has no 'checksum' column (exported by an older release, or the "
                             "column was dropped); re-export the store (builders/export.py --overwrite), keep the "
                             "column, or create the transform with source='store'")
        a = m.num_augmentations
        params = {}
        for f in m.param_fields:
            v = np.asarray(row[f.name], dtype=np.dtype(f.dtype))
            if v.shape != (a, *f.shape):
                raise IntegrityError(f"{self._where(row, i)}: column {f.name!r} has shape {v.shape}, the store's "
                                     f"records {(a, *f.shape)}; the rows come from another store: pass the store "
                                     "the rows were exported from")
            params[f.name] = v
        want = row_checksum(m.build_id, i, m.param_fields, params, np.asarray(row["topk_ids"]),
                            np.asarray(row["topk_probs"], dtype=np.float32))
        if got != want:
            raise IntegrityError(f"{self._where(row, i)}: its checksum {got!r} does not match its records (params "
                                 f"and targets) under build id {m.build_id} and sample index {i}: the row was edited "
                                 "or corrupted, or it was exported from another store; re-export it from this store "
                                 "(builders/export.py --overwrite), or pass the store the rows came from")

    def _sample(self, row: Mapping[str, Any], i: int, from_rows: bool) -> _Sample:
        self._check_row(row, i, from_rows)
        return _Sample(self._image(row, i), int(self._labels[i]))

    def _image(self, row: Mapping[str, Any], i: int):
        from ..imageio import decode_bytes, to_rgb_image

        cell = row.get("image")
        if cell is None:
            hint = (f" {self.manifest.dataset} rows carry no pixels (licence): add your own copy's images as an "
                    "'image' column (match rows by 'key')") if images_forbidden(self.manifest.dataset) else ""
            raise StoreError(f"row {i} has no 'image'; the transform replays augmentations on the row's image.{hint}")
        data, path = (cell.get("bytes"), cell.get("path")) if isinstance(cell, dict) else \
            (bytes(cell), None) if isinstance(cell, (bytes, bytearray, memoryview)) else (None, None)
        mode = self.check or ("exact" if data is not None and path is not None else "resized")
        if mode == "exact" and (data is None or path is None):
            what = "a decoded image" if data is None else "a PNG rendering of the sample, not its file"
            raise AlignmentError(f"{self._where(row, i)}: check='exact' compares the row's file bytes with the store, "
                                 f"but its image is {what}; keep the export's undecoded image column "
                                 "(datasets.Image(decode=False)) with file bytes, or pass check='resized'")
        where = lambda: self._where(row, i)  # noqa: E731
        image = decode_bytes(data, where) if data is not None else to_rgb_image(cell)
        # the bytes' digest also lets check="resized" skip the thumbnail of bytes it has already checked
        self._checkers[mode].check(i, image, digest_bytes(data) if data is not None else None, where)
        return image
