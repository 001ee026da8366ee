"""Fake ml-dr archives of every published variant, in every container form, read back exactly;
decoded records replayed by the reference on real photos."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fakes.mldr_archive import PUBLISHED, write_archive
from fakes.mldr_reference import replay_record, single
from imagenet_plus.mldr import SampleRecords, decode_member, open_archive, parse_config

SIZES = [(375, 500), (500, 333), (64, 64), (480, 640), (1200, 90), (32, 32)]
N = len(SIZES)


@pytest.mark.parametrize("form", ["tar.gz", "tar", "folder"])
@pytest.mark.parametrize("name", list(PUBLISHED))
def test_archive_round_trip(tmp_path, name, form):
    dataset, variant = PUBLISHED[name]
    sizes = [(32, 32)] * N if dataset == "cifar100" else SIZES
    fa = write_archive(tmp_path / f"{name}.{form}", name, sizes=sizes, ns=6, topk=5, form=form, seed=11)
    archive = open_archive(fa.path, N)
    layout = parse_config(archive.config, archive.config_member)
    assert (layout.variant, layout.dataset, layout.num_augmentations, layout.topk) == (variant, dataset, 6, 5)
    seen = []
    for member in archive:
        recs = decode_member(member, layout, num_samples=N)
        truth = fa.samples[member.index].truth
        present = {k for k, v in vars(recs).items() if v is not None and k != "index"}
        assert present == set(truth), "decoded fields == the fields the variant has"
        for k, v in truth.items():
            got = getattr(recs, k)
            assert got.shape == v.shape and np.array_equal(got, v.astype(got.dtype)), (member.name, k)
        if layout.geometry == "rrc":
            H, W = sizes[member.index]
            assert ((recs.crop[:, 0] + recs.crop[:, 2] <= H) & (recs.crop[:, 1] + recs.crop[:, 3] <= W)).all()
        seen.append(member.index)
    assert sorted(seen) == list(range(N))


@pytest.fixture(scope="module")
def photo_dataset() -> list[Image.Image]:
    import skimage.data
    from sklearn.datasets import load_sample_images

    china, flower = load_sample_images().images
    return [Image.fromarray(a) for a in (china, flower, skimage.data.astronaut(), skimage.data.coffee(),
                                         skimage.data.chelsea(), skimage.data.rocket())]


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_decoded_records_replay_on_real_photos(tmp_path, name, photo_dataset):
    dataset, _ = PUBLISHED[name]
    images = [im.resize((32, 32), Image.BILINEAR) for im in photo_dataset] if dataset == "cifar100" else photo_dataset
    fa = write_archive(tmp_path / "a.tar.gz", name, sizes=[im.size[::-1] for im in images], ns=8, seed=5)
    archive = open_archive(fa.path, len(images))
    layout = parse_config(archive.config, archive.config_member)
    mixed = 0
    for member in archive:
        recs: SampleRecords = decode_member(member, layout, num_samples=len(images))
        for j in range(0, 8, 3):
            partner = None if recs.partner is None or recs.partner[j] < 0 else images[recs.partner[j]]
            x = replay_record(recs, j, images[member.index], layout, partner_image=partner)
            assert x.shape == (3, 224, 224) and x.dtype == torch.float32 and torch.isfinite(x).all()
            if partner is not None:
                own = replay_record(_without_mixing(recs), j, images[member.index], layout)
                assert not torch.equal(x, own)
                mixed += 1
    assert mixed > 0 or "mix" not in name


def _without_mixing(recs: SampleRecords) -> SampleRecords:
    import dataclasses

    return dataclasses.replace(recs, partner=np.full_like(recs.partner, -1))


def test_replayed_identity_record_is_the_normalised_crop(photo_dataset):
    """A record with no flip, no RandAugment, no erasing replays to Normalize(ToTensor(crop))."""
    img = photo_dataset[0]
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    x = single(img, {"crop": (10, 20, 300, 400), "flip": False}, kind="rrc", mean=mean, std=std)
    crop = np.asarray(img.crop((20, 10, 420, 310)).resize((224, 224), Image.BILINEAR), np.float32) / 255.0
    expected = (crop - np.array(mean, np.float32)) / np.array(std, np.float32)
    assert np.allclose(x.permute(1, 2, 0).numpy(), expected, atol=1e-5)
