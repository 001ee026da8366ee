"""Train a classifier the three ways the paper compares, from one recipe: ``erm``, ``kd`` and ``plus``.

    python examples/train.py --recipe examples/recipes/digits.yaml --mode plus --out runs/digits-plus-s0 \\
        --set reinforcements=runs/digits-demo/digits-plus
    torchrun --nproc-per-node 8 examples/train.py --recipe examples/recipes/imagenet-resnet50.yaml \\
        --mode plus --data-root /data/imagenet --reinforcements /data/imagenet-plus --out runs/r50-plus

Modes (same model, optimiser, schedule and number of steps; the recipe may set
the paper's per-mode values, e.g. KD's weight decay):

* ``erm``: the policy's ordinary random augmentation, drawn afresh every
  epoch (:class:`_data.RandomAugmentDataset`), hard labels (label smoothing and
  in-batch MixUp/CutMix as the recipe says).
* ``kd``: the same random augmentation; the teacher runs online on every batch
  and its probabilities are the targets (the cost the paper avoids).
* ``plus``: the reinforced dataset (:class:`imagenet_plus.ReinforcedDataset`):
  stored augmentations replayed, stored teacher probabilities as targets; with
  ``data.device: cuda`` the workers only crop and the GPU finishes each batch
  (:class:`imagenet_plus.DeviceReplay`).

Several records per decode (mode ``plus``, ``--records-per-decode M``): each sample is decoded
once and ``M`` of its stored records replayed from it (``ReinforcedDataset(records_per_decode=M)``).
``epochs`` keeps its meaning, the records each sample contributes: the run makes ``epochs / M``
passes, each serving ``M`` records per sample, with ``batch_size`` still the items per optimiser
step (``batch_size / M`` samples per loader batch), so an ``M`` run takes the same number of
optimiser steps (``M`` times the ``M=1`` loader's full batches per pass; the views left over at the end
of a pass go unused, as ``M=1`` drops its last partial batch) on the same learning-rate schedule as the
``M=1`` run of the same recipe: compare them with the same ``--epochs`` (a multiple of ``M``).
Evaluation, checkpoints and log records come once per pass (record ``epoch`` = records per sample
so far, ``pass``, ``global_step``). The views of a sample share a batch (FKD's way) unless
``--view-buffer N`` re-batches them through a shuffle buffer of ``N`` items per rank
(:class:`imagenet_plus.ShuffleBuffer`).

The loss is the soft-target cross-entropy in every mode (for KD it differs from
the KL divergence by the teacher's entropy, a constant: same gradients).

Runs under ``torchrun`` (DistributedDataParallel, ``DistributedSampler`` with
``set_epoch``; ``batch_size`` is global), with bf16 autocast and channels_last
on CUDA, timm models, optimisers, schedulers (stepped per iteration) and EMA.
After every epoch it evaluates (top-1, top-5, NLL, ECE with 15 bins), writes
``OUT/checkpoint.safetensors`` (atomically), appends the epoch to
``OUT/log.jsonl`` and redraws ``OUT/plot.png`` (accuracy and cost per epoch; at most
every 30 s, and at the end).
Rerunning the same command after a kill resumes from the last checkpoint and
reaches the same weights, bit for bit on the CPU: every draw depends only on
``(seed, epoch, sample)`` or ``(seed, epoch, step)``, the RNG states are in the
checkpoint, and DataLoader workers hold no state. At the end it writes
``OUT/model.safetensors`` (and ``model_ema``) with a JSON sidecar that
``imagenet_plus.teachers`` reads, so a trained model can serve as a teacher.

Where it has run: everything on the CPU (tests: every mode, bitwise resume after
SIGKILL, two gloo ranks; ``torchrun --nproc-per-node 2`` by hand); on one H200,
``erm`` and ``plus`` with ``data.device: cuda``, bf16 and channels_last
(``benchmarks/gpu_train_check.py``). Not yet run on a GPU: ``kd``, NCCL across
several GPUs, ``compile``, resuming a CUDA run.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from pathlib import Path

# The examples' own helpers (_data, _recipe, ...) sit next to this file: Python puts the script's folder on
# sys.path when it runs it; an importer (the tests) may not. The repository itself is never put on sys.path,
# so `imagenet_plus` is the installed package (invariant 9: examples work from the wheel).
HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader, DistributedSampler  # noqa: E402

from _checkpoint import load_checkpoint, load_pretrained, save_checkpoint, save_weights  # noqa: E402
from _dist import Dist  # noqa: E402
from _data import (EvalDataset, RandomAugmentDataset, in_memory, Repeat, create_base, create_teacher,  # noqa: E402
                   denormalize_to_uint8, mix_batch, subset_first, uint8_identity)
from _recipe import load_recipe, parse_override, recipe_digest  # noqa: E402
from _train import classification_metrics, create_model, plot_run  # noqa: E402

from imagenet_plus import atomic_write_text  # noqa: E402
from imagenet_plus.errors import ArgumentError, ReinforcementError  # noqa: E402

__all__ = ["main", "run", "parse_args", "resolve_run", "Trainer", "Dist"]

CHECKPOINT = "checkpoint.safetensors"
_PLOT_EVERY_S = 30.0
# Convenience flags: (flag, recipe key, type).
_FLAGS = (("--data-root", "data.root", str), ("--reinforcements", "reinforcements", str),
          ("--epochs", "epochs", int), ("--batch-size", "batch_size", int), ("--lr", "optimizer.lr", float),
          ("--workers", "workers", int), ("--seed", "seed", int), ("--model", "model.name", str),
          ("--records-per-decode", "records_per_decode", int), ("--view-buffer", "view_buffer", int))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", required=True, help="recipe YAML (examples/recipes/*.yaml)")
    p.add_argument("--mode", required=True, choices=("erm", "kd", "plus"), help="what to train on")
    p.add_argument("--out", required=True, help="output folder (rerun the same command to resume)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe key (YAML value), e.g. --set optimizer.weight_decay=5e-5; repeatable")
    for flag, key, typ in _FLAGS:
        p.add_argument(flag, type=typ, default=None, help=f"shorthand for --set {key}=VALUE")
    p.add_argument("--teacher", default=None, help="kd: comma-separated timm names (--set teacher.models)")
    p.add_argument("--teacher-checkpoint", default=None,
                   help="kd: comma-separated safetensors weights, one per teacher (--set teacher.checkpoints)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda (default auto)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads of each process (default: torch's)")
    p.add_argument("--deterministic", action="store_true",
                   help="CUDA: deterministic kernels, no cuDNN autotuning (slower); the CPU is deterministic anyway")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return p.parse_args(argv)


def _overrides(args: argparse.Namespace) -> list[tuple[str, object]]:
    out = [parse_override(s) for s in args.set]
    for flag, key, _ in _FLAGS:
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        if value is not None:
            out.append((key, value))
    if args.teacher is not None:
        out.append(("teacher.models", [s.strip() for s in args.teacher.split(",") if s.strip()]))
    if args.teacher_checkpoint is not None:
        out.append(("teacher.checkpoints", [s.strip() for s in args.teacher_checkpoint.split(",")]))
    return out


def _num_classes(base) -> int:
    inner = getattr(base, "dataset", base)
    classes = getattr(inner, "classes", None)
    if not classes:
        raise ArgumentError(f"{type(inner).__name__} does not list its classes; use a dataset with a .classes list")
    return len(classes)


def _check_mode_keys(r: dict) -> None:
    mode = r["mode"]
    if mode != "erm" and r["label_smoothing"] > 0:
        raise ArgumentError(f"recipe key label_smoothing={r['label_smoothing']} applies to hard labels (mode erm); "
                            f"mode {mode} trains on teacher probabilities: set it under modes.erm")
    if mode == "plus" and r["mix"] is not None:
        raise ArgumentError("recipe key mix applies to erm/kd (in-batch MixUp/CutMix); a plus store mixes through "
                            "its own policy: set mix under modes.erm / modes.kd")
    if mode == "plus" and not r["reinforcements"]:
        raise ArgumentError("mode plus needs the store: pass --reinforcements FOLDER (or --set reinforcements=...)")
    views = r["records_per_decode"]
    if mode != "plus" and (views != 1 or r["view_buffer"]):
        raise ArgumentError(f"recipe keys records_per_decode={views} / view_buffer={r['view_buffer']} apply to mode "
                            f"plus (replayed records); mode {mode} draws its augmentations: leave them at 1 / 0")
    if r["epochs"] % views:
        raise ArgumentError(f"epochs={r['epochs']} must be a multiple of records_per_decode={views}: the run makes "
                            f"epochs / {views} passes of {views} records per sample; pass --epochs "
                            f"{max(views, r['epochs'] // views * views)}")


def resolve_run(recipe: dict) -> tuple[dict, list[str]]:
    """The settings a run really uses (what ``config.json`` records) and a note for each change to the recipe's.

    * warm-up must end before the last epoch: ``scheduler.warmup_epochs`` is clamped to ``epochs - 1``;
    * mode ``plus`` replays the store's records, which exist for the store's policy only: the store's policy
      is adopted (and, when its image size differs from the recipe policy's, the evaluation transform is
      scaled to it: crop = the store's size, resize in the recipe's proportion).

    Applying it twice changes nothing (a rerun of the same command resolves to the same settings).
    """
    r, notes = copy.deepcopy(recipe), []
    warm, epochs = r["scheduler"]["warmup_epochs"], r["epochs"]
    if warm >= epochs:
        r["scheduler"]["warmup_epochs"] = epochs - 1
        notes.append(f"scheduler.warmup_epochs={warm} lowered to {epochs - 1}: the warm-up must end before the last "
                     f"of the {epochs} epoch(s) (set it below epochs to choose another value)")
    if r["mode"] == "plus" and r["reinforcements"]:
        notes += _adopt_store_policy(r)
    return r, notes


def _adopt_store_policy(r: dict) -> list[str]:
    """Mode plus: set ``r["policy"]`` to the store's (and scale ``r["eval"]`` to its size); the note, if it differs."""
    from imagenet_plus import create_policy
    from imagenet_plus.datasets import open_reinforcements

    store = open_reinforcements(r["reinforcements"], r["num_augmentations"])
    theirs = create_policy(store.policy_config)
    mine = None if r["policy"] is None else create_policy(r["policy"])
    r["policy"] = theirs.config
    if mine is None or mine == theirs:
        return []
    note = (f"mode plus: the store {r['reinforcements']} holds records of policy {theirs.name!r} at "
            f"{theirs.output_size} px, the recipe's policy is {mine.name!r} at {mine.output_size} px; training on the "
            "store's policy (its records exist for it only), recorded in config.json")
    if theirs.output_size != mine.output_size:
        ev = r["eval"]
        resize = max(theirs.output_size, round(ev["resize"] * theirs.output_size / mine.output_size))
        note += (f"; evaluation at resize {resize} / crop {theirs.output_size} (the recipe's resize "
                 f"{ev['resize']} / crop {ev['crop']} scaled to the store's size)")
        ev["resize"], ev["crop"] = resize, theirs.output_size
    return [note + "; to train on the recipe's policy, pass a store built with it"]


