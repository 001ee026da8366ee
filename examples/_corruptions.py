"""The 15 ImageNet-C corruptions x 5 severities (Hendrycks & Dietterich, ICLR 2019), on numpy, scipy and PIL.

:func:`corrupt` takes one uint8 ``[H, W, 3]`` image and returns a corrupted uint8 image of the
same shape. Every random draw comes from ``numpy.random.default_rng([seed, type, severity,
index])``, so an image's corruption depends only on those four numbers (never on batch size or
order). The severity parameters are the published ones, in two tables:

* ``"imagenet"``: ImageNet-C's (``make_imagenet_c.py``), for 224 px centre crops;
* ``"cifar"``: CIFAR-10-C's (``make_cifar_c.py``, same paper), for 32 px images.

The algorithms follow the published code; where it relied on OpenCV or ImageMagick the same
operation is written here on numpy/scipy (OpenCV's ``filter2D``/``GaussianBlur``/``warpAffine``
with their default border ``REFLECT_101`` are scipy's ``mode="mirror"``). Known differences from
the official ImageNet-C files (bit-identity is not expected, and the random draws differ):

* motion blur (and the snow streaks) used ImageMagick's ``MotionBlurImage``; :func:`_motion_blur`
  re-implements its kernel (a one-sided Gaussian of ``2 * ceil(radius) + 1`` taps along the angle,
  offsets rounded to whole pixels, edge pixels repeated), not ImageMagick's 16-bit arithmetic;
* frost blended a random crop of one of the frost photographs the authors ship (their code draws
  from the first five of six); here :func:`_frost_texture` draws five procedural substitutes per
  seed (needle-shaped crystals with side branches over a fractal haze, tinted blue-white, 512 px,
  shrunk by 0.2 for the CIFAR table as CIFAR-10-C shrank its photos), cropped at random and
  blended with the published coefficients;
* the official files were saved as JPEG (quality 85) after corruption; here the corrupted pixels
  go straight to the model;
* glass blur reproduces what the published loop does on numpy arrays: its tuple "swap" of two
  pixel views copies the displaced pixel onto the current one (it does not swap);
* as in the published code, float results are truncated to uint8 (``np.uint8``), not rounded.
"""

from __future__ import annotations

import functools
import io
import math

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from imagenet_plus.errors import ArgumentError

__all__ = ["CORRUPTIONS", "CATEGORIES", "TABLES", "SEVERITIES", "corrupt", "corrupt_batch", "table_for_size"]

CORRUPTIONS = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
               "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
               "jpeg_compression")
CATEGORIES = {"noise": CORRUPTIONS[0:3], "blur": CORRUPTIONS[3:7], "weather": CORRUPTIONS[7:11],
              "digital": CORRUPTIONS[11:15]}
SEVERITIES = (1, 2, 3, 4, 5)

