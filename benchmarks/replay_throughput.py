"""CPU replay throughput per core against torchvision v2 on ImageNet-size JPEGs (one thread).

Pipelines, each measured in the same run as the others (interleaved rounds, the median
reported, so that a busy machine slows every pipeline alike), on ImageNet-size JPEGs made from
the real photos bundled with scikit-learn and scikit-image (mean 484x404, quality 90):

* ``dataset_batch``: ``ReinforcedDataset.__getitems__`` in batches of 32 over an ImageFolder of
  the JPEGs (what a DataLoader worker does: read the file, check its sha256, decode, one batched
  store read, crop per item, one batched finish, normalise, densify); also with the decoder
  forced to PIL (``dataset_batch_pil``) and to ``torchvision.io.decode_jpeg``
  (``dataset_batch_torchvision_io``), to show what the JPEG decoder brings;
* ``dataset_item``: ``ReinforcedDataset.__getitem__``, one item per call;
* ``torchvision_pil``: torchvision v2 ``RandomResizedCrop(224) + RandomHorizontalFlip +
  RandAugment + ToDtype/Normalize + RandomErasing`` on PIL images (PIL decode);
* ``torchvision_fastest``: the faster of the same transforms on tensors decoded by
  ``torchvision.io.decode_jpeg`` and on PIL-decoded tensors (``torchvision_tensor_*``);
* ``decode_*``: decoding alone, by PIL, simplejpeg and ``torchvision.io.decode_jpeg``.

``items_per_s`` are per core (one thread); ``ratios`` divide the dataset paths by both
torchvision baselines. ``steps_ms`` times each step of one batched item before (the code up to
0c0c269: PIL decode, PIL crop + copy, grouped RandAugment, a mask for erasing) and after (this
code), in this process's CPU time. ``anchors`` are the published figures the README compares with.

    python benchmarks/replay_throughput.py [--images 35] [--seconds 8] [--rounds 21] [--policy rrc+ra/re]
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

from imagenet_plus import imageio  # noqa: E402
from imagenet_plus.augment import create_policy  # noqa: E402
from imagenet_plus.augment import ops as _ops  # noqa: E402

#: Published throughputs the README's table sets ours against (images/s per CPU core or worker).
ANCHORS = {
    "ffcv_images_per_s_per_vcpu": 326,  # FFCV, ImageNet at 512 px max side
    "timm_images_per_s_per_worker": [190, 250],  # timm's loaders
    "jpeg_decode_images_per_s_per_core": [700, 860],  # full-size ImageNet JPEG decoding alone, x86
}
#: (width, height) of the JPEGs, cycled: mean 484 x 404, about ImageNet's mean.
SIZES = [(500, 375), (375, 500), (500, 333), (500, 500), (545, 312)]
BATCH = 32


def make_jpegs(n: int) -> list[bytes]:
    """ImageNet-size JPEGs (mean 484x404, quality 90) from the real photos bundled with sklearn/skimage."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    photos = [Image.fromarray(a) for a in load_sample_images().images]
    photos += [Image.fromarray(f()) for f in (skimage.data.astronaut, skimage.data.coffee, skimage.data.chelsea,
                                             skimage.data.rocket, skimage.data.hubble_deep_field)]
    out = []
    for k in range(n):
        im = photos[k % len(photos)].convert("RGB").resize(SIZES[k % len(SIZES)], Image.BILINEAR)
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def _decode(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.draft("RGB", im.size)  # no-op for RGB JPEGs; keeps decode identical in both pipelines
    return im.convert("RGB")


def _decode_tv(data: bytes) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_jpeg

    return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)


def _tv_as_fast_decoder(data, **_kw) -> np.ndarray:
    """``torchvision.io.decode_jpeg`` in the place of simplejpeg (its [3, H, W] result is a view of HWC pixels)."""
    return _decode_tv(data).permute(1, 2, 0).numpy()


class _Decoder:
    """Runs the package's JPEG decoding with ``name`` ("simplejpeg", "pil", "torchvision.io") while active."""

    def __init__(self, name: str):
        self.name = name

    def __enter__(self):
        imageio.jpeg_decoder()  # the self-check has run: the trusted decoder is known
        self.saved = dict(imageio._state)
        if self.name == "pil":
            imageio._state["forced"] = "pil"
        elif self.name == "torchvision.io":
            imageio._state["trusted"] = _tv_as_fast_decoder
        return self

    def __exit__(self, *exc):
        imageio._state.update(self.saved)


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
    """Median microseconds per call of apply / check_params / sample on single records (decoded images)."""
    import timeit

    recs = list(zip(images, params))
    sizes = [imageio.image_size(im) for im in images]

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


def build_dataset_path(tmp: Path, policy, jpegs, num_aug: int):
    """The dataset path measured here: ``ReinforcedDataset`` over an ImageFolder of the JPEGs and a real
    store of them (identity checked on every decode, no originals)."""
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


