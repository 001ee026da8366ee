"""The ``ml-dr`` policy flavour against the independent reference of ml-dr's replay (tests/fakes/mldr_reference.py).

Tolerances: geometry, flip, every RandAugment op and erasing are integer-exact (compared as uint8,
bit for bit, on real photos); normalised floats differ from the reference's ``(x / 255 - mean) / std``
only by the package's ``x * (1 / (255 std)) - mean / std`` rounding (< 1e-6; one grey level would be
> 0.015); MixUp's float blend by at most one float32 step of ``1 - lam`` (< 1e-6 with it).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image
from torchvision.transforms import InterpolationMode as I
from torchvision.transforms import functional as F
from torchvision.transforms.autoaugment import _apply_op

from fakes.mldr_archive import CIFAR_MEAN, CIFAR_STD, PUBLISHED, draw_sample, mldr_config
from fakes.mldr_reference import OPS, geometry, replay_record
from imagenet_plus.augment import PRESETS, create_policy
from imagenet_plus.augment.mldr import V1_OPS, apply_ra_op_v1, lam_from_bits, lam_to_bits
from imagenet_plus.augment.ops import apply_ra_op, apply_randaugment
from imagenet_plus.errors import PolicyError
from imagenet_plus.mldr import decode_records, parse_config
from imagenet_plus.mldr._convert import Converter, field_offsets, policy_config, read_field
from imagenet_plus.replay import DeviceReplay, render
from imagenet_plus.schema import target_fields
from imagenet_plus.store import Manifest, compute_build_id

FLOAT_TOL = 1e-6


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    import skimage.data
    from sklearn.datasets import load_sample_images

    china, flower = load_sample_images().images
    return [Image.fromarray(china), Image.fromarray(flower).resize((213, 160)),
            Image.fromarray(skimage.data.astronaut()).resize((256, 256)),
            Image.fromarray(skimage.data.coffee()).resize((150, 330)), Image.fromarray(skimage.data.chelsea())]


@pytest.fixture(scope="module")
def crops(photos) -> torch.Tensor:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        boxes = [(im, T.RandomResizedCrop.get_params(im, [0.08, 1.0], [3 / 4, 4 / 3]))
                 for im in photos for _ in range(4)]
    return torch.stack([F.pil_to_tensor(geometry(im, b, "rrc")) for im, b in boxes])


def _setup(name: str, images: list[Image.Image], ns: int = 8, seed: int = 0):
    """(policy, fields, decoded records per sample, params per sample) of a fake archive of ``name`` over ``images``."""
    dataset, variant = PUBLISHED[name]
    lay = parse_config(mldr_config(dataset, variant, ns=ns))
    policy = create_policy(policy_config(lay))
    fields = [*policy.fields, *target_fields(lay.num_classes, lay.topk)]
    sizes = [im.size[::-1] for im in images]
    conv = Converter(lay, fields, np.array(sizes), None)
    rng = np.random.RandomState(seed)
    out = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for i in range(len(images)):
            recs = decode_records(draw_sample(i, variant, sizes, ns=ns, topk=10, num_classes=lay.num_classes,
                                              rng=rng).obj, f"{i}.pth.tar", lay)
            _, rows, _ = conv.convert(recs, f"{i}.pth.tar")
            params = {f.name: read_field(rows, f, off) for f, off in field_offsets(fields) if f.name[:4] != "topk"}
            out.append((recs, params))
    return lay, policy, out


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_replay_equals_the_reference_for_every_variant(name, photos):
    images = [im.resize((32, 32), Image.BILINEAR) for im in photos] if name == "cifar100" else photos
    lay, policy, samples = _setup(name, images)
    mixed = 0
    for i, (recs, params) in enumerate(samples):
        partners = [images[p] if p >= 0 else None for p in (recs.partner if recs.partner is not None else [-1] * 8)]
        got = render(policy, [images[i]] * 8, params, partners, policy.partner_params(params))
        for j in range(8):
            ref = replay_record(recs, j, images[i], lay, partner_image=partners[j])
            assert (got[j] - ref).abs().max() < FLOAT_TOL, (name, i, j)
            mixed += partners[j] is not None
    assert mixed > 0 or "mix" not in name


@pytest.mark.parametrize("name", ["imagenet_plus_randaug", "cifar100"])
def test_replayed_pixels_are_the_references_bit_for_bit(name, photos):
    """Without mixing, undoing the normalisation gives the reference's pixels exactly (uint8)."""
    images = [im.resize((32, 32), Image.BILINEAR) for im in photos] if name == "cifar100" else photos
    lay, policy, samples = _setup(name, images, seed=4)
    mean = torch.tensor(lay.mean).view(3, 1, 1)
    std = torch.tensor(lay.std).view(3, 1, 1)
    for i, (recs, params) in enumerate(samples):
        got = render(policy, [images[i]] * 8, params, normalized=False)
        for j in range(8):
            ref = replay_record(recs, j, images[i], lay)
            ref_pixels = ((ref * std + mean) * 255).round().to(torch.uint8)
            assert torch.equal(got[j], ref_pixels), (name, i, j)
    if name == "cifar100":
        assert lay.mean == tuple(CIFAR_MEAN) and lay.std == tuple(CIFAR_STD)