# The published parameters, severity 1..5. Zoom blur: (start, stop, step) of np.arange.
# Frost: (image weight, frost weight); the texture scale is FROST_SCALE.
_E = 244  # ImageNet-C's elastic table is written in multiples of 244 (sic, "should have been 224")
TABLES: dict[str, dict[str, tuple]] = {
    "imagenet": {
        "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),
        "shot_noise": (60, 25, 12, 5, 3),
        "impulse_noise": (0.03, 0.06, 0.09, 0.17, 0.27),
        "defocus_blur": ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)),
        "glass_blur": ((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)),
        "motion_blur": ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15)),
        "zoom_blur": ((1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.02), (1, 1.26, 0.02), (1, 1.31, 0.03)),
        "snow": ((0.1, 0.3, 3, 0.5, 10, 4, 0.8), (0.2, 0.3, 2, 0.5, 12, 4, 0.7), (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
                 (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65), (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55)),
        "frost": ((1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)),
        "fog": ((1.5, 2), (2.0, 2), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4)),
        "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),
        "contrast": (0.4, 0.3, 0.2, 0.1, 0.05),
        "elastic_transform": ((_E * 2, _E * 0.7, _E * 0.1), (_E * 2, _E * 0.08, _E * 0.2),
                              (_E * 0.05, _E * 0.01, _E * 0.02), (_E * 0.07, _E * 0.01, _E * 0.02),
                              (_E * 0.12, _E * 0.01, _E * 0.02)),
        "pixelate": (0.6, 0.5, 0.4, 0.3, 0.25),
        "jpeg_compression": (25, 18, 15, 10, 7),
    },
    "cifar": {
        "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
        "shot_noise": (500, 250, 100, 75, 50),
        "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),
        "defocus_blur": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),
        "glass_blur": ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)),
        "motion_blur": ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)),
        "zoom_blur": ((1, 1.06, 0.01), (1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.01), (1, 1.26, 0.01)),
        "snow": ((0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9), (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
                 (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85), (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)),
        "frost": ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)),
        "fog": ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)),
        "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),
        "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
        "elastic_transform": ((0.0, 0.0, 32 * 0.08), (32 * 0.05, 32 * 0.2, 32 * 0.07),
                              (32 * 0.08, 32 * 0.06, 32 * 0.06), (32 * 0.1, 32 * 0.04, 32 * 0.05),
                              (32 * 0.1, 32 * 0.03, 32 * 0.03)),
        "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),
        "jpeg_compression": (80, 65, 58, 50, 40),
    },
}
# CIFAR-10-C shrank the frost photographs by 0.2 before cropping; ImageNet-C cropped them at full size.
FROST_SCALE = {"imagenet": 1.0, "cifar": 0.2}


def table_for_size(size: int) -> str:
    """The table whose images are nearest in size: ``"cifar"`` (32 px) below 128 px, else ``"imagenet"`` (224 px)."""
    return "cifar" if size < 128 else "imagenet"


# ----------------------------------------------------------------------------- helpers
def _to_uint8(x: np.ndarray) -> np.ndarray:
    """Float pixels in [0, 255] to uint8, truncated as the published code's ``np.uint8`` does."""
    return np.clip(x, 0, 255).astype(np.uint8)


def _gauss(x: np.ndarray, sigma: float, mode: str = "nearest", truncate: float = 4.0) -> np.ndarray:
    """scikit-image's ``gaussian`` (per channel, ``mode="nearest"``, ``truncate=4``) on scipy."""
    sig = (sigma, sigma, 0) if x.ndim == 3 else sigma
    return ndimage.gaussian_filter(x, sigma=sig, mode=mode, truncate=truncate)


def _clipped_zoom(img: np.ndarray, factor: float) -> np.ndarray:
    """Zoom into the centre by ``factor`` (bilinear) and crop back to the input's size."""
    h, w = img.shape[:2]
    ch, cw = int(math.ceil(h / factor)), int(math.ceil(w / factor))
    top, left = (h - ch) // 2, (w - cw) // 2
    out = ndimage.zoom(img[top:top + ch, left:left + cw], (factor, factor) + (1,) * (img.ndim - 2), order=1)
    th, tw = (out.shape[0] - h) // 2, (out.shape[1] - w) // 2
    return out[th:th + h, tw:tw + w]


