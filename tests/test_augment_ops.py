"""Sampling and op semantics against torchvision's own transforms, fed the same random numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import _augment as tv_augment
from torchvision.transforms.v2 import _geometry as tv_geometry

from imagenet_plus import _rng
from imagenet_plus.augment import RA_OPS, create_policy
from imagenet_plus.augment import ops as aops
from imagenet_plus.augment import sampling

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def photo64():
    from _augment_photos import photos
    from imagenet_plus.imageio import to_tensor

    return to_tensor(photos()["chelsea"].resize((64, 64)))


class _FedTorch:
    """Stands in for the ``torch`` module inside torchvision's make_params, serving fixed uniforms."""

    def __init__(self, u):
        self.u = u.reshape(10, 4)
        self.attempt = -1
        self.k = 0

    def empty(self, *_):
        outer = self

        class _T:
            def uniform_(self, a, b):
                if outer.k % 2 == 0:
                    outer.attempt += 1
                v = outer.u[outer.attempt, outer.k % 2]
                outer.k += 1
                return torch.tensor([a + v * (b - a)], dtype=torch.float64)
        return _T()

    def exp(self, t):
        return torch.exp(t)

    def randint(self, lo, hi, size):
        col = 2 if not hasattr(self, "_top") else 3
        self._top = True
        return torch.tensor([lo + math.floor(self.u[self.attempt, col] * (hi - lo))])

    def __getattr__(self, name):
        return getattr(torch, name)


@pytest.mark.parametrize("hw", [(375, 500), (500, 375), (8, 8), (40, 400), (400, 40), (1, 1), (3, 700)])
def test_rrc_boxes_match_torchvision_make_params(monkeypatch, hw):
    H, W = hw
    n = 200
    u = _rng.uniforms(7, np.arange(n), 0, 40, stream=1)
    ours = sampling.rrc_boxes(u, np.full(n, H), np.full(n, W), (0.08, 1.0), (3 / 4, 4 / 3))
    t = v2.RandomResizedCrop(224)
    for r in range(n):
        monkeypatch.setattr(tv_geometry, "torch", _FedTorch(u[r]))
        ref = t.make_params([torch.zeros(3, H, W, dtype=torch.uint8)])
        assert tuple(ours[r]) == (ref["top"], ref["left"], ref["height"], ref["width"]), (r, ours[r], ref)


