"""One-shot device check: CUDA replay vs CPU replay agreement, and batched replay throughput.

Run from the repo root on a CUDA machine (needs only torch, torchvision, timm, numpy; no network)::

    python benchmarks/gpu_check.py                     # CUDA, 224 px, batch 256
    python benchmarks/gpu_check.py --device cpu --small  # CI smoke run

Prints one JSON object. ``ok`` is true when every check passed its stated bound:
mean absolute difference <= 1 grey level (uint8) between the device replay and the
per-sample CPU replay, and teacher top-1 agreement >= 99%.

Checks are the functions listed in ``CHECKS`` (each ``check(args) -> dict`` with an
``"ok"`` entry); add new ones there (see the marked place at the bottom). ``device_decode``
compares the device-decoding path (workers ship file bytes, batched nvJPEG + crop + resize +
finish on the GPU, CPU fallback per image) with the CPU dataset path (on the CPU: bit-exact);
``cores_per_gpu`` runs ``benchmarks/cores_per_gpu.py``'s measurement. Budget on an H200: the
whole script is meant to finish within about 5 minutes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imagenet_plus.augment import create_policy  # noqa: E402
from imagenet_plus.replay import DeviceReplay  # noqa: E402


def _photos(n: int) -> list[Image.Image]:
    """Real photos where scikit-learn / scikit-image are installed, else deterministic synthetic scenes."""
    base = []
    try:
        from sklearn.datasets import load_sample_images

        base += [Image.fromarray(a) for a in load_sample_images().images]
    except Exception:  # noqa: BLE001 - optional dependency
        pass
    try:
        import skimage.data

        base += [Image.fromarray(f()) for f in (skimage.data.astronaut, skimage.data.coffee, skimage.data.chelsea)]
    except Exception:  # noqa: BLE001 - optional dependency
        pass
    rng = np.random.default_rng(0)
    while len(base) < 4:
        h, w = 375, 500
        yy, xx = np.mgrid[0:h, 0:w] / np.array([h, w]).reshape(2, 1, 1)
        img = np.stack([np.sin(6 * xx + k) * 0.5 + 0.5 for k in range(3)], -1) * 200
        for _ in range(12):
            cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(10, 80)
            m = (np.mgrid[0:h, 0:w][0] - cy) ** 2 + (np.mgrid[0:h, 0:w][1] - cx) ** 2 < r * r
            img[m] = rng.uniform(0, 255, 3)
        img += rng.normal(0, 8, img.shape)
        base.append(Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)))
    out = []
    sizes = [(500, 375), (375, 500), (640, 427), (333, 333), (800, 300)]
    for k in range(n):
        out.append(base[k % len(base)].resize(sizes[k % len(sizes)]))
    return out


def _records(policy, imgs, n, seed=0):
    """Crops, partner crops and params of ``n`` records (partner (p, j) drawn with its own params)."""
    N = len(imgs)
    i = np.arange(n) % N
    j = np.arange(n) // N
    hw = np.array([(im.size[1], im.size[0]) for im in imgs])
    prm = policy.sample(seed, i, j, hw[i, 0], hw[i, 1], num_samples=N)
    crops, partners, pprm = [], [], {k: [] for k in prm}
    for r in range(n):
        one = {k: v[r] for k, v in prm.items()}
        crops.append(policy.crop(imgs[i[r]], one))
        if policy.uses_mix:
            p = int(one["mix_partner"])
            pp = {k: v[0] for k, v in policy.sample(seed, p, j[r], hw[p, 0], hw[p, 1], num_samples=N).items()}
            partners.append(policy.crop(imgs[p], pp))
        else:
            pp = {k: np.zeros_like(v) for k, v in one.items()}
            partners.append(torch.zeros_like(crops[-1]))
        for k in prm:
            pprm[k].append(pp[k])
    return torch.stack(crops), torch.stack(partners), prm, {k: np.stack(v) for k, v in pprm.items()}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check_agreement(args) -> dict:
    """Device replay vs per-sample CPU replay (uint8 diffs) and a random-init timm teacher's top-1."""
    import timm

    device = torch.device(args.device)
    size = 48 if args.small else 224
    n = 40 if args.small else 500
    out = {}
    worst_mad, worst_max, worst_agree = 0.0, 0, 1.0
    torch.manual_seed(0)
    teacher = timm.create_model("resnet18", pretrained=False, num_classes=10).eval().to(device)
    for name in ("rrc+ra/re", "rrc+mix+ra/re"):
        policy = create_policy(name, output_size=size)
        imgs = _photos(6 if args.small else 16)
        crops, partners, prm, pprm = _records(policy, imgs, n, seed=1)
        ref = torch.cat([policy.finish(crops[r:r + 1], {k: v[r:r + 1] for k, v in prm.items()},
                                       partners[r:r + 1], {k: v[r:r + 1] for k, v in pprm.items()})
                         for r in range(n)])  # == Policy.apply per record
        dev = policy.finish(crops.to(device), prm, partners.to(device), pprm).cpu()
        diff = (dev.int() - ref.int()).abs()
        batch = {"image": crops, "partner": partners, "params": {k: torch.from_numpy(v.astype(np.int64))
                                                                 for k, v in prm.items()},
                 "partner_params": {k: torch.from_numpy(v.astype(np.int64)) for k, v in pprm.items()},
                 "topk_ids": torch.zeros(n, 1, dtype=torch.long), "topk_probs": torch.ones(n, 1)}
        x, _ = DeviceReplay(policy, 10, device=device)(batch)
        with torch.no_grad():
            a = torch.cat([teacher(x[k:k + 100]).argmax(1).cpu() for k in range(0, n, 100)])
            refn = policy.normalize(ref).to(device)
            b = torch.cat([teacher(refn[k:k + 100]).argmax(1).cpu() for k in range(0, n, 100)])
        agree = (a == b).float().mean().item()
        out[name] = {"records": n, "size": size, "mean_abs_diff": diff.float().mean().item(),
                     "max_abs_diff": int(diff.max()), "pixels_differing": (diff > 0).float().mean().item(),
                     "teacher_top1_agreement": agree}
        worst_mad = max(worst_mad, out[name]["mean_abs_diff"])
        worst_max = max(worst_max, out[name]["max_abs_diff"])
        worst_agree = min(worst_agree, agree)
    out.update(mean_abs_diff=worst_mad, max_abs_diff=worst_max, teacher_top1_agreement=worst_agree,
               ok=worst_mad <= 1.0 and worst_agree >= 0.99)
    return out