@pytest.mark.parametrize("op", OPS)
def test_every_randaugment_op_is_torchvisions_v1_kernel_bit_for_bit(op, crops):
    """The teacher ran torchvision's v1 RandAugment on uint8 tensors: the flavour's kernels equal it, both signs."""
    space = T.RandAugment()._augmentation_space(31, (224, 224))
    mags, signed = space[op]
    k = OPS.index(op)
    for neg in (False, True) if signed else (False,):
        m = float(mags[9]) if mags.ndim else 0.0
        ref = torch.stack([_apply_op(x, op, -m if neg else m, interpolation=I.NEAREST, fill=None) for x in crops])
        got = apply_randaugment(crops, np.full((len(crops), 1), k), np.full((len(crops), 1), neg), magnitude=9,
                                num_bins=31, interpolation="nearest", fill=0, apply_op=apply_ra_op_v1)
        assert torch.equal(got, ref), (op, neg)


def test_the_v2_kernels_differ_exactly_where_the_flavour_uses_v1(crops):
    """Why the flavour has its own kernels: the engine's (v2) Color, Sharpness, AutoContrast round differently."""
    differ = set()
    space = T.RandAugment()._augmentation_space(31, (224, 224))
    for op, (mags, signed) in space.items():
        for sign in (1, -1) if signed else (1,):
            m = sign * (float(mags[9]) if mags.ndim else 0.0)
            ref = torch.stack([_apply_op(x, op, m, interpolation=I.NEAREST, fill=None) for x in crops])
            v2_m = m / 255.0 if op == "Solarize" else m  # the engine's Solarize magnitude is a fraction
            if not torch.equal(apply_ra_op(crops, op, v2_m, "nearest", 0) if op != "Identity" else crops, ref):
                differ.add(op)
    assert differ and differ <= V1_OPS, differ


@pytest.mark.parametrize("op", ["Brightness", "Posterize", "Solarize", "Equalize", "AutoContrast"])
def test_per_pixel_ops_match_v1_on_every_uint8_value(op):
    values = torch.arange(256, dtype=torch.uint8).repeat(3, 1).view(1, 3, 16, 16)
    values = torch.cat([values, values.flip(-1), 255 - values])
    space = T.RandAugment()._augmentation_space(31, (224, 224))
    mags, signed = space[op]
    for sign in (1, -1) if signed else (1,):
        m = sign * (float(mags[9]) if mags.ndim else 0.0)
        ref = torch.stack([_apply_op(x, op, m, interpolation=I.NEAREST, fill=None) for x in values])
        got = apply_randaugment(values, np.full((3, 1), OPS.index(op)), np.full((3, 1), sign < 0), magnitude=9,
                                num_bins=31, interpolation="nearest", fill=0, apply_op=apply_ra_op_v1)
        assert torch.equal(got, ref), (op, sign)


def test_geometry_is_pils_crop_on_pil_and_tensor_inputs(photos):
    lay, policy, samples = _setup("imagenet_plus_rrc", photos)
    for i, (recs, params) in enumerate(samples):
        for j in range(3):
            row = {k: v[j] for k, v in params.items()}
            ref = F.pil_to_tensor(geometry(photos[i], recs.crop[j].tolist(), "rrc"))
            ref = ref.flip(-1) if recs.flip[j] else ref
            assert torch.equal(policy.crop(photos[i], row), ref)
            assert torch.equal(policy.crop(F.pil_to_tensor(photos[i]), row), ref)


def test_mixup_blends_normalised_floats_and_previews_round(photos):
    lay, policy, samples = _setup("imagenet_plus_mixing", photos, ns=16, seed=2)
    seen = set()
    for i, (recs, params) in enumerate(samples):
        for j in np.flatnonzero(recs.partner >= 0):
            row = {k: v[j] for k, v in params.items()}
            partner = photos[recs.partner[j]]
            ref = replay_record(recs, j, photos[i], lay, partner_image=partner)
            got = policy(photos[i], row, partner)  # Policy.__call__: the normalised path
            assert (got - ref).abs().max() < FLOAT_TOL
            preview = policy.apply(photos[i], row, partner).float()  # uint8, the blend rounded
            mean, std = torch.tensor(lay.mean).view(3, 1, 1), torch.tensor(lay.std).view(3, 1, 1)
            assert ((ref * std + mean) * 255 - preview).abs().max() <= 0.5 + 1e-3
            seen.add((bool(recs.mixup[j]), bool(recs.cutmix[j])))
    assert {(True, False), (False, True), (True, True)} <= seen


