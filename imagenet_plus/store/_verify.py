"""``verify``: check a store's files against its manifest (and, fully, hashes and value ranges)."""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import IntegrityError, StoreError
from ..schema import Field, decode_topk_ids, decode_topk_probs
from ._format import (Manifest, check_build_id, check_shard_metadata, check_tensors, read_header, samples_expected,
                      shard_expected)
from ._writer import sha256_file

__all__ = ["VerifyReport", "verify"]

_CHUNK_BYTES = 32 * 1024 * 1024


@dataclass
class VerifyReport:
    """What :func:`verify` checked.

    Attributes:
        path: the store folder.
        full: whether hashes and value ranges were checked.
        num_shards: shards checked.
        num_records: records covered by the checked shards.
        bytes_checked: bytes hashed (``full``) or whose sizes were checked.
        seconds: time taken.
        manifest: the store's manifest.
    """

    path: str
    full: bool
    num_shards: int
    num_records: int
    bytes_checked: int
    seconds: float
    manifest: Manifest = field(repr=False)


def _check_values(path: Path, name: str, values: np.ndarray, f: Field) -> str | None:
    lo, hi = values.min(), values.max()
    if (f.low is not None and lo < f.low) or (f.high is not None and hi > f.high):
        return f"{path}: field {name!r} holds values in [{lo}, {hi}], outside its declared range [{f.low}, {f.high}]"
    return None