def check_replay_throughput(args) -> dict:
    """Batched DeviceReplay (RA, erasing, mixing, normalise, densify) images/s on pre-cropped batches."""
    device = torch.device(args.device)
    size = 48 if args.small else 224
    bs = 16 if args.small else args.batch_size
    iters = 3 if args.small else args.iters
    imgs = _photos(4 if args.small else 8)
    out = {"batch_size": bs, "size": size, "iters": iters}
    for name in ("rrc+ra/re", "rrc+mix+ra/re"):
        policy = create_policy(name, output_size=size)
        crops, partners, prm, pprm = _records(policy, imgs, bs, seed=2)
        batches = []
        for it in range(4):  # different params per batch (different op groupings)
            p2 = policy.sample(10 + it, np.arange(bs) % len(imgs), it, 375, 500, num_samples=len(imgs))
            for k in ("mix_partner",):
                p2.pop(k, None)
            prm_it = {**prm, **p2}
            pp = pprm if policy.uses_mix else {k: np.zeros_like(v) for k, v in prm_it.items()}
            batches.append({
                "image": crops.to(device), "partner": partners.to(device),
                "params": {k: torch.from_numpy(v.astype(np.int64)) for k, v in prm_it.items()},
                "partner_params": {k: torch.from_numpy(v.astype(np.int64)) for k, v in pp.items()},
                "topk_ids": torch.randint(0, 1000, (bs, 10), device=device),
                "topk_probs": torch.full((bs, 10), 0.09, device=device),
                "is_original": torch.zeros(bs, dtype=torch.bool), "label": torch.zeros(bs, dtype=torch.long)})
        replay = DeviceReplay(policy, 1000, device=device)
        for b in batches[:2]:  # warm-up
            replay(b)
        _sync(device)
        t0 = time.perf_counter()
        for it in range(iters):
            replay(batches[it % len(batches)])
        _sync(device)
        dt = time.perf_counter() - t0
        out[name] = {"images_per_s": bs * iters / dt, "ms_per_batch": 1000 * dt / iters}
    out["images_per_s"] = out["rrc+ra/re"]["images_per_s"]
    out["target_images_per_s"] = 20000 if device.type == "cuda" else None
    out["ok"] = True
    return out


