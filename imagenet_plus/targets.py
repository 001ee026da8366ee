"""Soft targets: sparse top-k <-> dense distributions, one-hot labels, soft-target cross-entropy."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._checks import check_choice
from .errors import ReinforcementError

__all__ = ["densify", "one_hot", "soft_target_cross_entropy", "SoftTargetCrossEntropy"]

_MODES = ("smooth", "none")


def densify(topk_ids, topk_probs, num_classes: int, mode: str = "smooth"):
    """Turn top-k ids and probabilities into dense distributions over ``num_classes``.

    Args:
        topk_ids: int ``[..., K]`` class ids (torch tensor or numpy array), distinct per row.
        topk_probs: float ``[..., K]`` probabilities of those ids (sum ``<= 1``).
        num_classes: ``C``.
        mode: ``"smooth"`` spreads the left-over mass ``1 - sum(probs)`` uniformly over
            the ``C - K`` other classes (the paper's choice); ``"none"`` drops it and
            renormalises the top-k.

    Returns:
        float32 ``[..., C]`` summing to 1, the same kind (torch/numpy) and device as ``topk_probs``.

    Example:
        >>> densify(torch.tensor([[2, 0]]), torch.tensor([[0.6, 0.3]]), 4)
        tensor([[0.3000, 0.0500, 0.6000, 0.0500]])
    """
    check_choice(mode, "mode", _MODES)
    is_np = isinstance(topk_probs, np.ndarray) or not torch.is_tensor(topk_probs)
    ids = torch.as_tensor(np.asarray(topk_ids) if is_np else topk_ids).long()
    probs = torch.as_tensor(np.asarray(topk_probs, dtype=np.float32) if is_np else topk_probs).float()
    if ids.shape != probs.shape:
        raise ReinforcementError(f"densify: topk_ids {list(ids.shape)} and topk_probs {list(probs.shape)} differ")
    k = ids.shape[-1]
    if k > num_classes:
        raise ReinforcementError(f"densify: K={k} exceeds num_classes={num_classes}")
    if ids.numel() and ids.device.type == "cpu" and (int(ids.min()) < 0 or int(ids.max()) >= num_classes):
        raise ReinforcementError(f"densify: class ids must lie in [0, {num_classes}), got "
                                 f"[{int(ids.min())}, {int(ids.max())}]; is num_classes right?")
    ids = ids.to(probs.device)
    shape = (*probs.shape[:-1], num_classes)
    if mode == "smooth" and num_classes > k:
        rest = (1.0 - probs.sum(-1, keepdim=True)).clamp_min(0.0) / (num_classes - k)
        out = rest.expand(shape).clone()
    else:
        out = probs.new_zeros(shape)
    out.scatter_(-1, ids, probs)
    total = out.sum(-1, keepdim=True)
    out = out / torch.where(total > 0, total, torch.ones_like(total))
    return out.numpy() if is_np else out


def one_hot(labels, num_classes: int):
    """float32 one-hot ``[..., C]`` of integer ``labels`` (torch tensor or numpy array, same kind back)."""
    is_np = not torch.is_tensor(labels)
    t = torch.as_tensor(np.asarray(labels) if is_np else labels).long()
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_classes):
        raise ReinforcementError(f"one_hot: labels must lie in [0, {num_classes}), got "
                                 f"[{int(t.min())}, {int(t.max())}]")
    out = F.one_hot(t, num_classes).float()
    return out.numpy() if is_np else out


def soft_target_cross_entropy(logits: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of ``logits [..., C]`` against soft ``target [..., C]``: ``sum(-target * log_softmax(logits))``.

    Equal to ``timm.loss.SoftTargetCrossEntropy`` with ``reduction="mean"``.

    Args:
        logits: unnormalised scores.
        target: distributions (e.g. from :func:`densify`), same shape.
        reduction: ``"mean"`` over all leading dims, ``"sum"``, or ``"none"``.
    """
    if logits.shape != target.shape:
        raise ReinforcementError(f"soft_target_cross_entropy: logits {list(logits.shape)} and target "
                                 f"{list(target.shape)} must have the same shape")
    loss = torch.sum(-target * F.log_softmax(logits, dim=-1), dim=-1)
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    check_choice(reduction, "reduction", ("mean", "sum", "none"))
    raise AssertionError("unreachable")


class SoftTargetCrossEntropy(nn.Module):
    """Soft-target cross-entropy loss (drop-in for ``timm.loss.SoftTargetCrossEntropy``).

    Args:
        reduction: ``"mean"`` (default, as timm), ``"sum"`` or ``"none"``.
    """

    def __init__(self, reduction: str = "mean"):
        super().__init__()
        self.reduction = check_choice(reduction, "reduction", ("mean", "sum", "none"))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return soft_target_cross_entropy(logits, target, self.reduction)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"
