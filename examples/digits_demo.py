"""The paper's table in miniature, on real data: ERM, online KD and Plus students on scikit-learn's digits.

    python examples/digits_demo.py --out runs/digits-demo       # make demo

1. Trains a teacher ensemble: two timm ``test_resnet`` (random init, 370k parameters
   each) trained with ``examples/train.py`` (``recipes/digits-teacher.yaml``, ERM) on all
   1,433 training digits; each run leaves safetensors weights plus the JSON sidecar
   ``imagenet_plus.teachers`` reads.
2. Builds ``digits-plus`` with ``builders/build.py`` (``builders/configs/digits-plus.yaml``:
   pad-crop, RandAugment(2, 9), RandomErasing(0.25), NS=32, K=5; the ensemble as the
   teacher) over the students' training images.
3. Trains the same student (``cnn:16x2``, 18k parameters) with ``examples/train.py``
   (``recipes/digits.yaml``) on the first 500 training digits, same optimiser, schedule
   and number of steps (28 epochs), over 3 seeds, in each mode:
   ``erm`` (the policy's random augmentation drawn afresh, hard labels with smoothing 0.1),
   ``kd`` (the same augmentation, the ensemble run online on every batch),
   ``plus`` (``digits-plus`` replayed: stored augmentations, stored teacher targets),
   ``plus-m4`` (the same store, 4 records per decode: ``--records-per-decode 4``, 7 passes of 4
   records per sample, the same 420 optimiser steps; the views spread over each pass by a
   ``ShuffleBuffer`` of the whole pass, ``--view-buffer 2000``: kept in one batch, FKD's way,
   they train far worse here, see the README).
4. Prints the table (top-1, ECE with 15 bins, NLL, confidence and training seconds per
   epoch, mean and std over seeds, and each arm's epoch time relative to ERM) and writes
   ``results.json`` and ``accuracy.png`` (accuracy per epoch and against training time).
5. Evaluates every student with ``examples/evaluate.py`` on the 364 test digits: clean (top-1,
   top-5, NLL, ECE-15, confidence; ``evaluation/reliability.png``) and under the corruptions that
   make sense for 8x8 scans upsampled to 32 px, at CIFAR-10-C's severities 1-5 (:data:`CORRUPTIONS`:
   noise, blur, brightness, contrast, elastic, pixelate; left out: JPEG, near-lossless on these
   smooth grey images, PSNR >= 36 dB at severity 5, and snow, frost and fog, outdoor weather),
   with the mCE against ERM (the mean of its seeds); prints the table of every arm with the
   robustness columns and writes ``evaluation/`` (results.json, table.md, robustness.png).

The setting mirrors the paper's: a teacher much larger than the student that has seen
more data, a student with limited data and capacity. Everything runs on the CPU;
nothing is downloaded. About 10 minutes on 2 cores: 619 s measured in all, the evaluation (step 5) 86 s
of it.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
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

import train as train_script  # noqa: E402
from _train import expected_calibration_error, summarize  # noqa: E402

CONFIG = ROOT / "builders" / "configs" / "digits-plus.yaml"
RECIPE = HERE / "recipes" / "digits.yaml"
TEACHER_RECIPE = HERE / "recipes" / "digits-teacher.yaml"
ARMS = ("erm", "kd", "plus")
ARM_LABELS = {"erm": "ERM (random aug., hard labels)", "kd": "KD (teacher online)",
              "plus": "Plus (digits-plus)"}


def arms_of(args) -> tuple[str, ...]:
    """The arms of a run: ERM, KD, Plus and (``--records-per-decode M`` > 1) Plus at M records per decode."""
    m = args.records_per_decode
    return ARMS + ((f"plus-m{m}",) if m > 1 else ())


def arm_label(arm: str) -> str:
    if arm.startswith("plus-m"):
        return f"Plus, {arm[6:]} records per decode (spread)"
    return ARM_LABELS[arm]
# The ImageNet-C types that make sense for 8x8 digit scans upsampled to 32 px (see the docstring).
CORRUPTIONS = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
               "zoom_blur", "brightness", "contrast", "elastic_transform", "pixelate")
QUICK_CORRUPTIONS = ("gaussian_noise", "defocus_blur", "elastic_transform")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/digits-demo", help="output folder (default runs/digits-demo)")
    p.add_argument("--config", default=str(CONFIG.relative_to(ROOT)), help="build config of the store (YAML)")
    p.add_argument("--teachers", type=int, default=2, help="ensemble members (default 2 test_resnet)")
    p.add_argument("--teacher-epochs", type=int, default=15, help="teacher training epochs (default 15)")
    p.add_argument("--teacher-samples", type=int, default=0,
                   help="teachers train on the first N training digits (default 0: all 1,433)")
    p.add_argument("--epochs", type=int, default=28,
                   help="student epochs (records per sample), every arm (default 28, a multiple of 4)")
    p.add_argument("--records-per-decode", type=int, default=4,
                   help="M of the fourth arm, Plus with M records per decode at the same steps (default 4; "
                        "1: no fourth arm)")
    p.add_argument("--seeds", type=int, default=3, help="student seeds per arm (default 3)")
    p.add_argument("--train-samples", type=int, default=500,
                   help="students train on the first N training digits (default 500); teachers see all 1,433")
    p.add_argument("--num-augmentations", type=int, default=None, help="NS of the store (default: the config's)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers (default 2)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads of the training process (default 1: the workers use the other core)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 128 images, NS 4, teachers 2 epochs on 512 digits, 2 student epochs, 1 seed, "
                        "evaluation on the first 128 test digits, 3 corruption types")
    args = p.parse_args(argv)
    args.corruptions = list(QUICK_CORRUPTIONS if args.quick else CORRUPTIONS)
    if args.quick:
        args.train_samples = min(args.train_samples, 128)
        args.num_augmentations = args.num_augmentations or 4
        args.teacher_epochs, args.epochs, args.seeds = 2, 2, 1
        args.records_per_decode = min(args.records_per_decode, 2)
        args.teacher_samples = args.teacher_samples or 512
    args.eval_samples = 128 if args.quick else None
    for name in ("teachers", "teacher_epochs", "epochs", "seeds", "train_samples", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.teacher_samples < 0:
        p.error(f"--teacher-samples must be >= 0, got {args.teacher_samples}")
    if args.epochs < 2 or args.teacher_epochs < 2:
        p.error("--epochs and --teacher-epochs must be >= 2 (the recipes warm up for one epoch)")
    if args.records_per_decode < 1 or args.epochs % args.records_per_decode:
        p.error(f"--epochs {args.epochs} must be a multiple of --records-per-decode {args.records_per_decode} (>= 1): "
                "the M arm makes epochs / M passes of M records per sample")
    return args


def log(msg: str) -> None:
    print(msg, flush=True)


def _train(argv: list[str]) -> dict:
    """One ``examples/train.py`` run in this process, its per-epoch JSON lines kept out of the demo's output."""
    with contextlib.redirect_stdout(io.StringIO()):
        return train_script.main(argv)