def test_lambda_bits_keep_mldrs_float32_exactly():
    lam = np.random.default_rng(0).beta(1.0, 1.0, 1000) / 2.0
    back = lam_from_bits(lam_to_bits(lam))
    assert np.array_equal(back, lam.astype(np.float32))
    one_minus = (1.0 - back.astype(np.float64)).astype(np.float32)
    assert np.abs(one_minus.astype(np.float64) - (1.0 - lam).astype(np.float32)).max() <= 2 ** -24
    assert lam_to_bits(1.0) == 0x3F800000 and lam_to_bits(0.0) == 0


def test_device_replay_on_cpu_equals_the_cpu_path(photos):
    lay, policy, samples = _setup("imagenet_plus_mixing_randaug", photos, ns=8, seed=6)
    recs, params = samples[1]
    partners = [photos[p] if p >= 0 else None for p in recs.partner]
    cpu = render(policy, [photos[1]] * 8, params, partners, policy.partner_params(params))
    pparams = policy.partner_params(params)
    crops = torch.stack([policy.crop(photos[1], {k: v[j] for k, v in params.items()}) for j in range(8)])
    pcrops = torch.stack([policy.crop(partners[j], {k: v[j] for k, v in pparams.items()}) if partners[j] else
                          torch.zeros(3, 224, 224, dtype=torch.uint8) for j in range(8)])
    batch = {"image": crops, "partner": pcrops, "params": {k: torch.from_numpy(v.astype(np.int64)) for k, v in
                                                           params.items()},
             "partner_params": {k: torch.from_numpy(v.astype(np.int64)) for k, v in pparams.items()},
             "topk_ids": torch.zeros(8, 10, dtype=torch.int64), "topk_probs": torch.full((8, 10), 0.1),
             "is_original": torch.zeros(8, dtype=torch.bool), "label": torch.zeros(8, dtype=torch.int64)}
    x, _ = DeviceReplay(policy, lay.num_classes, device="cpu")(batch)
    assert torch.equal(x, cpu)


def test_config_flavour_is_recorded_only_when_set():
    for name, cfg in PRESETS.items():
        assert "flavour" not in create_policy(name).config
    lay = parse_config(mldr_config("imagenet", "rrc+mix+ra/re", ns=4))
    policy = create_policy(policy_config(lay))
    assert policy.config["flavour"] == "ml-dr" and create_policy(policy.config) == policy
    assert [f.name for f in policy.fields] == ["crop", "ops", "erase", "mix_partner", "mix_kind", "mix_lam", "mix_box",
                                               "partner_crop", "partner_ops", "partner_erase"]
    assert policy.params_nbytes == 41
    with pytest.raises(PolicyError, match="switch_prob"):
        create_policy({**policy.config, "mix": {"switch_prob": 0.5}})
    with pytest.raises(PolicyError, match="antialias"):
        create_policy({**policy.config, "geometry": {**policy.config["geometry"], "antialias": False}})
    with pytest.raises(PolicyError, match="flavour"):
        create_policy({**policy.config, "flavour": "timm"})


def test_build_ids_of_torchvision_flavour_stores_are_unchanged():
    """The flavour key is absent from every existing config, so no existing store's build id moves."""
    cfg = create_policy("rrc+ra/re").config
    # format_version=2: the id pinned here was computed by main before the flavour existed, under format 2;
    # format 3 moves every build id on purpose (rows bound to their place), the policy config must not.
    m = Manifest(dataset="d", split="train", num_samples=1, num_augmentations=1, topk=1, num_classes=2, policy=cfg,
                 fields=list(create_policy(cfg).fields) + list(target_fields(2, 1)), teacher={}, seed=0,
                 builder_version="x", samples_per_shard=1, augs_per_shard=1, format_version=2)
    assert compute_build_id(m, "0" * 64) == "daf8e551e34b10be"


def test_sampling_draws_unmixed_records_and_refuses_new_mixing_ones(photos):
    lay, policy, samples = _setup("imagenet_plus_mixing_randaug", photos[:2], ns=2)
    params = policy.sample(0, [0, 1], [0, 0], [100, 200], [150, 120], 2, mix=False)
    assert (params["mix_kind"] == 0).all() and (params["partner_crop"] == 0).all()
    policy.check_params(params, 2)
    x = render(policy, photos[:2], params)
    assert x.shape == (2, 3, 224, 224)
    with pytest.raises(PolicyError, match="cannot draw new"):
        policy.sample(0, [0], [0], [100], [100], 2)


def test_partner_fields_are_checked(photos):
    lay, policy, samples = _setup("imagenet_plus_mixing_randaug", photos[:2], ns=4)
    _, params = samples[0]
    bad = dict(params, partner_ops=params["partner_ops"] | (15 << 1))
    with pytest.raises(PolicyError, match="partner_.*op id 15|op id 15.*partner"):
        policy.check_params(bad)
    bad = dict(params, mix_box=np.where(params["mix_box"] >= 0, 200, 0))
    with pytest.raises(PolicyError, match="mix_box"):
        policy.check_params(bad)
