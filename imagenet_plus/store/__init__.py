"""The reinforcement store: safetensors shards, a per-sample identity file and a JSON manifest.

Layout of a store folder (format version 3)::

    manifest.json                      written last, atomically
    samples.safetensors                label <i4 [N], content_hash u1 [N, 8], image_size <u4 [N, 2],
                                       fingerprint u1 [N, 64], key_bytes u1 [total], key_offsets <i8 [N + 1]
    reinforcements/shard-s{s0:08d}-s{s1:08d}-a{a0:05d}-a{a1:05d}.safetensors
                                       one tensor per field, [s1 - s0, a1 - a0, *field.shape], and
                                       row_crc32 <u4 [s1 - s0]: CRC32 of each sample row over its
                                       place (build id, sample, a0, a1) and every field

Shards tile the (sample, augmentation) grid in blocks, so a reader of the first
``num_augmentations`` augmentations only needs the first augmentation blocks.
Every file is written through ``imagenet_plus._files.atomic_write`` (temporary
name, fsync, sha256 on the way, rename).

A build's identity (:func:`compute_build_id` of every manifest setting a reader
relies on, the teacher's checkpoint sha256s included, and the digest of the sample
keys) is stored as ``build_id`` in the manifest and in every file's ``__metadata__``;
every shard also carries the teacher's id (:func:`compute_teacher_id`). The reader recomputes it at open
(an edited manifest fails), checks the samples file's sha256 at open and every
sample row's CRC32 on first read; :func:`verify` reports what it checked and what
it did not (``full=True`` hashes everything).
"""

from __future__ import annotations

from ._format import (DEFAULT_AUGS_PER_SHARD, FORMAT_VERSION, MANIFEST_NAME, MAX_SHARD_BYTES, ROW_CRC_NAME,
                      SAMPLES_NAME, SHARD_DIR, plan_shards, resolve_shard_shape, shard_filename)
from ._manifest import (BUILD_ID_FIELDS, NOT_IN_BUILD_ID, FileEntry, Manifest, ShardEntry, compute_build_id,
                        compute_teacher_id, digest_keys, teacher_change, teacher_identity)
from ._reader import Record, ReinforcementStore, open_store
from ._verify import VerifyReport, verify
from ._writer import read_shard_entry, sha256_file, write_manifest, write_samples, write_shard, write_store

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "SAMPLES_NAME",
    "SHARD_DIR",
    "ROW_CRC_NAME",
    "MAX_SHARD_BYTES",
    "DEFAULT_AUGS_PER_SHARD",
    "BUILD_ID_FIELDS",
    "NOT_IN_BUILD_ID",
    "FileEntry",
    "ShardEntry",
    "Manifest",
    "compute_build_id",
    "compute_teacher_id",
    "teacher_identity",
    "teacher_change",
    "digest_keys",
    "plan_shards",
    "resolve_shard_shape",
    "shard_filename",
    "write_shard",
    "read_shard_entry",
    "write_samples",
    "write_manifest",
    "write_store",
    "sha256_file",
    "Record",
    "ReinforcementStore",
    "open_store",
    "VerifyReport",
    "verify",
]
