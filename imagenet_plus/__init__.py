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

# Public names are imported on first use (PEP 562), so `import imagenet_plus` and the
# `imagenet-plus` command start without loading torchvision, timm or the Hub client.
_LAZY = {
    "Policy": ".augment", "create_policy": ".augment", "create_eval_transform": ".augment",
    "ReinforcedDataset": ".datasets", "ImageNetPlus": ".datasets", "CIFAR100Plus": ".datasets",
    "Flowers102Plus": ".datasets", "Food101Plus": ".datasets",
    "AlignmentError": ".errors", "IntegrityError": ".errors", "PolicyError": ".errors",
    "ReinforcementError": ".errors", "StoreError": ".errors", "ArgumentError": ".errors",
    "ImageDecodeError": ".errors", "BuildError": ".errors", "ImportFormatError": ".errors",
    "DatasetAdapter": ".adapters", "FileAdapter": ".adapters", "ArrayAdapter": ".adapters", "Digits": ".adapters",
    "adapt": ".adapters", "create_adapter": ".adapters", "scan_copy": ".scan",
    "resolve_reinforcements": ".hub",
    "DeviceReplay": ".replay", "Chooser": ".replay",
    "ReinforcementStore": ".store", "open_store": ".store", "verify": ".store",
    "SoftTargetCrossEntropy": ".targets", "densify": ".targets", "soft_target_cross_entropy": ".targets",
}


from ._lazy import lazy_names

__getattr__, __dir__ = lazy_names(__name__, globals(), _LAZY)


__all__ = [
    "ReinforcedDataset",
    "ImageNetPlus",
    "CIFAR100Plus",
    "Flowers102Plus",
    "Food101Plus",
    "DeviceReplay",
    "Chooser",
    "DatasetAdapter",
    "FileAdapter",
    "ArrayAdapter",
    "Digits",
    "adapt",
    "create_adapter",
    "scan_copy",
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
    "ArgumentError",
    "ImageDecodeError",
    "BuildError",
    "ImportFormatError",
]