def _mixed_files(n: int, size_scale: float = 1.0) -> list[tuple[str, bytes]]:
    """ImageNet-size real photos as the kinds of file ImageNet holds: baseline 4:2:0 and 4:4:4, progressive, grey
    and CMYK JPEGs, and one PNG (the last two decoded by the CPU fallback)."""
    import io

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from replay_throughput import make_jpegs

    out = []
    for k, data in enumerate(make_jpegs(n)):
        im = Image.open(io.BytesIO(data)).convert("RGB")
        if size_scale != 1.0:
            im = im.resize((max(8, int(im.width * size_scale)), max(8, int(im.height * size_scale))))
        buf, suffix = io.BytesIO(), "jpg"
        if k == n - 1:
            im.save(buf, "PNG")
            suffix = "png"
        elif k % 11 == 7:
            im.convert("CMYK").save(buf, "JPEG", quality=90)
        elif k % 5 == 3:
            im.convert("L").save(buf, "JPEG", quality=90)
        else:
            im.save(buf, "JPEG", quality=90, progressive=k % 4 == 1, subsampling=0 if k % 3 == 2 else -1)
        out.append((suffix, buf.getvalue()))
    return out


def _device_decode_datasets(tmp: Path, policy, files, num_aug: int = 2):
    """The CPU-path and the device-decoding ReinforcedDataset over an ImageFolder of ``files``."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from fakes.replay_store import write_replay_store
    from imagenet_plus.adapters import create_adapter
    from imagenet_plus.datasets import ReinforcedDataset

    for k, (suffix, data) in enumerate(files):
        (tmp / "data" / f"c{k % 4}").mkdir(parents=True, exist_ok=True)
        (tmp / "data" / f"c{k % 4}" / f"{k:04d}.{suffix}").write_bytes(data)
    adapter = create_adapter("imagefolder", tmp / "data", "train")
    write_replay_store(tmp / "store", adapter, policy, num_augmentations=num_aug, topk=3)
    kw = dict(seed=3, p_original=0.05)
    return ReinforcedDataset(adapter, tmp / "store", **kw), ReinforcedDataset(adapter, tmp / "store", decode="device",
                                                                              **kw)


def check_device_decode(args) -> dict:
    """Device decoding (workers ship bytes; batched ``decode_jpeg`` on the device, CPU fallback per image, crop,
    resize and finish on the device) vs the CPU dataset path: grey-level differences of the replayed images and
    a random-init timm teacher's top-1 agreement. Bound: mean |diff| <= 1 grey level, agreement >= 99%; on the CPU
    the two must be equal bit for bit."""
    import tempfile

    import timm

    device = torch.device(args.device)
    size = 48 if args.small else 224
    n, bs = (12, 12) if args.small else (96, 48)
    files = _mixed_files(n, 0.25 if args.small else 1.0)
    torch.manual_seed(0)
    teacher = timm.create_model("resnet18", pretrained=False, num_classes=10).eval().to(device)
    out: dict = {"images": n, "size": size}
    worst_mad, worst_agree, exact = 0.0, 1.0, True
    for name in ("rrc+ra/re", "rrc+mix+ra/re"):
        policy = create_policy(name, output_size=size)
        with tempfile.TemporaryDirectory() as tmp:
            cpu, dev = _device_decode_datasets(Path(tmp), policy, files)
            replay = dev.create_device_replay(device)
            scale = torch.tensor(policy.std).view(1, 3, 1, 1) * 255.0
            diffs, a, b, max_diff = [], [], [], 0.0
            for epoch in (0, 1):
                cpu.set_epoch(epoch)
                dev.set_epoch(epoch)
                for k in range(0, n, bs):
                    idx = list(range(k, min(n, k + bs)))
                    ref = torch.stack([x for x, _ in cpu.__getitems__(idx)])
                    x, _ = replay(dev.collate_fn(dev.__getitems__(idx)))
                    d = ((x.float().cpu() - ref) * scale).abs()  # grey levels (0-255)
                    diffs.append(d.mean().item())
                    max_diff = max(max_diff, d.max().item())
                    exact = exact and torch.equal(x.cpu(), ref)
                    with torch.no_grad():
                        a.append(teacher(x).argmax(1).cpu())
                        b.append(teacher(ref.to(device)).argmax(1).cpu())
            agree = (torch.cat(a) == torch.cat(b)).float().mean().item()
            out[name] = {"mean_abs_diff": float(np.mean(diffs)), "max_abs_diff": round(max_diff, 3),
                         "teacher_top1_agreement": agree, "decoded": dict(replay.decoded)}
        worst_mad, worst_agree = max(worst_mad, out[name]["mean_abs_diff"]), min(worst_agree, agree)
    out.update(mean_abs_diff=worst_mad, teacher_top1_agreement=worst_agree, bit_exact=exact,
               ok=bool(worst_mad <= 1.0 and worst_agree >= 0.99 and (exact or device.type != "cpu")))
    return out


def check_cores_per_gpu(args) -> dict:
    """``benchmarks/cores_per_gpu.py``'s measurement: per-core loader rates and, on CUDA, the students' training
    rates and the cores per GPU they need."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("cores_per_gpu", Path(__file__).with_name("cores_per_gpu.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    if args.small:
        return mod.measure(args.device, images=6, seconds=0.4, rounds=2, batch_size=16, train_iters=2, replay_iters=2)
    return mod.measure(args.device, images=24, seconds=8.0, rounds=4, batch_size=args.batch_size, train_iters=20)


