"""The ``ml-dr`` flavour of the policy: apple/ml-dr's replay semantics on this package's engine.

A policy config with ``"flavour": "ml-dr"`` (what ``imagenet-plus import-ml-dr`` writes into an
imported store's manifest) replays ml-dr's published reinforcements pixel for pixel. It is the
same engine (:class:`~imagenet_plus.augment.Policy` over :mod:`~imagenet_plus.augment.stages`):
the flip, RandAugment's op table, magnitudes, grouping and geometric kernels, and erasing are the
package's own stages. What differs follows where ml-dr's pipeline differs from torchvision's
(``docs/ml-dr-format.md``, sections 3 and 8):

* **RandAugment with torchvision's v1 kernels** for Color, Contrast, Sharpness and AutoContrast
  (:class:`V1RandAugment`): ml-dr's teacher ran ``torchvision.transforms`` (v1) on uint8 tensors,
  whose kernels round those four ops differently from the engine's v2 ones by up to a level.
* **Geometry resized by PIL.** ml-dr crops the decoded *PIL* image (``RandomResizedCrop``, or
  CIFAR's ``Resize(224)`` + ``RandomCrop(224, padding=16)``), so the resize is PIL's antialiased
  bilinear (``image.crop(box).resize((S, S), BILINEAR)``, what torchvision does on PIL images).
  :class:`PILResizedCrop` and :class:`PILPadCrop` store the same fields as the torchvision
  flavour (RRC boxes as fractions x 65535 of the source image, exact on the same image) and
  resize with PIL.
* **Mixing** (:class:`MLDRMixing`): MixUp *then* CutMix (both may apply), on the *normalised*
  float images: ``x = lam * x + (1 - lam) * x2``, then the partner's pixels pasted into the box.
  ml-dr's partner is a random image of the teacher's batch with a crop from an unrecorded
  augmentation, so the partner's own crop, flip, RandAugment ops and erased box are stored
  inline (``partner_*`` fields), not as another record. Fields (after the single-image ones)::

      mix_partner   <u4     the partner's sample index
      mix_kind      |u1     bit 0: MixUp, bit 1: CutMix (3: MixUp, then CutMix)
      mix_lam       <u4     MixUp's weight of the own image: the bits of an IEEE float32
                            in [0, 1] (exactly the float32 ml-dr's float multiplies by)
      mix_box       [4]     CutMix box (top, left, height, width), output pixels
      partner_crop, partner_ops, partner_erase
                            the partner's single-image fields, same layout as the own ones

  :meth:`~imagenet_plus.augment.Policy.finish_normalized` (every replay path) blends on floats
  without rounding; :meth:`~imagenet_plus.augment.Policy.finish` (uint8: previews, teacher
  reruns) rounds the MixUp blend to the nearest level. MixUp's float32 ``lam`` is ml-dr's exactly;
  ``1 - lam`` is rounded to float32 from it, which can differ from ml-dr's ``float32(1 - lam)``
  (computed from the float64 lambda) by one float32 step (6e-8), i.e. <= 2e-7 per normalised
  value: far below the ~1e-6 of normalising in another order.

Partner params therefore come from the record itself (:meth:`MLDRMixing.partner_params`,
reached through :meth:`Policy.partner_params`). Drawing new mixing records is refused: a
partner's crop depends on the partner's image size, which ``Policy.sample`` does not see; only
unmixed draws (``mix=False``: original images' augmentations) are possible.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
from PIL import Image

from ..errors import PolicyError
from ..schema import Field
from . import ops as _ops
from ._device import upload
from .config import POLICY, register_flavour
from .stages import (MAX_PARTNER, Batch, Erasing, Flip, Mixing, PadCrop, RandAugment, Records, ResizedCrop, Stage,
                     _box_dtype, _check_boxes, host, pack_slots, write_unmixed)

__all__ = ["MIX_DEFAULTS", "LAM_ONE_BITS", "V1_OPS", "MLDR", "PILResizedCrop", "PILPadCrop", "V1RandAugment",
           "MLDRMixing", "apply_ra_op_v1", "lam_to_bits", "lam_from_bits"]

#: The ``mix`` section of an ml-dr config: MixUp ``Beta(alpha, alpha) / div_by`` with probability
#: ``mixup_p``, CutMix ``Beta(alpha, alpha)`` with probability ``cutmix_p``, independently (ml-dr's
#: ``mixing.yaml``). They describe how ml-dr drew its records; replay reads the stored values.
MIX_DEFAULTS = {"mixup_alpha": 1.0, "mixup_p": 0.5, "mixup_div_by": 2.0, "cutmix_alpha": 1.0, "cutmix_p": 0.5}
#: ``mix_lam``'s largest value: the bits of float32 1.0 (bits of non-negative floats grow with the value).
LAM_ONE_BITS = int(np.float32(1.0).view(np.uint32))


def lam_to_bits(lam) -> np.ndarray:
    """MixUp lambdas (float64 or float32, in ``[0, 1]``) -> int64 ``mix_lam`` values (float32 bits)."""
    return np.asarray(lam, dtype=np.float32).view(np.uint32).astype(np.int64)


def lam_from_bits(bits) -> np.ndarray:
    """``mix_lam`` values -> the float32 lambdas."""
    return np.asarray(bits, dtype=np.int64).astype(np.uint32).view(np.float32)


def _check_pil_resize(section: dict) -> dict:
    """ml-dr resized with PIL's antialiased bilinear: a geometry section with any other resize is refused."""
    if section["interpolation"] != "bilinear" or section["antialias"] is not True:
        raise POLICY.fail({k: section[k] for k in ("interpolation", "antialias")}, "geometry",
                          'interpolation "bilinear" with antialias true for flavour "ml-dr" (PIL\'s resize)')
    return section


