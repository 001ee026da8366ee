"""What checking every item's identity costs: per-item replay at 224 px with vs without the check, one run.

An ImageFolder of ImageNet-like JPEGs (~500x375, quality 90, real photos) and a store over it (the
"rrc+ra/re" policy's params for every record, random top-k); each item is fetched through
``ReinforcedDataset`` (decode, identity check, crop, RandAugment, erasing, normalise, densify),
with the package's check (``exact``: sha256 of the file's bytes and the size; ``resized``: aspect
ratio and the 8x8 thumbnail on every decode, the thumbnail recomputed whenever the bytes are not those last
found close) and with the check replaced by a no-op. Rates are medians of interleaved rounds. Prints one JSON object; ``overhead_exact`` =
1 - rate(exact) / rate(no check) (target <= 3%).

    python benchmarks/identity_cost.py [--images 24] [--seconds 6] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from replay_throughput import _time_interleaved, make_jpegs  # noqa: E402


class _NoCheck:
    def check(self, *args) -> None:
        return None


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--augs", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--quick", action="store_true", help="small sizes (CI smoke run)")
    args = ap.parse_args(argv)
    if args.quick:
        args.images, args.augs, args.seconds, args.rounds, args.size = 6, 2, 0.6, 2, 64
    import numpy as np
    import torch

    sys.path.insert(0, str(HERE.parent / "tests"))
    from fakes.replay_store import write_replay_store
    from imagenet_plus.adapters import create_adapter
    from imagenet_plus.augment import create_policy
    from imagenet_plus.datasets import ReinforcedDataset

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for k, data in enumerate(make_jpegs(args.images)):
            (tmp / "data" / f"c{k % 4}").mkdir(parents=True, exist_ok=True)
            (tmp / "data" / f"c{k % 4}" / f"{k:04d}.jpg").write_bytes(data)
        adapter = create_adapter("imagefolder", tmp / "data", "train")
        policy = create_policy("rrc+ra/re", output_size=args.size)
        write_replay_store(tmp / "store", adapter, policy, num_augmentations=args.augs, topk=3)
        sets = {mode: ReinforcedDataset(adapter, tmp / "store", seed=0, p_original=0.0, check=mode)
                for mode in ("exact", "resized")}
        sets["none"] = ReinforcedDataset(adapter, tmp / "store", seed=0, p_original=0.0)
        sets["none"].source.data.checker = _NoCheck()
        fns = {name: (lambda i, ds=ds: ds.__getitems__([i])) for name, ds in sets.items()}
        rates = _time_interleaved(fns, list(range(len(adapter))), args.seconds, args.rounds)
    out = {"images": args.images, "size": args.size, "items_per_s": {k: round(v, 1) for k, v in rates.items()},
           "overhead_exact": round(1.0 - rates["exact"] / rates["none"], 4),
           "overhead_resized": round(1.0 - rates["resized"] / rates["none"], 4), "target_overhead": 0.03}
    out["ok"] = bool(out["overhead_exact"] <= out["target_overhead"])
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
