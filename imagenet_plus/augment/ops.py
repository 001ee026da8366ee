"""Pure, batched op dispatchers: RandAugment's 14 ops, random erasing and MixUp/CutMix.

Every function here takes images and *already sampled* parameters and returns
new images; nothing here draws random numbers. Inputs are ``uint8`` tensors
``[B, 3, S, S]`` on any device. Per-record parameters are applied record by record
on the CPU (each on its own slice of the batch: no grouping copies) and, on other
devices, by grouping the records that share an op (and sign) and calling the kernel
once per group; a batch gives the same pixels as its records one by one (bit-exact
on the CPU).

Per-record parameters are host arrays (numpy or CPU tensors): every decision (which
groups exist, whether anything is erased or mixed) is taken on the host, and what the
kernels need on the device travels as one pinned, non-blocking upload per array per
batch (:mod:`._device`), so on CUDA these functions only enqueue work and never wait
for the device.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from ..errors import PolicyError
from ._device import cached_upload, upload

__all__ = ["RA_OPS", "SIGNED_OPS", "ra_magnitude", "apply_ra_op", "apply_randaugment", "erase", "mix"]

#: The 14 RandAugment ops of torchvision (``transforms.v2.RandAugment``), in its order;
#: the stored op id is the index in this tuple.
RA_OPS = (
    "Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness",
    "Color", "Contrast", "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize",
)
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
        raise PolicyError(f"unknown RandAugment op {op!r}; valid ops: {RA_OPS}; fix the policy config's op list")
    m = float(bins[magnitude])
    return -m if (negative and op in SIGNED_OPS) else m


_GEOMETRIC = frozenset({"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"})


@functools.lru_cache(maxsize=512)
def _nearest_map(op: str, magnitude: float, height: int, width: int):
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
    return ("gather", src)


def _move(images: torch.Tensor, op: str, magnitude: float, fill: int) -> torch.Tensor:
    """Replay a nearest-neighbour geometric op as :func:`_nearest_map` recorded it."""
    b, c, h, w = images.shape
    how = _nearest_map(op, magnitude, h, w)
    if how[0] == "shift":
        _, dy, dx = how
        out = torch.full_like(images, fill)
        if abs(dy) < h and abs(dx) < w:
            out[..., max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
                images[..., max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
        return out
    src = cached_upload(("nearest", op, magnitude, h, w), images.device, lambda: how[1])
    if images.device.type == "cpu":  # numpy's take is ~1.4x torch.gather with an expanded index here
        return _gather_numpy(images, src, fill)
    return _gather_torch(images, src, fill)


def _gather_numpy(images: torch.Tensor, src: torch.Tensor, fill: int) -> torch.Tensor:
    """``out[..., k] = images[..., src[k]]`` per channel plane, ``src[k] == H * W`` meaning ``fill`` (CPU)."""
    b, c, h, w = images.shape
    flat = np.empty((b * c, h * w + 1), dtype=images.numpy().dtype)
    flat[:, :h * w] = images.numpy().reshape(b * c, h * w)
    flat[:, h * w] = fill
    return torch.from_numpy(np.take(flat, src.numpy(), axis=1)).view(b, c, h, w)


def _gather_torch(images: torch.Tensor, src: torch.Tensor, fill: int) -> torch.Tensor:
    """:func:`_gather_numpy` with torch ops, on any device (``src`` on ``images.device``)."""
    b, c, h, w = images.shape
    flat = torch.cat([images.reshape(b * c, h * w), images.new_full((b * c, 1), fill)], dim=1)
    return torch.gather(flat, 1, src.view(1, -1).expand(b * c, -1)).view(b, c, h, w)


@functools.lru_cache(maxsize=256)
def _affine_grid(op: str, magnitude: float, height: int, width: int) -> torch.Tensor | None:
    """The sampling grid torchvision's ``affine`` / ``rotate`` kernel builds for a geometric op.

    Same matrix and grid functions, same arguments as :func:`_torchvision_op` passes, computed
    on the CPU in float32 (as torchvision does for a CPU image). ``None``: the op is the identity
    (a rotation by 0 degrees, which torchvision returns as a copy without resampling).
    """
    from torchvision.transforms.v2.functional._geometry import _affine_grid as grid_of
    from torchvision.transforms.v2.functional._geometry import _get_inverse_affine_matrix

    zero = [0.0, 0.0]
    if op in ("ShearX", "ShearY"):
        shear = math.degrees(math.atan(magnitude))
        matrix = _get_inverse_affine_matrix([-0.5 * width, -0.5 * height], 0.0, zero, 1.0,
                                            [shear, 0.0] if op == "ShearX" else [0.0, shear])
    elif op in ("TranslateX", "TranslateY"):
        shift = [float(int(magnitude)), 0.0] if op == "TranslateX" else [0.0, float(int(magnitude))]
        matrix = _get_inverse_affine_matrix(zero, 0.0, shift, 1.0, zero)
    else:  # Rotate; RandAugment's angles lie in [-30, 30], so no quarter-turn shortcut applies
        angle = magnitude % 360
        if angle == 0:
            return None
        matrix = _get_inverse_affine_matrix(zero, -angle, zero, 1.0, zero)
    theta = torch.tensor(matrix, dtype=torch.float32).reshape(1, 2, 3)
    return grid_of(theta, w=width, h=height, ow=width, oh=height)


def _bilinear(images: torch.Tensor, op: str, magnitude: float, fill: int) -> torch.Tensor:
    """A geometric op with bilinear interpolation: torchvision's grid transform with a scalar fill.

    Same steps as torchvision's ``_apply_grid_transform`` (a ones channel marks where the
    grid sampled inside the image; outside, pixels blend towards ``fill``), so bit-exact with
    its kernel on the CPU; the grid comes from :func:`_affine_grid` (uploaded once per device).
    """
    b, c, h, w = images.shape
    if _affine_grid(op, magnitude, h, w) is None or images.numel() == 0:
        return images.clone()
    grid = cached_upload(("grid", op, magnitude, h, w), images.device, lambda: _affine_grid(op, magnitude, h, w))
    x = torch.cat((images.to(torch.float32), images.new_ones((b, 1, h, w), dtype=torch.float32)), dim=1)
    x = torch.nn.functional.grid_sample(x, grid.expand(b, -1, -1, -1), mode="bilinear", padding_mode="zeros",
                                        align_corners=False)
    x, mask = torch.tensor_split(x, indices=(-1,), dim=-3)
    fill_ = float(fill)
    return x.sub_(fill_).mul_(mask.expand_as(x)).add_(fill_).round_().to(images.dtype)


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
    with ``step == 0`` stay as they are. All integer, so exact. PIL's C routine counts the
    histogram (each channel viewed as an 8-bit image, no copy in); numpy applies the table.
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
        lut = np.zeros(256, np.uint8)
        lut[1:] = np.clip((cum[:-1] + step // 2) // step, 0, 255)
        np.take(lut, planes[k], out=out[k])
    return torch.from_numpy(out).view(b, c, h, w)


def apply_ra_op(images: torch.Tensor, op: str, magnitude: float, interpolation: str, fill: int) -> torch.Tensor:
    """Apply one RandAugment op to a uint8 batch, exactly as torchvision's ``RandAugment`` does.

    Geometric ops with nearest interpolation (RandAugment's default) run as a cached
    pixel gather that reproduces torchvision's kernel bit for bit (see :func:`_nearest_map`);
    with bilinear interpolation they sample torchvision's own grid, built once on the host
    (see :func:`_bilinear`).
    On the CPU, per-pixel ops run as a table made by torchvision's kernel (:func:`_lut`),
    Equalize as per-channel integer tables with torchvision's arithmetic (:func:`_equalize`),
    and Sharpness avoids the float convolution
    (see :func:`_sharpness`); all bit-exact (``tests/test_augment_ops.py`` checks each
    against torchvision's kernel).
    """
    if op in _GEOMETRIC:
        if interpolation == "nearest":
            return _move(images, op, float(magnitude), fill)
        return _bilinear(images, op, float(magnitude), fill)
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
    raise PolicyError(f"unknown RandAugment op {op!r}; valid ops: {RA_OPS}; fix the policy config's op list")


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


def apply_randaugment(images: torch.Tensor, op_ids, negative, *, magnitude: int, num_bins: int,
                      interpolation: str, fill: int, apply_op=None) -> torch.Tensor:
    """Apply per-record RandAugment op sequences to a batch.

    On the CPU each record's ops run on its own slice (:func:`_per_record`). On other devices
    records are grouped by (op, sign) at each position: the batch is gathered in group
    order (one index upload per batch for all positions), each group's op runs on its
    contiguous slice, and the inverse order puts the records back. Both give the same pixels.

    Args:
        images: uint8 ``[B, 3, H, W]``.
        op_ids: int ``[B, num_ops]`` on the host, indices into :data:`RA_OPS`, applied left to right.
        negative: bool ``[B, num_ops]`` on the host, whether each signed op's magnitude is negated.
        magnitude: the magnitude bin.
        num_bins: the number of magnitude bins.
        interpolation: "nearest" or "bilinear" (geometric ops).
        fill: fill value of the geometric ops.
        apply_op: the per-op kernel (default :func:`apply_ra_op`; the ml-dr flavour passes its own).

    Returns:
        uint8 ``[B, 3, H, W]``.
    """
    apply_op = apply_ra_op if apply_op is None else apply_op
    h, w = images.shape[-2:]
    codes = _as_np(op_ids).astype(np.int64) * 2 + _as_np(negative).astype(np.int64)

    def run(x, code):
        op = RA_OPS[code // 2]
        if op == "Identity":
            return x
        return apply_op(x, op, ra_magnitude(op, magnitude, num_bins, h, w, bool(code % 2)), interpolation, fill)

    if images.device.type == "cpu" and images.shape[0] > 1:
        return _per_record(images, codes, run)
    return _grouped(images, codes, run)


def _grouped(images: torch.Tensor, codes: np.ndarray, run) -> torch.Tensor:
    """:func:`apply_randaugment` by (op, sign) groups per op position (``codes``: ``op * 2 + negative``)."""
    plans, orders = _group_plans(codes)
    index = upload(np.stack(orders), images.device) if orders else None
    out = images
    for plan in plans:
        if isinstance(plan, int):  # one (op, sign) for the whole batch
            out = run(out, plan)
            continue
        k, bounds = plan
        grouped = out.index_select(0, index[k, 0])
        parts = [run(grouped[a:b], code) for code, a, b in bounds]
        out = torch.cat(parts).index_select(0, index[k, 1]) if len(parts) > 1 else parts[0]
    return out


def _per_record(images: torch.Tensor, codes: np.ndarray, run) -> torch.Tensor:
    """The CPU path of :func:`apply_randaugment`: each record's ops on its own slice of the batch.

    No grouping copies (gather into group order, concatenate, scatter back, per op position): each
    op reads the record's view and writes its own output, and one concatenation assembles the batch.
    Each op is a per-image kernel, so the pixels are those of the grouped path (measured faster on
    one core; the grouped path stays for other devices, where it saves kernel launches).
    """
    parts = []
    for b, row in enumerate(codes.tolist()):
        x = images[b:b + 1]
        for code in row:
            x = run(x, code)
        parts.append(x)
    return torch.cat(parts)


def _group_plans(codes: np.ndarray) -> tuple[list, list[np.ndarray]]:
    """Per op position: a code shared by all records, or (row in the index upload, [(code, start, end)]).

    The index upload holds, per grouped position, the stable order that makes each code's
    records contiguous and its inverse.
    """
    if codes.shape[0] == 1:
        return codes[0].tolist(), []
    plans: list = []
    orders: list[np.ndarray] = []
    for col in codes.T:
        first = int(col[0])
        if (col == first).all():
            plans.append(first)
            continue
        order = np.argsort(col, kind="stable")
        inverse = np.empty_like(order)
        inverse[order] = np.arange(order.shape[0])
        sorted_codes = col[order]
        cuts = np.flatnonzero(np.diff(sorted_codes)) + 1
        starts = np.concatenate([[0], cuts])
        ends = np.concatenate([cuts, [col.shape[0]]])
        plans.append((len(orders), [(int(sorted_codes[a]), int(a), int(b)) for a, b in zip(starts, ends)]))
        orders.append(np.stack([order, inverse]))
    return plans, orders


def _as_np(v) -> np.ndarray:
    return v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)


def _box_mask(boxes: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """bool ``[B, 1, H, W]``: True inside each record's ``(top, left, height, width)`` box."""
    ys = torch.arange(h, device=boxes.device).view(1, h, 1)
    xs = torch.arange(w, device=boxes.device).view(1, 1, w)
    t, l, bh, bw = (boxes[:, i].view(-1, 1, 1) for i in range(4))
    return ((ys >= t) & (ys < t + bh) & (xs >= l) & (xs < l + bw)).unsqueeze(1)


def erase(images: torch.Tensor, boxes, value: int) -> torch.Tensor:
    """Set each record's box ``(top, left, height, width)`` to ``value`` (height 0: unchanged).

    ``boxes``: int ``[B, 4]`` on the host (numpy or a CPU tensor). On the CPU (and for one
    record anywhere) each box is written as a slice of a copy of the batch; on other devices a
    mask over the batch does it in one kernel. ``images`` itself is never modified.
    """
    nb = _as_np(boxes).astype(np.int64).reshape(-1, 4)
    rows = np.flatnonzero(nb[:, 2] > 0)
    if not rows.size:
        return images
    if images.device.type != "cpu" and images.shape[0] > 1:
        mask = _box_mask(upload(nb, images.device), images.shape[-2], images.shape[-1])
        return images.masked_fill(mask, value)
    out = images.clone()
    for b in rows.tolist():
        t, le, h, w = nb[b].tolist()
        out[b, :, t:t + h, le:le + w] = value
    return out


def mix(images: torch.Tensor, partners: torch.Tensor, kind, lam, boxes) -> torch.Tensor:
    """MixUp / CutMix each record with its partner image.

    Args:
        images: uint8 ``[B, 3, H, W]``, the records' own (finished) images.
        partners: uint8 ``[B, 3, H, W]``, the partners' (finished) images.
        kind: int ``[B]`` on the host: 0 none, 1 MixUp, 2 CutMix.
        lam: float32 ``[B]`` on the host: MixUp weight of the record's own image.
        boxes: int ``[B, 4]`` on the host: CutMix box (top, left, height, width) taking the partner's pixels.

    Returns:
        uint8 ``[B, 3, H, W]``; MixUp rounds ``lam * a + (1 - lam) * b`` to nearest.
    """
    kind = _as_np(kind).astype(np.int64).reshape(-1)
    out = images
    if (kind == 1).any():  # other rows blend with weight 1, which leaves them exactly as they are
        weight = np.where(kind == 1, _as_np(lam).astype(np.float32).reshape(-1), np.float32(1.0))
        lam_t = upload(weight.astype(np.float32), images.device).view(-1, 1, 1, 1)
        out = (images.float() * lam_t + partners.float() * (1.0 - lam_t)).round_().clamp_(0, 255).to(torch.uint8)
    if (kind == 2).any():
        cut = np.where((kind == 2)[:, None], _as_np(boxes).astype(np.int64).reshape(-1, 4), 0)
        mask = _box_mask(upload(cut, images.device), images.shape[-2], images.shape[-1])
        out = torch.where(mask, partners, out)
    return out
