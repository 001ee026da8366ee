"""Decoding any input image to 8-bit RGB, the one pixel format the package works in.

Every image that enters a policy, a teacher or a content hash goes through
:func:`to_rgb_image`, so the builder and the replay see the same pixels for the
same file, whatever the file's own mode. The conversions are:

=====================  =========================================================
input mode             conversion
=====================  =========================================================
``RGB``                unchanged
``L``, ``1``, ``P``,   PIL's ``convert("RGB")`` (``1``: 0 -> 0, 1 -> 255;
``CMYK``, ``YCbCr``,   ``RGBX``: padding byte dropped)
``RGBX``
``LA``, ``PA``,        alpha composited over black: ``round(c * a / 255)``
``RGBA``, ``P`` with   per channel (a palette image with a transparency entry
transparency           is composited too)
``I;16``, ``I;16L``,   16-bit values shifted to 8 bits (``value >> 8``),
``I;16B``, ``I;16N``   replicated over the three channels
``I``                  32-bit integers (16-bit PNGs open as ``I``): clipped to
                       ``[0, 65535]``, then ``value >> 8``
``F``                  clipped to ``[0, 255]`` and rounded (NaN -> 0)
=====================  =========================================================

Files are decoded by :func:`decode_bytes` (PIL, the whole file, no EXIF rotation), then
converted as above; every dataset the package reads from files (ImageNet, ImageFolder,
Flowers-102, Food-101) is decoded this way, by the package itself, never by the dataset's
own loader (torchvision's ``pil_loader`` converts to RGB first, which turns 16-bit images
white and drops transparency before these rules could apply).

The hot path (:meth:`imagenet_plus.adapters.FileAdapter.load`, the ``datasets`` rows) calls
:func:`decode_rgb`, which returns the same pixels as an :class:`RGBArray` (a ``uint8[H, W, 3]``
array with PIL's ``height`` and ``width``; :func:`image_size` reads the size of any image type).
It decodes the common JPEGs straight to an array with simplejpeg (libjpeg-turbo, accurate
integer DCT and fancy upsampling, strict: any libjpeg warning counts as a failure): 8-bit
baseline, extended or progressive files, YCbCr with 4:4:4, 4:2:2 or 4:2:0 sampling (JFIF, or
component ids 1, 2, 3) and 1x1 grayscale. Everything else goes to PIL exactly as
:func:`decode_bytes` does: CMYK/YCCK and any file with an Adobe marker, other samplings, 12-bit,
lossless, arithmetic-coded and hierarchical JPEGs, files simplejpeg refuses (a truncated or
corrupt file: PIL then decodes it or raises as it always did), images over PIL's
``MAX_IMAGE_PIXELS`` (PIL's decompression-bomb rules apply), and every other format. Neither
path applies EXIF rotation. Before the fast decoder is first trusted in a process, it decodes
a few generated probe JPEGs (each of those samplings, baseline and progressive, grayscale)
and compares them with PIL's pixels; if any differs (another libjpeg build), every file is
decoded by PIL and a warning says so, once.

To decode everything with PIL, set the environment variable ``IMAGENET_PLUS_JPEG_DECODER=pil``
(before the first decode, in every worker process: DataLoader workers inherit it) or call
``set_jpeg_decoder("pil")``; :func:`jpeg_decoder` says which decoder is in use.

Any other mode (``LAB``, ``HSV``, ``RGBa``, ``La``, ...) raises
:class:`~imagenet_plus.errors.PolicyError` naming the mode. Besides PIL images
the functions accept ``uint8`` arrays (``[H, W]`` or ``[H, W, C]``, C in 1, 3, 4)
and ``uint8`` tensors (``[C, H, W]``, as ``torchvision.io.decode_image`` returns).
"""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
import torch
from PIL import Image

from .errors import ArgumentError, ImageDecodeError, PolicyError

__all__ = ["SUPPORTED_MODES", "DECODER_ENV", "RGBArray", "decode_bytes", "decode_rgb", "image_size",
           "jpeg_decoder", "set_jpeg_decoder", "to_rgb_image", "to_rgb_array", "to_tensor"]

_PIL_CONVERT = frozenset({"RGB", "L", "1", "P", "CMYK", "YCbCr", "RGBX"})
_ALPHA = frozenset({"LA", "PA", "RGBA"})
_INT16 = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})

#: Every PIL mode :func:`to_rgb_image` converts.
SUPPORTED_MODES = tuple(sorted(_PIL_CONVERT | _ALPHA | _INT16 | {"I", "F"}))


