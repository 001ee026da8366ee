"""Training cost of the three modes in one run: epoch time of Plus and KD relative to ERM, same everything else.

    python benchmarks/training_cost.py            # 1,433 digits, NS 16, 5 timed epochs per arm
    python benchmarks/training_cost.py --quick    # 256 digits, NS 4, 2 timed epochs

Each arm is an ``examples/train.py`` trainer (its own ``Trainer``: loader, step,
schedule) built from one recipe, ``examples/recipes/digits.yaml``, with the same
student, optimiser, batch size and loader settings; only the mode differs:

* ``erm``: the policy's random augmentation drawn afresh every epoch, hard labels;
* ``kd``: the same, plus the online teacher on every batch (the demo's ensemble
  architecture, two ``test_resnet``, random init: its values do not change the cost);
* ``plus``: the same images through ``ReinforcedDataset`` over a store built here
  (stored parameters read from the memory-mapped shards, replayed with the same
  ``Policy`` ops, top-k targets densified).

After one warm-up epoch per arm, the arms' epochs alternate (in a rotating order) so
load from other processes hits all alike. Prints one JSON object: per arm the epoch
seconds (and data-loading-only seconds), ``ratio`` = median Plus / median ERM epoch
(target <= 1.05, aim <= 1.00), ``kd_ratio`` = median KD / median ERM epoch, and
``data_ratio`` (Plus / ERM, data loading alone). ``settings.fetch`` says whether each
arm's dataset fetches a batch at once (``__getitems__``: one vectorised parameter draw,
one batched ``Policy.finish``) or item by item; ERM always fetches in batches, the best
ordinary pipeline with these ops.
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

TARGET_RATIO = 1.05
ARMS = ("erm", "kd", "plus")
RECIPE = ROOT / "examples" / "recipes" / "digits.yaml"


def _parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes (256 images, NS 4, 2 timed epochs)")
    p.add_argument("--samples", type=int, default=None, help="training images (default all 1,433; quick 256)")
    p.add_argument("--num-augmentations", type=int, default=None, help="NS of the store (default 16; quick 4)")
    p.add_argument("--epochs", type=int, default=None, help="timed epochs per arm (default 5; quick 2)")
    p.add_argument("--student", default="cnn:8x2", help="student model (examples/_train.py create_model)")
    p.add_argument("--batch-size", type=int, default=64, help="batch size (default 64)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers, every arm (default 0)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    a = p.parse_args(argv)
    a.samples = a.samples or (256 if a.quick else 1433)
    a.num_augmentations = a.num_augmentations or (4 if a.quick else 16)
    a.epochs = a.epochs or (2 if a.quick else 5)
    for name in ("samples", "num_augmentations", "epochs", "batch_size", "threads"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    return a


class _RandomCNN:
    """The store's teacher: a random-init small CNN (the values of the targets do not change the cost)."""

    def __init__(self, policy, num_classes: int) -> None:
        from _train import SmallCNN

        torch.manual_seed(0)
        self.model = SmallCNN(num_classes, width=8, depth=2).eval()
        self.policy = policy

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(self.policy.normalize(x)) * 3.0, dim=1)


def _kd_teacher(folder: Path, policy) -> list[str]:
    """Two random-init test_resnet checkpoints with the sidecar imagenet_plus.teachers reads."""
    import timm
    from safetensors.torch import save_file

    paths = []
    for k in range(2):
        torch.manual_seed(100 + k)
        model = timm.create_model("test_resnet", num_classes=10)
        path = folder / f"teacher{k}.safetensors"
        save_file({n: v.contiguous() for n, v in model.state_dict().items()}, str(path))
        path.with_suffix(".json").write_text(json.dumps({
            "model": "test_resnet", "num_classes": 10, "input_size": [3, policy.output_size, policy.output_size],
            "mean": list(policy.mean), "std": list(policy.std)}))
        paths.append(str(path))
    return paths


