"""Items/s of the batched dataset path with several records per decode (``records_per_decode`` M = 1, 2, 4, 8).

The dataset path is ``ReinforcedDataset.__getitems__`` over an ImageFolder of ImageNet-size JPEGs
(what a DataLoader worker does: read and decode each file, check its identity, one batched store
read, crop each record, one batched finish, normalise, densify), asked for batches of ``--batch``
items: ``batch / M`` samples, each decoded once and replayed ``M`` times. Each M's items are
bit-identical to the M=1 items of their record-epochs (``tests/test_views.py``); this only times
them. Baseline, measured in the same run: torchvision v2 ``RandomResizedCrop(224) +
RandomHorizontalFlip + RandAugment + ToDtype/Normalize + RandomErasing`` on the PIL backend
(``torchvision_pil``) and on the tensor backend (``torchvision_tensor``), one decode per item.
One thread; rates are medians of interleaved rounds, so a busy machine slows every pipeline alike.
Prints one JSON object: absolute items/s, the ratio of each M to M=1, to torchvision's PIL
pipeline and to its fastest pipeline.

    python benchmarks/records_per_decode.py [--images 24] [--seconds 6] [--rounds 8] [--views 1,2,4,8] [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch
from torchvision.transforms import v2

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from imagenet_plus.augment import create_policy  # noqa: E402
from replay_throughput import _decode, _time_interleaved, make_jpegs  # noqa: E402


def _torchvision(policy) -> tuple[v2.Compose, v2.Compose]:
    """torchvision v2's equivalent random pipeline on the PIL and on the tensor backend."""
    ra = policy.config["randaugment"] or {}
    re = policy.config["erasing"]
    ra_t = [v2.RandAugment(ra["num_ops"], ra["magnitude"], ra["num_magnitude_bins"])] if ra else []
    re_t = [v2.RandomErasing(p=re["p"], scale=re["scale"], ratio=re["ratio"], value=0)] if re else []
    geo = [v2.RandomResizedCrop(policy.output_size, antialias=True), v2.RandomHorizontalFlip()]
    tail = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(policy.mean), list(policy.std))] + re_t
    return v2.Compose(geo + ra_t + [v2.PILToTensor()] + tail), v2.Compose([v2.PILToTensor()] + geo + ra_t + tail)


def _datasets(tmp: Path, policy, jpegs, num_aug: int, views: list[int]) -> dict:
    """One ``ReinforcedDataset`` per M over an ImageFolder of the JPEGs and one store (identity checked)."""
    sys.path.insert(0, str(HERE.parent / "tests"))
    from fakes.replay_store import write_replay_store
    from imagenet_plus.adapters import create_adapter
    from imagenet_plus.datasets import ReinforcedDataset

    for k, data in enumerate(jpegs):
        (tmp / "data" / f"c{k % 4}").mkdir(parents=True, exist_ok=True)
        (tmp / "data" / f"c{k % 4}" / f"{k:04d}.jpg").write_bytes(data)
    adapter = create_adapter("imagefolder", tmp / "data", "train")
    write_replay_store(tmp / "store", adapter, policy, num_augmentations=num_aug, topk=3)
    return {m: ReinforcedDataset(adapter, tmp / "store", seed=0, p_original=0.01, records_per_decode=m)
            for m in views}


def _batch_fn(ds, samples: int):
    def call(rec):  # one DataLoader batch of samples * M items
        k = rec[0]
        return ds.__getitems__([(k + b) % len(ds) for b in range(samples)])
    return call


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--batch", type=int, default=32, help="items per dataset call (batch / M samples)")
    ap.add_argument("--views", default="1,2,4,8", help="comma-separated M values (1 first)")
    ap.add_argument("--seconds", type=float, default=6.0, help="timing window per pipeline")
    ap.add_argument("--rounds", type=int, default=8, help="interleaved timing rounds (median is reported)")
    ap.add_argument("--policy", default="rrc+ra/re")
    ap.add_argument("--quick", action="store_true", help="small sizes (8 images, short rounds: a smoke run)")
    args = ap.parse_args(argv)
    if args.quick:
        args.images, args.seconds, args.rounds = 8, 1.0, 2
    views = [int(v) for v in args.views.split(",")]
    if views[0] != 1 or any(v < 1 or args.batch % v for v in views):
        ap.error(f"--views must start with 1 and each M must divide --batch {args.batch}")
    torch.set_num_threads(1)
    jpegs = make_jpegs(args.images)
    policy = create_policy(args.policy)
    pil_pipe, tensor_pipe = _torchvision(policy)
    with tempfile.TemporaryDirectory() as tmp:
        sets = _datasets(Path(tmp), policy, jpegs, max(8, max(views)), views)
        fns = {f"M={m}": _batch_fn(ds, args.batch // m) for m, ds in sets.items()}
        fns["torchvision_pil"] = lambda rec: pil_pipe(_decode(jpegs[rec[0]]))
        fns["torchvision_tensor"] = lambda rec: tensor_pipe(_decode(jpegs[rec[0]]))
        records = [(k, 0) for k in range(args.images)]
        rates = _time_interleaved(fns, records, args.seconds, args.rounds)
    for m in views:
        rates[f"M={m}"] *= args.batch  # calls/s -> items/s
    fastest = max(rates["torchvision_pil"], rates["torchvision_tensor"])
    out = {"benchmark": "records_per_decode", "policy": policy.name, "output_size": policy.output_size,
           "threads": torch.get_num_threads(), "images": args.images, "batch_items": args.batch,
           "rounds": args.rounds, "torchvision_pil_items_per_s": round(rates["torchvision_pil"], 1),
           "torchvision_tensor_items_per_s": round(rates["torchvision_tensor"], 1), "views": {}}
    for m in views:
        r = rates[f"M={m}"]
        out["views"][str(m)] = {"items_per_s": round(r, 1), "ms_per_item": round(1000.0 / r, 3),
                                "vs_m1": round(r / rates["M=1"], 3),
                                "vs_torchvision_pil": round(r / rates["torchvision_pil"], 3),
                                "vs_torchvision_fastest": round(r / fastest, 3)}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
