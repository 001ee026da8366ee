"""The manifest (``manifest.json``) and the build id that binds it to its files.

The build id (:func:`compute_build_id`) is the first 16 hex digits of the sha256 of
the canonical JSON of every manifest field a reader relies on
(:data:`BUILD_ID_FIELDS`) and of the digest of the sample keys (:func:`digest_keys`).
Every shard and the samples file carry it in their ``__metadata__``; the reader and
:func:`~imagenet_plus.store.verify` recompute it from the manifest and the samples
file's keys, so a hand-edited setting (``num_classes``, ``topk``, ``seed``, ``policy``,
``teacher``, ...) is an error, never a silently different reading of the same bytes.
The fields outside the build id are listed in :data:`NOT_IN_BUILD_ID`.

The teacher is part of the identity: ``teacher`` holds the builder's description of it (model
names, checkpoint file names and each checkpoint's sha256, the input pipelines), and an
imported store's ``extra["provenance"]`` the archive's sha256. :func:`compute_teacher_id`
digests both; every shard carries it as ``teacher_id``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .._files import atomic_write_text, json_default
from ..errors import StoreError
from ..schema import Field, target_fields
from ._format import (FORMAT_VERSION, MANIFEST_NAME, REPAIR, ROW_CRC_NAME, SAMPLES_NAME, check_relative_name,
                      check_version, plan_shards, shard_filename, st_code)

__all__ = ["FileEntry", "ShardEntry", "Manifest", "BUILD_ID_FIELDS", "NOT_IN_BUILD_ID", "compute_build_id",
           "compute_teacher_id", "teacher_identity", "digest_keys", "encode_keys"]

_NAME_RE = re.compile(r"^[a-z0-9_]+$")

#: Manifest fields the build id covers: every setting a reader relies on.
BUILD_ID_FIELDS = ("format_version", "dataset", "split", "num_samples", "num_augmentations", "topk", "num_classes",
                   "policy", "fields", "teacher", "seed", "samples_per_shard", "augs_per_shard", "extra")
#: Manifest fields outside the build id, and how each is checked instead.
NOT_IN_BUILD_ID = {
    "builder_version": "not checked: informational (the code version that wrote the store)",
    "reports": "not checked: free-form reports (e.g. a teacher report), written after the records",
    "samples_file": "named samples.safetensors; checked by size (at open) and sha256 (at open and by verify)",
    "shards": "checked against the shard plan, by size and header (at open) and sha256 (verify full=True)",
    "build_id": "compared with the recomputed id and every file's metadata",
}


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
        builder_version: version of the code that built the store (outside the build id).
        samples_per_shard: samples per shard (the last shard may hold fewer).
        augs_per_shard: augmentations per shard (the last block may hold fewer).
        samples_file: entry of ``samples.safetensors``.
        shards: every shard, in :func:`plan_shards` order.
        extra: JSON-able build settings a reader may rely on (e.g. ``limit_samples``);
            covered by the build id.
        reports: free-form JSON-able reports (e.g. a teacher report), explicitly outside
            the build id: editing them changes nothing a reader relies on.
        build_id: :func:`compute_build_id` of this manifest and the sample keys; every
            shard's and the samples file's ``__metadata__`` carry the same id. ``None``
            only while a builder assembles the manifest; a written store always has one.
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
    reports: dict = field(default_factory=dict)
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

    def settings(self) -> dict:
        """The fields the build id covers (:data:`BUILD_ID_FIELDS`), as JSON values."""
        d = self.to_json()
        return {k: d[k] for k in BUILD_ID_FIELDS}

    def to_json(self) -> dict:
        return {
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
            "reports": self.reports,
            "build_id": self.build_id,
        }

    @classmethod
    def from_json(cls, d: dict, source: str = "manifest") -> "Manifest":
        """Parse a manifest dict; raises :class:`FormatVersionError` or :class:`StoreError`."""
        if not isinstance(d, dict) or "format_version" not in d:
            raise StoreError(f"{source}: not a reinforcement manifest (no 'format_version'); "
                             "point to the folder written by the builder")
        check_version(d["format_version"], source)
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise StoreError(f"{source}: unknown manifest keys {unknown}; the manifest was edited or written by "
                             f"another release: re-download or rebuild the store")
        try:
            m = cls(
                format_version=int(d["format_version"]), dataset=str(d["dataset"]), split=str(d["split"]),
                num_samples=int(d["num_samples"]), num_augmentations=int(d["num_augmentations"]),
                topk=int(d["topk"]), num_classes=int(d["num_classes"]), policy=dict(d["policy"]),
                fields=[Field.from_json(f) for f in d["fields"]], teacher=dict(d["teacher"]),
                seed=int(d["seed"]), builder_version=str(d["builder_version"]),
                samples_per_shard=int(d["samples_per_shard"]), augs_per_shard=int(d["augs_per_shard"]),
                samples_file=None if d.get("samples_file") is None else FileEntry.from_json(d["samples_file"]),
                shards=[ShardEntry.from_json(s) for s in d["shards"]], extra=dict(d.get("extra") or {}),
                reports=dict(d.get("reports") or {}), build_id=d.get("build_id"),
            )
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise StoreError(f"{source}: malformed manifest ({type(e).__name__}: {e}); "
                             "the file is damaged or was not written by imagenet-plus, rebuild or re-download it"
                             ) from e
        m.validate(source)
        return m

    def validate(self, source: str = "manifest", *, require_files: bool = True) -> None:
        """Check internal consistency (schema, shard plan; with ``require_files`` the files and build id).

        Raises:
            StoreError: naming ``source`` and the inconsistency.
        """
        def bad(msg: str) -> StoreError:
            return StoreError(f"{source}: {msg}")

        for name in ("num_samples", "num_augmentations", "topk", "num_classes", "samples_per_shard", "augs_per_shard"):
            if getattr(self, name) < 1:
                raise bad(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.topk > self.num_classes:
            raise bad(f"topk={self.topk} exceeds num_classes={self.num_classes}")
        _validate_fields(self, bad)
        if self.build_id is not None and not (isinstance(self.build_id, str) and self.build_id):
            raise bad(f"build_id must be a non-empty string, got {self.build_id!r}")
        for s in self.shards:
            check_relative_name(s.file, "shard", source)
        if self.samples_file is not None:
            check_relative_name(self.samples_file.file, "samples_file.file", source)
            if self.samples_file.file != SAMPLES_NAME:
                raise bad(f"samples_file.file is {self.samples_file.file!r}, a store's samples file is "
                          f"{SAMPLES_NAME!r} at its top level; the manifest was edited: get the store again from its "
                          "publisher or rebuild it")
        if not require_files:
            return
        if self.build_id is None:
            raise bad("build_id is missing; the store was not finished by a builder of this release: rebuild it")
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
        atomic_write_text(p, json.dumps(self.to_json(), indent=1, default=json_default, allow_nan=False) + "\n")
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


def _validate_fields(m: Manifest, bad) -> None:
    if len(m.fields) < 2:
        raise bad("fields must list the param fields then the two target fields")
    names = [f.name for f in m.fields]
    if len(set(names)) != len(names):
        raise bad(f"duplicate field names in {names}")
    for f in m.fields:
        if not _NAME_RE.match(f.name) or f.name == ROW_CRC_NAME:
            raise bad(f"field name {f.name!r} must match [a-z0-9_]+ and not be the reserved {ROW_CRC_NAME!r}")
        st_code(f.dtype)
    want = target_fields(m.num_classes, m.topk)
    got = tuple(m.fields[-2:])
    for w, g in zip(want, got):
        if (w.name, np.dtype(w.dtype), tuple(w.shape)) != (g.name, np.dtype(g.dtype), tuple(g.shape)):
            raise bad(f"target field {g.name!r} {g.dtype} {list(g.shape)} does not match the schema's "
                      f"{w.name!r} {w.dtype} {list(w.shape)} for num_classes={m.num_classes}, "
                      f"topk={m.topk}; the manifest was edited or written by another release: {REPAIR}")


def encode_keys(keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Keys as stored: ``(key_bytes uint8[total], key_offsets <i8[N + 1])`` of their UTF-8 bytes."""
    enc = [str(k).encode("utf-8") for k in keys]
    offsets = np.zeros(len(enc) + 1, dtype="<i8")
    np.cumsum([len(b) for b in enc], out=offsets[1:])
    return np.frombuffer(b"".join(enc), dtype=np.uint8).copy(), offsets


