"""End-to-end Dataset Reinforcement on real data: scikit-learn's handwritten digits.

    python examples/digits_demo.py --out runs/digits-demo

1. Trains a small teacher ensemble locally (two timm ``test_resnet``, random
   init, 370k parameters each) on all 1,433 training digits, and saves each
   member as safetensors plus the JSON sidecar ``builders/teachers.py`` reads.
2. Builds ``digits-plus`` with ``builders/build.py`` (``main(config)`` over
   ``builders/configs/digits-plus.yaml``: pad-crop, RandAugment(2, 9),
   RandomErasing(0.25), NS=32, K=5; the teacher is the ensemble) over the
   students' training images.
3. Trains the same small student (``cnn:16x2``, 18k parameters), for the same
   number of steps, on the same first 500 training images, over 3 seeds:
   (a) ``baseline``: the policy's ordinary random augmentation (fresh
   parameters every epoch, same ops) and hard labels;
   (b) ``reinforced``: ``digits-plus`` through ``ReinforcedDataset`` (replayed
   stored augmentations, densified teacher top-k targets, p_original 0.01).
4. Prints a table (top-1, ECE with 15 bins, NLL, mean top-1 confidence, epoch
   time; mean and std over seeds) and writes ``results.json``, ``accuracy.png`` and the store to ``--out``.

The setting mirrors the paper's: a teacher much larger than the student that
has seen more data (here all training digits, there IG-1B pretraining), and a
student with limited data and capacity. Everything runs on the CPU; nothing is
downloaded. About 5 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _p in (str(ROOT), str(HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader, Subset  # noqa: E402

from _train import RandomAugmentDataset, TensorBatches, create_model, evaluate, plot_curves, summarize, train  # noqa: E402

CONFIG = ROOT / "builders" / "configs" / "digits-plus.yaml"
ARMS = ("baseline", "reinforced")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/digits-demo", help="output folder (default runs/digits-demo)")
    p.add_argument("--config", default=str(CONFIG.relative_to(ROOT)), help="build config (YAML)")
    p.add_argument("--teachers", default="test_resnet,test_resnet",
                   help="comma-separated timm models of the teacher ensemble (default two test_resnet)")
    p.add_argument("--teacher-epochs", type=int, default=15, help="teacher training epochs (default 15)")
    p.add_argument("--teacher-shift", type=int, default=4, help="teacher training: max translation px (default 4)")
    p.add_argument("--student", default="cnn:16x2",
                   help="student: 'cnn:WIDTHxDEPTH' (examples/_train.py SmallCNN, cnn:16x2 has 18k parameters) "
                        "or a timm name (default cnn:16x2)")
    p.add_argument("--epochs", type=int, default=30, help="student epochs, both arms (default 30)")
    p.add_argument("--seeds", type=int, default=3, help="student seeds per arm (default 3)")
    p.add_argument("--train-samples", type=int, default=500,
                   help="students train on the first N training images (default 500; 0: all 1,433); "
                        "teachers always see all of them")
    p.add_argument("--num-augmentations", type=int, default=None, help="NS (default: the config's)")
    p.add_argument("--topk", type=int, default=None, help="K (default: the config's)")
    p.add_argument("--p-original", type=float, default=0.01,
                   help="probability of an original image with its hard label (default 0.01, as ml-dr)")
    p.add_argument("--batch-size", type=int, default=32, help="student and teacher batch size (default 32)")
    p.add_argument("--lr", type=float, default=0.05, help="peak learning rate (default 0.05)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers (default 2)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads of the training process (default 1: the workers use the other core)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 300 images, NS 4, 2 teacher epochs, 2 student epochs, 1 seed")
    args = p.parse_args(argv)
    if args.quick:
        args.train_samples = min(args.train_samples or 300, 300)
        args.num_augmentations = args.num_augmentations or 4
        args.teacher_epochs, args.epochs, args.seeds = 2, 2, 1
    for name in ("teacher_epochs", "epochs", "seeds", "batch_size", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not 0.0 <= args.p_original <= 1.0:
        p.error(f"--p-original must lie in [0, 1], got {args.p_original}")
    return args


def log(msg: str) -> None:
    print(msg, flush=True)


def _test_tensors(policy, source_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The test split, normalised (the images are already the policy's output size: no crop)."""
    from builders.digits import Digits
    from imagenet_plus.imageio import to_tensor

    test = Digits(split="test", image_size=source_size)
    if source_size != policy.output_size:
        raise ValueError(f"the config's source_size {source_size} differs from the policy's output_size "
                         f"{policy.output_size}; the demo evaluates on the unaugmented test images")
    x = torch.stack([to_tensor(test[i][0]) for i in range(len(test))])
    return policy.normalize(x), torch.tensor(test.targets, dtype=torch.int64)


def _uint8_batch(policy):
    def convert(batch):
        x, y = batch
        return policy.normalize(x), y
    return convert