# ----------------------------------------------------------------------------- the trainer
class Trainer:
    """One run of one mode: data, model, optimiser, schedule, EMA; one call per epoch.

    Args:
        recipe: settings from :func:`_recipe.load_recipe` (with ``mode``).
        dist_: this process's :class:`Dist`.
        progress: show a progress bar (rank 0).
    """

    def __init__(self, recipe: dict, dist_: Dist, *, progress: bool = False) -> None:
        _check_mode_keys(recipe)
        recipe, self.notes = resolve_run(recipe)
        self.r, self.dist, self.progress = recipe, dist_, progress
        self.device = dist_.device
        self.mode = recipe["mode"]
        self.cuda = self.device.type == "cuda"
        self._create_data()
        self._create_model()

    # ------------------------------------------------------------------ data
    def _policy_for_random_augment(self):
        from imagenet_plus import create_policy, open_store

        cfg = self.r["policy"]
        if cfg is None:
            if not self.r["reinforcements"]:
                raise ArgumentError(f"mode {self.mode}: set recipe key policy (a preset name or config), or "
                                    "reinforcements (the store's policy is used)")
            cfg = open_store(self.r["reinforcements"]).policy_config
        return create_policy(cfg, mix=None)

    def _create_data(self) -> None:
        from imagenet_plus import DeviceReplay, ReinforcedDataset
        from imagenet_plus.augment import create_eval_transform

        r, data = self.r, self.r["data"]
        if data["device"] == "cuda" and not self.cuda:
            raise ArgumentError("recipe key data.device=cuda needs --device cuda; set data.device=cpu on this machine")
        base = subset_first(create_base(data, data["train_split"]), data["train_samples"])
        self.num_classes = _num_classes(base)
        replay_device = self.device if data["device"] == "cuda" else "cpu"
        self.views = r["records_per_decode"]
        if self.mode == "plus":
            ds = ReinforcedDataset(base, r["reinforcements"], num_augmentations=r["num_augmentations"],
                                   p_original=r["p_original"], seed=r["seed"], device=replay_device,
                                   transform=None if data["device"] == "cuda" else uint8_identity,
                                   records_per_decode=self.views)
            if ds.num_classes != self.num_classes:
                raise ArgumentError(f"the store {r['reinforcements']} has {ds.num_classes} classes, the dataset "
                                    f"{self.num_classes}; use reinforcements built for this dataset")
            self.policy = ds.policy
            self.replay = ds.create_device_replay(self.device) if data["device"] == "cuda" else None
        else:
            self.policy = self._policy_for_random_augment()
            ds = RandomAugmentDataset(base, self.policy, seed=r["seed"], device=replay_device,
                                      transform=uint8_identity)
            self.replay = DeviceReplay(self.policy, self.num_classes, device=self.device) \
                if data["device"] == "cuda" else None
        self.train_set = ds if data["repeats"] == 1 else Repeat(ds, data["repeats"])
        self._create_loader(r)
        world = self.dist.world
        if self.steps_per_pass == 0:
            raise ArgumentError(f"{len(self.train_set)} training samples over {world} rank(s) make no full batch "
                                f"of {r['batch_size']}; lower batch_size or raise data.repeats")
        workers = r["workers"]
        ev = r["eval"]
        transform = create_eval_transform(ev["crop"], ev["resize"], mean=self.policy.mean, std=self.policy.std)
        eval_base = subset_first(create_base(data, data["eval_split"]), data["eval_samples"])
        eval_set = torch.utils.data.Subset(EvalDataset(eval_base, transform),
                                           range(self.dist.rank, len(eval_base), world))
        cached = in_memory(eval_set)  # a small eval set is decoded once, not once per epoch
        self.eval_loader = DataLoader(eval_set if cached is None else cached, batch_size=ev["batch_size"],
                                      num_workers=min(workers, 4) if cached is None else 0, pin_memory=self.cuda)
        self.teacher = create_teacher(r["teacher"], self.num_classes, self.device) if self.mode == "kd" else None

    def _create_loader(self, r: dict) -> None:
        """The training loader (``batch_size / (world * M)`` samples, ``M`` views each) and, with ``view_buffer``,
        the shuffle buffer that re-batches it; ``self.batches`` is what an epoch iterates."""
        from imagenet_plus import ShuffleBuffer, collate_device_items

        world, views = self.dist.world, self.views
        if r["batch_size"] % (world * views):
            raise ArgumentError(f"batch_size {r['batch_size']} is global and must divide by the {world} rank(s) times "
                                f"records_per_decode={views} (each loader batch holds batch_size / {world * views} "
                                "samples with their views)")
        self.sampler = DistributedSampler(self.train_set, num_replicas=world, rank=self.dist.rank, shuffle=True,
                                          seed=r["seed"], drop_last=False)
        workers, per_rank = r["workers"], r["batch_size"] // world
        self.loader = DataLoader(self.train_set, batch_size=per_rank // views, sampler=self.sampler,
                                 num_workers=workers, drop_last=True, pin_memory=self.cuda,
                                 collate_fn=collate_device_items,  # device path: packs the files' bytes
                                 persistent_workers=workers > 0, worker_init_fn=_seed_worker,
                                 generator=torch.Generator().manual_seed(r["seed"]))
        self.buffer = None
        if r["view_buffer"]:
            if r["view_buffer"] < per_rank:
                raise ArgumentError(f"view_buffer={r['view_buffer']} must hold at least one batch of {per_rank} "
                                    "items per rank; raise it (a few batches spread the views well) or set 0")
            self.buffer = ShuffleBuffer(self.loader, per_rank, buffer_size=r["view_buffer"], seed=r["seed"],
                                        drop_last=True)
        self.batches = self.loader if self.buffer is None else self.buffer
        self.passes = r["epochs"] // views
        # M epochs' worth of steps: M * (the M=1 loader's full batches), so the M=1 and M runs take the same
        # steps and items (the last, partial batches of a pass's views go unused, as M=1 drops its last batch)
        self.steps_per_pass = views * (len(self.sampler) // per_rank)

    # ------------------------------------------------------------------ model
    def _create_model(self) -> None:
        import timm.optim
        import timm.scheduler
        import timm.utils

        r = self.r
        torch.manual_seed(r["seed"])
        m = r["model"]
        kwargs = {**m["kwargs"], **({"pretrained": True} if m["pretrained"] else {})}
        self.model = create_model(m["name"], self.num_classes, **kwargs)
        self.dropped: list[str] = []
        if m["checkpoint"]:
            self.dropped = load_pretrained(self.model, m["checkpoint"])
        self.model = self.model.to(self.device)
        if self.cuda and r["channels_last"]:
            self.model = self.model.to(memory_format=torch.channels_last)
        o = r["optimizer"]
        self.optimizer = timm.optim.create_optimizer_v2(
            self.model, opt=o["name"], lr=o["lr"], weight_decay=o["weight_decay"], momentum=o["momentum"],
            filter_bias_and_bn=o["filter_bias_and_bn"], **o["kwargs"])
        s = r["scheduler"]
        self.steps_per_epoch = self.steps_per_pass  # per pass (= len(loader) for records_per_decode 1)
        self.total_steps = self.steps_per_epoch * self.passes
        warm = s["warmup_epochs"]  # below epochs (resolve_run)
        # warmup_prefix: warm up first, then decay over the remaining epochs (ml-dr's schedule); in passes, a pass
        # being M epochs' worth of steps, so an M run follows the M=1 run's schedule step for step
        v = self.views
        self.scheduler, _ = timm.scheduler.create_scheduler_v2(
            self.optimizer, sched=s["name"], num_epochs=(r["epochs"] - warm) / v if v > 1 else r["epochs"] - warm,
            warmup_epochs=warm / v if v > 1 else warm, warmup_lr=s["warmup_lr"], min_lr=s["min_lr"],
            warmup_prefix=True, step_on_epochs=False, updates_per_epoch=self.steps_per_epoch)
        self.ema = timm.utils.ModelEmaV3(self.model, decay=r["ema"]["decay"]) if r["ema"] else None
        self.net = self.model
        if self.dist.world > 1:
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.cuda else None)
        if r["compile"] and self.cuda:
            self.net = torch.compile(self.net)
        self.amp = self.cuda and r["amp"] == "bf16"
        self.global_step = 0
        self.scheduler.step_update(num_updates=0)

    # ------------------------------------------------------------------ one step
    def _inputs(self, batch, epoch: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The student's normalised images and dense targets for a loader batch."""
        r = self.r
        if self.replay is not None:
            x, y = self.replay(batch)
        else:
            images, y = batch
            x = self.policy.normalize(images.to(self.device, non_blocking=True))
            y = y.to(self.device, non_blocking=True)
            if y.ndim == 1:
                y = torch.nn.functional.one_hot(y, self.num_classes).float()
        ls = r["label_smoothing"]
        if ls > 0:
            y = y * (1.0 - ls) + ls / self.num_classes
        if r["mix"] is not None:
            x, y = mix_batch(x, y, r["mix"], seed=r["seed"], epoch=epoch, step=step, rank=self.dist.rank)
        if self.teacher is not None:
            # the teacher sees 8-bit pixels, as when the store is built (a mixed image is rounded)
            y = self.teacher(denormalize_to_uint8(x, self.policy)).clone()
        if self.cuda and r["channels_last"]:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            logits = self.net(x)
        loss = torch.sum(-y * torch.log_softmax(logits.float(), dim=-1), dim=-1).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.r["grad_clip"]:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.r["grad_clip"])
        self.optimizer.step()
        self.global_step += 1
        self.scheduler.step_update(num_updates=self.global_step)
        if self.ema is not None:
            self.ema.update(self.model, step=self.global_step)
        return loss.detach()

    def set_epoch(self, epoch: int) -> None:
        """Set pass ``epoch`` (with records_per_decode M: record-epochs ``epoch*M .. epoch*M+M-1``)."""
        self.sampler.set_epoch(epoch)
        self.train_set.set_epoch(epoch)
        if self.buffer is not None:
            self.buffer.set_epoch(epoch)

    def train_epoch(self, epoch: int, *, train_step: bool = True) -> dict:
        """One pass over the loader (``epoch`` is the pass); returns loss, seconds, data-wait seconds and images/s.

        ``train_step=False`` only loads the data (the benchmarks' data-only timing).
        """
        self.set_epoch(epoch)
        self.model.train()
        bar = _bar(self.steps_per_epoch, f"{self.mode} pass {epoch + 1}/{self.passes}" if self.views > 1 else
                   f"{self.mode} epoch {epoch + 1}/{self.r['epochs']}", self.progress and self.dist.main)
        loss_sum = torch.zeros((), device=self.device)
        data_s, n = 0.0, 0
        t0 = time.perf_counter()
        it = iter(self.batches)
        for step in range(self.steps_per_epoch):
            t = time.perf_counter()
            batch = next(it)
            data_s += time.perf_counter() - t
            if train_step:
                x, y = self._inputs(batch, epoch, step)
                loss_sum += self._step(x, y)
            n += 1
            if bar is not None:
                bar.update(1)
                if n % 10 == 0 or n == self.steps_per_epoch:
                    ips = n * self.r["batch_size"] / (time.perf_counter() - t0)
                    bar.set_postfix_str(f"{ips:,.0f} img/s loss {float(loss_sum) / n:.4f}")
        if self.cuda:
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - t0
        if bar is not None:
            bar.close()
        if train_step:
            loss_sum = self.dist.mean(loss_sum)
        return {"train_loss": float(loss_sum) / max(1, n), "epoch_seconds": seconds, "data_seconds": data_s,
                "images_per_s": n * self.r["batch_size"] / seconds, "steps": n,
                "lr": float(self.optimizer.param_groups[0]["lr"])}

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Top-1, top-5, NLL, ECE and confidence on the eval split (and of the EMA model when enabled)."""
        out = {"test": self._evaluate(self.model)}
        if self.ema is not None:
            out["test_ema"] = self._evaluate(self.ema.module)
        return out

    @torch.no_grad()
    def _evaluate(self, model: torch.nn.Module) -> dict:
        was = model.training
        model.eval()
        logits, labels = [], []
        for x, y in self.eval_loader:
            x = x.to(self.device, non_blocking=True)
            if self.cuda and self.r["channels_last"]:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                logits.append(model(x).float())
            labels.append(y.to(self.device))
        model.train(was)
        empty = torch.zeros((0, self.num_classes), device=self.device)
        all_logits = self.dist.gather(torch.cat(logits) if logits else empty)
        all_labels = self.dist.gather(torch.cat(labels) if labels else torch.zeros(0, dtype=torch.int64,
                                                                                  device=self.device))
        return classification_metrics(all_logits.cpu(), all_labels.cpu())

    # ------------------------------------------------------------------ checkpoints
    def save(self, path: Path, meta: dict) -> None:
        save_checkpoint(path, model=self.model, optimizer=self.optimizer,
                        ema=None if self.ema is None else self.ema.module, meta=meta)

    def load(self, path: Path) -> dict:
        meta = load_checkpoint(path, model=self.model, optimizer=self.optimizer,
                               ema=None if self.ema is None else self.ema.module, device=self.device)
        self.global_step = int(meta["global_step"])
        self.scheduler.step_update(num_updates=self.global_step)
        return meta

    def sidecar(self) -> dict:
        """What ``imagenet_plus.teachers`` needs to load the trained weights as a teacher."""
        s = self.policy.output_size
        return {"model": self.r["model"]["name"], "num_classes": self.num_classes, "input_size": [3, s, s],
                "mean": list(self.policy.mean), "std": list(self.policy.std), "dataset": self.r["data"]["dataset"],
                "recipe": {"mode": self.mode, "epochs": self.r["epochs"], "trainer": "examples/train.py"}}


def _seed_worker(worker_id: int) -> None:
    """Seed numpy in DataLoader workers from torch's per-worker seed (user transforms; ours draw counter-based)."""
    np.random.seed(torch.initial_seed() % 2**32)


