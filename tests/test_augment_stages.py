"""Each stage on its own (sample / check / apply) against torchvision's and timm's own transforms, the
shared ``ops`` field, the record layout pinned to the stores already built, and the composed policy
equal to the stage-by-stage application."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import _auto_augment as tv_auto_augment
from torchvision.transforms.v2 import _augment as tv_augment
from torchvision.transforms.v2 import _geometry as tv_geometry
from torchvision.transforms.v2 import functional as F

from _augment_photos import photos
from imagenet_plus import _rng
from imagenet_plus.augment import PRESETS, RA_OPS, create_policy
from imagenet_plus.augment import _device
from imagenet_plus.augment import ops as aops
from imagenet_plus.augment import sampling
from imagenet_plus.augment.stages import (Batch, Erasing, Flip, Mixing, PadCrop, RandAugment, Records,
                                          ResizedCrop, Slot, Stage, pack_slots)
from imagenet_plus.errors import PolicyError
from imagenet_plus.imageio import to_tensor
from test_augment_ops import _FedTorch

S = 32


@pytest.fixture(scope="module")
def imgs():
    return photos()


def _stage(policy, kind):
    return next(s for s in policy.stages if isinstance(s, kind))


def _records(n, H=375, W=500, seed=9, aug=1, num_samples=None):
    i = np.arange(n, dtype=np.int64)
    return Records(seed, i, np.full(n, aug, np.int64), np.full(n, H, np.int64), np.full(n, W, np.int64),
                   num_samples)


def _batch(policy, params):
    return policy._batch(params, "test")


# ----------------------------------------------------------------------------- layout
def test_fields_and_bytes_per_record_are_the_documented_layout():
    sizes = {name: create_policy(name).params_nbytes for name in PRESETS}
    assert sizes == {"rrc": 9, "rrc+mix": 20, "rrc+ra/re": 14, "rrc+mix+ra/re": 25, "cifar": 10}
    p = create_policy("rrc+mix+ra/re")
    assert [(f.name, f.dtype, f.shape, f.low, f.high) for f in p.fields] == [
        ("crop", "<u2", (4,), 0, 65535), ("ops", "<u2", (), 0, 2**11 - 1), ("erase", "|u1", (4,), 0, 224),
        ("mix_partner", "<u4", (), 0, 2**32 - 1), ("mix_kind", "|u1", (), 0, 2), ("mix_lam", "<u2", (), 0, 65535),
        ("mix_box", "|u1", (4,), 0, 224)]
    assert [f.dtype for f in create_policy("rrc+mix+ra/re", output_size=256).fields if f.shape == (4,)] == \
        ["<u2", "<u2", "<u2"]
    assert [(f.name, f.shape) for f in create_policy("cifar").fields][:2] == [("crop", (2,)), ("ops", ())]
    # the ops field: 1 flip bit + 5 bits per RandAugment op, in the smallest unsigned dtype
    for num_ops, dtype in ((0, "|u1"), (1, "|u1"), (2, "<u2"), (3, "<u2"), (4, "<u4"), (6, "<u4")):
        ops = create_policy("rrc+ra/re", randaugment={"num_ops": num_ops}).fields[1]
        assert (ops.name, ops.dtype, ops.high) == ("ops", dtype, 2 ** (1 + 5 * num_ops) - 1)


@pytest.mark.parametrize("name,over,expected", [
    ("rrc", {}, "f36f17df7c0c458b"),
    ("rrc+mix", {}, "98beb645ab80c492"),
    ("rrc+ra/re", {}, "cfcd1c1f5d6379fd"),
    ("rrc+mix+ra/re", {}, "7832f9e45e8b50c6"),
    ("cifar", {}, "f19294c3094f3764"),
    ("rrc+mix+ra/re", {"output_size": 300}, "8050db938913baa1"),
    ("rrc+ra/re", {"randaugment": {"num_ops": 6}}, "5b99b8f1edfef5de"),
])
def test_sampled_records_are_byte_identical_to_the_stores_already_built(name, over, expected):
    """Digests recorded with the pre-stage Policy (git main before issue #10): the same seed and config
    must keep giving the same bytes, or stores already built would replay other augmentations."""
    policy = create_policy(name, **over)
    i = np.repeat(np.arange(40), 5)
    j = np.tile(np.arange(5), 40)
    prm = policy.sample(2024, i, j, 37 + (i * 53) % 700, 41 + (i * 97) % 900, num_samples=40)
    h = hashlib.sha256()
    for f in policy.fields:
        a = prm[f.name]
        h.update(f"{f.name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    assert h.hexdigest()[:16] == expected


# ----------------------------------------------------------------------------- slots
def test_slots_pack_bits_in_stage_order_and_any_stage_can_read_another():
    class Tag(Stage):
        name, bits = "tag", 3

        def sample(self, records, out):
            self.slot.put(out, np.arange(records.size) % 8)

    flip, tag = Flip(1.0), Tag()
    field = pack_slots([Stage(), flip, tag])
    assert field.name == "ops" and field.dtype == "|u1" and field.high == 15
    assert flip.slot == Slot("ops", 0, 1) and tag.slot == Slot("ops", 1, 3)
    out: dict = {}
    recs = _records(10)
    flip.sample(recs, out)
    tag.sample(recs, out)
    word = out["ops"]
    assert (word == 1 + 2 * (np.arange(10) % 8)).all()
    assert (tag.slot.get(word) == np.arange(10) % 8).all() and (flip.slot.get(word) == 1).all()
    assert tag.slot.get(int(word[3])) == 3  # Python ints too (one record on the CPU path)
    assert pack_slots([Stage()]) is None


# ----------------------------------------------------------------------------- geometry
@pytest.mark.parametrize("hw", [(375, 500), (500, 375), (40, 400), (3, 700)])
def test_resized_crop_samples_torchvisions_boxes_and_crops_them(monkeypatch, imgs, hw):
    H, W = hw
    stage = _stage(create_policy("rrc", output_size=S), ResizedCrop)
    recs = _records(30, H, W, seed=4)
    out: dict = {}
    stage.sample(recs, out)
    u = _rng.uniforms(4, recs.sample_idx, recs.aug_idx, 40, stream=ResizedCrop.STREAM)
    t = v2.RandomResizedCrop(S)
    for r in range(30):
        monkeypatch.setattr(tv_geometry, "torch", _FedTorch(u[r]))
        ref = t.make_params([torch.zeros(3, H, W, dtype=torch.uint8)])
        q = out["crop"][r]
        assert [int(sampling.dequantize(int(v), n)) for v, n in zip(q, (H, W, H, W))] == \
            [ref["top"], ref["left"], ref["height"], ref["width"]]
    monkeypatch.undo()
    img = imgs["china"]
    W, H = img.size
    out = {}
    stage.sample(_records(6, H, W), out)
    for q in out["crop"]:
        box = [int(sampling.dequantize(int(v), n)) for v, n in zip(q, (H, W, H, W))]
        ref = F.resized_crop(to_tensor(img), *box, [S, S], antialias=True)
        assert torch.equal(stage.crop(img, {"crop": q}), ref)  # PIL input
        assert torch.equal(stage.crop(to_tensor(img), {"crop": q}), ref)  # tensor input


def test_pad_crop_draws_torchvisions_offsets_and_crops_the_padded_image(monkeypatch, imgs):
    img = imgs["chelsea"]
    W, H = img.size
    policy = create_policy("cifar", output_size=S, geometry={"padding": 4, "fill": 7})
    stage = _stage(policy, PadCrop)
    recs = _records(25, H, W)
    out: dict = {}
    stage.sample(recs, out)
    u = _rng.uniforms(9, recs.sample_idx, recs.aug_idx, 2, stream=PadCrop.STREAM)
    resized = F.resize(to_tensor(img), [S], antialias=True)
    for r in range(25):
        draws = iter(u[r])

        class _Torch:
            def randint(self, lo, hi, size):
                return torch.tensor(lo + math.floor(next(draws) * (hi - lo)))

            def __getattr__(self, name):
                return getattr(torch, name)

        monkeypatch.setattr(tv_geometry, "torch", _Torch())
        ref = v2.RandomCrop(S, padding=4, fill=7).make_params([resized])
        assert tuple(out["crop"][r]) == (ref["top"], ref["left"])
        monkeypatch.undo()
        expected = F.crop(F.pad(resized, [4], fill=7), ref["top"], ref["left"], S, S)
        assert torch.equal(stage.crop(img, {"crop": out["crop"][r]}), expected)
    with pytest.raises(PolicyError, match="does not fit"):
        stage.crop(img, {"crop": np.array([S + 9, 0])})


# ----------------------------------------------------------------------------- flip
def test_flip_draws_with_its_probability_and_flips_like_torchvision(imgs):
    for p, rate in ((0.0, 0.0), (0.3, 0.3), (1.0, 1.0)):
        stage = Flip(p)
        pack_slots([stage])
        out: dict = {}
        stage.sample(_records(4000), out)
        assert abs(out["ops"].mean() - rate) < 0.03
    x = to_tensor(imgs["astronaut"])[:, :S, :S]
    assert torch.equal(stage.crop(x, {"ops": np.uint8(1)}), v2.RandomHorizontalFlip(p=1.0)(x))
    assert stage.crop(x, {"ops": np.uint8(0)}) is x
    assert torch.equal(stage.crop(x, {"ops": np.uint8(3)}), F.horizontal_flip(x))  # reads only its own bit


# ----------------------------------------------------------------------------- RandAugment
class _Signs:
    """Stands in for ``torch`` in torchvision's RandAugment: ``rand(())`` serves the stored signs."""

    def __init__(self, negative):
        self.negative = list(negative)

    def rand(self, *_):
        return torch.tensor(0.0 if self.negative.pop(0) else 1.0)

    def __getattr__(self, name):
        return getattr(torch, name)


@pytest.mark.parametrize("interpolation,fill", [("nearest", 0), ("bilinear", 90)])
def test_randaugment_replays_torchvisions_randaugment(monkeypatch, imgs, interpolation, fill):
    cfg = {"num_ops": 2, "magnitude": 9, "num_magnitude_bins": 31, "interpolation": interpolation, "fill": fill}
    policy = create_policy("rrc+ra/re", output_size=S, randaugment=cfg)
    stage = _stage(policy, RandAugment)
    n = 40
    prm = policy.sample(3, np.arange(n), 2, 300, 400)
    batch = _batch(policy, prm)
    codes = stage.codes(batch)
    ops_, neg = codes & 15, codes >> 4
    assert (neg[~np.isin(ops_, [RA_OPS.index(o) for o in aops.SIGNED_OPS])] == 0).all()
    x = torch.stack([to_tensor(imgs[k].resize((S, S))) for k in sorted(imgs)][:4] * (n // 4))
    ours = stage.finish(x, batch)
    ra = v2.RandAugment(num_ops=2, magnitude=9, num_magnitude_bins=31,
                        interpolation=v2.InterpolationMode(interpolation), fill=fill)
    for r in range(n):
        queue = [RA_OPS[int(k)] for k in ops_[r]]
        signed = [RA_OPS[int(k)] in aops.SIGNED_OPS for k in ops_[r]]
        monkeypatch.setattr(ra, "_get_random_item", lambda dct: (queue[0], dct[queue.pop(0)]))
        monkeypatch.setattr(tv_auto_augment, "torch", _Signs([bool(s) for s, g in zip(neg[r], signed) if g]))
        assert torch.equal(ra(x[r]), ours[r]), (r, [RA_OPS[int(k)] for k in ops_[r]], neg[r])
        monkeypatch.undo()


def test_randaugment_samples_every_op_and_checks_its_codes():
    policy = create_policy("rrc+ra/re", randaugment={"num_ops": 3})
    stage = _stage(policy, RandAugment)
    prm = policy.sample(0, np.arange(3000), 0, 300, 400)
    codes = stage.codes(_batch(policy, prm))
    counts = np.bincount((codes & 15).ravel(), minlength=16)
    assert counts[14:].sum() == 0 and counts[:14].min() > 0.8 * codes.size / 14
    signed = np.isin(codes & 15, [RA_OPS.index(o) for o in aops.SIGNED_OPS])
    assert abs((codes >> 4)[signed].mean() - 0.5) < 0.03
    one = {k: v[:1] for k, v in prm.items()}
    bad_op = 15 << 6  # op id 15 in the second op
    with pytest.raises(PolicyError, match="op id 15"):
        policy.check_params({**one, "ops": np.array([bad_op], np.uint16)})
    unsigned_neg = (RA_OPS.index("Equalize") | 16) << 1
    with pytest.raises(PolicyError, match="negative-magnitude bit on an unsigned op \\(Equalize\\)"):
        policy.check_params({**one, "ops": np.array([unsigned_neg], np.uint16)})
    # one bad record in a batch is found too (one vectorised path for one record and many)
    many = {**prm, "ops": prm["ops"].copy()}
    many["ops"][1234] = unsigned_neg
    with pytest.raises(PolicyError, match="unsigned op"):
        policy.check_params(many)


# ----------------------------------------------------------------------------- erasing
def test_erasing_samples_torchvisions_boxes_and_erases_like_torchvision(monkeypatch, imgs):
    policy = create_policy("rrc+ra/re", output_size=S, erasing={"p": 0.5, "value": 200})
    stage = _stage(policy, Erasing)
    recs = _records(60, seed=5)
    out: dict = {}
    stage.sample(recs, out)
    u = _rng.uniforms(5, recs.sample_idx, recs.aug_idx, 41, stream=Erasing.STREAM)
    t = v2.RandomErasing(p=1.0, scale=(0.02, 0.33), ratio=(0.3, 3.3), value=200)
    x = torch.stack([to_tensor(imgs["coffee_wide"].resize((S, S)))] * 60)
    erased = stage.finish(x, Batch({"erase": out["erase"]}, 60))
    for r in range(60):
        monkeypatch.setattr(tv_augment, "torch", _FedTorch(u[r, 1:]))
        ref = t.make_params([x[r]])
        monkeypatch.undo()
        applies = u[r, 0] < 0.5 and ref["v"] is not None and ref["h"] > 0 and ref["w"] > 0
        box = (ref["i"], ref["j"], ref["h"], ref["w"]) if applies else (0, 0, 0, 0)
        assert tuple(out["erase"][r]) == box
        expected = F.erase(x[r], *box, v=torch.tensor(200, dtype=torch.uint8)) if applies else x[r]
        assert torch.equal(erased[r], expected)
    assert 0 < (out["erase"][:, 2] > 0).sum() < 60
    with pytest.raises(PolicyError, match="'erase' extends outside the 32x32"):
        stage.check(Batch({"erase": np.array([[0, 20, 5, 13]])}, 1), "test")


# ----------------------------------------------------------------------------- mixing
def test_mixing_draws_timms_cutmix_boxes_and_partners(monkeypatch):
    import timm.data.mixup as timm_mixup

    policy = create_policy("rrc+mix", output_size=S, mix={"mixup_alpha": 0.0, "prob": 0.7})
    stage = _stage(policy, Mixing)
    n = 300
    recs = _records(n, num_samples=n, seed=6)
    out: dict = {}
    stage.sample(recs, out)
    applied = out["mix_kind"] == 2
    assert set(np.unique(out["mix_kind"])) == {0, 2} and abs(applied.mean() - 0.7) < 0.07
    assert (out["mix_partner"][applied] != recs.sample_idx[applied]).all()
    assert (out["mix_lam"][~applied] == 65535).all() and (out["mix_box"][~applied] == 0).all()
    lam = sampling.beta(recs.uniforms(sampling.BETA_UNIFORMS, Mixing.STREAM_CUTMIX), 1.0)
    centre = recs.uniforms(2, Mixing.STREAM_BOX)
    parity = set()
    for r in np.flatnonzero(applied):
        draws = iter(centre[r])
        monkeypatch.setattr(timm_mixup.np.random, "randint",
                            lambda lo, hi, size=None: lo + int(math.floor(next(draws) * (hi - lo))))
        (yl, yu, xl, xu), lam_timm = timm_mixup.cutmix_bbox_and_lam((S, S), lam[r], correct_lam=True)
        monkeypatch.undo()
        t, le, h, w = (int(v) for v in out["mix_box"][r])
        assert abs(out["mix_lam"][r] / 65535 - (1 - h * w / S**2)) <= 0.5 / 65535 + 1e-12  # corrected lambda
        cut = int(S * math.sqrt(1 - lam[r]))
        cy, cx = (int(math.floor(v * S)) for v in centre[r])
        parity.add(cut % 2)
        if h == 0 or w == 0:  # an empty (clipped-away) box is stored as all zeros
            assert (t, le, h, w) == (0, 0, 0, 0)
        elif cut % 2 == 0:  # timm's box and lambda exactly
            assert (t, le, t + h, le + w) == (yl, xl, yu, xu)
            assert abs(out["mix_lam"][r] / 65535 - lam_timm) <= 0.5 / 65535 + 1e-12
        else:  # timm >= 1.0 gives an odd cut its extra pixel at the high edge; the stored layout keeps
            # timm 0.x's cut // 2 on both sides (the stores already built depend on it)
            assert (t, le) == (yl, xl)
            assert (t + h, le + w) == (min(cy + cut // 2, S), min(cx + cut // 2, S))
            assert (yu, xu) == (min(cy + cut // 2 + 1, S), min(cx + cut // 2 + 1, S))
    assert parity == {0, 1}
    solo: dict = {}
    stage.sample(Records(0, np.zeros(4, np.int64), np.arange(4), np.full(4, 9), np.full(4, 9), 1), solo)
    assert (solo["mix_partner"] == 0).all()  # a one-sample dataset mixes with itself


def test_mixing_finish_is_timms_mixup_and_cutmix(imgs):
    policy = create_policy("rrc+mix", output_size=S)
    stage = _stage(policy, Mixing)
    a = torch.stack([to_tensor(imgs[k].resize((S, S))) for k in ("china", "chelsea", "astronaut")])
    b = torch.stack([to_tensor(imgs[k].resize((S, S))) for k in ("coffee_wide", "flower_tall", "camera_gray")])
    fields = {"mix_partner": np.array([1, 2, 0]), "mix_kind": np.array([0, 1, 2]),
              "mix_lam": np.array([65535, 40000, 50000]), "mix_box": np.array([[0, 0, 0, 0], [0, 0, 0, 0],
                                                                               [3, 5, 10, 20]])}
    partner_fields = {k: np.zeros_like(v) for k, v in fields.items()}
    own = Batch(fields, 3)
    assert stage.mixes(own) and not stage.mixes(Batch(partner_fields, 3))
    assert stage.finish(a, own) is a  # no partner rows attached: nothing to mix with
    out = stage.finish(torch.cat([a, b]), own.with_partners(Batch(partner_fields, 3)))
    assert torch.equal(out[0], a[0])
    lam = np.float32(40000) / np.float32(65535)
    assert torch.equal(out[1], (a[1].float() * lam + b[1].float() * (1 - lam)).round().to(torch.uint8))
    cut = a[2].clone()
    cut[:, 3:13, 5:25] = b[2][:, 3:13, 5:25]  # timm: x[:, yl:yh, xl:xh] = partner's pixels
    assert torch.equal(out[2], cut)


def test_mixing_checks():
    policy = create_policy("rrc+mix", output_size=S)
    one = {k: v[0] for k, v in policy.sample(0, 0, 0, 50, 50, num_samples=5).items()}
    with pytest.raises(PolicyError, match="mix_partner 7 is outside the dataset"):
        policy.check_params({**one, "mix_partner": np.uint32(7)}, num_samples=5)
    with pytest.raises(PolicyError, match="'mix_box' extends outside"):
        policy.check_params({**one, "mix_box": np.array([30, 0, 3, 1], np.uint8)})
    with pytest.raises(PolicyError, match="'mix_kind' has values in \\[3, 3\\]"):
        policy.check_params({**one, "mix_kind": np.uint8(3)})
    with pytest.raises(PolicyError, match="num_samples"):
        policy.sample(0, 0, 0, 50, 50)


# ----------------------------------------------------------------------------- composition
@pytest.mark.parametrize("name", list(PRESETS) + ["bilinear"])
def test_policy_is_its_stages_applied_one_after_another(name, imgs):
    policy = create_policy("rrc+ra/re", randaugment={"interpolation": "bilinear", "num_ops": 3}) \
        if name == "bilinear" else create_policy(name)
    policy = create_policy(policy.config, output_size=S)
    names = sorted(imgs)[:5]
    H = np.array([imgs[k].size[1] for k in names])
    W = np.array([imgs[k].size[0] for k in names])
    i = np.repeat(np.arange(5), 3)
    j = np.tile(np.arange(3), 5)
    prm = policy.sample(8, i, j, H[i], W[i], num_samples=5)
    # sample = every stage's draws, the shared word packed by the slots, cast to the declared dtypes
    out: dict = {}
    for stage in policy.stages:
        stage.sample(Records(8, i, j, H[i], W[i], 5), out)
    assert [f.name for f in policy.fields] == list(prm)
    for f in policy.fields:
        assert prm[f.name].dtype == f.np_dtype and np.array_equal(prm[f.name], out[f.name].astype(f.dtype))
    expected_fields = [f for s in policy.stages for f in s.fields]
    expected_fields.insert(len(policy.stages[0].fields), policy.fields[1])
    assert list(policy.fields) == expected_fields
    # apply = the crop stages on the image, then the finish stages on the batch of one
    for r in range(len(i)):
        one = {k: v[r] for k, v in prm.items()}
        partner = None
        if policy.uses_mix and one["mix_kind"]:
            p = int(one["mix_partner"])
            row = int(np.flatnonzero((i == p) & (j == j[r]))[0])
            partner = (imgs[names[p]], {k: v[row] for k, v in prm.items()})
        got = policy.apply(imgs[names[i[r]]], one, *(partner or ()))
        crops = []
        for image, params in [(imgs[names[i[r]]], one)] + ([partner] if partner else []):
            x = image.convert("RGB")
            for stage in policy.stages:
                x = stage.crop(x, params)
            crops.append(x.contiguous())
        batch = Batch({k: np.asarray(v).astype(np.int64).reshape((1,) + np.shape(v)) for k, v in one.items()}, 1)
        if partner:
            batch = batch.with_partners(Batch({k: np.asarray(v).astype(np.int64).reshape((1,) + np.shape(v))
                                               for k, v in partner[1].items()}, 1))
        x = torch.stack(crops)
        for stage in policy.stages:
            x = stage.finish(x, batch)
        assert torch.equal(got, x[0]), (name, r)


def test_check_params_is_one_vectorised_path_for_records_and_batches():
    policy = create_policy("rrc+mix+ra/re", output_size=S)
    prm = policy.sample(0, np.arange(50), 0, 60, 80, num_samples=50)
    policy.check_params(prm, num_samples=50)
    policy.check_params({k: v[7] for k, v in prm.items()}, num_samples=50)
    policy.check_params({k: torch.from_numpy(v.astype(np.int64)) for k, v in prm.items()})  # int64 tensors
    with pytest.raises(PolicyError, match="field 'crop' has dtype float32"):
        policy.check_params({**prm, "crop": prm["crop"].astype(np.float32)})
    with pytest.raises(PolicyError, match="'erase' holds 49 records"):
        policy.check_params({**prm, "erase": prm["erase"][1:]})
    bad = {**prm, "erase": prm["erase"].copy()}
    bad["erase"][31] = (30, 0, 5, 1)
    with pytest.raises(PolicyError, match="'erase' extends outside"):
        policy.check_params(bad)
    with pytest.raises(PolicyError, match="replays one record"):
        policy.apply(torch.zeros(3, 40, 40, dtype=torch.uint8), {k: v[:2] for k, v in prm.items()})
    with pytest.raises(PolicyError, match="params hold 50 records but images 2"):
        policy.finish(torch.zeros(2, 3, S, S, dtype=torch.uint8), prm)


# ----------------------------------------------------------------------------- device helpers
def test_upload_and_cached_upload_on_the_cpu():
    a = np.arange(6, dtype=np.int64)
    t = _device.upload(a, torch.device("cpu"))
    assert t.data_ptr() == a.ctypes.data  # the same memory: no copy on the CPU
    ro = np.arange(6, dtype=np.int64)
    ro.setflags(write=False)
    assert torch.equal(_device.upload(ro, torch.device("cpu")), torch.arange(6))  # copied, no warning
    strided = np.arange(12).reshape(3, 4)[:, 1]
    assert _device.upload(strided, torch.device("cpu")).tolist() == [1, 5, 9]
    made = torch.ones(2)
    assert _device.cached_upload("k", torch.device("cpu"), lambda: made) is made


@pytest.mark.parametrize("op", ["ShearX", "Rotate", "TranslateY"])
def test_device_gather_equals_the_cpu_gather(op):
    """The torch gather used on CUDA against the numpy gather used on the CPU (both on CPU tensors)."""
    x = torch.randint(0, 256, (3, 3, 20, 24), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    how = aops._nearest_map(op, aops.ra_magnitude(op, 20, 31, 20, 24, True), 20, 24)
    if how[0] == "gather":
        assert torch.equal(aops._gather_torch(x, how[1], 77), aops._gather_numpy(x, how[1], 77))
    else:
        assert op == "TranslateY"
