"""Policy replay on real photos: determinism, batch == per-record, torchvision semantics, bad input."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import functional as F

from _augment_photos import photos
from imagenet_plus.augment import PRESETS, create_policy
from imagenet_plus.errors import PolicyError
from imagenet_plus.imageio import to_tensor

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
S = 48


@pytest.fixture(scope="module")
def imgs():
    return photos()


def _records(policy, imgs, n_aug=6, seed=3):
    names = sorted(imgs)
    H = [imgs[k].size[1] for k in names]
    W = [imgs[k].size[0] for k in names]
    i = np.repeat(np.arange(len(names)), n_aug)
    j = np.tile(np.arange(n_aug), len(names))
    prm = policy.sample(seed, i, j, np.asarray(H)[i], np.asarray(W)[i], num_samples=len(names))
    return names, i, j, prm


def _one(prm, r):
    return {k: v[r] for k, v in prm.items()}


def _apply_all(policy, imgs, names, i, j, prm):
    """Per-record CPU replay, the partner being record (p, j) with its own stored params."""
    row = {(a, b): r for r, (a, b) in enumerate(zip(i, j))}
    out = []
    for r in range(len(i)):
        one = _one(prm, r)
        if policy.uses_mix and int(one["mix_kind"]):
            p = int(one["mix_partner"])
            out.append(policy.apply(imgs[names[i[r]]], one, imgs[names[p]], _one(prm, row[(p, j[r])])))
        else:
            out.append(policy.apply(imgs[names[i[r]]], one))
    return torch.stack(out)


@pytest.mark.parametrize("name", list(PRESETS))
def test_apply_is_deterministic_and_batch_equals_per_record(name, imgs):
    policy = create_policy(name, output_size=S)
    names, i, j, prm = _records(policy, imgs)
    a = _apply_all(policy, imgs, names, i, j, prm)
    b = _apply_all(policy, imgs, names, i, j, prm)
    assert a.shape == (len(i), 3, S, S) and a.dtype == torch.uint8
    assert torch.equal(a, b)
    # finish on the whole batch == finish per record (bit-exact on the CPU)
    crops = torch.stack([policy.crop(imgs[names[i[r]]], _one(prm, r)) for r in range(len(i))])
    partners = pprm = None
    if policy.uses_mix:
        row = {(x, y): r for r, (x, y) in enumerate(zip(i, j))}
        prow = [row[(int(prm["mix_partner"][r]), j[r])] for r in range(len(i))]
        partners = torch.stack([policy.crop(imgs[names[i[q]]], _one(prm, q)) for q in prow])
        pprm = {k: v[prow] for k, v in prm.items()}
    batched = policy.finish(crops, prm, partners, pprm)
    assert torch.equal(batched, a)
    # reversed batch order gives the same records
    rev = policy.finish(crops.flip(0), {k: v[::-1].copy() for k, v in prm.items()},
                        None if partners is None else partners.flip(0),
                        None if pprm is None else {k: v[::-1].copy() for k, v in pprm.items()})
    assert torch.equal(rev.flip(0), a)
    assert (a.float().std(dim=(1, 2, 3)) > 0).all()


def test_replay_is_identical_in_another_process(imgs):
    policy = create_policy("rrc+mix+ra/re", output_size=S)
    names, i, j, prm = _records(policy, imgs, n_aug=3)
    here = hashlib.sha256(_apply_all(policy, imgs, names, i, j, prm).numpy().tobytes()).hexdigest()
    code = (
        "import hashlib, sys, numpy as np, torch; torch.set_num_threads(1); sys.path[:0] = ['tests', '.'];"
        "from test_augment_policy import _records, _apply_all; from _augment_photos import photos;"
        "from imagenet_plus.augment import create_policy;"
        f"p = create_policy('rrc+mix+ra/re', output_size={S}); im = photos();"
        "n, i, j, prm = _records(p, im, n_aug=3);"
        "print(hashlib.sha256(_apply_all(p, im, n, i, j, prm).numpy().tobytes()).hexdigest())"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == here


def test_sample_depends_only_on_the_record(imgs):
    policy = create_policy("rrc+mix+ra/re")
    full = policy.sample(11, np.arange(50), 4, 375, 500, num_samples=50)
    part = policy.sample(11, np.arange(20, 30)[::-1], 4, 375, 500, num_samples=50)
    for k in full:
        assert full[k].dtype == np.dtype({f.name: f.dtype for f in policy.fields}[k])
        np.testing.assert_array_equal(full[k][20:30][::-1], part[k])
    other = policy.sample(12, np.arange(50), 4, 375, 500, num_samples=50)
    assert not np.array_equal(other["crop"], full["crop"])


def test_rrc_crop_is_torchvision_resized_crop(imgs):
    policy = create_policy("rrc", output_size=S, hflip=0.0)
    for name in ("china", "flower_tall", "coffee_wide", "tiny"):
        img = imgs[name]
        W, H = img.size
        prm = policy.sample(0, 0, np.arange(20), H, W)
        from imagenet_plus.augment import sampling

        for r in range(20):
            q = prm["crop"][r].astype(np.int64)
            h, w = int(sampling.dequantize(q[2], H)), int(sampling.dequantize(q[3], W))
            t, le = int(sampling.dequantize(q[0], H)), int(sampling.dequantize(q[1], W))
            ref = F.resized_crop(to_tensor(img), t, le, h, w, [S, S], antialias=True)
            assert torch.equal(policy.apply(img, _one(prm, r)), ref)


def test_flip_and_pad_crop_semantics(imgs):
    img = imgs["chelsea"]
    W, H = img.size
    flip = create_policy("rrc", output_size=S, hflip=1.0)
    noflip = create_policy("rrc", output_size=S, hflip=0.0)
    a = flip.sample(0, 0, 0, H, W)
    b = noflip.sample(0, 0, 0, H, W)
    assert torch.equal(flip.apply(img, _one(a, 0)), noflip.apply(img, _one(b, 0)).flip(-1))
    cifar = create_policy("cifar", output_size=S, hflip=0.0, randaugment=None, erasing=None)
    prm = cifar.sample(0, 0, np.arange(10), H, W)
    resized = F.resize(to_tensor(img), [S], antialias=True)
    padded = F.pad(resized, [16], fill=0)
    for r in range(10):
        t, le = (int(x) for x in prm["crop"][r])
        assert t <= padded.shape[1] - S and le <= padded.shape[2] - S
        assert torch.equal(cifar.apply(img, _one(prm, r)), padded[:, t:t + S, le:le + S])


def test_mixing_semantics(imgs):
    policy = create_policy("rrc+mix+ra/re", output_size=S)
    names, i, j, prm = _records(policy, imgs, n_aug=8)
    kinds = prm["mix_kind"]
    assert set(np.unique(kinds)) == {1, 2}
    assert (prm["mix_partner"] != i).all() and (prm["mix_partner"] < len(names)).all()
    row = {(x, y): r for r, (x, y) in enumerate(zip(i, j))}
    for r in range(len(i)):
        one = _one(prm, r)
        p = int(one["mix_partner"])
        pp = _one(prm, row[(p, j[r])])
        mixed = policy.apply(imgs[names[i[r]]], one, imgs[names[p]], pp).float()
        own = policy.apply(imgs[names[i[r]]], {**one, "mix_kind": np.uint8(0)}).float()
        partner = policy.apply(imgs[names[p]], {**pp, "mix_kind": np.uint8(0)}).float()
        lam = np.float32(one["mix_lam"]) / np.float32(65535)
        if one["mix_kind"] == 1:
            assert torch.equal(mixed, (own * lam + partner * (1 - lam)).round())
        else:
            t, le, h, w = (int(x) for x in one["mix_box"])
            exp = own.clone()
            exp[:, t:t + h, le:le + w] = partner[:, t:t + h, le:le + w]
            assert torch.equal(mixed, exp)
            assert abs(lam - (1 - h * w / S ** 2)) < 1e-4


@pytest.mark.parametrize("name", ["camera_gray", "palette", "cmyk", "int16", "tiny"])
def test_odd_modes_and_tiny_images(name, imgs):
    from imagenet_plus.imageio import to_rgb_image

    policy = create_policy("rrc+ra/re", output_size=S)
    img = imgs[name]
    prm = policy.sample(0, 0, np.arange(8), img.size[1], img.size[0])
    for r in range(8):
        out = policy.apply(img, _one(prm, r))
        assert out.shape == (3, S, S) and torch.equal(out, policy.apply(to_rgb_image(img), _one(prm, r)))


def test_bad_params_and_inputs_raise_policy_error(imgs):
    policy = create_policy("rrc+mix+ra/re", output_size=S)
    img = imgs["china"]
    prm = policy.sample(0, 0, np.arange(4), 107, 160, num_samples=10)
    good = _one(prm, 0)
    with pytest.raises(PolicyError, match="mix_partner 10 is outside"):
        policy.check_params({**good, "mix_partner": np.uint32(10)}, num_samples=10)
    with pytest.raises(PolicyError, match="missing field 'erase'"):
        policy.apply(img, {k: v for k, v in good.items() if k != "erase"})
    with pytest.raises(PolicyError, match="outside the 48x48"):
        policy.apply(img, {**good, "erase": np.array([40, 0, 20, 5], np.uint8)})
    with pytest.raises(PolicyError, match="op id 15"):
        policy.apply(img, {**good, "ops": np.uint16(15 << 1)})
    with pytest.raises(PolicyError, match="shape"):
        policy.apply(img, {**good, "crop": np.zeros(3, np.uint16)})
    with pytest.raises(PolicyError, match="partner_image"):
        policy.apply(img, {**good, "mix_kind": np.uint8(1)})
    with pytest.raises(PolicyError, match="num_samples"):
        policy.sample(0, 0, 0, 10, 10)
    with pytest.raises(PolicyError, match="outside the dataset"):
        policy.sample(0, 12, 0, 10, 10, num_samples=10)
    with pytest.raises(PolicyError, match="heights/widths"):
        policy.sample(0, 0, 0, 0, 10, num_samples=10)
    with pytest.raises(PolicyError, match="uint8"):
        policy.finish(torch.zeros(2, 3, S, S), prm)
    with pytest.raises(PolicyError, match="mode"):
        policy.crop(img.convert("HSV"), good)


def test_normalize_and_eval_transform(imgs):
    from torchvision.transforms import v2

    from imagenet_plus.augment import create_eval_transform

    policy = create_policy("rrc")
    x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    ref = v2.Normalize(policy.mean, policy.std)(v2.ToDtype(torch.float32, scale=True)(x))
    torch.testing.assert_close(policy.normalize(x), ref)
    t = create_eval_transform()
    out = t(imgs["camera_gray"])
    assert out.shape == (3, 224, 224) and out.dtype == torch.float32
    with pytest.raises(PolicyError):
        create_eval_transform(300, 256)
