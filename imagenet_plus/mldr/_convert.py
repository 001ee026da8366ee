"""ml-dr's records in this package's store: the policy of a layout, the index map, each sample's fields.

* :func:`policy_config`: the ``ml-dr`` flavour policy (:mod:`imagenet_plus.augment.mldr`) that
  replays a :class:`~imagenet_plus.mldr.Layout`'s records.
* :func:`mldr_order`: ml-dr's sample index -> the store's (the user's dataset order). ml-dr indexes
  torchvision's dataset as its ``data.py`` builds it; for ImageNet that is
  ``ImageFolder(<root>/training)``: classes sorted, then each class folder walked in sorted order.
  This is recomputed from the user's sample keys, so the map holds whatever order the user's
  adapter lists its samples in.
* :class:`Converter`: one sample's :class:`~imagenet_plus.mldr.SampleRecords` -> the store's
  fields, as one ``uint8 [NS, record_bytes]`` row block (fields concatenated per record, in the
  manifest's order). RandomResizedCrop boxes become fractions x 65535 of the user's image
  (checked to fit it, and to come back exactly); RandAugment ops and the flip become the ``ops``
  bits; the top-k is sorted (the decoder did) and encoded with the store's codes.

Targets: a record whose float32 top-k sums above 1 (float32 rounding of a confident teacher) is
stored with tail mass 0; ml-dr's ``densify(..., "smooth")`` would turn such a record into a softmax
of its probabilities (near uniform over the K classes). The import keeps the teacher's
distribution and counts these records (``docs/ml-dr-format.md``, section 4).
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from ..augment.mldr import lam_to_bits
from ..augment.sampling import QMAX, dequantize, quantize
from ..augment.stages import resized_shape
from ..errors import ImportFormatError
from ..schema import Field, encode_topk_ids, encode_topk_probs
from ._config import Layout
from ._records import SampleRecords

__all__ = ["policy_config", "mldr_order", "Converter", "field_offsets", "read_field"]


def policy_config(layout: Layout) -> dict:
    """The complete ``ml-dr`` flavour policy config that replays ``layout``'s records."""
    S = layout.size
    if layout.geometry == "rrc":
        geometry = {"kind": "rrc", "scale": list(layout.rrc_scale), "ratio": list(layout.rrc_ratio),
                    "interpolation": "bilinear", "antialias": True}
    else:
        geometry = {"kind": "pad_crop", "padding": layout.padding, "fill": 0, "interpolation": "bilinear",
                    "antialias": True}
    ra = None
    if layout.ra_num_ops:
        ra = {"num_ops": layout.ra_num_ops, "magnitude": layout.ra_magnitude,
              "num_magnitude_bins": layout.ra_num_bins, "interpolation": "nearest", "fill": 0}
    erasing = None
    if layout.erase_p is not None:
        erasing = {"p": layout.erase_p, "scale": list(layout.erase_scale), "ratio": list(layout.erase_ratio),
                   "value": 0}
    mix = None
    if layout.mixing:
        mixup, cutmix = layout.mixup or (1.0, 0.0, 1.0), layout.cutmix or (1.0, 0.0)
        mix = {"mixup_alpha": mixup[0], "mixup_p": mixup[1], "mixup_div_by": mixup[2], "cutmix_alpha": cutmix[0],
               "cutmix_p": cutmix[1]}
    return {"name": f"ml-dr {layout.variant}", "flavour": "ml-dr", "output_size": S, "geometry": geometry,
            "hflip": layout.hflip_p, "randaugment": ra, "erasing": erasing, "mix": mix,
            "mean": list(layout.mean), "std": list(layout.std)}


def _imagefolder_key(key: str) -> tuple[str, str, str]:
    """Where ``ImageFolder`` lists a file: class folder, then ``sorted(os.walk(...))`` folder, then name."""
    folder, _, name = key.rpartition("/")
    return folder.split("/", 1)[0], folder, name


def mldr_order(keys: Sequence[str], dataset: str) -> np.ndarray | None:
    """``to_store[k]``: the store (user's) index of ml-dr's sample ``k``; ``None`` when they are the same.

    ImageNet: ml-dr's order is ``ImageFolder``'s over the user's keys (``wnid/file``). CIFAR-100,
    Flowers-102 and Food-101: torchvision's own dataset order, which is the adapters' order.
    """
    if dataset != "imagenet":
        return None
    order = sorted(range(len(keys)), key=lambda i: _imagefolder_key(keys[i]))
    to_store = np.asarray(order, dtype=np.int64)
    return None if np.array_equal(to_store, np.arange(len(keys))) else to_store


def field_offsets(fields: Sequence[Field]) -> list[tuple[Field, int]]:
    """Each field and its byte offset inside a record row (fields concatenated in order)."""
    out, off = [], 0
    for f in fields:
        out.append((f, off))
        off += f.nbytes
    return out


def read_field(rows: np.ndarray, field: Field, offset: int) -> np.ndarray:
    """Field ``field`` of ``rows`` (uint8 ``[..., record_bytes]``) as ``[..., *field.shape]`` of its dtype."""
    raw = np.ascontiguousarray(rows[..., offset:offset + field.nbytes])
    return raw.view(field.np_dtype).reshape(rows.shape[:-1] + field.shape)


