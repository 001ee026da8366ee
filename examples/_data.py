"""Data for the training script: datasets, the ordinary random augmentation, in-batch mixing, the KD teacher.

* :func:`create_base` makes the torchvision-style dataset of a recipe (the one
  place naming dataset classes, so the library's adapters can replace it).
* :class:`RandomAugmentDataset` is the ordinary baseline of ``erm`` and ``kd``:
  the policy's random augmentation with parameters drawn afresh for every
  ``(sample, epoch)``, hard labels. It runs the same ops as the replay of a
  reinforced dataset (``Policy.crop`` per item, ``Policy.finish`` per batch),
  only the parameters are drawn instead of read.
* :func:`mix_batch` is in-batch MixUp/CutMix (timm's ``mode="batch"``: one
  lambda per batch, the partner is the batch reversed), drawn from a generator
  seeded by ``(seed, epoch, step, rank)`` so a resumed run mixes identically.
* :func:`create_teacher` builds the online KD teacher (timm ensemble, uint8 in,
  probabilities out), the same class the builder uses to make the store.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from imagenet_plus.errors import ArgumentError

__all__ = ["create_base", "load_image", "subset_first", "EvalDataset", "RandomAugmentDataset", "Repeat", "mix_batch",
           "create_teacher", "uint8_identity", "denormalize_to_uint8"]

# Seed offset of the random-augmentation draws, so that a training seed equal to a build seed
# never reproduces the stored augmentations in the erm/kd arms.
_RANDOM_AUGMENT_STREAM = 0x45524D


def create_base(data: dict, split: str):
    """The base dataset of ``data`` (a recipe's ``data`` section) for ``split``; never downloads.

    Raises:
        FileNotFoundError: the dataset is not under ``data.root`` in torchvision's layout.
    """
    from imagenet_plus.adapters import create_adapter

    return create_adapter(data["dataset"], data["root"], split, image_size=data["source_size"]).dataset


def load_image(base, i: int):
    """Decode sample ``i`` of ``base`` to ``(RGB PIL image, int label)`` the way the reinforced datasets do."""
    from imagenet_plus.adapters import adapt

    sample = adapt(base).load(i)
    return sample.image, sample.label


def uint8_identity(x: torch.Tensor) -> torch.Tensor:
    """The ``transform`` that keeps replayed images as uint8 (the training loop normalises on the device)."""
    return x


def denormalize_to_uint8(x: torch.Tensor, policy) -> torch.Tensor:
    """Invert ``policy.normalize`` and round to uint8 pixels (exact for normalised uint8 inputs)."""
    mean = torch.tensor(policy.mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(policy.std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1) * 255.0
    return (x.float() * std + mean).round_().clamp_(0, 255).to(torch.uint8)


class EvalDataset(Dataset):
    """``(transform(image), label)`` of ``base``, decoded like the training data."""

    def __init__(self, base, transform) -> None:
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        image, label = load_image(self.base, i)
        return self.transform(image), label


def in_memory(dataset, limit_bytes: int = 1 << 28):
    """``dataset``'s items as one ``TensorDataset`` when its tensors fit in ``limit_bytes``, else ``None``.

    For a deterministic dataset (the evaluation crops) that is read every epoch: decoded and
    transformed once instead of once per epoch, the same tensors in the same order.
    """
    if len(dataset) == 0:
        return None
    x0, _ = dataset[0]
    if not isinstance(x0, torch.Tensor) or len(dataset) * x0.numel() * x0.element_size() > limit_bytes:
        return None
    items = [dataset[i] for i in range(len(dataset))]
    return torch.utils.data.TensorDataset(torch.stack([x for x, _ in items]),
                                          torch.tensor([int(y) for _, y in items], dtype=torch.int64))


class RandomAugmentDataset(Dataset):
    """The ordinary baseline: the policy's random augmentation drawn afresh per ``(sample, epoch)``, hard labels.

    Item ``i`` in epoch ``e`` is ``policy.apply(image_i, params)`` with ``params =
    policy.sample(seed', i, e, H_i, W_i)``: the same ops and distributions as the
    reinforced data, never stored, so ``erm``/``kd`` differ from ``plus`` only in
    where parameters and targets come from. The draws are counter-based: an item
    depends only on ``(seed, epoch, i)``, never on workers or batch size. The
    epoch lives in shared memory, so persistent DataLoader workers see
    :meth:`set_epoch`.

    Args:
        base: a dataset yielding ``(PIL image, label)``.
        policy: an :class:`imagenet_plus.Policy` without mixing (mixing is in-batch: :func:`mix_batch`).
        seed: seed of the parameter draws.
        device: ``"cpu"``: items are ``(uint8 [3,S,S], label)``; otherwise dicts of crops and
            params for :class:`imagenet_plus.DeviceReplay`, which finishes the batch on the device.
        transform: applied to each uint8 image on the CPU path (default: ``policy.normalize``).
    """

    def __init__(self, base, policy, *, seed: int = 0, device: str = "cpu", transform=None) -> None:
        if policy.uses_mix:
            raise ValueError(f"RandomAugmentDataset: policy {policy.name!r} mixes images; pass the policy without "
                             "its mix section (create_policy(config, mix=None)) and mix in the batch (mix_batch)")
        self.base = base
        self.policy = policy
        self.seed = int(seed)
        self.device = torch.device(device)
        self.transform = transform
        self._draw_seed = int(np.random.SeedSequence([self.seed, _RANDOM_AUGMENT_STREAM]).generate_state(
            1, np.uint64)[0] >> np.uint64(1))
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch that, with the seed and the sample, draws each item's parameters."""
        self._epoch.fill_(int(epoch))

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def __len__(self) -> int:
        return len(self.base)

    def _params(self, indices, sizes) -> dict[str, np.ndarray]:
        heights = np.array([h for h, _ in sizes], dtype=np.int64)
        widths = np.array([w for _, w in sizes], dtype=np.int64)
        return self.policy.sample(self._draw_seed, np.asarray(indices, dtype=np.int64), self.epoch, heights, widths,
                                  len(self.base))

    def __getitem__(self, index: int):
        return self.__getitems__([index])[0]

    def __getitems__(self, indices) -> list:
        """Items of ``indices``: decode and crop each, draw all params in one call, finish the batch at once."""
        loaded = [load_image(self.base, int(i)) for i in indices]
        params = self._params(indices, [(img.height, img.width) for img, _ in loaded])
        crops = [self.policy.crop(img, {k: v[n] for k, v in params.items()}) for n, (img, _) in enumerate(loaded)]
        labels = [int(label) for _, label in loaded]
        if self.device.type != "cpu":
            return [self._device_item(crops[n], {k: v[n] for k, v in params.items()}, labels[n])
                    for n in range(len(crops))]
        images = self.policy.finish(torch.stack(crops), params)
        t = self.transform if self.transform is not None else self.policy.normalize
        return [(t(images[n]), labels[n]) for n in range(len(labels))]

    @staticmethod
    def _device_item(crop: torch.Tensor, params: dict, label: int) -> dict:
        # An ordinary item is what DeviceReplay calls an original: finished on the device, never
        # mixed by the policy, with a one-hot target.
        return {
            "image": crop,
            "params": {k: torch.from_numpy(np.asarray(v).astype(np.int64)) for k, v in params.items()},
            "topk_ids": torch.tensor([label], dtype=torch.int64),
            "topk_probs": torch.ones(1, dtype=torch.float32),
            "is_original": torch.tensor(True),
            "label": torch.tensor(label, dtype=torch.int64),
        }


class Repeat(Dataset):
    """``dataset`` seen ``repeats`` times per epoch (index ``k`` is item ``k % len(dataset)``).

    For throughput checks on tiny sets, so an epoch is long enough to time. Within an
    epoch the repeats of a sample are the same item (the epoch fixes the augmentation).
    """

    def __init__(self, dataset, repeats: int) -> None:
        self.dataset, self.repeats = dataset, int(repeats)

    def __len__(self) -> int:
        return len(self.dataset) * self.repeats

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def __getitem__(self, k: int):
        return self.dataset[k % len(self.dataset)]

    def __getitems__(self, ks) -> list:
        n = len(self.dataset)
        inner = [int(k) % n for k in ks]
        if hasattr(self.dataset, "__getitems__"):
            return self.dataset.__getitems__(inner)
        return [self.dataset[k] for k in inner]


def subset_first(base, n: int | None):
    """The first ``n`` samples of ``base`` (all when ``n`` is None or not smaller)."""
    return base if n is None or n >= len(base) else Subset(base, range(int(n)))


def mix_batch(x: torch.Tensor, y: torch.Tensor, mix: dict, *, seed: int, epoch: int, step: int, rank: int = 0
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """MixUp or CutMix of a batch with itself reversed (timm's ``mode="batch"``), deterministic per step.

    With probability ``mix["prob"]`` the batch is mixed: CutMix (``cutmix_alpha > 0``, chosen with
    probability ``switch_prob`` when both are on) pastes one box of the reversed batch, its
    lambda corrected to the box's true area; MixUp blends ``lam * x + (1 - lam) * x.flip(0)``.
    Targets mix with the same lambda.

    Args:
        x: float images ``[B, 3, H, W]`` (normalised or not: mixing is affine).
        y: float targets ``[B, C]``.
        mix: ``mixup_alpha``, ``cutmix_alpha``, ``switch_prob``, ``prob``.
        seed, epoch, step, rank: seed the draw (a resumed run draws the same).

    Returns:
        ``(mixed x, mixed y)`` (new tensors; inputs untouched).
    """
    rng = np.random.default_rng([int(seed), int(epoch), int(step), int(rank), 0x4D4958])
    if rng.random() >= mix["prob"]:
        return x, y
    a_mu, a_cm = mix["mixup_alpha"], mix["cutmix_alpha"]
    use_cutmix = a_cm > 0 and (a_mu <= 0 or rng.random() < mix["switch_prob"])
    partner_x, partner_y = x.flip(0), y.flip(0)
    if use_cutmix:
        lam = float(rng.beta(a_cm, a_cm))
        H, W = x.shape[-2:]
        ratio = np.sqrt(1.0 - lam)
        ch, cw = int(H * ratio), int(W * ratio)
        cy, cx = int(rng.integers(0, H)), int(rng.integers(0, W))
        t, b = int(np.clip(cy - ch // 2, 0, H)), int(np.clip(cy + ch // 2, 0, H))
        le, r = int(np.clip(cx - cw // 2, 0, W)), int(np.clip(cx + cw // 2, 0, W))
        x = x.clone()
        x[:, :, t:b, le:r] = partner_x[:, :, t:b, le:r]
        lam = 1.0 - (b - t) * (r - le) / float(H * W)
    else:
        lam = float(rng.beta(a_mu, a_mu))
        x = x * lam + partner_x * (1.0 - lam)
    return x, y * lam + partner_y * (1.0 - lam)


def create_teacher(teacher: dict, num_classes: int, device: torch.device):
    """The online KD teacher of a recipe's ``teacher`` section: uint8 ``[B,3,S,S]`` -> probabilities ``[B,C]``.

    Raises:
        ArgumentError: no teacher models, checkpoints that do not pair up with them, or a member
            with no weights at all (neither a checkpoint nor ``pretrained``): a random teacher
            would train the student on noise.
    """
    from imagenet_plus.teachers import create_teacher as _create, parse_teacher_list

    models = list(teacher["models"])
    if not models:
        raise ArgumentError("mode kd needs an online teacher: set recipe key teacher.models (timm names) and "
                            "teacher.checkpoints (safetensors weights), or --teacher and --teacher-checkpoint")
    ckpts = [c or None for c in teacher["checkpoints"]] or [None] * len(models)
    if len(ckpts) != len(models):
        raise ArgumentError(f"teacher.checkpoints has {len(ckpts)} entries for {len(models)} teacher.models; give "
                            "one per model (an empty entry uses timm's pretrained weights)")
    if not teacher["pretrained"]:
        bare = [m for m, c in zip(models, ckpts) if c is None]
        if bare:
            raise ArgumentError(f"teacher member {bare[0]!r} has no weights: teacher.pretrained is false and its "
                                "teacher.checkpoints entry is empty; pass --teacher-checkpoint (one per model)")
    specs = parse_teacher_list(models, ckpts)
    # A checkpoint keeps its own trained head (num_classes=None), so a teacher of another class count is
    # refused here with this script's fix, not with the builder's flags (--num-classes, --allow-new-head).
    for spec in specs:
        got = _checkpoint_classes(spec)
        if got is not None and got != num_classes:
            raise ArgumentError(f"teacher checkpoint {spec.checkpoint} ({spec.name!r}) classifies {got} classes, the "
                                f"dataset has {num_classes}: kd needs a teacher trained on these {num_classes} classes; "
                                "pass its weights with --teacher-checkpoint (examples/train.py and "
                                "builders/finetune_teacher.py write them)")
    return _create(specs, num_classes=num_classes, pretrained=teacher["pretrained"], device=device,
                   input_size=teacher["input_size"])


def _checkpoint_classes(spec) -> int | None:
    """The class count of a teacher member's checkpoint (its sidecar's, else its classifier's rows; None: no file)."""
    from imagenet_plus.teachers import create_member, read_sidecar

    if not spec.checkpoint:
        return None
    side = read_sidecar(spec.checkpoint)
    if isinstance(side.get("num_classes"), int):
        return int(side["num_classes"])
    model, _ = create_member(spec, num_classes=None, pretrained=False)  # no sidecar count: the head decides
    return int(model.num_classes)
