"""Training and evaluation helpers shared by the demo and the benchmarks.

Small convolutional networks for 32 px inputs, a training loop that accepts
hard labels or dense soft targets, calibration metrics (expected calibration
error over equal-width confidence bins, negative log-likelihood), the ordinary
random-augmentation baseline (fresh policy parameters every epoch) and the
accuracy-per-epoch plot.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

__all__ = [
    "SmallCNN",
    "create_model",
    "expected_calibration_error",
    "evaluate",
    "EpochLog",
    "train",
    "RandomAugmentDataset",
    "TensorBatches",
    "plot_curves",
]


class SmallCNN(nn.Module):
    """A VGG-style CNN for small images: ``depth`` stages of conv-BN-ReLU (x2) and 2x2 pooling.

    Args:
        num_classes: number of output logits.
        width: channels of the first stage (doubled at every later stage).
        depth: number of stages (each halves the resolution).
        dropout: dropout before the classifier.
    """

    def __init__(self, num_classes: int, width: int = 16, depth: int = 3, dropout: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for s in range(depth):
            cout = width * (2**s)
            for _ in range(2):
                layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
                cin = cout
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(torch.flatten(self.pool(self.features(x)), 1)))


def create_model(spec: str, num_classes: int) -> nn.Module:
    """Build a model from a short spec: ``"cnn:WIDTHxDEPTH"`` or a timm model name.

    Args:
        spec: ``"cnn:16x3"`` for :class:`SmallCNN` (width 16, 3 stages), else any
            ``timm.create_model`` name (random init; no pretrained weights are fetched).
        num_classes: number of classes.

    Returns:
        The model, in training mode.
    """
    if spec.startswith("cnn:"):
        try:
            width, depth = (int(v) for v in spec[4:].split("x"))
        except ValueError:
            raise ValueError(f"model spec {spec!r}: expected 'cnn:WIDTHxDEPTH', e.g. 'cnn:16x3'") from None
        return SmallCNN(num_classes, width=width, depth=depth)
    import timm

    return timm.create_model(spec, pretrained=False, num_classes=num_classes)


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, num_bins: int = 15) -> float:
    """Expected calibration error with ``num_bins`` equal-width confidence bins.

    ``sum_b |B_b| / n * |accuracy(B_b) - mean confidence(B_b)|`` where a
    prediction falls in bin ``b`` when its top-1 probability lies in
    ``(b / num_bins, (b + 1) / num_bins]`` (Guo et al. 2017).

    Args:
        probs: float ``[N, C]`` predicted probabilities.
        labels: int ``[N]`` true classes.
        num_bins: number of bins.

    Returns:
        The ECE as a fraction in ``[0, 1]``.
    """
    conf, pred = probs.max(dim=1)
    correct = (pred == labels).double()
    conf = conf.double()
    # bin b covers (b/num_bins, (b+1)/num_bins]; a confidence of exactly 0 cannot occur for C >= 1
    bins = torch.clamp(torch.ceil(conf * num_bins).long() - 1, 0, num_bins - 1)
    n = conf.numel()
    ece = 0.0
    for b in range(num_bins):
        m = bins == b
        cnt = int(m.sum())
        if cnt:
            ece += cnt / n * abs(float(correct[m].mean()) - float(conf[m].mean()))
    return ece


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 512) -> dict[str, float]:
    """Top-1 accuracy, ECE (15 bins) and NLL of ``model`` on normalised ``images``.

    Args:
        model: the classifier (put in eval mode for the call, restored after).
        images: float ``[N, 3, H, W]``, already normalised.
        labels: int ``[N]``.
        batch_size: evaluation batch size.

    Returns:
        ``{"top1": %, "ece": %, "nll": nats, "confidence": mean top-1 probability in %}`` (confidence
        below top-1 means under-confident, above over-confident).
    """
    was_training = model.training
    model.eval()
    logits = torch.cat([model(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])
    model.train(was_training)
    logp = F.log_softmax(logits.float(), dim=1)
    probs = logp.exp()
    return {
        "top1": 100.0 * float((probs.argmax(1) == labels).double().mean()),
        "ece": 100.0 * expected_calibration_error(probs, labels, 15),
        "nll": float(F.nll_loss(logp, labels)),
        "confidence": 100.0 * float(probs.max(1).values.double().mean()),
    }


@dataclass
class EpochLog:
    """Per-epoch record of a training run."""

    epoch: int
    seconds: float
    train_loss: float
    test: dict[str, float] = field(default_factory=dict)


def train(
    model: nn.Module,
    loader: Iterable,
    *,
    epochs: int,
    batch_to_inputs: Callable[[object], tuple[torch.Tensor, torch.Tensor]],
    num_classes: int,
    lr: float = 0.05,
    weight_decay: float = 5e-4,
    label_smoothing: float = 0.0,
    eval_fn: Callable[[nn.Module], dict[str, float]] | None = None,
    log: Callable[[str], None] | None = None,
) -> list[EpochLog]:
    """Train with SGD (Nesterov momentum 0.9), one-cycle cosine LR, cross-entropy on soft targets.

    Args:
        model: the network.
        loader: iterable of batches, re-iterated once per epoch.
        epochs: number of passes over ``loader``.
        batch_to_inputs: maps a batch to ``(normalised images, targets)`` where
            targets are int labels ``[B]`` or dense probabilities ``[B, C]``.
        num_classes: number of classes (hard labels are one-hot encoded).
        lr: peak learning rate (linear warm-up over the first epoch, cosine decay to 0).
        weight_decay: L2 penalty on all parameters.
        label_smoothing: smoothing applied to hard labels only.
        eval_fn: called after every epoch with the model, its dict is stored in the log.
        log: a ``print``-like callable for one line per epoch.

    Returns:
        One :class:`EpochLog` per epoch. ``seconds`` covers data loading and the
        optimisation steps, not the evaluation.
    """
    steps_per_epoch = len(loader)  # type: ignore[arg-type]
    total = max(1, epochs * steps_per_epoch)
    warm = max(1, steps_per_epoch)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)

    def lr_at(step: int) -> float:
        if step < warm:
            return lr * (step + 1) / warm
        return 0.5 * lr * (1.0 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    logs: list[EpochLog] = []
    step = 0
    for epoch in range(epochs):
        if hasattr(loader, "sampler") and hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        if hasattr(getattr(loader, "dataset", None), "set_epoch"):
            loader.dataset.set_epoch(epoch)
        model.train()
        t0 = time.perf_counter()
        loss_sum, n_sum = 0.0, 0
        for batch in loader:
            x, y = batch_to_inputs(batch)
            if y.dtype in (torch.int64, torch.int32):
                y = F.one_hot(y.long(), num_classes).float()
                if label_smoothing:
                    y = y * (1.0 - label_smoothing) + label_smoothing / num_classes
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            loss = torch.sum(-y * F.log_softmax(model(x), dim=-1), dim=-1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            loss_sum += float(loss.detach()) * len(x)
            n_sum += len(x)
        seconds = time.perf_counter() - t0
        entry = EpochLog(epoch + 1, seconds, loss_sum / max(1, n_sum))
        if eval_fn is not None:
            entry.test = eval_fn(model)
        logs.append(entry)
        if log is not None:
            extra = " ".join(f"{k}={v:.3f}" for k, v in entry.test.items())
            log(f"  epoch {entry.epoch:3d}/{epochs} {seconds:6.2f}s loss={entry.train_loss:.4f} {extra}")
    return logs


class RandomAugmentDataset(Dataset):
    """The ordinary baseline: the policy's random augmentation with fresh parameters every epoch.

    Parameters are drawn with ``policy.sample`` under a seed that changes with
    the epoch (:meth:`set_epoch`), so the ops and their distributions are
    exactly those of the reinforced data, only never stored and with hard
    labels. Each epoch's parameters are drawn for all samples at once (one
    vectorised call), so an item costs what a replayed item costs: decode and
    ``policy.apply``.

    Args:
        base: a dataset returning ``(PIL image, label)``.
        policy: an :mod:`imagenet_plus.augment` policy without mixing.
        seed: base seed of the parameter draws.
    """

    def __init__(self, base: Dataset, policy, seed: int = 0) -> None:
        from imagenet_plus.identity import load_sample

        if getattr(policy, "uses_mix", False):
            raise ValueError(
                "RandomAugmentDataset: the policy mixes images (MixUp/CutMix); pick a policy without mixing "
                "for the hard-label baseline"
            )
        self.base = base
        self.policy = policy
        self.seed = int(seed)
        self._load = load_sample
        sizes = [load_sample(base, i)[0].size for i in range(len(base))]  # (width, height)
        self._widths = np.array([w for w, _ in sizes], dtype=np.int64)
        self._heights = np.array([h for _, h in sizes], dtype=np.int64)
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Draw a new set of parameters for every sample."""
        self.epoch = int(epoch)
        n = len(self.base)
        idx = np.arange(n, dtype=np.int64)
        self._params = self.policy.sample(self.seed * 1_000_003 + self.epoch, idx, np.zeros(n, dtype=np.int64),
                                          self._heights, self._widths, n)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img, label = self._load(self.base, index)
        one = {k: v[index] for k, v in self._params.items()}
        return self.policy.apply(img, one), int(label)


