"""Device decoding: DataLoader workers ship file bytes, :class:`~imagenet_plus.replay.DeviceReplay` decodes them.

With ``ReinforcedDataset(..., device="cuda")`` (``decode="device"``, the default there) a worker
does only what must happen on the host for a file-backed dataset: read each sample's file, take
the sha256 digest of its bytes and check the sample's identity against the store
(:class:`~imagenet_plus.identity.IdentityChecker`, as the CPU path does on every decode), read
the JPEG header (:func:`jpeg_header`: size, frame type, components, Adobe marker; PIL opens
other formats without decoding), and read the record's params and top-k targets. The items carry
the raw bytes as a ``uint8`` tensor; :func:`collate_device_items` packs a batch's bytes into one
flat tensor with offsets (one shared-memory block per batch, not one per item).

The replay then decodes the whole batch at once with :func:`decode_images`:
``torchvision.io.decode_jpeg(list, device=device)`` (batched nvJPEG on CUDA; libjpeg-turbo on the
CPU) for 8-bit baseline and progressive Huffman JPEGs of 1 or 3 components without an Adobe
marker. Everything else goes to the package's own CPU decode,
:func:`imagenet_plus.imageio.decode_bytes`, exactly as the CPU path decodes it: files that are not
JPEG (PNG, ...), CMYK/YCCK and Adobe JPEGs (their colour conversion is PIL's), arithmetic-coded
or 12-bit JPEGs, any image that ``decode_jpeg`` rejects on its own (a failed batched call is
retried in halves down to single files: one bad file never sends the whole batch to the CPU),
and any image that decodes to another size than its header says. Each record's stored box is
then cropped from its decoded image and resized on the device (:meth:`Policy.crop`, the same
code as the CPU path; the ``ml-dr`` flavour's PIL resize runs on the host), partners included.

Pixels: on the CPU this path equals the CPU path bit for bit (``tests/test_device_decode.py``:
libjpeg-turbo through ``torchvision.io`` gives PIL's pixels on baseline, progressive,
4:2:0/4:2:2/4:4:4 and grey JPEGs; the uint8 resize kernel is the same). On CUDA, nvJPEG's IDCT
and chroma upsampling and the float resize round differently: the stated tolerance against the
CPU path is a mean absolute difference of at most 1 grey level and >= 99% teacher top-1
agreement (``benchmarks/gpu_check.py``, check ``device_decode``).

Array-backed datasets (CIFAR, digits) and datasets without files keep the worker crops of the
``decode="workers"`` path: there is no compressed file to move.
"""

from __future__ import annotations

import io
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np
import torch

from .adapters import FileAdapter
from .errors import ImageDecodeError, PolicyError
from .identity import digest_bytes
from .imageio import decode_bytes, to_tensor

__all__ = ["DECODE_MODES", "EncodedImage", "EncodedSample", "EncodedRecords", "jpeg_header", "probe", "encoded_item",
           "collate_device_items", "decode_images", "crop_images"]

#: Values of ``decode=``: where a file-backed dataset's images are decoded on the device path.
DECODE_MODES = ("device", "workers")


class EncodedImage:
    """A file's header: ``height``, ``width``, whether the device decoder takes it (``jpeg``), and its bytes.

    Stands in for the decoded image where the replay needs only the size (the identity check in
    ``exact`` mode, the originals' fresh params). ``convert(mode)`` decodes the bytes with
    :func:`~imagenet_plus.imageio.decode_bytes` first (the fingerprint of ``check="resized"``), so
    such a check sees the very pixels the CPU path would.
    """

    __slots__ = ("data", "height", "width", "jpeg", "source", "path")

    def __init__(self, data: bytes, height: int, width: int, jpeg: bool, source, path: str | None = None) -> None:
        self.data, self.height, self.width, self.jpeg, self.source = data, height, width, jpeg, source
        self.path = path

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height

    def decode(self):
        """The RGB PIL image, decoded as the CPU path decodes it."""
        return decode_bytes(self.data, self.source)

    def convert(self, mode: str):
        return self.decode().convert(mode)