def train_teachers(args, policy, teacher_base, test_xy, out: Path) -> tuple[list[str], list[str], list[dict]]:
    """Train each ensemble member; returns (names, checkpoint paths, per-member test metrics).

    Teachers see every training image (``teacher_base``), with random translations of up to
    ``--teacher-shift`` pixels: a cheap recipe that still makes them accurate on the policy's crops.
    """
    from safetensors.torch import save_file

    from imagenet_plus.identity import load_sample
    from imagenet_plus.imageio import to_tensor

    names = [n.strip() for n in args.teachers.split(",") if n.strip()]
    folder = out / "teachers"
    folder.mkdir(parents=True, exist_ok=True)
    x = policy.normalize(torch.stack([to_tensor(load_sample(teacher_base, i)[0]) for i in range(len(teacher_base))]))
    y = torch.tensor([load_sample(teacher_base, i)[1] for i in range(len(teacher_base))], dtype=torch.int64)
    black = policy.normalize(torch.zeros(3, 1, 1, dtype=torch.uint8)).flatten()
    ckpts, metrics = [], []
    for k, name in enumerate(names):
        torch.manual_seed(1000 + k)
        model = create_model(name, 10)
        batches = TensorBatches(x, y, args.batch_size, args.teacher_shift, black, seed=1000 + k)
        t0 = time.perf_counter()
        train(model, batches, epochs=args.teacher_epochs, batch_to_inputs=lambda b: b, num_classes=10, lr=args.lr)
        m = evaluate(model, *test_xy)
        m["train_seconds"] = time.perf_counter() - t0
        path = folder / f"teacher{k}-{name}.safetensors"
        save_file({k2: v.detach().contiguous() for k2, v in model.state_dict().items()}, str(path))
        path.with_suffix(".json").write_text(json.dumps({
            "model": name, "num_classes": 10, "input_size": [3, policy.output_size, policy.output_size],
            "mean": list(policy.mean), "std": list(policy.std), "accuracy": m["top1"] / 100.0,
            "eval_split": "test", "dataset": "digits",
            "recipe": {"trainer": "examples/digits_demo.py", "train_images": len(x), "epochs": args.teacher_epochs,
                       "lr": args.lr, "batch_size": args.batch_size, "translate_px": args.teacher_shift}},
            indent=1) + "\n", encoding="utf-8")
        log(f"teacher {k} {name}: test top-1 {m['top1']:.2f}% ECE {m['ece']:.2f}% NLL {m['nll']:.4f} "
            f"({m['train_seconds']:.0f} s, {len(x)} images) -> {path}")
        ckpts.append(str(path))
        metrics.append({"name": name, "checkpoint": str(path), **m})
    return names, ckpts, metrics


@torch.no_grad()
def ensemble_metrics(names, ckpts, policy, test_xy) -> dict:
    """Test metrics of the ensemble as the builder runs it (``builders/teachers.py``)."""
    from builders.teachers import create_teacher, parse_teacher_list

    teacher = create_teacher(parse_teacher_list(names, ckpts), num_classes=10, pretrained=False)
    x, y = test_xy
    raw = (x * torch.tensor(policy.std).view(1, 3, 1, 1) + torch.tensor(policy.mean).view(1, 3, 1, 1)) * 255
    probs = teacher(raw.round().clamp(0, 255).to(torch.uint8)).double()
    from _train import expected_calibration_error

    return {"top1": 100.0 * float((probs.argmax(1) == y).double().mean()),
            "ece": 100.0 * expected_calibration_error(probs, y),
            "nll": float(torch.nn.functional.nll_loss(torch.log(probs.clamp_min(1e-12)), y)),
            "confidence": 100.0 * float(probs.max(1).values.mean())}


def build_store(args, cfg, names, ckpts, out: Path) -> tuple[Path, float]:
    from builders.build import main as build_main

    store = out / "digits-plus"
    if store.exists():  # the demo's own output from an earlier run: the teachers were retrained, rebuild
        shutil.rmtree(store)
    cfg = dataclasses.replace(cfg, out=str(store), teacher=names, teacher_checkpoint=ckpts, pretrained=False,
                              device="cpu", num_workers=0, progress=False, limit_samples=args.train_samples or None)
    if args.num_augmentations:
        cfg = dataclasses.replace(cfg, num_augmentations=args.num_augmentations)
    if args.topk:
        cfg = dataclasses.replace(cfg, topk=args.topk)
    t0 = time.perf_counter()
    build_main(cfg)
    return store, time.perf_counter() - t0


def train_student(args, arm: str, seed: int, policy, train_base, store: Path, test_xy):
    """One student run; returns its per-epoch logs."""
    from imagenet_plus import datasets as ipd

    torch.manual_seed(seed)
    model = create_model(args.student, 10)
    if arm == "baseline":
        ds = RandomAugmentDataset(train_base, policy, seed=seed)
        to_inputs = _uint8_batch(policy)
    else:
        ds = ipd.ReinforcedDataset(train_base, str(store), p_original=args.p_original, seed=seed)
        to_inputs = lambda b: b  # noqa: E731 - already normalised images and dense soft targets
    loader = DataLoader(ds, batch_size=args.batch_size, shuffle=True, num_workers=args.workers, drop_last=True,
                        generator=torch.Generator().manual_seed(seed), persistent_workers=False)
    return train(model, loader, epochs=args.epochs, batch_to_inputs=to_inputs, num_classes=10, lr=args.lr,
                 eval_fn=lambda m: evaluate(m, *test_xy))