class TensorBatches:
    """Shuffled mini-batches of in-memory images with a random translation per batch element.

    A cheap augmentation for training teachers on small images: each image is
    padded by ``shift`` pixels (with ``fill``) and cropped back at a random offset.

    Args:
        images: float ``[N, 3, H, W]`` (already normalised).
        labels: int ``[N]``.
        batch_size: images per batch (the last partial batch is dropped).
        shift: largest translation in pixels.
        fill: value of the padded border (the normalised black level).
        seed: seed of the shuffling and the offsets.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, shift: int, fill: torch.Tensor,
                 seed: int = 0) -> None:
        self.images, self.labels = images, labels
        self.batch_size, self.shift = batch_size, shift
        self.fill = fill.view(1, -1, 1, 1)
        self.gen = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.images) // self.batch_size

    def __iter__(self):
        n, s = len(self.images), self.shift
        h, w = self.images.shape[-2:]
        perm = torch.randperm(n, generator=self.gen)
        for k in range(len(self)):
            idx = perm[k * self.batch_size : (k + 1) * self.batch_size]
            x = self.images[idx]
            padded = self.fill.expand(len(idx), -1, h + 2 * s, w + 2 * s).clone()
            padded[:, :, s : s + h, s : s + w] = x
            dy = torch.randint(0, 2 * s + 1, (len(idx),), generator=self.gen)
            dx = torch.randint(0, 2 * s + 1, (len(idx),), generator=self.gen)
            rows = (dy[:, None] + torch.arange(h))[:, None, :, None].expand(-1, x.shape[1], -1, w + 2 * s)
            out = torch.gather(padded, 2, rows)
            cols = (dx[:, None] + torch.arange(w))[:, None, None, :].expand(-1, x.shape[1], h, -1)
            yield torch.gather(out, 3, cols), self.labels[idx]


def plot_curves(
    curves: dict[str, np.ndarray], path: str, *, title: str, ylabel: str = "test top-1 (%)"
) -> None:
    """Plot mean +- std over seeds of per-epoch curves and save a PNG.

    Args:
        curves: ``{arm name: float[seeds, epochs]}``.
        path: output PNG path.
        title: the figure title.
        ylabel: y-axis label.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for name, arr in curves.items():
        arr = np.asarray(arr, dtype=np.float64)
        x = np.arange(1, arr.shape[1] + 1)
        mean, std = arr.mean(0), arr.std(0)
        ax.plot(x, mean, marker="o", ms=3, label=f"{name} (final {mean[-1]:.2f})")
        ax.fill_between(x, mean - std, mean + std, alpha=0.2)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def summarize(values: Sequence[float]) -> dict[str, float]:
    """Mean and population std of a list of per-seed values."""
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std()), "values": [float(v) for v in arr]}
