"""Builder throughput against the teacher's forward pass alone (same device, same batch shape), in one run.

The builder (:func:`imagenet_plus.builder.build_reinforcements`) decodes JPEGs in
DataLoader workers, crops every augmentation, finishes it (on CUDA: batched on the
GPU), runs the teacher, keeps the top-k and writes shards (in a writer thread, behind
the teacher). The reference is the same teacher object (same ``teacher_compile`` mode)
on a resident random uint8 batch of the build's batch size, timed before and after the
build (interleaved), so the ratio is the share of the teacher's speed the whole build
keeps (1.0 = the teacher is the only cost; the build's time is all of it, from the checks to the
manifest and the read-back of the finished store; shards hold a quarter of the samples, so
writing a block overlaps the next one's teacher work). The teacher's own throughput is also given
as a fraction of the device's dense bf16 peak (FLOPs per image counted with
``torch.utils.flop_counter.FlopCounterMode`` on the eager ensemble; peaks from
:data:`BF16_PEAK_TFLOPS`), and both rates are projected to ImageNet+ (1,281,167 images
x 400 augmentations).

Data: real photos (scikit-learn's and scikit-image's sample images) resized to
ImageNet-like sizes and JPEG-encoded in memory (decoded per sample, as from disk).
Teacher weights are random (no network), which does not change the cost.

Run from the repo root; prints one JSON object::

    python benchmarks/build_throughput.py --device cuda               # IG-ResNeXt-101 ensemble, batch 256
    python benchmarks/build_throughput.py --device cpu --small        # small teacher, CPU, seconds
    python benchmarks/build_throughput.py --device cuda --teacher resnet50 --teacher-compile none
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imagenet_plus.augment import create_policy  # noqa: E402
from imagenet_plus.builder import BuildStats, build_reinforcements  # noqa: E402
from imagenet_plus.builder import writer as writer_module  # noqa: E402
from imagenet_plus.builder.config import resolve_teacher_compile  # noqa: E402
from imagenet_plus.teachers import IG_RESNEXT_ENSEMBLE, create_teacher  # noqa: E402

__all__ = ["JpegPhotos", "BF16_PEAK_TFLOPS", "IMAGENET_TRAIN_IMAGES", "measure", "check_build_throughput",
           "check_device_build", "main"]

#: Dense (no sparsity) bf16 tensor-core peaks in TFLOPS, from the vendors' data sheets, by a substring of
#: ``torch.cuda.get_device_name`` (first match wins: the more specific names first).
BF16_PEAK_TFLOPS = (("H200", 989.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("A100", 312.0), ("L40S", 362.0),
                    ("L4", 121.0))
#: ImageNet-1k's training images and the paper's augmentations per image (ImageNet+).
IMAGENET_TRAIN_IMAGES, IMAGENET_PLUS_NS = 1_281_167, 400


def _sources() -> list[Image.Image]:
    from sklearn.datasets import load_sample_images

    out = [Image.fromarray(a) for a in load_sample_images().images]
    try:
        import skimage.data as d

        out += [Image.fromarray(f()) for f in (d.astronaut, d.coffee, d.chelsea, d.rocket)]
    except Exception:  # noqa: BLE001 - scikit-image is optional
        pass
    return [im.convert("RGB") for im in out]


class JpegPhotos(torch.utils.data.Dataset):
    """``n`` real photos at ImageNet-like sizes, held as JPEG bytes and decoded on access.

    Args:
        n: number of samples.
        num_classes: labels are ``index % num_classes``.
        sizes: ``(width, height)`` cycle of the stored images.
    """

    def __init__(self, n: int, num_classes: int = 1000,
                 sizes=((500, 375), (375, 500), (500, 333), (640, 480), (400, 400))):
        src = _sources()
        self.jpegs = []
        for k in range(n):
            im = src[k % len(src)]
            w, h = sizes[k % len(sizes)]
            left = (k * 37) % max(1, im.width // 4)
            top = (k * 53) % max(1, im.height // 4)
            im = im.crop((left, top, im.width - left // 2, im.height - top // 2)).resize((w, h), Image.BILINEAR)
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=90)
            self.jpegs.append(buf.getvalue())
        self.targets = [k % num_classes for k in range(n)]
        self.keys = [f"photo/{k}" for k in range(n)]

    def __len__(self) -> int:
        return len(self.jpegs)

    def __getitem__(self, i: int):
        return Image.open(io.BytesIO(self.jpegs[i])).convert("RGB"), self.targets[i]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bf16_peak(device: torch.device) -> tuple[float | None, str]:
    """The device's dense bf16 peak in TFLOPS and its name (``None`` where none is known: CPUs, other GPUs)."""
    if device.type != "cuda":
        return None, "cpu: no bf16 peak known"
    name = torch.cuda.get_device_name(device)
    for key, tflops in BF16_PEAK_TFLOPS:
        if key in name:
            return tflops, name
    return None, f"{name}: no bf16 peak known (add it to BF16_PEAK_TFLOPS)"