def _over_black(rgba: np.ndarray) -> np.ndarray:
    rgb = rgba[..., :3].astype(np.uint16)
    alpha = rgba[..., 3:4].astype(np.uint16)
    return ((rgb * alpha + 127) // 255).astype(np.uint8)


def _gray_to_rgb(gray8: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(np.repeat(gray8[..., None], 3, axis=-1)), mode="RGB")


def _from_array(arr: np.ndarray) -> Image.Image:
    if arr.dtype != np.uint8:
        raise PolicyError(f"image array has dtype {arr.dtype}; expected uint8 (convert it to 8 bits per channel first)")
    if arr.ndim == 2:
        return _gray_to_rgb(arr)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        return _gray_to_rgb(arr[..., 0])
    if arr.ndim == 3 and arr.shape[-1] == 3:
        return Image.fromarray(np.ascontiguousarray(arr), mode="RGB")
    if arr.ndim == 3 and arr.shape[-1] == 4:
        return Image.fromarray(_over_black(arr), mode="RGB")
    raise PolicyError(
        f"image array has shape {tuple(arr.shape)}; expected [H, W] or [H, W, C] with C in (1, 3, 4)"
    )


def to_rgb_image(img) -> Image.Image:
    """Convert an image to an 8-bit RGB PIL image (see the module docstring for each mode).

    Args:
        img: a PIL image, a ``uint8`` numpy array ``[H, W]`` / ``[H, W, C]``, or a
            ``uint8`` tensor ``[C, H, W]`` (C in 1, 3, 4; a 4th channel is alpha).

    Returns:
        A PIL image in mode ``RGB`` (the input itself when it already is one).

    Raises:
        PolicyError: for an unsupported PIL mode, dtype or shape.

    Example:
        >>> to_rgb_image(Image.new("LA", (4, 3), (200, 128))).getpixel((0, 0))
        (100, 100, 100)
    """
    if isinstance(img, torch.Tensor):
        if img.ndim not in (2, 3):
            raise PolicyError(f"image tensor has shape {tuple(img.shape)}; expected [C, H, W] or [H, W]")
        arr = img.detach().cpu().numpy()
        return _from_array(arr if arr.ndim == 2 else np.moveaxis(arr, 0, -1))
    if isinstance(img, np.ndarray):
        return _from_array(img)
    if not isinstance(img, Image.Image):
        raise PolicyError(
            f"expected a PIL image, a uint8 numpy array or a uint8 tensor, got {type(img).__name__}"
        )
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P" and "transparency" in img.info:
        mode, img = "RGBA", img.convert("RGBA")
    if mode in _PIL_CONVERT:
        return img.convert("RGB")
    if mode in _ALPHA:
        return Image.fromarray(_over_black(np.asarray(img.convert("RGBA"))), mode="RGB")
    if mode in _INT16:
        return _gray_to_rgb((np.asarray(img).astype(np.uint16) >> 8).astype(np.uint8))
    if mode == "I":
        values = np.clip(np.asarray(img, dtype=np.int64), 0, 65535)
        return _gray_to_rgb((values >> 8).astype(np.uint8))
    if mode == "F":
        values = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0)
        return _gray_to_rgb(np.rint(np.clip(values, 0.0, 255.0)).astype(np.uint8))
    raise PolicyError(
        f"image mode {mode!r} is not supported; supported modes are {', '.join(SUPPORTED_MODES)}. "
        f"Convert the image first, e.g. img.convert('RGB')"
    )


def to_rgb_array(img) -> np.ndarray:
    """The image's pixels as a C-contiguous ``uint8[H, W, 3]`` array (see :func:`to_rgb_image`)."""
    return np.ascontiguousarray(np.asarray(to_rgb_image(img), dtype=np.uint8))


def to_tensor(img) -> torch.Tensor:
    """The image's pixels as a contiguous ``torch.uint8[3, H, W]`` tensor (see :func:`to_rgb_image`)."""
    return torch.from_numpy(to_rgb_array(img).copy()).permute(2, 0, 1).contiguous()


def decode_bytes(data: bytes, source="image") -> Image.Image:
    """Decode an image file's bytes to an 8-bit RGB PIL image (see the module docstring).

    Args:
        data: the whole file's content.
        source: what to name in errors (the file's path), or a callable returning it (called on error only).

    Raises:
        ImageDecodeError: the bytes are not a complete image PIL can decode (truncated, corrupt,
            not an image), naming ``source``.
        PolicyError: the image's mode is not supported.

    Example:
        >>> decode_bytes(open("cat.png", "rb").read(), "cat.png").mode
        'RGB'
    """
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        source = source() if callable(source) else source
        raise ImageDecodeError(f"{source}: cannot decode the image ({type(e).__name__}: {e}); the file is "
                               "truncated, corrupt or not an image: restore it from the original dataset") from e
    return to_rgb_image(img)


