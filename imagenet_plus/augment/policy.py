"""The augmentation policy: parameter fields, sampling, and replay (crop + finish).

Record layout (all fields little-endian, fixed width; ``S`` = output size;
box fields are ``|u1`` when ``S <= 255`` and ``<u2`` otherwise)::

    crop        <u2[4]  rrc: (top, left, height, width) of the crop box as fractions of
                        the source image, value q meaning q / 65535 (exact integer
                        rounding both ways, so replay on the same image is exact for
                        sides <= 65535 px and stays meaningful on a resized copy)
                <u2[2]  pad_crop: (top, left) of the S x S crop in the resized (shorter
                        side S) and padded image, in pixels
    ops         |u1 / <u2 / <u4 (the smallest that holds 1 + 5 * num_ops bits)
                        bit 0: horizontal flip; RandAugment op k (applied in order k =
                        0, 1, ...) in bits 1+5k .. 5+5k: 4 bits op id (index into
                        RA_OPS) then 1 bit "negative magnitude" (0 for unsigned ops)
    erase       [4]     (top, left, height, width) of the erased box in output pixels,
                        all zero = not erased (only with "erasing")
    mix_partner <u4     the partner *sample* index p; the partner image is record (p, j)
                        replayed with its own stored single-image params
    mix_kind    |u1     0 none, 1 MixUp, 2 CutMix
    mix_lam     <u2     weight of the record's own image, q / 65535 (CutMix: the lambda
                        corrected from the clipped box)
    mix_box     [4]     CutMix box (top, left, height, width) taking the partner's pixels

"rrc+ra/re" at 224 px takes 8 + 2 + 4 = 14 bytes per record; "rrc" 9; "rrc+mix" 20;
"rrc+mix+ra/re" 25; "cifar" 10.

Order of operations (torchvision's): crop (RandomResizedCrop or resize/pad/crop) ->
horizontal flip -> RandAugment ops -> random erasing (on uint8, fill ``value``) ->
MixUp/CutMix with the partner (itself finished the same way) -> normalise.
``crop`` does the first two on the CPU from the decoded image; ``finish`` does the rest,
batched, on any device.

Randomness: ``sample`` draws everything from :func:`imagenet_plus._rng.uniforms` on
streams 1 (crop), 2 (flip), 3 (RandAugment), 4 (erasing), 5 (mix choice and partner),
6 (MixUp Beta), 7 (CutMix Beta), 8 (CutMix centre): a record's params depend only on
(seed, i, j, source size, num_samples).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from .. import _rng
from ..errors import PolicyError
from ..schema import Field
from . import ops as _ops
from . import sampling as _s
from .config import RA_OPS, resolve_config

__all__ = ["Policy", "create_policy"]

_STREAM_CROP, _STREAM_FLIP, _STREAM_RA, _STREAM_ERASE, _STREAM_MIX, _STREAM_MIXUP, _STREAM_CUTMIX, _STREAM_BOX = \
    range(1, 9)
_IS_SIGNED = np.array([o in _ops.SIGNED_OPS for o in RA_OPS] + [False, False])  # 16 entries (4-bit ids)
_MAX_PARTNER = 2**32 - 1


def _to_rgb(image) -> Image.Image:
    from ..imageio import to_rgb_image

    return to_rgb_image(image)


def _np(v) -> np.ndarray:
    if isinstance(v, torch.Tensor):
        return v.detach().cpu().numpy()
    return np.asarray(v)


def _i64(v, batch: int) -> np.ndarray:
    """A params entry (numpy or torch, any int dtype) as an int64 array ``[batch, -1]``."""
    return _np(v).astype(np.int64).reshape(batch, -1)


class Policy:
    """A replayable augmentation policy (see the module docstring for the record layout).

    Build it with :func:`create_policy`. ``sample`` draws parameters; ``crop`` and
    ``finish`` replay them; ``apply`` is both for one record, the one function the
    builder and the CPU replay share.
    """

    def __init__(self, config: dict):
        self._config = config
        self.output_size: int = config["output_size"]
        self.mean: tuple[float, ...] = tuple(config["mean"])
        self.std: tuple[float, ...] = tuple(config["std"])
        self.uses_mix: bool = config["mix"] is not None
        self._geo = config["geometry"]
        self._ra = config["randaugment"]
        self._re = config["erasing"]
        self._mix = config["mix"]
        self._num_ops = self._ra["num_ops"] if self._ra else 0
        bits = 1 + 5 * self._num_ops
        self._ops_dtype = "|u1" if bits <= 8 else "<u2" if bits <= 16 else "<u4"
        box = "|u1" if self.output_size <= 255 else "<u2"
        S = self.output_size
        fields = []
        if self._geo["kind"] == "rrc":
            fields.append(Field("crop", "<u2", (4,), 0, _s.QMAX,
                                "crop box (top, left, height, width) as fractions of the source image, /65535"))
        else:
            fields.append(Field("crop", "<u2", (2,), 0, 65535,
                                "crop (top, left) in the resized, padded image, pixels"))
        fields.append(Field("ops", self._ops_dtype, (), 0, 2**bits - 1,
                            "bit 0 flip; per RandAugment op: 4 bits op id, 1 bit negative magnitude"))
        if self._re:
            fields.append(Field("erase", box, (4,), 0, S, "erased box (top, left, height, width), output pixels"))
        if self._mix:
            fields += [
                Field("mix_partner", "<u4", (), 0, _MAX_PARTNER, "partner sample index (record (p, j))"),
                Field("mix_kind", "|u1", (), 0, 2, "0 none, 1 MixUp, 2 CutMix"),
                Field("mix_lam", "<u2", (), 0, 65535, "weight of the own image, /65535"),
                Field("mix_box", box, (4,), 0, S, "CutMix box (top, left, height, width), output pixels"),
            ]
        self.fields: tuple[Field, ...] = tuple(fields)
        self._field_map = {f.name: f for f in fields}
        self._mean_t = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
        self._std_t = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1)
        self._norm_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    # ------------------------------------------------------------------ config
    @property
    def config(self) -> dict:
        """The complete config (a deep copy); ``create_policy(policy.config)`` rebuilds this policy."""
        import copy

        return copy.deepcopy(self._config)

    @property
    def name(self) -> str:
        return self._config["name"]

    @property
    def params_nbytes(self) -> int:
        """Bytes per record taken by the parameter fields."""
        return sum(f.nbytes for f in self.fields)

    def __repr__(self) -> str:
        return f"Policy(name={self.name!r}, output_size={self.output_size}, fields={[f.name for f in self.fields]})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Policy) and other._config == self._config

    def __hash__(self) -> int:
        import json

        return hash(json.dumps(self._config, sort_keys=True))

    # ------------------------------------------------------------------ sampling
    def sample(self, seed: int, sample_idx, aug_idx, heights, widths, num_samples: int | None = None
               ) -> dict[str, np.ndarray]:
        """Draw the parameters of records ``(sample_idx, aug_idx)`` (broadcast together, flattened).

        Args:
            seed: the build seed.
            sample_idx: sample indices (int array or scalar).
            aug_idx: augmentation indices (broadcast with ``sample_idx``).
            heights: source image heights, one per record (broadcast).
            widths: source image widths, one per record (broadcast).
            num_samples: dataset size; required by mixing policies (partner draw).

        Returns:
            ``{field.name: array [N, *field.shape] of field.dtype}``.

        Raises:
            PolicyError: non-positive sizes, negative indices, missing/too small ``num_samples``.
        """
        i, j, H, W = (np.asarray(a, dtype=np.int64).reshape(-1)
                      for a in np.broadcast_arrays(sample_idx, aug_idx, heights, widths))
        n = i.shape[0]
        if n and (H.min() < 1 or W.min() < 1):
            raise PolicyError(f"Policy.sample: heights/widths must be >= 1, got min {H.min()} x {W.min()}")
        if n and (i.min() < 0 or j.min() < 0):
            raise PolicyError("Policy.sample: sample_idx and aug_idx must be >= 0")
        S = self.output_size
        out: dict[str, np.ndarray] = {}
        if self._geo["kind"] == "rrc":
            box = _s.rrc_boxes(_rng.uniforms(seed, i, j, 40, _STREAM_CROP), H, W,
                               self._geo["scale"], self._geo["ratio"])
            crop = np.stack([_s.quantize(box[:, 0], H), _s.quantize(box[:, 1], W),
                             _s.quantize(box[:, 2], H), _s.quantize(box[:, 3], W)], axis=1)
        else:
            rh, rw = self._resized_size(H, W)
            p = self._geo["padding"]
            u = _rng.uniforms(seed, i, j, 2, _STREAM_CROP)
            crop = np.stack([np.floor(u[:, 0] * (rh + 2 * p - S + 1)),
                             np.floor(u[:, 1] * (rw + 2 * p - S + 1))], axis=1).astype(np.int64)
            if n and crop.max() > 65535:
                raise PolicyError(f"Policy.sample: pad_crop offsets exceed 65535 for image sizes up to "
                                  f"{H.max()}x{W.max()}; use a smaller output_size or crop the images")
        out["crop"] = crop.astype("<u2")
        code = (_rng.uniforms(seed, i, j, 1, _STREAM_FLIP)[:, 0] < self._config["hflip"]).astype(np.int64)
        if self._ra:
            u = _rng.uniforms(seed, i, j, 2 * self._num_ops, _STREAM_RA).reshape(n, self._num_ops, 2)
            op = np.minimum(np.floor(u[..., 0] * len(RA_OPS)).astype(np.int64), len(RA_OPS) - 1)
            neg = (u[..., 1] <= 0.5) & _IS_SIGNED[op]
            for k in range(self._num_ops):
                code |= (op[:, k] | (neg[:, k].astype(np.int64) << 4)) << (1 + 5 * k)
        out["ops"] = code.astype(self._ops_dtype)
        bdt = self._field_map.get("erase", self._field_map.get("mix_box"))
        if self._re:
            out["erase"] = _s.erase_boxes(_rng.uniforms(seed, i, j, 41, _STREAM_ERASE), S, self._re["p"],
                                          self._re["scale"], self._re["ratio"]).astype(bdt.dtype)
        if self._mix:
            out.update(self._sample_mix(seed, i, j, num_samples))
        return out

    def _sample_mix(self, seed, i, j, num_samples):
        if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
            raise PolicyError(f"Policy.sample: mixing policy {self.name!r} needs num_samples (the dataset size, "
                              f">= 1) to draw partner indices, got {num_samples!r}")
        if num_samples - 1 > _MAX_PARTNER:
            raise PolicyError(f"Policy.sample: num_samples={num_samples} exceeds the partner field (<u4)")
        n = i.shape[0]
        if n and i.max() >= num_samples:
            raise PolicyError(f"Policy.sample: sample index {i.max()} is outside the dataset "
                              f"(num_samples={num_samples})")
        m = self._mix
        S = self.output_size
        u = _rng.uniforms(seed, i, j, 3, _STREAM_MIX)
        apply = u[:, 0] < m["prob"]
        if m["mixup_alpha"] == 0:
            cut = np.ones(n, bool)
        elif m["cutmix_alpha"] == 0:
            cut = np.zeros(n, bool)
        else:
            cut = u[:, 1] < m["switch_prob"]
        if num_samples >= 2:
            partner = np.minimum(np.floor(u[:, 2] * (num_samples - 1)).astype(np.int64), num_samples - 2)
            partner = partner + (partner >= i)
        else:
            partner = np.zeros(n, np.int64)
        lam = np.ones(n)
        if m["mixup_alpha"] > 0:
            lam_mu = _s.beta(_rng.uniforms(seed, i, j, _s.BETA_UNIFORMS, _STREAM_MIXUP), m["mixup_alpha"])
            lam = np.where(cut, lam, lam_mu)
        boxes = np.zeros((n, 4), np.int64)
        if m["cutmix_alpha"] > 0:
            lam_cm = _s.beta(_rng.uniforms(seed, i, j, _s.BETA_UNIFORMS, _STREAM_CUTMIX), m["cutmix_alpha"])
            b, lam_c = _s.cutmix_boxes(lam_cm, _rng.uniforms(seed, i, j, 2, _STREAM_BOX), S)
            boxes = np.where(cut[:, None], b, 0)
            lam = np.where(cut, lam_c, lam)
        kind = np.where(apply, np.where(cut, 2, 1), 0)
        lam = np.where(apply, lam, 1.0)
        boxes = np.where(apply[:, None], boxes, 0)
        return {
            "mix_partner": np.where(apply, partner, 0).astype("<u4"),
            "mix_kind": kind.astype("|u1"),
            "mix_lam": np.rint(lam * 65535).astype("<u2"),
            "mix_box": boxes.astype(self._field_map["mix_box"].dtype),
        }

    def _resized_size(self, H, W):
        S = self.output_size
        H = np.asarray(H, np.int64)
        W = np.asarray(W, np.int64)
        short = np.minimum(H, W)
        long = np.maximum(H, W)
        new_long = (S * long / short).astype(np.int64)  # torchvision: int(S * long / short)
        return np.where(H <= W, S, new_long), np.where(H <= W, new_long, S)

    # ------------------------------------------------------------------ validation
    def check_params(self, params: Mapping[str, Any], num_samples: int | None = None, *, what: str = "params"
                     ) -> None:
        """Raise :class:`PolicyError` if ``params`` (one record or a batch) are not valid for this policy.

        Checks that every field is present with its shape, values lie in the field's
        range, op ids are known, boxes fit inside the output, and (when
        ``num_samples`` is given) that partner indices lie inside the dataset.
        """
        S = self.output_size
        small: dict[str, list[int]] = {}  # one record: the values as Python ints (cheap checks)
        for f in self.fields:
            if f.name not in params:
                raise PolicyError(f"{what}: missing field {f.name!r} for policy {self.name!r}; expected fields "
                                  f"{[x.name for x in self.fields]} (were the params made by another policy?)")
            v = _np(params[f.name])
            if tuple(v.shape[v.ndim - len(f.shape):]) != f.shape or v.ndim - len(f.shape) > 1:
                raise PolicyError(f"{what}: field {f.name!r} has shape {tuple(v.shape)}; expected {f.shape} "
                                  f"(one record) or (B, {', '.join(map(str, f.shape))})")
            if v.size <= 8 and v.dtype.kind in "iu":
                vals = small[f.name] = v.reshape(-1).tolist()
                lo, hi = (min(vals), max(vals)) if vals else (f.low, f.high)
            elif v.size:
                lo, hi = v.min(), v.max()
            else:
                continue
            if lo < f.low or hi > f.high:
                raise PolicyError(f"{what}: field {f.name!r} has values in [{lo}, {hi}], outside "
                                  f"[{f.low}, {f.high}]")
        if "ops" in small and len(small["ops"]) == 1:
            self._check_ops_one(small["ops"][0], what)
        else:
            self._check_ops(_np(params["ops"]).astype(np.int64).reshape(-1), what)
        for name in ("erase", "mix_box"):
            if name in small and len(small[name]) == 4:
                t, le, h, w = small[name]
                if t + h > S or le + w > S:
                    raise PolicyError(f"{what}: box field {name!r} extends outside the {S}x{S} output")
            elif name in params:
                b = _np(params[name]).astype(np.int64).reshape(-1, 4)
                if ((b[:, 0] + b[:, 2] > S) | (b[:, 1] + b[:, 3] > S)).any():
                    raise PolicyError(f"{what}: box field {name!r} extends outside the {S}x{S} output")
        if self._mix:
            if num_samples is not None:
                p = _np(params["mix_partner"]).astype(np.int64)
                if p.size and p.max() >= num_samples:
                    raise PolicyError(f"{what}: mix_partner {p.max()} is outside the dataset "
                                      f"(num_samples={num_samples}); the store does not match this dataset")

    def _check_ops(self, code: np.ndarray, what: str) -> None:
        if code.size and (code >> (1 + 5 * self._num_ops)).any():
            raise PolicyError(f"{what}: field 'ops' sets bits above the {1 + 5 * self._num_ops} this policy uses")
        for k in range(self._num_ops):
            op = (code >> (1 + 5 * k)) & 15
            neg = (code >> (5 + 5 * k)) & 1
            if (op >= len(RA_OPS)).any():
                raise PolicyError(f"{what}: RandAugment op id {op.max()} in field 'ops' is unknown; valid ids "
                                  f"0..{len(RA_OPS) - 1} ({', '.join(RA_OPS)})")
            if (neg.astype(bool) & ~_IS_SIGNED[op]).any():
                raise PolicyError(f"{what}: field 'ops' sets the negative-magnitude bit on an unsigned op")

    def _check_ops_one(self, code: int, what: str) -> None:
        """:meth:`_check_ops` for one record's code, in Python ints (same checks, same messages)."""
        if code >> (1 + 5 * self._num_ops):
            raise PolicyError(f"{what}: field 'ops' sets bits above the {1 + 5 * self._num_ops} this policy uses")
        for k in range(self._num_ops):
            op = (code >> (1 + 5 * k)) & 15
            if op >= len(RA_OPS):
                raise PolicyError(f"{what}: RandAugment op id {op} in field 'ops' is unknown; valid ids "
                                  f"0..{len(RA_OPS) - 1} ({', '.join(RA_OPS)})")
            if (code >> (5 + 5 * k)) & 1 and not _IS_SIGNED[op]:
                raise PolicyError(f"{what}: field 'ops' sets the negative-magnitude bit on an unsigned op")

    # ------------------------------------------------------------------ replay
    def crop(self, image, params: Mapping[str, Any]) -> torch.Tensor:
        """The geometric stage: crop, resize and flip the decoded source image.

        Args:
            image: a PIL image (any mode :func:`imagenet_plus.imageio.to_rgb_image`
                converts) or a uint8 tensor ``[3, H, W]``.
            params: one record's params.

        Returns:
            uint8 ``[3, S, S]``.
        """
        S = self.output_size
        g = self._geo
        interp = F.InterpolationMode(g["interpolation"])
        crop = _np(params["crop"]).astype(np.int64).reshape(-1)
        if isinstance(image, torch.Tensor):
            if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
                raise PolicyError(f"Policy.crop: tensor images must be uint8 [3, H, W], got {image.dtype} "
                                  f"{tuple(image.shape)}; convert with imagenet_plus.imageio.to_tensor")
            H, W = image.shape[-2:]
            src = image
        else:
            image = _to_rgb(image)
            W, H = image.size
            src = None
        if g["kind"] == "rrc":
            if crop.shape[0] != 4:
                raise PolicyError(f"Policy.crop: 'crop' must hold 4 values for rrc, got {crop.shape[0]}")
            qt, ql, qh, qw = (int(v) for v in crop)  # Python ints: exact, no per-call numpy overhead
            H, W = int(H), int(W)
            h = min(max(_s.dequantize(qh, H), 1), H)
            w = min(max(_s.dequantize(qw, W), 1), W)
            top = min(max(_s.dequantize(qt, H), 0), H - h)
            left = min(max(_s.dequantize(ql, W), 0), W - w)
            if src is None:
                region = torch.from_numpy(np.array(image.crop((left, top, left + w, top + h)))).permute(2, 0, 1)
            else:
                region = src[:, top:top + h, left:left + w]
            out = F.resize(region, [S, S], interpolation=interp, antialias=g["antialias"])
        else:
            if crop.shape[0] != 2:
                raise PolicyError(f"Policy.crop: 'crop' must hold 2 values for pad_crop, got {crop.shape[0]}")
            if src is None:
                src = torch.from_numpy(np.array(image)).permute(2, 0, 1)
            rh, rw = (int(x) for x in self._resized_size(H, W))
            p = g["padding"]
            top, left = int(crop[0]), int(crop[1])
            if top > rh + 2 * p - S or left > rw + 2 * p - S:
                raise PolicyError(f"Policy.crop: pad_crop offset ({top}, {left}) does not fit a {rh}x{rw} image "
                                  f"padded by {p}; the params do not belong to this image")
            resized = F.resize(src, [rh, rw], interpolation=interp, antialias=g["antialias"])
            padded = F.pad(resized, [p], fill=g["fill"]) if p else resized
            out = padded[:, top:top + S, left:left + S]
        flip = bool(int(_np(params["ops"]).reshape(-1)[0]) & 1)
        if out.device.type == "cpu":
            # One numpy copy does the flip and the layout change (the resize kernel leaves
            # uint8 in HWC order); numpy's strided uint8 copy is about twice torch's.
            arr = out.numpy()
            return torch.from_numpy(np.ascontiguousarray(arr[:, :, ::-1] if flip else arr))
        return (F.horizontal_flip(out) if flip else out).contiguous()

    def finish(self, images: torch.Tensor, params: Mapping[str, Any], partners: torch.Tensor | None = None,
               partner_params: Mapping[str, Any] | None = None) -> torch.Tensor:
        """The photometric stage, batched on any device: RandAugment, erasing, mixing.

        Args:
            images: uint8 ``[B, 3, S, S]`` from :meth:`crop`.
            params: the records' params, each ``[B, *field.shape]`` (numpy or torch).
            partners: uint8 ``[B, 3, S, S]``, the partners' crops (mixing policies; rows of
                records that do not mix are ignored, zeros are fine).
            partner_params: the partners' own params (same layout as ``params``).

        Returns:
            uint8 ``[B, 3, S, S]`` on ``images.device``.
        """
        S = self.output_size
        if images.dtype != torch.uint8 or images.ndim != 4 or tuple(images.shape[1:]) != (3, S, S):
            raise PolicyError(f"Policy.finish: images must be uint8 [B, 3, {S}, {S}], got {images.dtype} "
                              f"{tuple(images.shape)}")
        B = images.shape[0]
        mixing = False
        if self._mix:
            kind = _i64(params["mix_kind"], B).reshape(B)
            if (kind > 2).any():
                raise PolicyError(f"Policy.finish: mix_kind must be 0, 1 or 2, got {int(kind.max())}")
            mixing = bool((kind > 0).any())
            if mixing and (partners is None or partner_params is None):
                raise PolicyError("Policy.finish: records mix with a partner but no partner image/params were "
                                  "given; pass partners= and partner_params= (record (mix_partner, j))")
        keys = [k for k in ("ops", "erase") if k in params]
        if mixing:
            if partners.shape != images.shape or partners.dtype != torch.uint8:
                raise PolicyError(f"Policy.finish: partners must be uint8 {tuple(images.shape)}, got "
                                  f"{partners.dtype} {tuple(partners.shape)}")
            x = torch.cat([images, partners.to(images.device)])
            pp = {k: np.concatenate([_i64(params[k], B), _i64(partner_params[k], B)]) for k in keys}
        else:
            x = images
            pp = {k: _i64(params[k], B) for k in keys}
        if self._ra and self._num_ops:
            code = pp["ops"].reshape(-1)
            shifts = 1 + 5 * np.arange(self._num_ops)
            op = (code[:, None] >> shifts) & 15
            neg = ((code[:, None] >> (shifts + 4)) & 1).astype(bool)
            if (op >= len(RA_OPS)).any():
                raise PolicyError(f"Policy.finish: RandAugment op id {int(op.max())} is unknown; valid ids "
                                  f"0..{len(RA_OPS) - 1}")
            x = _ops.apply_randaugment(x, op, neg, magnitude=self._ra["magnitude"],
                                       num_bins=self._ra["num_magnitude_bins"],
                                       interpolation=self._ra["interpolation"], fill=self._ra["fill"])
        if self._re:
            x = _ops.erase(x, pp["erase"], self._re["value"])
        if mixing:
            lam = torch.from_numpy(_np(params["mix_lam"]).astype(np.float32).reshape(B) / np.float32(65535.0))
            box = _i64(params["mix_box"], B)
            x = _ops.mix(x[:B], x[B:], torch.from_numpy(kind), lam, torch.from_numpy(box))
        return x

    def apply(self, image, params: Mapping[str, Any], partner_image=None,
              partner_params: Mapping[str, Any] | None = None) -> torch.Tensor:
        """Replay one record: :meth:`crop` then :meth:`finish` (the builder and the CPU replay call this).

        Args:
            image: the decoded source image (PIL, any supported mode, or uint8 ``[3, H, W]``).
            params: the record's params (one record).
            partner_image: mixing policies: the decoded image of sample ``params["mix_partner"]``.
            partner_params: mixing policies: the stored params of record ``(mix_partner, j)``.

        Returns:
            uint8 ``[3, S, S]``.
        """
        self.check_params(params, what="Policy.apply params")
        x = self.crop(image, params)[None]
        batched = {k: _np(v)[None] for k, v in params.items()}
        if self._mix and int(_np(params["mix_kind"])) != 0:
            if partner_image is None or partner_params is None:
                raise PolicyError(f"Policy.apply: record mixes with sample {int(_np(params['mix_partner']))} "
                                  "(mix_kind != 0); pass partner_image= (that sample's decoded image) and "
                                  "partner_params= (its stored params for the same augmentation index)")
            self.check_params(partner_params, what="Policy.apply partner_params")
            partner = self.crop(partner_image, partner_params)[None]
            return self.finish(x, batched, partner, {k: _np(v)[None] for k, v in partner_params.items()})[0]
        return self.finish(x, batched)[0]

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 ``[..., 3, H, W]`` -> float32, ``(x / 255 - mean) / std``."""
        key = str(x.device)
        if key not in self._norm_cache:
            self._norm_cache[key] = ((1.0 / (255.0 * self._std_t)).to(x.device),
                                     (self._mean_t / self._std_t).to(x.device))
        scale, shift = self._norm_cache[key]
        if x.dtype == torch.uint8:  # uint8 * float32 -> float32 in one pass (same values as converting first)
            return torch.mul(x, scale).sub_(shift)
        return x.to(torch.float32).mul_(scale).sub_(shift)

    def __call__(self, image, params, partner_image=None, partner_params=None) -> torch.Tensor:
        """``normalize(apply(...))``."""
        return self.normalize(self.apply(image, params, partner_image, partner_params))


def create_policy(name_or_config: str | dict | Policy, **overrides) -> Policy:
    """Build a policy from a preset name or a config dict.

    Args:
        name_or_config: one of ``"rrc"``, ``"rrc+mix"``, ``"rrc+ra/re"`` (recommended
            ImageNet+), ``"rrc+mix+ra/re"``, ``"cifar"``; or a (partial) config dict,
            e.g. a manifest's ``policy``; or a :class:`Policy` (its config is used).
        **overrides: top-level config keys to override (dict sections merge key by key).

    Returns:
        the :class:`Policy`.

    Raises:
        PolicyError: unknown name, unknown key or invalid value (the message names it).

    Example:
        >>> p = create_policy("rrc+ra/re", output_size=64)
        >>> create_policy(p.config) == p
        True
    """
    if isinstance(name_or_config, Policy):
        name_or_config = name_or_config.config
    return Policy(resolve_config(name_or_config, overrides))
