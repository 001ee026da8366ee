"""Models, metrics and plots shared by the training script, the demo and the benchmarks.

Small convolutional networks for 32 px inputs (or any timm model), the
classification metrics (top-1, top-5, NLL and the expected calibration error
over equal-width confidence bins), a run's accuracy-and-cost plot and the
demo's per-arm curves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "SmallCNN",
    "create_model",
    "expected_calibration_error",
    "classification_metrics",
    "plot_run",
    "plot_curves",
    "summarize",
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


def create_model(spec: str, num_classes: int, **kwargs) -> nn.Module:
    """Build a model from a short spec: ``"cnn:WIDTHxDEPTH"`` or a timm model name.

    Args:
        spec: ``"cnn:16x3"`` for :class:`SmallCNN` (width 16, 3 stages), else any
            ``timm.create_model`` name (random init; no pretrained weights are fetched).
        num_classes: number of classes.
        **kwargs: passed to ``timm.create_model`` (e.g. ``drop_path_rate``) or to :class:`SmallCNN`.

    Returns:
        The model, in training mode.
    """
    if spec.startswith("cnn:"):
        try:
            width, depth = (int(v) for v in spec[4:].split("x"))
        except ValueError:
            raise ValueError(f"model spec {spec!r}: expected 'cnn:WIDTHxDEPTH', e.g. 'cnn:16x3'") from None
        return SmallCNN(num_classes, width=width, depth=depth, **kwargs)
    import timm

    kwargs.setdefault("pretrained", False)
    return timm.create_model(spec, num_classes=num_classes, **kwargs)


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


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Top-1 and top-5 accuracy, NLL, ECE (15 bins) and mean confidence of ``logits`` for ``labels``.

    Args:
        logits: float ``[N, C]``.
        labels: int ``[N]``.

    Returns:
        ``{"top1": %, "top5": %, "nll": nats, "ece": %, "confidence": %, "n": N}`` (confidence is the
        mean top-1 probability: below top-1 means under-confident, above over-confident).
    """
    logp = F.log_softmax(logits.double(), dim=1)
    probs = logp.exp()
    k = min(5, logits.shape[1])
    top5 = (logits.topk(k, dim=1).indices == labels[:, None]).any(dim=1)
    return {
        "top1": 100.0 * float((probs.argmax(1) == labels).double().mean()),
        "top5": 100.0 * float(top5.double().mean()),
        "nll": float(F.nll_loss(logp, labels)),
        "ece": 100.0 * expected_calibration_error(probs, labels, 15),
        "confidence": 100.0 * float(probs.max(1).values.mean()),
        "n": int(labels.numel()),
    }


def plot_run(history: Sequence[dict], path: str | Path, *, title: str) -> None:
    """A run's plot: test top-1 (and the EMA's) per epoch, and the cost of each epoch (seconds, images/s).

    Args:
        history: the per-epoch records of ``examples/train.py`` (``epoch``, ``test``, ``epoch_seconds``,
            ``images_per_s``, optionally ``test_ema``).
        path: output PNG.
        title: figure title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (acc, cost) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=110)
    acc.plot(epochs, [h["test"]["top1"] for h in history], marker="o", ms=3, label="model")
    if history and "test_ema" in history[0]:
        acc.plot(epochs, [h["test_ema"]["top1"] for h in history], marker="o", ms=3, label="EMA")
    acc.set_xlabel("epoch")
    acc.set_ylabel("test top-1 (%)")
    acc.grid(alpha=0.3)
    acc.legend(loc="lower right")
    cost.plot(epochs, [h["epoch_seconds"] for h in history], marker="o", ms=3, color="C2", label="epoch (s)")
    cost.set_xlabel("epoch")
    cost.set_ylabel("training seconds per epoch")
    cost.grid(alpha=0.3)
    rate = cost.twinx()
    rate.plot(epochs, [h["images_per_s"] for h in history], marker="s", ms=3, color="C3", label="images/s")
    rate.set_ylabel("images/s")
    lines = cost.get_lines() + rate.get_lines()
    cost.legend(lines, [ln.get_label() for ln in lines], loc="best")
    from matplotlib.ticker import MaxNLocator

    for ax in (acc, cost):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


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
