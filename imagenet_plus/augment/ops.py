"""Pure, batched op dispatchers: RandAugment's 14 ops, random erasing and MixUp/CutMix.

Every function here takes images and *already sampled* parameters and returns
new images; nothing here draws random numbers. Inputs are ``uint8`` tensors
``[B, 3, S, S]`` on any device. Per-record parameters are applied by grouping
the records that share an op (and sign) and calling torchvision's
``transforms.v2.functional`` kernel once per group, so a batch gives the same
pixels as its records one by one (bit-exact on the CPU).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from .config import RA_OPS

__all__ = ["SIGNED_OPS", "ra_magnitude", "apply_ra_op", "apply_randaugment", "erase", "mix"]

#: Ops whose magnitude is negated with probability 1/2 (torchvision's ``signed`` flag).
SIGNED_OPS = frozenset({"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate",
                        "Brightness", "Color", "Contrast", "Sharpness"})


@functools.lru_cache(maxsize=1024)
def ra_magnitude(op: str, magnitude: int, num_bins: int, height: int, width: int, negative: bool) -> float:
    """The magnitude torchvision's ``RandAugment`` uses for ``op`` (same float32 bins)."""
    if op in ("Identity", "AutoContrast", "Equalize"):
        return 0.0
    if op in ("ShearX", "ShearY"):
        bins = torch.linspace(0.0, 0.3, num_bins)
    elif op == "TranslateX":
        bins = torch.linspace(0.0, 150.0 / 331.0 * width, num_bins)
    elif op == "TranslateY":
        bins = torch.linspace(0.0, 150.0 / 331.0 * height, num_bins)
    elif op == "Rotate":
        bins = torch.linspace(0.0, 30.0, num_bins)
    elif op in ("Brightness", "Color", "Contrast", "Sharpness"):
        bins = torch.linspace(0.0, 0.9, num_bins)
    elif op == "Posterize":
        bins = (8 - (torch.arange(num_bins) / ((num_bins - 1) / 4))).round().int()
    elif op == "Solarize":
        bins = torch.linspace(1.0, 0.0, num_bins)
    else:
        raise ValueError(f"unknown RandAugment op {op!r}; valid ops: {RA_OPS}")
    m = float(bins[magnitude])
    return -m if (negative and op in SIGNED_OPS) else m


_GEOMETRIC = frozenset({"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"})


@functools.lru_cache(maxsize=512)
def _nearest_map(op: str, magnitude: float, height: int, width: int, device: str):
    """How a nearest-neighbour geometric op moves pixels: ``("shift", dy, dx)`` or ``("gather", src)``.

    Computed by running torchvision's own kernel on an image whose values are the pixel
    indices: with nearest interpolation every output pixel is a copy of one source pixel
    (or the fill), so replaying the recorded movement is bit-identical to the kernel, on
    any device. ``src[k]`` is the flat source index of output pixel ``k``; ``height * width``
    stands for the fill. Integer translations are recognised and replayed as a shifted copy.
    """
    idx = torch.arange(1, height * width + 1, dtype=torch.float32).view(1, 1, height, width)
    out = _torchvision_op(idx, op, magnitude, "nearest", 0)
    src = out.reshape(-1).round().long() - 1
    n = height * width
    src = torch.where(src < 0, n, src)
    k0 = int(torch.nonzero(src < n)[0]) if bool((src < n).any()) else -1
    if k0 >= 0:  # does it equal a pure shift by (dy, dx)?
        dy, dx = k0 // width - int(src[k0]) // width, k0 % width - int(src[k0]) % width
        ys = torch.arange(height).view(-1, 1) - dy
        xs = torch.arange(width).view(1, -1) - dx
        inside = (ys >= 0) & (ys < height) & (xs >= 0) & (xs < width)
        shifted = torch.where(inside, ys * width + xs, n).reshape(-1)
        if torch.equal(shifted, src):
            return ("shift", dy, dx)
    return ("gather", src.to(device))


