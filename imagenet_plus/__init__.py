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

from . import errors as _errors
from . import registry as _registry
from ._lazy import lazy_names

# Public names are imported on first use (PEP 562), so `import imagenet_plus` and the
# `imagenet-plus` command start without loading torchvision, timm or the Hub client.
# The dataset wrappers (ImageNetPlus, ...) and the error classes come from their one table each.
_LAZY = {
    "ReinforcedDataset": ".datasets", **{name: ".datasets" for name in _registry.wrappers()},
    "ShuffleBuffer": ".datasets",
    "DeviceReplay": ".replay", "Chooser": ".replay", "collate_device_items": ".device_decode",
    "DatasetAdapter": ".adapters", "FileAdapter": ".adapters", "ArrayAdapter": ".adapters", "Digits": ".adapters",
    "adapt": ".adapters", "create_adapter": ".adapters", "scan_copy": ".scan",
    "Policy": ".augment", "create_policy": ".augment", "create_eval_transform": ".augment",
    "SoftTargetCrossEntropy": ".targets", "soft_target_cross_entropy": ".targets", "densify": ".targets",
    "ReinforcementStore": ".store", "open_store": ".store", "verify": ".store",
    "resolve_reinforcements": ".hub", "open_reinforcements": ".hub",
    "atomic_write": "._files", "atomic_write_text": "._files",  # the one atomic writer, for scripts' own files
    **{name: ".errors" for name in _errors.__all__},
}

__getattr__, __dir__ = lazy_names(__name__, globals(), _LAZY)

__all__ = list(_LAZY)
