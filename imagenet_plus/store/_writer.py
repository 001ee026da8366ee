"""Writing a store: shards, the samples file and the manifest (each atomically)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..errors import StoreError
from ..schema import Field, encode_topk_ids, encode_topk_probs, target_fields
from ._format import (FORMAT_VERSION, MANIFEST_NAME, MAX_SHARD_BYTES, SAMPLES_NAME, SHARD_DIR, FileEntry,
                      Manifest, ShardEntry, check_build_id, check_build_id_arg, check_shard_metadata, check_tensors,
                      parse_shard_filename, plan_shards, read_header, samples_expected, shard_expected,
                      shard_filename, st_code, atomic_write_chunks)

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


def _serialize_header(arrays: dict[str, np.ndarray], metadata: dict[str, str]) -> tuple[bytes, list[str]]:
    """A deterministic safetensors header (the library orders ``__metadata__`` at random).

    Tensors are laid out by item size (largest first), then name, so every tensor is
    aligned to its item size after the 8-byte-padded header.
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


def _write_atomic_safetensors(path: Path, arrays: dict[str, np.ndarray], metadata: dict[str, str]) -> tuple[int, str]:
    """Write a safetensors file (temp name, fsync, rename), hashing it on the way; returns (bytes, sha256)."""
    arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    head, names = _serialize_header(arrays, metadata)
    return atomic_write_chunks(path, [head, *(memoryview(arrays[k].reshape(-1).view(np.uint8)) for k in names)])


def write_shard(root: str | os.PathLike, s0: int, s1: int, a0: int, a1: int, arrays: Mapping[str, np.ndarray],
                fields: Sequence[Field], *, max_shard_bytes: int = MAX_SHARD_BYTES,
                build_id: str | None = None) -> ShardEntry:
    """Write shard ``[s0, s1) x [a0, a1)`` (temp name, fsync, sha256, rename).

    Args:
        root: the store folder.
        s0, s1: sample range.
        a0, a1: augmentation range.
        arrays: one array per field, shape ``[s1 - s0, a1 - a0, *field.shape]``, the field's dtype.
        fields: all fields (param fields then the two target fields).
        max_shard_bytes: the size cap.
        build_id: the build's id (:func:`compute_build_id`), stored in the shard's
            ``__metadata__`` as ``build_id``; ``None``: none stored.

    Returns:
        The shard's manifest entry.

    Raises:
        StoreError: a missing or unexpected array, a wrong shape or dtype, a param value
            outside its field's ``[low, high]``, or a shard over the size cap.

    Example:
        >>> entry = write_shard("out", 0, 100, 0, 50, {"crop": crop, "topk_ids": ids, "topk_probs": codes}, fields)
    """
    check_build_id_arg(build_id, "write_shard")
    if not (0 <= s0 < s1 and 0 <= a0 < a1):
        raise StoreError(f"write_shard: empty or negative range samples [{s0}, {s1}) x augs [{a0}, {a1})")
    name = shard_filename(s0, s1, a0, a1)
    expected = shard_expected(fields, s0, s1, a0, a1)
    if set(arrays) != set(expected):
        raise StoreError(f"write_shard {name}: arrays {sorted(arrays)} must be exactly the fields {sorted(expected)}")
    out = {}
    for f in fields:
        a = np.asarray(arrays[f.name])
        dt, shape = expected[f.name]
        if a.shape != shape:
            raise StoreError(f"write_shard {name}: array {f.name!r} has shape {list(a.shape)}, expected {list(shape)} "
                             f"([s1 - s0, a1 - a0, *field.shape])")
        if a.dtype != dt or st_code(a.dtype) != st_code(dt):
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
        out[f.name] = a.astype(dt.newbyteorder("<") if dt.itemsize > 1 else dt, copy=False)
    nbytes = sum(v.nbytes for v in out.values())
    if nbytes > max_shard_bytes:
        raise StoreError(f"write_shard {name}: {nbytes} bytes of tensors exceed the shard size cap of "
                         f"{max_shard_bytes} bytes; plan smaller shards (plan_shards with record_bytes)")
    meta = {"format_version": str(FORMAT_VERSION), "s0": str(s0), "s1": str(s1), "a0": str(a0), "a1": str(a1)}
    if build_id is not None:
        meta["build_id"] = build_id
    size, digest = _write_atomic_safetensors(Path(root) / name, out, meta)
    return ShardEntry(name, (s0, s1), (a0, a1), size, digest)