class EncodedSample(NamedTuple):
    """A sample read but not decoded: its :class:`EncodedImage`, label, digest and file."""

    image: EncodedImage
    label: int
    digest: np.ndarray
    path: str | None


#: Start-of-frame markers ``decode_jpeg`` takes (baseline, extended and progressive Huffman); arithmetic coding,
#: lossless and hierarchical frames go to the fallback.
_DEVICE_SOF = frozenset({0xC0, 0xC1, 0xC2})
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_NO_LENGTH = frozenset({0x01, *range(0xD0, 0xD9)})


def jpeg_header(data: bytes) -> tuple[int, int, bool] | None:
    """``(height, width, device)`` from a JPEG's markers, without decoding; ``None``: not a JPEG this reads.

    ``device``: an 8-bit baseline/extended/progressive Huffman frame of 1 (grey) or 3 (YCbCr) components and no
    Adobe marker (CMYK/YCCK and Adobe colour transforms are PIL's to convert): what :func:`decode_images` sends
    to ``decode_jpeg``.
    """
    n = len(data)
    if n < 4 or data[0] != 0xFF or data[1] != 0xD8:
        return None
    pos, adobe = 2, False
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _NO_LENGTH:
            pos += 2
            continue
        length = (data[pos + 2] << 8) | data[pos + 3]
        if marker == 0xEE and data[pos + 4:pos + 9] == b"Adobe":
            adobe = True
        if marker in _SOF:
            if pos + 10 > n:
                return None
            precision, comps = data[pos + 4], data[pos + 9]
            height, width = (data[pos + 5] << 8) | data[pos + 6], (data[pos + 7] << 8) | data[pos + 8]
            if height == 0 or width == 0:  # height given by a DNL marker later: let PIL read it
                return None
            return height, width, marker in _DEVICE_SOF and precision == 8 and comps in (1, 3) and not adobe
        if marker == 0xDA or length < 2:  # scan data before any frame header
            return None
        pos += 2 + length
    return None


def probe(data: bytes, source, path: str | None = None) -> EncodedImage:
    """Read a file's header (no decode): its size and whether :func:`decode_images` sends it to ``decode_jpeg``.

    JPEGs are read by :func:`jpeg_header`; anything else is opened (not decoded) by PIL.

    Raises:
        ImageDecodeError: the bytes are not an image PIL can open, naming ``source``.
    """
    head = jpeg_header(data)
    if head is not None:
        return EncodedImage(data, head[0], head[1], head[2], source, path)
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        source = source() if callable(source) else source
        raise ImageDecodeError(f"{source}: cannot read the image header ({type(e).__name__}: {e}); the file is "
                               "truncated, corrupt or not an image: restore it from the original dataset") from e
    return EncodedImage(data, int(height), int(width), False, source, path)


def encodes(records) -> bool:
    """Whether a records source can ship file bytes: a dataset copy whose adapter reads files and decodes them the
    package's way (a subclass with its own ``load`` decodes otherwise: its samples are cropped in the workers)."""
    adapter = getattr(records, "adapter", None)
    return isinstance(adapter, FileAdapter) and type(adapter).load is FileAdapter.load


class EncodedRecords:
    """A :class:`~imagenet_plus.replay.StoreRecords` whose samples are read, digested and checked, not decoded.

    Answers the records-source questions of :class:`~imagenet_plus.replay.ReplaySource` (``locate``,
    ``records``, ``num_samples``, ... from the wrapped source); ``samples`` and ``partners`` return
    :class:`EncodedSample` / :class:`EncodedImage` instead of decoded images.
    """

    def __init__(self, records) -> None:
        if not encodes(records):
            raise PolicyError(f"device decoding needs a dataset of image files decoded the package's way; "
                              f"{type(records).__name__} over {type(getattr(records, 'adapter', None)).__name__} is "
                              "not one (no files, or its own load()): use decode='workers'")
        self.inner = records
        self.adapter, self.store, self.checker = records.adapter, records.store, records.checker
        self.num_samples, self.num_classes = records.num_samples, records.num_classes

    def locate(self, items) -> tuple[np.ndarray, np.ndarray]:
        return self.inner.locate(items)

    def records(self, items, plan):
        return self.inner.records(items, plan)

    def load(self, d: int, s: int) -> EncodedSample:
        """Read dataset item ``d``'s file, digest it, check its identity against store sample ``s``."""
        d, s = int(d), int(s)
        data = self.adapter.read(d)
        path = self.adapter.path(d)
        image = probe(data, lambda: self.adapter.describe(d), path)
        digest = digest_bytes(data)
        self.checker.check(s, image, digest, lambda: f"{self.adapter.describe(d)} of {self.store.root}")
        return EncodedSample(image, self.adapter.label(d), digest, path)

    def samples(self, items, plan) -> list[EncodedSample]:
        return [self.load(d, s) for d, s in zip(plan.index, plan.store_index)]

    def partners(self, p: np.ndarray, aug: np.ndarray, params: bool) -> tuple[list, dict | None]:
        images = [self.load(self.inner.dataset_index(s), s).image for s in p]
        return images, (self.store.params_batch(p, aug) if params else None)


