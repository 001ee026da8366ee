"""Replayable augmentation policies (see :mod:`imagenet_plus.augment.policy` for the record layout)."""

from __future__ import annotations

from .config import IMAGENET_MEAN, IMAGENET_STD, PRESETS, RA_OPS
from .eval import create_eval_transform
from .policy import Policy, create_policy

__all__ = ["Policy", "create_policy", "create_eval_transform", "PRESETS", "RA_OPS", "IMAGENET_MEAN",
           "IMAGENET_STD"]