def _bar(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="step", dynamic_ncols=True, leave=False)


# ----------------------------------------------------------------------------- the run
def _check_out(out: Path, recipe: dict) -> Path | None:
    """The checkpoint to resume from in ``out`` (None: a fresh run); writes nothing.

    A ``config.json`` without a checkpoint is a run that finished no epoch: nothing of it is kept, so its
    settings do not bind the rerun (a start that failed must not block the corrected command).

    Raises:
        ArgumentError: ``out`` holds a run with other settings and at least one finished epoch.
    """
    config, ckpt = out / "config.json", out / CHECKPOINT
    if not ckpt.is_file():
        return None
    if config.is_file():
        old = json.loads(config.read_text(encoding="utf-8"))
        if recipe_digest(old["recipe"]) != recipe_digest(recipe):
            diff = sorted(k for k in set(old["recipe"]) | set(recipe) if k != "workers"
                          and json.dumps(old["recipe"].get(k), sort_keys=True, default=str)
                          != json.dumps(recipe.get(k), sort_keys=True, default=str))
            raise ArgumentError(f"--out {out} holds a run with other settings (differing keys: {', '.join(diff)}); "
                                "rerun with the same recipe and flags to resume, or pass a new --out folder")
    return ckpt


def _write_config(out: Path, recipe: dict, d: Dist) -> None:
    """Create ``out`` and record the run's settings (after the trainer started: a failed start leaves nothing)."""
    d.barrier()
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.json", json.dumps({"recipe": recipe, "torch": torch.__version__,
                                                           "world_size": d.world}, indent=1, default=str) + "\n")
    d.barrier()


