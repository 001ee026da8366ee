"""A small store over a real dataset copy, written without a teacher run: real policy params, random top-k.

For tests of the replay paths that should not depend on the builder: the params are drawn by the
policy itself for every (sample, augmentation) of the adapter's images; the identity columns come
from the adapter (digest, size, fingerprint), as the builder records them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from imagenet_plus.identity import fingerprint
from imagenet_plus.store import write_store

__all__ = ["write_replay_store"]


def write_replay_store(root, adapter, policy, *, num_augmentations: int = 5, topk: int = 3, seed: int = 7,
                       samples_per_shard: int | None = 4, augs_per_shard: int | None = 2):
    """Write a store for ``adapter``'s dataset under ``root``; returns ``(manifest, params [N, A, ...], ids, probs)``."""
    n, a = len(adapter), num_augmentations
    samples = [adapter.load(i) for i in range(n)]
    h = np.array([s.image.height for s in samples])
    w = np.array([s.image.width for s in samples])
    i, j = np.repeat(np.arange(n), a), np.tile(np.arange(a), n)
    flat = policy.sample(seed, i, j, np.repeat(h, a), np.repeat(w, a), n)
    params = {k: v.reshape(n, a, *v.shape[1:]) for k, v in flat.items()}
    c = int(adapter.num_classes)
    rng = np.random.default_rng(seed)
    ids = np.stack([rng.permutation(c)[:topk] for _ in range(n * a)]).reshape(n, a, topk)
    probs = np.sort(rng.dirichlet(np.ones(topk + 1), n * a)[:, :topk], axis=-1)[:, ::-1]
    probs = np.ascontiguousarray(probs.reshape(n, a, topk), dtype=np.float32)
    m = write_store(Path(root), dataset=adapter.name, split=adapter.split, num_classes=c, policy=policy.config,
                    teacher={"name": "random top-k"}, seed=seed, builder_version="test", params=params,
                    topk_ids=ids, topk_probs=probs, labels=adapter.labels(), keys=adapter.keys(),
                    hashes=np.stack([s.digest for s in samples]), sizes=np.stack([h, w], axis=1).astype(np.uint32),
                    fingerprints=np.stack([fingerprint(s.image) for s in samples]), param_fields=policy.fields,
                    samples_per_shard=samples_per_shard, augs_per_shard=augs_per_shard)
    return m, params, ids, probs