def _trainers(a: argparse.Namespace, store: Path, teacher_ckpts: list[str]) -> dict:
    import train
    from _recipe import load_recipe

    overrides = [("data.train_samples", a.samples), ("reinforcements", str(store)), ("model.name", a.student),
                 ("batch_size", a.batch_size), ("workers", a.workers), ("epochs", 2 + a.epochs),
                 ("teacher.models", ["test_resnet"] * len(teacher_ckpts)), ("teacher.checkpoints", teacher_ckpts)]
    d = train.Dist("cpu")
    return {arm: train.Trainer(load_recipe(RECIPE, arm, overrides), d) for arm in ARMS}


def main(argv=None) -> dict:
    """Run the benchmark; returns (and prints) the JSON dict."""
    a = _parse(argv)
    torch.set_num_threads(a.threads)
    from torch.utils.data import Subset

    from _recipe import load_recipe
    from _data import create_base
    from imagenet_plus import create_policy
    from imagenet_plus.builder import build_reinforcements

    recipe = load_recipe(RECIPE, "plus")
    policy = create_policy(recipe["policy"])
    base = create_base(recipe["data"], "train")
    a.samples = min(a.samples, len(base))
    with tempfile.TemporaryDirectory(prefix="training-cost-") as tmp:
        store = Path(tmp) / "store"
        t0 = time.perf_counter()
        build_reinforcements(Subset(base, range(a.samples)), store, policy=policy, teacher=_RandomCNN(policy, 10),
                             num_classes=10, num_augmentations=a.num_augmentations, topk=5, seed=0,
                             dataset_name="digits", teacher_desc={"models": ["random SmallCNN"]},
                             samples_per_shard=512, augs_per_shard=min(16, a.num_augmentations), batch_size=128,
                             progress=False)
        build_seconds = time.perf_counter() - t0
        trainers = _trainers(a, store, _kd_teacher(Path(tmp), policy))
        epoch_s = {k: [] for k in ARMS}
        data_s = {k: [] for k in ARMS}
        epoch = {k: 0 for k in ARMS}

        def run(arm: str, train_step: bool) -> float:
            seconds = trainers[arm].train_epoch(epoch[arm], train_step=train_step)["epoch_seconds"]
            epoch[arm] += 1
            return seconds

        for arm in ARMS:  # warm-up: first-touch page faults, allocator, lazy imports, worker start
            run(arm, True)
        for r in range(a.epochs):
            order = ARMS[r % 3:] + ARMS[: r % 3]
            for arm in order:
                epoch_s[arm].append(run(arm, True))
            for arm in order:
                data_s[arm].append(run(arm, False))
        steps = trainers["erm"].steps_per_epoch
        fetch = {arm: "batched" if hasattr(trainers[arm].train_set, "__getitems__") else "per-item" for arm in ARMS}
    med = {k: float(np.median(v)) for k, v in epoch_s.items()}
    dmed = {k: float(np.median(v)) for k, v in data_s.items()}
    ratio = med["plus"] / med["erm"]
    result = {
        "benchmark": "training_cost",
        "settings": {"samples": a.samples, "num_augmentations": a.num_augmentations, "topk": 5,
                     "policy": policy.name, "image_size": policy.output_size, "student": a.student,
                     "kd_teacher": "2 x test_resnet (random init)", "batch_size": a.batch_size,
                     "steps_per_epoch": steps, "fetch": fetch, "workers": a.workers, "threads": a.threads,
                     "timed_epochs": a.epochs,
                     "recipe": str(RECIPE.relative_to(ROOT))},
        "build_seconds": build_seconds,
        **{arm: {"epoch_seconds": epoch_s[arm], "median_epoch_seconds": med[arm], "data_only_seconds": data_s[arm],
                 "median_data_seconds": dmed[arm]} for arm in ARMS},
        "ratio": ratio,
        "kd_ratio": med["kd"] / med["erm"],
        "data_ratio": dmed["plus"] / dmed["erm"],
        "target_ratio": TARGET_RATIO,
        "meets_target": bool(ratio <= TARGET_RATIO),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