def digest_keys(keys: Sequence[str]) -> str:
    """sha256 (hex) of the sample keys in order, as stored: ``key_offsets`` bytes, then ``key_bytes``.

    The reader computes the same digest from the samples file's two tensors without decoding them.

    Example:
        >>> digest_keys(["a.jpg", "b.jpg"]) == digest_keys(["a.jpg", "b.jpg"]) != digest_keys(["b.jpg", "a.jpg"])
        True
    """
    key_bytes, offsets = encode_keys(keys)
    return hash_keys(key_bytes, offsets)


def hash_keys(key_bytes, offsets) -> str:
    """:func:`digest_keys` from the stored tensors (buffers of ``key_bytes`` and ``<i8`` ``key_offsets``)."""
    h = hashlib.sha256(memoryview(offsets).cast("B"))
    h.update(memoryview(key_bytes).cast("B"))
    return h.hexdigest()


def compute_build_id(manifest: Manifest, keys_digest: str) -> str:
    """The build id of a manifest's settings and sample keys: 16 lowercase hex digits.

    The sha256 of the canonical JSON (sorted keys, no whitespace, ASCII; tuples and
    lists alike, numpy scalars as Python numbers) of ``manifest.settings()`` (the
    :data:`BUILD_ID_FIELDS`) and ``keys_digest``. Builders call it before writing the
    first shard; readers and ``verify`` recompute it from the written manifest.

    Args:
        manifest: the store's manifest (its files, reports and build id do not count).
        keys_digest: :func:`digest_keys` of the sample keys in order.

    Raises:
        StoreError: a setting is not JSON-able or is a NaN/infinite float.

    Example:
        >>> build_id = compute_build_id(manifest, digest_keys(keys))
        >>> manifest.build_id = build_id  # then write_shard(..., build_id=build_id)
    """
    if not (isinstance(keys_digest, str) and re.fullmatch(r"[0-9a-f]{64}", keys_digest)):
        raise StoreError(f"compute_build_id: keys_digest must be the 64 hex digits of digest_keys(keys), "
                         f"got {keys_digest!r}")
    identity = {**manifest.settings(), "keys_digest": keys_digest}
    try:
        text = json.dumps(identity, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False,
                          default=json_default)
    except (TypeError, ValueError) as e:
        raise StoreError(f"compute_build_id: the manifest's settings are not JSON-able ({e}); describe the policy, "
                         "teacher and extras with dicts, lists, strings, numbers, bools or None") from e
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:16]


