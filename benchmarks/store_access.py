"""Random-access latency of one full record (params + decoded targets) from a large store.

Writes a store of ``--samples x --augs`` records (default 25,000 x 400 = 10 million,
ImageNet+ record layout: 14 bytes of params, 1000 classes, K=10, 38 bytes per record,
several shards), then times ``store.record(i, j)`` at uniformly random ``(i, j)``:

* cold: a freshly opened store after the shard pages were dropped from the page cache
  with ``posix_fadvise(DONTNEED)`` (our files only): every read faults in disk pages;
* fresh open, cached: files in the page cache, a new store object (shards are mapped
  on first use, so the first read of each shard pays its header check and mmap);
* warm: the same store, mapped and cached, at new random indices.

Also reports ``params``/``targets`` alone and the batched path per record. The
reference implementation reads one gzipped pickle per sample (all augmentations),
so each record costs a file open + gunzip + unpickle of the whole sample; not
measured here (this project reads no pickle).

Run:
    python benchmarks/store_access.py [--samples 25000] [--augs 400] [--reads 20000]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from imagenet_plus.schema import Field, encode_topk_ids, encode_topk_probs, target_fields  # noqa: E402
from imagenet_plus.store import (FileEntry, Manifest, open_store, plan_shards, resolve_shard_shape,  # noqa: E402
                                 write_manifest, write_samples, write_shard)

FIELDS = (
    Field("crop", "<u2", (4,), 0, 65535, "crop box as fractions of the image"),
    Field("ops", "<u2", (), 0, 2047, "flip bit + 2 RandAugment ops with sign"),
    Field("erase", "|u1", (4,), 0, 224, "erased box in output pixels"),
)


def build(root: Path, n: int, a: int, c: int, k: int, samples_per_shard: int, augs_per_shard: int) -> Manifest:
    """Write the store shard by shard from a pool of valid encoded records (values do not affect speed)."""
    rng = np.random.default_rng(0)
    fields = [*FIELDS, *target_fields(c, k)]
    pool = 1 << 16
    logits = rng.standard_normal((pool, c)).astype(np.float32) * rng.choice([1.0, 4.0, 12.0], size=(pool, 1))
    ids = np.argpartition(-logits, k, axis=1)[:, :k]
    top = np.take_along_axis(logits, ids, 1)
    order = np.argsort(-top, axis=1)
    ids = np.take_along_axis(ids, order, 1)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    probs = np.take_along_axis(p, ids, 1)
    pool_ids, pool_codes = encode_topk_ids(ids, c), encode_topk_probs(probs)
    shards = []
    for s0, s1, a0, a1 in plan_shards(n, a, samples_per_shard, augs_per_shard,
                                      record_bytes=sum(f.nbytes for f in fields)):
        shape = (s1 - s0, a1 - a0)
        pick = rng.integers(0, pool, size=shape)
        arrays = {f.name: rng.integers(int(f.low), int(f.high), size=(*shape, *f.shape), endpoint=True
                                       ).astype(f.dtype) for f in FIELDS}
        arrays["topk_ids"], arrays["topk_probs"] = pool_ids[pick], pool_codes[pick]
        shards.append(write_shard(root, s0, s1, a0, a1, arrays, fields))
    labels = rng.integers(0, c, n).astype(np.int32)
    samples: FileEntry = write_samples(root, labels, [f"n{int(y):08d}/img_{i}.JPEG" for i, y in enumerate(labels)],
                                       np.zeros((n, 8), np.uint8))
    m = Manifest(dataset="imagenet", split="train", num_samples=n, num_augmentations=a, topk=k, num_classes=c,
                 policy={"name": "rrc+ra/re"}, fields=fields, teacher={"name": "synthetic"}, seed=0,
                 builder_version="benchmark", samples_per_shard=samples_per_shard, augs_per_shard=augs_per_shard,
                 samples_file=samples, shards=shards)
    write_manifest(root, m)
    return m


def drop_cache(root: Path) -> bool:
    if not hasattr(os, "posix_fadvise"):
        return False
    for p in root.rglob("*.safetensors"):
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return True


def time_calls(fn, ii, jj) -> np.ndarray:
    out = np.empty(len(ii))
    clock = time.perf_counter_ns
    for n, (i, j) in enumerate(zip(ii, jj)):
        t = clock()
        fn(i, j)
        out[n] = clock() - t
    return out / 1000.0


def stats(us: np.ndarray) -> dict:
    return {"median_us": round(float(np.median(us)), 2), "p99_us": round(float(np.percentile(us, 99)), 2),
            "mean_us": round(float(us.mean()), 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=25000)
    ap.add_argument("--augs", type=int, default=400)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--topk", type=int, default=10)
    ap.add_argument("--samples-per-shard", type=int, default=5000)
    ap.add_argument("--augs-per-shard", type=int, default=50)
    ap.add_argument("--reads", type=int, default=20000, help="random reads per measurement")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--store", type=str, default=None, help="reuse/keep the store in this folder")
    args = ap.parse_args()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.store or Path(tmp) / "store")
        sps, aps = resolve_shard_shape(args.samples, args.augs, 38, args.samples_per_shard, args.augs_per_shard)
        tb = time.perf_counter()
        if not (root / "manifest.json").is_file():
            build(root, args.samples, args.augs, args.classes, args.topk, sps, aps)
        build_s = time.perf_counter() - tb
        rng = np.random.default_rng(1)
        ii = rng.integers(0, args.samples, args.reads).tolist()
        jj = rng.integers(0, args.augs, args.reads).tolist()

        def indices():
            return rng.integers(0, args.samples, args.reads).tolist(), rng.integers(0, args.augs, args.reads).tolist()

        # 1. cold: our shard pages dropped from the page cache, store freshly opened.
        dropped = drop_cache(root)
        to = time.perf_counter()
        store = open_store(root)
        open_us = (time.perf_counter() - to) * 1e6
        cold = time_calls(store.record, *indices())
        # 2. fresh open, files in the page cache: shards are mapped on first use.
        for p in root.rglob("*.safetensors"):
            with open(p, "rb") as f:
                while f.read(1 << 24):
                    pass
        store = open_store(root)
        fresh = time_calls(store.record, *indices())
        # 3. warm: mapped and cached, new random indices.
        ii, jj = indices()
        warm = time_calls(store.record, ii, jj)
        params = time_calls(store.params, ii, jj)
        targets = time_calls(store.targets, ii, jj)
        bi = rng.integers(0, args.samples, (50, args.batch))
        bj = rng.integers(0, args.augs, (50, args.batch))
        tb0 = time.perf_counter()
        for x, y in zip(bi, bj):
            store.params_batch(x, y)
            store.targets_batch(x, y)
        batch_us = (time.perf_counter() - tb0) * 1e6 / bi.size
        m = store.manifest
        n_records = m.num_samples * m.num_augmentations
        result = {
            "benchmark": "store_access",
            "records": n_records, "samples": m.num_samples, "augmentations": m.num_augmentations,
            "shards": len(m.shards), "samples_per_shard": m.samples_per_shard, "augs_per_shard": m.augs_per_shard,
            "store_bytes": sum(e.bytes for e in m.shards) + m.samples_file.bytes,
            "reads": args.reads,
            "open_store_us": round(open_us, 1),
            "record_cold_page_cache_dropped": {**stats(cold), "page_cache_dropped": dropped},
            "record_fresh_open_cached": stats(fresh),
            "record_warm": stats(warm),
            "params_only_warm": stats(params),
            "targets_only_warm": stats(targets),
            "batched_per_record_us": round(batch_us, 3), "batch_size": args.batch,
            "target_median_us": 50.0,
            "meets_target_warm": float(np.median(warm)) <= 50.0,
            "meets_target_fresh_open_cached": float(np.median(fresh)) <= 50.0,
            "meets_target_cold": float(np.median(cold)) <= 50.0,
            "reference": "one gzipped pickle per sample (open + gunzip + unpickle every augmentation); not run",
            "build_seconds": round(build_s, 2), "seconds": round(time.perf_counter() - t0, 2),
        }
        print(json.dumps(result))


if __name__ == "__main__":
    main()