def flops_per_image(model, image_size: int, device: torch.device) -> float:
    """FLOPs of one image through the eager ensemble (convolutions and matmuls; 2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros((1, 3, image_size, image_size), dtype=torch.uint8, device=device)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model._ensemble(x)
    return float(counter.get_total_flops())


def _teacher_alone(model, x: torch.Tensor, n_batches: int) -> float:
    """Seconds for ``n_batches`` forwards of the resident batch ``x``."""
    _sync(x.device)
    t0 = time.perf_counter()
    for _ in range(n_batches):
        model(x)
    _sync(x.device)
    return time.perf_counter() - t0


def _build(model, data, pol, dev, *, samples: int, augs: int, batch_size: int, topk: int, num_classes: int,
           num_workers: int, write_ahead: int) -> tuple[BuildStats, int]:
    stats = BuildStats()
    old = writer_module.WRITE_AHEAD
    writer_module.WRITE_AHEAD = write_ahead
    try:
        with tempfile.TemporaryDirectory() as tmp:
            build_reinforcements(data, Path(tmp) / "store", policy=pol, teacher=model, num_classes=num_classes,
                                 num_augmentations=augs, topk=topk, seed=0, dataset_name="photos",
                                 teacher_desc=model.describe(), samples_per_shard=max(1, samples // 4),
                                 augs_per_shard=min(augs, 50), batch_size=batch_size, device=dev, progress=False,
                                 num_workers=num_workers, stats=stats)
            nbytes = sum(p.stat().st_size for p in (Path(tmp) / "store").rglob("*") if p.is_file())
    finally:
        writer_module.WRITE_AHEAD = old
    return stats, nbytes


def compile_agreement(model, x: torch.Tensor) -> dict:
    """The teacher's compiled or graphed forward against its eager ensemble on one batch ``x``."""
    with torch.inference_mode():
        fast = model(x).float()
        eager = model._ensemble(x).float()
    k = min(5, fast.shape[1])
    top1 = float((fast.argmax(1) == eager.argmax(1)).float().mean())
    topk_same = float((fast.topk(k, 1).indices == eager.topk(k, 1).indices).all(1).float().mean())
    diff = float((fast - eager).abs().max())
    return {"top1_agreement": top1, f"top{k}_ids_identical": topk_same, "max_abs_prob_diff": diff,
            "ok": bool(top1 >= 0.98 and diff <= 1e-2)}


def _projection(rate: float, label: str) -> dict:
    hours = IMAGENET_TRAIN_IMAGES * IMAGENET_PLUS_NS / max(rate, 1e-12) / 3600
    return {"rate": label, "augmentations_per_s": round(rate, 2), "hours": round(hours, 1)}


