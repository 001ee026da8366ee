"""Importing apple/ml-dr's reinforcements: import throughput, size imported / archive, training-time reads.

On archives written in ml-dr's published format (the phase-1 writer, ``tests/fakes/mldr_archive.py``)
over a Food-101-layout copy of real photos at ImageNet-like sizes (101 classes):

* ``import``: ``import_mldr`` of the +RA/RE archive (the recommended ImageNet+ format) with every
  core: records/s and samples/s (identity pass and archive pass included);
* ``size``: for every variant's format, the store's bytes (shards + samples file + manifest)
  against the archive's, at the published NS (400; CIFAR 800 and Flowers 8000 use the same
  per-record layout as their variants), and each published archive's projected store size
  (its samples x NS x the store's bytes per record, plus the samples file);
* ``training``: items/s of one training item through ``ReinforcedDataset`` on the imported store
  (mmap'd row, decode the JPEG, identity check, replay, densify) against ml-dr's per-sample-file
  reading measured in the same run: read the sample's whole ``{i}.pth.tar`` from the extracted
  folder, unpickle it (the restricted unpickler: the published files need ``torch.load`` with
  ``weights_only=False`` otherwise), decode one record, the same replay and densify. Interleaved
  rounds, medians.
* ``device_check`` (``--device cuda``): the +M*+R* store's batches through ``DeviceReplay`` on the
  device against the CPU path (the stated bound: mean absolute difference of normalised values
  well below one grey level, 0.017; measured 0.0 on the CPU).

    python benchmarks/mldr_import.py [--quick] [--images-per-class 2] [--ns 400] [--seconds 4] [--workers N]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import fakes.torchvision_data as tvdata  # noqa: E402
from fakes.mldr_archive import PUBLISHED, mldr_config, write_archive  # noqa: E402
from fakes.mldr_copies import mldr_sizes, open_copy  # noqa: E402

#: Published archives (apple/ml-dr README): name -> (dataset, variant, samples, NS, GB).
ARCHIVES = {
    "imagenet_plus_rrc": ("imagenet", "rrc", 1_281_167, 400, 33.4),
    "imagenet_plus_mixing": ("imagenet", "rrc+mix", 1_281_167, 400, 46.3),
    "imagenet_plus_randaug": ("imagenet", "rrc+ra/re", 1_281_167, 400, 37.5),
    "imagenet_plus_mixing_randaug": ("imagenet", "rrc+mix+ra/re", 1_281_167, 400, 53.3),
    "cifar100": ("cifar100", "cifar", 50_000, 800, 2.5),
    "food_101": ("food101", "rrc+ra/re", 75_750, 800, 4.2),
    "flowers_102": ("flowers102", "rrc+ra/re", 1_020, 8000, 0.5),
}
#: Food-101-copy stand-ins for each variant's format (the CIFAR layout differs only in its crop field).
FORMATS = {"rrc": "food_101_rrc", "rrc+mix": "food_101_mixing", "rrc+ra/re": "food_101",
           "rrc+mix+ra/re": "food_101_mixing_randaug"}


def _parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes (1 image per class, NS 8, 0.3 s rounds)")
    p.add_argument("--images-per-class", type=int, default=2, help="training images per class of the copy")
    p.add_argument("--ns", type=int, default=400, help="records per sample of the archives")
    p.add_argument("--seconds", type=float, default=4.0, help="seconds per timed round of the training reads")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the training reads")
    p.add_argument("--workers", type=int, default=None, help="import processes (default: every core)")
    p.add_argument("--image-sides", type=int, nargs=2, default=[300, 500], help="smallest and largest image side")
    p.add_argument("--device", default=None,
                   help="also replay the +M*+R* store's batches with DeviceReplay on this device (e.g. cuda) and "
                        "compare with the CPU path")
    a = p.parse_args(argv)
    if a.quick:
        a.images_per_class, a.ns, a.seconds, a.rounds, a.image_sides = 1, 8, 0.3, 2, [64, 128]
    return a


def _make_copy(root: Path, per_class: int, sides: list[int]) -> None:
    """A Food-101 copy of real photos at ImageNet-like sizes (default 300-500 px sides)."""
    original = tvdata.photo_crops
    tvdata.photo_crops = partial(original, min_size=sides[0], max_size=sides[1])
    try:
        tvdata.make_food101(root, classes=101, n_per_class=per_class, n_test_per_class=0)
    finally:
        tvdata.photo_crops = original


def _store_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def _sizes(tmp: Path, adapter, ns: int, main_import) -> dict:
    """Archive vs store bytes for every variant's format (imported with the package; +RA/RE: the main import)."""
    from imagenet_plus.mldr import import_mldr

    out = {}
    for k, (variant, name) in enumerate(FORMATS.items()):
        if variant == "rrc+ra/re":
            path, r = main_import
        else:
            path = write_archive(tmp / f"{name}.tar.gz", name, sizes=mldr_sizes(adapter), ns=ns, seed=k).path
            r = import_mldr(path, tmp / f"size-{k}", dataset="food101", adapter=adapter, progress=False)
        archive, store = path.stat().st_size, _store_bytes(r.out)
        out[variant] = {"archive_bytes": archive, "store_bytes": store, "ratio": round(store / archive, 4),
                        "archive_bytes_per_record": round(archive / r.records, 2),
                        "store_record_bytes": r.manifest.record_bytes}
    return out


