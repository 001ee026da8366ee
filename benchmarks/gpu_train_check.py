"""GPU training check: ``examples/train.py`` in ``erm`` and ``plus`` on one GPU, images/s of each and the ratio.

    python benchmarks/gpu_train_check.py                       # CUDA machine, about 4 minutes
    python benchmarks/gpu_train_check.py --small --device cpu  # CI smoke run (tiny sizes)

Needs no network and no dataset:

1. Writes an ImageFolder of real photo crops (scikit-image's and, where installed,
   scikit-learn's bundled photos; one class per source photo; random crops rescaled
   to a shorter side of 256-500 px, JPEG) into ``--work``.
2. Builds a store over it with a random-init timm teacher on the device
   (``rrc+ra/re`` at 224 px, 8 augmentations, top-5).
3. Runs ``examples/train.py`` once per mode, same recipe: a resnet50 student, global
   batch 256, bf16 autocast, channels_last, 12 loader workers, ``data.device: cuda`` in
   both modes (workers decode and crop; the GPU finishes every batch with
   ``DeviceReplay``: RandAugment and erasing for both, the stored teacher targets for
   ``plus``, one-hot targets for ``erm``), and enough passes over the photos per epoch
   (``data.repeats``) for ``--steps`` steps per epoch.

Prints one JSON object: per mode the images/s of every epoch and of the last one (the
first includes worker start-up and cuDNN autotuning), and ``plus_over_erm``, the ratio of
the last epochs' images/s (1.0 = reinforced data costs what ordinary data costs).

Measured once, on one NVIDIA H200 (torch 2.11, timm 1.0.29, 16 cores), default settings:
480 photos in 10 classes, 101 steps per epoch, 85 s in all; last epoch ERM 3,381 img/s,
Plus 3,308 img/s, ``plus_over_erm`` 0.98 (data wait 0.7-0.8 s of 7.6-7.8 s epochs: GPU-bound).
The store's teacher is random, so the Plus student's accuracy is meaningless here; the
ERM student learns the photos' classes (89% top-1).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
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


def _parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (with --small)")
    p.add_argument("--small", action="store_true", help="tiny sizes for a CPU smoke run")
    p.add_argument("--work", default=None, help="working folder (default: a temporary one, removed after)")
    p.add_argument("--per-class", type=int, default=None, help="training photos per class (default 48; small 4)")
    p.add_argument("--steps", type=int, default=None, help="steps per epoch (default 100; small 8)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per mode (default 2)")
    p.add_argument("--batch-size", type=int, default=None, help="global batch (default 256; small 8)")
    p.add_argument("--workers", type=int, default=None, help="loader workers (default 12; small 0)")
    p.add_argument("--model", default=None, help="student (default resnet50; small cnn:8x2)")
    a = p.parse_args(argv)
    small = a.small
    a.per_class = a.per_class or (4 if small else 48)
    a.steps = a.steps or (8 if small else 100)
    a.epochs = a.epochs or 2
    a.batch_size = a.batch_size or (8 if small else 256)
    a.workers = a.workers if a.workers is not None else (0 if small else 12)
    a.model = a.model or ("cnn:8x2" if small else "resnet50")
    a.image_size = 32 if small else 224
    a.sizes = (40, 64) if small else (256, 500)
    return a


def _photos() -> dict[str, np.ndarray]:
    """Real RGB photos bundled with scikit-image (and scikit-learn when installed), by name."""
    from skimage import data

    out = {}
    for name in ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "retina", "cat", "colorwheel"):
        fn = getattr(data, name, None)
        if fn is None:
            continue
        try:
            img = np.asarray(fn())
        except Exception:  # noqa: BLE001 - a photo that needs a download (pooch) is skipped, not fatal
            continue
        if img.ndim == 3 and img.shape[2] >= 3 and min(img.shape[:2]) >= 256:
            out[name] = img[..., :3].astype(np.uint8)
    try:
        from sklearn.datasets import load_sample_images

        for fname, img in zip(("china", "flower"), load_sample_images().images):
            out[fname] = np.asarray(img, dtype=np.uint8)
    except ImportError:
        pass
    return out


def make_image_folder(root: Path, per_class: int, eval_per_class: int, sizes: tuple[int, int], seed: int = 0
                      ) -> int:
    """Write ``root/{train,val}/<photo>/*.jpg`` (random crops, shorter side in ``sizes``); returns the class count."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    photos = _photos()
    if len(photos) < 5:  # top-5 targets need at least 5 classes
        raise RuntimeError(f"only {len(photos)} bundled photos found ({sorted(photos)}); install scikit-image")
    for split, n in (("train", per_class), ("val", eval_per_class)):
        for name, img in sorted(photos.items()):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            H, W = img.shape[:2]
            for k in range(n):
                frac = rng.uniform(0.5, 1.0)
                h, w = int(H * frac * rng.uniform(0.8, 1.0)), int(W * frac * rng.uniform(0.8, 1.0))
                t, le = int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1))
                crop = Image.fromarray(img[t:t + h, le:le + w])
                short = int(rng.integers(sizes[0], sizes[1] + 1))
                scale = short / min(h, w)
                crop = crop.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
                crop.save(folder / f"{k:04d}.jpg", quality=90)
    return len(photos)


def build_store(a: argparse.Namespace, root: Path, store: Path, num_classes: int) -> float:
    """The reinforcement store of ``root/train`` with a random-init teacher; returns the seconds it took."""
    import torch
    import torchvision.datasets as tvd

    from imagenet_plus.teachers import create_teacher
    from imagenet_plus import create_policy
    from imagenet_plus.builder import build_reinforcements

    base = tvd.ImageFolder(str(root / "train"))
    teacher = create_teacher("test_resnet" if a.small else "resnet18", num_classes=num_classes, pretrained=False,
                             device=a.device, input_size=a.image_size)
    t0 = time.perf_counter()
    build_reinforcements(base, store, policy=create_policy("rrc+ra/re", output_size=a.image_size), teacher=teacher,
                         num_classes=num_classes, num_augmentations=2 if a.small else 8, topk=5, seed=0,
                         dataset_name="imagefolder", teacher_desc=teacher.describe(), samples_per_shard=None,
                         augs_per_shard=None, batch_size=64 if a.small else 256, device=a.device, progress=False,
                         num_workers=min(a.workers, 8))
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return time.perf_counter() - t0


def _recipe(a: argparse.Namespace, root: Path, store: Path, train_images: int) -> dict:
    repeats = max(1, -(-a.steps * a.batch_size // train_images))
    on_gpu = a.device.startswith("cuda")
    return {
        "data": {"dataset": "imagefolder", "root": str(root), "train_split": "train", "eval_split": "val",
                 "repeats": repeats, "device": "cuda" if on_gpu else "cpu"},
        "policy": None, "reinforcements": str(store),
        "eval": {"resize": round(a.image_size * 256 / 224), "crop": a.image_size, "batch_size": 256},
        "model": {"name": a.model}, "epochs": a.epochs, "batch_size": a.batch_size,
        "optimizer": {"name": "sgd", "lr": 0.1 * a.batch_size / 256, "weight_decay": 5e-5, "momentum": 0.9},
        "scheduler": {"name": "cosine", "warmup_epochs": 0}, "amp": "bf16", "channels_last": True,
        "workers": a.workers, "seed": 0,
    }


def run_mode(a: argparse.Namespace, mode: str, recipe_path: Path, out: Path) -> dict:
    """``examples/train.py`` in ``mode`` (its own process on a GPU, this one with ``--small``); its throughput."""
    args = ["--recipe", str(recipe_path), "--mode", mode, "--out", str(out), "--device", a.device, "--no-progress"]
    t0 = time.perf_counter()
    if a.small:
        import train

        with contextlib.redirect_stdout(sys.stderr):
            train.main(args)
    else:
        env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        r = subprocess.run([sys.executable, str(ROOT / "examples" / "train.py"), *args], cwd=ROOT, env=env,
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"examples/train.py --mode {mode} failed (exit {r.returncode}):\n{r.stderr[-4000:]}")
    wall = time.perf_counter() - t0
    res = json.loads((out / "results.json").read_text())
    hist = res["history"]
    return {"images_per_s": hist[-1]["images_per_s"], "epoch_images_per_s": [h["images_per_s"] for h in hist],
            "epoch_seconds": [h["epoch_seconds"] for h in hist], "data_wait_seconds": [h["data_seconds"] for h in hist],
            "steps": sum(h["steps"] for h in hist), "final_test_top1": hist[-1]["test"]["top1"],
            "process_seconds": wall}


def main(argv=None) -> dict:
    """Run the check; prints and returns the JSON dict."""
    import torch
    import yaml

    a = _parse(argv)
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("gpu_train_check: CUDA is not available; run with --small --device cpu for the smoke run")
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-train-check-") as tmp:
        work = Path(a.work) if a.work else Path(tmp)
        root, store = work / "photos", work / "store"
        num_classes = make_image_folder(root, a.per_class, max(2, a.per_class // 3), a.sizes)
        train_images = num_classes * a.per_class
        print(f"gpu_train_check: {train_images} training photos in {num_classes} classes", file=sys.stderr)
        build_seconds = build_store(a, root, store, num_classes)
        print(f"gpu_train_check: store built in {build_seconds:.1f} s", file=sys.stderr)
        recipe = _recipe(a, root, store, train_images)
        recipe_path = work / "recipe.yaml"
        recipe_path.write_text(yaml.safe_dump(recipe))
        modes = {}
        for mode in ("erm", "plus"):
            modes[mode] = run_mode(a, mode, recipe_path, work / f"run-{mode}")
            print(f"gpu_train_check: {mode} {modes[mode]['images_per_s']:.0f} img/s", file=sys.stderr)
    result = {
        "benchmark": "gpu_train_check", "device": a.device, "small": a.small,
        "gpu": torch.cuda.get_device_name() if a.device.startswith("cuda") else None,
        "torch": torch.__version__,
        "settings": {"model": a.model, "batch_size": a.batch_size, "workers": a.workers, "image_size": a.image_size,
                     "train_photos": train_images, "classes": num_classes, "repeats": recipe["data"]["repeats"],
                     "epochs": a.epochs, "data_device": recipe["data"]["device"], "amp": "bf16",
                     "channels_last": True},
        "build_seconds": build_seconds,
        "erm": modes["erm"], "plus": modes["plus"],
        "plus_over_erm": modes["plus"]["images_per_s"] / modes["erm"]["images_per_s"],
        "total_seconds": time.perf_counter() - t_start,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
