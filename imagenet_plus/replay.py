"""Batched replay on a device: photometric ops, erasing, mixing, normalisation and targets.

The per-sample CPU replay is :meth:`imagenet_plus.augment.Policy.apply` (crop + finish
for one record). :class:`DeviceReplay` takes a *collated* batch of the dataset's
device-path items (already cropped uint8 images, partner crops, params, sparse
targets) and does the rest of the work in one batched pass on the device.

Tolerance against the per-sample CPU path: on the CPU the result is bit-exact
(``finish`` on a batch equals ``finish`` per record). On CUDA, float kernels
(affine/rotate grids, colour ops, MixUp blend) may round a few pixels differently:
the stated bound is a mean absolute difference of at most 1 grey level on the
uint8 scale, and a teacher's top-1 on the two versions agrees on >= 99% of records
(``tests/test_replay.py``, ``benchmarks/gpu_check.py``).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from .augment import Policy, create_policy
from .errors import PolicyError

__all__ = ["DeviceReplay"]


def _densify_fn():
    from .targets import densify

    return densify


class DeviceReplay:
    """Finish a collated batch of device-path items on ``device``.

    Args:
        policy: the store's policy (a :class:`Policy`, preset name or config dict).
        num_classes: C, the width of the dense targets.
        densify: "smooth" (spread the tail mass uniformly, the paper's choice) or "none".
        device: where to run (``"cuda"``, ``"cpu"``, a ``torch.device``); default CUDA if
            available, else CPU.
        non_blocking: copy host tensors with ``non_blocking=True`` (use pinned memory).

    Call it on a batch dict ``{"image": uint8 [B,3,S,S], "partner": uint8 [B,3,S,S],
    "params": {field: [B, ...]}, "partner_params": {field: [B, ...]}, "topk_ids":
    int64 [B,K], "topk_probs": float32 [B,K], "is_original": bool [B], "label": int64 [B]}``
    (what ``default_collate`` makes of the device-path items). Returns ``(images float32
    [B,3,S,S], targets float32 [B,C])`` on the device. Records with ``is_original`` are
    finished like the others (their params carry the RandAugment ops and erasing box the
    dataset drew afresh) but never mixed, and get one-hot targets.

    Example:
        >>> replay = DeviceReplay("rrc+ra/re", num_classes=1000, device="cuda")
        >>> for batch in loader:
        ...     images, targets = replay(batch)
    """

    def __init__(self, policy: Policy | str | dict, num_classes: int, densify: str = "smooth",
                 device: str | torch.device | None = None, non_blocking: bool = True):
        self.policy = policy if isinstance(policy, Policy) else create_policy(policy)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise PolicyError(f"DeviceReplay: num_classes must be a positive integer, got {num_classes!r}")
        if densify not in ("smooth", "none"):
            raise PolicyError(f"Unknown value {densify!r} for argument densify. Valid values are {{smooth, none}}.")
        self.num_classes = num_classes
        self.densify = densify
        self.device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
        self.non_blocking = non_blocking

    def __repr__(self) -> str:
        return (f"DeviceReplay(policy={self.policy.name!r}, num_classes={self.num_classes}, "
                f"densify={self.densify!r}, device={str(self.device)!r})")

    def _params(self, params: Mapping[str, Any], may_mix: np.ndarray) -> dict[str, np.ndarray]:
        out = {}
        for f in self.policy.fields:
            if f.name not in params:
                raise PolicyError(f"DeviceReplay: batch params lack field {f.name!r}; expected "
                                  f"{[x.name for x in self.policy.fields]} (does the store's policy match?)")
            v = params[f.name]
            v = v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
            if f.name == "mix_kind":  # originals are never mixed (their target is one-hot)
                v = np.where(may_mix.reshape((-1,) + (1,) * (v.ndim - 1)), v, 0)
            out[f.name] = v
        return out

    def __call__(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Replay a collated batch; see the class docstring."""
        for key in ("image", "params", "topk_ids", "topk_probs"):
            if key not in batch:
                raise PolicyError(f"DeviceReplay: batch lacks {key!r}; pass a collated batch of device-path items "
                                  "(ReinforcedDataset(..., device='cuda'))")
        images = batch["image"].to(self.device, non_blocking=self.non_blocking)
        B = images.shape[0]
        is_orig = batch.get("is_original")
        is_orig = np.zeros(B, bool) if is_orig is None else np.asarray(torch.as_tensor(is_orig).cpu(), bool).reshape(B)
        params = self._params(batch["params"], ~is_orig)
        partners = partner_params = None
        if self.policy.uses_mix:
            if "partner" not in batch or "partner_params" not in batch:
                raise PolicyError("DeviceReplay: mixing policy needs 'partner' and 'partner_params' in the batch")
            partners = batch["partner"].to(self.device, non_blocking=self.non_blocking)
            partner_params = self._params(batch["partner_params"], ~is_orig)
            n = len(params["mix_partner"])
            if n != B:
                raise PolicyError(f"DeviceReplay: params hold {n} records but the batch has {B} images")
        self.policy.check_params(params, what="DeviceReplay params")
        x = self.policy.finish(images, params, partners, partner_params)
        x = self.policy.normalize(x)
        targets = self._targets(batch, is_orig)
        return x, targets

    def _targets(self, batch, is_orig: np.ndarray) -> torch.Tensor:
        ids = torch.as_tensor(batch["topk_ids"]).to(self.device, non_blocking=self.non_blocking)
        probs = torch.as_tensor(batch["topk_probs"]).to(self.device, torch.float32, non_blocking=self.non_blocking)
        dense = _densify_fn()(ids, probs, self.num_classes, mode=self.densify)
        if is_orig.any():
            if "label" not in batch:
                raise PolicyError("DeviceReplay: batch has is_original records but no 'label'")
            labels = torch.as_tensor(batch["label"]).long().cpu()
            if int(labels.min()) < 0 or int(labels.max()) >= self.num_classes:
                raise PolicyError(f"DeviceReplay: labels must lie in [0, {self.num_classes}), got "
                                  f"[{int(labels.min())}, {int(labels.max())}]")
            hot = torch.nn.functional.one_hot(labels.to(self.device), self.num_classes).float()
            mask = torch.from_numpy(is_orig).to(self.device).view(-1, 1)
            dense = torch.where(mask, hot, dense)
        return dense
