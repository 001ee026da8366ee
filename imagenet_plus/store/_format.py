"""The on-disk format: constants, manifest, shard plan and safetensors header parsing.

A store folder holds ``manifest.json`` (written last), ``samples.safetensors``
(per-sample identity) and ``reinforcements/shard-*.safetensors``, each shard
covering a contiguous sample range ``[s0, s1)`` and augmentation range
``[a0, a1)`` with one tensor per field of shape ``[s1 - s0, a1 - a0, *field.shape]``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FormatVersionError, IntegrityError, StoreError
from ..schema import Field, target_fields

#: Version of the store layout. Bump on any change a reader of an older release cannot read.
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
SAMPLES_NAME = "samples.safetensors"
SHARD_DIR = "reinforcements"
#: Default cap on one shard's size (bytes).
MAX_SHARD_BYTES = 512 * 1024 * 1024
#: Default augmentation block: a 400-augmentation build serves 50/100/400 by whole blocks.
DEFAULT_AUGS_PER_SHARD = 50

_NAME_RE = re.compile(r"^[a-z0-9_]+$")
_SHARD_RE = re.compile(r"^shard-s(\d{8})-s(\d{8})-a(\d{5})-a(\d{5})\.safetensors$")
_MAX_HEADER_BYTES = 100 * 1024 * 1024
_UMASK = os.umask(0o022)
os.umask(_UMASK)

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


@dataclass(frozen=True)
class FileEntry:
    """One file of the store: path relative to the store root, size and sha256 (hex)."""

    file: str
    bytes: int
    sha256: str

    def to_json(self) -> dict:
        return {"file": self.file, "bytes": int(self.bytes), "sha256": self.sha256}

    @classmethod
    def from_json(cls, d: dict) -> "FileEntry":
        return cls(str(d["file"]), int(d["bytes"]), str(d["sha256"]))


@dataclass(frozen=True)
class ShardEntry:
    """One shard: path relative to the store root, sample range, augmentation range, size, sha256."""

    file: str
    samples: tuple[int, int]
    augs: tuple[int, int]
    bytes: int
    sha256: str

    def to_json(self) -> dict:
        return {"file": self.file, "samples": list(self.samples), "augs": list(self.augs),
                "bytes": int(self.bytes), "sha256": self.sha256}

    @classmethod
    def from_json(cls, d: dict) -> "ShardEntry":
        s, a = d["samples"], d["augs"]
        return cls(str(d["file"]), (int(s[0]), int(s[1])), (int(a[0]), int(a[1])), int(d["bytes"]), str(d["sha256"]))


@dataclass(kw_only=True)
class Manifest:
    """Everything a reader needs to know about a store (``manifest.json``).

    Args:
        format_version: layout version (:data:`FORMAT_VERSION`).
        dataset: dataset name, e.g. ``"imagenet"``.
        split: dataset split, e.g. ``"train"``.
        num_samples: number of samples ``N`` of the base dataset.
        num_augmentations: augmentations stored per sample.
        topk: number of teacher probabilities kept per record.
        num_classes: number of classes of the teacher's output.
        policy: the augmentation policy's complete config (``Policy.config``).
        fields: param fields, then the two target fields (``schema.target_fields``).
        teacher: description of the teacher (names, weights, ensemble, ...).
        seed: the build seed.
        builder_version: version of the code that built the store.
        samples_per_shard: samples per shard (the last shard may hold fewer).
        augs_per_shard: augmentations per shard (the last block may hold fewer).
        samples_file: entry of ``samples.safetensors``.
        shards: every shard, in :func:`plan_shards` order.
        extra: free-form JSON-able extras.
        build_id: identity of the build (:func:`compute_build_id`); every shard's
            ``__metadata__`` carries the same id, so a shard left over from another build
            (other seed, policy, teacher, ...) is rejected. ``None`` (stores written
            before build ids existed): not checked.
    """

    format_version: int = FORMAT_VERSION
    dataset: str
    split: str
    num_samples: int
    num_augmentations: int
    topk: int
    num_classes: int
    policy: dict
    fields: list[Field]
    teacher: dict
    seed: int
    builder_version: str
    samples_per_shard: int
    augs_per_shard: int
    samples_file: FileEntry | None = None
    shards: list[ShardEntry] = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    build_id: str | None = None

    @property
    def param_fields(self) -> tuple[Field, ...]:
        return tuple(self.fields[:-2])

    @property
    def record_bytes(self) -> int:
        """Bytes per stored record (all fields)."""
        return sum(f.nbytes for f in self.fields)

    def files(self, num_augmentations: int | None = None) -> list[str]:
        """Store files (relative paths) a reader of the first ``num_augmentations`` augmentations needs.

        Example (download only the Mini subset of a 400-augmentation build):
            >>> allow_patterns = manifest.files(num_augmentations=50)
        """
        limit = self.num_augmentations if num_augmentations is None else int(num_augmentations)
        if not 1 <= limit <= self.num_augmentations:
            raise StoreError(f"num_augmentations={num_augmentations} outside [1, {self.num_augmentations}]")
        head = [MANIFEST_NAME] + ([self.samples_file.file] if self.samples_file is not None else [])
        return head + [s.file for s in self.shards if s.augs[0] < limit]

    def to_json(self) -> dict:
        d = {
            "format_version": int(self.format_version),
            "dataset": self.dataset,
            "split": self.split,
            "num_samples": int(self.num_samples),
            "num_augmentations": int(self.num_augmentations),
            "topk": int(self.topk),
            "num_classes": int(self.num_classes),
            "policy": self.policy,
            "fields": [f.to_json() for f in self.fields],
            "teacher": self.teacher,
            "seed": int(self.seed),
            "builder_version": self.builder_version,
            "samples_per_shard": int(self.samples_per_shard),
            "augs_per_shard": int(self.augs_per_shard),
            "samples_file": None if self.samples_file is None else self.samples_file.to_json(),
            "shards": [s.to_json() for s in self.shards],
            "extra": self.extra,
        }
        if self.build_id is not None:  # absent = None, so stores without a build id keep their exact bytes
            d["build_id"] = self.build_id
        return d

    @classmethod
    def from_json(cls, d: dict, source: str = "manifest") -> "Manifest":
        """Parse a manifest dict; raises :class:`FormatVersionError` or :class:`StoreError`."""
        if not isinstance(d, dict) or "format_version" not in d:
            raise StoreError(f"{source}: not a reinforcement manifest (no 'format_version'); "
                             "point to the folder written by the builder")
        version = d["format_version"]
        if version != FORMAT_VERSION:
            hint = ("upgrade imagenet-plus" if isinstance(version, int) and version > FORMAT_VERSION
                    else "rebuild the store with this release or use the release that wrote it")
            raise FormatVersionError(f"{source}: store format version {version!r}, this release reads "
                                     f"version {FORMAT_VERSION}; {hint}")
        try:
            m = cls(
                format_version=version, dataset=str(d["dataset"]), split=str(d["split"]),
                num_samples=int(d["num_samples"]), num_augmentations=int(d["num_augmentations"]),
                topk=int(d["topk"]), num_classes=int(d["num_classes"]), policy=dict(d["policy"]),
                fields=[Field.from_json(f) for f in d["fields"]], teacher=dict(d["teacher"]),
                seed=int(d["seed"]), builder_version=str(d["builder_version"]),
                samples_per_shard=int(d["samples_per_shard"]), augs_per_shard=int(d["augs_per_shard"]),
                samples_file=None if d.get("samples_file") is None else FileEntry.from_json(d["samples_file"]),
                shards=[ShardEntry.from_json(s) for s in d["shards"]], extra=dict(d.get("extra") or {}),
                build_id=d.get("build_id"),
            )
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise StoreError(f"{source}: malformed manifest ({type(e).__name__}: {e}); "
                             "the file is damaged or was not written by imagenet-plus, rebuild or re-download it"
                             ) from e
        m.validate(source)
        return m

    def validate(self, source: str = "manifest", *, require_files: bool = True) -> None:
        """Check internal consistency (schema, shard plan); raises :class:`StoreError`."""
        def bad(msg: str) -> StoreError:
            return StoreError(f"{source}: {msg}")

        if self.build_id is not None and not (isinstance(self.build_id, str) and self.build_id):
            raise bad(f"build_id must be a non-empty string or absent, got {self.build_id!r}")
        for name in ("num_samples", "num_augmentations", "topk", "num_classes", "samples_per_shard", "augs_per_shard"):
            if getattr(self, name) < 1:
                raise bad(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.topk > self.num_classes:
            raise bad(f"topk={self.topk} exceeds num_classes={self.num_classes}")
        if len(self.fields) < 2:
            raise bad("fields must list the param fields then the two target fields")
        names = [f.name for f in self.fields]
        if len(set(names)) != len(names):
            raise bad(f"duplicate field names in {names}")
        for f in self.fields:
            if not _NAME_RE.match(f.name):
                raise bad(f"field name {f.name!r} must match [a-z0-9_]+")
            st_code(f.dtype)
        want = target_fields(self.num_classes, self.topk)
        got = tuple(self.fields[-2:])
        for w, g in zip(want, got):
            if (w.name, np.dtype(w.dtype), tuple(w.shape)) != (g.name, np.dtype(g.dtype), tuple(g.shape)):
                raise bad(f"target field {g.name!r} {g.dtype} {list(g.shape)} does not match the schema's "
                          f"{w.name!r} {w.dtype} {list(w.shape)} for num_classes={self.num_classes}, "
                          f"topk={self.topk}; the manifest was edited or written by another release")
        if require_files:
            if self.samples_file is None:
                raise bad("samples_file is missing; the build did not finish, rerun it to completion")
            plan = plan_shards(self.num_samples, self.num_augmentations, self.samples_per_shard, self.augs_per_shard,
                               max_shard_bytes=None)
            got_ranges = [(s.samples[0], s.samples[1], s.augs[0], s.augs[1]) for s in self.shards]
            if got_ranges != plan:
                missing = sorted(set(plan) - set(got_ranges))[:5]
                extra = sorted(set(got_ranges) - set(plan))[:5]
                raise bad(f"shard list does not match the plan for num_samples={self.num_samples}, "
                          f"num_augmentations={self.num_augmentations}, samples_per_shard={self.samples_per_shard}, "
                          f"augs_per_shard={self.augs_per_shard} (missing {missing}, unexpected {extra}, "
                          f"{len(got_ranges)} listed vs {len(plan)} planned); rebuild or re-download the store")
            for s, r in zip(self.shards, plan):
                if s.file != shard_filename(*r):
                    raise bad(f"shard {s.file!r} should be named {shard_filename(*r)!r}")

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically to ``path`` (a store folder or a ``.json`` file); returns the file path."""
        p = Path(path)
        if p.suffix != ".json":
            p = p / MANIFEST_NAME
        text = json.dumps(self.to_json(), indent=1, default=json_default, allow_nan=False) + "\n"
        atomic_write_bytes(p, text.encode("utf-8"))
        return p

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Manifest":
        """Read ``manifest.json`` from a store folder or a ``.json`` path."""
        p = Path(path)
        if p.is_dir():
            p = p / MANIFEST_NAME
        if not p.is_file():
            raise StoreError(f"{p}: manifest not found; point to a store folder with {MANIFEST_NAME} "
                             "(an unfinished build has no manifest: rerun it to completion)")
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise StoreError(f"{p}: manifest is not valid JSON ({e}); re-download or rebuild the store") from e
        return cls.from_json(d, source=str(p))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a temp file in ``path``'s folder, fsync, rename over ``path``."""
    atomic_write_chunks(path, [data])