def train_teachers(args, out: Path) -> list[dict]:
    """Train the ensemble members; returns one ``{"checkpoint", "test"}`` per member."""
    members = []
    for k in range(args.teachers):
        run = out / "teachers" / f"t{k}"
        t0 = time.perf_counter()
        res = _train(["--recipe", str(TEACHER_RECIPE), "--mode", "erm", "--out", str(run), "--seed", str(1000 + k),
                      "--epochs", str(args.teacher_epochs), "--workers", str(args.workers), "--no-progress",
                      "--set", f"data.train_samples={args.teacher_samples or 'null'}",
                      "--set", f"data.eval_samples={args.eval_samples or 'null'}"])
        test = res["final"]["test"]
        seen = f"the first {args.teacher_samples}" if args.teacher_samples else "all 1,433"
        log(f"teacher {k} test_resnet: test top-1 {test['top1']:.2f}% ECE {test['ece']:.2f}% NLL {test['nll']:.4f} "
            f"({time.perf_counter() - t0:.0f} s, {seen} training digits) -> {run / 'model.safetensors'}")
        members.append({"name": "test_resnet", "checkpoint": str(run / "model.safetensors"), **test})
    return members


@torch.no_grad()
def ensemble_metrics(members: list[dict], policy) -> dict:
    """Test metrics of the ensemble as the builder and the KD arm run it (``imagenet_plus.teachers``)."""
    from imagenet_plus.adapters import Digits
    from imagenet_plus.teachers import create_teacher, parse_teacher_list
    from imagenet_plus.imageio import to_tensor

    teacher = create_teacher(parse_teacher_list([m["name"] for m in members], [m["checkpoint"] for m in members]),
                             num_classes=10, pretrained=False)
    test = Digits(split="test", image_size=policy.output_size)
    x = torch.stack([to_tensor(test[i][0]) for i in range(len(test))])
    y = torch.tensor(test.targets)
    probs = teacher(x).double()
    return {"top1": 100.0 * float((probs.argmax(1) == y).double().mean()),
            "ece": 100.0 * expected_calibration_error(probs, y),
            "nll": float(torch.nn.functional.nll_loss(torch.log(probs.clamp_min(1e-12)), y)),
            "confidence": 100.0 * float(probs.max(1).values.mean())}


