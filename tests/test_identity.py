"""Sample keys, labels and content hashes for each torchvision class, over fake on-disk copies."""

from __future__ import annotations

import shutil
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset, Subset
from torchvision import datasets as tvd
from torchvision import transforms as T

from fakes.torchvision_data import (
    make_cifar100,
    make_flowers102,
    make_food101,
    make_imagefolder,
    make_imagenet,
    skip_md5_checks,
)
from imagenet_plus.identity import load_sample, sample_identity, sample_keys, sample_labels
from imagenet_plus.imageio import to_rgb_array
from imagenet_plus.schema import content_hash


def _check(base, fake, split):
    keys = sample_keys(base)
    labels = sample_labels(base)
    assert len(keys) == len(base) == len(fake.splits[split])
    assert dict(zip(keys, labels.tolist())) == fake.splits[split]
    assert len(set(keys)) == len(keys)
    for i in (0, len(base) - 1):
        key, label, h = sample_identity(base, i)
        image, target = base[i]
        assert key == keys[i] and label == target == labels[i]
        np.testing.assert_array_equal(h, content_hash(to_rgb_array(image)))
    return keys


@pytest.fixture(scope="module")
def fakes(tmp_path_factory):
    root = tmp_path_factory.mktemp("identity")
    return {
        "cifar": make_cifar100(root / "cifar", 4, 3),
        "flowers": make_flowers102(root / "flowers", 9),
        "food": make_food101(root / "food", 3, 2, 1),
        "imagenet": make_imagenet(root / "imagenet", 3, 2, 1),
        "folder": make_imagefolder(root / "folder", 2, 2),
    }


def test_cifar100_keys_are_split_and_index(fakes):
    with skip_md5_checks():
        train = tvd.CIFAR100(fakes["cifar"].root, train=True)
        test = tvd.CIFAR100(fakes["cifar"].root, train=False)
    assert _check(train, fakes["cifar"], "train") == ["train/0", "train/1", "train/2", "train/3"]
    assert _check(test, fakes["cifar"], "test") == ["test/0", "test/1", "test/2"]


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_flowers102_keys_are_file_names(fakes, split):
    with skip_md5_checks():
        base = tvd.Flowers102(fakes["flowers"].root, split=split)
    keys = _check(base, fakes["flowers"], split)
    assert all(k.startswith("image_") and k.endswith(".jpg") and "/" not in k for k in keys)


@pytest.mark.parametrize("split", ["train", "test"])
def test_food101_keys_are_class_and_file(fakes, split):
    base = tvd.Food101(fakes["food"].root, split=split)
    keys = _check(base, fakes["food"], split)
    assert all(k.split("/")[0] in fakes["food"].classes for k in keys)


@pytest.mark.parametrize("split", ["train", "val"])
def test_imagenet_keys_are_relative_to_the_split_folder(fakes, split):
    base = tvd.ImageNet(fakes["imagenet"].root, split=split)
    keys = _check(base, fakes["imagenet"], split)
    assert all(k.split("/")[0] in fakes["imagenet"].classes for k in keys)


def test_imagenet_devkit_is_parsed_by_torchvision(tmp_path):
    fake = make_imagenet(tmp_path, 4, 1, 2, write_meta_bin=False)
    with mock.patch("torchvision.datasets.imagenet._verify_archive"):
        base = tvd.ImageNet(tmp_path, split="val")
    assert (tmp_path / "meta.bin").is_file()
    assert base.wnids == fake.classes and base.classes[0] == ("tench", "Tinca tinca")
    _check(base, fake, "val")


@pytest.mark.parametrize("split", ["train", "val"])
def test_imagefolder_keys_include_png_palette_files(fakes, split):
    base = tvd.ImageFolder(fakes["folder"].root / split)
    keys = _check(base, fakes["folder"], split)
    assert any(k.endswith(".png") for k in keys)