# ----------------------------------------------------------------------------- geometry
def _pil(x) -> Image.Image:
    if isinstance(x, Image.Image):
        return x
    return Image.fromarray(np.ascontiguousarray(x.detach().cpu().permute(1, 2, 0).numpy()), mode="RGB")


def _tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(image)).permute(2, 0, 1)


class PILResizedCrop(ResizedCrop):
    """RandomResizedCrop on the PIL image, as ml-dr's loader: the stored box, then PIL's bilinear resize to S."""

    @classmethod
    def check_section(cls, section: dict, config: dict) -> dict:
        return _check_pil_resize(super().check_section(section, config))

    def crop(self, x, params: Mapping[str, Any]) -> torch.Tensor:
        top, left, h, w = self.box(x, params)
        region = _pil(x).crop((left, top, left + w, top + h))
        return _tensor(region.resize((self.size, self.size), Image.BILINEAR))


class PILPadCrop(PadCrop):
    """CIFAR's ``Resize(S)`` by PIL (bilinear), then the zero-padded random S x S crop."""

    @classmethod
    def check_section(cls, section: dict, config: dict) -> dict:
        return _check_pil_resize(super().check_section(section, config))

    def crop(self, x, params: Mapping[str, Any]) -> torch.Tensor:
        top, left, rh, rw = self.offsets(x, params)
        return self.pad_and_crop(_tensor(_pil(x).resize((rw, rh), Image.BILINEAR)), top, left)


# ----------------------------------------------------------------------------- RandAugment
#: Ops whose v2 kernel (the engine's) rounds differently from torchvision's v1 tensor kernel, by up
#: to one level (grey levels truncated before the blend in v1, the float order of the blurs): the
#: ml-dr flavour runs them with the v1 kernels ml-dr's teacher ran (``transforms.functional`` on
#: uint8 tensors, unchanged from torchvision 0.13 to 0.29). The other ops' engine kernels equal v1's.
V1_OPS = frozenset({"Color", "Contrast", "Sharpness", "AutoContrast"})


def apply_ra_op_v1(images: torch.Tensor, op: str, magnitude: float, interpolation: str, fill: int) -> torch.Tensor:
    """One RandAugment op as torchvision's v1 ``RandAugment`` applies it to a uint8 batch."""
    if op not in V1_OPS:
        return _ops.apply_ra_op(images, op, magnitude, interpolation, fill)
    from torchvision.transforms import functional as F1

    if op == "Color":
        return F1.adjust_saturation(images, 1.0 + magnitude)
    if op == "Contrast":
        return F1.adjust_contrast(images, 1.0 + magnitude)
    if op == "Sharpness":
        return F1.adjust_sharpness(images, 1.0 + magnitude)
    return F1.autocontrast(images)


class V1RandAugment(RandAugment):
    """The engine's RandAugment (same fields, op table and magnitudes) with :func:`apply_ra_op_v1`'s kernels."""

    apply_op = staticmethod(apply_ra_op_v1)