def build_store(args, members: list[dict], out: Path) -> tuple[Path, float]:
    from builders.build import load_config
    from builders.build import main as build_main

    store = out / "digits-plus"
    cfg = dataclasses.replace(load_config(ROOT / args.config), out=str(store),
                              teacher=[m["name"] for m in members],
                              teacher_checkpoint=[m["checkpoint"] for m in members], pretrained=False,
                              device="cpu", num_workers=0, progress=False, limit_samples=args.train_samples)
    if args.num_augmentations:
        cfg = dataclasses.replace(cfg, num_augmentations=args.num_augmentations)
    t0 = time.perf_counter()
    build_main(cfg)
    return store, time.perf_counter() - t0


def train_student(args, arm: str, seed: int, store: Path, members: list[dict], out: Path) -> dict:
    run = out / "students" / f"{arm}-s{seed}"
    mode, _, views = arm.partition("-m")  # plus-m4: mode plus, 4 records per decode
    return _train(["--recipe", str(RECIPE), "--mode", mode, "--out", str(run), "--seed", str(seed),
                   "--records-per-decode", views or "1",
                   # the M views spread over a whole pass (a ShuffleBuffer of every item): kept in one batch, as
                   # FKD does, 8 distinct digits per batch of 32 train far worse (see the README)
                   "--view-buffer", str(args.train_samples * int(views) if views else 0),
                   "--epochs", str(args.epochs), "--workers", str(args.workers), "--reinforcements", str(store),
                   "--teacher", ",".join(m["name"] for m in members),
                   "--teacher-checkpoint", ",".join(m["checkpoint"] for m in members),
                   "--set", f"data.train_samples={args.train_samples}",
                   "--set", f"data.eval_samples={args.eval_samples or 'null'}", "--no-progress"])


def _arm_results(runs: list[dict]) -> dict:
    """Mean ± std over seeds; ``epoch_seconds`` per epoch of records (a pass of ``M`` records counts ``M``)."""
    finals = [r["final"]["test"] for r in runs]
    return {
        **{k: summarize([f[k] for f in finals]) for k in ("top1", "ece", "nll", "confidence")},
        "epoch_seconds": summarize([r["median_epoch_seconds"] / r["records_per_decode"] for r in runs]),
        "train_seconds": summarize([r["train_seconds"] for r in runs]),
        "steps": int(runs[0]["global_step"]),
        "images_per_s": summarize([r["median_images_per_s"] for r in runs]),
        "curves": {"epoch": [[h["epoch"] for h in r["history"]] for r in runs],
                   "top1": [[h["test"]["top1"] for h in r["history"]] for r in runs],
                   "epoch_seconds": [[h["epoch_seconds"] for h in r["history"]] for r in runs],
                   "train_loss": [[h["train_loss"] for h in r["history"]] for r in runs]},
    }