def main(argv=None) -> dict:
    """Run the demo; returns the results dict (also written to ``OUT/results.json``)."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from builders.build import create_dataset, load_config
    from imagenet_plus.augment import create_policy

    t_start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = load_config(ROOT / args.config if not Path(args.config).is_absolute() else args.config)
    policy = create_policy(cfg.policy, **({} if cfg.image_size is None else {"output_size": cfg.image_size}))
    full_train = train_base = create_dataset(cfg)
    if args.train_samples and args.train_samples < len(train_base):
        train_base = Subset(train_base, range(args.train_samples))
    test_xy = _test_tensors(policy, cfg.source_size)
    log(f"digits: {len(train_base)} training images, {len(test_xy[1])} test images, {policy.output_size} px; "
        f"policy {policy.name}; student {args.student}; {args.epochs} epochs x {args.seeds} seeds per arm")

    names, ckpts, teacher_members = train_teachers(args, policy, full_train, test_xy, out)
    teacher_ens = ensemble_metrics(names, ckpts, policy, test_xy)
    log(f"teacher ensemble: test top-1 {teacher_ens['top1']:.2f}% ECE {teacher_ens['ece']:.2f}% "
        f"NLL {teacher_ens['nll']:.4f}")
    store, build_seconds = build_store(args, cfg, names, ckpts, out)
    from imagenet_plus.store import Manifest

    manifest = Manifest.load(store)
    log(f"built {store}: NS={manifest.num_augmentations}, K={manifest.topk}, "
        f"{sum(s.bytes for s in manifest.shards):,} shard bytes in {build_seconds:.0f} s")

    runs: dict[str, list] = {arm: [] for arm in ARMS}
    for seed in range(args.seeds):
        for arm in ARMS:
            logs = train_student(args, arm, seed, policy, train_base, store, test_xy)
            final = logs[-1].test
            log(f"student {arm:10s} seed {seed}: top-1 {final['top1']:.2f}% ECE {final['ece']:.2f}% "
                f"NLL {final['nll']:.4f} epoch {np.median([e.seconds for e in logs]):.2f} s")
            runs[arm].append(logs)

    results: dict = {
        "settings": {**vars(args), "policy": policy.config, "train_samples_used": len(train_base),
                     "num_augmentations": manifest.num_augmentations, "topk": manifest.topk,
                     "torch_threads": torch.get_num_threads()},
        "teachers": {"members": teacher_members, "ensemble": teacher_ens},
        "build": {"store": str(store), "seconds": build_seconds,
                  "shard_bytes": sum(s.bytes for s in manifest.shards)},
        "arms": {},
    }
    for arm in ARMS:
        finals = [r[-1].test for r in runs[arm]]
        results["arms"][arm] = {
            "top1": summarize([f["top1"] for f in finals]),
            "ece": summarize([f["ece"] for f in finals]),
            "nll": summarize([f["nll"] for f in finals]),
            "confidence": summarize([f["confidence"] for f in finals]),
            "epoch_seconds": summarize([float(np.median([e.seconds for e in r])) for r in runs[arm]]),
            "curves": {"top1": [[e.test["top1"] for e in r] for r in runs[arm]],
                       "train_loss": [[e.train_loss for e in r] for r in runs[arm]]},
        }
    results["total_seconds"] = time.perf_counter() - t_start

    print_table(results)
    plot_curves({arm: np.array(results["arms"][arm]["curves"]["top1"]) for arm in ARMS}, str(out / "accuracy.png"),
                title=f"digits ({len(train_base)} training images), student {args.student}\n"
                      f"test top-1 per epoch, mean ± std over {args.seeds} seed(s)")
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    log(f"wrote {out / 'results.json'} and {out / 'accuracy.png'} ({results['total_seconds']:.0f} s in all)")
    return results


def print_table(results: dict) -> None:
    """The comparison table, mean ± std over seeds."""
    def cell(s: dict, fmt: str) -> str:
        return f"{format(s['mean'], fmt)} ± {format(s['std'], fmt)}"

    t = results["teachers"]["ensemble"]
    rows = [("teacher ensemble", f"{t['top1']:.2f}", f"{t['ece']:.2f}", f"{t['nll']:.4f}", f"{t['confidence']:.2f}",
             "-")]
    for arm in ARMS:
        a = results["arms"][arm]
        rows.append((f"student, {arm}", cell(a["top1"], ".2f"), cell(a["ece"], ".2f"), cell(a["nll"], ".4f"),
                     cell(a["confidence"], ".2f"), cell(a["epoch_seconds"], ".2f")))
    head = ("", "top-1 (%)", "ECE-15 (%)", "NLL", "confidence (%)", "epoch (s)")
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
    line = lambda r: "  ".join(v.ljust(widths[i]) if i == 0 else v.rjust(widths[i]) for i, v in enumerate(r))  # noqa
    print(line(head))
    print("-" * len(line(head)))
    for r in rows:
        print(line(r))


if __name__ == "__main__":
    main()