def _log(record: dict, d: Dist) -> None:
    if d.main:
        print(json.dumps(record), flush=True)


def _note(text: str, d: Dist) -> None:
    if d.main:
        print(f"train.py: note: {text}", file=sys.stderr, flush=True)


def main(argv=None) -> dict:
    """Train as the command line says; returns the run summary (also ``OUT/results.json``)."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = load_recipe(args.recipe, args.mode, _overrides(args))
    _check_mode_keys(recipe)
    recipe, notes = resolve_run(recipe)
    d = Dist(args.device)
    for text in notes:
        _note(text, d)
    if args.deterministic and d.device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    elif d.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    out = Path(args.out)
    resume_from = _check_out(out, recipe)
    trainer = Trainer(recipe, d, progress=args.progress)
    _write_config(out, recipe, d)
    history: list[dict] = []
    start = 0
    if resume_from is not None:
        meta = trainer.load(resume_from)
        history, done = meta["history"], int(meta["epoch"])
        start = done // trainer.views  # passes done (meta "epoch" counts records per sample, as an M=1 epoch)
        _log({"event": "resume", "from_epoch": done, "checkpoint": str(resume_from)}, d)
    else:
        _log({"event": "start", "mode": recipe["mode"], "out": str(out), "world_size": d.world,
              "device": str(d.device), "steps_per_epoch": trainer.steps_per_epoch, "epochs": recipe["epochs"],
              "records_per_decode": trainer.views, "passes": trainer.passes, "total_steps": trainer.total_steps,
              "view_buffer": recipe["view_buffer"],
              "train_samples": len(trainer.train_set), "policy": trainer.policy.name, "notes": notes,
              "fine_tuned_from": recipe["model"]["checkpoint"], "reinitialised": trainer.dropped}, d)
    _train(trainer, recipe, out, d, history, start)
    summary = _finish(trainer, history, out, d)
    d.close()
    return summary


def _train(trainer: Trainer, recipe: dict, out: Path, d: Dist, history: list[dict], start: int) -> None:
    """Passes ``start..passes-1`` (epochs for records_per_decode 1): train, evaluate, checkpoint, log and plot each.

    A record's ``epoch`` counts the records per sample so far (``(pass + 1) * M``), as an ``M=1`` run's epochs do.
    """
    title = f"{recipe['model']['name']}, mode {recipe['mode']}"
    last_plot = time.perf_counter()
    views = trainer.views
    for p in range(start, trainer.passes):
        record = {"epoch": (p + 1) * views, "mode": recipe["mode"], **trainer.train_epoch(p), **trainer.evaluate()}
        if views > 1:
            record.update({"pass": p + 1, "records_per_decode": views, "global_step": trainer.global_step})
        history.append(record)
        if d.main:
            trainer.save(out / CHECKPOINT, {"epoch": (p + 1) * views, "global_step": trainer.global_step,
                                            "history": history})
            atomic_write_text(out / "log.jsonl", "".join(json.dumps(h) + "\n" for h in history))
            if time.perf_counter() - last_plot > _PLOT_EVERY_S or p + 1 == trainer.passes:
                plot_run(history, out / "plot.png", title=title)  # redrawn at most every 30 s (and at the end)
                last_plot = time.perf_counter()
        _log(record, d)
        d.barrier()


def _finish(trainer: Trainer, history: list[dict], out: Path, d: Dist) -> dict:
    last = history[-1] if history else {}
    measured = [h["images_per_s"] for h in history[1:]] or [h["images_per_s"] for h in history]
    summary = {"mode": trainer.mode, "out": str(out), "epochs": len(history) * trainer.views,
               "passes": len(history), "records_per_decode": trainer.views, "global_step": trainer.global_step,
               "final": {k: last[k] for k in ("test", "test_ema") if k in last},
               "median_images_per_s": float(np.median(measured)) if measured else math.nan,
               "median_epoch_seconds": float(np.median([h["epoch_seconds"] for h in history])) if history
               else math.nan, "train_seconds": float(sum(h["epoch_seconds"] for h in history)), "history": history}
    if d.main:
        save_weights(out / "model.safetensors", trainer.model, trainer.sidecar())
        if trainer.ema is not None:
            save_weights(out / "model_ema.safetensors", trainer.ema.module, trainer.sidecar())
        atomic_write_text(out / "results.json", json.dumps(summary, indent=1) + "\n")
    return summary


EXIT_FAIL, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


def run(argv=None) -> int:
    """The command line: :func:`main` with its errors as one line on stderr, like ``imagenet-plus``'s.

    Exit status 0 ok, 1 a failure (bad data, store, teacher or output folder), 2 a usage error (the command
    line or the recipe), 130 interrupted.
    """
    try:
        args = parse_args(argv)
        _check_mode_keys(load_recipe(args.recipe, args.mode, _overrides(args)))  # recipe/flag mistakes: usage
    except SystemExit as e:  # argparse: 2 on usage errors, 0 after --help
        return int(e.code or 0)
    except (ReinforcementError, FileNotFoundError) as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    try:
        main(argv)
    except (ReinforcementError, FileNotFoundError, NotADirectoryError, PermissionError, ImportError) as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        print(f"train.py: interrupted; rerun the same command to resume from {Path(args.out) / CHECKPOINT}",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(run())