def main(argv=None) -> dict:
    """Run the demo; returns the results dict (also written to ``OUT/results.json``)."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from imagenet_plus import create_policy
    from imagenet_plus.store import Manifest

    t_start = time.perf_counter()
    out = Path(args.out)
    for own in ("teachers", "students", "digits-plus"):  # this demo's own earlier output: retrained, rebuilt
        shutil.rmtree(out / own, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    log(f"digits: students train on {args.train_samples} of the 1,433 training digits, {args.epochs} epochs x "
        f"{args.seeds} seed(s) per arm ({', '.join(arms_of(args))}); teachers on all of them")
    members = train_teachers(args, out)
    policy = create_policy(train_script.load_recipe(RECIPE, "plus")["policy"])
    teacher_ens = ensemble_metrics(members, policy)
    log(f"teacher ensemble: test top-1 {teacher_ens['top1']:.2f}% ECE {teacher_ens['ece']:.2f}% "
        f"NLL {teacher_ens['nll']:.4f}")
    store, build_seconds = build_store(args, members, out)
    manifest = Manifest.load(store)
    log(f"built {store}: NS={manifest.num_augmentations}, K={manifest.topk}, "
        f"{sum(s.bytes for s in manifest.shards):,} shard bytes in {build_seconds:.0f} s")

    arms = arms_of(args)
    runs: dict[str, list[dict]] = {arm: [] for arm in arms}
    for seed in range(args.seeds):
        for arm in arms:
            res = train_student(args, arm, seed, store, members, out)
            final = res["final"]["test"]
            log(f"student {arm:4s} seed {seed}: top-1 {final['top1']:.2f}% ECE {final['ece']:.2f}% "
                f"NLL {final['nll']:.4f} epoch {res['median_epoch_seconds']:.2f} s")
            runs[arm].append(res)

    results = {
        "settings": {**vars(args), "policy": policy.config, "num_augmentations": manifest.num_augmentations,
                     "topk": manifest.topk, "recipe": str(RECIPE.relative_to(ROOT)),
                     "student": train_script.load_recipe(RECIPE, "erm")["model"]["name"]},
        "teachers": {"members": members, "ensemble": teacher_ens},
        "build": {"store": str(store), "seconds": build_seconds,
                  "shard_bytes": sum(s.bytes for s in manifest.shards)},
        "arms": {arm: _arm_results(runs[arm]) for arm in arms},
    }
    erm_epoch = results["arms"]["erm"]["epoch_seconds"]["mean"]
    for arm in arms:
        results["arms"][arm]["epoch_vs_erm"] = results["arms"][arm]["epoch_seconds"]["mean"] / erm_epoch
    print_table(results)
    results["evaluation"] = evaluate_students(args, out)
    results["total_seconds"] = time.perf_counter() - t_start
    plot_arms(results, out / "accuracy.png")
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    log(f"wrote {out / 'results.json'} and {out / 'accuracy.png'} ({results['total_seconds']:.0f} s in all)")
    return results


def evaluate_students(args, out: Path) -> dict:
    """Every student through ``examples/evaluate.py``: clean, corrupted (mCE against ERM), reliability diagrams."""
    import os

    import evaluate

    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(max(args.threads, min(2, os.cpu_count() or 1)))  # no loader workers compete now
    try:
        runs = [evaluate.load_run(arm, out / "students" / f"{arm}-s{seed}")
                for arm in arms_of(args) for seed in range(args.seeds)]
        opts = evaluate.Options(corruptions=tuple(args.corruptions), table="cifar", seed=0, samples=args.eval_samples,
                                batch_size=512, workers=0)
        results = evaluate.evaluate_runs(runs, opts)
        summary = evaluate.summarize_labels(results, "erm")
        log(f"\nevaluation ({results['settings']['samples']} test digits; corrupted: {len(args.corruptions)} types x "
            f"severities 1-5, CIFAR-10-C parameters; mCE relative to ERM, the mean of its seeds):")
        evaluate.write_report(results, summary, out / "evaluation", {a: f"student, {arm_label(a)}" for a in arms_of(args)})
    finally:
        torch.set_num_threads(threads)
    seconds = time.perf_counter() - t0
    log(f"evaluation: {seconds:.0f} s -> {out / 'evaluation'} (results.json, table.md, reliability.png, "
        "robustness.png)")
    keep = ("top1", "ece", "nll", "confidence", "corruption_top1", "mce", "relative_mce", "per_type", "per_severity")
    return {"seconds": seconds, "corruptions": list(args.corruptions), "table": "cifar",
            "arms": {a: {k: v for k, v in summary[a].items() if k in keep} for a in arms_of(args)}}


def print_table(results: dict) -> None:
    """The comparison table, mean ± std over seeds."""
    def cell(s: dict, fmt: str) -> str:
        return f"{format(s['mean'], fmt)} ± {format(s['std'], fmt)}"

    t = results["teachers"]["ensemble"]
    rows = [("teacher ensemble", f"{t['top1']:.2f}", f"{t['ece']:.2f}", f"{t['nll']:.4f}", f"{t['confidence']:.2f}",
             "-", "-", "-")]
    for arm in results["arms"]:
        a = results["arms"][arm]
        rows.append((f"student, {arm_label(arm)}", cell(a["top1"], ".2f"), cell(a["ece"], ".2f"),
                     cell(a["nll"], ".4f"), cell(a["confidence"], ".2f"), f"{a['steps']}",
                     cell(a["epoch_seconds"], ".2f"), f"{a['epoch_vs_erm']:.2f}x"))
    head = ("", "top-1 (%)", "ECE-15 (%)", "NLL", "confidence (%)", "steps", "epoch (s)", "vs ERM")
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
    line = lambda r: "  ".join(v.ljust(widths[i]) if i == 0 else v.rjust(widths[i]) for i, v in enumerate(r))  # noqa
    print(line(head))
    print("-" * len(line(head)))
    for r in rows:
        print(line(r))


def plot_arms(results: dict, path: Path) -> None:
    """Test top-1 per epoch (mean ± std over seeds) and against cumulative training time, one curve per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = results["settings"]
    fig, (by_epoch, by_time) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    for arm in results["arms"]:
        c = results["arms"][arm]["curves"]
        acc = np.asarray(c["top1"], dtype=np.float64)
        secs = np.cumsum(np.asarray(c["epoch_seconds"], dtype=np.float64), axis=1).mean(0)
        mean, std = acc.mean(0), acc.std(0)
        epochs = np.asarray(c["epoch"][0])  # records per sample so far (a pass of M records: M epochs)
        label = f"{arm_label(arm)} (final {mean[-1]:.2f})"
        by_epoch.plot(epochs, mean, marker="o", ms=2.5, label=label)
        by_epoch.fill_between(epochs, mean - std, mean + std, alpha=0.2)
        by_time.plot(secs, mean, marker="o", ms=2.5, label=f"{arm_label(arm)} ({secs[-1]:.0f} s)")
    by_epoch.set_xlabel("epoch")
    by_time.set_xlabel("training seconds (mean over seeds)")
    for ax in (by_epoch, by_time):
        ax.set_ylabel("test top-1 (%)")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    fig.suptitle(f"digits ({s['train_samples']} training images), student {s['student']}, same steps per arm; "
                 f"mean ± std over {s['seeds']} seed(s)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    main()