def _projection() -> dict:
    """Each published archive's store size: samples x NS x bytes per record, plus the samples file."""
    from imagenet_plus.augment import create_policy
    from imagenet_plus.mldr import parse_config
    from imagenet_plus.mldr._convert import policy_config
    from imagenet_plus.schema import target_fields

    out = {}
    for name, (dataset, variant, n, ns, gb) in ARCHIVES.items():
        lay = parse_config(mldr_config(dataset, variant, ns=ns))
        fields = [*create_policy(policy_config(lay)).fields, *target_fields(lay.num_classes, lay.topk)]
        record = sum(f.nbytes for f in fields)
        samples_file = n * (4 + 8 + 8 + 64 + 8 + 32)  # label, digest, size, fingerprint, key offset, ~32-byte key
        total = n * ns * record + samples_file
        out[name] = {"variant": variant, "samples": n, "ns": ns, "published_gb": gb, "record_bytes": record,
                     "projected_gb": round(total / 1e9, 2), "ratio": round(total / (gb * 1e9), 3)}
    return out


def _mldr_item(folder: Path, layout, converter, policy, adapter, num_classes: int, i: int, rng: random.Random):
    """ml-dr's loader for item i: the whole sample file, unpickled, one record decoded, replayed, densified."""
    from imagenet_plus.mldr import decode_records, load_torch_file
    from imagenet_plus.mldr._convert import field_offsets, read_field
    from imagenet_plus.targets import densify

    name = folder / f"{i}.pth.tar"
    index, records = load_torch_file(name.read_bytes(), str(name))
    j = rng.randrange(len(records))
    one = decode_records((index, [records[j]]), str(name), layout)
    _, rows, _ = converter.convert(one, str(name))
    params = {f.name: read_field(rows, f, off)[0] for f, off in field_offsets(converter.fields)
              if f.name[:4] != "topk"}
    x = policy(adapter.load(i).image, params)
    return x, densify(one.ids[0], one.probs[0], num_classes)


