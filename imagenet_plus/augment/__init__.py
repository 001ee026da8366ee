"""Replayable augmentation policies (see :mod:`imagenet_plus.augment.policy` for the record layout).

Importing the package registers its flavours: :mod:`.stages` (the package's own, ``"torchvision"``,
with the paper's presets) and :mod:`.mldr` (``"ml-dr"``); see :mod:`.config` for how a stage
declares its config section.
"""

from __future__ import annotations

from . import mldr as _mldr  # noqa: F401  (registers the ml-dr flavour; .policy imports .stages, the package's own)
from .config import IMAGENET_MEAN, IMAGENET_STD, PRESETS, deep_merge
from .eval import create_eval_transform
from .ops import RA_OPS
from .policy import Policy, create_policy

__all__ = ["Policy", "create_policy", "create_eval_transform", "PRESETS", "RA_OPS", "IMAGENET_MEAN",
           "IMAGENET_STD", "deep_merge"]
