"""Fine-tune a timm classifier as a teacher: ``python builders/finetune_teacher.py --dataset cifar100 ...``.

A simple, standard recipe: SGD with Nesterov momentum 0.9, cosine learning-rate
decay after a linear warm-up, label smoothing 0.1, weight decay on weights only;
training images get RandomResizedCrop + horizontal flip at the model's input
size, evaluation images a resize + centre crop. Writes
``OUT/{name}.safetensors`` (the state dict, loadable with
``load_state_dict(strict=True)``; ``name`` defaults to the model name) and ``OUT/{name}.json`` (model name,
num_classes, input size, mean/std, interpolation, accuracy, recipe), the sidecar
:mod:`imagenet_plus.teachers` reads next to the checkpoint (the builder then feeds the teacher
images at the size it was trained at).

Datasets: every dataset of :mod:`imagenet_plus.registry`, trained on its training split and
evaluated on its evaluation split (torchvision's layout under ``--data-root``; never
downloaded; ``digits``, scikit-learn's handwritten digits, needs no files).

Example::

    python builders/finetune_teacher.py --dataset digits --model resnet10t --no-pretrained \\
        --input-size 32 --epochs 30 --out runs/digits-teachers --device cpu
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn as nn

__all__ = ["FinetuneConfig", "main", "cli"]

@dataclass
class FinetuneConfig:
    """Settings of one fine-tuning run.

    Args:
        dataset: a dataset of :mod:`imagenet_plus.registry` (trained on its training split, evaluated
            on its evaluation split).
        data_root: the dataset's root folder (unused for ``digits``).
        model: timm model name.
        out: output folder for ``{model}.safetensors`` and ``{model}.json``.
        pretrained: start from timm's pretrained weights (``False``: random init).
        init_checkpoint: start from these safetensors weights instead (the head may differ).
        input_size: training/eval input side (``None``: the model's pretrained config).
        epochs: passes over the training split.
        max_steps: stop after this many optimizer steps (``None``: no limit; smoke tests).
        batch_size: images per step.
        lr: peak learning rate (scaled by ``batch_size / 256``).
        weight_decay: weight decay of the weights (not of biases and norms).
        warmup_epochs: linear warm-up length.
        label_smoothing: cross-entropy label smoothing.
        num_workers: DataLoader workers.
        device: ``cpu``, ``cuda`` or ``auto``.
        seed: seed of the initialisation and the data order.
        limit_train: use only the first N training images (smoke tests).
        limit_eval: evaluate on only the first N evaluation images.
        source_size: the side of the images of a dataset that generates them (digits; ``None``: its default).
        name: file stem of the outputs (``None``: the model name); lets one model be trained
            several times (e.g. with other seeds) into one folder.
    """

    dataset: str = "cifar100"
    data_root: str | None = None
    model: str = "resnet50.a1_in1k"
    out: str = "checkpoints"
    pretrained: bool = True
    init_checkpoint: str | None = None
    input_size: int | None = None
    epochs: int = 10
    max_steps: int | None = None
    batch_size: int = 64
    lr: float = 0.05
    weight_decay: float = 5e-4
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    num_workers: int = 4
    device: str = "auto"
    seed: int = 0
    limit_train: int | None = None
    limit_eval: int | None = None
    source_size: int | None = None
    name: str | None = None


def _bases(cfg: FinetuneConfig):
    """The adapters of ``cfg``'s training and evaluation splits."""
    from imagenet_plus.adapters import create_adapter
    from imagenet_plus.registry import dataset_info

    info = dataset_info(cfg.dataset, "--dataset")
    return tuple(create_adapter(cfg.dataset, cfg.data_root, split, image_size=cfg.source_size)
                 for split in (info.train_split, info.eval_split))


def _wrap(adapter, tf, limit: int | None):
    from torch.utils.data import Subset

    ds = _Transformed(adapter, tf)
    return Subset(ds, range(limit)) if limit is not None and limit < len(ds) else ds


class _Transformed(torch.utils.data.Dataset):
    """``(tf(rgb image), label)`` of a dataset, decoded through its adapter (as the builder decodes it)."""

    def __init__(self, adapter, tf):
        self.adapter, self.tf = adapter, tf

    def __len__(self) -> int:
        return len(self.adapter)

    def __getitem__(self, i: int):
        sample = self.adapter.load(i)
        return self.tf(sample.image), sample.label


def _transforms(size: int, mean, std):
    from torchvision.transforms import v2 as T

    norm = [T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Normalize(list(mean), list(std))]
    train = T.Compose([T.RandomResizedCrop(size, antialias=True), T.RandomHorizontalFlip(), *norm])
    resize = size if size < 64 else int(round(size / 0.875))
    evaluate = T.Compose([T.Resize(resize, antialias=True), T.CenterCrop(size), *norm])
    return train, evaluate


def _param_groups(model: nn.Module, weight_decay: float):
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@torch.no_grad()
def _evaluate(model: nn.Module, loader, device) -> float:
    model.eval()
    correct = total = 0
    for x, y in loader:
        logits = model(x.to(device))
        correct += int((logits.argmax(1).cpu() == y).sum())
        total += len(y)
    return correct / max(total, 1)


def _cosine_with_warmup(warm: int, total: int):
    """Learning-rate factor per step: linear warm-up over ``warm`` steps, then cosine decay to 0 at ``total``."""
    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))
    return factor