def _plasma(size: int, decay: float, rng: np.random.Generator) -> np.ndarray:
    """A diamond-square fractal height map on a ``size`` x ``size`` torus (``size`` a power of two), in [0, 1].

    The perturbation at each level is ``wibble * U(-wibble, wibble)``, ``wibble`` starting at 100
    and divided by ``decay`` per level, as in the published fog.
    """
    a = np.zeros((size, size), dtype=np.float64)
    step, wibble = size, 100.0
    while step >= 2:
        half = step // 2
        corners = a[0:size:step, 0:size:step]
        square = corners + np.roll(corners, -1, axis=0)
        square = square + np.roll(square, -1, axis=1)
        a[half:size:step, half:size:step] = square / 4 + wibble * rng.uniform(-wibble, wibble, square.shape)
        centres = a[half:size:step, half:size:step]
        corners = a[0:size:step, 0:size:step]
        across = centres + np.roll(centres, 1, axis=0) + corners + np.roll(corners, -1, axis=1)
        a[0:size:step, half:size:step] = across / 4 + wibble * rng.uniform(-wibble, wibble, across.shape)
        down = centres + np.roll(centres, 1, axis=1) + corners + np.roll(corners, -1, axis=0)
        a[half:size:step, 0:size:step] = down / 4 + wibble * rng.uniform(-wibble, wibble, down.shape)
        step //= 2
        wibble /= decay
    a -= a.min()
    return a / a.max()


def _disk(radius: float, alias_blur: float) -> np.ndarray:
    """The defocus kernel: a normalised disk, anti-aliased by a 3x3 (5x5 above radius 8) Gaussian."""
    if radius <= 8:
        grid, k = np.arange(-8, 9), 3
    else:
        grid, k = np.arange(-int(radius), int(radius) + 1), 5
    xx, yy = np.meshgrid(grid, grid)
    disk = (xx ** 2 + yy ** 2 <= radius ** 2).astype(np.float64)
    disk /= disk.sum()
    t = np.arange(k) - (k - 1) / 2
    g = np.exp(-t ** 2 / (2 * alias_blur ** 2))
    g /= g.sum()
    return ndimage.correlate1d(ndimage.correlate1d(disk, g, axis=0, mode="mirror"), g, axis=1, mode="mirror")


def _motion_blur(x: np.ndarray, radius: float, sigma: float, angle: float) -> np.ndarray:
    """ImageMagick's motion blur: ``out(p) = sum_i k_i * x(p + round(i * (cos a, sin a)))``, ``k`` a half Gaussian."""
    width = 2 * int(math.ceil(radius)) + 1
    i = np.arange(width, dtype=np.float64)
    k = np.exp(-i ** 2 / (2 * sigma ** 2))
    k /= k.sum()
    a = math.radians(angle)
    off_x = np.ceil(i * math.cos(a) - 0.5).astype(int)
    off_y = np.ceil(i * math.sin(a) - 0.5).astype(int)
    h, w = x.shape[:2]
    pad = ((width, width), (width, width)) + ((0, 0),) * (x.ndim - 2)
    xp = np.pad(x.astype(np.float64), pad, mode="edge")
    out = np.zeros(x.shape, dtype=np.float64)
    for wt, dx, dy in zip(k, off_x, off_y):
        out += wt * xp[width + dy:width + dy + h, width + dx:width + dx + w]
    return out


