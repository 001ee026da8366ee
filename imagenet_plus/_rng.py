"""Counter-based random numbers: one independent stream per (seed, sample, augmentation).

A record's random draws depend only on ``(seed, sample_index, aug_index, stream)``,
never on batch size, worker count, world size or where a build was resumed.
The generator is a SplitMix64-style hash evaluated on counters, fully
vectorised in numpy (uint64 arithmetic wraps modulo 2**64 by definition).
"""

from __future__ import annotations

import functools

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S11, _S27, _S30, _S31 = (np.uint64(k) for k in (11, 27, 30, 31))
_MASK = 0xFFFFFFFFFFFFFFFF


def _mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on a uint64 array of at least one dimension.

    Array arithmetic wraps modulo 2**64 silently (only numpy *scalars* warn on overflow),
    which is why every caller passes arrays.
    """
    x = (x ^ (x >> _S30)) * _M1
    x = (x ^ (x >> _S27)) * _M2
    return x ^ (x >> _S31)


@functools.lru_cache(maxsize=1024)
def _stream_key(seed: int, stream: int) -> np.ndarray:
    """The key of one (seed, stream) pair, shape ``(1,)`` (read-only use)."""
    return _mix64(np.array([seed & _MASK], np.uint64) ^ _mix64(np.array([stream & _MASK], np.uint64) + _GOLDEN))


def record_keys(seed: int, sample_idx, aug_idx, stream: int = 0) -> np.ndarray:
    """One 64-bit key per record; ``sample_idx`` and ``aug_idx`` broadcast together."""
    s = np.asarray(sample_idx, dtype=np.uint64)
    a = np.asarray(aug_idx, dtype=np.uint64)
    shape = np.broadcast_shapes(s.shape, a.shape)
    k = _mix64(_stream_key(int(seed), int(stream)) ^ (np.atleast_1d(s) * _GOLDEN))
    k = _mix64(k ^ (np.atleast_1d(a) * _M1 + _GOLDEN))
    return k.reshape(shape)


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
    keys = record_keys(seed, sample_idx, aug_idx, stream)
    ctr = np.arange(1, n + 1, dtype=np.uint64)
    bits = _mix64(np.atleast_1d(keys)[..., None] + ctr * _GOLDEN).reshape(keys.shape + (n,))
    return (bits >> _S11).astype(np.float64) * (1.0 / 9007199254740992.0)
