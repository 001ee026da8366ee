"""An independent reference of apple/ml-dr's replay: one record's params -> ml-dr's normalised image.

Written directly with torchvision's functional ops, in ml-dr's order (its transform table in
``dr/transforms.py``; see docs/ml-dr-format.md), for the two pipelines ml-dr has:

* ``backend="tensor"`` -- what the *teacher* saw (``reinforce.py``): the decoded PIL image is
  cropped by PIL (``RandomResizedCrop``, or CIFAR's ``Resize`` + ``RandomCrop(padding=16)``) and
  made a float tensor in the data loader (``ToTensor``); after collation ``ToUint8`` turns it back
  to uint8 (``(x * 255).to(uint8)``), then horizontal flip and RandAugment run on the uint8 tensor,
  ``ToTensor`` divides by 255, RandomErasing writes zeros, Normalize, MixUp, CutMix;
* ``backend="pil"`` -- what ml-dr's *students* saw (``dr/data.py`` ``ReinforcedDataset``): the same
  steps on the PIL image (``ToUint8`` passes PIL images through), ``ToTensor`` after RandAugment.

The partner of a mixing record goes through the same steps with its own params; MixUp
(``lam * x + (1 - lam) * x2``) and then CutMix (rows ``x1:x2``, columns ``y1:y2`` from the
partner) act on the normalised tensors. Nothing here comes from ``imagenet_plus``.
"""

from __future__ import annotations

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F
from torchvision.transforms.autoaugment import _apply_op

#: ml-dr's RandAugment op list (``dr/transforms.py``), independent of the package's copy.
OPS = ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color",
       "Contrast", "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize")
SIZE = 224
PADDING = 16


def geometry(image: Image.Image, crop, kind: str) -> Image.Image:
    """The loader's crop on the PIL image: RandomResizedCrop (bilinear) or Resize + padded RandomCrop."""
    if kind == "rrc":
        top, left, h, w = (int(v) for v in crop)
        return F.resized_crop(image, top, left, h, w, [SIZE, SIZE], InterpolationMode.BILINEAR)
    top, left = (int(v) for v in crop)
    resized = F.resize(image, SIZE, InterpolationMode.BILINEAR)
    return F.crop(F.pad(resized, PADDING, fill=0), top, left, SIZE, SIZE)


def single(image: Image.Image, params: dict, *, kind: str, mean, std, backend: str = "tensor") -> torch.Tensor:
    """One image's chain up to Normalize.

    Args:
        image: the decoded RGB PIL image.
        params: ``crop`` (box or offsets), ``flip`` (bool), ``ra`` (list of (op index, magnitude) or
            None), ``erase`` ((top, left, height, width) or None).
        kind: ``"rrc"`` or ``"pad_crop"``.
        mean, std: Normalize's.
        backend: ``"tensor"`` (the teacher's pipeline) or ``"pil"`` (ml-dr's training replay).

    Returns:
        float32 ``[3, 224, 224]``.
    """
    img = geometry(image.convert("RGB"), params["crop"], kind)
    x = (F.to_tensor(img) * 255).to(torch.uint8) if backend == "tensor" else img
    if params["flip"]:
        x = F.hflip(x)
    x = randaugment(x, params.get("ra"))
    x = (x / 255.0).to(torch.float32) if backend == "tensor" else F.to_tensor(x)
    return F.normalize(erase(x, params.get("erase")), list(mean), list(std))


def randaugment(x, pairs):
    """torchvision's RandAugment op functions (nearest, no fill) with ml-dr's stored (op, magnitude) pairs."""
    for op, magnitude in pairs or ():
        x = _apply_op(x, OPS[int(op)], float(magnitude), interpolation=InterpolationMode.NEAREST, fill=None)
    return x


def erase(x: torch.Tensor, box) -> torch.Tensor:
    """ml-dr's RandomErasing: zeros into the [0, 1] tensor (whatever the configured value)."""
    if box is not None:
        top, left, h, w = (int(v) for v in box)
        x[:, top:top + h, left:left + w] = 0
    return x


def replay(image: Image.Image, params: dict, *, kind: str, mean, std, backend: str = "tensor",
           partner_image: Image.Image | None = None, partner_params: dict | None = None,
           mixup_lam: float | None = None, cutmix_box=None) -> torch.Tensor:
    """ml-dr's normalised image for one record (mixing with the partner where given).

    Args:
        image, params, kind, mean, std, backend: as :func:`single`.
        partner_image, partner_params: the partner's decoded image and its own params.
        mixup_lam: MixUp's lambda (the record image's weight) or None.
        cutmix_box: CutMix's ``(x1, y1, x2, y2)`` (rows x1:x2, columns y1:y2) or None.
    """
    x = single(image, params, kind=kind, mean=mean, std=std, backend=backend)
    if mixup_lam is None and cutmix_box is None:
        return x
    x2 = single(partner_image, partner_params, kind=kind, mean=mean, std=std, backend=backend)
    if mixup_lam is not None:
        x = mixup_lam * x + (1 - mixup_lam) * x2
    if cutmix_box is not None:
        x1, y1, xe, ye = (int(v) for v in cutmix_box)
        x = x.clone()
        x[:, x1:xe, y1:ye] = x2[:, x1:xe, y1:ye]
    return x


def record_params(recs, j: int, *, partner: bool = False) -> dict:
    """Record ``j`` of decoded ``SampleRecords`` as :func:`single`'s params (own, or the partner's)."""
    p = "partner_" if partner else ""
    out = {"crop": getattr(recs, p + "crop")[j].tolist(), "flip": bool(getattr(recs, p + "flip")[j])}
    ops = getattr(recs, p + "ra_op")
    if ops is not None and ops[j][0] >= 0:
        out["ra"] = list(zip(ops[j].tolist(), getattr(recs, p + "ra_magnitude")[j].tolist()))
    erase = getattr(recs, p + "erase")
    if erase is not None and erase[j][2] > 0:
        out["erase"] = erase[j].tolist()
    return out


def replay_record(recs, j: int, image: Image.Image, layout, *, partner_image=None, backend: str = "tensor"):
    """:func:`replay` of record ``j`` of decoded ``SampleRecords`` (a test convenience)."""
    kw = dict(kind=layout.geometry, mean=layout.mean, std=layout.std, backend=backend)
    if recs.partner is None or recs.partner[j] < 0:
        return replay(image, record_params(recs, j), **kw)
    box = None
    if recs.cutmix[j]:
        t, l, h, w = recs.cutmix_box[j].tolist()
        box = (t, l, t + h, l + w)
    return replay(image, record_params(recs, j), partner_image=partner_image,
                  partner_params=record_params(recs, j, partner=True),
                  mixup_lam=float(recs.mixup_lam[j]) if recs.mixup[j] else None, cutmix_box=box, **kw)