def _teacher(device, teacher, num_classes, teacher_input_size, teacher_compile):
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(0)
    # the benchmark measures the lever the builder's auto will pick once it is measured: CUDA graphs on CUDA
    mode = ("cudagraphs" if dev.type == "cuda" else "none") if teacher_compile == "bench" else \
        resolve_teacher_compile(teacher_compile, dev)
    model = create_teacher(teacher, num_classes=num_classes, pretrained=False, device=dev, compile=mode,
                           input_size=teacher_input_size)
    return dev, mode, model


def measure(*, device: str, teacher: str, batch_size: int, samples: int, augs: int, image_size: int,
            policy: str, num_workers: int, num_classes: int = 1000, teacher_input_size: int | None = None,
            teacher_compile: str = "bench", topk: int = 10, warmup: int = 2, compare_sync: bool = False) -> dict:
    """Teacher-alone images/s and builder augmentations/s for one configuration (rounds interleaved:
    teacher alone, build [, synchronous-write build], teacher alone).

    Returns:
        A JSON-able dict: ``ratio`` = builder augmentations/s / teacher-alone images/s, the teacher's fraction
        of the bf16 peak, the ImageNet+ projection, and with ``compare_sync`` the writer thread's gain.
    """
    t0 = time.perf_counter()
    dev, mode, model = _teacher(device, teacher, num_classes, teacher_input_size, teacher_compile)
    data = JpegPhotos(samples, num_classes)
    pol = create_policy(policy, output_size=image_size)
    x = torch.randint(0, 256, (batch_size, 3, image_size, image_size), dtype=torch.uint8, device=dev)
    for _ in range(warmup):  # compiles / captures the graph once, outside every timed round
        model(x)
    t_init = time.perf_counter() - t0
    n_batches = -(-(samples * augs) // batch_size)
    kw = dict(samples=samples, augs=augs, batch_size=batch_size, topk=topk, num_classes=num_classes,
              num_workers=num_workers)
    alone = [_teacher_alone(model, x, n_batches)]
    stats, nbytes = _build(model, data, pol, dev, write_ahead=writer_module.WRITE_AHEAD, **kw)
    sync = _build(model, data, pol, dev, write_ahead=0, **kw)[0] if compare_sync else None
    alone.append(_teacher_alone(model, x, n_batches))
    teacher_ips = 2 * n_batches * batch_size / sum(alone)
    build_aps = stats.records / stats.seconds
    flops = flops_per_image(model, image_size, dev)
    peak, peak_name = bf16_peak(dev)
    cpu_label = f"CPU rate ({torch.get_num_threads()} threads, shared machine)"
    out = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "teacher": list(model.names), "teacher_input_size": model.inputs[0].input_size, "teacher_compile": mode,
        "policy": policy, "image_size": image_size, "batch_size": batch_size, "samples": samples,
        "augs_per_sample": augs, "records": stats.records, "num_workers": num_workers,
        "amp_bf16": model.amp, "teacher_init_and_warmup_s": round(t_init, 2),
        "teacher_alone_images_per_s": round(teacher_ips, 2),
        "teacher_alone_rounds_s": [round(a, 3) for a in alone],
        "build_s": round(stats.seconds, 3), "build_augmentations_per_s": round(build_aps, 2),
        "build_samples_per_s": round(stats.samples / stats.seconds, 3), "store_bytes": nbytes,
        "ratio": round(build_aps / teacher_ips, 4), "build_timings": stats.extra.get("timings"),
        "teacher_gflops_per_image": round(flops / 1e9, 3), "bf16_peak_tflops": peak, "bf16_peak_of": peak_name,
        "teacher_fraction_of_bf16_peak": None if peak is None else round(teacher_ips * flops / (peak * 1e12), 4),
        "projected_imagenet_plus_hours": {
            "build": _projection(build_aps, "GPU build rate" if dev.type == "cuda" else cpu_label),
            "teacher_alone": _projection(teacher_ips, "GPU teacher rate" if dev.type == "cuda" else cpu_label)},
    }
    if sync is not None:
        sync_aps = sync.records / sync.seconds
        out["build_sync_write_augmentations_per_s"] = round(sync_aps, 2)
        out["writer_thread_gain"] = round(build_aps / sync_aps, 4)
    if mode != "none":
        out["compile_agreement"] = compile_agreement(model, x)
    return out


