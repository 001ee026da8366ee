"""Sample identity: what ties a store's records to the pixels of a user's copy of the dataset.

For every sample of the base dataset (in its canonical order) a store records:

==================  ============================================================================
``key``             the sample's name: its path relative to the dataset's image folder where it
                    has files (``n01440764/x.JPEG``), else ``"{split}/{index}"``
``label``           its integer class
``content_hash``    the *digest*: the first 8 bytes of the sha256 of the sample's source bytes:
                    the file's content for file-backed datasets, the raw pixel array (shape and
                    bytes) for array-backed ones (CIFAR, digits)
``image_size``      ``(H, W)`` of the decoded image
``fingerprint``     an 8x8 luma thumbnail of the decoded image (area average, 64 bytes)
==================  ============================================================================

Two ways to check a copy against them, on **every** decode of a sample (in whichever
DataLoader worker), deterministically:

* ``check="exact"`` (default): the digest and the image size must be equal. Catches a
  swapped, truncated, re-encoded, resized or otherwise changed file with certainty. Costs one
  sha256 over the bytes already read (about 1-2% of replaying the item at 224 px, see
  ``benchmarks/identity_cost.py``).
* ``check="resized"``: for deliberately resized or re-encoded copies (many users keep ImageNet
  at 256-400 px): the aspect ratio must agree (within 2% plus one pixel of rounding) and the
  fingerprint must be close (mean absolute difference <= :data:`FINGERPRINT_TOLERANCE` grey
  levels). Re-encoding and resizing move a fingerprint by a few levels; another image moves it
  by tens (``tests/test_identity.py`` measures both on real photos: at most 2.4 for copies
  resized to 0.3-1x and re-encoded at JPEG quality 20-75, at least 12.8 between different
  photos). Both are checked on every decode: the thumbnail (about 0.25 ms on a 500x375 image) is
  computed whenever the sample's bytes are not the very bytes whose thumbnail this process last
  found close (their digest, computed on every load anyway, tells), so a file swapped or edited
  between epochs fails on its next decode, in a persistent worker too, and re-decoding unchanged
  bytes costs one comparison. Crops stored as fractions of the image replay the same region on a
  resized copy, resampled at its resolution.

A mismatch raises :class:`~imagenet_plus.errors.AlignmentError` naming the sample, its key,
its file and the fix.
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple

import numpy as np
from PIL import Image

from ._checks import check_choice
from .errors import AlignmentError

__all__ = ["CHECK_MODES", "FINGERPRINT_TOLERANCE", "SampleIdentity", "digest_bytes", "digest_array", "fingerprint",
           "IdentityChecker"]

#: The values of ``check=``.
CHECK_MODES = ("exact", "resized")
#: Largest mean absolute difference (grey levels, 0-255) between two fingerprints of the same image.
FINGERPRINT_TOLERANCE = 10.0
#: Relative aspect-ratio slack of ``check="resized"`` (plus one pixel of rounding).
ASPECT_TOLERANCE = 0.02
_SIDE = 8


class SampleIdentity(NamedTuple):
    """One sample's identity as the store records it."""

    key: str
    label: int
    digest: np.ndarray  # uint8[8]
    size: tuple[int, int]  # (H, W)
    fingerprint: np.ndarray  # uint8[64]


def digest_bytes(data: bytes | memoryview) -> np.ndarray:
    """The digest of a file's bytes: the first 8 bytes of their sha256, as ``uint8[8]``."""
    return np.frombuffer(hashlib.sha256(data).digest()[:8], dtype=np.uint8).copy()


def digest_array(pixels: np.ndarray) -> np.ndarray:
    """The digest of a raw pixel array: sha256 of its shape (``<i8``) and bytes, first 8 bytes."""
    pixels = np.ascontiguousarray(pixels)
    h = hashlib.sha256(np.asarray(pixels.shape, dtype="<i8").tobytes())
    h.update(pixels.tobytes())
    return np.frombuffer(h.digest()[:8], dtype=np.uint8).copy()


