"""The record schema, declared once.

A reinforcement store holds, for every sample ``i`` and augmentation ``j``:

* the augmentation parameters, as fixed-width integer fields declared by the
  policy (:meth:`imagenet_plus.policy.Policy.fields`);
* ``topk_ids``: the teacher's top-k class ids, bit-packed at
  ``ceil(log2(num_classes))`` bits per id (little-endian bit order);
* ``topk_probs``: ``K + 1`` 8-bit log codes of ``[p_1, ..., p_K, r]`` where
  ``p_k`` is the k-th largest probability and ``r`` the mass outside the
  top-k; decoding renormalises the ``K + 1`` values to sum to 1. Every value
  keeps a relative precision of +-2.5%, so the error of a confident top-1 is
  proportional to ``1 - p_1`` and the tail stays relatively precise down to ~3e-6
  (smaller tails are stored as exactly zero): densified targets
  stay within ~1e-4 nats KL of the float32 originals, flat or peaked (see
  ``benchmarks/store_size.py``).

and for every sample its identity (``samples.safetensors``, :data:`SAMPLE_FIELDS`):
``label`` (int32), ``content_hash`` (an 8-byte digest the caller computes),
``image_size`` (``H, W`` of the decoded image), ``fingerprint`` (an 8x8 luma
thumbnail, :func:`imagenet_plus.identity.fingerprint`, for resized copies) and ``key`` (relative path or
key, UTF-8, stored as concatenated bytes plus int64 offsets).

The writer, the reader, ``verify`` and the Parquet export all read these
declarations. All multi-byte dtypes are little-endian (``<``) so shards are
portable across machines.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import ArgumentError

__all__ = [
    "Field",
    "PROB_CODE_SCALE",
    "PROB_CODE_ZERO",
    "id_bits",
    "target_fields",
    "encode_topk_ids",
    "decode_topk_ids",
    "encode_topk_probs",
    "decode_topk_probs",
    "decode_tail",
    "SAMPLE_FIELDS",
]

#: Log-code resolution: code ``c`` means probability ``exp(-c / PROB_CODE_SCALE)``.
#: 20 steps per nat gives +-2.5% relative error and a smallest non-zero value of ~3e-6.
PROB_CODE_SCALE = 20.0
#: The code for an exact zero.
PROB_CODE_ZERO = 255


@dataclass(frozen=True)
class Field:
    """One fixed-width field of a record.

    Args:
        name: tensor name in the shard (``[a-z0-9_]+``).
        dtype: numpy dtype string with explicit byte order, e.g. ``"<u2"``, ``"|u1"``.
        shape: shape per record (``()`` for a scalar).
        low: smallest valid stored value (inclusive), checked by ``verify(full=True)``.
        high: largest valid stored value (inclusive).
        doc: one line saying what the field means.
    """

    name: str
    dtype: str
    shape: tuple[int, ...] = ()
    low: int | float | None = None
    high: int | float | None = None
    doc: str = ""

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)

    @property
    def nbytes(self) -> int:
        """Bytes per record."""
        return int(np.prod(self.shape, dtype=np.int64)) * self.np_dtype.itemsize

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "low": self.low,
            "high": self.high,
            "doc": self.doc,
        }

    @classmethod
    def from_json(cls, d: dict) -> "Field":
        return cls(d["name"], d["dtype"], tuple(d.get("shape", ())), d.get("low"), d.get("high"), d.get("doc", ""))


def id_bits(num_classes: int) -> int:
    """Bits per stored class id."""
    if num_classes < 1:
        raise ArgumentError(f"Invalid value {num_classes!r} for argument num_classes. Valid values are an integer "
                            "in [1, inf].")
    return max(1, math.ceil(math.log2(num_classes)))


def target_fields(num_classes: int, topk: int) -> tuple[Field, Field]:
    """The two target fields for ``num_classes`` classes and top-``topk``."""
    nbytes = math.ceil(topk * id_bits(num_classes) / 8)
    return (
        Field("topk_ids", "|u1", (nbytes,), 0, 255,
              f"top-{topk} class ids, {id_bits(num_classes)} bits each, little-endian bit order"),
        Field("topk_probs", "|u1", (topk + 1,), 0, 255,
              "8-bit log codes of [p_1, ..., p_K, tail mass r], renormalised to sum to 1 on decode"),
    )


def encode_topk_ids(ids: np.ndarray, num_classes: int) -> np.ndarray:
    """Bit-pack ``ids[..., K]`` (ints in ``[0, num_classes)``) into ``uint8[..., ceil(K*b/8)]``."""
    ids = np.asarray(ids)
    if ids.size and (ids.min() < 0 or ids.max() >= num_classes):
        raise ArgumentError(f"encode_topk_ids: class ids must lie in [0, {num_classes}), got range [{ids.min()}, "
                            f"{ids.max()}]; pass num_classes covering every class the teacher predicts")
    b = id_bits(num_classes)
    k = ids.shape[-1]
    bits = (ids.astype(np.uint64)[..., None] >> np.arange(b, dtype=np.uint64)) & np.uint64(1)
    bits = bits.reshape(ids.shape[:-1] + (k * b,)).astype(np.uint8)
    return np.packbits(bits, axis=-1, bitorder="little")


def decode_topk_ids(packed: np.ndarray, num_classes: int, topk: int) -> np.ndarray:
    """Inverse of :func:`encode_topk_ids`: ``uint8[..., nbytes]`` -> ``int64[..., topk]``."""
    packed = np.asarray(packed, dtype=np.uint8)
    b = id_bits(num_classes)
    if packed.ndim == 1:  # one record: integer arithmetic beats numpy's per-call overhead
        v = int.from_bytes(packed.tobytes(), "little")
        mask = (1 << b) - 1
        return np.array([(v >> (b * k)) & mask for k in range(topk)], dtype=np.int64)
    bits = np.unpackbits(packed, axis=-1, count=topk * b, bitorder="little")
    bits = bits.reshape(packed.shape[:-1] + (topk, b)).astype(np.int64)
    return bits @ (np.int64(1) << np.arange(b, dtype=np.int64))


def _log_code(p: np.ndarray) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    with np.errstate(divide="ignore"):
        c = np.rint(-np.log(np.clip(p, 0.0, 1.0)) * PROB_CODE_SCALE)
    c = np.where(np.isfinite(c), c, PROB_CODE_ZERO)
    return np.clip(c, 0, PROB_CODE_ZERO).astype(np.uint8)


_CODE_VALUES = np.exp(-np.arange(256, dtype=np.float64) / PROB_CODE_SCALE)
_CODE_VALUES[PROB_CODE_ZERO] = 0.0


def encode_topk_probs(probs: np.ndarray) -> np.ndarray:
    """Encode descending top-k probabilities ``probs[..., K]`` as ``uint8[..., K + 1]`` codes.

    The last code holds the tail mass ``1 - sum(probs)``.
    """
    probs = np.asarray(probs, dtype=np.float64)
    tail = np.clip(1.0 - probs.sum(axis=-1, keepdims=True), 0.0, 1.0)
    return _log_code(np.concatenate([probs, tail], axis=-1))


def decode_topk_probs(codes: np.ndarray) -> np.ndarray:
    """Inverse of :func:`encode_topk_probs`: ``uint8[..., K + 1]`` -> ``float32[..., K]``.

    The ``K + 1`` decoded values are renormalised to sum to 1; the returned top-k
    probabilities sum to ``1 - tail`` and :func:`imagenet_plus.targets.densify`
    spreads the tail over the other classes.
    """
    v = _CODE_VALUES[np.asarray(codes, dtype=np.uint8)]
    total = v.sum(axis=-1, keepdims=True)
    v = v / np.where(total > 0, total, 1.0)
    return v[..., :-1].astype(np.float32)


def decode_tail(codes: np.ndarray) -> np.ndarray:
    """The tail mass (probability outside the top-k) of each record, after renormalisation."""
    v = _CODE_VALUES[np.asarray(codes, dtype=np.uint8)]
    total = v.sum(axis=-1)
    return (v[..., -1] / np.where(total > 0, total, 1.0)).astype(np.float32)


#: The per-sample identity columns of ``samples.safetensors`` (shape per sample); the keys are
#: stored beside them as ``key_bytes`` / ``key_offsets``.
SAMPLE_FIELDS = (
    Field("label", "<i4", (), 0, None, "the base dataset's label (checked against num_classes by verify)"),
    Field("content_hash", "|u1", (8,), 0, 255, "8-byte digest of the sample's file bytes or raw array"),
    Field("image_size", "<u4", (2,), 1, 2**31 - 1, "H, W of the decoded image"),
    Field("fingerprint", "|u1", (64,), 0, 255, "8x8 luma thumbnail, area-averaged (identity.fingerprint)"),
)