# ----------------------------------------------------------------------------- the hot path
class RGBArray(np.ndarray):
    """Decoded 8-bit RGB pixels: a C-contiguous ``uint8[H, W, 3]`` numpy array with a PIL image's
    ``height``, ``width`` and ``mode`` (``"RGB"``), what :func:`decode_rgb` and ``FileAdapter.load`` return
    (``size`` is numpy's element count, not PIL's ``(width, height)``: use :func:`image_size`).

    It is an ordinary array otherwise (``np.asarray``, ``torch.from_numpy`` and
    ``Image.fromarray`` take it as is); :func:`to_rgb_image` turns it into a PIL image.
    """

    @property
    def height(self) -> int:
        return int(self.shape[0])

    @property
    def width(self) -> int:
        return int(self.shape[1])

    @property
    def mode(self) -> str:
        return "RGB"


def image_size(img) -> tuple[int, int]:
    """``(height, width)`` of a PIL image, an :class:`RGBArray` / ``[H, W(, C)]`` array or a ``[..., H, W]`` tensor."""
    if isinstance(img, torch.Tensor):
        return int(img.shape[-2]), int(img.shape[-1])
    if isinstance(img, np.ndarray):
        return int(img.shape[0]), int(img.shape[1])
    return int(img.height), int(img.width)


#: The environment variable that forces PIL for every file (``pil``); ``auto`` (the default) uses
#: simplejpeg for the JPEGs it decodes exactly (see the module docstring).
DECODER_ENV = "IMAGENET_PLUS_JPEG_DECODER"
_DECODERS = ("auto", "pil")
_SOF_FAST = (0xC0, 0xC1, 0xC2)  # baseline, extended sequential, progressive (Huffman)
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # DHT, JPG and DAC are not frames
#: luma (h, v) sampling factors decoded by the fast path (chroma 1x1): 4:4:4, 4:2:2, 4:2:0
_SAMPLINGS = frozenset({(1, 1), (2, 1), (2, 2)})
_state: dict = {"forced": None, "trusted": None}


def set_jpeg_decoder(name: str | None) -> None:
    """Choose the JPEG decoder of :func:`decode_rgb` in this process: ``"pil"`` or ``"auto"`` (overrides
    the environment variable :data:`DECODER_ENV`; ``None``: follow it again)."""
    if name is not None and name not in _DECODERS:
        raise ArgumentError(f"set_jpeg_decoder: unknown decoder {name!r}; choose one of {', '.join(_DECODERS)}")
    _state["forced"] = name


def _wanted() -> str:
    name = _state["forced"] or os.environ.get(DECODER_ENV, "auto").strip().lower() or "auto"
    if name not in _DECODERS:
        raise ArgumentError(f"environment variable {DECODER_ENV}={name!r} is not a decoder; set it to one of "
                            f"{', '.join(_DECODERS)} (or unset it)")
    return name


def jpeg_decoder() -> str:
    """The decoder :func:`decode_rgb` uses for the JPEGs of the fast path: ``"simplejpeg"`` or ``"pil"``
    (runs the once-per-process self-check if it has not run yet)."""
    return "simplejpeg" if _wanted() == "auto" and _trusted() is not None else "pil"


def _simplejpeg():
    try:
        import simplejpeg
    except ImportError:
        return None
    return simplejpeg.decode_jpeg


def _fast_decode(decode, data: bytes) -> np.ndarray:
    return decode(data, colorspace="RGB", fastdct=False, fastupsample=False, strict=True)


def _probe_jpegs() -> list[bytes]:
    """Small JPEGs covering the fast path: 4:4:4, 4:2:2, 4:2:0, baseline and progressive, and grayscale."""
    rng = np.random.default_rng(20230308)
    h, w = 37, 53  # not multiples of the MCU: the edge blocks are replicated and upsampled too
    ys, xs = np.mgrid[0:h, 0:w]
    smooth = np.stack([ys * 6, xs * 4, (ys + xs) * 3], axis=-1)
    pixels = np.clip(smooth + rng.integers(-40, 41, (h, w, 3)), 0, 255).astype(np.uint8)
    rgb = Image.fromarray(pixels, "RGB")
    out = []
    for subsampling in (0, 1, 2):
        for progressive in (False, True):
            buf = io.BytesIO()
            rgb.save(buf, format="JPEG", quality=87, subsampling=subsampling, progressive=progressive)
            out.append(buf.getvalue())
    for progressive in (False, True):
        buf = io.BytesIO()
        rgb.convert("L").save(buf, format="JPEG", quality=87, progressive=progressive)
        out.append(buf.getvalue())
    return out