class Converter:
    """Converts one sample's decoded records to its store row block (picklable: sent to workers once).

    Args:
        layout: the archive's layout.
        fields: the store's fields (the policy's, then ``topk_ids``, ``topk_probs``).
        sizes: int ``[N, 2]``: ``(H, W)`` of each image of the user's copy, in store order.
        to_store: ml-dr index -> store index (``None``: the same).
    """

    def __init__(self, layout: Layout, fields: Sequence[Field], sizes: np.ndarray, to_store: np.ndarray | None):
        self.layout, self.fields = layout, list(fields)
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self.to_store = to_store
        self.record_bytes = sum(f.nbytes for f in self.fields)
        self.names = {f.name for f in self.fields}

    def store_index(self, k):
        """ml-dr index (or array of them) -> store index."""
        return k if self.to_store is None else self.to_store[k]

    def convert(self, recs: SampleRecords, member: str) -> tuple[int, np.ndarray, int]:
        """``(store index, uint8 [NS, record_bytes], records whose float32 top-k sums above 1)``.

        Raises:
            ImportFormatError: a crop that does not fit the user's image (another copy than ml-dr's).
        """
        s = int(self.store_index(recs.index))
        values = self._values(recs, s, member)
        ns = recs.probs.shape[0]
        parts = [np.ascontiguousarray(values[f.name], dtype=f.np_dtype.newbyteorder("<") if f.np_dtype.itemsize > 1
                                      else f.np_dtype).reshape(ns, -1).view(np.uint8) for f in self.fields]
        over = int((recs.probs.astype(np.float32).sum(axis=1, dtype=np.float32) > 1).sum())
        return s, np.concatenate(parts, axis=1), over

    def _values(self, recs: SampleRecords, s: int, member: str) -> dict[str, np.ndarray]:
        lay = self.layout
        ns = recs.probs.shape[0]
        own_hw = np.broadcast_to(self.sizes[s], (ns, 2))
        out = {"crop": self._crop(recs.crop, own_hw, member, ""),
               "ops": _ops(recs.flip, recs.ra_op, recs.ra_magnitude)}
        if "erase" in self.names:
            out["erase"] = recs.erase
        out["topk_ids"] = encode_topk_ids(recs.ids, lay.num_classes)
        out["topk_probs"] = encode_topk_probs(recs.probs)
        if not lay.mixing:
            return out
        has = recs.partner >= 0
        partner = np.where(has, self.store_index(np.maximum(recs.partner, 0)), 0)
        kind = recs.mixup.astype(np.int64) if recs.mixup is not None else np.zeros(ns, np.int64)
        if recs.cutmix is not None:
            kind = kind | (recs.cutmix.astype(np.int64) << 1)
        p_hw = np.where(has[:, None], self.sizes[partner], 1)
        out.update({
            "mix_partner": partner, "mix_kind": kind,
            "mix_lam": np.where(kind & 1, lam_to_bits(recs.mixup_lam if recs.mixup_lam is not None else 0.0), 0),
            "mix_box": recs.cutmix_box if recs.cutmix_box is not None else np.zeros((ns, 4), np.int64),
            "partner_crop": np.where(has[:, None], self._crop(recs.partner_crop, p_hw, member, "partner's ", has), 0),
            "partner_ops": np.where(has, _ops(recs.partner_flip, recs.partner_ra_op, recs.partner_ra_magnitude), 0),
        })
        if "partner_erase" in self.names:
            out["partner_erase"] = np.where(has[:, None], recs.partner_erase, 0)
        return out

    def _crop(self, crop: np.ndarray, hw: np.ndarray, member: str, whose: str, rows: np.ndarray | None = None
              ) -> np.ndarray:
        """RRC boxes in pixels -> fractions x 65535 of the user's image; CIFAR offsets as they are (checked)."""
        c = crop.astype(np.int64)
        H, W = hw[:, 0], hw[:, 1]
        live = np.ones(len(c), bool) if rows is None else rows
        if self.layout.geometry == "rrc":
            fits = (c[:, 0] + c[:, 2] <= H) & (c[:, 1] + c[:, 3] <= W) & (H <= QMAX) & (W <= QMAX)
            q = np.stack([quantize(c[:, 0], H), quantize(c[:, 1], W), quantize(c[:, 2], H), quantize(c[:, 3], W)], 1)
            back = np.stack([dequantize(q[:, 0], H), dequantize(q[:, 1], W), dequantize(q[:, 2], H),
                             dequantize(q[:, 3], W)], 1)
            fits &= (back == c).all(axis=1)
            what = "box (top, left, height, width)"
        else:
            rh, rw = resized_shape(self.layout.size, H, W)
            slack = 2 * self.layout.padding - self.layout.size
            fits = (c[:, 0] <= rh + slack) & (c[:, 1] <= rw + slack)
            q, what = c, "crop offset (top, left)"
        bad = np.flatnonzero(live & ~fits)
        if bad.size:
            j = int(bad[0])
            raise ImportFormatError(
                f"{member}: record {j}: the {whose}{what} {c[j].tolist()} does not fit that image of your copy "
                f"({int(H[j])}x{int(W[j])} pixels); ml-dr drew it on another file. Import over the original "
                f"files of the dataset (not a resized or re-encoded copy), with exactly the samples of its "
                f"training split (ml-dr indexes torchvision's order: {os.path.join('<root>', 'train')} for ImageNet).")
        return q


def _ops(flip: np.ndarray, ra_op: np.ndarray | None, ra_magnitude: np.ndarray | None) -> np.ndarray:
    """The ``ops`` bits: bit 0 flip; RandAugment op k in bits 1 + 5k: 4 bits op id, then a negative-magnitude bit.

    A skipped RandAugment (op -1, never in the published archives) becomes Identity ops.
    """
    word = flip.astype(np.int64)
    if ra_op is None:
        return word
    op = np.maximum(ra_op.astype(np.int64), 0)
    neg = (ra_magnitude < 0) & (ra_op >= 0)
    code = op | (neg.astype(np.int64) << 4)
    shifts = 1 + 5 * np.arange(op.shape[1])
    return word | np.bitwise_or.reduce(code << shifts, axis=1)