#: Policies the sync check runs besides the presets: the non-default op paths of ``finish``.
SYNC_CHECK_CONFIGS = {
    "ra_bilinear": ("rrc+ra/re", {"randaugment": {"interpolation": "bilinear", "fill": 128, "num_ops": 3}}),
    "mixup_only": ("rrc+mix+ra/re", {"mix": {"cutmix_alpha": 0.0}}),
    "cutmix_half": ("rrc+mix", {"mix": {"mixup_alpha": 0.0, "prob": 0.5}}),
}


def _offending_frame(exc: BaseException) -> str:
    """The innermost frame of the package (else of torchvision, else the last) in ``exc``'s traceback."""
    import traceback

    frames = traceback.extract_tb(exc.__traceback__)
    for marker in ("imagenet_plus", "torchvision"):
        hits = [f for f in frames if marker in f.filename]
        if hits:
            f = hits[-1]
            return f"{Path(f.filename).name}:{f.lineno} {f.name}: {f.line}"
    f = frames[-1]
    return f"{Path(f.filename).name}:{f.lineno} {f.name}: {f.line}"


def _clear_caches() -> None:
    """Empty the op caches (gather maps, grids, tables, device copies) so the first call runs cold."""
    import importlib

    ops = importlib.import_module("imagenet_plus.augment.ops")
    for name in ("_nearest_map", "_affine_grid", "_lut"):
        if hasattr(getattr(ops, name, None), "cache_clear"):
            getattr(ops, name).cache_clear()
    try:
        importlib.import_module("imagenet_plus.augment._device")._CACHE.clear()
    except ImportError:  # a version without device caches
        pass


def check_finish_sync_free(args) -> dict:
    """``Policy.finish`` on CUDA never makes the host wait: every preset (and the bilinear-RandAugment,
    MixUp-only and half-CutMix configs) under ``torch.cuda.set_sync_debug_mode("error")``, with cold
    caches and then warm, for 1, 2 and 64 records; the pixels must also match the CPU ``finish``
    (mean |diff| <= 1 grey level). Runs only with ``--device cuda``."""
    from imagenet_plus.augment import PRESETS

    device = torch.device(args.device)
    if device.type != "cuda":
        return {"ok": True, "skipped": "needs --device cuda"}
    size = 48 if args.small else 224
    imgs = _photos(8)
    configs = {name: (name, {}) for name in PRESETS}
    configs.update(SYNC_CHECK_CONFIGS)
    out: dict = {}
    ok = True
    for label, (base, over) in configs.items():
        policy = create_policy(base, output_size=size, **over)
        _clear_caches()
        row: dict = {}
        for bs in (1, 2, 64):
            crops, partners, prm, pprm = _records(policy, imgs, bs, seed=3)
            mix = policy.uses_mix
            images_d, partners_d = crops.to(device), partners.to(device)
            torch.cuda.synchronize(device)
            error = None
            torch.cuda.set_sync_debug_mode("error")
            try:
                for _ in range(2):  # cold caches, then warm
                    y = policy.finish(images_d, prm, partners_d if mix else None, pprm if mix else None)
            except RuntimeError as exc:
                error = f"{exc.__class__.__name__}: {str(exc).splitlines()[0]} at {_offending_frame(exc)}"
            finally:
                torch.cuda.set_sync_debug_mode("default")
            torch.cuda.synchronize(device)
            entry = {"sync_free": error is None}
            if error is None:
                ref = policy.finish(crops, prm, partners if mix else None, pprm if mix else None)
                diff = (y.cpu().int() - ref.int()).abs()
                entry.update(mean_abs_diff=diff.float().mean().item(), max_abs_diff=int(diff.max()))
                ok = ok and entry["mean_abs_diff"] <= 1.0
            else:
                entry["error"] = error
                ok = False
            row[f"batch_{bs}"] = entry
        out[label] = row
    out["ok"] = ok
    return out


