"""The on-disk layout: constants, shard names and plan, safetensors headers, row checksums.

A store folder holds ``manifest.json`` (written last), ``samples.safetensors``
(per-sample identity) and ``reinforcements/shard-*.safetensors``, each shard
covering a contiguous sample range ``[s0, s1)`` and augmentation range
``[a0, a1)`` with one tensor per field of shape ``[s1 - s0, a1 - a0, *field.shape]``
and one ``row_crc32`` tensor ``<u4 [s1 - s0]``: each sample row's checksum, bound to its
place (:func:`row_place`): the CRC32 (zlib) of ``place || row bytes``, where ``place`` is the
store's build id (UTF-8), the sample index (``<u8``) and the shard's augmentation range
``a0``, ``a1`` (``<u4`` each), and the row bytes are the sample's records over every field,
in manifest field order. A row moved to another sample, augmentation block or store fails.

Every path a manifest names is confined to the store folder (:func:`confined_path`).
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import FormatVersionError, IntegrityError, StoreError
from ..schema import SAMPLE_FIELDS, Field

#: Version of the store layout. Bump on any change a reader of an older release cannot read.
#: 2: per-row checksums in every shard, identity columns (image size, fingerprint) in the
#: samples file, build ids required and covering every setting a reader relies on.
#: 3: row checksums bound to their place (build id, sample, augmentation block); the teacher's
#: identity (checkpoint sha256s, or an imported archive's) in the build id and every shard.
FORMAT_VERSION = 3
MANIFEST_NAME = "manifest.json"
SAMPLES_NAME = "samples.safetensors"
SHARD_DIR = "reinforcements"
#: The per-row checksum tensor of every shard (a reserved name: no field may use it).
ROW_CRC_NAME = "row_crc32"
#: Default cap on one shard's size (bytes).
MAX_SHARD_BYTES = 512 * 1024 * 1024
#: Default augmentation block: a 400-augmentation build serves 50/100/400 by whole blocks.
DEFAULT_AUGS_PER_SHARD = 50

_SHARD_RE = re.compile(r"^shard-s(\d{8})-s(\d{8})-a(\d{5})-a(\d{5})\.safetensors$")
_MAX_HEADER_BYTES = 100 * 1024 * 1024
_CRC_CHUNK_BYTES = 8 * 1024 * 1024

#: The fix named by every message about a damaged store file.
REPAIR = "delete it and re-download it or rebuild the store"
#: How to list every bad file at once.
FULL_CHECK = "run `imagenet-plus verify STORE --full` to list every bad file"

# numpy dtype (byte order stripped) <-> safetensors dtype code.
_ST_CODES = {
    "u1": "U8", "i1": "I8", "u2": "U16", "i2": "I16", "u4": "U32", "i4": "I32",
    "u8": "U64", "i8": "I64", "f2": "F16", "f4": "F32", "f8": "F64", "b1": "BOOL",
}


def st_code(dtype: np.dtype | str) -> str:
    """The safetensors dtype code of a little-endian (or byte-order free) numpy dtype."""
    dt = np.dtype(dtype)
    if dt.byteorder == ">" or (dt.byteorder == "=" and dt.itemsize > 1 and np.little_endian is False):
        raise StoreError(f"dtype {dtype!r} is big-endian; store fields must be little-endian ('<') or byte-free ('|')")
    key = f"{dt.kind}{dt.itemsize}"
    if key not in _ST_CODES:
        raise StoreError(f"dtype {dtype!r} cannot be stored in safetensors; use an integer, float or bool dtype")
    return _ST_CODES[key]


def check_version(version: object, source: str, what: str = "store") -> None:
    """Raise :class:`FormatVersionError` unless ``version`` is this release's :data:`FORMAT_VERSION`."""
    if version == FORMAT_VERSION or version == str(FORMAT_VERSION):
        return
    try:
        newer = int(version) > FORMAT_VERSION  # type: ignore[call-overload]
    except (TypeError, ValueError):
        newer = False
    if newer:
        hint = "upgrade imagenet-plus"
    elif str(version) == "2":
        hint = ("it was written before row checksums were bound to their sample and the teacher's weights to the "
                "build id, so its rows and teacher cannot be checked: rebuild it with this release (`imagenet-plus "
                "build`, same settings) or re-import it (`imagenet-plus import-ml-dr`)")
    else:
        hint = ("it was written before per-row checksums and build ids existed: rebuild the store with this release "
                "(no version-1 store was ever published)")
    raise FormatVersionError(f"{source}: {what} format version {version!r}, this release reads version "
                             f"{FORMAT_VERSION}; {hint}")