def teacher_identity(manifest: Manifest) -> dict:
    """What identifies a store's teacher: ``manifest.teacher`` and an imported archive's full hash.

    For a build, ``teacher`` holds the model names, checkpoint file names and their sha256
    (``checkpoint_sha256``) and the input pipelines; for an ml-dr import, the archive's
    ``sha256`` (or an extracted folder's ``content_sha256``) in ``extra["provenance"]``.
    """
    prov = manifest.extra.get("provenance") if isinstance(manifest.extra.get("provenance"), dict) else {}
    return {"teacher": manifest.teacher,
            "archive": {k: prov[k] for k in ("sha256", "content_sha256") if k in prov}}  # type: ignore[union-attr]


def compute_teacher_id(manifest: Manifest) -> str:
    """16 hex digits of the sha256 of the canonical JSON of :func:`teacher_identity` (every shard's ``teacher_id``).

    Example:
        >>> write_shard(root, 0, 100, 0, 50, arrays, fields, build_id=m.build_id, teacher_id=compute_teacher_id(m))
    """
    try:
        text = json.dumps(teacher_identity(manifest), sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                          allow_nan=False, default=json_default)
    except (TypeError, ValueError) as e:
        raise StoreError(f"compute_teacher_id: the manifest's teacher is not JSON-able ({e})") from e
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:16]


def teacher_change(old: dict, new: dict) -> str | None:
    """How teacher description ``new`` differs from ``old`` (each a manifest's ``teacher``), ``None`` if equal.

    A changed checkpoint is named with its member, file and both sha256s.
    """
    if old == new:
        return None
    names = new.get("models") or old.get("models") or []
    files = new.get("checkpoints") or old.get("checkpoints") or []
    was, now = old.get("checkpoint_sha256") or [], new.get("checkpoint_sha256") or []
    changed = []
    for k in range(max(len(was), len(now))):
        a = was[k] if k < len(was) else None
        b = now[k] if k < len(now) else None
        if a != b:
            name = names[k] if k < len(names) else f"member {k}"
            file = files[k] if k < len(files) else None
            changed.append(f"checkpoint {file or '(none)'} of {name} had sha256 {a or 'not recorded'}, "
                           f"now {b or 'not recorded (no checkpoint)'}")
    if changed:
        return "; ".join(changed)
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return f"the teacher's {', '.join(keys)} differ ({json.dumps({k: old.get(k) for k in keys}, default=str)} " \
           f"before, {json.dumps({k: new.get(k) for k in keys}, default=str)} now)"