def check_finish_host_time(args) -> dict:
    """Host milliseconds per ``Policy.finish`` call on a side stream while the GPU is busy with bf16
    matrix products on the main stream (a stand-in for the teacher): a finish that syncs waits for
    them, one that only enqueues does not. Also the idle-GPU host time and the finish kernels' own
    GPU time. Runs only with ``--device cuda``."""
    device = torch.device(args.device)
    if device.type != "cuda":
        return {"ok": True, "skipped": "needs --device cuda"}
    size = 48 if args.small else 224
    bs = 16 if args.small else args.batch_size
    imgs = _photos(8)
    busy = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    side = torch.cuda.Stream(device)
    out: dict = {"batch_size": bs, "size": size, "busy_work": "40 bf16 8192^3 products per call"}
    for name in ("rrc+ra/re", "rrc+mix+ra/re"):
        policy = create_policy(name, output_size=size)
        crops, partners, prm, pprm = _records(policy, imgs, bs, seed=4)
        x, xp = crops.to(device), partners.to(device)
        mix = policy.uses_mix

        def finish():
            with torch.cuda.stream(side):
                return policy.finish(x, prm, xp if mix else None, pprm if mix else None)

        finish()
        torch.cuda.synchronize(device)
        host = {"busy": [], "idle": []}
        gpu_ms = []
        for it in range(6 if args.small else 12):
            state = "busy" if it % 2 == 0 else "idle"
            if state == "busy":
                for _ in range(40):
                    busy @ busy
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            t0 = time.perf_counter()
            with torch.cuda.stream(side):
                start.record(side)
            finish()
            with torch.cuda.stream(side):
                end.record(side)
            host[state].append(1000 * (time.perf_counter() - t0))
            torch.cuda.synchronize(device)
            if state == "idle":
                gpu_ms.append(start.elapsed_time(end))
        out[name] = {"host_ms_busy_gpu": float(np.median(host["busy"])),
                     "host_ms_idle_gpu": float(np.median(host["idle"])),
                     "finish_gpu_ms_idle": float(np.median(gpu_ms))}
    out["ok"] = True
    return out


# ---------------------------------------------------------------------------
# CHECKS: the functions this script runs, in order. Each takes the parsed args and
# returns a JSON-able dict with an "ok" entry (the build check is added below).
# ---------------------------------------------------------------------------
CHECKS = {
    "agreement": check_agreement,
    "device_decode": check_device_decode,
    "throughput": check_replay_throughput,
    "finish_sync_free": check_finish_sync_free,
    "finish_host_time": check_finish_host_time,
    "cores_per_gpu": check_cores_per_gpu,
}


# ---------------------------------------------------------------------------
# Builder owner's block (begin): the build checks live in benchmarks/build_throughput.py.
# ---------------------------------------------------------------------------
def _build_throughput_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_throughput", Path(__file__).with_name("build_throughput.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def check_build(args) -> dict:
    """Device build vs CPU build (params identical, teacher top-1 agreement >= 0.98, device rebuild
    byte-identical, teacher reports alike, the builder's read-back check passing on the device), then
    builder throughput vs the teacher alone (IG-ResNeXt-101 ensemble, random init; target ratio >= 0.9)."""
    bt = _build_throughput_module()
    if args.small:
        agreement = bt.check_device_build(args.device, samples=4, augs=4, image_size=48, num_workers=0)
    else:
        agreement = bt.check_device_build(args.device)
    tp = bt.check_build_throughput(args)  # CUDA graphs + writer thread on CUDA; ok: ratio >= 0.9 and agreement
    return {"device_build": agreement, "throughput": tp, "ratio": tp.get("ratio"),
            "ok": bool(agreement["ok"] and tp["ok"])}


CHECKS["build"] = check_build
# ---------------------------------------------------------------------------
# Builder owner's block (end).
# ---------------------------------------------------------------------------


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--small", action="store_true", help="small sizes (CI smoke run on the CPU)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--only", nargs="*", choices=list(CHECKS), help="run only these checks")
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("--device cuda requested but CUDA is not available; pass --device cpu --small")
    if args.device == "cpu":
        torch.set_num_threads(1)
    t0 = time.perf_counter()
    result = {"device": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu",
              "torch": torch.__version__}
    for name, fn in CHECKS.items():
        if args.only and name not in args.only:
            continue
        t = time.perf_counter()
        result[name] = fn(args)
        result[name]["seconds"] = round(time.perf_counter() - t, 2)
    result["ok"] = all(v["ok"] for v in result.values() if isinstance(v, dict) and "ok" in v)
    result["seconds"] = round(time.perf_counter() - t0, 2)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    sys.exit(0 if main()["ok"] else 1)
