"""Counter-based random numbers: one independent stream per (seed, sample, augmentation).

A record's random draws depend only on ``(seed, sample_index, aug_index, stream)``,
never on batch size, worker count, world size or where a build was resumed.
The generator is a SplitMix64-style hash evaluated on counters, fully
vectorised in numpy (uint64 arithmetic wraps modulo 2**64 by definition).
"""

from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix64(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * _M1
        x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


_MASK = 0xFFFFFFFFFFFFFFFF
_GOLDEN_INT, _M1_INT, _M2_INT = int(_GOLDEN), int(_M1), int(_M2)
_SCALE = 1.0 / 9007199254740992.0


def _mix64_int(x: int) -> int:
    x = ((x ^ (x >> 30)) * _M1_INT) & _MASK
    x = ((x ^ (x >> 27)) * _M2_INT) & _MASK
    return x ^ (x >> 31)


def _uniforms_scalar(seed: int, s: int, a: int, n: int, stream: int) -> np.ndarray:
    """:func:`uniforms` for one record with Python integers (no numpy per-call overhead); same values."""
    base = _mix64_int((seed & _MASK) ^ _mix64_int((stream + _GOLDEN_INT) & _MASK))
    k = _mix64_int(base ^ ((s * _GOLDEN_INT) & _MASK))
    k = _mix64_int(k ^ ((a * _M1_INT + _GOLDEN_INT) & _MASK))
    return np.array([(_mix64_int((k + c * _GOLDEN_INT) & _MASK) >> 11) * _SCALE for c in range(1, n + 1)])


def record_keys(seed: int, sample_idx, aug_idx, stream: int = 0) -> np.ndarray:
    """One 64-bit key per record; ``sample_idx`` and ``aug_idx`` broadcast together."""
    s = np.asarray(sample_idx, dtype=np.uint64)
    a = np.asarray(aug_idx, dtype=np.uint64)
    base = _mix64(np.uint64(seed & 0xFFFFFFFFFFFFFFFF) ^ _mix64(np.uint64(stream) + _GOLDEN))
    with np.errstate(over="ignore"):
        k = _mix64(base ^ (s * _GOLDEN))
        k = _mix64(k ^ (a * _M1 + _GOLDEN))
    return k


def uniforms(seed: int, sample_idx, aug_idx, n: int, stream: int = 0) -> np.ndarray:
    """Uniform floats in [0, 1), shape ``broadcast(sample_idx, aug_idx).shape + (n,)``.

    Args:
        seed: the build seed.
        sample_idx: sample index (scalar or array).
        aug_idx: augmentation index (scalar or array, broadcast with ``sample_idx``).
        n: how many draws per record.
        stream: a small integer naming the purpose of the draws (so that two
            consumers of randomness never share numbers).
    """
    if isinstance(sample_idx, (int, np.integer)) and isinstance(aug_idx, (int, np.integer)) \
            and sample_idx >= 0 and aug_idx >= 0:
        return _uniforms_scalar(int(seed), int(sample_idx), int(aug_idx), n, int(stream))
    keys = record_keys(seed, sample_idx, aug_idx, stream)
    ctr = np.arange(1, n + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        bits = _mix64(keys[..., None] + ctr * _GOLDEN)
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)
