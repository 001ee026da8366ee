"""How long constructing a ``ReinforcedDataset`` takes at ImageNet scale (1,281,167 samples).

Construction opens the store (manifest, samples file with its sha256, the build id recomputed from
the keys) and aligns the dataset copy with it: every sample's key and label, and the class count.
No image is decoded (each sample's content is checked when it is first decoded, see
``benchmarks/identity_cost.py``). The dataset here is an adapter over synthetic ImageNet-like keys (no
files are read at construction). Prints one JSON: seconds to construct with the copy in the store's
order and in another order (aligned by key).

    python benchmarks/construct_time.py [--samples 1281167] [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=1_281_167)
    ap.add_argument("--quick", action="store_true", help="20,000 samples (CI smoke run)")
    args = ap.parse_args(argv)
    n = 20_000 if args.quick else args.samples
    from imagenet_plus.adapters import FileAdapter
    from imagenet_plus.augment import create_policy
    from imagenet_plus.datasets import ReinforcedDataset
    from imagenet_plus.store import write_store

    classes = 1000
    labels = (np.arange(n) * classes // n).astype(np.int64)
    keys = [f"n{1440764 + int(c) * 977:08d}/n{1440764 + int(c) * 977:08d}_{i}.JPEG" for i, c in enumerate(labels)]

    class Synthetic(FileAdapter):
        name = "imagenet"

        def __init__(self, order):
            super().__init__(None, "train")
            self.order = order

        def __len__(self):
            return len(self.order)

        def files(self):
            return [f"/data/imagenet/train/{keys[i]}" for i in self.order]

        def key_root(self):
            return "/data/imagenet/train"

        def labels(self):
            return labels[self.order]

        @property
        def num_classes(self):
            return classes

    policy = create_policy("rrc")
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        params = {f.name: np.zeros((n, 1, *f.shape), dtype=f.dtype) for f in policy.fields}
        ids = np.tile(np.arange(5), (n, 1, 1))
        probs = np.tile(np.array([0.5, 0.2, 0.1, 0.05, 0.05], np.float32), (n, 1, 1))
        t0 = time.perf_counter()
        write_store(Path(tmp) / "store", dataset="imagenet", split="train", num_classes=classes,
                    policy=policy.config, teacher={"name": "synthetic"}, seed=0, builder_version="bench",
                    params=params, topk_ids=ids, topk_probs=probs, labels=labels, keys=keys,
                    hashes=rng.integers(0, 256, (n, 8), dtype=np.uint8), sizes=np.full((n, 2), 375, np.uint32),
                    fingerprints=rng.integers(0, 256, (n, 64), dtype=np.uint8), param_fields=policy.fields)
        write_s = time.perf_counter() - t0
        out = {"samples": n, "write_store_seconds": round(write_s, 2)}
        for name, order in (("same_order", np.arange(n)), ("other_order", rng.permutation(n))):
            adapter = Synthetic(order)
            t0 = time.perf_counter()
            ds = ReinforcedDataset(adapter, Path(tmp) / "store", seed=0)
            out[f"construct_seconds_{name}"] = round(time.perf_counter() - t0, 2)
            assert len(ds) == n
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