def check_build_throughput(args) -> dict:
    """Build throughput against the teacher alone, for ``benchmarks/gpu_check.py`` (``args.device``,
    ``args.small``, ``args.batch_size``): on CUDA without ``--small`` the paper's IG-ResNeXt-101 ensemble
    (random init, CUDA graphs, bf16) at 224 px, ``ok`` when the ratio is >= 0.9 and the graphed teacher agrees
    with its eager forward; small sizes (any device) only check that everything runs."""
    strict = str(args.device).startswith("cuda") and not getattr(args, "small", False)
    if strict:
        r = measure(device=args.device, teacher=",".join(IG_RESNEXT_ENSEMBLE), batch_size=args.batch_size,
                    samples=64, augs=200, image_size=224, policy="rrc+ra/re",
                    num_workers=min(12, os.cpu_count() or 1))
    else:
        r = measure(device=args.device, teacher="resnet18", batch_size=16, samples=4, augs=8, image_size=48,
                    policy="rrc+ra/re", num_workers=0, num_classes=10, teacher_input_size=48, compare_sync=True)
    agree = r.get("compile_agreement", {"ok": True})
    r["target_ratio"] = 0.9 if strict else None
    r["ok"] = bool(agree["ok"] and (r["ratio"] >= 0.9 if strict else r["ratio"] > 0))
    return r


