"""DeviceReplay: batched replay of device-path items equals the per-sample CPU replay."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from _augment_photos import photos
from imagenet_plus.augment import create_policy
from imagenet_plus.errors import ArgumentError, PolicyError
from imagenet_plus.replay import DeviceReplay
from imagenet_plus.targets import densify

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA; on a GPU machine run this test and benchmarks/gpu_check.py"))]
S = 64


def _no_mix(params):
    """Original-image params as the dataset makes them: the policy's own draw with mixing off."""
    out = dict(params)
    if "mix_kind" in out:
        out.update(mix_partner=np.zeros_like(out["mix_partner"]), mix_kind=np.zeros_like(out["mix_kind"]),
                   mix_lam=np.full_like(out["mix_lam"], 65535), mix_box=np.zeros_like(out["mix_box"]))
    return out


def _batch(policy, imgs, n, seed=0, p_original=0.0, num_classes=10, K=3):
    """Collated device-path items for ``n`` records and the per-sample CPU replay of each.

    Records drawn as originals (probability ``p_original``) carry their own freshly drawn params
    with mixing off, as ``ReinforcedDataset`` makes them, and zero partners.
    """
    S = policy.output_size
    names = sorted(imgs)
    N = len(names)
    i = np.arange(n) % N
    j = np.arange(n) // N
    sizes = np.array([imgs[k].size for k in names])
    prm = policy.sample(seed, i, j, sizes[i, 1], sizes[i, 0], num_samples=N)
    rng = np.random.default_rng(seed)
    is_orig = np.random.default_rng(seed + 1).random(n) < p_original
    images, partners, pparams, ref = [], [], {k: [] for k in prm}, []
    for r in range(n):
        one = {k: v[r] for k, v in prm.items()}
        images.append(policy.crop(imgs[names[i[r]]], one))
        if is_orig[r]:
            one = _no_mix(one)
            for k in prm:
                prm[k][r] = one[k]
            pp = {k: np.zeros_like(v) for k, v in one.items()}
            partners.append(torch.zeros(3, S, S, dtype=torch.uint8))
            ref.append(policy.apply(imgs[names[i[r]]], one))
        elif policy.uses_mix:
            p = int(one["mix_partner"])
            pp = policy.sample(seed, p, j[r], sizes[p, 1], sizes[p, 0], num_samples=N)
            pp = {k: v[0] for k, v in pp.items()}
            partners.append(policy.crop(imgs[names[p]], pp))
            ref.append(policy.apply(imgs[names[i[r]]], one, imgs[names[p]], pp))
        else:
            pp = {k: np.zeros_like(v) for k, v in one.items()}
            partners.append(torch.zeros(3, S, S, dtype=torch.uint8))
            ref.append(policy.apply(imgs[names[i[r]]], one))
        for k in prm:
            pparams[k].append(pp[k])
    ids = np.stack([rng.permutation(num_classes)[:K] for _ in range(n)])
    probs = np.sort(rng.dirichlet(np.ones(K + 1), size=n)[:, :K], axis=1)[:, ::-1].astype(np.float32)
    batch = {
        "image": torch.stack(images),
        "partner": torch.stack(partners),
        "params": {k: torch.from_numpy(v.astype(np.int64)) for k, v in prm.items()},
        "partner_params": {k: torch.from_numpy(np.stack(v).astype(np.int64)) for k, v in pparams.items()},
        "topk_ids": torch.from_numpy(ids).long(),
        "topk_probs": torch.from_numpy(probs.copy()),
        "is_original": torch.from_numpy(is_orig),
        "label": torch.from_numpy(rng.integers(0, num_classes, n)).long(),
    }
    return batch, torch.stack(ref)


@pytest.fixture(scope="module")
def imgs():
    return photos()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["rrc", "rrc+ra/re", "rrc+mix+ra/re", "cifar"])
def test_device_replay_matches_per_sample_replay(name, device, imgs):
    policy = create_policy(name, output_size=S)
    batch, ref = _batch(policy, imgs, 40)
    x, t = DeviceReplay(policy, 10, device=device)(batch)
    assert x.dtype == torch.float32 and x.shape == (40, 3, S, S) and x.device.type == device
    expected = policy.normalize(ref)
    if device == "cpu":
        assert torch.equal(x, expected)
    else:  # stated tolerance: <= 1 grey level mean absolute difference
        std = torch.tensor(policy.std).view(1, 3, 1, 1) * 255
        assert ((x.cpu() - expected).abs() * std).mean() <= 1.0
    torch.testing.assert_close(t.cpu(), densify(batch["topk_ids"], batch["topk_probs"], 10))
    torch.testing.assert_close(t.sum(1).cpu(), torch.ones(40))