def test_rrc_fallback_is_torchvision_centre_crop(monkeypatch):
    # Very elongated images make all 10 attempts fail often; check those rows explicitly.
    H, W = 4, 900
    u = _rng.uniforms(3, np.arange(50), 1, 40, stream=1)
    ours = sampling.rrc_boxes(u, np.full(50, H), np.full(50, W), (0.08, 1.0), (3 / 4, 4 / 3))
    assert (ours == np.array([0, (W - 5) // 2, 4, 5])).all(axis=1).any()


@pytest.mark.parametrize("size", [8, 64, 224])
def test_erase_boxes_match_torchvision_make_params(monkeypatch, size):
    n = 200
    u = _rng.uniforms(5, np.arange(n), 2, 41, stream=4)
    u[:, 0] = 0.0  # always apply; the p-test is checked below
    ours = sampling.erase_boxes(u, size, 0.25, (0.02, 0.33), (0.3, 3.3))
    t = v2.RandomErasing(p=1.0, value=0)
    for r in range(n):
        monkeypatch.setattr(tv_augment, "torch", _FedTorch(u[r, 1:]))
        ref = t.make_params([torch.zeros(3, size, size, dtype=torch.uint8)])
        exp = (0, 0, 0, 0) if ref["v"] is None or ref["h"] == 0 or ref["w"] == 0 else \
            (ref["i"], ref["j"], ref["h"], ref["w"])
        assert tuple(ours[r]) == exp
    u[:, 0] = 0.9
    assert (sampling.erase_boxes(u, size, 0.25, (0.02, 0.33), (0.3, 3.3)) == 0).all()


@pytest.mark.parametrize("op,negative", [(o, False) for o in RA_OPS] + [(o, True) for o in RA_OPS
                                                                         if o in aops.SIGNED_OPS])
def test_each_randaugment_op_matches_torchvision(monkeypatch, op, negative, photo64):
    """Our stored (op, sign) replays exactly what torchvision's RandAugment does for that choice."""
    ra = v2.RandAugment(num_ops=1, magnitude=9, num_magnitude_bins=31)
    monkeypatch.setattr(ra, "_get_random_item", lambda dct: (op, dct[op]))
    seed = next(s for s in range(100) if (torch.manual_seed(s), float(torch.rand(())) <= 0.5)[1] == negative)
    torch.manual_seed(seed)
    ref = ra(photo64)
    ours = aops.apply_randaugment(photo64[None], torch.tensor([[RA_OPS.index(op)]]), torch.tensor([[negative]]),
                                  magnitude=9, num_bins=31, interpolation="nearest", fill=0)[0]
    assert torch.equal(ref, ours)


def test_beta_sampler_matches_the_distribution():
    from scipy import stats

    n = 20000
    for alpha in (0.2, 1.0, 2.5):
        u = _rng.uniforms(1, np.arange(n), 0, sampling.BETA_UNIFORMS, stream=6)
        x = sampling.beta(u, alpha)
        assert np.isfinite(x).all() and (x >= 0).all() and (x <= 1).all()
        assert stats.kstest(x, stats.beta(alpha, alpha).cdf).pvalue > 1e-3, alpha


def test_cutmix_lambda_is_corrected_from_the_clipped_box():
    n = 500
    lam = sampling.beta(_rng.uniforms(1, np.arange(n), 0, sampling.BETA_UNIFORMS, 7), 1.0)
    boxes, lam_c = sampling.cutmix_boxes(lam, _rng.uniforms(1, np.arange(n), 0, 2, 8), 64)
    assert (boxes[:, 0] + boxes[:, 2] <= 64).all() and (boxes[:, 1] + boxes[:, 3] <= 64).all()
    np.testing.assert_allclose(lam_c, 1 - boxes[:, 2] * boxes[:, 3] / 64 ** 2)
    assert (lam_c >= lam - 1e-9).any() and (np.abs(lam_c - lam) > 0.01).any()  # clipping changed some


def test_quantized_crop_fractions_are_exact_for_every_pixel():
    for size in (1, 7, 375, 500, 4000, 65535):
        px = np.arange(size + 1)
        assert (sampling.dequantize(sampling.quantize(px, size), size) == px).all()


def test_sampled_ops_statistics():
    p = create_policy("rrc+ra/re", output_size=64)
    prm = p.sample(0, np.arange(4000), 0, 300, 400)
    code = prm["ops"].astype(np.int64)
    assert abs((code & 1).mean() - 0.5) < 0.03
    ops = np.concatenate([(code >> 1) & 15, (code >> 6) & 15])
    counts = np.bincount(ops, minlength=14)
    assert counts.shape == (14,) and counts.min() > 0.8 * len(ops) / 14
    erased = prm["erase"][:, 2] > 0
    assert abs(erased.mean() - 0.25) < 0.03


@pytest.mark.parametrize("op", RA_OPS)
def test_fast_paths_equal_torchvision_kernels_on_noise(op):
    """Gathers, tables and the integer blur equal torchvision's kernels on random images, sizes and batches."""
    g = torch.Generator().manual_seed(RA_OPS.index(op))
    for h, w, b in ((8, 8, 1), (33, 20, 3), (64, 64, 2)):
        x = torch.randint(0, 256, (b, 3, h, w), dtype=torch.uint8, generator=g)
        x[0, :, : h // 2] = (x[0, :, : h // 2] // 128) * 255  # saturated edges
        for neg in ((False, True) if op in aops.SIGNED_OPS else (False,)):
            for mag_bin in (0, 9, 30):
                m = aops.ra_magnitude(op, mag_bin, 31, h, w, neg)
                for fill in (0, 128):
                    ours = aops.apply_ra_op(x, op, m, "nearest", fill)
                    ref = aops._torchvision_op(x, op, m, "nearest", fill)
                    assert torch.equal(ours, ref), (op, h, w, neg, mag_bin, fill)


@pytest.mark.parametrize("op", ["Equalize", "Brightness", "Posterize", "Solarize"])
def test_table_paths_equal_torchvision_on_edge_images(op, photo64):
    """Constant, two-valued and odd-sized images: the CPU tables equal torchvision's kernel exactly."""
    g = torch.Generator().manual_seed(5)
    cases = [
        torch.full((1, 3, 9, 7), 200, dtype=torch.uint8),  # constant: Equalize leaves it (step 0)
        torch.randint(0, 2, (2, 3, 5, 11), dtype=torch.uint8, generator=g) * 255,  # two values
        torch.randint(0, 256, (1, 3, 1, 1), dtype=torch.uint8, generator=g),  # odd byte count
        torch.randint(0, 256, (3, 3, 224, 224), dtype=torch.uint8, generator=g),
        photo64[None] if photo64.ndim == 3 else photo64,
    ]
    cases[3][1, 1] = 17  # one constant channel inside a batch
    for x in cases:
        for mag_bin in (0, 9, 30):
            m = aops.ra_magnitude(op, mag_bin, 31, x.shape[-2], x.shape[-1], False)
            ours = aops.apply_ra_op(x, op, m, "nearest", 0)
            assert ours.dtype == torch.uint8 and ours.shape == x.shape
            assert torch.equal(ours, aops._torchvision_op(x, op, m, "nearest", 0)), (op, tuple(x.shape), mag_bin)


@pytest.mark.parametrize("op", ["ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"])
def test_bilinear_geometric_ops_equal_torchvision_kernels(op):
    """The cached-grid path (sync-free on CUDA) equals torchvision's affine/rotate kernel on the CPU, bit for bit."""
    g = torch.Generator().manual_seed(11 + RA_OPS.index(op))
    for h, w, b in ((8, 8, 1), (33, 20, 3), (64, 64, 2)):
        x = torch.randint(0, 256, (b, 3, h, w), dtype=torch.uint8, generator=g)
        for neg in (False, True):
            for mag_bin in (0, 9, 30):
                m = aops.ra_magnitude(op, mag_bin, 31, h, w, neg)
                for fill in (0, 128):
                    ours = aops.apply_ra_op(x, op, m, "bilinear", fill)
                    ref = aops._torchvision_op(x, op, m, "bilinear", fill)
                    assert torch.equal(ours, ref), (op, h, w, neg, mag_bin, fill)
                    assert ours is not x  # a new tensor even for the identity rotation, as torchvision


def test_grouped_randaugment_equals_records_one_by_one(photo64):
    """Many (op, sign) groups in one batch: the grouped gather/scatter gives each record's own result."""
    g = torch.Generator().manual_seed(3)
    x = torch.stack([photo64, photo64.flip(-1), photo64.flip(-2), photo64.transpose(-1, -2)] * 10)
    ops_ = torch.randint(0, len(RA_OPS), (40, 3), generator=g).numpy()
    neg = (torch.rand(40, 3, generator=g) < 0.5).numpy() & np.isin(ops_, [RA_OPS.index(o) for o in aops.SIGNED_OPS])
    out = aops.apply_randaugment(x, ops_, neg, magnitude=12, num_bins=31, interpolation="nearest", fill=5)
    for r in range(40):
        one = aops.apply_randaugment(x[r:r + 1], ops_[r:r + 1], neg[r:r + 1], magnitude=12, num_bins=31,
                                     interpolation="nearest", fill=5)
        assert torch.equal(out[r], one[0]), r