def atomic_write_chunks(path: Path, chunks) -> tuple[int, str]:
    """Write byte chunks to a temp file in ``path``'s folder, fsync, rename; returns ``(bytes, sha256)``.

    A failure at any point (a full disk included) removes the temp file, so no partial file is left.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    h, size = hashlib.sha256(), 0
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file ordinary permissions
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
                h.update(chunk)
                size += len(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)
    return size, h.hexdigest()


def fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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
    that break the cap raise :class:`StoreError`.
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


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives in a safetensors file."""

    dtype: str  # safetensors code
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    end: int


def read_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str], int]:
    """Parse a safetensors header: ``(tensors, metadata, file_size)``; raises :class:`IntegrityError`."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise IntegrityError(f"{path}: file is {size} bytes, too short for a safetensors header; "
                                     "it is truncated: delete it and re-download or rebuild it")
            n = int.from_bytes(head, "little")
            if n < 2 or n > _MAX_HEADER_BYTES or 8 + n > size:
                raise IntegrityError(f"{path}: header length {n} does not fit a file of {size} bytes; "
                                     "the file is truncated or corrupt: delete it and re-download or rebuild it")
            raw = f.read(n)
    except FileNotFoundError as e:
        raise IntegrityError(f"{path}: file is missing; re-download or rebuild the store") from e
    try:
        header = json.loads(raw.decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
        meta = header.pop("__metadata__", None) or {}
        base = 8 + n
        tensors = {}
        for name, t in header.items():
            b, e = (int(x) for x in t["data_offsets"])
            tensors[name] = TensorInfo(str(t["dtype"]), tuple(int(s) for s in t["shape"]), base + b, base + e)
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise IntegrityError(f"{path}: unreadable safetensors header ({e}); the file is corrupt: "
                             "delete it and re-download or rebuild it") from e
    end = max((t.end for t in tensors.values()), default=8 + n)
    if end > size:
        raise IntegrityError(f"{path}: tensors end at byte {end} but the file has {size} bytes; it is truncated: "
                             "delete it and re-download or rebuild it")
    return tensors, {str(k): str(v) for k, v in meta.items()}, size


def check_tensors(path: Path, tensors: dict[str, TensorInfo], expected: dict[str, tuple[np.dtype, tuple[int, ...]]],
                  size: int) -> None:
    """Check names, dtypes, shapes and byte extents against ``expected``; raises :class:`StoreError`."""
    if set(tensors) != set(expected):
        raise StoreError(f"{path}: tensors {sorted(tensors)} do not match the manifest's fields {sorted(expected)}; "
                         "the shard belongs to another build: delete it and re-download or rebuild it")
    total = 0
    for name, (dt, shape) in expected.items():
        t = tensors[name]
        if t.dtype != st_code(dt) or t.shape != tuple(shape):
            raise StoreError(f"{path}: tensor {name!r} is {t.dtype}{list(t.shape)}, the manifest expects "
                             f"{st_code(dt)}{list(shape)}; the shard belongs to another build: delete it and "
                             "re-download or rebuild it")
        nbytes = math.prod(shape) * np.dtype(dt).itemsize
        if t.end - t.start != nbytes:
            raise IntegrityError(f"{path}: tensor {name!r} spans {t.end - t.start} bytes, expected {nbytes}; "
                                 "the file is corrupt: delete it and re-download or rebuild it")
        total += nbytes
    spans = sorted((t.start, t.end) for t in tensors.values())
    if any(a[1] != b[0] for a, b in zip(spans, spans[1:])):
        raise IntegrityError(f"{path}: tensors overlap or leave gaps; the file is corrupt: delete it and "
                             "re-download or rebuild it")
    data_start = spans[0][0] if spans else size
    if size - data_start != total:
        raise IntegrityError(f"{path}: {size - data_start} data bytes for {total} bytes of tensors; the file is "
                             "truncated or has trailing bytes: delete it and re-download or rebuild it")


def samples_expected(num_samples: int, key_bytes: int) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
    return {"label": (np.dtype("<i4"), (num_samples,)), "content_hash": (np.dtype("|u1"), (num_samples, 8)),
            "key_bytes": (np.dtype("|u1"), (key_bytes,)), "key_offsets": (np.dtype("<i8"), (num_samples + 1,))}


def shard_expected(fields: list[Field] | tuple[Field, ...], s0: int, s1: int, a0: int, a1: int
                   ) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
    return {f.name: (np.dtype(f.dtype), (s1 - s0, a1 - a0, *f.shape)) for f in fields}


def check_shard_metadata(path: Path, meta: dict[str, str], s0: int, s1: int, a0: int, a1: int) -> None:
    """Check a shard's ``__metadata__`` (format version and ranges)."""
    v = meta.get("format_version")
    if v != str(FORMAT_VERSION):
        raise FormatVersionError(f"{path}: shard format version {v!r}, this release reads {FORMAT_VERSION}; "
                                 "rebuild the store with this release or use the release that wrote it")
    got = tuple(meta.get(k) for k in ("s0", "s1", "a0", "a1"))
    if got != tuple(str(x) for x in (s0, s1, a0, a1)):
        raise StoreError(f"{path}: shard metadata covers samples [{got[0]}, {got[1]}) x augs [{got[2]}, {got[3]}), "
                         f"the manifest expects [{s0}, {s1}) x [{a0}, {a1}); the shard was renamed or belongs to "
                         "another build: delete it and re-download or rebuild it")


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