def _bytes_tensor(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)


def encoded_item(sample: EncodedSample, partner: EncodedImage | None, params: Mapping[str, np.ndarray],
                 partner_params: Mapping[str, np.ndarray], topk_ids, topk_probs, original: bool) -> dict[str, Any]:
    """One device-decoding item: ``"data"``, the file's bytes as a ``torch.uint8 [n]`` tensor, and numpy arrays
    and Python values for the rest; :func:`collate_device_items` makes the batch's tensors."""
    return {
        "data": _bytes_tensor(sample.image.data), "size": (sample.image.height, sample.image.width),
        "jpeg": sample.image.jpeg, "path": sample.path or "",
        "partner_data": _bytes_tensor(b"" if partner is None else partner.data),
        "partner_size": (0, 0) if partner is None else (partner.height, partner.width),
        "partner_jpeg": partner is not None and partner.jpeg,
        "partner_path": "" if partner is None else (partner.path or ""),
        "params": params, "partner_params": partner_params,
        "topk_ids": topk_ids, "topk_probs": topk_probs, "is_original": bool(original), "label": int(sample.label),
    }


def _stack(values, dtype) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.stack([np.asarray(v) for v in values]), dtype=dtype))


def collate_device_items(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The DataLoader ``collate_fn`` of device-path items (pass ``collate_fn=dataset.collate_fn``).

    Items with file bytes (``decode="device"``) become ``{"data": uint8 [total bytes], "offsets":
    int64 [B + 1]`` (item ``b``'s bytes are ``data[offsets[b]:offsets[b + 1]]``), ``"size": int64
    [B, 2]`` (H, W from the header), ``"jpeg": bool [B]`` (``decode_jpeg`` takes it), ``"path":
    list[str]``, the same five with the ``partner_`` prefix (no bytes where a record does not mix),
    ``"params"``/``"partner_params"`` ``{field: int64 [B, ...]}``, ``"topk_ids"`` int64 ``[B, K]``,
    ``"topk_probs"`` float32 ``[B, K]``, ``"is_original"`` bool ``[B]``, ``"label"`` int64 ``[B]``}.
    Anything else (crop items of ``decode="workers"`` and array-backed datasets, the CPU path's
    pairs) is ``default_collate``-d as before.
    """
    from torch.utils.data import default_collate

    if not items or not isinstance(items[0], Mapping) or "data" not in items[0]:
        return default_collate(list(items))
    out: dict[str, Any] = {}
    for prefix in ("", "partner_"):
        parts = [it[f"{prefix}data"] for it in items]
        offsets = np.zeros(len(parts) + 1, np.int64)
        np.cumsum([len(p) for p in parts], out=offsets[1:])
        out[f"{prefix}data"] = torch.cat(parts) if parts else torch.empty(0, dtype=torch.uint8)
        out[f"{prefix}offsets"] = torch.from_numpy(offsets)
        out[f"{prefix}size"] = _stack([it[f"{prefix}size"] for it in items], np.int64)
        out[f"{prefix}jpeg"] = _stack([it[f"{prefix}jpeg"] for it in items], np.bool_)
        out[f"{prefix}path"] = [it[f"{prefix}path"] for it in items]
        out[f"{prefix}params"] = {k: _stack([it[f"{prefix}params"][k] for it in items], np.int64)
                                  for k in items[0][f"{prefix}params"]}
    out["topk_ids"] = _stack([it["topk_ids"] for it in items], np.int64)
    out["topk_probs"] = _stack([it["topk_probs"] for it in items], np.float32)
    out["is_original"] = _stack([it["is_original"] for it in items], np.bool_)
    out["label"] = _stack([it["label"] for it in items], np.int64)
    return out


def _split(batch: Mapping[str, Any], prefix: str) -> list[torch.Tensor]:
    flat, off = batch[f"{prefix}data"], batch[f"{prefix}offsets"].tolist()
    flat = flat.cpu() if isinstance(flat, torch.Tensor) else torch.as_tensor(flat)
    return [flat[off[b]:off[b + 1]] for b in range(len(off) - 1)]


def _decode_jpegs(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
    """``decode_jpeg`` of every file, batched; where a call fails, its two halves again (``None``: a file that
    fails on its own), so ``k`` bad files in a batch of ``n`` cost about ``k log n`` calls, not ``n``."""
    from torchvision.io import ImageReadMode, decode_jpeg

    if not data:
        return []
    try:
        return list(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
    except (RuntimeError, ValueError):
        if len(data) == 1:
            return [None]
    half = len(data) // 2
    return _decode_jpegs(data[:half], device) + _decode_jpegs(data[half:], device)


def decode_images(data: Sequence[torch.Tensor], jpeg: Sequence[bool], sizes, device, sources: Sequence[str] = (),
                  *, stats: dict | None = None) -> list[torch.Tensor]:
    """Decode files to uint8 ``[3, H, W]`` tensors on ``device``: batched ``decode_jpeg``, CPU fallback per image.

    Args:
        data: each file's bytes (uint8 1-D CPU tensors).
        jpeg: per file, whether its header says a JPEG ``decode_jpeg`` takes (see :func:`probe`).
        sizes: per file, the ``(H, W)`` of its header; a decode of another size goes to the fallback.
        device: where the images are wanted.
        sources: file names for errors of the fallback decode.
        stats: if given, ``stats["device"]`` and ``stats["fallback"]`` are increased by the counts.

    Raises:
        ImageDecodeError: the fallback cannot decode a file either, naming it.
    """
    device = torch.device(device)
    sizes = [tuple(int(v) for v in s) for s in np.asarray(sizes, dtype=np.int64).reshape(-1, 2)]
    out: list[torch.Tensor | None] = [None] * len(data)
    take = [b for b in range(len(data)) if bool(jpeg[b])]
    for b, img in zip(take, _decode_jpegs([data[b] for b in take], device)):
        if img is not None and img.ndim == 3 and img.shape[0] == 3 and tuple(img.shape[1:]) == sizes[b]:
            out[b] = img
    fallback = [b for b in range(len(data)) if out[b] is None]
    for b in fallback:
        source = sources[b] if b < len(sources) and sources[b] else f"image {b} of the batch"
        out[b] = to_tensor(decode_bytes(data[b].numpy().tobytes(), source)).to(device, non_blocking=True)
    if stats is not None:
        stats["device"] = stats.get("device", 0) + len(data) - len(fallback)
        stats["fallback"] = stats.get("fallback", 0) + len(fallback)
    return out  # type: ignore[return-value]


def crop_images(policy, images: Sequence[torch.Tensor | None], params: Mapping[str, np.ndarray], device
                ) -> torch.Tensor:
    """Each record's geometric stage (:meth:`Policy.crop`: box, resize, flip) on its decoded image: uint8
    ``[B, 3, S, S]`` on ``device``; zeros where an image is ``None`` (a record that does not mix). A stage that
    resizes with PIL (the ``ml-dr`` flavour) crops on the host; its crop is then moved to ``device``."""
    s = policy.output_size
    device = torch.device(device)
    crops = []
    for b, image in enumerate(images):
        if image is None:
            crops.append(torch.zeros((3, s, s), dtype=torch.uint8, device=device))
        else:
            crops.append(policy.crop(image, {k: v[b] for k, v in params.items()}).to(device, non_blocking=True))
    return torch.stack(crops)