def _check_shard_values(path: Path, m: Manifest, s0: int, s1: int, a0: int, a1: int, tensors) -> list[str]:
    problems = []
    fields = m.fields
    rec = sum(f.nbytes for f in fields) * (a1 - a0)
    rows = max(1, _CHUNK_BYTES // max(1, rec))
    ids_f, probs_f = fields[-2], fields[-1]
    with open(path, "rb") as fh:
        mm = np.memmap(fh, dtype=np.uint8, mode="r")
        views = {f.name: np.frombuffer(mm, dtype=np.dtype(f.dtype), count=math.prod((s1 - s0, a1 - a0, *f.shape)),
                                       offset=tensors[f.name].start).reshape((s1 - s0, a1 - a0, *f.shape))
                 for f in fields}
        for r0 in range(0, s1 - s0, rows):
            sl = slice(r0, r0 + rows)
            for f in fields[:-2]:
                msg = _check_values(path, f.name, np.asarray(views[f.name][sl]), f)
                if msg:
                    problems.append(msg)
            ids = decode_topk_ids(np.asarray(views[ids_f.name][sl]), m.num_classes, m.topk)
            if ids.size and ids.max() >= m.num_classes:
                problems.append(f"{path}: class id {ids.max()} >= num_classes={m.num_classes}")
            codes = np.asarray(views[probs_f.name][sl])
            probs = decode_topk_probs(codes)
            sums = probs.sum(-1)
            if probs.size and (probs.min() < 0 or probs.max() > 1 or sums.max() > 1 + 1e-3):
                problems.append(f"{path}: decoded probabilities outside [0, 1] or summing to {sums.max()} > 1")
            if (np.diff(codes[..., :-1].astype(np.int16), axis=-1) < 0).any():
                problems.append(f"{path}: top-k probabilities are not in descending order")
            if problems:
                break
        del views, mm
    return problems


def verify(path: str | os.PathLike, full: bool = False, *, num_augmentations: int | None = None) -> VerifyReport:
    """Check a store: manifest and schema, every shard present with its size and a matching header.

    The header check includes the build id: when the manifest has a ``build_id``, every
    checked shard's metadata must carry it (a same-size shard of another build fails
    even without ``full``).

    With ``full``, also the sha256 of every shard and of the samples file, and the
    value ranges: param fields within their ``[low, high]``, class ids below
    ``num_classes``, decoded probabilities in ``[0, 1]`` summing to at most ``1 + 1e-3``
    and in descending order, labels in ``[0, num_classes)``.

    Args:
        path: the store folder.
        full: also hash every file and check every value (reads the whole store).
        num_augmentations: check only the shards serving the first ``num_augmentations``
            augmentations (a partial download).

    Returns:
        A :class:`VerifyReport`.

    Raises:
        FormatVersionError: the store was written by an incompatible release.
        IntegrityError: files missing, truncated, corrupt or holding out-of-range values.
        StoreError: manifest malformed, or a header that disagrees with the manifest.

    Example:
        >>> verify("imagenet-plus/train", full=True).num_shards
        64
    """
    t0 = time.perf_counter()
    root = Path(path)
    m = Manifest.load(root)
    limit = m.num_augmentations if num_augmentations is None else int(num_augmentations)
    if not 1 <= limit <= m.num_augmentations:
        raise StoreError(f"verify: num_augmentations={num_augmentations} outside [1, {m.num_augmentations}]")
    shards = [e for e in m.shards if e.augs[0] < limit]
    errors: list[StoreError] = []
    nbytes = 0

    def fail(e: StoreError) -> None:
        errors.append(e)

    entries = [m.samples_file, *shards]
    for e in entries:
        p = root / e.file  # type: ignore[union-attr]
        try:
            tensors, meta, size = read_header(p)
            if size != e.bytes:  # type: ignore[union-attr]
                raise IntegrityError(f"{p}: {size} bytes, the manifest says {e.bytes}; the file is truncated or "
                                     "from another build: re-download or rebuild it")  # type: ignore[union-attr]
            if e is m.samples_file:
                kb_t = tensors.get("key_bytes")
                kb = kb_t.shape[0] if kb_t is not None and len(kb_t.shape) == 1 else -1
                if "build_id" in meta:  # samples files written without a build id are not compared
                    check_build_id(p, meta, m.build_id, "this samples file belongs to another build: re-download "
                                   "or rebuild the store")
                check_tensors(p, tensors, samples_expected(m.num_samples, kb), size)
            else:
                (s0, s1), (a0, a1) = e.samples, e.augs  # type: ignore[union-attr]
                check_shard_metadata(p, meta, s0, s1, a0, a1)
                check_build_id(p, meta, m.build_id, "this shard belongs to another build (the manifest's build_id "
                               "differs): delete it and re-download it or rebuild the store")
                check_tensors(p, tensors, shard_expected(m.fields, s0, s1, a0, a1), size)
            nbytes += size
            if not full:
                continue
            digest = sha256_file(p)
            if digest != e.sha256:  # type: ignore[union-attr]
                raise IntegrityError(f"{p}: sha256 {digest} does not match the manifest's {e.sha256}; the file is "
                                     "corrupt: delete it and re-download or rebuild it")  # type: ignore[union-attr]
            if e is m.samples_file:
                with open(p, "rb") as fh:
                    fh.seek(tensors["label"].start)
                    labels = np.frombuffer(fh.read(4 * m.num_samples), dtype="<i4")
                    fh.seek(tensors["key_offsets"].start)
                    off = np.frombuffer(fh.read(8 * (m.num_samples + 1)), dtype="<i8")
                if labels.size and (labels.min() < 0 or labels.max() >= m.num_classes):
                    raise IntegrityError(f"{p}: labels in [{labels.min()}, {labels.max()}], outside "
                                         f"[0, {m.num_classes}); rebuild the store")
                if off[0] != 0 or off[-1] != kb or (np.diff(off) < 0).any():
                    raise IntegrityError(f"{p}: key offsets are inconsistent; rebuild the store")
            else:
                problems = _check_shard_values(p, m, s0, s1, a0, a1, tensors)
                if problems:
                    raise IntegrityError("; ".join(problems) + "; the store holds invalid values: rebuild it")
        except StoreError as err:
            fail(err)
    if errors:
        kinds = {type(e) for e in errors}
        cls = kinds.pop() if len(kinds) == 1 else StoreError
        more = f" (and {len(errors) - 10} more)" if len(errors) > 10 else ""
        msg = f"verify {root}: {len(errors)} problem(s): " + " | ".join(str(e) for e in errors[:10]) + more
        raise cls(msg) from errors[0]
    records = sum((e.samples[1] - e.samples[0]) * (e.augs[1] - e.augs[0]) for e in shards)
    return VerifyReport(str(root), full, len(shards), records, nbytes, time.perf_counter() - t0, m)