def check_build_id_arg(build_id: str | None, where: str) -> None:
    """Reject a ``build_id`` argument that is neither ``None`` nor a non-empty string."""
    if build_id is not None and not (isinstance(build_id, str) and build_id):
        raise StoreError(f"{where}: build_id must be a non-empty string (compute_build_id(...)) or None, "
                         f"got {build_id!r}")


def compute_build_id(**identity: Any) -> str:
    """A short, stable id of a build: the first 16 hex digits of the sha256 of its canonical JSON.

    The JSON has sorted keys, no whitespace and ASCII only; tuples and lists hash alike,
    numpy scalars as Python numbers. The builder calls it with everything that makes two
    builds' records differ: ``dataset``, ``split``, ``num_samples``, ``num_classes``,
    ``topk``, ``num_augmentations``, ``policy`` (``Policy.config``), ``teacher`` (its
    description), ``seed``, ``format_version`` and a digest of the sample keys, then
    passes the id to :func:`write_shard`, :func:`write_samples` and :class:`Manifest`.

    Args:
        **identity: JSON-able values (dicts, lists, str, int, float, bool, None).

    Returns:
        16 lowercase hex characters.

    Raises:
        StoreError: a value is not JSON-able or is a NaN/infinite float.

    Example:
        >>> compute_build_id(seed=0, dataset="imagenet") == compute_build_id(dataset="imagenet", seed=0)
        True
    """
    try:
        text = json.dumps(identity, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False,
                          default=json_default)
    except (TypeError, ValueError) as e:
        raise StoreError(f"compute_build_id: the identity is not JSON-able ({e}); pass dicts, lists, strings, "
                         "numbers, bools or None (describe objects by their config)") from e
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:16]


def json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")
