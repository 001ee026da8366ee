"""Writing a store: shards, the samples file and the manifest, each through ``_files.atomic_write``."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .._files import WrittenFile, atomic_write
from ..errors import IntegrityError, StoreError
from ..schema import SAMPLE_FIELDS, Field, encode_topk_ids, encode_topk_probs, target_fields
from ._format import (FORMAT_VERSION, MAX_SHARD_BYTES, ROW_CRC_NAME, SAMPLES_NAME, SHARD_DIR, check_build_id,
                      check_build_id_arg, check_shard_metadata, check_teacher_id, check_tensors, check_version,
                      confined_path, key_bytes_of, parse_shard_filename, plan_shards, read_header,
                      resolve_shard_shape, row_checksums, row_seeds, samples_layout, serialize_header,
                      shard_filename, shard_layout)
from ._manifest import (FileEntry, Manifest, ShardEntry, compute_build_id, compute_teacher_id, digest_keys,
                        encode_keys, hash_keys)
from ._scan import map_file, scan_shard

__all__ = ["write_shard", "read_shard_entry", "write_samples", "write_manifest", "write_store", "sha256_file"]


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def _write_safetensors(path: Path, arrays: dict[str, np.ndarray], metadata: dict[str, str]) -> WrittenFile:
    """Write a safetensors file atomically, hashing it on the way."""
    arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    head, names = serialize_header(arrays, metadata)
    return atomic_write(path, [head, *(memoryview(arrays[k].reshape(-1).view(np.uint8)) for k in names)])


def _checked_arrays(name: str, arrays: Mapping[str, np.ndarray], fields: Sequence[Field],
                    layout: dict) -> dict[str, np.ndarray]:
    """The arrays in field order and stored (little-endian) dtypes, after shape, dtype and range checks."""
    if set(arrays) != {f.name for f in fields}:
        raise StoreError(f"write_shard {name}: arrays {sorted(arrays)} must be exactly the fields "
                         f"{sorted(f.name for f in fields)}")
    out = {}
    for f in fields:
        a = np.asarray(arrays[f.name])
        dt, shape = layout[f.name]
        if a.shape != shape:
            raise StoreError(f"write_shard {name}: array {f.name!r} has shape {list(a.shape)}, expected {list(shape)} "
                             f"([s1 - s0, a1 - a0, *field.shape])")
        if a.dtype != dt:
            raise StoreError(f"write_shard {name}: array {f.name!r} has dtype {a.dtype.str}, the field declares "
                             f"{f.dtype}; cast it with .astype({f.dtype!r}) after checking the range")
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise StoreError(f"write_shard {name}: field {f.name!r} holds NaN or infinite values; fix the policy's "
                             "sampling")
        if a.size and (f.low is not None or f.high is not None):
            lo, hi = a.min(), a.max()
            if (f.low is not None and lo < f.low) or (f.high is not None and hi > f.high):
                raise StoreError(f"write_shard {name}: field {f.name!r} has values in [{lo}, {hi}], outside its "
                                 f"declared range [{f.low}, {f.high}]; fix the policy's sampling or the field")
        out[f.name] = np.ascontiguousarray(a, dtype=dt.newbyteorder("<") if dt.itemsize > 1 else dt)
    return out


def write_shard(root: str | os.PathLike, s0: int, s1: int, a0: int, a1: int, arrays: Mapping[str, np.ndarray],
                fields: Sequence[Field], *, build_id: str, teacher_id: str,
                max_shard_bytes: int = MAX_SHARD_BYTES) -> ShardEntry:
    """Write shard ``[s0, s1) x [a0, a1)`` with its row checksums (bound to their place), atomically.

    The size and sha256 in the returned entry are computed while writing; nothing is
    read back.

    Args:
        root: the store folder.
        s0, s1: sample range.
        a0, a1: augmentation range.
        arrays: one array per field, shape ``[s1 - s0, a1 - a0, *field.shape]``, the field's dtype.
        fields: all fields (param fields then the two target fields), in manifest order.
        build_id: the build's id (:func:`compute_build_id`), stored in the shard's ``__metadata__``
            and covered by every row's checksum (with the sample index and ``a0``, ``a1``).
        teacher_id: :func:`compute_teacher_id` of the build's manifest, stored in the ``__metadata__``.
        max_shard_bytes: the size cap.

    Returns:
        The shard's manifest entry.

    Raises:
        StoreError: a missing or unexpected array, a wrong shape or dtype, a param value
            outside its field's ``[low, high]``, or a shard over the size cap.
        OSError: writing failed (a full disk); no file (temporary or final) is left.

    Example:
        >>> entry = write_shard("out", 0, 100, 0, 50, {"crop": crop, "topk_ids": ids, "topk_probs": codes}, fields,
        ...                     build_id=build_id, teacher_id=compute_teacher_id(manifest))
    """
    check_build_id_arg(build_id, "write_shard")
    check_build_id_arg(teacher_id, "write_shard (teacher_id: compute_teacher_id(manifest))")
    if not (0 <= s0 < s1 and 0 <= a0 < a1):
        raise StoreError(f"write_shard: empty or negative range samples [{s0}, {s1}) x augs [{a0}, {a1})")
    name = shard_filename(s0, s1, a0, a1)
    if any(f.name == ROW_CRC_NAME for f in fields):
        raise StoreError(f"write_shard {name}: {ROW_CRC_NAME!r} is reserved for the row checksums; rename the field")
    out = _checked_arrays(name, arrays, fields, shard_layout(fields, s0, s1, a0, a1))
    nbytes = sum(v.nbytes for v in out.values())
    if nbytes > max_shard_bytes:
        raise StoreError(f"write_shard {name}: {nbytes} bytes of tensors exceed the shard size cap of "
                         f"{max_shard_bytes} bytes; plan smaller shards (plan_shards with record_bytes)")
    out[ROW_CRC_NAME] = row_checksums([out[f.name] for f in fields], row_seeds(build_id, range(s0, s1), a0, a1))
    meta = {"format_version": str(FORMAT_VERSION), "s0": str(s0), "s1": str(s1), "a0": str(a0), "a1": str(a1),
            "build_id": build_id, "teacher_id": teacher_id}
    written = _write_safetensors(Path(root) / name, out, meta)
    return ShardEntry(name, (s0, s1), (a0, a1), written.bytes, written.sha256)


def read_shard_entry(root: str | os.PathLike, filename: str, fields: Sequence[Field], *,
                     build_id: str | None = None, teacher_id: str | None = None) -> ShardEntry:
    """Check a finished shard and return its entry (for a resumed build).

    Checks the header, metadata, names, shapes, dtypes and size, and every row against
    its checksum; the sha256 is computed from the file. The ranges come from the file
    name (``shard_filename``); a bare name is looked up under ``reinforcements/``.

    Args:
        root: the store folder.
        filename: the shard's path relative to ``root``, or its bare name.
        fields: all fields (param fields then the two target fields).
        build_id: if given, the shard's metadata must carry this ``build_id`` (a resumed
            build keeps only its own shards, never a same-size one left by another build);
            the rows are checked against it (without it, against the shard's own).
        teacher_id: if given, the shard's metadata must carry this ``teacher_id``.

    Raises:
        StoreError: the name is not a shard name, or the header disagrees with it or with ``fields``.
        IntegrityError: the file is missing, truncated or corrupt (a row fails its
            checksum), or (``build_id`` given) belongs to another build.
    """
    if build_id is not None:
        check_build_id_arg(build_id, "read_shard_entry")
    rel = filename if "/" in filename else f"{SHARD_DIR}/{filename}"
    ranges = parse_shard_filename(rel)
    if ranges is None:
        raise StoreError(f"{filename}: not a shard file name (expected shard-sXXXXXXXX-sXXXXXXXX-aXXXXX-aXXXXX"
                         ".safetensors)")
    path = confined_path(root, rel, "shard")
    tensors, meta, size = read_header(path)
    check_shard_metadata(path, meta, *ranges)
    check_build_id(path, meta, build_id, "this shard belongs to another build; delete it or use a fresh --out")
    check_teacher_id(path, meta, teacher_id)
    check_tensors(path, tensors, shard_layout(fields, *ranges), size)
    s0, s1, a0, a1 = ranges
    scan = scan_shard(path, tensors, fields, s1 - s0, place=(build_id or meta.get("build_id") or "", s0, a0, a1))
    if scan.bad_rows:
        samples = [s0 + r for r in scan.bad_rows]
        raise IntegrityError(f"{path}: {len(samples)} sample row(s) fail their checksum (samples "
                             f"{samples[:10]}{' ...' if len(samples) > 10 else ''}); the shard is corrupt: delete it "
                             "and rerun the build to rewrite it")
    return ShardEntry(shard_filename(*ranges), (s0, s1), (a0, a1), size, scan.sha256)


def _identity_arrays(labels, keys: Sequence[str], hashes, sizes, fingerprints) -> dict[str, np.ndarray]:
    """The samples file's tensors, after checks (every message names write_samples and the argument)."""
    labels = np.asarray(labels)
    n = len(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise StoreError(f"write_samples: labels must be a 1-D integer array, got {labels.dtype} {list(labels.shape)}")
    if labels.size and (labels.min() < 0 or labels.max() > np.iinfo(np.int32).max):
        raise StoreError(f"write_samples: labels must lie in [0, 2**31), got [{labels.min()}, {labels.max()}]")
    if len(keys) != n:
        raise StoreError(f"write_samples: {len(keys)} keys for {n} labels; give one key per sample")
    if len(set(keys)) != n:
        seen: set[str] = set()
        dup = next(k for k in keys if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise StoreError(f"write_samples: key {dup!r} occurs more than once; keys must identify samples uniquely")
    out = {"label": labels.astype("<i4")}
    given = {"content_hash": hashes, "image_size": sizes, "fingerprint": fingerprints}
    for f in SAMPLE_FIELDS[1:]:
        a = np.asarray(given[f.name])
        arg = {"content_hash": "hashes", "image_size": "sizes", "fingerprint": "fingerprints"}[f.name]
        if a.shape != (n, *f.shape) or not np.issubdtype(a.dtype, np.integer):
            raise StoreError(f"write_samples: {arg} must be an integer array [{n}, {', '.join(map(str, f.shape))}] "
                             f"({f.doc}), got {a.dtype} {list(a.shape)}")
        if a.size and (a.min() < f.low or a.max() > f.high):
            raise StoreError(f"write_samples: {arg} holds values in [{a.min()}, {a.max()}], outside "
                             f"[{f.low}, {f.high}] ({f.doc})")
        out[f.name] = a.astype(f.dtype)
    out["key_bytes"], out["key_offsets"] = encode_keys(keys)
    return out


def write_samples(root: str | os.PathLike, labels, keys: Sequence[str], hashes, sizes, fingerprints, *,
                  build_id: str) -> FileEntry:
    """Write ``samples.safetensors`` (the per-sample identity) atomically.

    Args:
        root: the store folder.
        labels: int ``[N]`` labels of the base dataset.
        keys: ``N`` unique sample keys (relative paths or ``"{split}/{index}"``).
        hashes: uint8 ``[N, 8]`` content digests (computed by the caller).
        sizes: int ``[N, 2]``: ``H, W`` of each decoded image (>= 1).
        fingerprints: uint8 ``[N, 64]``: :func:`imagenet_plus.identity.fingerprint` of each image.
        build_id: the build's id (:func:`compute_build_id`), stored in the file's ``__metadata__``.

    Returns:
        The file's manifest entry (size and sha256 computed while writing).

    Example:
        >>> entry = write_samples("out", labels, keys, hashes, sizes, fingerprints, build_id=build_id)
    """
    check_build_id_arg(build_id, "write_samples")
    arrays = _identity_arrays(labels, keys, hashes, sizes, fingerprints)
    meta = {"format_version": str(FORMAT_VERSION), "num_samples": str(len(arrays["label"])), "build_id": build_id}
    written = _write_safetensors(Path(root) / SAMPLES_NAME, arrays, meta)
    return FileEntry(SAMPLES_NAME, written.bytes, written.sha256)


def _samples_keys_digest(path: Path, manifest: Manifest) -> str:
    """Check the samples file's header against the manifest; return the digest of its keys."""
    tensors, meta, size = read_header(path)
    check_version(meta.get("format_version"), str(path), "samples file")
    check_build_id(path, meta, manifest.build_id, "this samples file belongs to another build; rerun the build "
                   "to rewrite it")
    check_tensors(path, tensors, samples_layout(manifest.num_samples, key_bytes_of(tensors)), size)
    buf = map_file(path)
    kb, ko = tensors["key_bytes"], tensors["key_offsets"]
    return hash_keys(memoryview(buf)[kb.start:kb.end], memoryview(buf)[ko.start:ko.end])


def write_manifest(root: str | os.PathLike, manifest: Manifest) -> Path:
    """Check the manifest against the files on disk, then write ``manifest.json`` atomically (last).

    Checks: the manifest's consistency; every listed file present with its size; the
    samples file's and every shard's header and build id; and that ``manifest.build_id``
    equals :func:`compute_build_id` of the manifest and the samples file's keys.

    Raises:
        StoreError: the manifest is inconsistent, or a listed file is missing, has another
            size or belongs to another build.
    """
    root = Path(root)
    manifest.validate(str(root / "manifest.json"))
    entries: list = [manifest.samples_file, *manifest.shards]
    teacher_id = compute_teacher_id(manifest)
    for e in entries:
        p = confined_path(root, e.file)
        if not p.is_file():
            raise StoreError(f"write_manifest: {p} is listed but missing; finish writing every shard first")
        if p.stat().st_size != e.bytes:
            raise StoreError(f"write_manifest: {p} has {p.stat().st_size} bytes, its entry says {e.bytes}; rewrite "
                             "the file or recompute its entry with read_shard_entry")
    for e in manifest.shards:
        p = confined_path(root, e.file, "shard")
        tensors, meta, size = read_header(p)
        check_shard_metadata(p, meta, *e.samples, *e.augs)
        check_teacher_id(p, meta, teacher_id)
        check_build_id(p, meta, manifest.build_id, "this shard belongs to another build; rerun the build to "
                       "rewrite it")
        check_tensors(p, tensors, shard_layout(manifest.fields, *e.samples, *e.augs), size)
    digest = _samples_keys_digest(confined_path(root, manifest.samples_file.file), manifest)  # type: ignore
    want = compute_build_id(manifest, digest)
    if manifest.build_id != want:
        raise StoreError(f"write_manifest: the manifest's build_id {manifest.build_id!r} is not "
                         f"compute_build_id(manifest, keys_digest) = {want!r}; a setting changed after the shards "
                         "were written, or the keys differ: compute the id from the final manifest (settings and "
                         "keys) before writing the first shard, or rebuild the store")
    return manifest.save(root)


def write_store(root: str | os.PathLike, *, dataset: str, split: str, num_classes: int, policy: dict,
                teacher: dict, seed: int, builder_version: str, params: Mapping[str, np.ndarray], topk_ids,
                topk_probs, labels, keys: Sequence[str], hashes, sizes, fingerprints,
                param_fields: Sequence[Field] | None = None, fields: Sequence[Field] | None = None,
                topk: int | None = None, num_samples: int | None = None, num_augmentations: int | None = None,
                samples_per_shard: int | None = None, augs_per_shard: int | None = None,
                max_shard_bytes: int = MAX_SHARD_BYTES, extra: dict | None = None,
                reports: dict | None = None) -> Manifest:
    """Write a complete store from in-memory arrays (tests, small builds); computes its build id.

    Args:
        root: output folder (created).
        dataset, split: names recorded in the manifest.
        num_classes: number of classes.
        policy: the policy's complete config.
        teacher, seed, builder_version: recorded in the manifest.
        params: one array ``[N, A, *field.shape]`` per param field.
        topk_ids: int ``[N, A, K]`` teacher top-k class ids.
        topk_probs: float ``[N, A, K]`` descending teacher probabilities.
        labels, keys, hashes, sizes, fingerprints: per-sample identity (see :func:`write_samples`).
        param_fields: the policy's fields (``Policy.fields``).
        fields: alternatively the manifest's field list (param fields, then the two target fields).
        topk, num_samples, num_augmentations: optional, checked against the arrays.
        samples_per_shard, augs_per_shard: shard shape (``None``: fit the size cap).
        max_shard_bytes: shard size cap.
        extra: settings recorded in the manifest (covered by the build id).
        reports: free-form reports recorded in the manifest (outside the build id).

    Returns:
        The written manifest.
    """
    topk_ids, topk_probs = np.asarray(topk_ids), np.asarray(topk_probs)
    if topk_ids.ndim != 3 or topk_ids.shape != topk_probs.shape:
        raise StoreError(f"write_store: topk_ids {list(topk_ids.shape)} and topk_probs {list(topk_probs.shape)} "
                         "must both be [N, A, K]")
    n, a, k = topk_ids.shape
    for name, want, got in (("topk", topk, k), ("num_samples", num_samples, n),
                            ("num_augmentations", num_augmentations, a)):
        if want is not None and want != got:
            raise StoreError(f"write_store: {name}={want} but topk_ids has shape {list(topk_ids.shape)} ([N, A, K])")
    param_fields = _resolve_param_fields(param_fields, fields, num_classes, k)
    if topk_probs.size and (topk_probs.min() < 0 or topk_probs.max() > 1
                            or topk_probs.sum(-1).max() > 1 + 1e-3 or (np.diff(topk_probs, axis=-1) > 1e-6).any()):
        raise StoreError("write_store: topk_probs must be descending probabilities in [0, 1] summing to <= 1")
    all_fields = [*param_fields, *target_fields(num_classes, k)]
    record_bytes = sum(f.nbytes for f in all_fields)
    sps, aps = resolve_shard_shape(n, a, record_bytes, samples_per_shard, augs_per_shard, max_shard_bytes)
    for f in param_fields:
        if f.name not in params or np.shape(params[f.name])[:2] != (n, a):
            raise StoreError(f"write_store: params[{f.name!r}] must have shape [{n}, {a}, *{list(f.shape)}]")
    m = Manifest(dataset=dataset, split=split, num_samples=n, num_augmentations=a, topk=k, num_classes=num_classes,
                 policy=dict(policy), fields=all_fields, teacher=dict(teacher), seed=int(seed),
                 builder_version=builder_version, samples_per_shard=sps, augs_per_shard=aps,
                 extra=dict(extra or {}), reports=dict(reports or {}))
    m.validate("write_store", require_files=False)
    m.build_id = compute_build_id(m, digest_keys(keys))
    teacher_id = compute_teacher_id(m)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for s0, s1, a0, a1 in plan_shards(n, a, sps, aps, record_bytes=record_bytes, max_shard_bytes=max_shard_bytes):
        arrays = {f.name: np.asarray(params[f.name])[s0:s1, a0:a1] for f in param_fields}
        arrays["topk_ids"] = encode_topk_ids(topk_ids[s0:s1, a0:a1], num_classes)
        arrays["topk_probs"] = encode_topk_probs(topk_probs[s0:s1, a0:a1])
        m.shards.append(write_shard(root, s0, s1, a0, a1, arrays, all_fields, max_shard_bytes=max_shard_bytes,
                                    build_id=m.build_id, teacher_id=teacher_id))
    m.samples_file = write_samples(root, labels, keys, hashes, sizes, fingerprints, build_id=m.build_id)
    write_manifest(root, m)
    return m


def _resolve_param_fields(param_fields, fields, num_classes: int, k: int) -> list[Field]:
    if (param_fields is None) == (fields is None):
        raise StoreError("write_store: give exactly one of param_fields (the policy's fields) or fields")
    if param_fields is not None:
        return list(param_fields)
    fields = list(fields)
    names = [f.name for f in fields]
    if names[-2:] != ["topk_ids", "topk_probs"]:
        return fields
    want = [(f.name, np.dtype(f.dtype), f.shape) for f in target_fields(num_classes, k)]
    if [(f.name, np.dtype(f.dtype), f.shape) for f in fields[-2:]] != want:
        raise StoreError(f"write_store: the target fields in fields do not match "
                         f"schema.target_fields(num_classes={num_classes}, topk={k})")
    return fields[:-2]