def read_shard_entry(root: str | os.PathLike, filename: str, fields: Sequence[Field], *,
                     build_id: str | None = None) -> ShardEntry:
    """Check a finished shard (header, metadata, names, shapes, dtypes, size) and return its entry.

    The ranges come from the file name (``shard_filename``); a bare name is looked up
    under ``reinforcements/``. The sha256 is computed from the file.

    Args:
        root: the store folder.
        filename: the shard's path relative to ``root``, or its bare name.
        fields: all fields (param fields then the two target fields).
        build_id: if given, the shard's metadata must carry this ``build_id`` (a resumed
            build keeps only its own shards, never a same-size one left by another build).

    Raises:
        StoreError: the name is not a shard name, or the header disagrees with it or with ``fields``.
        IntegrityError: the file is missing, truncated or corrupt, or (``build_id`` given)
            belongs to another build.
    """
    check_build_id_arg(build_id, "read_shard_entry")
    rel = filename if "/" in filename else f"{SHARD_DIR}/{filename}"
    ranges = parse_shard_filename(rel)
    if ranges is None:
        raise StoreError(f"{filename}: not a shard file name (expected shard-sXXXXXXXX-sXXXXXXXX-aXXXXX-aXXXXX"
                         ".safetensors)")
    path = Path(root) / rel
    tensors, meta, size = read_header(path)
    check_shard_metadata(path, meta, *ranges)
    check_build_id(path, meta, build_id, "this shard belongs to another build; delete it or use a fresh --out")
    check_tensors(path, tensors, shard_expected(fields, *ranges), size)
    s0, s1, a0, a1 = ranges
    return ShardEntry(shard_filename(*ranges), (s0, s1), (a0, a1), size, sha256_file(path))