def _training(tmp: Path, adapter, ns: int, seconds: float, rounds: int, main_import) -> dict:
    """Items/s of the imported store through ReinforcedDataset vs ml-dr's per-sample-file reads (same run)."""
    import tarfile

    import torch

    from imagenet_plus.datasets import ReinforcedDataset
    from imagenet_plus.mldr import parse_config
    from imagenet_plus.mldr._convert import Converter

    path, r = main_import
    with tarfile.open(path, "r:gz") as tf:  # ml-dr reads the extracted folder, one file per sample
        tf.extractall(tmp / "extracted", filter="data")
    folder = tmp / "extracted"
    torch.set_num_threads(1)
    ds = ReinforcedDataset(adapter, r.out, p_original=0.0, seed=0)
    lay = dataclasses.replace(parse_config(mldr_config("food101", "rrc+ra/re", ns=ns)), num_augmentations=1)
    conv = Converter(lay, ds.store.manifest.fields, ds.store.image_sizes, None)
    root = next(p for p in folder.rglob("config.pth.tar")).parent
    rng = random.Random(0)
    n = len(adapter)
    arms = {"ours": lambda i: ds[i],
            "mldr": lambda i: _mldr_item(root, lay, conv, ds.policy, adapter, r.manifest.num_classes, i, rng)}
    rates: dict[str, list[float]] = {k: [] for k in arms}
    for arm in arms.values():  # warm the page cache and the lazy state on both sides
        for i in range(min(n, 16)):
            arm(i)
    for _ in range(rounds):
        for name, arm in arms.items():
            count, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                arm(rng.randrange(n))
                count += 1
            rates[name].append(count / (time.perf_counter() - t0))
    ours, mldr = float(np.median(rates["ours"])), float(np.median(rates["mldr"]))
    return {"ours_items_per_s": round(ours, 1), "mldr_items_per_s": round(mldr, 1), "ratio": round(ours / mldr, 3),
            "rounds": {k: [round(v, 1) for v in vs] for k, vs in rates.items()},
            "mldr_sample_file_bytes": int(np.mean([p.stat().st_size for p in root.glob("*.pth.tar")])),
            "ns": ns, "threads": 1}


def _device_check(store: Path, adapter, device: str) -> dict:
    """DeviceReplay on ``device`` vs the CPU path, on the same items of an imported mixing store."""
    from torch.utils.data import default_collate

    from imagenet_plus.datasets import ReinforcedDataset
    from imagenet_plus.replay import DeviceReplay

    ds = ReinforcedDataset(adapter, store, p_original=0.1, seed=0)
    idx = list(range(min(len(ds), 96)))
    x, y = ds.source.items(idx)
    dx, dy = DeviceReplay(ds.policy, ds.num_classes, device=device)(default_collate(ds.source.device_items(idx)))
    diff = (dx.cpu() - x).abs()
    return {"device": device, "items": len(idx), "max_abs_diff": float(diff.max()),
            "mean_abs_diff": float(diff.mean()), "fraction_exact": float((diff == 0).float().mean()),
            "target_max_abs_diff": float((dy.cpu() - y).abs().max())}


def main(argv=None) -> dict:
    a = _parse(argv)
    from imagenet_plus.mldr import import_mldr

    for k, v in {"food_101_rrc": ("food101", "rrc"), "food_101_mixing": ("food101", "rrc+mix"),
                 "food_101_mixing_randaug": ("food101", "rrc+mix+ra/re")}.items():
        PUBLISHED.setdefault(k, v)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        _make_copy(tmp / "food", a.images_per_class, a.image_sides)
        adapter = open_copy(tmp / "food", "food101")
        fa = write_archive(tmp / "food_101.tar.gz", "food_101", sizes=mldr_sizes(adapter), ns=a.ns, seed=0)
        t0 = time.perf_counter()
        r = import_mldr(fa.path, tmp / "store", dataset="food101", adapter=adapter, workers=a.workers, progress=False)
        seconds = time.perf_counter() - t0
        result = {
            "benchmark": "mldr_import",
            "settings": {"samples": len(adapter), "ns": a.ns,
                         "workers": a.workers if a.workers is not None else len(os.sched_getaffinity(0)),
                         "image_sides": a.image_sides, "quick": a.quick},
            "import": {"records": r.records, "seconds": round(seconds, 3),
                       "records_per_s": round(r.records / seconds, 1),
                       "samples_per_s": round(len(adapter) / seconds, 1), "timings": r.timings,
                       "archive_bytes": r.archive_bytes, "store_bytes": r.store_bytes,
                       "ratio": round(r.store_bytes / r.archive_bytes, 4)},
            "size": _sizes(tmp, adapter, a.ns, (fa.path, r)),
            "projected": _projection(),
            "training": _training(tmp, adapter, a.ns, a.seconds, a.rounds, (fa.path, r)),
        }
        if a.device:
            result["device_check"] = _device_check(tmp / f"size-{list(FORMATS).index('rrc+mix+ra/re')}", adapter,
                                                   a.device)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
