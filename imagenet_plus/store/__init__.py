"""The reinforcement store: safetensors shards, a per-sample identity file and a JSON manifest.

Layout of a store folder::

    manifest.json                      written last, atomically
    samples.safetensors                label <i4 [N], content_hash u1 [N, 8],
                                       key_bytes u1 [total], key_offsets <i8 [N + 1]
    reinforcements/shard-s{s0:08d}-s{s1:08d}-a{a0:05d}-a{a1:05d}.safetensors
                                       one tensor per field, [s1 - s0, a1 - a0, *field.shape]

Shards tile the (sample, augmentation) grid in blocks, so a reader of the first
``num_augmentations`` augmentations only needs the first augmentation blocks.
Every file is written under a temporary name, fsync'd, hashed and renamed.

A build's identity (:func:`compute_build_id` of dataset, split, sizes, policy, teacher,
seed, format version and sample keys) is stored as ``build_id`` in the manifest and in
every shard's ``__metadata__``; readers, :func:`verify` and
``read_shard_entry(..., build_id=...)`` reject a shard of another build.
"""

from __future__ import annotations

from ._format import (DEFAULT_AUGS_PER_SHARD, FORMAT_VERSION, MANIFEST_NAME, MAX_SHARD_BYTES, SAMPLES_NAME, SHARD_DIR,
                      FileEntry, Manifest, ShardEntry, compute_build_id, plan_shards, resolve_shard_shape,
                      shard_filename)
from ._reader import Record, ReinforcementStore, open_store
from ._verify import VerifyReport, verify
from ._writer import read_shard_entry, sha256_file, write_manifest, write_samples, write_shard, write_store

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "SAMPLES_NAME",
    "SHARD_DIR",
    "MAX_SHARD_BYTES",
    "DEFAULT_AUGS_PER_SHARD",
    "FileEntry",
    "ShardEntry",
    "Manifest",
    "compute_build_id",
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
