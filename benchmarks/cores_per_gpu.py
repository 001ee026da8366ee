"""CPU cores per GPU needed to keep a ResNet-50 / MobileNetV3-L (bf16, channels_last) fed, per loader pipeline.

Three loaders, each what one DataLoader worker does per batch of 32, on one thread, on ImageNet-size
JPEGs (real photos, about 500x375, quality 90), measured here in interleaved rounds (median items/s):

* ``torchvision_v2``: PIL decode + ``RandomResizedCrop(224) + RandomHorizontalFlip + RandAugment(2, 9)
  + ToDtype/Normalize + RandomErasing``, then ``torch.stack`` (its PIL and tensor backends; the faster
  one counts);
* ``cpu_replay``: ``ReinforcedDataset.__getitems__`` on the CPU path (decode, identity check, records,
  crop, RandAugment, erasing, normalise, densify) and ``default_collate``;
* ``device_replay_workers``: ``ReinforcedDataset(..., decode="device").__getitems__`` (read the file,
  sha256 digest and identity check, JPEG header, records; no decode) and its ``collate_fn``. The GPU
  then decodes (nvJPEG), crops, resizes and finishes the batch (``DeviceReplay``).

The student's training rate (forward + backward + SGD step, bf16 autocast, channels_last, batch 256,
random init, torchvision's ``resnet50`` / ``mobilenet_v3_large``) is measured only on CUDA; so is
``DeviceReplay``'s GPU time per image, which the device replay adds to every training step on the same
GPU (its training rate is ``1 / (1/model + 1/replay)``). ``cores_per_gpu = training rate / per-core
rate``. Without CUDA these are ``null`` with ``"unmeasured"`` beside them: never an invented number.

    python benchmarks/cores_per_gpu.py [--device cuda] [--images 24] [--seconds 6] [--rounds 6]
    python benchmarks/cores_per_gpu.py --quick      # small sizes, any machine
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from replay_throughput import _time_interleaved, make_jpegs  # noqa: E402

MODELS = {"resnet50": "resnet50", "mobilenetv3_large": "mobilenet_v3_large"}
WORKER_BATCH = 32


def _datasets(tmp: Path, policy_name: str, jpegs: list[bytes], num_aug: int, size: int):
    """ImageFolder of ``jpegs`` with a store over it; the CPU-path and the device-decoding datasets."""
    from fakes.replay_store import write_replay_store
    from imagenet_plus.adapters import create_adapter
    from imagenet_plus.augment import create_policy
    from imagenet_plus.datasets import ReinforcedDataset

    for k, data in enumerate(jpegs):
        (tmp / "data" / f"c{k % 4}").mkdir(parents=True, exist_ok=True)
        (tmp / "data" / f"c{k % 4}" / f"{k:04d}.jpg").write_bytes(data)
    adapter = create_adapter("imagefolder", tmp / "data", "train")
    policy = create_policy(policy_name, output_size=size)
    write_replay_store(tmp / "store", adapter, policy, num_augmentations=num_aug, topk=3)
    kw = dict(seed=0, p_original=0.01)
    return policy, ReinforcedDataset(adapter, tmp / "store", **kw), \
        ReinforcedDataset(adapter, tmp / "store", decode="device", **kw)


def _torchvision_pipes(policy):
    from torchvision.transforms import v2

    ra = policy.config["randaugment"] or {}
    re = policy.config["erasing"]
    ra_t = [v2.RandAugment(ra["num_ops"], ra["magnitude"], ra["num_magnitude_bins"])] if ra else []
    re_t = [v2.RandomErasing(p=re["p"], scale=re["scale"], ratio=re["ratio"], value=0)] if re else []
    geo = [v2.RandomResizedCrop(policy.output_size, antialias=True), v2.RandomHorizontalFlip()]
    tail = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(policy.mean), list(policy.std))] + re_t
    return v2.Compose(geo + ra_t + [v2.PILToTensor()] + tail), v2.Compose([v2.PILToTensor()] + geo + ra_t + tail)


def per_core_rates(jpegs: list[bytes], seconds: float, rounds: int, size: int = 224, policy_name: str = "rrc+ra/re",
                   num_aug: int = 4) -> dict:
    """Items/s of one thread for each loader pipeline (batches of 32, interleaved rounds, medians)."""
    import io

    from PIL import Image
    from torch.utils.data import default_collate

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        policy, cpu, dev = _datasets(Path(tmp), policy_name, jpegs, num_aug, size)
        pil_pipe, tensor_pipe = _torchvision_pipes(policy)
        n = len(cpu)

        def batch_of(k):
            return [(k + b) % n for b in range(WORKER_BATCH)]

        def tv(pipe):
            return lambda k: torch.stack([pipe(Image.open(io.BytesIO(jpegs[i])).convert("RGB")) for i in batch_of(k)])

        fns = {
            "torchvision_v2_pil": tv(pil_pipe),
            "torchvision_v2_tensor": tv(tensor_pipe),
            "cpu_replay": lambda k: default_collate(cpu.__getitems__(batch_of(k))),
            "device_replay_workers": lambda k: dev.collate_fn(dev.__getitems__(batch_of(k))),
        }
        calls = _time_interleaved(fns, list(range(n)), seconds, rounds)
    rates = {k: round(v * WORKER_BATCH, 1) for k, v in calls.items()}
    tv_best = max(("torchvision_v2_pil", "torchvision_v2_tensor"), key=rates.get)
    rates["torchvision_v2"] = rates[tv_best]
    rates["torchvision_v2_backend"] = tv_best.rsplit("_", 1)[1]
    return rates


def training_rate(model_name: str, device: torch.device, batch_size: int, iters: int, size: int = 224) -> float:
    """Images/s of forward + backward + SGD step, bf16 autocast, channels_last, random init (CUDA only)."""
    import torchvision

    model = getattr(torchvision.models, MODELS[model_name])(num_classes=1000).to(device)
    model = model.to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(batch_size, 3, size, size, device=device).to(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch_size,), device=device)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(5):
        step()
    torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    torch.cuda.synchronize(device)
    return batch_size * iters / (time.perf_counter() - t0)


def device_replay_rate(jpegs: list[bytes], device: torch.device, batch_size: int, iters: int,
                       policy_name: str = "rrc+ra/re") -> dict:
    """``DeviceReplay`` (nvJPEG decode, crop, resize, finish, densify) images/s on the GPU and its host ms/batch."""
    with tempfile.TemporaryDirectory() as tmp:
        _, _, dev = _datasets(Path(tmp), policy_name, jpegs, 2, 224)
        replay = dev.create_device_replay(device)
        n = len(dev)
        batches = [dev.collate_fn(dev.__getitems__([(k * batch_size + b) % n for b in range(batch_size)]))
                   for k in range(3)]
        batches = [{k: (v.pin_memory() if isinstance(v, torch.Tensor) else v) for k, v in b.items()} for b in batches]
        for b in batches[:2]:
            replay(b)
        torch.cuda.synchronize(device)
        host, t0 = 0.0, time.perf_counter()
        for it in range(iters):
            h = time.perf_counter()
            replay(batches[it % len(batches)])
            host += time.perf_counter() - h
        torch.cuda.synchronize(device)
        dt = time.perf_counter() - t0
    return {"images_per_s": round(batch_size * iters / dt, 1), "host_ms_per_batch": round(1000 * host / iters, 2),
            "decoded": replay.decoded}


def measure(device: str = "cpu", *, images: int = 24, seconds: float = 6.0, rounds: int = 6, batch_size: int = 256,
            train_iters: int = 20, replay_iters: int = 10) -> dict:
    """The whole benchmark as a dict (``benchmarks/gpu_check.py`` calls this)."""
    dev = torch.device(device)
    jpegs = make_jpegs(images)
    rates = per_core_rates(jpegs, seconds, rounds)
    pipelines = ("torchvision_v2", "cpu_replay", "device_replay_workers")
    out: dict = {"benchmark": "cores_per_gpu", "device": device, "threads_per_core_rate": 1,
                 "worker_batch": WORKER_BATCH, "images": images, "rounds": rounds,
                 "per_core_items_per_s": rates, "models": {}}
    cuda = dev.type == "cuda" and torch.cuda.is_available()
    replay = device_replay_rate(jpegs, dev, batch_size, replay_iters) if cuda else None
    out["device_replay_gpu"] = replay if cuda else "unmeasured (needs CUDA)"
    for name in MODELS:
        rate = training_rate(name, dev, batch_size, train_iters) if cuda else None
        entry: dict = {"train_images_per_s": None if rate is None else round(rate, 1), "batch_size": batch_size,
                       "precision": "bf16 autocast", "memory_format": "channels_last"}
        if rate is None:
            entry["train_images_per_s_note"] = "unmeasured (needs CUDA)"
        for p in pipelines:
            need = rate
            if need is not None and p == "device_replay_workers":
                need = 1.0 / (1.0 / rate + 1.0 / replay["images_per_s"])  # the GPU also decodes and finishes
            entry[f"cores_{p}"] = None if need is None else round(need / rates[p], 2)
        out["models"][name] = entry
    out["ok"] = all(rates[p] > 0 for p in pipelines)
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--seconds", type=float, default=6.0, help="timing window per pipeline, all rounds together")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--train-iters", type=int, default=20)
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("--device cuda requested but CUDA is not available; pass --device cpu")
    if args.quick:
        args.images, args.seconds, args.rounds, args.batch_size, args.train_iters = 6, 0.4, 2, 32, 3
    out = measure(args.device, images=args.images, seconds=args.seconds, rounds=args.rounds,
                  batch_size=args.batch_size, train_iters=args.train_iters, replay_iters=3 if args.quick else 10)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    sys.exit(0 if main()["ok"] else 1)