# -- names and plan --------------------------------------------------------------------------------------

def shard_filename(s0: int, s1: int, a0: int, a1: int) -> str:
    """Path of shard ``[s0, s1) x [a0, a1)`` relative to the store root.

    Example:
        >>> shard_filename(0, 1000, 0, 50)
        'reinforcements/shard-s00000000-s00001000-a00000-a00050.safetensors'
    """
    return f"{SHARD_DIR}/shard-s{s0:08d}-s{s1:08d}-a{a0:05d}-a{a1:05d}.safetensors"


def parse_shard_filename(name: str) -> tuple[int, int, int, int] | None:
    m = _SHARD_RE.match(os.path.basename(name))
    return None if m is None else tuple(int(g) for g in m.groups())  # type: ignore[return-value]


def resolve_shard_shape(num_samples: int, num_augmentations: int, record_bytes: int,
                        samples_per_shard: int | None = None, augs_per_shard: int | None = None,
                        max_shard_bytes: int = MAX_SHARD_BYTES) -> tuple[int, int]:
    """Choose ``(samples_per_shard, augs_per_shard)`` under the size cap.

    ``augs_per_shard`` defaults to ``min(num_augmentations, 50)``; ``samples_per_shard``
    defaults to the largest count whose shard fits ``max_shard_bytes``. Explicit values
    that break the cap raise :class:`StoreError`. (The 4-byte row checksum per sample is
    not counted in ``record_bytes``; it is far below the cap's margin.)
    """
    if record_bytes < 1:
        raise StoreError(f"record_bytes must be >= 1, got {record_bytes}")
    aps = min(num_augmentations, DEFAULT_AUGS_PER_SHARD) if augs_per_shard is None else int(augs_per_shard)
    aps = max(1, min(aps, num_augmentations))
    if samples_per_shard is None:
        sps = max(1, min(num_samples, max_shard_bytes // (aps * record_bytes)))
    else:
        sps = max(1, min(int(samples_per_shard), num_samples))
    if sps * aps * record_bytes > max_shard_bytes:
        fit = max_shard_bytes // (aps * record_bytes)
        raise StoreError(f"samples_per_shard={sps} x augs_per_shard={aps} x {record_bytes} bytes per record "
                         f"exceeds the shard size cap of {max_shard_bytes} bytes; use samples_per_shard <= {fit} "
                         f"or a smaller augs_per_shard")
    return sps, aps


def plan_shards(num_samples: int, num_augmentations: int, samples_per_shard: int, augs_per_shard: int, *,
                record_bytes: int | None = None,
                max_shard_bytes: int | None = MAX_SHARD_BYTES) -> list[tuple[int, int, int, int]]:
    """The shards of a store, ``(s0, s1, a0, a1)``, sample block major, augmentation block minor.

    Args:
        num_samples: samples in the dataset.
        num_augmentations: augmentations per sample.
        samples_per_shard: samples per shard (last block may be shorter).
        augs_per_shard: augmentations per shard (last block may be shorter).
        record_bytes: bytes per record; with ``max_shard_bytes``, shards over the cap raise.
        max_shard_bytes: the size cap (``None``: no check).

    Returns:
        The list of ranges, in the deterministic order the manifest lists them.

    Example:
        >>> plan_shards(5, 4, 3, 2)
        [(0, 3, 0, 2), (0, 3, 2, 4), (3, 5, 0, 2), (3, 5, 2, 4)]
    """
    for name, v in (("num_samples", num_samples), ("num_augmentations", num_augmentations),
                    ("samples_per_shard", samples_per_shard), ("augs_per_shard", augs_per_shard)):
        if int(v) != v or v < 1:
            raise StoreError(f"{name} must be a positive integer, got {v!r}")
    if record_bytes is not None and max_shard_bytes is not None:
        per = min(samples_per_shard, num_samples) * min(augs_per_shard, num_augmentations) * record_bytes
        if per > max_shard_bytes:
            resolve_shard_shape(num_samples, num_augmentations, record_bytes, samples_per_shard, augs_per_shard,
                                max_shard_bytes)  # raises with the fix
    return [(s0, min(s0 + samples_per_shard, num_samples), a0, min(a0 + augs_per_shard, num_augmentations))
            for s0 in range(0, num_samples, samples_per_shard)
            for a0 in range(0, num_augmentations, augs_per_shard)]


# -- safetensors headers ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives in a safetensors file."""

    dtype: str  # safetensors code
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    end: int


def serialize_header(arrays: dict[str, np.ndarray], metadata: dict[str, str]) -> tuple[bytes, list[str]]:
    """A deterministic safetensors header (the library orders ``__metadata__`` at random).

    Tensors are laid out by item size (largest first), then name, so every tensor is
    aligned to its item size after the 8-byte-padded header. Returns the header bytes
    (length prefix included) and the tensor names in data order.
    """
    names = sorted(arrays, key=lambda k: (-arrays[k].dtype.itemsize, k))
    header: dict = {"__metadata__": dict(sorted(metadata.items()))}
    offset = 0
    for k in names:
        a = arrays[k]
        header[k] = {"dtype": st_code(a.dtype), "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-(8 + len(raw)) % 8)
    return len(raw).to_bytes(8, "little") + raw, names


def read_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str], int]:
    """Parse a safetensors header: ``(tensors, metadata, file_size)``; raises :class:`IntegrityError`."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise IntegrityError(f"{path}: file is {size} bytes, too short for a safetensors header; "
                                     f"it is truncated: {REPAIR}")
            n = int.from_bytes(head, "little")
            if n < 2 or n > _MAX_HEADER_BYTES or 8 + n > size:
                raise IntegrityError(f"{path}: header length {n} does not fit a file of {size} bytes; "
                                     f"the file is truncated or corrupt: {REPAIR}")
            raw = f.read(n)
    except FileNotFoundError as e:
        raise IntegrityError(f"{path}: file is missing; re-download it or rebuild the store") from e
    try:
        header = json.loads(raw.decode("utf-8"))
        if not isinstance(header, dict):
            raise IntegrityError(f"{path}: the safetensors header is a JSON {type(header).__name__}, not an object; "
                                 f"the file is corrupt: {REPAIR}")
        meta = header.pop("__metadata__", None) or {}
        base = 8 + n
        tensors = {}
        for name, t in header.items():
            b, e = (int(x) for x in t["data_offsets"])
            tensors[name] = TensorInfo(str(t["dtype"]), tuple(int(s) for s in t["shape"]), base + b, base + e)
    except IntegrityError:
        raise
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise IntegrityError(f"{path}: unreadable safetensors header ({e}); the file is corrupt: {REPAIR}") from e
    end = max((t.end for t in tensors.values()), default=8 + n)
    if end > size:
        raise IntegrityError(f"{path}: tensors end at byte {end} but the file has {size} bytes; it is truncated: "
                             f"{REPAIR}")
    return tensors, {str(k): str(v) for k, v in meta.items()}, size


Layout = dict[str, tuple[np.dtype, tuple[int, ...]]]


def check_tensors(path: Path, tensors: dict[str, TensorInfo], expected: Layout, size: int) -> None:
    """Check names, dtypes, shapes and byte extents against ``expected``; raises :class:`StoreError`."""
    if set(tensors) != set(expected):
        raise StoreError(f"{path}: tensors {sorted(tensors)} do not match the manifest's {sorted(expected)}; "
                         f"the file belongs to another build or release: {REPAIR}")
    total = 0
    for name, (dt, shape) in expected.items():
        t = tensors[name]
        if t.dtype != st_code(dt) or t.shape != tuple(shape):
            raise StoreError(f"{path}: tensor {name!r} is {t.dtype}{list(t.shape)}, the manifest expects "
                             f"{st_code(dt)}{list(shape)}; the file belongs to another build: {REPAIR}")
        nbytes = math.prod(shape) * np.dtype(dt).itemsize
        if t.end - t.start != nbytes:
            raise IntegrityError(f"{path}: tensor {name!r} spans {t.end - t.start} bytes, expected {nbytes}; "
                                 f"the file is corrupt: {REPAIR}")
        total += nbytes
    spans = sorted((t.start, t.end) for t in tensors.values())
    if any(a[1] != b[0] for a, b in zip(spans, spans[1:])):
        raise IntegrityError(f"{path}: tensors overlap or leave gaps; the file is corrupt: {REPAIR}")
    data_start = spans[0][0] if spans else size
    if size - data_start != total:
        raise IntegrityError(f"{path}: {size - data_start} data bytes for {total} bytes of tensors; the file is "
                             f"truncated or has trailing bytes: {REPAIR}")


def samples_layout(num_samples: int, key_bytes: int) -> Layout:
    """The tensors of ``samples.safetensors`` for ``num_samples`` samples and ``key_bytes`` bytes of keys."""
    out: Layout = {f.name: (np.dtype(f.dtype), (num_samples, *f.shape)) for f in SAMPLE_FIELDS}
    out["key_bytes"] = (np.dtype("|u1"), (key_bytes,))
    out["key_offsets"] = (np.dtype("<i8"), (num_samples + 1,))
    return out


def key_bytes_of(tensors: dict[str, TensorInfo]) -> int:
    """The ``key_bytes`` length a samples file's header declares (-1 if absent or malformed)."""
    t = tensors.get("key_bytes")
    return t.shape[0] if t is not None and len(t.shape) == 1 else -1


def shard_layout(fields: Sequence[Field], s0: int, s1: int, a0: int, a1: int) -> Layout:
    """The tensors of shard ``[s0, s1) x [a0, a1)``: one per field and the row checksums."""
    out: Layout = {f.name: (np.dtype(f.dtype), (s1 - s0, a1 - a0, *f.shape)) for f in fields}
    out[ROW_CRC_NAME] = (np.dtype("<u4"), (s1 - s0,))
    return out


def check_shard_metadata(path: Path, meta: dict[str, str], s0: int, s1: int, a0: int, a1: int) -> None:
    """Check a shard's ``__metadata__`` (format version and ranges)."""
    check_version(meta.get("format_version"), str(path), "shard")
    got = tuple(meta.get(k) for k in ("s0", "s1", "a0", "a1"))
    if got != tuple(str(x) for x in (s0, s1, a0, a1)):
        raise StoreError(f"{path}: shard metadata covers samples [{got[0]}, {got[1]}) x augs [{got[2]}, {got[3]}), "
                         f"the manifest expects [{s0}, {s1}) x [{a0}, {a1}); the shard was renamed or belongs to "
                         f"another build: {REPAIR}")


def check_build_id(path: Path, meta: dict[str, str], build_id: str | None, fix: str) -> None:
    """Raise :class:`IntegrityError` unless a file's ``__metadata__`` carries ``build_id`` (``None``: no check).

    Args:
        path: the file (named in the message).
        meta: its parsed safetensors ``__metadata__``.
        build_id: the id the file must carry.
        fix: what to do about a mismatch, appended to the message.
    """
    if build_id is None:
        return
    got = meta.get("build_id")
    if got != build_id:
        have = "has no build_id in its metadata" if got is None else f"has build_id {got!r}"
        raise IntegrityError(f"{path} {have}, the build's is {build_id!r}; {fix}")


def check_build_id_arg(build_id: object, where: str) -> str:
    """Return ``build_id`` if it is a non-empty string, else raise :class:`StoreError`."""
    if not (isinstance(build_id, str) and build_id):
        raise StoreError(f"{where}: build_id must be a non-empty string (compute_build_id(manifest, keys_digest)), "
                         f"got {build_id!r}")
    return build_id


# -- row checksums ---------------------------------------------------------------------------------------

_PLACE = struct.Struct("<QII")


def row_place(build_id: str, sample: int, a0: int, a1: int) -> bytes:
    """What a row's checksum covers before its bytes: ``build_id`` (UTF-8), ``sample`` ``<u8``, ``a0``, ``a1`` ``<u4``.

    Example:
        >>> len(row_place("0123456789abcdef", 3, 0, 50))
        32
    """
    return build_id.encode("utf-8") + _PLACE.pack(sample, a0, a1)


def row_seeds(build_id: str, samples, a0: int, a1: int) -> list[int]:
    """``zlib.crc32(row_place(build_id, s, a0, a1))`` of each sample ``s``: the value each row's CRC32 starts from."""
    base = zlib.crc32(build_id.encode("utf-8"))
    pack, crc32 = _PLACE.pack, zlib.crc32
    return [crc32(pack(s, a0, a1), base) for s in samples]


def row_checksums(rows: Sequence[np.ndarray], seeds: Sequence[int]) -> np.ndarray:
    """CRC32 of each sample row over every field, started from its place's seed: ``<u4 [R]``.

    Args:
        rows: one array per field (manifest order), each ``[R, ...]`` in its stored
            (little-endian) dtype; row ``r``'s checksum covers ``rows[0][r]``,
            ``rows[1][r]``, ... as one byte string.
        seeds: ``R`` start values (:func:`row_seeds` of the rows' samples), so that the
            checksum is ``crc32(row_place(...) + row_bytes)``.
    """
    n = rows[0].shape[0] if rows else 0
    if len(seeds) != n:
        raise StoreError(f"row_checksums: {len(seeds)} seeds for {n} rows; give one seed per row (row_seeds)")
    flat = [np.ascontiguousarray(a).reshape(n, -1).view(np.uint8) for a in rows]
    row_bytes = sum(a.shape[1] for a in flat)
    out = np.empty(n, dtype="<u4")
    step = max(1, _CRC_CHUNK_BYTES // max(1, row_bytes))
    crc32 = zlib.crc32
    for r0 in range(0, n, step):
        block = np.concatenate([a[r0:r0 + step] for a in flat], axis=1) if len(flat) > 1 else flat[0][r0:r0 + step]
        out[r0:r0 + block.shape[0]] = [crc32(row, seed) for row, seed in zip(block, seeds[r0:r0 + step])]
    return out


def row_mismatch_message(path: Path, sample: int, a0: int, a1: int, got: int, want: int) -> str:
    """The message for sample ``sample``'s row of shard ``path`` failing its checksum."""
    return (f"{path}: the records of sample {sample} (augmentations [{a0}, {a1})) fail their checksum (CRC32 "
            f"{got:08x}, stored {want:08x}): the row is corrupt, or was moved from another sample, augmentation "
            f"block or store; {REPAIR}; {FULL_CHECK}")


def check_teacher_id(path: Path, meta: dict[str, str], teacher_id: str | None) -> None:
    """Raise :class:`IntegrityError` unless a shard's ``__metadata__`` carries ``teacher_id`` (``None``: no check)."""
    if teacher_id is None:
        return
    got = meta.get("teacher_id")
    if got != teacher_id:
        have = "has no teacher_id in its metadata" if got is None else f"was written with teacher {got!r}"
        raise IntegrityError(f"{path} {have}, the store's teacher is {teacher_id!r} (its checkpoint sha256s or "
                             f"imported archive, see manifest.teacher): the shard was copied in from a store built "
                             f"with another teacher; {REPAIR}")


# -- confined paths --------------------------------------------------------------------------------------

def check_relative_name(name: object, what: str, source: str) -> str:
    """Return ``name`` if it is a plain relative POSIX path inside a folder (no ``..``, not absolute), else raise.

    Raises:
        StoreError: naming ``source`` (the manifest), ``what`` and the name; nothing is opened.
    """
    text = name if isinstance(name, str) else ""
    parts = text.split("/")
    if (not text or "\\" in text or "\0" in text or text.startswith("/") or re.match(r"^[A-Za-z]:", text)
            or any(p in ("", ".", "..") for p in parts)):
        raise StoreError(f"{source}: {what} {name!r} is not a path inside the store folder (absolute, with '..' or "
                         f"empty parts); the manifest is damaged or hostile: nothing outside the store is read, get "
                         f"the store again from its publisher or rebuild it")
    return text


def _inside(path: str, folders: Sequence[str], above: bool = False) -> bool:
    """``path`` inside one of ``folders`` (lexically); with ``above``, also a folder above one of them."""
    def under(a: str, b: str) -> bool:
        return a == b or a.startswith(b.rstrip(os.sep) + os.sep)
    return any(under(path, f) or (above and under(f, path)) for f in folders)


def _walk(start: str, parts: list[str], allowed: list[str], shown: Path, what: str) -> tuple[str, bool]:
    """Resolve ``parts`` from ``start`` like the kernel does, reading each link before touching its target.

    Only paths inside ``allowed`` (or folders above them, on the way down to them) are looked at.
    Returns the resolved path and whether a link was followed.
    """
    cur, todo, hops, link = start, list(parts), 0, ""
    while todo:
        part = todo.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            cur = os.path.dirname(cur)
            continue
        nxt = os.path.join(cur, part)
        if not _inside(nxt, allowed, above=True):
            raise StoreError(f"{shown}: the store's {what} is a symbolic link leading outside the store folder "
                             f"({link or nxt}); nothing outside the store is read: replace the link by the file "
                             "itself, or get the store again from its publisher")
        if not os.path.islink(nxt):
            cur = nxt
            continue
        hops += 1
        if hops > 40:
            raise StoreError(f"{shown}: too many levels of symbolic links; replace the link by the file itself")
        target = os.readlink(nxt)
        link = f"{nxt} -> {target}"
        if os.path.isabs(target):
            cur = os.sep
        todo[:0] = target.split(os.sep)
    if not _inside(cur, allowed):
        raise StoreError(f"{shown}: the store's {what} leads outside the store folder ({link or cur}); nothing outside "
                         "the store is read: replace the link by the file itself, or get the store again from its "
                         "publisher")
    return cur, hops > 0


def confined_path(root: str | os.PathLike, name: str, what: str = "file") -> Path:
    """``root / name`` after checking that it lies inside ``root``, symbolic links followed, before opening it.

    ``name`` must be a relative name (:func:`check_relative_name`). Each symbolic link on the way
    is read (``readlink``) before anything behind it is looked at: a folder may link within the
    store; a file may link within the store or, in a Hugging Face cache snapshot
    (``.../snapshots/<commit>``), into the repo's ``blobs/`` folder. Returns the path to open (the
    resolved one when a link was followed).

    Raises:
        StoreError: the name is absolute or has ``..``, or the path leaves the store (names the
            file, where it leads, and the fix).
    """
    check_relative_name(name, what, str(Path(root) / MANIFEST_NAME))
    base = os.path.realpath(root)
    allowed = [base]
    if os.path.basename(os.path.dirname(base)) == "snapshots":
        allowed.append(os.path.join(os.path.dirname(os.path.dirname(base)), "blobs"))
    shown = Path(root) / name
    parts = name.split("/")
    parent, linked = _walk(base, parts[:-1], [base], shown, what)
    final, linked_final = _walk(parent, parts[-1:], allowed, shown, what)
    return Path(final) if linked or linked_final else shown
