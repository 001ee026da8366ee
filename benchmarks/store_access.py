"""Random-access cost of records from a large store, the cost of the per-row checksums, and open time.

Writes a store of ``--samples x --augs`` records (default 25,000 x 400 = 10 million,
ImageNet+ record layout: 14 bytes of params, 1000 classes, K=10, 38 bytes per record,
several shards), then times ``store.record(i, j)`` at uniformly random ``(i, j)``:

* cold: a freshly opened store after the shard pages were dropped from the page cache
  with ``posix_fadvise(DONTNEED)`` (our files only): every read faults in disk pages;
* fresh open, cached: files in the page cache, a new store object (shards are mapped
  on first use, so the first read of each shard pays its header check and mmap);
* warm: the same store, mapped and cached, at new random indices.

The per-row checksum (CRC32 of a sample row over every field, checked the first
time a row is read) is measured in the same run, with vs without the check: two
fresh stores with every shard mapped, one whose "checked" bitmaps are pre-filled
(no CRC computed), read at the same random indices (most of them rows read for the
first time) in interleaved chunks; once with every page touched beforehand (the CPU
cost of the check alone) and once on fresh mappings (page faults included, as in
a first epoch). The same for 256-record batches (``records_batch``, what a
DataLoader's ``__getitems__`` fetches).

Open time: a second store with ``--open-samples`` samples (default 1,281,167,
ImageNet's train split, with ImageNet-like keys) is opened: manifest, the samples
file's sha256, the build id recomputed from the keys; then the keys are decoded (a
dataset does this at construction).

Run:
    python benchmarks/store_access.py [--samples 25000] [--augs 400] [--reads 20000] [--open-samples 1281167]
    python benchmarks/store_access.py --quick      # small sizes

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
from imagenet_plus.store import (Manifest, compute_build_id, compute_teacher_id, digest_keys, open_store,  # noqa: E402
                                 plan_shards, resolve_shard_shape, write_manifest, write_samples, write_shard)

FIELDS = (
    Field("crop", "<u2", (4,), 0, 65535, "crop box as fractions of the image"),
    Field("ops", "<u2", (), 0, 2047, "flip bit + 2 RandAugment ops with sign"),
    Field("erase", "|u1", (4,), 0, 224, "erased box in output pixels"),
)


def imagenet_keys(labels: np.ndarray) -> list[str]:
    return [f"n{1440764 + int(y) * 977:08d}/n{1440764 + int(y) * 977:08d}_{10026 + 37 * i}.JPEG"
            for i, y in enumerate(labels)]


def build(root: Path, n: int, a: int, c: int, k: int, samples_per_shard: int, augs_per_shard: int) -> Manifest:
    """Write the store shard by shard from a pool of valid encoded records (values do not affect speed)."""
    rng = np.random.default_rng(0)
    fields = [*FIELDS, *target_fields(c, k)]
    pool = 1 << 16
    logits = rng.standard_normal((pool, c)).astype(np.float32) * rng.choice([1.0, 4.0, 12.0], size=(pool, 1))
    ids = np.argpartition(-logits, k, axis=1)[:, :k]
    top = np.take_along_axis(logits, ids, 1)
    ids = np.take_along_axis(ids, np.argsort(-top, axis=1), 1)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    pool_ids, pool_codes = encode_topk_ids(ids, c), encode_topk_probs(np.take_along_axis(p, ids, 1))
    labels = rng.integers(0, c, n).astype(np.int32)
    keys = imagenet_keys(labels)
    m = Manifest(dataset="imagenet", split="train", num_samples=n, num_augmentations=a, topk=k, num_classes=c,
                 policy={"name": "rrc+ra/re"}, fields=fields, teacher={"name": "synthetic"}, seed=0,
                 builder_version="benchmark", samples_per_shard=samples_per_shard, augs_per_shard=augs_per_shard)
    m.build_id = compute_build_id(m, digest_keys(keys))
    for s0, s1, a0, a1 in plan_shards(n, a, samples_per_shard, augs_per_shard,
                                      record_bytes=sum(f.nbytes for f in fields)):
        shape = (s1 - s0, a1 - a0)
        pick = rng.integers(0, pool, size=shape)
        arrays = {f.name: rng.integers(int(f.low), int(f.high), size=(*shape, *f.shape), endpoint=True
                                       ).astype(f.dtype) for f in FIELDS}
        arrays["topk_ids"], arrays["topk_probs"] = pool_ids[pick], pool_codes[pick]
        m.shards.append(write_shard(root, s0, s1, a0, a1, arrays, fields, build_id=m.build_id,
                                    teacher_id=compute_teacher_id(m)))
    sizes = np.stack([rng.integers(200, 501, n), rng.integers(200, 501, n)], axis=1).astype(np.uint32)
    m.samples_file = write_samples(root, labels, keys, rng.integers(0, 256, (n, 8), dtype=np.uint8), sizes,
                                   rng.integers(0, 256, (n, 64), dtype=np.uint8), build_id=m.build_id)
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


def warm_cache(root: Path) -> None:
    for p in root.rglob("*.safetensors"):
        with open(p, "rb") as f:
            while f.read(1 << 24):
                pass


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


def mapped_store(root: Path, prechecked: bool, prefault: bool):
    """A fresh store with every shard mapped.

    ``prechecked``: every row marked checked (no CRC will run); ``prefault``: every page
    of every shard touched, so reads pay no page faults (the CPU cost alone).
    """
    store = open_store(root)
    if prechecked:
        store._checked_np[:] = 0xFF
    for k in range(len(store.manifest.shards)):
        sh = store._open_shard(k)
        if prefault:
            for v in sh.flat.values():
                np.bitwise_or.reduce(v.reshape(-1).view(np.uint8)[::4096])
    return store


def checksum_cost(root: Path, rng: np.random.Generator, n: int, a: int, reads: int, batch: int,
                  prefault: bool) -> dict:
    """Single and batched reads with vs without the first-read row check, interleaved in time.

    Each side reads its own random indices (same distribution): reading the same records
    would hand the second side the CPU caches the first one filled.
    """
    on, off = mapped_store(root, False, prefault), mapped_store(root, True, prefault)
    m = on.manifest
    idx = {side: (rng.integers(0, n, reads).tolist(), rng.integers(0, a, reads).tolist()) for side in ("on", "off")}
    rows = len({(i, j // m.augs_per_shard) for i, j in zip(*idx["on"])})  # (sample, augmentation block): one row
    single: dict[str, list] = {"on": [], "off": []}
    for c in range(0, reads, 500):  # interleaved chunks: the machine's noise hits both alike
        for side, store in (("on", on), ("off", off)):
            single[side].append(time_calls(store.record, idx[side][0][c:c + 500], idx[side][1][c:c + 500]))
    single_on, single_off = np.concatenate(single["on"]), np.concatenate(single["off"])
    on, off = mapped_store(root, False, prefault), mapped_store(root, True, prefault)
    spent = {"on": 0.0, "off": 0.0}
    for _ in range(50):
        for side, store in (("on", on), ("off", off)):
            x, y = rng.integers(0, n, batch), rng.integers(0, a, batch)
            t = time.perf_counter()
            store.records_batch(x, y)
            spent[side] += time.perf_counter() - t
    sh = on._open_shard(0)  # the check alone: one shard's rows at random, pages touched beforehand
    for v in sh.flat.values():
        np.bitwise_or.reduce(v.reshape(-1).view(np.uint8)[::4096])
    picks = rng.integers(0, m.shards[0].samples[1] - m.shards[0].samples[0], 5000).tolist()
    t = time.perf_counter()
    for r in picks:
        sh.check_row(r)
    alone_us = (time.perf_counter() - t) * 1e6 / len(picks)
    return {
        "check_row_alone_us": round(alone_us, 2),
        "row_bytes": sum(f.nbytes for f in m.fields) * (m.shards[0].augs[1] - m.shards[0].augs[0]),
        "single_record_with_check": stats(single_on), "single_record_without_check": stats(single_off),
        "single_ratio_mean": round(float(single_on.mean() / single_off.mean()), 3),
        "single_ratio_median": round(float(np.median(single_on) / np.median(single_off)), 3),
        "rows_checked": rows, "reads": reads,
        "us_per_row_checked": round(float(single_on.sum() - single_off.sum()) / max(1, rows), 2),
        "batch_per_record_us_with_check": round(spent["on"] * 1e6 / (50 * batch), 3),
        "batch_per_record_us_without_check": round(spent["off"] * 1e6 / (50 * batch), 3),
        "batch_ratio": round(spent["on"] / spent["off"], 3),
    }


def open_cost(root: Path, n: int, c: int) -> dict:
    """Open a store of ``n`` samples (2 augmentations): manifest, samples sha256, build id; then decode keys."""
    tb = time.perf_counter()
    m = build(root, n, 2, c, 10, resolve_shard_shape(n, 2, 38)[0], 2)
    build_s = time.perf_counter() - tb
    warm_cache(root)
    opens = []
    for _ in range(3):
        t = time.perf_counter()
        store = open_store(root)
        opens.append(time.perf_counter() - t)
    t = time.perf_counter()
    keys = store.keys
    keys_s = time.perf_counter() - t
    t = time.perf_counter()
    store.index_of_key(keys[-1])
    index_s = time.perf_counter() - t
    return {"samples": n, "samples_file_bytes": m.samples_file.bytes, "open_store_s_median": round(sorted(opens)[1], 3),
            "open_store_s_runs": [round(x, 3) for x in opens], "decode_keys_s": round(keys_s, 3),
            "key_index_s": round(index_s, 3), "build_s": round(build_s, 1)}


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
    ap.add_argument("--open-samples", type=int, default=1_281_167, help="samples of the open-time store (0: skip)")
    ap.add_argument("--store", type=str, default=None, help="reuse/keep the store in this folder")
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run, about 15 s)")
    args = ap.parse_args()
    if args.quick:
        args.samples, args.augs, args.samples_per_shard, args.augs_per_shard = 2000, 50, 500, 25
        args.reads, args.open_samples = 4000, 50000
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.store or Path(tmp) / "store")
        sps, aps = resolve_shard_shape(args.samples, args.augs, 38, args.samples_per_shard, args.augs_per_shard)
        tb = time.perf_counter()
        if not (root / "manifest.json").is_file():
            build(root, args.samples, args.augs, args.classes, args.topk, sps, aps)
        build_s = time.perf_counter() - tb
        rng = np.random.default_rng(1)

        def indices():
            return rng.integers(0, args.samples, args.reads).tolist(), rng.integers(0, args.augs, args.reads).tolist()

        # 1. cold: our shard pages dropped from the page cache, store freshly opened.
        dropped = drop_cache(root)
        to = time.perf_counter()
        store = open_store(root)
        open_us = (time.perf_counter() - to) * 1e6
        cold = time_calls(store.record, *indices())
        # 2. fresh open, files in the page cache: shards are mapped on first use.
        warm_cache(root)
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
        tb0 = time.perf_counter()
        for x, y in zip(bi, bj):
            store.records_batch(x, y)
        records_batch_us = (time.perf_counter() - tb0) * 1e6 / bi.size
        # 4. the per-row checksum, with vs without, on rows read for the first time.
        crc = {}
        for kind, prefault in (("pages_prefaulted", True), ("fresh_mappings", False)):
            crc[kind] = checksum_cost(root, rng, args.samples, args.augs, args.reads, args.batch, prefault)
        m = store.manifest
        result = {
            "benchmark": "store_access",
            "records": m.num_samples * m.num_augmentations, "samples": m.num_samples,
            "augmentations": m.num_augmentations, "shards": len(m.shards), "samples_per_shard": m.samples_per_shard,
            "augs_per_shard": m.augs_per_shard,
            "store_bytes": sum(e.bytes for e in m.shards) + m.samples_file.bytes,
            "reads": args.reads,
            "open_store_us": round(open_us, 1),
            "record_cold_page_cache_dropped": {**stats(cold), "page_cache_dropped": dropped},
            "record_fresh_open_cached": stats(fresh),
            "record_warm": stats(warm),
            "params_only_warm": stats(params),
            "targets_only_warm": stats(targets),
            "batched_per_record_us": round(batch_us, 3), "records_batch_per_record_us": round(records_batch_us, 3),
            "batch_size": args.batch,
            "row_checksum": crc,
            "target_median_us": 50.0,
            "meets_target_warm": float(np.median(warm)) <= 50.0,
            "meets_target_fresh_open_cached": float(np.median(fresh)) <= 50.0,
            "meets_target_cold": float(np.median(cold)) <= 50.0,
            "reference": "one gzipped pickle per sample (open + gunzip + unpickle every augmentation); not run",
            "build_seconds": round(build_s, 2),
        }
    if args.open_samples > 0:
        with tempfile.TemporaryDirectory() as tmp:
            result["open"] = open_cost(Path(tmp) / "open", args.open_samples, args.classes)
    result["seconds"] = round(time.perf_counter() - t0, 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