def _torchvision_pipes(policy) -> dict:
    ra = policy.config["randaugment"] or {}
    re = policy.config["erasing"]
    ra_t = [v2.RandAugment(ra["num_ops"], ra["magnitude"], ra["num_magnitude_bins"])] if ra else []
    re_t = [v2.RandomErasing(p=re["p"], scale=re["scale"], ratio=re["ratio"], value=0)] if re else []
    geo = [v2.RandomResizedCrop(policy.output_size, antialias=True), v2.RandomHorizontalFlip()]
    tail = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(policy.mean), list(policy.std))] + re_t
    pil = v2.Compose(geo + ra_t + [v2.PILToTensor()] + tail)
    tensor = v2.Compose(geo + ra_t + tail)
    return {"pil": pil, "tensor": tensor}


def _pipelines(dataset, policy, jpegs, views: dict) -> dict:
    """Every timed pipeline: ``name -> (fn(record) -> anything, items per call)``; ``views``: ``{M: dataset with
    records_per_decode=M}`` (a call asks for ``BATCH / M`` samples, so it yields ``BATCH`` items too)."""
    import simplejpeg

    n = len(dataset)

    def several(m):
        return lambda rec: views[m].__getitems__([(rec + b) % n for b in range(BATCH // m)])
    tv = _torchvision_pipes(policy)

    def batch(decoder):
        def run(rec):
            with _Decoder(decoder):
                return dataset.__getitems__([(rec + b) % n for b in range(BATCH)])
        return run

    return {
        "dataset_batch": (batch("simplejpeg"), BATCH),
        "dataset_batch_pil": (batch("pil"), BATCH),
        "dataset_batch_torchvision_io": (batch("torchvision.io"), BATCH),
        **{f"dataset_batch_m{m}": (several(m), BATCH // m * m) for m in views},
        "dataset_item": (lambda rec: dataset[rec % n], 1),
        "torchvision_pil": (lambda rec: tv["pil"](_decode(jpegs[rec % len(jpegs)])), 1),
        "torchvision_tensor_io": (lambda rec: tv["tensor"](_decode_tv(jpegs[rec % len(jpegs)])), 1),
        "torchvision_tensor_pil": (lambda rec: tv["tensor"](v2.functional.pil_to_tensor(
            _decode(jpegs[rec % len(jpegs)]))), 1),
        "decode_pil": (lambda rec: _decode(jpegs[rec % len(jpegs)]), 1),
        "decode_simplejpeg": (lambda rec: simplejpeg.decode_jpeg(jpegs[rec % len(jpegs)], colorspace="RGB"), 1),
        "decode_torchvision_io": (lambda rec: _decode_tv(jpegs[rec % len(jpegs)]), 1),
    }


def _cpu_ms(fn, items: list, repeats: int = 5) -> float:
    """Median CPU milliseconds of ``fn(item)`` per item over ``repeats`` passes."""
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        for it in items:
            fn(it)
        times.append((time.process_time() - t0) / len(items) * 1e3)
    return round(float(np.median(times)), 3)


def _old_crop(policy, image: Image.Image, prm) -> torch.Tensor:
    """The crop up to 0c0c269: PIL crop, ``np.array`` copy, the same resize and flip."""
    from torchvision.transforms.v2 import functional as F

    geo, flip = policy.stages[0], policy.stages[1]
    top, left, h, w = geo.box(image, prm)
    region = torch.from_numpy(np.array(image.crop((left, top, left + w, top + h)))).permute(2, 0, 1)
    x = flip.crop(F.resize(region, [geo.size, geo.size], interpolation=geo.interpolation, antialias=True), prm)
    return torch.from_numpy(np.ascontiguousarray(x.numpy()))


def _steps(policy, jpegs) -> dict:
    """ms per item of each step, before (the code up to 0c0c269) and after (this code)."""
    n = len(jpegs)
    pils = [imageio.decode_bytes(d) for d in jpegs]
    arrays = [imageio.decode_rgb(d) for d in jpegs]
    prm = [policy.sample(0, k, 0, a.height, a.width, num_samples=n) for k, a in enumerate(arrays)]
    out = {"decode": {"before": _cpu_ms(imageio.decode_bytes, jpegs), "after": _cpu_ms(imageio.decode_rgb, jpegs)}}
    if policy.config["geometry"]["kind"] == "rrc":
        out["crop_resize_flip"] = {"before": _cpu_ms(lambda k: _old_crop(policy, pils[k], prm[k]), list(range(n))),
                                   "after": _cpu_ms(lambda k: policy.crop(arrays[k], prm[k]), list(range(n)))}
    B = BATCH
    crops = torch.stack([policy.crop(arrays[k % n], prm[k % n]) for k in range(B)])
    rows = np.arange(B) % n
    hw = np.array([(arrays[k].height, arrays[k].width) for k in rows])
    batch = policy._batch(policy.sample(0, rows, np.arange(B) // n, hw[:, 0], hw[:, 1], num_samples=n), "bench")
    names = [s.name for s in policy.stages]
    if "randaugment" in names:
        ra = policy.stages[names.index("randaugment")]
        codes = ra.codes(batch)
        codes2 = (codes & 15) * 2 + (codes >> 4)
        c = ra.config

        def run(x, code):
            op = _ops.RA_OPS[code // 2]
            if op == "Identity":
                return x
            m = _ops.ra_magnitude(op, c["magnitude"], c["num_magnitude_bins"], crops.shape[-2], crops.shape[-1],
                                  bool(code % 2))
            return _ops.apply_ra_op(x, op, m, c["interpolation"], c["fill"])
        out["randaugment"] = {"before": round(_cpu_ms(lambda _: _ops._grouped(crops, codes2, run), [0]) / B, 3),
                              "after": round(_cpu_ms(lambda _: ra.finish(crops, batch), [0]) / B, 3)}
    if "erasing" in names:
        boxes = batch.fields["erase"]
        mask = lambda _: crops.masked_fill(_ops._box_mask(torch.from_numpy(boxes), *crops.shape[-2:]), 0)  # noqa
        out["erasing"] = {"before": round(_cpu_ms(mask, [0]) / B, 3),
                          "after": round(_cpu_ms(lambda _: _ops.erase(crops, boxes, 0), [0]) / B, 3)}
    out["normalise"] = {"after": round(_cpu_ms(lambda _: policy.normalize(crops), [0]) / B, 3)}
    return out


def _report(rates: dict, args, policy, steps, per_record) -> dict:
    fastest = max(("torchvision_tensor_io", "torchvision_tensor_pil"), key=rates.get)
    rates["torchvision_fastest"] = rates[fastest]
    ratios = {}
    views = sorted(k for k in rates if k.startswith("dataset_batch_m"))
    for path in ("dataset_batch", *views, "dataset_batch_pil", "dataset_batch_torchvision_io", "dataset_item"):
        ratios[path] = {"vs_torchvision_pil": round(rates[path] / rates["torchvision_pil"], 3),
                        "vs_torchvision_fastest": round(rates[path] / rates["torchvision_fastest"], 3)}
    out = {
        "benchmark": "replay_throughput", "policy": policy.name, "output_size": policy.output_size,
        "threads": torch.get_num_threads(), "images": args.images, "mean_size": _mean_size(args.images),
        "jpeg_quality": 90, "rounds": args.rounds, "batch": BATCH, "decoder": imageio.jpeg_decoder(),
        "items_per_s": {k: round(v, 1) for k, v in rates.items()},
        "ms_per_item": {k: round(1e3 / v, 3) for k, v in rates.items()},
        "torchvision_fastest": fastest, "ratios": ratios,
        "simplejpeg_gain": {"vs_pil": round(rates["dataset_batch"] / rates["dataset_batch_pil"], 3),
                            "vs_torchvision_io": round(rates["dataset_batch"] / rates["dataset_batch_torchvision_io"],
                                                       3)},
        "steps_ms": steps, "per_record_us": per_record, "anchors": ANCHORS,
        "targets": {"vs_torchvision_pil": 1.8, "vs_torchvision_fastest": 1.5, "m4_vs_torchvision_pil": 2.5},
    }
    r = ratios["dataset_batch"]
    out["ok"] = r["vs_torchvision_pil"] >= 1.8 and r["vs_torchvision_fastest"] >= 1.5 and \
        ratios.get("dataset_batch_m4", {"vs_torchvision_pil": 2.5})["vs_torchvision_pil"] >= 2.5
    return out


def _mean_size(n: int) -> list[float]:
    sizes = [SIZES[k % len(SIZES)] for k in range(n)]
    return [round(float(np.mean([s[0] for s in sizes])), 1), round(float(np.mean([s[1] for s in sizes])), 1)]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=35, help="JPEGs (35: every photo at every size, mean 484x404)")
    ap.add_argument("--augs", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=8.0, help="timing window per pipeline, over all rounds")
    ap.add_argument("--rounds", type=int, default=21, help="interleaved timing rounds (the median is reported)")
    ap.add_argument("--policy", default="rrc+ra/re")
    ap.add_argument("--views", default="4", help="records_per_decode values measured beside M=1 (comma list; '' none)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    jpegs = make_jpegs(args.images)
    policy = create_policy(args.policy)
    if policy.uses_mix:
        ap.error("this benchmark compares single-image policies; pick rrc, rrc+ra/re or cifar")
    with tempfile.TemporaryDirectory() as tmp:
        dataset = build_dataset_path(Path(tmp), policy, jpegs, args.augs)
        from imagenet_plus.datasets import ReinforcedDataset

        views = {int(m): ReinforcedDataset(dataset.adapter, Path(tmp) / "ds-store", seed=0, p_original=0.0,
                                           records_per_decode=int(m)) for m in args.views.split(",") if m.strip()}
        pipes = _pipelines(dataset, policy, jpegs, views)
        records = list(range(len(dataset)))
        rates = _time_interleaved({k: fn for k, (fn, _) in pipes.items()}, records, args.seconds, args.rounds)
        rates = {k: v * pipes[k][1] for k, v in rates.items()}  # calls/s -> items/s
    steps = _steps(policy, jpegs)
    decoded = [imageio.decode_rgb(d) for d in jpegs]
    prm = [policy.sample(0, k, 0, im.height, im.width, num_samples=len(jpegs)) for k, im in enumerate(decoded)]
    out = _report(rates, args, policy, steps, _per_record_us(policy, decoded, prm))
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