def check_device_build(device: str, samples: int = 12, augs: int = 8, image_size: int = 224,
                       num_workers: int = 4) -> dict:
    """A build on ``device`` against the same build on the CPU (the bit-exact reference).

    Checks, per policy (``rrc+ra/re`` and ``rrc+mix+ra/re``): the stored params are identical
    (sampled on the CPU either way), the teacher's top-1 agrees on >= 98% of the records and
    the decoded top-1 probabilities are close (the device finishes pixels in batches: within
    the augmentation engine's CPU-vs-CUDA tolerance, not bit for bit; the teacher runs in
    float32 here to isolate the pixel path), a rebuild on the device with another worker
    count is byte-identical (determinism on one device), and the teacher reports of the two
    builds count the same records with top-1 label agreements within 0.02. Every device build
    also passed the builder's read-back check (one record per shard replayed by the CPU replay
    within its stated tolerance of the pixels the teacher saw on the device; a build raises
    otherwise).
    """
    import copy

    from safetensors.numpy import load_file

    from imagenet_plus.schema import decode_topk_ids, decode_topk_probs
    from imagenet_plus.store import Manifest

    dev = torch.device(device)
    data = JpegPhotos(samples, 10)
    out: dict = {"records": samples * augs, "image_size": image_size}
    ok = True
    for name in ("rrc+ra/re", "rrc+mix+ra/re"):
        pol = create_policy(name, output_size=image_size)
        torch.manual_seed(0)
        t_cpu = create_teacher("resnet18", num_classes=10, pretrained=False, input_size=image_size, amp=False)
        t_dev = copy.deepcopy(t_cpu).to(dev)
        with tempfile.TemporaryDirectory() as tmp:
            roots = {}
            for tag, teacher, d, nw in (("cpu", t_cpu, "cpu", num_workers), ("dev", t_dev, dev, num_workers),
                                        ("dev2", t_dev, dev, 0)):
                roots[tag] = Path(tmp) / tag
                build_reinforcements(data, roots[tag], policy=pol, teacher=teacher, num_classes=10,
                                     num_augmentations=augs, topk=3, seed=1, dataset_name="photos",
                                     teacher_desc={"model": "resnet18"}, samples_per_shard=max(1, samples // 2),
                                     augs_per_shard=max(1, augs // 2), batch_size=32, device=d, progress=False,
                                     num_workers=nw)
            m = Manifest.load(roots["cpu"])
            reports = [Manifest.load(roots[t]).reports["teacher"] for t in ("cpu", "dev")]
            same_params, agree, dprob = True, [], []
            for e in m.shards:
                a, b = load_file(str(roots["cpu"] / e.file)), load_file(str(roots["dev"] / e.file))
                same_params &= all(np.array_equal(a[f.name], b[f.name]) for f in m.param_fields)
                ia, ib = decode_topk_ids(a["topk_ids"], 10, 3), decode_topk_ids(b["topk_ids"], 10, 3)
                agree.append((ia[..., 0] == ib[..., 0]).reshape(-1))
                pa, pb = decode_topk_probs(a["topk_probs"]), decode_topk_probs(b["topk_probs"])
                dprob.append(np.abs(pa[..., 0] - pb[..., 0]).reshape(-1))
            files = sorted(p.relative_to(roots["dev"]) for p in roots["dev"].rglob("*") if p.is_file())
            deterministic = all((roots["dev"] / f).read_bytes() == (roots["dev2"] / f).read_bytes() for f in files)
        top1 = float(np.concatenate(agree).mean())
        res = {"params_identical": bool(same_params), "top1_agreement": top1,
               "top1_prob_mean_abs_diff": float(np.concatenate(dprob).mean()),
               "device_rebuild_byte_identical": bool(deterministic), "read_back_check": "passed",
               "report_label_top1_cpu": reports[0]["top1_agreement"],
               "report_label_top1_device": reports[1]["top1_agreement"]}
        same_report = reports[0]["records"] == reports[1]["records"] and \
            abs(reports[0]["top1_agreement"] - reports[1]["top1_agreement"]) <= 0.02
        res["ok"] = bool(same_params and top1 >= 0.98 and deterministic and same_report)
        ok &= res["ok"]
        out[name] = res
    out["ok"] = bool(ok)
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--small", "--quick", dest="small", action="store_true",
                   help="small sizes (a CPU run of seconds; --quick is the same)")
    p.add_argument("--teacher", default=None, help="comma-separated timm names (default: the IG-ResNeXt-101 "
                                                   "ensemble on CUDA, resnet18 on the CPU)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--samples", type=int, default=None)
    p.add_argument("--augs", type=int, default=None)
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--teacher-input-size", type=int, default=None)
    p.add_argument("--policy", default="rrc+ra/re")
    p.add_argument("--num-workers", type=int, default=None)
    p.add_argument("--teacher-compile", default="bench", choices=("bench", "auto", "none", "compile", "cudagraphs"),
                   help="the builder's --teacher-compile (default bench: CUDA graphs on CUDA, eager on the CPU; "
                        "auto: the builder's own default, eager for now)")
    p.add_argument("--compare-sync", action="store_true",
                   help="also build with shard writing in the main thread (the writer thread's gain)")
    args = p.parse_args(argv)
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        p.error("--device cuda requested but CUDA is not available; pass --device cpu")
    if not cuda:
        torch.set_num_threads(1)
    small = args.small or not cuda
    defaults = dict(teacher=",".join(IG_RESNEXT_ENSEMBLE) if cuda and not args.small else "resnet18",
                    batch_size=32 if small else 256, samples=8 if small else 64, augs=16 if small else 200,
                    image_size=64 if small else 224, num_workers=0 if small else min(12, os.cpu_count() or 1),
                    teacher_input_size=64 if small else None)
    kw = {k: (getattr(args, k) if getattr(args, k) is not None else v) for k, v in defaults.items()}
    result = measure(device=args.device, policy=args.policy, teacher_compile=args.teacher_compile,
                     compare_sync=args.compare_sync or small, **kw)
    strict = cuda and not args.small
    result["target_ratio"] = 0.9 if strict else None
    result["ok"] = bool(result.get("compile_agreement", {"ok": True})["ok"] and (result["ratio"] >= 0.9 if strict
                                                                                 else result["ratio"] > 0))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