def _encode_keys(keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    enc = [str(k).encode("utf-8") for k in keys]
    offsets = np.zeros(len(enc) + 1, dtype="<i8")
    np.cumsum([len(b) for b in enc], out=offsets[1:])
    return np.frombuffer(b"".join(enc), dtype=np.uint8).copy(), offsets


def write_samples(root: str | os.PathLike, labels, keys: Sequence[str], hashes, *,
                  build_id: str | None = None) -> FileEntry:
    """Write ``samples.safetensors`` (label, content_hash, keys) atomically.

    Args:
        root: the store folder.
        labels: int ``[N]`` labels of the base dataset.
        keys: ``N`` sample keys (relative paths or ``"{split}/{index}"``).
        hashes: uint8 ``[N, 8]`` content hashes (``schema.content_hash``).
        build_id: the build's id (:func:`compute_build_id`), stored in the file's
            ``__metadata__`` as ``build_id``; ``None``: none stored.

    Returns:
        The file's manifest entry.
    """
    check_build_id_arg(build_id, "write_samples")
    labels = np.asarray(labels)
    hashes = np.asarray(hashes)
    n = len(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise StoreError(f"write_samples: labels must be a 1-D integer array, got {labels.dtype} {list(labels.shape)}")
    if labels.size and (labels.min() < np.iinfo(np.int32).min or labels.max() > np.iinfo(np.int32).max):
        raise StoreError("write_samples: labels do not fit int32")
    if len(keys) != n:
        raise StoreError(f"write_samples: {len(keys)} keys for {n} labels; give one key per sample")
    if hashes.shape != (n, 8) or hashes.dtype != np.uint8:
        raise StoreError(f"write_samples: hashes must be uint8 [{n}, 8], got {hashes.dtype} {list(hashes.shape)}")
    key_bytes, offsets = _encode_keys(keys)
    arrays = {"label": labels.astype("<i4"), "content_hash": hashes, "key_bytes": key_bytes, "key_offsets": offsets}
    meta = {"format_version": str(FORMAT_VERSION), "num_samples": str(n)}
    if build_id is not None:
        meta["build_id"] = build_id
    size, digest = _write_atomic_safetensors(Path(root) / SAMPLES_NAME, arrays, meta)
    return FileEntry(SAMPLES_NAME, size, digest)


def write_manifest(root: str | os.PathLike, manifest: Manifest) -> Path:
    """Check the manifest against the files on disk, then write ``manifest.json`` atomically (last).

    Raises:
        StoreError: the manifest is inconsistent, or a listed file is missing or has another size.
    """
    root = Path(root)
    manifest.validate(str(root / MANIFEST_NAME))
    entries: list[FileEntry | ShardEntry] = [manifest.samples_file, *manifest.shards]  # type: ignore[list-item]
    for e in entries:
        p = root / e.file
        if not p.is_file():
            raise StoreError(f"write_manifest: {p} is listed but missing; finish writing every shard first")
        if p.stat().st_size != e.bytes:
            raise StoreError(f"write_manifest: {p} has {p.stat().st_size} bytes, its entry says {e.bytes}; "
                             "rewrite the file or recompute its entry with read_shard_entry")
    sp = root / manifest.samples_file.file  # type: ignore[union-attr]
    tensors, meta, size = read_header(sp)
    if "build_id" in meta:  # written without a build id (older builders): nothing to compare
        check_build_id(sp, meta, manifest.build_id, "this samples file belongs to another build; rerun the build "
                       "to rewrite it")
    kb = tensors["key_bytes"].shape[0] if "key_bytes" in tensors and len(tensors["key_bytes"].shape) == 1 else -1
    check_tensors(sp, tensors, samples_expected(manifest.num_samples, kb), size)
    return manifest.save(root)


def write_store(root: str | os.PathLike, *, dataset: str, split: str, num_classes: int, policy: dict,
                teacher: dict, seed: int, builder_version: str, params: Mapping[str, np.ndarray], topk_ids,
                topk_probs, labels, keys: Sequence[str], hashes, param_fields: Sequence[Field] | None = None,
                fields: Sequence[Field] | None = None, topk: int | None = None, num_samples: int | None = None,
                num_augmentations: int | None = None, samples_per_shard: int | None = None,
                augs_per_shard: int | None = None, max_shard_bytes: int = MAX_SHARD_BYTES,
                extra: dict | None = None, build_id: str | None = None) -> Manifest:
    """Write a complete store from in-memory arrays (tests, small builds).

    Args:
        root: output folder (created).
        dataset, split: names recorded in the manifest.
        num_classes: number of classes.
        policy: the policy's complete config.
        teacher, seed, builder_version: recorded in the manifest.
        params: one array ``[N, A, *field.shape]`` per param field.
        topk_ids: int ``[N, A, K]`` teacher top-k class ids.
        topk_probs: float ``[N, A, K]`` descending teacher probabilities.
        labels, keys, hashes: per-sample identity (see :func:`write_samples`).
        param_fields: the policy's fields (``Policy.fields``).
        fields: alternatively the manifest's field list (param fields, then the two target fields).
        topk, num_samples, num_augmentations: optional, checked against the arrays.
        samples_per_shard, augs_per_shard: shard shape (``None``: fit the size cap).
        max_shard_bytes: shard size cap.
        extra: free-form manifest extras.
        build_id: the build's id (:func:`compute_build_id`), written into every file and
            the manifest; ``None``: none.

    Returns:
        The written manifest.
    """
    from ._format import resolve_shard_shape

    check_build_id_arg(build_id, "write_store")
    topk_ids = np.asarray(topk_ids)
    topk_probs = np.asarray(topk_probs)
    if topk_ids.ndim != 3 or topk_ids.shape != topk_probs.shape:
        raise StoreError(f"write_store: topk_ids {list(topk_ids.shape)} and topk_probs {list(topk_probs.shape)} "
                         "must both be [N, A, K]")
    n, a, k = topk_ids.shape
    for name, want, got in (("topk", topk, k), ("num_samples", num_samples, n),
                            ("num_augmentations", num_augmentations, a)):
        if want is not None and want != got:
            raise StoreError(f"write_store: {name}={want} but topk_ids has shape {list(topk_ids.shape)} ([N, A, K])")
    if (param_fields is None) == (fields is None):
        raise StoreError("write_store: give exactly one of param_fields (the policy's fields) or fields")
    if param_fields is None:
        fields = list(fields)  # type: ignore[arg-type]
        names = [f.name for f in fields]
        want = [(f.name, np.dtype(f.dtype), f.shape) for f in target_fields(num_classes, k)]
        if names[-2:] == ["topk_ids", "topk_probs"] and [(f.name, np.dtype(f.dtype), f.shape)
                                                          for f in fields[-2:]] != want:
            raise StoreError(f"write_store: the target fields in fields do not match "
                             f"schema.target_fields(num_classes={num_classes}, topk={k})")
        param_fields = fields[:-2] if names[-2:] == ["topk_ids", "topk_probs"] else fields
    if topk_probs.size and (topk_probs.min() < 0 or topk_probs.max() > 1
                            or topk_probs.sum(-1).max() > 1 + 1e-3 or (np.diff(topk_probs, axis=-1) > 1e-6).any()):
        raise StoreError("write_store: topk_probs must be descending probabilities in [0, 1] summing to <= 1")
    fields = [*param_fields, *target_fields(num_classes, k)]
    sps, aps = resolve_shard_shape(n, a, sum(f.nbytes for f in fields), samples_per_shard, augs_per_shard,
                                   max_shard_bytes)
    for f in param_fields:
        if f.name not in params or np.shape(params[f.name])[:2] != (n, a):
            raise StoreError(f"write_store: params[{f.name!r}] must have shape [{n}, {a}, *{list(f.shape)}]")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    shards = []
    for s0, s1, a0, a1 in plan_shards(n, a, sps, aps, record_bytes=sum(f.nbytes for f in fields),
                                      max_shard_bytes=max_shard_bytes):
        arrays = {f.name: np.asarray(params[f.name])[s0:s1, a0:a1] for f in param_fields}
        arrays["topk_ids"] = encode_topk_ids(topk_ids[s0:s1, a0:a1], num_classes)
        arrays["topk_probs"] = encode_topk_probs(topk_probs[s0:s1, a0:a1])
        shards.append(write_shard(root, s0, s1, a0, a1, arrays, fields, max_shard_bytes=max_shard_bytes,
                                  build_id=build_id))
    samples = write_samples(root, labels, keys, hashes, build_id=build_id)
    m = Manifest(dataset=dataset, split=split, num_samples=n, num_augmentations=a, topk=k, num_classes=num_classes,
                 policy=dict(policy), fields=fields, teacher=dict(teacher), seed=int(seed),
                 builder_version=builder_version, samples_per_shard=sps, augs_per_shard=aps, samples_file=samples,
                 shards=shards, extra=dict(extra or {}), build_id=build_id)
    write_manifest(root, m)
    return m
