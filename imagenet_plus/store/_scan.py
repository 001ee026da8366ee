"""Reading a whole store file once: its sha256, every row checksum and (optionally) every value.

Used by ``verify(full=True)`` and by ``read_shard_entry`` (a resumed build keeps a
finished shard only if every row still matches its checksum).
"""

from __future__ import annotations

import hashlib
import math
import mmap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..schema import Field, decode_topk_ids, decode_topk_probs
from ._format import ROW_CRC_NAME, TensorInfo, row_checksums, row_seeds

_HASH_CHUNK = 16 * 1024 * 1024
_ROWS_CHUNK_BYTES = 32 * 1024 * 1024


def map_file(path: Path) -> mmap.mmap | bytes:
    """The file's bytes, memory-mapped read-only (unmapped when the last view of it is dropped)."""
    with open(path, "rb") as f:
        try:
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # an empty file cannot be mapped
            return b""


def sha256_of(buf) -> str:
    """Hex sha256 of a buffer, fed in chunks (hashlib releases the GIL on large updates)."""
    h = hashlib.sha256()
    view = memoryview(buf)
    for k in range(0, len(view), _HASH_CHUNK):
        h.update(view[k:k + _HASH_CHUNK])
    return h.hexdigest()


@dataclass
class ShardScan:
    """What :func:`scan_shard` found: the file's sha256, rows failing their checksum, value problems."""

    sha256: str
    bad_rows: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def field_view(buf, t: TensorInfo, f: Field, rows: int) -> np.ndarray:
    """Tensor ``t`` of field ``f`` as a read-only ``[rows, a1 - a0, *f.shape]`` view of ``buf``."""
    count = math.prod(t.shape)
    return np.frombuffer(buf, dtype=np.dtype(f.dtype), count=count, offset=t.start).reshape(t.shape)


def scan_shard(path: Path, tensors: dict[str, TensorInfo], fields: Sequence[Field], rows: int, *,
               place: tuple[str, int, int, int], num_classes: int | None = None,
               topk: int | None = None) -> ShardScan:
    """Hash a (header-checked) shard, check every row checksum and, with ``num_classes``, every value.

    Args:
        path: the shard.
        tensors: its parsed header (already checked against the manifest's layout).
        fields: the manifest's fields (param fields, then the two target fields).
        rows: samples in the shard (``s1 - s0``).
        place: ``(build_id, s0, a0, a1)``: what the row checksums are bound to (``row_place``).
        num_classes, topk: given: also check params within their declared ranges, class
            ids below ``num_classes``, probabilities in ``[0, 1]``, summing to at most
            ``1 + 1e-3`` and in descending order.
    """
    buf = map_file(path)
    scan = ShardScan(sha256_of(buf))
    views = [field_view(buf, tensors[f.name], f, rows) for f in fields]
    stored = np.frombuffer(buf, dtype="<u4", count=rows, offset=tensors[ROW_CRC_NAME].start)
    row_bytes = max(1, sum(f.nbytes for f in fields) * views[0].shape[1])
    step = max(1, _ROWS_CHUNK_BYTES // row_bytes)
    build_id, s0, a0, a1 = place
    for r0 in range(0, rows, step):
        chunk = [v[r0:r0 + step] for v in views]
        got = row_checksums(chunk, row_seeds(build_id, range(s0 + r0, s0 + min(rows, r0 + step)), a0, a1))
        scan.bad_rows.extend((np.flatnonzero(got != stored[r0:r0 + step]) + r0).tolist())
        if num_classes is not None and not scan.problems:
            scan.problems.extend(_value_problems(path, fields, chunk, num_classes, topk or 1))
    return scan


def _value_problems(path: Path, fields: Sequence[Field], chunk: list[np.ndarray], num_classes: int,
                    topk: int) -> list[str]:
    problems = []
    for f, v in zip(fields[:-2], chunk[:-2]):
        if not v.size:
            continue
        if v.dtype.kind == "f" and not np.isfinite(v).all():
            problems.append(f"{path}: field {f.name!r} holds NaN or infinite values")
            continue
        lo, hi = v.min(), v.max()
        if (f.low is not None and lo < f.low) or (f.high is not None and hi > f.high):
            problems.append(f"{path}: field {f.name!r} holds values in [{lo}, {hi}], outside its declared range "
                            f"[{f.low}, {f.high}]")
    ids = decode_topk_ids(chunk[-2], num_classes, topk)
    if ids.size and ids.max() >= num_classes:
        problems.append(f"{path}: class id {ids.max()} >= num_classes={num_classes}")
    codes = chunk[-1]
    probs = decode_topk_probs(codes)
    sums = probs.sum(-1)
    if probs.size and (probs.min() < 0 or probs.max() > 1 or sums.max() > 1 + 1e-3):
        problems.append(f"{path}: decoded probabilities outside [0, 1] or summing to {sums.max()} > 1")
    if (np.diff(codes[..., :-1].astype(np.int16), axis=-1) < 0).any():
        problems.append(f"{path}: top-k probabilities are not in descending order")
    return problems