def _self_check(decode) -> bool:
    """Whether ``decode`` gives PIL's pixels on every probe (and each probe takes the fast path)."""
    for data in _probe_jpegs():
        if not _fast_path(_jpeg_header(data)):
            return False
        try:
            got = _fast_decode(decode, data)
        except (ValueError, RuntimeError, OSError, TypeError):  # TypeError: a simplejpeg without these options
            return False
        if not np.array_equal(got, to_rgb_array(decode_bytes(data, "probe"))):
            return False
    return True


def _trusted():
    """The fast decoder once it has passed the self-check in this process, else ``None``."""
    if _state["trusted"] is None:
        decode = _simplejpeg()
        ok = decode is not None and _self_check(decode)
        if decode is not None and not ok:
            warnings.warn("imagenet_plus.imageio: simplejpeg (this machine's libjpeg-turbo build) decodes the probe "
                          "JPEGs differently from PIL, the decoder stores are built with; every image is decoded "
                          "by PIL in this process (slower, same pixels as the build). Reinstall simplejpeg and "
                          f"pillow from their wheels, or set {DECODER_ENV}=pil to silence this", RuntimeWarning,
                          stacklevel=3)
        _state["trusted"] = decode if ok else False
    return _state["trusted"] or None


def _jpeg_header(data) -> tuple | None:
    """``(frame marker, precision, height, width, components, jfif, adobe)`` of a JPEG, read up to its first
    scan (``components``: ``(id, h, v)`` each); ``None`` when ``data`` is not a JPEG this parser follows."""
    if data[:2] != b"\xff\xd8":
        return None
    pos, n, frame, jfif, adobe = 2, len(data), None, False, False
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image, start of scan
            break
        length = (data[pos + 2] << 8) | data[pos + 3]
        seg = data[pos + 4:pos + 2 + length]
        if length < 2 or len(seg) != length - 2:
            return None
        if marker == 0xE0 and seg[:5] == b"JFIF\0":
            jfif = True
        elif marker == 0xEE and seg[:5] == b"Adobe":
            adobe = True
        elif marker in _SOF:
            if frame is not None or len(seg) < 6 or len(seg) < 6 + 3 * seg[5]:
                return None
            comps = tuple((seg[6 + 3 * k], seg[7 + 3 * k] >> 4, seg[7 + 3 * k] & 15) for k in range(seg[5]))
            frame = (marker, seg[0], (seg[1] << 8) | seg[2], (seg[3] << 8) | seg[4], comps)
        pos += 2 + length
    if frame is None or data[pos:pos + 2] != b"\xff\xda":
        return None
    return (*frame, jfif, adobe)


def _fast_path(header: tuple | None) -> bool:
    """Whether a JPEG with this header is one the fast decoder reads exactly (the module docstring's list)."""
    if header is None:
        return False
    marker, precision, h, w, comps, jfif, adobe = header
    if marker not in _SOF_FAST or precision != 8 or h < 1 or w < 1 or adobe:
        return False
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and h * w > limit:  # PIL warns or refuses: let it
        return False
    if len(comps) == 1:
        return comps[0][1:] == (1, 1)
    if len(comps) != 3 or not (jfif or tuple(c[0] for c in comps) == (1, 2, 3)):
        return False
    return comps[0][1:] in _SAMPLINGS and comps[1][1:] == (1, 1) and comps[2][1:] == (1, 1)


def _rgb_array(pixels: np.ndarray) -> RGBArray:
    return np.ascontiguousarray(pixels, dtype=np.uint8).view(RGBArray)


def decode_rgb(data: bytes, source="image") -> RGBArray:
    """Decode an image file's bytes to an :class:`RGBArray`: the pixels of :func:`decode_bytes`, faster.

    JPEGs of the fast path are decoded by simplejpeg, everything else by :func:`decode_bytes`
    (see the module docstring, which also says how to force PIL).

    Args:
        data: the whole file's content.
        source: what to name in errors (the file's path), or a callable returning it (called on error only).

    Raises:
        ImageDecodeError: the bytes are not a complete image PIL can decode, naming ``source``.
        PolicyError: the image's mode is not supported.

    Example:
        >>> img = decode_rgb(open("cat.jpg", "rb").read(), "cat.jpg")
        >>> (img.height, img.width, img.dtype)
        (375, 500, dtype('uint8'))
    """
    if data[:2] == b"\xff\xd8" and _wanted() == "auto":
        header = _jpeg_header(data)
        decode = _trusted() if _fast_path(header) else None
        if decode is not None:
            try:
                pixels = _fast_decode(decode, data)
            except (ValueError, RuntimeError):  # a libjpeg error or warning: PIL decodes it, or raises, as ever
                pixels = None
            if pixels is not None and pixels.shape == (header[2], header[3], 3) and pixels.dtype == np.uint8:
                return _rgb_array(pixels)
    return _rgb_array(np.array(decode_bytes(data, source)))  # writable, as torch.from_numpy wants