def _move(images: torch.Tensor, how, fill: int) -> torch.Tensor:
    b, c, h, w = images.shape
    if how[0] == "shift":
        _, dy, dx = how
        out = torch.full_like(images, fill)
        if abs(dy) < h and abs(dx) < w:
            out[..., max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
                images[..., max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
        return out
    src = how[1]
    if images.device.type == "cpu":  # numpy's take is ~1.4x torch.gather with an expanded index here
        flat = np.empty((b * c, h * w + 1), dtype=images.numpy().dtype)
        flat[:, :h * w] = images.numpy().reshape(b * c, h * w)
        flat[:, h * w] = fill
        return torch.from_numpy(np.take(flat, src.numpy(), axis=1)).view(b, c, h, w)
    flat = torch.cat([images.reshape(b * c, h * w), images.new_full((b * c, 1), fill)], dim=1)
    return torch.gather(flat, 1, src.view(1, -1).expand(b * c, -1)).view(b, c, h, w)


_POINTWISE = frozenset({"Brightness", "Solarize", "Posterize"})


@functools.lru_cache(maxsize=64)
def _lut(op: str, magnitude: float) -> np.ndarray:
    """The table of a per-pixel op, made by torchvision's own kernel on all 256 uint8 values.

    Returned as a 65536-entry ``uint16`` table indexed by *pairs* of neighbouring bytes
    (``lut16[a | b << 8] == lut[a] | lut[b] << 8``), so a lookup over an image costs one
    gather per two pixels; see :func:`_apply_lut16`.
    """
    values = torch.arange(256, dtype=torch.uint8).view(1, 1, 1, 256)
    return _pair_table(_torchvision_op(values, op, magnitude, "nearest", 0).reshape(256).numpy())


def _pair_table(lut: np.ndarray) -> np.ndarray:
    v = np.arange(65536)
    return (lut[v & 255].astype(np.uint16) | (lut[v >> 8].astype(np.uint16) << 8)).astype("=u2")


def _apply_lut16(images: torch.Tensor, lut16: np.ndarray) -> torch.Tensor:
    """Look every byte of a CPU uint8 tensor up in a pair table (exactly ``lut[images]``)."""
    flat = np.ascontiguousarray(images.numpy()).reshape(-1)
    if flat.size % 2:
        return torch.from_numpy(lut16[flat.astype(np.intp)].astype(np.uint8)).view(images.shape)
    # Both the index and the table are native-endian, so byte k of each looked-up pair is
    # pixel k's value on either byte order.
    out = np.take(lut16, flat.view(np.uint16))
    return torch.from_numpy(out.view(np.uint8)).view(images.shape)


def _equalize(images: torch.Tensor) -> torch.Tensor:
    """torchvision's ``equalize`` for CPU uint8, bit for bit, with per-channel integer tables.

    Same integer steps as torchvision (PIL's scheme): histogram, cumulative histogram,
    ``step = (pixels - count of the largest value) // 255``, table
    ``lut[k] = clamp((cum[k-1] + step // 2) // step, 0, 255)`` and ``lut[0] = 0``; channels
    with ``step == 0`` stay as they are. All integer, so exact. PIL's C routines count the
    histogram and apply the table (each channel viewed as an 8-bit image, no copy in).
    """
    x = np.ascontiguousarray(images.numpy())
    b, c, h, w = x.shape
    planes = x.reshape(b * c, h * w)
    out = np.empty_like(planes)
    n = h * w
    for k in range(b * c):
        plane = Image.frombuffer("L", (w, h), planes[k], "raw", "L", 0, 1)
        hist = np.asarray(plane.histogram(), dtype=np.int64)
        cum = np.cumsum(hist)
        step = (n - int(hist[int(np.argmax(cum))])) // 255
        if step == 0:
            out[k] = planes[k]
            continue
        lut = np.zeros(256, np.int64)
        lut[1:] = np.clip((cum[:-1] + step // 2) // step, 0, 255)
        out[k] = np.frombuffer(plane.point(lut.tolist()).tobytes(), dtype=np.uint8)
    return torch.from_numpy(out).view(b, c, h, w)


def apply_ra_op(images: torch.Tensor, op: str, magnitude: float, interpolation: str, fill: int) -> torch.Tensor:
    """Apply one RandAugment op to a uint8 batch, exactly as torchvision's ``RandAugment`` does.

    Geometric ops with nearest interpolation (RandAugment's default) run as a cached
    pixel gather that reproduces torchvision's kernel bit for bit (see :func:`_nearest_map`).
    On the CPU, per-pixel ops run as a table made by torchvision's kernel (:func:`_lut`),
    Equalize as per-channel integer tables with torchvision's arithmetic (:func:`_equalize`),
    and Sharpness avoids the float convolution
    (see :func:`_sharpness`); all bit-exact (``tests/test_augment_ops.py`` checks each
    against torchvision's kernel).
    """
    if op in _GEOMETRIC and interpolation == "nearest":
        h, w = images.shape[-2:]
        return _move(images, _nearest_map(op, float(magnitude), h, w, str(images.device)), fill)
    if images.device.type == "cpu" and images.dtype == torch.uint8 and images.numel():
        if op in _POINTWISE:
            return _apply_lut16(images, _lut(op, float(magnitude)))
        if op == "Equalize":
            return _equalize(images)
    return _torchvision_op(images, op, magnitude, interpolation, fill)


def _torchvision_op(images: torch.Tensor, op: str, magnitude: float, interpolation: str, fill: int) -> torch.Tensor:
    fill_ = [float(fill)] * images.shape[-3]
    interp = F.InterpolationMode(interpolation)
    if op == "Identity":
        return images
    if op == "ShearX":
        return F.affine(images, angle=0.0, translate=[0, 0], scale=1.0,
                        shear=[math.degrees(math.atan(magnitude)), 0.0], interpolation=interp, fill=fill_,
                        center=[0, 0])
    if op == "ShearY":
        return F.affine(images, angle=0.0, translate=[0, 0], scale=1.0,
                        shear=[0.0, math.degrees(math.atan(magnitude))], interpolation=interp, fill=fill_,
                        center=[0, 0])
    if op == "TranslateX":
        return F.affine(images, angle=0.0, translate=[int(magnitude), 0], scale=1.0, interpolation=interp,
                        shear=[0.0, 0.0], fill=fill_)
    if op == "TranslateY":
        return F.affine(images, angle=0.0, translate=[0, int(magnitude)], scale=1.0, interpolation=interp,
                        shear=[0.0, 0.0], fill=fill_)
    if op == "Rotate":
        return F.rotate(images, angle=magnitude, interpolation=interp, fill=fill_)
    if op == "Brightness":
        return F.adjust_brightness(images, brightness_factor=1.0 + magnitude)
    if op == "Color":
        return F.adjust_saturation(images, saturation_factor=1.0 + magnitude)
    if op == "Contrast":
        return F.adjust_contrast(images, contrast_factor=1.0 + magnitude)
    if op == "Sharpness":
        return _sharpness(images, 1.0 + magnitude)
    if op == "Posterize":
        return F.posterize(images, bits=int(magnitude))
    if op == "Solarize":
        return F.solarize(images, threshold=255.0 * magnitude)
    if op == "AutoContrast":
        return F.autocontrast(images)
    if op == "Equalize":
        return F.equalize(images)
    raise ValueError(f"unknown RandAugment op {op!r}; valid ops: {RA_OPS}")


def _sharpness(images: torch.Tensor, factor: float) -> torch.Tensor:
    """torchvision's ``adjust_sharpness`` for uint8, bit for bit, without its float 3x3 convolution.

    torchvision blurs with the kernel [[1,1,1],[1,5,1],[1,1,1]] / 13 in float32 and rounds.
    The exact blur is S / 13 for an integer S <= 3315, which is never closer than 1/26 to a
    rounding boundary, while the float error stays below 0.004: so the rounded blur equals
    ``round(S / 13)`` computed in integers. The blend that follows runs the same float ops.
    """
    h, w = images.shape[-2:]
    if images.dtype != torch.uint8 or h <= 2 or w <= 2 or factor < 0:
        return F.adjust_sharpness(images, sharpness_factor=factor)
    xi = images.to(torch.int16)
    box = xi[..., :-2, :-2] + xi[..., :-2, 1:-1] + xi[..., :-2, 2:]
    box += xi[..., 1:-1, :-2] + xi[..., 1:-1, 2:]
    box += xi[..., 2:, :-2] + xi[..., 2:, 1:-1] + xi[..., 2:, 2:]
    box += 5 * xi[..., 1:-1, 1:-1]
    blurred = box.to(torch.float32).div_(13.0).round_()  # S is exact in float32; no ties at .5
    output = images.to(dtype=torch.float32, copy=True)
    view = output[..., 1:-1, 1:-1]
    view.add_(blurred.sub_(view), alpha=(1.0 - factor))
    return output.clamp_(0, 255).to(torch.uint8)


def apply_randaugment(images: torch.Tensor, op_ids: torch.Tensor, negative: torch.Tensor, *, magnitude: int,
                      num_bins: int, interpolation: str, fill: int) -> torch.Tensor:
    """Apply per-record RandAugment op sequences to a batch.

    Args:
        images: uint8 ``[B, 3, H, W]``.
        op_ids: int ``[B, num_ops]``, indices into :data:`RA_OPS`, applied left to right.
        negative: bool ``[B, num_ops]``, whether each signed op's magnitude is negated.
        magnitude: the magnitude bin.
        num_bins: the number of magnitude bins.
        interpolation: "nearest" or "bilinear" (geometric ops).
        fill: fill value of the geometric ops.

    Returns:
        uint8 ``[B, 3, H, W]``.
    """
    h, w = images.shape[-2:]
    op_ids = _as_np(op_ids).astype(np.int64)
    negative = _as_np(negative).astype(bool)
    out = images
    for k in range(op_ids.shape[1]):
        code = op_ids[:, k] * 2 + negative[:, k]
        codes = [int(code[0])] if code.shape[0] == 1 else np.unique(code).tolist()
        if codes == [0] or codes == [1]:
            continue  # Identity everywhere
        if len(codes) == 1:
            op = RA_OPS[codes[0] // 2]
            out = apply_ra_op(out, op, ra_magnitude(op, magnitude, num_bins, h, w, bool(codes[0] % 2)),
                              interpolation, fill)
            continue
        new = out.clone()
        for c in codes:
            op = RA_OPS[c // 2]
            if op == "Identity":
                continue
            idx = torch.from_numpy(np.nonzero(code == c)[0]).to(out.device)
            mag = ra_magnitude(op, magnitude, num_bins, h, w, bool(c % 2))
            new[idx] = apply_ra_op(out.index_select(0, idx), op, mag, interpolation, fill)
        out = new
    return out


def _as_np(v) -> np.ndarray:
    return v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)


def _box_mask(boxes: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """bool ``[B, 1, H, W]``: True inside each record's ``(top, left, height, width)`` box."""
    boxes = boxes.long()
    ys = torch.arange(h, device=boxes.device).view(1, h, 1)
    xs = torch.arange(w, device=boxes.device).view(1, 1, w)
    t, l, bh, bw = (boxes[:, i].view(-1, 1, 1) for i in range(4))
    return ((ys >= t) & (ys < t + bh) & (xs >= l) & (xs < l + bw)).unsqueeze(1)


def erase(images: torch.Tensor, boxes: torch.Tensor, value: int) -> torch.Tensor:
    """Set each record's box ``(top, left, height, width)`` to ``value`` (height 0: unchanged).

    ``boxes`` should live on the CPU (it is inspected to skip batches without erasing).
    """
    nb = _as_np(boxes).astype(np.int64).reshape(-1, 4)
    if images.shape[0] == 1:
        t, le, h, w = nb[0].tolist()
        if h <= 0:
            return images
        out = images.clone()
        out[..., t:t + h, le:le + w] = value
        return out
    if not (nb[:, 2] > 0).any():
        return images
    mask = _box_mask(torch.from_numpy(nb).to(images.device), images.shape[-2], images.shape[-1])
    return torch.where(mask, torch.tensor(value, dtype=images.dtype, device=images.device), images)


def mix(images: torch.Tensor, partners: torch.Tensor, kind: torch.Tensor, lam: torch.Tensor,
        boxes: torch.Tensor) -> torch.Tensor:
    """MixUp / CutMix each record with its partner image.

    Args:
        images: uint8 ``[B, 3, H, W]``, the records' own (finished) images.
        partners: uint8 ``[B, 3, H, W]``, the partners' (finished) images.
        kind: int ``[B]``: 0 none, 1 MixUp, 2 CutMix.
        lam: float32 ``[B]``: MixUp weight of the record's own image.
        boxes: int ``[B, 4]``: CutMix box (top, left, height, width) that takes the partner's pixels.

    Returns:
        uint8 ``[B, 3, H, W]``; MixUp rounds ``lam * a + (1 - lam) * b`` to nearest.
    """
    dev = images.device
    kind = kind.to(dev).long()
    lam = lam.to(dev, torch.float32).view(-1, 1, 1, 1)
    blended = (images.float() * lam + partners.float() * (1.0 - lam)).round_().clamp_(0, 255).to(torch.uint8)
    out = torch.where((kind == 1).view(-1, 1, 1, 1), blended, images)
    mask = _box_mask(boxes.to(dev), images.shape[-2], images.shape[-1]) & (kind == 2).view(-1, 1, 1, 1)
    return torch.where(mask, partners, out)
