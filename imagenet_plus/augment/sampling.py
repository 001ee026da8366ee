"""Vectorised parameter draws from counter-based uniforms (no global RNG, no state).

Each function maps uniforms in [0, 1) (from :func:`imagenet_plus._rng.uniforms`)
to parameters with torchvision's (or timm's) sampling semantics.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["rrc_boxes", "erase_boxes", "beta", "cutmix_boxes", "QMAX", "quantize", "dequantize"]

#: Crop fractions are stored as integers in [0, QMAX] meaning value / QMAX.
QMAX = 65535


def quantize(pixels: np.ndarray, size: np.ndarray) -> np.ndarray:
    """``round(pixels / size * QMAX)`` in exact integer arithmetic (half up)."""
    p = np.asarray(pixels, dtype=np.int64)
    s = np.asarray(size, dtype=np.int64)
    return (2 * p * QMAX + s) // (2 * s)


def dequantize(q, size):
    """``round(q / QMAX * size)`` in exact integer arithmetic; inverse of :func:`quantize` for size <= QMAX."""
    return (2 * q * size + QMAX) // (2 * QMAX)


def rrc_boxes(u: np.ndarray, heights: np.ndarray, widths: np.ndarray, scale, ratio) -> np.ndarray:
    """torchvision ``RandomResizedCrop.make_params``: 10 attempts, then the centre-crop fallback.

    Args:
        u: uniforms ``[N, 40]`` (4 per attempt: area, log-ratio, top, left).
        heights, widths: source sizes ``[N]``.
        scale, ratio: the config ranges.

    Returns:
        int64 ``[N, 4]`` boxes (top, left, height, width) in source pixels.
    """
    n = u.shape[0]
    u = u.reshape(n, 10, 4)
    hh = heights.astype(np.float64)[:, None]
    ww = widths.astype(np.float64)[:, None]
    area = hh * ww
    target = area * (scale[0] + u[..., 0] * (scale[1] - scale[0]))
    lr0, lr1 = math.log(ratio[0]), math.log(ratio[1])
    aspect = np.exp(lr0 + u[..., 1] * (lr1 - lr0))
    w = np.rint(np.sqrt(target * aspect))
    h = np.rint(np.sqrt(target / aspect))
    ok = (w > 0) & (w <= ww) & (h > 0) & (h <= hh)
    top = np.floor(u[..., 2] * (hh - h + 1))
    left = np.floor(u[..., 3] * (ww - w + 1))
    first = np.argmax(ok, axis=1)
    rows = np.arange(n)
    found = ok[rows, first]
    out = np.stack([top[rows, first], left[rows, first], h[rows, first], w[rows, first]], axis=1)
    # Fallback: centre crop at the nearest allowed aspect ratio (torchvision's exact rule).
    H = heights.astype(np.int64)
    W = widths.astype(np.int64)
    in_ratio = W / H
    lo, hi = min(ratio), max(ratio)
    fw = np.where(in_ratio < lo, W, np.where(in_ratio > hi, np.rint(H * hi), W)).astype(np.int64)
    fh = np.where(in_ratio < lo, np.rint(W / lo), H).astype(np.int64)
    fb = np.stack([(H - fh) // 2, (W - fw) // 2, fh, fw], axis=1)
    return np.where(found[:, None], out, fb).astype(np.int64)


def erase_boxes(u: np.ndarray, size: int, p: float, scale, ratio) -> np.ndarray:
    """torchvision ``RandomErasing.make_params`` on an ``size x size`` image.

    Args:
        u: uniforms ``[N, 41]`` (apply, then 4 per attempt: area, log-ratio, top, left).

    Returns:
        int64 ``[N, 4]`` (top, left, height, width); all zero where nothing is erased.
    """
    n = u.shape[0]
    apply = u[:, 0] < p
    a = u[:, 1:].reshape(n, 10, 4)
    area = float(size * size)
    ea = area * (scale[0] + a[..., 0] * (scale[1] - scale[0]))
    lr0, lr1 = math.log(ratio[0]), math.log(ratio[1])
    aspect = np.exp(lr0 + a[..., 1] * (lr1 - lr0))
    h = np.rint(np.sqrt(ea * aspect))
    w = np.rint(np.sqrt(ea / aspect))
    ok = (h < size) & (w < size)
    top = np.floor(a[..., 2] * (size - h + 1))
    left = np.floor(a[..., 3] * (size - w + 1))
    first = np.argmax(ok, axis=1)
    rows = np.arange(n)
    keep = apply & ok[rows, first] & (h[rows, first] > 0) & (w[rows, first] > 0)
    out = np.stack([top[rows, first], left[rows, first], h[rows, first], w[rows, first]], axis=1)
    return np.where(keep[:, None], out, 0).astype(np.int64)


_CANDIDATES = 12


def _log_gamma_variates(u: np.ndarray, shape: float) -> np.ndarray:
    """log of Gamma(shape, 1) draws by Marsaglia-Tsang with a fixed number of candidates.

    ``u``: uniforms ``[N, 3 * _CANDIDATES + 1]``. The acceptance rate is >= 95% per
    candidate, so all 12 fail with probability < 1e-15; then the mode-like ``d`` is used.
    """
    boost = shape < 1.0
    a = shape + 1.0 if boost else shape
    d = a - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    cand = u[:, : 3 * _CANDIDATES].reshape(-1, _CANDIDATES, 3)
    u1 = 1.0 - cand[..., 0]  # (0, 1]
    x = np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * math.pi * cand[..., 1])
    v = (1.0 + c * x) ** 3
    with np.errstate(divide="ignore", invalid="ignore"):
        logv = np.log(np.where(v > 0, v, 1.0))
        accept = (v > 0) & (np.log(1.0 - cand[..., 2]) < 0.5 * x * x + d - d * v + d * logv)
    first = np.argmax(accept, axis=1)
    rows = np.arange(u.shape[0])
    logg = np.where(accept[rows, first], math.log(d) + logv[rows, first], math.log(d))
    if boost:
        logg = logg + np.log(1.0 - u[:, -1]) / shape
    return logg


def beta(u: np.ndarray, alpha: float) -> np.ndarray:
    """Beta(alpha, alpha) draws ``[N]`` from uniforms ``[N, 2 * (3 * 12 + 1)]`` (ratio of two gammas)."""
    k = 3 * _CANDIDATES + 1
    g1 = _log_gamma_variates(u[:, :k], alpha)
    g2 = _log_gamma_variates(u[:, k: 2 * k], alpha)
    return 1.0 / (1.0 + np.exp(np.clip(g2 - g1, -700.0, 700.0)))


#: uniforms :func:`beta` consumes per draw.
BETA_UNIFORMS = 2 * (3 * _CANDIDATES + 1)


def cutmix_boxes(lam: np.ndarray, u: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """timm's ``rand_bbox`` (no margin) and the lambda corrected from the clipped box.

    Args:
        lam: Beta draws ``[N]``.
        u: uniforms ``[N, 2]`` (centre y, centre x).
        size: output side S.

    Returns:
        (int64 ``[N, 4]`` boxes (top, left, height, width), float64 ``[N]`` corrected lambda).
    """
    cut = np.floor(size * np.sqrt(1.0 - lam)).astype(np.int64)
    cy = np.floor(u[:, 0] * size).astype(np.int64)
    cx = np.floor(u[:, 1] * size).astype(np.int64)
    y0 = np.clip(cy - cut // 2, 0, size)
    y1 = np.clip(cy + cut // 2, 0, size)
    x0 = np.clip(cx - cut // 2, 0, size)
    x1 = np.clip(cx + cut // 2, 0, size)
    boxes = np.stack([y0, x0, y1 - y0, x1 - x0], axis=1)
    empty = (boxes[:, 2] == 0) | (boxes[:, 3] == 0)
    boxes[empty] = 0
    lam_c = 1.0 - boxes[:, 2] * boxes[:, 3] / float(size * size)
    return boxes, lam_c