# ----------------------------------------------------------------------------- mixing
class MLDRMixing(Mixing):
    """ml-dr's MixUp then CutMix with a partner whose params the record carries (see the module docstring).

    Args:
        config: the ``mix`` section.
        size: output side S.
        single: the single-image stages (geometry, flip, RandAugment, erasing), slots packed.
        single_fields: their fields, in the policy's order (the partner's fields mirror them).
    """

    name = "mix"
    defaults = MIX_DEFAULTS

    @classmethod
    def check_section(cls, section: dict, config: dict) -> dict:
        for key, lo, hi in (("mixup_alpha", 0.0, 100.0), ("mixup_p", 0.0, 1.0), ("mixup_div_by", 1.0, 1e6),
                            ("cutmix_alpha", 0.0, 100.0), ("cutmix_p", 0.0, 1.0)):
            section[key] = POLICY.number(section[key], f"mix.{key}", low=lo, high=hi)
        return section

    @classmethod
    def create(cls, section: dict, config: dict, earlier: list[Stage]) -> MLDRMixing:
        shared = pack_slots(earlier)  # the policy packs the same slots again, identically
        return cls(section, config["output_size"], earlier, _single_fields(earlier, shared))

    def __init__(self, config: dict, size: int, single: list[Stage], single_fields: list[Field]):
        self.config, self.size = config, size
        self.single, self.single_fields = tuple(single), tuple(single_fields)
        box = _box_dtype(size)
        self.fields = (
            Field("mix_partner", "<u4", (), 0, MAX_PARTNER, "partner sample index (its params: the partner_* fields)"),
            Field("mix_kind", "|u1", (), 0, 3, "bit 0 MixUp, bit 1 CutMix (both: MixUp, then CutMix)"),
            Field("mix_lam", "<u4", (), 0, LAM_ONE_BITS, "MixUp weight of the own image: IEEE float32 bits, [0, 1]"),
            Field("mix_box", box, (4,), 0, size, "CutMix box (top, left, height, width) from the partner, pixels"),
            *(Field("partner_" + f.name, f.dtype, f.shape, f.low, f.high, f"the partner's {f.name}: {f.doc}")
              for f in single_fields),
        )

    def sample(self, records: Records, out: dict[str, np.ndarray]) -> None:
        n = records.size
        if records.mix and (self.config["mixup_p"] > 0 or self.config["cutmix_p"] > 0) and n:
            raise PolicyError("Policy.sample: the ml-dr flavour replays imported mixing records but cannot draw new "
                              "ones (a partner's crop depends on the partner's image size, which sample does not "
                              "see); build with the 'rrc+mix' presets, or draw unmixed records (mix=False)")
        write_unmixed(out, n, lam=0)
        for f in self.single_fields:
            out["partner_" + f.name] = np.zeros((n, *f.shape), np.int64)

    def check(self, batch: Batch, what: str) -> None:
        f = batch.fields
        _check_boxes(f["mix_box"], "mix_box", self.size, what)
        p = f["mix_partner"]
        if batch.num_samples is not None and p.size and p.max() >= batch.num_samples:
            raise PolicyError(f"{what}: mix_partner {p.max()} is outside the dataset "
                              f"(num_samples={batch.num_samples}); the store does not match this dataset")
        partner = Batch({g.name: f["partner_" + g.name] for g in self.single_fields}, batch.rows, batch.num_samples)
        for stage in self.single:
            stage.check(partner, f"{what} (partner_* fields)")

    def partner_params(self, params: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Every field of the partners' params: their own single-image fields, and "no mix"."""
        out = {f.name: host(params["partner_" + f.name]) for f in self.single_fields}
        for f in self.fields:
            out[f.name] = np.zeros_like(host(params[f.name]))
        return out

    def _parts(self, batch: Batch) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        B = batch.own
        kind = batch.fields["mix_kind"][:B].reshape(-1)
        mixup, cutmix = (kind & 1) != 0, (kind & 2) != 0
        lam = np.where(mixup, lam_from_bits(batch.fields["mix_lam"][:B].reshape(-1)), np.float32(1.0))
        boxes = np.where(cutmix[:, None], batch.fields["mix_box"][:B].reshape(-1, 4), 0)
        return mixup, cutmix, lam.astype(np.float32), boxes

    def finish(self, x: torch.Tensor, batch: Batch) -> torch.Tensor:
        """uint8 (previews, teacher reruns): MixUp rounded to the nearest level, then CutMix."""
        B = batch.own
        if batch.rows == B:  # no partners attached: nothing mixes
            return x
        mixup, cutmix, lam, boxes = self._parts(batch)
        out = _ops.mix(x[:B], x[B:], mixup.astype(np.int64), lam, boxes)
        return _ops.mix(out, x[B:], 2 * cutmix.astype(np.int64), lam, boxes)

    def finish_normalized(self, x: torch.Tensor, batch: Batch) -> torch.Tensor:
        """ml-dr's mixing on the normalised float32 images ``[rows, 3, S, S]`` (own rows, then partners)."""
        B = batch.own
        if batch.rows == B:
            return x
        own, partner = x[:B], x[B:]
        mixup, cutmix, lam, boxes = self._parts(batch)
        out = own
        if mixup.any():
            weight = upload(lam, x.device).view(-1, 1, 1, 1)
            rest = upload((1.0 - lam.astype(np.float64)).astype(np.float32), x.device).view(-1, 1, 1, 1)
            blended = own * weight + partner * rest  # ml-dr: lam * x + (1 - lam) * x2
            out = torch.where(upload(mixup, x.device).view(-1, 1, 1, 1), blended, own)
        if cutmix.any():
            mask = _ops._box_mask(upload(boxes, x.device), x.shape[-2], x.shape[-1])
            out = torch.where(mask, partner, out)
        return out


def _single_fields(single: list[Stage], shared: Field | None) -> list[Field]:
    """The single-image stages' fields in the order :class:`~imagenet_plus.augment.Policy` lists them."""
    out = []
    for stage in single:
        if shared is not None and stage.slot is not None and stage.slot.shift == 0:
            out.append(shared)
        out.extend(stage.fields)
    return out


#: The ``ml-dr`` flavour: the torchvision flavour's sections with ml-dr's stages.
MLDR = register_flavour("ml-dr", (PILResizedCrop, PILPadCrop, Flip, V1RandAugment, Erasing, MLDRMixing))
