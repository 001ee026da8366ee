"""The store's manifest and samples file: settings and build id up front, files written last.

The manifest's settings (dataset, split, sizes, policy, fields, teacher, seed, shard shape,
extras) are fixed before the first shard, so the build id
(:func:`imagenet_plus.store.compute_build_id` of those settings and the digest of the sample
keys) can be stamped into every file. Once every shard exists, rank 0 writes
``samples.safetensors`` (per sample: label, key, digest, image size and fingerprint, gathered
from the identity parts each rank left in ``.build/``) and then ``manifest.json``, last.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .. import __version__
from .._files import json_default
from ..identity import fingerprint
from ..kernels import REPORT_KEY, kernel_report
from ..schema import Field
from ..store import Manifest, ShardEntry, compute_build_id, digest_keys, write_manifest, write_samples
from .outdir import OutputFolder, identity_part_name
from .plan import BuildPlan

__all__ = ["IdentityPart", "create_manifest", "build_settings", "collect_identity", "write_store_files"]


@dataclass
class IdentityPart:
    """The identity of samples ``[s0, s1)``: labels, digests, image sizes ``(H, W)`` and fingerprints."""

    s0: int
    labels: np.ndarray
    digests: np.ndarray
    sizes: np.ndarray
    fingerprints: np.ndarray

    @classmethod
    def empty(cls, s0: int, s1: int) -> "IdentityPart":
        n = s1 - s0
        return cls(s0, np.zeros(n, np.int64), np.zeros((n, 8), np.uint8), np.zeros((n, 2), np.uint32),
                   np.zeros((n, 64), np.uint8))

    def set(self, index: int, label: int, digest: np.ndarray, size: tuple[int, int], thumb: np.ndarray) -> None:
        r = index - self.s0
        self.labels[r], self.digests[r], self.sizes[r], self.fingerprints[r] = label, digest, size, thumb

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"label": self.labels, "digest": self.digests, "size": self.sizes, "fingerprint": self.fingerprints}

    @classmethod
    def from_arrays(cls, s0: int, s1: int, d: dict) -> "IdentityPart | None":
        """The part in a state file, ``None`` if its shapes do not fit ``[s0, s1)``."""
        n = s1 - s0
        want = {"label": (n,), "digest": (n, 8), "size": (n, 2), "fingerprint": (n, 64)}
        if any(k not in d or tuple(d[k].shape) != s for k, s in want.items()):
            return None
        return cls(s0, d["label"].astype(np.int64), d["digest"].astype(np.uint8), d["size"].astype(np.uint32),
                   d["fingerprint"].astype(np.uint8))


def create_manifest(*, dataset: str, split: str, plan: BuildPlan, topk: int, num_classes: int, policy,
                    fields: Sequence[Field], teacher: dict, seed: int, extra: dict, keys: Sequence[str]) -> Manifest:
    """The manifest's settings (no files yet) with its build id."""
    m = Manifest(dataset=dataset, split=split, num_samples=plan.num_samples,
                 num_augmentations=plan.num_augmentations, topk=topk, num_classes=num_classes, policy=policy.config,
                 fields=list(fields), teacher=dict(teacher), seed=int(seed), builder_version=__version__,
                 samples_per_shard=plan.samples_per_shard, augs_per_shard=plan.augs_per_shard, extra=dict(extra))
    m.validate("build settings", require_files=False)
    m.build_id = compute_build_id(m, digest_keys(keys))
    return m


def build_settings(manifest: Manifest, keys: Sequence[str]) -> dict:
    """What ``.build/settings.json`` records: the build id, the settings it covers and the keys' digest."""
    settings = json.loads(json.dumps(manifest.settings(), default=json_default))
    return {"build_id": manifest.build_id, "settings": settings, "keys_digest": digest_keys(keys)}


def _decode_part(adapter, s0: int, s1: int) -> IdentityPart:
    """Recompute a missing identity part by decoding its samples (only if a state file was lost)."""
    part = IdentityPart.empty(s0, s1)
    for i in range(s0, s1):
        sample = adapter.load(i)
        part.set(i, sample.label, sample.digest, (sample.image.height, sample.image.width), fingerprint(sample.image))
    return part


def collect_identity(folder: OutputFolder, plan: BuildPlan, adapter) -> IdentityPart:
    """Every sample's identity, from the parts in ``.build/`` (a missing part is recomputed)."""
    whole = IdentityPart.empty(0, plan.num_samples)
    for s0, s1 in plan.sample_blocks:
        got = folder.read_state(identity_part_name(s0, s1))
        part = IdentityPart.from_arrays(s0, s1, got[0]) if got is not None else None
        if part is None:
            part = _decode_part(adapter, s0, s1)
        rows = slice(s0, s1)
        whole.labels[rows], whole.digests[rows] = part.labels, part.digests
        whole.sizes[rows], whole.fingerprints[rows] = part.sizes, part.fingerprints
    return whole


def write_store_files(folder: OutputFolder, manifest: Manifest, shards: list[ShardEntry], identity: IdentityPart,
                      keys: Sequence[str], reports: dict) -> Manifest:
    """Write ``samples.safetensors``, then ``manifest.json`` (last); return the written manifest."""
    manifest.samples_file = write_samples(folder.root, identity.labels, keys, identity.digests, identity.sizes,
                                          identity.fingerprints, build_id=manifest.build_id)
    manifest.shards = list(shards)
    manifest.reports = {**reports, REPORT_KEY: kernel_report(manifest.policy)}  # the machine: outside the build id
    write_manifest(folder.root, manifest)
    return manifest