def _train(model: nn.Module, train_dl, cfg: FinetuneConfig, device: torch.device) -> tuple[int, float]:
    """SGD (Nesterov) with warm-up and cosine decay, label smoothing; returns ``(steps, last loss)``."""
    opt = torch.optim.SGD(_param_groups(model, cfg.weight_decay), lr=cfg.lr * cfg.batch_size / 256, momentum=0.9,
                          nesterov=True)
    steps_per_epoch = max(1, len(train_dl))
    total = steps_per_epoch * cfg.epochs if cfg.max_steps is None else min(cfg.max_steps,
                                                                           steps_per_epoch * cfg.epochs)
    warm = max(1, int(cfg.warmup_epochs * steps_per_epoch)) if total > 1 else 0
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _cosine_with_warmup(warm, total))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    amp = device.type == "cuda"
    step, t0, last_loss = 0, time.perf_counter(), float("nan")
    while step < total:
        model.train()
        for x, y in train_dl:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss = loss_fn(model(x.to(device, non_blocking=True)), y.to(device, non_blocking=True))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            last_loss = float(loss.detach())
            if step % 50 == 0:
                print(f"step {step}/{total} loss {last_loss:.4f} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
            if step >= total:
                break
    return step, last_loss


def main(config: FinetuneConfig) -> dict:
    """Fine-tune ``config.model`` and write the checkpoint and its sidecar.

    Returns:
        The sidecar dict (also written to ``OUT/{model}.json``).
    """
    import timm.data
    from safetensors.torch import load_file, save
    from torch.utils.data import DataLoader

    from imagenet_plus import atomic_write, atomic_write_text
    from imagenet_plus.teachers import TeacherSpec, create_member

    cfg = config
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if cfg.device == "auto" else cfg.device))
    torch.manual_seed(cfg.seed)
    train_base, eval_base = _bases(cfg)
    num_classes = train_base.num_classes
    if not num_classes:
        raise ValueError(f"--dataset {cfg.dataset}: the dataset does not list its classes")
    # The classifier is replaced below on purpose (fine-tuning): a fresh head is what this script wants.
    model, _ = create_member(TeacherSpec(cfg.model), pretrained=cfg.pretrained and cfg.init_checkpoint is None,
                             allow_new_head=True)
    if cfg.init_checkpoint:
        state = load_file(cfg.init_checkpoint)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected:
            raise ValueError(f"--init-checkpoint {cfg.init_checkpoint}: keys {unexpected[:5]} are not in "
                             f"{cfg.model!r}; pass the checkpoint's own model name")
    model.reset_classifier(num_classes)
    data_cfg = timm.data.resolve_data_config({}, model=model)
    size = int(cfg.input_size or data_cfg["input_size"][1])
    mean, std = tuple(data_cfg["mean"]), tuple(data_cfg["std"])
    train_tf, eval_tf = _transforms(size, mean, std)
    train_ds, eval_ds = _wrap(train_base, train_tf, cfg.limit_train), _wrap(eval_base, eval_tf, cfg.limit_eval)
    gen = torch.Generator().manual_seed(cfg.seed)
    train_dl = DataLoader(train_ds, batch_size=cfg.batch_size, shuffle=True, drop_last=len(train_ds) > cfg.batch_size,
                          num_workers=cfg.num_workers, generator=gen, pin_memory=device.type == "cuda")
    eval_dl = DataLoader(eval_ds, batch_size=cfg.batch_size, num_workers=cfg.num_workers)
    model = model.to(device)
    step, last_loss = _train(model, train_dl, cfg, device)
    acc = _evaluate(model, eval_dl, device)
    ckpt = Path(cfg.out) / f"{cfg.name or cfg.model}.safetensors"
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    atomic_write(ckpt, [save(state, metadata={"model": cfg.model, "num_classes": str(num_classes)})])
    side = {"model": cfg.model, "num_classes": num_classes, "input_size": [3, size, size], "mean": list(mean),
            "std": list(std), "interpolation": str(data_cfg.get("interpolation", "bilinear")), "accuracy": acc,
            "eval_split": eval_base.split, "dataset": cfg.dataset, "steps": step, "final_loss": last_loss,
            "recipe": asdict(cfg)}
    atomic_write_text(ckpt.with_suffix(".json"), json.dumps(side, indent=1) + "\n")
    print(f"{cfg.model}: {step} steps, {eval_base.split} accuracy {acc:.4f} -> {ckpt}", file=sys.stderr)
    return side


def cli(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    from imagenet_plus import registry

    d = FinetuneConfig()
    p = argparse.ArgumentParser(prog="builders/finetune_teacher.py", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", default=d.dataset, choices=registry.names())
    p.add_argument("--data-root", dest="data_root", default=d.data_root)
    p.add_argument("--model", default=d.model)
    p.add_argument("--out", default=d.out)
    p.add_argument("--pretrained", dest="pretrained", action="store_true", default=d.pretrained)
    p.add_argument("--no-pretrained", dest="pretrained", action="store_false")
    p.add_argument("--init-checkpoint", dest="init_checkpoint", default=None)
    p.add_argument("--name", default=None, help="file stem of the outputs (default: the model name)")
    p.add_argument("--input-size", dest="input_size", type=int, default=None)
    for name in ("epochs", "max_steps", "batch_size", "num_workers", "seed", "limit_train", "limit_eval",
                 "source_size"):
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=int, default=getattr(d, name))
    for name in ("lr", "weight_decay", "warmup_epochs", "label_smoothing"):
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=float, default=getattr(d, name))
    p.add_argument("--device", default=d.device)
    cfg = FinetuneConfig(**vars(p.parse_args(argv)))
    try:
        main(cfg)
    except (ValueError, OSError) as e:
        print(f"builders/finetune_teacher.py: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
