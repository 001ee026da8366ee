"""Counter-based randomness (``imagenet_plus._rng``): determinism, independence, scalar and array inputs agree."""

from __future__ import annotations

import numpy as np

from imagenet_plus import _rng


def test_scalar_inputs_equal_array_rows():
    rng = np.random.default_rng(1)
    for _ in range(500):
        seed, s, a = int(rng.integers(0, 2**63)), int(rng.integers(0, 2**40)), int(rng.integers(0, 2**20))
        stream, n = int(rng.integers(0, 200)), int(rng.integers(1, 12))
        one = _rng.uniforms(seed, s, a, n, stream)
        vec = _rng.uniforms(seed, np.array([s, s + 1]), np.array([a, a]), n, stream)
        assert one.shape == (n,) and np.array_equal(one, vec[0])
        assert _rng.record_keys(seed, s, a, stream).shape == ()
        assert _rng.record_keys(seed, s, a, stream) == _rng.record_keys(seed, [s], a, stream)[0]


def test_known_values():
    """SplitMix64 by hand (Python integers) for one record: the stored parameters depend on these exact bits."""
    mask = 2**64 - 1

    def mix(x):
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & mask
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & mask
        return x ^ (x >> 31)

    golden = 0x9E3779B97F4A7C15
    seed, s, a, stream = 2**63 + 12345, 987654321, 77, 3
    key = mix(seed ^ mix((stream + golden) & mask))
    key = mix(key ^ ((s * golden) & mask))
    key = mix(key ^ ((a * 0xBF58476D1CE4E5B9 + golden) & mask))
    expected = [(mix((key + c * golden) & mask) >> 11) / 2**53 for c in range(1, 6)]
    assert _rng.uniforms(seed, s, a, 5, stream).tolist() == expected
    assert int(_rng.record_keys(seed, s, a, stream)) == key


def test_draws_depend_only_on_their_counters():
    grid = _rng.uniforms(7, np.arange(50)[:, None], np.arange(40)[None, :], 3, stream=2)
    assert grid.shape == (50, 40, 3) and ((grid >= 0) & (grid < 1)).all()
    # any sub-block computed alone (another "batch", "worker" or "resume point") is identical
    assert np.array_equal(grid[13:29, 5:17], _rng.uniforms(7, np.arange(13, 29)[:, None], np.arange(5, 17), 3, 2))
    assert np.array_equal(grid[3, 4], _rng.uniforms(7, 3, 4, 3, stream=2))
    # seeds and streams give other numbers
    assert not np.array_equal(grid, _rng.uniforms(8, np.arange(50)[:, None], np.arange(40)[None, :], 3, stream=2))
    assert not np.array_equal(grid, _rng.uniforms(7, np.arange(50)[:, None], np.arange(40)[None, :], 3, stream=3))


def test_uniformity_and_independence():
    u = _rng.uniforms(0, np.arange(20000), 0, 2).reshape(-1, 2)
    assert abs(u.mean() - 0.5) < 0.01 and abs(u.var() - 1 / 12) < 0.005
    hist = np.histogram(u[:, 0], bins=10, range=(0, 1))[0]
    chi2 = ((hist - 2000) ** 2 / 2000).sum()
    assert chi2 < 30  # 9 degrees of freedom: p ~ 4e-4
    assert abs(np.corrcoef(u[:, 0], u[:, 1])[0, 1]) < 0.03
