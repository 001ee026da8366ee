"""imagenet-plus: Dataset Reinforcement for torchvision datasets.

Wrap your torchvision dataset and a reinforcement store (built once by a strong
teacher over many stored augmentations) and train on ``(augmented_image,
soft_target)`` at the cost of ordinary training.

Example:
    >>> from imagenet_plus import CIFAR100Plus, SoftTargetCrossEntropy
    >>> train = CIFAR100Plus("data", split="train", reinforcements="runs/cifar100-plus")
    >>> image, soft_target = train[0]
"""

from __future__ import annotations

__version__ = "0.1.0"  # before the imports: submodules read it

from .augment import Policy, create_eval_transform, create_policy
from .datasets import CIFAR100Plus, Flowers102Plus, Food101Plus, ImageNetPlus, ReinforcedDataset
from .errors import AlignmentError, IntegrityError, PolicyError, ReinforcementError, StoreError
from .hub import resolve_reinforcements
from .replay import DeviceReplay
from .store import ReinforcementStore, open_store, verify
from .targets import SoftTargetCrossEntropy, densify, soft_target_cross_entropy

__all__ = [
    "ReinforcedDataset",
    "ImageNetPlus",
    "CIFAR100Plus",
    "Flowers102Plus",
    "Food101Plus",
    "DeviceReplay",
    "Policy",
    "create_policy",
    "create_eval_transform",
    "SoftTargetCrossEntropy",
    "soft_target_cross_entropy",
    "densify",
    "ReinforcementStore",
    "open_store",
    "verify",
    "resolve_reinforcements",
    "ReinforcementError",
    "StoreError",
    "IntegrityError",
    "AlignmentError",
    "PolicyError",
]