def fingerprint(image) -> np.ndarray:
    """An 8x8 luma thumbnail (``uint8[64]``) of an RGB image (PIL, or an ``RGBArray`` / ``uint8[H, W, 3]``
    array): luma (ITU-R 601), then area averaging (PIL's, on either type)."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
    return np.asarray(image.convert("L").resize((_SIDE, _SIDE), Image.BOX), dtype=np.uint8).reshape(-1).copy()


def _aspect_ok(h: int, w: int, H: int, W: int) -> bool:
    """Whether ``h x w`` has the aspect ratio of ``H x W`` (relative slack plus one pixel of rounding)."""
    return abs(h * W - w * H) <= ASPECT_TOLERANCE * h * W + max(H, W) + max(h, w)


class IdentityChecker:
    """Compares loaded samples with a store's recorded identities (``check="exact"`` or ``"resized"``).

    Args:
        store: the opened :class:`~imagenet_plus.store.ReinforcementStore`.
        mode: ``"exact"`` or ``"resized"`` (see the module docstring).
    """

    def __init__(self, store, mode: str = "exact") -> None:
        self.mode = check_choice(mode, "check", CHECK_MODES)
        self.store = store
        self._digests = store.content_hashes
        self._sizes = store.image_sizes
        self._fingerprints = None  # read on first use ("resized" only)
        # "resized": per sample, the digest of the bytes whose thumbnail this process last found close (0: none)
        self._verified: np.ndarray | None = None

    def problem(self, s: int, image: Image.Image, digest: np.ndarray) -> str | None:
        """What is wrong with sample ``s`` of the store given its decoded image and digest (``None``: nothing)."""
        H, W = (int(v) for v in self._sizes[s])
        h, w = image.height, image.width
        if self.mode == "exact":
            if not np.array_equal(digest, self._digests[s]):
                return (f"its content differs from the file the store was built on (digest "
                        f"{digest.tobytes().hex()} != {self._digests[s].tobytes().hex()})")
            if (h, w) != (H, W):
                return f"it decodes to {h}x{w} pixels, the store's image was {H}x{W}"
            return None
        if not _aspect_ok(h, w, H, W):
            return f"its aspect ratio ({h}x{w}) differs from the store's image ({H}x{W})"
        if self._fingerprints is None:
            self._fingerprints = self.store.fingerprints
            self._verified = np.zeros(len(self._fingerprints), dtype=np.uint64)
        raw = np.ascontiguousarray(digest, dtype=np.uint8).reshape(-1) if digest is not None else None
        key = raw.view(np.uint64)[0] if raw is not None and raw.size == 8 else np.uint64(0)
        if key != 0 and self._verified[s] == key:
            return None  # the very bytes whose thumbnail was checked: the same pixels, the same verdict
        diff = float(np.abs(fingerprint(image).astype(np.int16) - self._fingerprints[s].astype(np.int16)).mean())
        if diff > FINGERPRINT_TOLERANCE:
            self._verified[s] = 0
            return (f"it shows another picture than the store's image (thumbnail differs by {diff:.1f} grey levels "
                    f"on average, tolerance {FINGERPRINT_TOLERANCE:g})")
        self._verified[s] = key
        return None

    def check(self, s: int, image: Image.Image, digest: np.ndarray, where) -> None:
        """Raise :class:`AlignmentError` if sample ``s`` does not match; ``where`` names it (a string, or a
        callable making one: it is called only on a mismatch)."""
        msg = self.problem(s, image, digest)
        if msg is None:
            return
        where = where() if callable(where) else where
        if self.mode == "exact":
            fix = ("restore the original file; if your copy was deliberately resized or re-encoded, use "
                   "check='resized' (the crops then replay on your resolution)")
        else:
            fix = "restore the original file, or use reinforcements built for this copy"
        raise AlignmentError(f"{where}: {msg}; its stored targets would not belong to these pixels: {fix}. "
                             f"`imagenet-plus verify {self.store.root} --data-root ...` lists every such sample")
