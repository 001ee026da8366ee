"""The augmentation policy as a short list of stages, one class per step of torchvision's order.

Each stage declares its config section and the record fields it owns, and implements up to
four steps:

* ``sample(records, out)``: draw its parameters for many records at once from
  :func:`imagenet_plus._rng.uniforms` on its own stream(s), and write them into ``out``;
* ``check(batch, what)``: vectorised validation of stored parameters (one record is a
  batch of one; there is no per-record twin);
* ``crop(x, params)``: the CPU geometric step on one decoded image (geometry, flip);
* ``finish(x, batch)``: the batched photometric step on any device (RandAugment,
  erasing, mixing).

A stage's config section is its class's declaration: ``section`` (the config key), ``defaults``
(a dict: a section of keys, unknown keys refused; anything else: a one-value section such as
``hflip``), ``optional`` (``None`` switches the stage off), ``kind`` (alternatives of one section,
such as the two geometries, picked by its ``"kind"`` key) and :meth:`Stage.check_section` (the
checks, in :data:`~imagenet_plus.augment.config.POLICY`'s vocabulary); :meth:`Stage.create`
builds the stage from its checked section. A flavour is a list of stage classes registered under
a name (:func:`~imagenet_plus.augment.config.register_flavour`); this module registers the
package's own, ``"torchvision"``, with the paper's presets. Adding a stage means one class here
and one entry in that list. :class:`~imagenet_plus.augment.policy.Policy` builds the list from a
config (:func:`create_stages`) and loops over it. Stages that need only a few bits share one
integer field, ``ops``: :func:`pack_slots` gives each such stage a :class:`Slot` (a bit
range of that field) in stage order, so the flip owns bit 0 and RandAugment the 5 bits
per op after it; any stage can read any slot.

Random streams: 1 crop, 2 flip, 3 RandAugment, 4 erasing, 5 mix choice and partner,
6 MixUp Beta, 7 CutMix Beta, 8 CutMix centre.

The ``ml-dr`` flavour's stages (:mod:`imagenet_plus.augment.mldr`) subclass these: PIL-resized
geometry, v1 RandAugment kernels, ml-dr's mixing with the partner's params inline.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from .. import _rng
from ..errors import PolicyError
from ..imageio import image_size
from ..schema import Field
from . import ops as _ops
from . import sampling as _s
from .config import DEFAULT_FLAVOUR, FLAVOURS, IMAGENET_MEAN, IMAGENET_STD, POLICY, register_flavour
from .ops import RA_OPS

__all__ = ["Records", "Batch", "Slot", "Stage", "ResizedCrop", "PadCrop", "Flip", "RandAugment", "Erasing",
           "Mixing", "pack_slots", "create_stages", "write_unmixed", "TORCHVISION"]

MAX_PARTNER = 2**32 - 1
_OPS_DOC = "bit 0 flip; per RandAugment op: 4 bits op id, 1 bit negative magnitude"


@dataclass(frozen=True)
class Records:
    """The records ``sample`` draws for: flat int64 arrays ``[N]``, the dataset size, and whether they may mix
    (``mix=False``: original images' augmentations, which a mixing stage leaves unmixed)."""

    seed: int
    sample_idx: np.ndarray
    aug_idx: np.ndarray
    heights: np.ndarray
    widths: np.ndarray
    num_samples: int | None = None
    mix: bool = True

    @property
    def size(self) -> int:
        return self.sample_idx.shape[0]

    def uniforms(self, n: int, stream: int) -> np.ndarray:
        """``[N, n]`` uniforms of these records on ``stream``."""
        return _rng.uniforms(self.seed, self.sample_idx, self.aug_idx, n, stream).reshape(self.size, n)


@dataclass(frozen=True)
class Batch:
    """Stored params of a batch on the host, as int64 arrays ``[rows, *field.shape]``.

    Rows ``[0, own)`` are the records; when partners are attached (mixing), rows
    ``[own, 2 * own)`` are the partner records, in the same order.
    """

    fields: Mapping[str, np.ndarray]
    own: int
    num_samples: int | None = None

    @property
    def rows(self) -> int:
        return next(iter(self.fields.values())).shape[0] if self.fields else self.own

    def with_partners(self, partners: Batch) -> Batch:
        """This batch with ``partners``' rows appended (same fields, same number of records)."""
        if partners.rows != self.own:
            raise PolicyError(f"partner params hold {partners.rows} records, the batch {self.own}; pass one "
                              "partner record per record")
        return Batch({k: np.concatenate([v, partners.fields[k]]) for k, v in self.fields.items()}, self.own,
                     self.num_samples)


@dataclass(frozen=True)
class Slot:
    """Bits ``[shift, shift + width)`` of the integer field ``field``, owned by one stage."""

    field: str
    shift: int
    width: int

    def get(self, word):
        """This slot's value in ``word`` (an int or an int64 array)."""
        return (word >> self.shift) & ((1 << self.width) - 1)

    def put(self, out: dict[str, np.ndarray], value: np.ndarray) -> None:
        """OR ``value`` (int64 ``[N]``) into this slot of ``out[field]``."""
        out[self.field] = out.get(self.field, 0) | (value.astype(np.int64) << self.shift)


class Stage:
    """One step of the policy; the defaults do nothing (see the module docstring)."""

    name: str = ""
    #: the config key of this stage's section, its defaults (a dict: a section of keys; else one value),
    #: whether ``None`` switches the stage off, and (alternatives sharing a section) the ``"kind"`` that picks it
    section: str = ""
    defaults: Any = None
    optional: bool = False
    kind: str | None = None
    #: the record fields this stage owns
    fields: tuple[Field, ...] = ()
    #: how many bits this stage needs in the shared ``ops`` field, and where they are
    bits: int = 0
    slot: Slot | None = None

    @classmethod
    def check_section(cls, section: Any, config: dict) -> Any:
        """The checked section (defaults filled in, unknown keys refused already); ``config``: the checked
        config so far (``output_size`` and the earlier sections). Raise :class:`PolicyError` (``POLICY``'s
        checks) naming the key."""
        return section

    @classmethod
    def create(cls, section: Any, config: dict, earlier: list[Stage]) -> Stage:
        """This stage from its checked section, the complete config and the stages before it."""
        return cls(section, config["output_size"])

    def sample(self, records: Records, out: dict[str, np.ndarray]) -> None:
        """Write this stage's parameters of ``records`` into ``out`` (int arrays ``[N, ...]``)."""

    def check(self, batch: Batch, what: str) -> None:
        """Raise :class:`PolicyError` naming ``what`` if ``batch`` holds values this stage cannot replay."""

    def crop(self, x, params: Mapping[str, Any]):
        """The CPU step on one record: the decoded image (or the previous stage's crop) -> uint8 ``[3, S, S]``."""
        return x

    def finish(self, x: torch.Tensor, batch: Batch) -> torch.Tensor:
        """The batched step: uint8 ``[batch.rows, 3, S, S]`` on any device -> the same shape."""
        return x

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _box_dtype(size: int) -> str:
    return "|u1" if size <= 255 else "<u2"


def host(v) -> np.ndarray:
    """A params entry (numpy, a Python number or a torch tensor) as a numpy array."""
    if isinstance(v, torch.Tensor):
        return v.detach().cpu().numpy()
    return np.asarray(v)


def _first_int(v) -> int:
    return int(host(v).reshape(-1)[0])


def _check_boxes(boxes: np.ndarray, name: str, size: int, what: str) -> None:
    if (boxes[:, :2] + boxes[:, 2:] > size).any():  # top + height, left + width
        raise PolicyError(f"{what}: box field {name!r} extends outside the {size}x{size} output")


def _size(image) -> tuple[int, int]:
    return image_size(image)


def _as_tensor(image) -> torch.Tensor:
    if isinstance(image, torch.Tensor):
        return image
    return torch.from_numpy(np.array(image)).permute(2, 0, 1)


# ----------------------------------------------------------------------------- geometry
class ResizedCrop(Stage):
    """RandomResizedCrop: a box drawn as torchvision does, stored as fractions of the source, resized to S.

    Field ``crop`` ``<u2[4]``: (top, left, height, width) as ``q / 65535`` of the source
    height/width (exact integer rounding both ways, so replay on the same image is exact for
    sides <= 65535 px and stays meaningful on a resized copy).
    """

    name = "geometry"
    section, kind = "geometry", "rrc"
    defaults = {"kind": "rrc", "scale": [0.08, 1.0], "ratio": [3.0 / 4.0, 4.0 / 3.0], "interpolation": "bilinear",
                "antialias": True}
    STREAM = 1

    @classmethod
    def check_section(cls, section: dict, config: dict) -> dict:
        section["scale"] = POLICY.pair(section["scale"], "geometry.scale", low=0.0, high=1.0, low_open=True)
        section["ratio"] = POLICY.pair(section["ratio"], "geometry.ratio", low=0.0, high=100.0, low_open=True)
        return _check_resize(section)

    def __init__(self, config: dict, size: int):
        self.config, self.size = config, size
        self.interpolation = F.InterpolationMode(config["interpolation"])
        self.fields = (Field("crop", "<u2", (4,), 0, _s.QMAX,
                             "crop box (top, left, height, width) as fractions of the source image, /65535"),)

    def sample(self, records: Records, out: dict[str, np.ndarray]) -> None:
        H, W = records.heights, records.widths
        box = _s.rrc_boxes(records.uniforms(40, self.STREAM), H, W, self.config["scale"], self.config["ratio"])
        out["crop"] = np.stack([_s.quantize(box[:, 0], H), _s.quantize(box[:, 1], W),
                                _s.quantize(box[:, 2], H), _s.quantize(box[:, 3], W)], axis=1)

    def box(self, x, params: Mapping[str, Any]) -> tuple[int, int, int, int]:
        """The stored box in pixels of image ``x``: ``(top, left, height, width)``, clipped to the image."""
        q = host(params["crop"]).reshape(-1).tolist()  # Python ints: exact, no per-call numpy overhead
        if len(q) != 4:
            raise PolicyError(f"Policy.crop: 'crop' must hold 4 values for rrc, got {len(q)}")
        qt, ql, qh, qw = q
        H, W = _size(x)
        h = min(max(_s.dequantize(qh, H), 1), H)
        w = min(max(_s.dequantize(qw, W), 1), W)
        top = min(max(_s.dequantize(qt, H), 0), H - h)
        left = min(max(_s.dequantize(ql, W), 0), W - w)
        return top, left, h, w

    def crop(self, x, params: Mapping[str, Any]) -> torch.Tensor:
        top, left, h, w = self.box(x, params)
        if isinstance(x, Image.Image):
            region = torch.from_numpy(np.array(x.crop((left, top, left + w, top + h)))).permute(2, 0, 1)
        elif x.device.type == "cpu" and x.stride(0) == 1:
            # A view of decoded [H, W, 3] pixels (Policy.crop's view of an RGBArray): the box is read through
            # the view into one tight HWC copy, so the uint8 kernel needs no repacking of its input or output
            # (measured faster than handing it the strided view, which it unpacks to RGBA first); same pixels.
            hwc = x.permute(1, 2, 0).numpy()[top:top + h, left:left + w]
            region = torch.from_numpy(np.ascontiguousarray(hwc)).permute(2, 0, 1)
        else:
            region = x[:, top:top + h, left:left + w]
        return F.resize(region, [self.size, self.size], interpolation=self.interpolation,
                        antialias=self.config["antialias"])


def _check_resize(section: dict) -> dict:
    section["interpolation"] = POLICY.choice(section["interpolation"], "geometry.interpolation",
                                             ("bilinear", "bicubic", "nearest"))
    section["antialias"] = POLICY.flag(section["antialias"], "geometry.antialias")
    return section


def resized_shape(size: int, heights, widths) -> tuple[np.ndarray, np.ndarray]:
    """(height, width) after resizing the shorter side to ``size``, as torchvision's ``Resize(size)``."""
    H = np.asarray(heights, np.int64)
    W = np.asarray(widths, np.int64)
    short, long = np.minimum(H, W), np.maximum(H, W)
    new_long = (size * long / short).astype(np.int64)  # torchvision: int(S * long / short)
    return np.where(H <= W, size, new_long), np.where(H <= W, new_long, size)


class PadCrop(Stage):
    """Resize the shorter side to S, pad, random S x S crop (the CIFAR recipe).

    Field ``crop`` ``<u2[2]``: (top, left) of the crop in the resized, padded image, in pixels.
    """

    name = "geometry"
    section, kind = "geometry", "pad_crop"
    defaults = {"kind": "pad_crop", "padding": 16, "fill": 0, "interpolation": "bilinear", "antialias": True}
    STREAM = 1

    @classmethod
    def check_section(cls, section: dict, config: dict) -> dict:
        section["padding"] = POLICY.int(section["padding"], "geometry.padding", low=0, high=4096)
        section["fill"] = POLICY.int(section["fill"], "geometry.fill", low=0, high=255)
        return _check_resize(section)

    def __init__(self, config: dict, size: int):
        self.config, self.size = config, size
        self.interpolation = F.InterpolationMode(config["interpolation"])
        self.fields = (Field("crop", "<u2", (2,), 0, 65535, "crop (top, left) in the resized, padded image, pixels"),)

    def sample(self, records: Records, out: dict[str, np.ndarray]) -> None:
        S, p = self.size, self.config["padding"]
        rh, rw = resized_shape(S, records.heights, records.widths)
        u = records.uniforms(2, self.STREAM)
        crop = np.stack([np.floor(u[:, 0] * (rh + 2 * p - S + 1)),
                         np.floor(u[:, 1] * (rw + 2 * p - S + 1))], axis=1).astype(np.int64)
        if records.size and crop.max() > 65535:
            raise PolicyError(f"Policy.sample: pad_crop offsets exceed 65535 for image sizes up to "
                              f"{records.heights.max()}x{records.widths.max()}; use a smaller output_size or "
                              "crop the images")
        out["crop"] = crop

    def offsets(self, x, params: Mapping[str, Any]) -> tuple[int, int, int, int]:
        """``(top, left, resized height, resized width)`` of the stored crop of image ``x`` (checked to fit)."""
        off = host(params["crop"]).reshape(-1).tolist()
        if len(off) != 2:
            raise PolicyError(f"Policy.crop: 'crop' must hold 2 values for pad_crop, got {len(off)}")
        S, p = self.size, self.config["padding"]
        H, W = _size(x)
        rh, rw = (int(v) for v in resized_shape(S, H, W))
        top, left = off
        if top > rh + 2 * p - S or left > rw + 2 * p - S:
            raise PolicyError(f"Policy.crop: pad_crop offset ({top}, {left}) does not fit a {rh}x{rw} image "
                              f"padded by {p}; the params do not belong to this image")
        return top, left, rh, rw

    def crop(self, x, params: Mapping[str, Any]) -> torch.Tensor:
        top, left, rh, rw = self.offsets(x, params)
        resized = F.resize(_as_tensor(x), [rh, rw], interpolation=self.interpolation,
                           antialias=self.config["antialias"])
        return self.pad_and_crop(resized, top, left)

    def pad_and_crop(self, resized: torch.Tensor, top: int, left: int) -> torch.Tensor:
        """Pad the resized uint8 ``[3, h, w]`` image by ``padding`` (``fill``) and cut the S x S crop at (top, left)."""
        S, p = self.size, self.config["padding"]
        padded = F.pad(resized, [p], fill=self.config["fill"]) if p else resized
        return padded[:, top:top + S, left:left + S]


# ----------------------------------------------------------------------------- flip
class Flip(Stage):
    """Horizontal flip with probability ``p``: bit 0 of ``ops`` (1 = flipped)."""

    name = "flip"
    section, defaults = "hflip", 0.5
    bits = 1
    STREAM = 2

    @classmethod
    def check_section(cls, section: Any, config: dict) -> float:
        return POLICY.number(section, "hflip", low=0.0, high=1.0)

    @classmethod
    def create(cls, section: float, config: dict, earlier: list[Stage]) -> Flip:
        return cls(section)

    def __init__(self, p: float):
        self.p = p

    def sample(self, records: Records, out: dict[str, np.ndarray]) -> None:
        self.slot.put(out, records.uniforms(1, self.STREAM)[:, 0] < self.p)

    def crop(self, x: torch.Tensor, params: Mapping[str, Any]) -> torch.Tensor:
        if not self.slot.get(_first_int(params[self.slot.field])):
            return x
        if x.device.type == "cpu":
            # One numpy copy does the flip and the layout change (the resize kernel leaves uint8
            # in HWC order); numpy's strided uint8 copy is about twice torch's.
            return torch.from_numpy(np.ascontiguousarray(x.numpy()[:, :, ::-1]))
        return F.horizontal_flip(x)


# ----------------------------------------------------------------------------- RandAugment
_IS_SIGNED = np.array([o in _ops.SIGNED_OPS for o in RA_OPS] + [False, False])  # 16 entries (4-bit ids)
#: whether each 5-bit op code (4 bits op id, then the negative-magnitude bit) can be replayed
_VALID_CODE = np.array([(c & 15) < len(RA_OPS) and (not c >> 4 or bool(_IS_SIGNED[c & 15])) for c in range(32)])


class RandAugment(Stage):
    #: The per-op kernel (``None``: :func:`~imagenet_plus.augment.ops.apply_ra_op`); a flavour may name its own.
    apply_op = None

    """torchvision's RandAugment: per op, 5 bits of ``ops`` (4 bits op id into RA_OPS, 1 bit negative magnitude).

    Op ``k`` (applied in order ``k = 0, 1, ...``) sits in bits ``5k .. 5k + 4`` of this
    stage's slot; the sign bit is 0 for unsigned ops.
    """

    name = "randaugment"
    section, optional = "randaugment", True
    defaults = {"num_ops": 2, "magnitude": 9, "num_magnitude_bins": 31, "interpolation": "nearest", "fill": 0}
    STREAM = 3

    @classmethod
    def check_section(cls, section: dict, config: dict) -> dict:
        section["num_ops"] = POLICY.int(section["num_ops"], "randaugment.num_ops", low=0, high=6)
        bins = section["num_magnitude_bins"] = POLICY.int(section["num_magnitude_bins"],
                                                          "randaugment.num_magnitude_bins", low=2, high=1000)
        section["magnitude"] = POLICY.int(section["magnitude"], "randaugment.magnitude", low=0, high=bins - 1)
        section["interpolation"] = POLICY.choice(section["interpolation"], "randaugment.interpolation",
                                                 ("nearest", "bilinear"))
        section["fill"] = POLICY.int(section["fill"], "randaugment.fill", low=0, high=255)
        return section

    @classmethod
    def create(cls, section: dict, config: dict, earlier: list[Stage]) -> RandAugment:
        return cls(section)

    def __init__(self, config: dict):
        self.config = config
        self.num_ops = config["num_ops"]
        self.bits = 5 * self.num_ops
        self._shifts = 5 * np.arange(self.num_ops)

    def sample(self, records: Records, out: dict[str, np.ndarray]) -> None:
        if not self.num_ops:
            return
        u = records.uniforms(2 * self.num_ops, self.STREAM).reshape(records.size, self.num_ops, 2)
        op = np.minimum(np.floor(u[..., 0] * len(RA_OPS)).astype(np.int64), len(RA_OPS) - 1)
        neg = (u[..., 1] <= 0.5) & _IS_SIGNED[op]
        codes = (op | (neg.astype(np.int64) << 4)) << self._shifts
        self.slot.put(out, np.bitwise_or.reduce(codes, axis=1))

    def codes(self, batch: Batch) -> np.ndarray:
        """int64 ``[rows, num_ops]``: each op's 5-bit code."""
        word = self.slot.get(batch.fields[self.slot.field])
        return (word[:, None] >> self._shifts) & 31

    def check(self, batch: Batch, what: str) -> None:
        if not self.num_ops:
            return
        codes = self.codes(batch)
        bad = ~_VALID_CODE[codes]
        if bad.any():
            code = int(codes[bad][0])
            if (code & 15) >= len(RA_OPS):
                raise PolicyError(f"{what}: RandAugment op id {code & 15} in field 'ops' is unknown; valid ids "
                                  f"0..{len(RA_OPS) - 1} ({', '.join(RA_OPS)})")
            raise PolicyError(f"{what}: field 'ops' sets the negative-magnitude bit on an unsigned op "
                              f"({RA_OPS[code & 15]})")

    def finish(self, x: torch.Tensor, batch: Batch) -> torch.Tensor:
        if not self.num_ops:
            return x
        codes = self.codes(batch)
        c = self.config
        return _ops.apply_randaugment(x, codes & 15, (codes >> 4).astype(bool), magnitude=c["magnitude"],
                                      num_bins=c["num_magnitude_bins"], interpolation=c["interpolation"],
                                      fill=c["fill"], apply_op=self.apply_op)


# ----------------------------------------------------------------------------- erasing
class Erasing(Stage):
    """torchvision's RandomErasing on uint8 with a constant fill.

    Field ``erase`` ``[4]``: (top, left, height, width) of the erased box in output pixels,
    all zero = not erased.
    """

    name = "erasing"
    section, optional = "erasing", True
    defaults = {"p": 0.25, "scale": [0.02, 0.33], "ratio": [0.3, 3.3], "value": 0}
    STREAM = 4

    @classmethod
    def check_section(cls, section: dict, config: dict) -> dict:
        section["p"] = POLICY.number(section["p"], "erasing.p", low=0.0, high=1.0)
        section["scale"] = POLICY.pair(section["scale"], "erasing.scale", low=0.0, high=1.0, low_open=True)
        section["ratio"] = POLICY.pair(section["ratio"], "erasing.ratio", low=0.0, high=100.0, low_open=True)
        section["value"] = POLICY.int(section["value"], "erasing.value", low=0, high=255)
        return section

    def __init__(self, config: dict, size: int):
        self.config, self.size = config, size
        self.fields = (Field("erase", _box_dtype(size), (4,), 0, size,
                             "erased box (top, left, height, width), output pixels"),)

    def sample(self, records: Records, out: dict[str, np.ndarray]) -> None:
        c = self.config
        out["erase"] = _s.erase_boxes(records.uniforms(41, self.STREAM), self.size, c["p"], c["scale"], c["ratio"])

    def check(self, batch: Batch, what: str) -> None:
        _check_boxes(batch.fields["erase"], "erase", self.size, what)

    def finish(self, x: torch.Tensor, batch: Batch) -> torch.Tensor:
        return _ops.erase(x, batch.fields["erase"], self.config["value"])


# ----------------------------------------------------------------------------- mixing
class Mixing(Stage):
    """MixUp / CutMix with a partner record (timm's semantics, parameters stored explicitly).

    The partner of record ``(i, j)`` is record ``(mix_partner, j)``, replayed with its own
    stored params. Fields: ``mix_partner`` ``<u4``; ``mix_kind`` ``|u1`` (0 none, 1 MixUp,
    2 CutMix); ``mix_lam`` ``<u2``, the own image's weight ``q / 65535`` (CutMix: the lambda
    corrected from the clipped box); ``mix_box`` ``[4]``, the CutMix box taking the partner's pixels.
    """

    name = "mix"
    section, optional = "mix", True
    defaults = {"mixup_alpha": 0.2, "cutmix_alpha": 1.0, "switch_prob": 0.5, "prob": 1.0}
    STREAM_CHOICE, STREAM_MIXUP, STREAM_CUTMIX, STREAM_BOX = 5, 6, 7, 8

    @classmethod
    def check_section(cls, section: dict, config: dict) -> dict:
        for key in ("mixup_alpha", "cutmix_alpha"):
            section[key] = POLICY.number(section[key], f"mix.{key}", low=0.0, high=100.0)
        if section["mixup_alpha"] == 0 and section["cutmix_alpha"] == 0:
            raise POLICY.fail(section, "mix", "at least one of mixup_alpha, cutmix_alpha > 0 (or mix: null to "
                                              "switch mixing off)")
        section["switch_prob"] = POLICY.number(section["switch_prob"], "mix.switch_prob", low=0.0, high=1.0)
        section["prob"] = POLICY.number(section["prob"], "mix.prob", low=0.0, high=1.0)
        return section

    def __init__(self, config: dict, size: int):
        self.config, self.size = config, size
        box = _box_dtype(size)
        self.fields = (
            Field("mix_partner", "<u4", (), 0, MAX_PARTNER, "partner sample index (record (p, j))"),
            Field("mix_kind", "|u1", (), 0, 2, "0 none, 1 MixUp, 2 CutMix"),
            Field("mix_lam", "<u2", (), 0, 65535, "weight of the own image, /65535"),
            Field("mix_box", box, (4,), 0, size, "CutMix box (top, left, height, width), output pixels"),
        )

    def sample(self, records: Records, out: dict[str, np.ndarray]) -> None:
        i, n, m = records.sample_idx, records.size, self.config
        if not records.mix:
            write_unmixed(out, n, lam=65535)
            return
        _check_num_samples(records)
        u = records.uniforms(3, self.STREAM_CHOICE)
        apply = u[:, 0] < m["prob"]
        if m["mixup_alpha"] == 0 or m["cutmix_alpha"] == 0:  # one kind only
            cut = np.full(n, m["mixup_alpha"] == 0)
        else:
            cut = u[:, 1] < m["switch_prob"]
        partner = _draw_partners(u[:, 2], i, records.num_samples)
        lam = np.ones(n)
        if m["mixup_alpha"] > 0:
            lam_mu = _s.beta(records.uniforms(_s.BETA_UNIFORMS, self.STREAM_MIXUP), m["mixup_alpha"])
            lam = np.where(cut, lam, lam_mu)
        boxes = np.zeros((n, 4), np.int64)
        if m["cutmix_alpha"] > 0:
            lam_cm = _s.beta(records.uniforms(_s.BETA_UNIFORMS, self.STREAM_CUTMIX), m["cutmix_alpha"])
            b, lam_c = _s.cutmix_boxes(lam_cm, records.uniforms(2, self.STREAM_BOX), self.size)
            boxes = np.where(cut[:, None], b, 0)
            lam = np.where(cut, lam_c, lam)
        out["mix_partner"] = np.where(apply, partner, 0)
        out["mix_kind"] = np.where(apply, np.where(cut, 2, 1), 0)
        out["mix_lam"] = np.rint(np.where(apply, lam, 1.0) * 65535).astype(np.int64)
        out["mix_box"] = np.where(apply[:, None], boxes, 0)

    def check(self, batch: Batch, what: str) -> None:
        _check_boxes(batch.fields["mix_box"], "mix_box", self.size, what)
        p = batch.fields["mix_partner"]
        if batch.num_samples is not None and p.size and p.max() >= batch.num_samples:
            raise PolicyError(f"{what}: mix_partner {p.max()} is outside the dataset "
                              f"(num_samples={batch.num_samples}); the store does not match this dataset")

    def mixes(self, batch: Batch) -> bool:
        """Whether any of the batch's own records mixes with a partner (partners are then needed)."""
        return bool((batch.fields["mix_kind"][:batch.own] != 0).any())

    def partner_params(self, params: Mapping[str, Any]) -> dict | None:
        """The partners' own params when the records carry them; ``None``: the partner of (i, j) is record (p, j)."""
        return None

    def finish(self, x: torch.Tensor, batch: Batch) -> torch.Tensor:
        B = batch.own
        if batch.rows == B:  # no partners attached: nothing mixes
            return x
        f = batch.fields
        lam = f["mix_lam"][:B].astype(np.float32) / np.float32(65535.0)
        return _ops.mix(x[:B], x[B:], f["mix_kind"][:B], lam, f["mix_box"][:B])


def write_unmixed(out: dict[str, np.ndarray], n: int, lam: int) -> None:
    """The mixing fields of ``n`` records that do not mix: partner 0, kind 0, ``mix_lam`` = ``lam``, no box."""
    out["mix_partner"] = np.zeros(n, np.int64)
    out["mix_kind"] = np.zeros(n, np.int64)
    out["mix_lam"] = np.full(n, lam, np.int64)
    out["mix_box"] = np.zeros((n, 4), np.int64)


def _check_num_samples(records: Records) -> None:
    num_samples = records.num_samples
    if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
        raise PolicyError(f"Policy.sample: mixing policies need num_samples (the dataset size, >= 1) to draw "
                          f"partner indices, got {num_samples!r}")
    if num_samples - 1 > MAX_PARTNER:
        raise PolicyError(f"Policy.sample: num_samples={num_samples} exceeds the partner field (<u4)")
    if records.size and records.sample_idx.max() >= num_samples:
        raise PolicyError(f"Policy.sample: sample index {records.sample_idx.max()} is outside the dataset "
                          f"(num_samples={num_samples})")


def _draw_partners(u: np.ndarray, i: np.ndarray, num_samples: int) -> np.ndarray:
    """A partner index != i, uniform over the other samples (0 for a one-sample dataset)."""
    if num_samples < 2:
        return np.zeros(i.shape[0], np.int64)
    partner = np.minimum(np.floor(u * (num_samples - 1)).astype(np.int64), num_samples - 2)
    return partner + (partner >= i)


# ----------------------------------------------------------------------------- composition
def pack_slots(stages: list[Stage], name: str = "ops") -> Field | None:
    """Give each stage that needs bits a :class:`Slot` of the shared field ``name``, in stage order.

    Returns:
        the shared field (the smallest unsigned dtype that holds all bits), or ``None`` if no
        stage needs bits.
    """
    shift = 0
    for stage in stages:
        if stage.bits:
            stage.slot = Slot(name, shift, stage.bits)
            shift += stage.bits
    if not shift:
        return None
    dtype = "|u1" if shift <= 8 else "<u2" if shift <= 16 else "<u4"
    return Field(name, dtype, (), 0, 2**shift - 1, _OPS_DOC)


def create_stages(config: dict) -> list[Stage]:
    """The stages of a complete config (see :func:`~imagenet_plus.augment.config.resolve_config`), in order:
    its flavour's stage classes, each created from its section (a section set to ``None`` leaves it out)."""
    flavour = FLAVOURS[config.get("flavour", DEFAULT_FLAVOUR)]
    stages: list[Stage] = []
    for key in flavour.sections:
        section = config[key]
        if section is not None:
            stages.append(flavour.stage_class(key, section).create(section, config, stages))
    return stages


def _preset(name: str, geometry: type[Stage], *optional: type[Stage]) -> dict[str, Any]:
    def on(cls: type[Stage]):
        return copy.deepcopy(cls.defaults) if cls in optional else None

    return {"name": name, "output_size": 224, "geometry": copy.deepcopy(geometry.defaults), "hflip": Flip.defaults,
            "randaugment": on(RandAugment), "erasing": on(Erasing), "mix": on(Mixing),
            "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}


#: The paper's policies (Faghri et al. 2023, Table 1 / Sec. 4): name -> complete config
#: (registered with the flavour: :data:`imagenet_plus.augment.PRESETS`).
_PRESETS: dict[str, dict[str, Any]] = {
    "rrc": _preset("rrc", ResizedCrop),
    "rrc+mix": _preset("rrc+mix", ResizedCrop, Mixing),
    "rrc+ra/re": _preset("rrc+ra/re", ResizedCrop, RandAugment, Erasing),
    "rrc+mix+ra/re": _preset("rrc+mix+ra/re", ResizedCrop, RandAugment, Erasing, Mixing),
    "cifar": _preset("cifar", PadCrop, RandAugment, Erasing),
}
#: The package's own flavour (torchvision's semantics), the flavour of a config without ``flavour``.
TORCHVISION = register_flavour(DEFAULT_FLAVOUR, (ResizedCrop, PadCrop, Flip, RandAugment, Erasing, Mixing), _PRESETS)
