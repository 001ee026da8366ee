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

Any other mode (``LAB``, ``HSV``, ``RGBa``, ``La``, ...) raises
:class:`~imagenet_plus.errors.PolicyError` naming the mode. Besides PIL images
the functions accept ``uint8`` arrays (``[H, W]`` or ``[H, W, C]``, C in 1, 3, 4)
and ``uint8`` tensors (``[C, H, W]``, as ``torchvision.io.decode_image`` returns).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from .errors import ImageDecodeError, PolicyError

__all__ = ["SUPPORTED_MODES", "decode_bytes", "to_rgb_image", "to_rgb_array", "to_tensor"]

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
    import io

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        source = source() if callable(source) else source
        raise ImageDecodeError(f"{source}: cannot decode the image ({type(e).__name__}: {e}); the file is "
                               "truncated, corrupt or not an image: restore it from the original dataset") from e
    return to_rgb_image(img)