@pytest.mark.parametrize("name", ["rrc+ra/re", "rrc+mix+ra/re"])
def test_originals_are_finished_unmixed_and_get_one_hot(name, imgs):
    policy = create_policy(name, output_size=S, erasing={"p": 1.0})
    batch, ref = _batch(policy, imgs, 30, p_original=0.5)
    orig = batch["is_original"]
    assert orig.any() and (~orig).any()
    replay = DeviceReplay(policy, 10, device="cpu")
    x, t = replay(batch)
    assert torch.equal(x, policy.normalize(ref))  # originals too: Policy.apply of their own params
    assert torch.equal(t[orig], torch.nn.functional.one_hot(batch["label"][orig], 10).float())
    # RandAugment and erasing reach the originals: no original is just its normalised crop.
    for r in torch.nonzero(orig).flatten().tolist():
        assert not torch.equal(x[r], policy.normalize(batch["image"][r])), r
        top, left, h, w = batch["params"]["erase"][r].tolist()
        assert h > 0 and w > 0 and torch.equal(ref[r][:, top:top + h, left:left + w],
                                               torch.zeros(3, h, w, dtype=torch.uint8))
    if policy.uses_mix:  # a stray mix in an original's params is ignored: originals are never mixed
        stray = dict(batch, params=dict(batch["params"], mix_kind=torch.where(orig, 1, batch["params"]["mix_kind"]),
                                        mix_lam=torch.where(orig, 30000, batch["params"]["mix_lam"])),
                     partner=torch.where(orig.view(-1, 1, 1, 1), 255, batch["partner"]))
        assert torch.equal(replay(stray)[0], x)


@pytest.mark.parametrize("device", DEVICES)
def test_teacher_top1_agrees(imgs, device):
    import timm

    torch.manual_seed(0)
    teacher = timm.create_model("resnet18", pretrained=False, num_classes=10).eval()
    policy = create_policy("rrc+ra/re", output_size=32)
    small = {k: v for k, v in imgs.items() if k in ("china", "astronaut", "chelsea", "camera_gray")}
    batch, ref = _batch(policy, small, 500)
    agree = []
    with torch.no_grad():
        b = teacher(policy.normalize(ref)).argmax(1)
        x, _ = DeviceReplay(policy, 10, device=device)(batch)
        agree.append((teacher(x.cpu()).argmax(1) == b).float().mean().item())
    assert min(agree) >= 0.99, agree


def test_bad_batches_raise_policy_error(imgs):
    policy = create_policy("rrc+ra/re", output_size=S)
    batch, _ = _batch(policy, imgs, 4)
    replay = DeviceReplay(policy, 10, device="cpu")
    with pytest.raises(PolicyError, match="lacks 'params'"):
        replay({k: v for k, v in batch.items() if k != "params"})
    bad = dict(batch, params={k: v for k, v in batch["params"].items() if k != "erase"})
    with pytest.raises(PolicyError, match="lack field 'erase'"):
        replay(bad)
    bad = dict(batch, params=dict(batch["params"], ops=batch["params"]["ops"] | (15 << 1)))
    with pytest.raises(PolicyError, match="op id 15"):
        replay(bad)
    with pytest.raises(ArgumentError, match="Unknown value 'hard' for argument densify"):
        DeviceReplay(policy, 10, densify="hard")
    with pytest.raises(ArgumentError, match="argument num_classes"):
        DeviceReplay(policy, 0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the error case cannot occur")
def test_device_replay_on_cuda_without_cuda_fails_at_construction():
    with pytest.raises(ArgumentError, match="CUDA is not available"):
        DeviceReplay(create_policy("rrc", output_size=S), 10, device="cuda")


def test_gpu_check_runs_on_cpu_small():
    res = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--device", "cpu", "--small"], cwd=ROOT,
                         capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["ok"] is True and out["agreement"]["mean_abs_diff"] == 0.0
    assert out["agreement"]["teacher_top1_agreement"] >= 0.99 and out["throughput"]["images_per_s"] > 0
