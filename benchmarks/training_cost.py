"""Training cost of reinforced data vs the original data: epoch time, same ops, same student, same loader.

    python benchmarks/training_cost.py            # 1,433 digits, NS 16, 5 timed epochs per arm
    python benchmarks/training_cost.py --quick    # 256 digits, NS 4, 2 timed epochs

Arms (identical augmentation ops, student, optimiser, batch size, workers):

* ``original``: the digits with the policy's random augmentation, parameters
  drawn fresh each epoch (``policy.sample`` + ``policy.apply``), hard labels.
* ``reinforced``: the same images through ``ReinforcedDataset`` over a store
  built here (random-init teacher: its values do not change the cost):
  stored parameters read from the memory-mapped shards, replayed with the same
  ``policy.apply``, top-k targets densified.

Epochs of the two arms alternate (original, reinforced, original, ...) after
one warm-up epoch each, so load from other processes hits both alike. Prints
one JSON object: per-arm epoch seconds (and data-loading-only seconds), and
``ratio`` = median reinforced / median original epoch time (target <= 1.05).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _p in (str(ROOT), str(ROOT / "examples")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader, Subset  # noqa: E402

TARGET_RATIO = 1.05


def _parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes (256 images, NS 4, 2 timed epochs)")
    p.add_argument("--samples", type=int, default=None, help="training images (default all 1,433; quick 256)")
    p.add_argument("--num-augmentations", type=int, default=None, help="NS of the store (default 16; quick 4)")
    p.add_argument("--epochs", type=int, default=None, help="timed epochs per arm (default 5; quick 2)")
    p.add_argument("--student", default="cnn:8x2", help="student model spec (examples/_train.py)")
    p.add_argument("--batch-size", type=int, default=64, help="batch size (default 64)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers, both arms (default 0)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--config", default="builders/configs/digits-plus.yaml", help="policy source (build config)")
    a = p.parse_args(argv)
    a.samples = a.samples or (256 if a.quick else 1433)
    a.num_augmentations = a.num_augmentations or (4 if a.quick else 16)
    a.epochs = a.epochs or (2 if a.quick else 5)
    for name in ("samples", "num_augmentations", "epochs", "batch_size", "threads"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    return a


class _RandomTeacher:
    """A random-init CNN as the teacher (the cost of training does not depend on the targets' values)."""

    def __init__(self, policy, num_classes: int) -> None:
        from _train import SmallCNN

        torch.manual_seed(0)
        self.model = SmallCNN(num_classes, width=8, depth=2).eval()
        self.policy = policy

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(self.policy.normalize(x)) * 3.0, dim=1)


def _epoch(model, loader, opt, to_inputs, num_classes: int, train_step: bool) -> float:
    import torch.nn.functional as F

    if hasattr(loader.dataset, "set_epoch"):
        loader.dataset.set_epoch(_epoch.counter)
    _epoch.counter += 1
    t0 = time.perf_counter()
    for batch in loader:
        x, y = to_inputs(batch)
        if not train_step:
            continue
        if y.ndim == 1:
            y = F.one_hot(y, num_classes).float()
        loss = torch.sum(-y * F.log_softmax(model(x), dim=-1), dim=-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - t0


_epoch.counter = 0


def main(argv=None) -> dict:
    """Run the benchmark; returns (and prints) the JSON dict."""
    args = _parse(argv)
    torch.set_num_threads(args.threads)
    from _train import RandomAugmentDataset, create_model
    from builders.build import create_dataset, load_config
    from imagenet_plus.augment import create_policy
    from imagenet_plus.datasets import ReinforcedDataset
    from imagenet_plus.reinforce import build_reinforcements

    cfg = load_config(ROOT / args.config)
    policy = create_policy(cfg.policy, **({} if cfg.image_size is None else {"output_size": cfg.image_size}))
    base = create_dataset(cfg)
    base = Subset(base, range(min(args.samples, len(base))))
    num_classes = 10
    with tempfile.TemporaryDirectory(prefix="training-cost-") as tmp:
        t0 = time.perf_counter()
        build_reinforcements(base, Path(tmp) / "store", policy=policy, teacher=_RandomTeacher(policy, num_classes),
                             num_classes=num_classes, num_augmentations=args.num_augmentations, topk=cfg.topk,
                             seed=0, dataset_name=cfg.dataset, teacher_desc={"models": ["random SmallCNN"]},
                             samples_per_shard=512, augs_per_shard=min(16, args.num_augmentations),
                             batch_size=128, progress=False)
        build_seconds = time.perf_counter() - t0
        datasets = {
            "original": RandomAugmentDataset(base, policy, seed=0),
            "reinforced": ReinforcedDataset(base, Path(tmp) / "store", p_original=0.01, seed=0),
        }
        to_inputs = {
            "original": lambda b: (policy.normalize(b[0]), b[1]),
            "reinforced": lambda b: b,
        }
        loaders = {k: DataLoader(ds, batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
                                 drop_last=True, generator=torch.Generator().manual_seed(0))
                   for k, ds in datasets.items()}
        models, opts = {}, {}
        for k in datasets:
            torch.manual_seed(0)
            models[k] = create_model(args.student, num_classes)
            opts[k] = torch.optim.SGD(models[k].parameters(), lr=0.05, momentum=0.9, nesterov=True)
        epoch_s = {k: [] for k in datasets}
        data_s = {k: [] for k in datasets}
        for k in datasets:  # warm-up: first-touch page faults, allocator, lazy imports
            _epoch(models[k], loaders[k], opts[k], to_inputs[k], num_classes, True)
        for _ in range(args.epochs):
            for k in datasets:
                epoch_s[k].append(_epoch(models[k], loaders[k], opts[k], to_inputs[k], num_classes, True))
            for k in datasets:
                data_s[k].append(_epoch(models[k], loaders[k], opts[k], to_inputs[k], num_classes, False))
    med = {k: float(np.median(v)) for k, v in epoch_s.items()}
    dmed = {k: float(np.median(v)) for k, v in data_s.items()}
    ratio = med["reinforced"] / med["original"]
    result = {
        "benchmark": "training_cost",
        "settings": {"samples": len(base), "num_augmentations": args.num_augmentations, "topk": cfg.topk,
                     "policy": policy.name, "image_size": policy.output_size, "student": args.student,
                     "batch_size": args.batch_size, "workers": args.workers, "threads": args.threads,
                     "timed_epochs": args.epochs},
        "build_seconds": build_seconds,
        "original": {"epoch_seconds": epoch_s["original"], "median_epoch_seconds": med["original"],
                     "data_only_seconds": data_s["original"], "median_data_seconds": dmed["original"]},
        "reinforced": {"epoch_seconds": epoch_s["reinforced"], "median_epoch_seconds": med["reinforced"],
                       "data_only_seconds": data_s["reinforced"], "median_data_seconds": dmed["reinforced"]},
        "ratio": ratio,
        "data_ratio": dmed["reinforced"] / dmed["original"],
        "target_ratio": TARGET_RATIO,
        "meets_target": bool(ratio <= TARGET_RATIO),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