def _frost_texture(size: int, rng: np.random.Generator) -> np.ndarray:
    """A procedural frost photograph, float ``[size, size, 3]`` in [0, 255]: straight needles with side branches
    over a fractal haze, tinted blue-white (the substitute for the six frost photographs ImageNet-C ships)."""
    haze = 0.22 + 0.25 * _plasma(1 << max(8, (size - 1).bit_length()), 2.0, rng)[:size, :size]
    layer = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(layer)
    for _ in range(max(4, size * size // 700)):
        cx, cy = rng.uniform(0, size, size=2)
        for angle in rng.uniform(0, 2 * np.pi, size=int(rng.integers(3, 7))):
            length = rng.uniform(6, 36)
            ex, ey = cx + length * np.cos(angle), cy + length * np.sin(angle)
            draw.line([(cx, cy), (ex, ey)], fill=int(rng.integers(150, 256)), width=1)
            for t in rng.uniform(0.2, 0.9, size=int(rng.integers(1, 4))):
                bx, by = cx + t * (ex - cx), cy + t * (ey - cy)
                side = angle + rng.choice((-1.0, 1.0)) * np.pi / 3
                bl = length * rng.uniform(0.15, 0.4)
                draw.line([(bx, by), (bx + bl * np.cos(side), by + bl * np.sin(side))],
                          fill=int(rng.integers(110, 220)), width=1)
    crystals = _gauss(np.asarray(layer, dtype=np.float64) / 255.0, 0.6)
    return np.clip(haze + 0.9 * crystals, 0, 1)[..., None] * np.array([0.86, 0.93, 1.0]) * 255


@functools.lru_cache(maxsize=4)
def _frost_bank(seed: int, side: int, scale: float) -> tuple[np.ndarray, ...]:
    """Five frost textures of ``side`` px drawn from ``seed``, shrunk by ``scale`` (CIFAR-10-C's photos: 0.2)."""
    rng = np.random.default_rng([int(seed), 0xF7057])
    bank = []
    for _ in range(5):
        tex = Image.fromarray(_frost_texture(side, rng).astype(np.uint8), mode="RGB")
        if scale != 1.0:
            tex = tex.resize((int(side * scale), int(side * scale)), Image.BILINEAR)
        bank.append(np.asarray(tex, dtype=np.float64))
    return tuple(bank)


def _frost(x: np.ndarray, c, table: str, seed: int, rng: np.random.Generator) -> np.ndarray:
    """``c[0] * x + c[1] * frost``, frost a random crop of one of five textures, as the published frost."""
    h, w = x.shape[:2]
    scale = FROST_SCALE[table]
    side = max(512, int(math.ceil((max(h, w) + 1) / scale)))
    bank = _frost_bank(seed, side, scale)
    tex = bank[int(rng.integers(len(bank)))]
    top, left = int(rng.integers(0, tex.shape[0] - h)), int(rng.integers(0, tex.shape[1] - w))
    return np.clip(c[0] * x.astype(np.float64) + c[1] * tex[top:top + h, left:left + w], 0, 255)


# ----------------------------------------------------------------------------- the corruptions
def _noise(x: np.ndarray, name: str, c, rng: np.random.Generator) -> np.ndarray:
    x = x / 255.0
    if name == "gaussian_noise":
        out = x + rng.normal(size=x.shape, scale=c)
    elif name == "shot_noise":
        out = rng.poisson(x * c) / c
    else:  # impulse: each value (per channel) becomes salt or pepper with probability c, half and half
        flipped = rng.random(x.shape) < c
        salt = rng.random(x.shape) < 0.5
        out = np.where(flipped, salt.astype(np.float64), x)
    return np.clip(out, 0, 1) * 255


def _glass_blur(x: np.ndarray, c, rng: np.random.Generator) -> np.ndarray:
    sigma, delta, iterations = c
    h, w = x.shape[:2]
    y = np.uint8(_gauss(x / 255.0, sigma) * 255)
    packed = ((y[..., 0].astype(np.uint32) << 16) | (y[..., 1].astype(np.uint32) << 8) | y[..., 2]).ravel().tolist()
    rows = np.arange(h - delta, delta, -1)
    cols = np.arange(w - delta, delta, -1)
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    dst = (rr * w + cc).ravel()
    for _ in range(iterations):
        d = rng.integers(-delta, delta, size=(dst.size, 2))  # (dx, dy) in [-delta, delta), as published
        src = dst + d[:, 1] * w + d[:, 0]
        for a, b in zip(dst.tolist(), src.tolist()):  # sequential: a copied pixel may be copied again
            packed[a] = packed[b]
    p = np.asarray(packed, dtype=np.uint32).reshape(h, w)
    y = np.stack([(p >> 16) & 255, (p >> 8) & 255, p & 255], axis=-1).astype(np.float64)
    return np.clip(_gauss(y / 255.0, sigma), 0, 1) * 255


def _blur(x: np.ndarray, name: str, c, rng: np.random.Generator) -> np.ndarray:
    if name == "glass_blur":
        return _glass_blur(x, c, rng)
    if name == "defocus_blur":
        kernel = _disk(*c)
        return np.clip(ndimage.correlate(x / 255.0, kernel[..., None], mode="mirror"), 0, 1) * 255
    if name == "motion_blur":  # ImageMagick rounds to 8 bits
        return np.round(np.clip(_motion_blur(x, c[0], c[1], rng.uniform(-45, 45)), 0, 255))
    x = x.astype(np.float32) / 255.0  # zoom blur
    out = np.zeros_like(x)
    factors = np.arange(*c)
    for f in factors:
        out += _clipped_zoom(x, f)
    return np.clip((x + out) / (len(factors) + 1), 0, 1) * 255


def _snow(x: np.ndarray, c, rng: np.random.Generator) -> np.ndarray:
    loc, scale, zoom, threshold, radius, sigma, blend = c
    h, w = x.shape[:2]
    x = x.astype(np.float32) / 255.0
    layer = rng.normal(size=(h, w), loc=loc, scale=scale)
    layer = _clipped_zoom(layer[..., None], zoom)[..., 0]
    layer[layer < threshold] = 0
    layer = np.floor(np.clip(layer, 0, 1) * 255)  # through an 8-bit image, as published
    layer = np.round(np.clip(_motion_blur(layer, radius, sigma, rng.uniform(-135, -45)), 0, 255)) / 255.0
    layer = layer[..., None].astype(np.float32)
    gray = (0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2])[..., None]
    x = blend * x + (1 - blend) * np.maximum(x, gray * 1.5 + 0.5)
    return np.clip(x + layer + np.rot90(layer, k=2), 0, 1) * 255


def _weather(x: np.ndarray, name: str, c, table: str, seed: int, rng: np.random.Generator) -> np.ndarray:
    h, w = x.shape[:2]
    if name == "snow":
        return _snow(x, c, rng)
    if name == "frost":
        return _frost(x, c, table, seed, rng)
    if name == "fog":
        x = x / 255.0
        peak = x.max()
        size = 1 << max(8, (max(h, w) - 1).bit_length())
        x = x + c[0] * _plasma(size, c[1], rng)[:h, :w, None]
        return np.clip(x * peak / (peak + c[0]), 0, 1) * 255
    # brightness: HSV value + c (clipped), hue and saturation kept: RGB scaled by V'/V (grey c where V = 0)
    x = x / 255.0
    v = x.max(axis=-1, keepdims=True)
    new_v = np.clip(v + c, 0, 1)
    out = np.where(v > 0, x * (new_v / np.where(v > 0, v, 1.0)), new_v)
    return np.clip(out, 0, 1) * 255


def _elastic(x: np.ndarray, c, rng: np.random.Generator) -> np.ndarray:
    alpha, sigma, affine = c
    h, w = x.shape[:2]
    x = x.astype(np.float32) / 255.0
    # a random affine map moving three points (x, y) around the centre by up to `affine` pixels
    centre = np.array([w // 2, h // 2], dtype=np.float64)
    sq = min(h, w) // 3
    src = np.array([centre + sq, [centre[0] + sq, centre[1] - sq], centre - sq])
    dst = src + rng.uniform(-affine, affine, size=src.shape)
    fwd = np.linalg.solve(np.c_[src, np.ones(3)], dst).T  # 2x3: dst = fwd @ [x, y, 1]
    inv = np.linalg.inv(np.r_[fwd, [[0.0, 0.0, 1.0]]])  # output pixel -> input pixel, (x, y)
    matrix = np.array([[inv[1, 1], inv[1, 0]], [inv[0, 1], inv[0, 0]]])  # in (row, col)
    offset = np.array([inv[1, 2], inv[0, 2]])
    x = np.stack([ndimage.affine_transform(x[..., k], matrix, offset, order=1, mode="mirror")
                  for k in range(x.shape[2])], axis=-1)
    dx = (_gauss(rng.uniform(-1, 1, size=(h, w)), sigma, mode="reflect", truncate=3) * alpha).astype(np.float32)
    dy = (_gauss(rng.uniform(-1, 1, size=(h, w)), sigma, mode="reflect", truncate=3) * alpha).astype(np.float32)
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    coords = [rows + dy, cols + dx]
    out = np.stack([ndimage.map_coordinates(x[..., k], coords, order=1, mode="reflect") for k in range(x.shape[2])],
                   axis=-1)
    return np.clip(out, 0, 1) * 255


def _digital(x: np.ndarray, name: str, c, rng: np.random.Generator) -> np.ndarray:
    h, w = x.shape[:2]
    if name == "contrast":
        x = x / 255.0
        means = x.mean(axis=(0, 1), keepdims=True)
        return np.clip((x - means) * c + means, 0, 1) * 255
    if name == "elastic_transform":
        return _elastic(x, c, rng)
    img = Image.fromarray(x, mode="RGB")
    if name == "pixelate":
        img = img.resize((int(w * c), int(h * c)), Image.BOX).resize((w, h), Image.BOX)
        return np.array(img)
    buf = io.BytesIO()  # jpeg_compression
    img.save(buf, "JPEG", quality=int(c))
    buf.seek(0)
    with Image.open(buf) as decoded:
        return np.array(decoded.convert("RGB"))


def corrupt(image: np.ndarray, name: str, severity: int, *, seed: int = 0, index: int = 0,
            table: str = "imagenet") -> np.ndarray:
    """One image corrupted by ``name`` at ``severity`` (1..5) with ``table``'s published parameters.

    Args:
        image: uint8 ``[H, W, 3]`` (RGB).
        name: one of :data:`CORRUPTIONS`.
        severity: 1 (mildest) .. 5.
        seed: seed of the draws; with ``index`` it fixes the result.
        index: the image's index in its dataset (each image gets its own draws).
        table: ``"imagenet"`` (224 px images) or ``"cifar"`` (32 px images).

    Returns:
        uint8 ``[H, W, 3]``.

    Raises:
        ArgumentError: an unknown name, table or severity, or an image that is not uint8 ``[H, W, 3]``.
    """
    if name not in CORRUPTIONS:
        raise ArgumentError(f"Unknown corruption {name!r}. Valid values are {{{', '.join(CORRUPTIONS)}}}.")
    if table not in TABLES:
        raise ArgumentError(f"Unknown corruption table {table!r}. Valid values are {{{', '.join(TABLES)}}}.")
    if severity not in SEVERITIES or isinstance(severity, bool):
        raise ArgumentError(f"Invalid severity {severity!r} for corruption {name}. Valid values are 1..5.")
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 8:
        raise ArgumentError(f"corrupt({name}): expected a uint8 RGB image [H, W, 3] with H, W >= 8, got "
                            f"{image.dtype} {tuple(image.shape)}; convert with np.asarray(pil_image.convert('RGB'))")
    c = TABLES[table][name][severity - 1]
    rng = np.random.default_rng([int(seed), CORRUPTIONS.index(name), int(severity), int(index)])
    if name in CATEGORIES["noise"]:
        out = _noise(image, name, c, rng)
    elif name in CATEGORIES["blur"]:
        out = _blur(image, name, c, rng)
    elif name in CATEGORIES["weather"]:
        out = _weather(image, name, c, table, seed, rng)
    else:
        out = _digital(image, name, c, rng)
    return out if out.dtype == np.uint8 else _to_uint8(out)


def corrupt_batch(images: np.ndarray, name: str, severity: int, *, seed: int = 0, start: int = 0,
                  table: str = "imagenet") -> np.ndarray:
    """:func:`corrupt` of each uint8 ``[N, H, W, 3]`` image, image ``n`` drawn as dataset index ``start + n``."""
    return np.stack([corrupt(im, name, severity, seed=seed, index=start + n, table=table)
                     for n, im in enumerate(images)])