def test_identity_does_not_depend_on_where_the_copy_lives(fakes, tmp_path):
    src = fakes["food"].root
    shutil.copytree(src, tmp_path / "moved")
    a, b = tvd.Food101(src), tvd.Food101(tmp_path / "moved")
    assert sample_keys(a) == sample_keys(b)
    for i in range(len(a)):
        np.testing.assert_array_equal(sample_identity(a, i)[2], sample_identity(b, i)[2])


def test_transforms_of_the_base_are_bypassed(fakes):
    plain = tvd.ImageNet(fakes["imagenet"].root, split="train")
    transformed = tvd.ImageNet(fakes["imagenet"].root, split="train", transform=T.Compose(
        [T.Resize(8), T.ToTensor()]), target_transform=lambda t: t + 100)
    for i in range(len(plain)):
        assert sample_identity(plain, i)[:2] == sample_identity(transformed, i)[:2]
        np.testing.assert_array_equal(sample_identity(plain, i)[2], sample_identity(transformed, i)[2])
        image, label = load_sample(transformed, i)
        assert image.mode == "RGB" and label == plain.targets[i]


def test_subset_maps_to_the_wrapped_samples(fakes):
    base = tvd.Food101(fakes["food"].root)
    sub = Subset(base, [4, 1])
    keys = sample_keys(base)
    assert sample_keys(sub) == [keys[4], keys[1]]
    assert sample_labels(sub).tolist() == [base._labels[4], base._labels[1]]
    np.testing.assert_array_equal(sample_identity(sub, 0)[2], sample_identity(base, 4)[2])


class _Plain(Dataset):
    """A user dataset: (image, label) pairs in memory, no metadata."""

    def __init__(self, n=3):
        rng = np.random.default_rng(1)
        self.images = [rng.integers(0, 256, (6, 5, 3), dtype=np.uint8) for _ in range(n)]

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return Image.fromarray(self.images[i]), i % 2


def test_generic_datasets_use_keys_samples_image_files_or_index(tmp_path):
    plain = _Plain()
    assert sample_keys(plain) == ["0", "1", "2"]
    assert sample_labels(plain).tolist() == [0, 1, 0]
    key, label, h = sample_identity(plain, 2)
    assert (key, label) == ("2", 0)
    np.testing.assert_array_equal(h, content_hash(plain.images[2]))

    with_attr = _Plain()
    with_attr.keys = ["a", "b", "c"]
    assert sample_keys(with_attr) == ["a", "b", "c"]

    class WithMethod(_Plain):
        def keys(self):
            return [f"m{i}" for i in range(len(self))]

    assert sample_keys(WithMethod()) == ["m0", "m1", "m2"]

    with_samples = _Plain()
    with_samples.root = str(tmp_path)
    with_samples.samples = [(str(tmp_path / "c" / f"{i}.jpg"), 0) for i in range(3)]
    assert sample_keys(with_samples) == ["c/0.jpg", "c/1.jpg", "c/2.jpg"]

    with_files = _Plain()
    with_files._images_folder = tmp_path
    with_files._image_files = [tmp_path / "x" / f"{i}.png" for i in range(3)]
    assert sample_keys(with_files) == ["x/0.png", "x/1.png", "x/2.png"]


def test_tensor_images_and_bad_items():
    class Tensors(_Plain):
        def __getitem__(self, i):
            return torch.from_numpy(self.images[i]).permute(2, 0, 1), torch.tensor(1)

    t = Tensors()
    np.testing.assert_array_equal(sample_identity(t, 0)[2], content_hash(t.images[0]))
    assert sample_identity(t, 0)[1] == 1

    class NoLabel(_Plain):
        def __getitem__(self, i):
            return Image.fromarray(self.images[i])

    with pytest.raises(TypeError, match=r"NoLabel\[0\] returned Image"):
        load_sample(NoLabel(), 0)

    class OneHot(_Plain):
        def __getitem__(self, i):
            return Image.fromarray(self.images[i]), [0, 1]

    with pytest.raises(TypeError, match="target_transform"):
        load_sample(OneHot(), 0)
