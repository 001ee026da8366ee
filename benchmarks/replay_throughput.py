"""Per-sample CPU replay throughput vs torchvision v2's equivalent random pipeline (one thread).

Replay: decode the JPEG, read the record's params and top-k targets from a real store
(written with ``imagenet_plus.store.write_store``), ``Policy.apply``, normalise, densify.
Dataset path: the same JPEGs as an ImageFolder read through ``ReinforcedDataset.__getitems__`` in
batches of 32 (what a DataLoader worker does: decode, identity check, one batched store read,
crop per item, one batched finish, normalise, densify); ``dataset_ratio`` = its items/s over the
baseline's (reported: it also reads each file and checks its digest, which the baseline does not),
``ratio`` the same for the per-record path above (>= 1.0 required).
Baseline: torchvision v2 ``RandomResizedCrop(224) + RandomHorizontalFlip + RandAugment +
ToImage/ToDtype/Normalize + RandomErasing`` on the same JPEGs, on the PIL backend and on
the tensor backend; the faster one is the baseline. Prints one JSON object; ``ratio`` =
replay images/s / baseline images/s (>= 1.0 required); rates are medians of
interleaved rounds so that a busy machine slows every pipeline alike.

Also reported, per record on pre-decoded images (``per_record_us``): ``Policy.apply``
(crop + finish + the params check), ``Policy.check_params`` alone and ``Policy.sample``
for one record given as Python ints (medians of repeated timings, in this process's CPU time).

    python benchmarks/replay_throughput.py [--images 24] [--seconds 6] [--policy rrc+ra/re]
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imagenet_plus.augment import create_policy  # noqa: E402


def make_jpegs(n: int) -> list[bytes]:
    """ImageNet-like JPEGs (~500x375, quality 90) from the real photos bundled with sklearn/skimage."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    photos = [Image.fromarray(a) for a in load_sample_images().images]
    photos += [Image.fromarray(f()) for f in (skimage.data.astronaut, skimage.data.coffee, skimage.data.chelsea,
                                             skimage.data.rocket, skimage.data.hubble_deep_field)]
    sizes = [(500, 375), (375, 500), (500, 333), (500, 500), (440, 330)]
    out = []
    for k in range(n):
        im = photos[k % len(photos)].convert("RGB").resize(sizes[k % len(sizes)], Image.BILINEAR)
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def _decode(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.draft("RGB", im.size)  # no-op for RGB JPEGs; keeps decode identical in both pipelines
    return im.convert("RGB")


def _time_interleaved(fns: dict, items, seconds: float, rounds: int) -> dict[str, float]:
    """Median images/s of each pipeline over ``rounds`` interleaved rounds (robust to a busy machine)."""
    for fn in fns.values():  # warm-up
        for it in items[:4]:
            fn(it)
    rates: dict[str, list[float]] = {k: [] for k in fns}
    per_round = seconds / rounds
    for _ in range(rounds):
        for name, fn in fns.items():
            n, t0 = 0, time.perf_counter()
            while True:
                fn(items[n % len(items)])
                n += 1
                dt = time.perf_counter() - t0
                if dt >= per_round:
                    break
            rates[name].append(n / dt)
    return {k: float(np.median(v)) for k, v in rates.items()}


def _per_record_us(policy, images, params, repeats: int = 7) -> dict[str, float]:
    """Median microseconds per call of apply / check_params / sample on single records."""
    import timeit

    recs = list(zip(images, params))
    sizes = [(im.size[1], im.size[0]) for im in images]

    def med(fn, number):  # CPU time of this process: other processes on a busy machine do not count
        return float(np.median(timeit.repeat(fn, number=number, repeat=repeats, timer=time.process_time))) \
            / number * 1e6

    def apply_all():
        for im, prm in recs:
            policy.apply(im, prm)

    def check_all():
        for _, prm in recs:
            policy.check_params(prm)

    def sample_all():
        for k, (h, w) in enumerate(sizes):
            policy.sample(0, k, 3, h, w, num_samples=len(sizes))

    return {"apply": round(med(apply_all, 1) / len(recs), 1), "check_params": round(med(check_all, 20) / len(recs), 2),
            "sample": round(med(sample_all, 20) / len(sizes), 2)}


def _store(root: Path, policy, jpegs, num_aug: int, num_classes=1000, topk=10):
    """A real store on disk with the policy's params for every (sample, aug); returns the opened store."""
    from imagenet_plus.identity import digest_bytes, fingerprint
    from imagenet_plus.store import open_store, write_store

    sizes = [Image.open(io.BytesIO(b)).size for b in jpegs]
    N = len(jpegs)
    i, j = np.meshgrid(np.arange(N), np.arange(num_aug), indexing="ij")
    H = np.array([s[1] for s in sizes])[i]
    W = np.array([s[0] for s in sizes])[i]
    prm = policy.sample(0, i.ravel(), j.ravel(), H.ravel(), W.ravel(), num_samples=N)
    prm = {k: v.reshape((N, num_aug) + v.shape[1:]) for k, v in prm.items()}
    rng = np.random.default_rng(0)
    ids = np.stack([rng.permutation(num_classes)[:topk] for _ in range(N * num_aug)]).reshape(N, num_aug, topk)
    probs = -np.sort(-rng.dirichlet(np.ones(topk + 1) * 0.3, size=(N, num_aug))[..., :topk], axis=-1)
    write_store(root, dataset="bench", split="train", num_classes=num_classes, policy=policy.config,
                teacher={"name": "random"}, seed=0, builder_version="bench", params=prm, topk_ids=ids,
                topk_probs=probs, labels=np.zeros(N, np.int32), keys=[f"{k}.jpg" for k in range(N)],
                hashes=np.stack([digest_bytes(b) for b in jpegs]), sizes=np.array([s[::-1] for s in sizes], np.uint32),
                fingerprints=np.stack([fingerprint(Image.open(io.BytesIO(b)).convert("RGB")) for b in jpegs]),
                param_fields=list(policy.fields))
    return open_store(root)


def _dataset(tmp: Path, policy, jpegs, num_aug: int):
    """``ReinforcedDataset`` over an ImageFolder of the same JPEGs (identity checked on every decode)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from fakes.replay_store import write_replay_store
    from imagenet_plus.adapters import create_adapter
    from imagenet_plus.datasets import ReinforcedDataset

    for k, data in enumerate(jpegs):
        (tmp / "data" / f"c{k % 4}").mkdir(parents=True, exist_ok=True)
        (tmp / "data" / f"c{k % 4}" / f"{k:04d}.jpg").write_bytes(data)
    adapter = create_adapter("imagefolder", tmp / "data", "train")
    write_replay_store(tmp / "ds-store", adapter, policy, num_augmentations=num_aug, topk=3)
    return ReinforcedDataset(adapter, tmp / "ds-store", seed=0, p_original=0.0)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--augs", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=8.0, help="timing window per pipeline")
    ap.add_argument("--rounds", type=int, default=8, help="interleaved timing rounds (median is reported)")
    ap.add_argument("--policy", default="rrc+ra/re")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from imagenet_plus.targets import densify

    jpegs = make_jpegs(args.images)
    policy = create_policy(args.policy)
    if policy.uses_mix:
        ap.error("this benchmark compares single-image policies; pick rrc, rrc+ra/re or cifar")
    with tempfile.TemporaryDirectory() as tmp:
        store = _store(Path(tmp) / "store", policy, jpegs, args.augs)
        records = [(k, a) for a in range(args.augs) for k in range(args.images)]

        def replay(rec):
            i, j = rec
            img = _decode(jpegs[i])
            x = policy.normalize(policy.apply(img, store.params(i, j)))
            ids, probs = store.targets(i, j)
            return x, densify(torch.from_numpy(ids), torch.from_numpy(probs), store.num_classes)

        ra = policy.config["randaugment"] or {}
        re = policy.config["erasing"]
        mean, std = list(policy.mean), list(policy.std)
        ra_t = [v2.RandAugment(ra["num_ops"], ra["magnitude"], ra["num_magnitude_bins"])] if ra else []
        re_t = [v2.RandomErasing(p=re["p"], scale=re["scale"], ratio=re["ratio"], value=0)] if re else []
        geo = [v2.RandomResizedCrop(policy.output_size, antialias=True), v2.RandomHorizontalFlip()]
        tail = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)] + re_t
        pil_pipe = v2.Compose(geo + ra_t + [v2.PILToTensor()] + tail)
        tensor_pipe = v2.Compose([v2.PILToTensor()] + geo + ra_t + tail)

        dataset = _dataset(Path(tmp), policy, jpegs, args.augs)
        batch = 32

        def dataset_batch(rec):  # one DataLoader batch through ReinforcedDataset.__getitems__
            k = rec[0]
            return dataset.__getitems__([(k + b) % len(dataset) for b in range(batch)])

        results = _time_interleaved({
            "replay": replay,
            "dataset_batch": dataset_batch,
            "torchvision_pil": lambda rec: pil_pipe(_decode(jpegs[rec[0]])),
            "torchvision_tensor": lambda rec: tensor_pipe(_decode(jpegs[rec[0]])),
            "decode_only": lambda rec: _decode(jpegs[rec[0]]),
        }, records, args.seconds, args.rounds)
        decode_only = results.pop("decode_only")
        results["dataset_batch"] *= batch  # calls/s -> items/s
        decoded = [_decode(jpegs[i]) for i, _ in records]
        per_record = _per_record_us(policy, decoded, [store.params(i, j) for i, j in records])
    base_name = max(("torchvision_pil", "torchvision_tensor"), key=results.get)
    out = {
        "benchmark": "replay_throughput", "policy": policy.name, "output_size": policy.output_size,
        "threads": torch.get_num_threads(), "images": args.images, "jpeg_quality": 90, "rounds": args.rounds,
        "replay_images_per_s": round(results["replay"], 1),
        "dataset_items_per_s": round(results["dataset_batch"], 1),
        "torchvision_pil_images_per_s": round(results["torchvision_pil"], 1),
        "torchvision_tensor_images_per_s": round(results["torchvision_tensor"], 1),
        "decode_only_images_per_s": round(decode_only, 1),
        "per_record_us": per_record,
        "baseline": base_name,
        "ratio": round(results["replay"] / results[base_name], 3),
        "dataset_ratio": round(results["dataset_batch"] / results[base_name], 3),
    }
    out["ok"] = out["ratio"] >= 1.0  # the target: per-record replay ahead of torchvision's pipeline
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
