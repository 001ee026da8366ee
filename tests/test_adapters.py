"""Dataset adapters over each torchvision dataset's own on-disk format: keys, labels, files, digests, decoding."""

from __future__ import annotations

import hashlib
import io
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset, Subset
from torchvision import datasets as tvd
from torchvision import transforms as T

from fakes.torchvision_data import (make_cifar100, make_flowers102, make_food101, make_imagefolder, make_imagenet,
                                    photo_crops, skip_md5_checks)
from imagenet_plus.adapters import (ADAPTERS, CIFAR100Adapter, DigitsAdapter, FileAdapter, Flowers102Adapter,
                                    Food101Adapter, ImageFolderAdapter, ImageNetAdapter, KeyedAdapter, SubsetAdapter,
                                    adapt, create_adapter)
from imagenet_plus.errors import AlignmentError, ArgumentError, ImageDecodeError


def _sha8(data: bytes) -> np.ndarray:
    return np.frombuffer(hashlib.sha256(data).digest()[:8], dtype=np.uint8)


@pytest.fixture(scope="module")
def fakes(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return {
        "cifar100": make_cifar100(root / "cifar", 4, 3),
        "flowers102": make_flowers102(root / "flowers", 9),
        "food101": make_food101(root / "food", 3, 2, 1),
        "imagenet": make_imagenet(root / "imagenet", 3, 2, 1),
        "imagefolder": make_imagefolder(root / "folder", 2, 2),
    }


@pytest.mark.parametrize("name,split", [("cifar100", "train"), ("cifar100", "test"), ("flowers102", "train"),
                                        ("flowers102", "test"), ("food101", "train"), ("food101", "test"),
                                        ("imagenet", "train"), ("imagenet", "val"), ("imagefolder", "train")])
def test_keys_labels_and_digests_of_every_dataset(fakes, name, split):
    fake = fakes[name]
    with skip_md5_checks():
        ad = create_adapter(name, fake.root, split)
    assert type(ad) is ADAPTERS[name] and ad.split == split
    keys, labels = ad.keys(), ad.labels()
    assert dict(zip(keys, labels.tolist())) == fake.splits[split]  # the writer's own record of keys and labels
    assert len(set(keys)) == len(keys) == len(ad)
    for i in (0, len(ad) - 1):
        s = ad.load(i)
        assert s.image.mode == "RGB" and s.label == labels[i]
        if isinstance(ad, FileAdapter):  # digest = sha256 of the file's bytes, read independently here
            assert s.path == ad.path(i) and ad.path(i).replace("\\", "/").endswith(keys[i])
            np.testing.assert_array_equal(s.digest, _sha8(open(ad.path(i), "rb").read()))
        else:  # CIFAR: sha256 of the raw array's shape and bytes
            raw = ad.dataset.data[i]
            h = hashlib.sha256(np.asarray(raw.shape, "<i8").tobytes() + raw.tobytes()).digest()[:8]
            np.testing.assert_array_equal(s.digest, np.frombuffer(h, np.uint8))
            np.testing.assert_array_equal(np.asarray(s.image), raw)


def test_key_schemes(fakes):
    with skip_md5_checks():
        assert create_adapter("cifar100", fakes["cifar100"].root, "test").keys()[:2] == ["test/0", "test/1"]
        assert create_adapter("flowers102", fakes["flowers102"].root, "train").keys()[0].startswith("image_")
    food = create_adapter("food101", fakes["food101"].root, "train").keys()
    assert all(k.count("/") == 1 and k.endswith(".jpg") for k in food)
    inet = create_adapter("imagenet", fakes["imagenet"].root, "train").keys()
    assert all(k.startswith("n0") and k.count("/") == 1 for k in inet)


def test_adapt_picks_the_adapter_of_a_dataset_object(fakes):
    with skip_md5_checks():
        cases = {ImageNetAdapter: tvd.ImageNet(fakes["imagenet"].root, split="train"),
                 CIFAR100Adapter: tvd.CIFAR100(fakes["cifar100"].root, train=True),
                 Flowers102Adapter: tvd.Flowers102(fakes["flowers102"].root),
                 Food101Adapter: tvd.Food101(fakes["food101"].root),
                 ImageFolderAdapter: tvd.ImageFolder(fakes["imagefolder"].root / "train")}
    for cls, ds in cases.items():
        assert type(adapt(ds)) is cls
    ad = adapt(cases[Food101Adapter])
    assert adapt(ad) is ad


def test_imagenet_devkit_and_class_folder_layouts_give_the_same_keys(fakes, tmp_path):
    devkit = create_adapter("imagenet", fakes["imagenet"].root, "train")
    shutil.copytree(fakes["imagenet"].root / "train", tmp_path / "train")  # class folders, no devkit
    folders = create_adapter("imagenet", tmp_path, "train")
    assert isinstance(devkit.dataset, tvd.ImageNet) and not isinstance(folders.dataset, tvd.ImageNet)
    assert devkit.keys() == folders.keys() and devkit.labels().tolist() == folders.labels().tolist()
    np.testing.assert_array_equal(devkit.load(1).digest, folders.load(1).digest)


def test_identity_does_not_depend_on_where_the_copy_lives_or_the_bases_transform(fakes, tmp_path):
    shutil.copytree(fakes["food101"].root, tmp_path / "moved")
    a = adapt(tvd.Food101(fakes["food101"].root))
    b = adapt(tvd.Food101(tmp_path / "moved", transform=T.Compose([T.Resize(8), T.ToTensor()]),
                          target_transform=lambda t: t + 100))
    assert a.keys() == b.keys() and a.labels().tolist() == b.labels().tolist()
    for i in range(len(a)):
        np.testing.assert_array_equal(a.load(i).digest, b.load(i).digest)
        assert b.load(i).image.mode == "RGB"


def test_subset_maps_to_the_wrapped_samples(fakes):
    base = tvd.Food101(fakes["food101"].root)
    sub = adapt(Subset(base, [4, 1]))
    full = adapt(base)
    assert isinstance(sub, SubsetAdapter) and sub.name == "food101"
    assert sub.keys() == [full.keys()[4], full.keys()[1]]
    assert sub.labels().tolist() == [base._labels[4], base._labels[1]]
    np.testing.assert_array_equal(sub.load(0).digest, full.load(4).digest)


def test_imagefolder_decodes_16_bit_and_transparent_palette_pngs_the_documented_way(tmp_path):
    """Finding 7: torchvision's loader converts to RGB first (16-bit -> white, transparency dropped)."""
    gray16 = (np.arange(12 * 10, dtype=np.uint16).reshape(12, 10) * 500 + 7)
    (tmp_path / "a").mkdir()
    Image.fromarray(gray16).save(tmp_path / "a" / "deep.png")
    rgba = np.zeros((6, 5, 4), np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2] = 200, 100, 50
    rgba[:3, :, 3], rgba[3:, :, 3] = 255, 0  # top opaque, bottom fully transparent
    Image.fromarray(rgba, "RGBA").quantize(colors=4, method=Image.Quantize.FASTOCTREE).save(tmp_path / "a" / "pal.png")
    assert Image.open(tmp_path / "a" / "pal.png").mode == "P" and "transparency" in Image.open(
        tmp_path / "a" / "pal.png").info
    ad = create_adapter("imagefolder", tmp_path, "train")
    deep, pal = (np.asarray(ad.load(ad.keys().index(k)).image) for k in ("a/deep.png", "a/pal.png"))
    want = (gray16 >> 8).astype(np.uint8)  # the documented conversion: value >> 8 on every channel
    np.testing.assert_array_equal(deep, np.repeat(want[..., None], 3, axis=-1))
    assert (np.asarray(tvd.ImageFolder(str(tmp_path))[0][0]) == 255).mean() > 0.9  # torchvision's own loader: white
    assert (pal[3:] == 0).all()  # transparent pixels composited over black
    np.testing.assert_allclose(pal[:3].reshape(-1, 3).mean(0), [200, 100, 50], atol=8)


def test_truncated_and_missing_files_name_the_file(fakes, tmp_path):
    shutil.copytree(fakes["imagefolder"].root, tmp_path / "copy")
    ad = create_adapter("imagefolder", tmp_path / "copy", "train")
    jpg = next(i for i, k in enumerate(ad.keys()) if k.endswith(".jpg"))
    data = open(ad.path(jpg), "rb").read()
    open(ad.path(jpg), "wb").write(data[: len(data) // 2])
    with pytest.raises(ImageDecodeError, match=rf"key '{ad.keys()[jpg]}'.*{ad.path(jpg)}.*truncated"):
        ad.load(jpg)
    import os

    os.remove(ad.path(jpg + 1))
    with pytest.raises(ImageDecodeError, match=rf"cannot read the file.*restore it"):
        ad.load(jpg + 1)


class _Plain(Dataset):
    """A user dataset: (image, label) pairs in memory, no metadata."""

    def __init__(self, n=3):
        self.images = photo_crops(n, seed=1)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], i % 2


class _Wrapper(Dataset):
    """A plain wrapper around an ImageFolder (finding 9)."""

    def __init__(self, inner):
        self.inner = inner

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, i):
        return self.inner[i]


def test_datasets_without_identity_get_a_message_saying_how_to_give_keys(fakes):
    wrapper = _Wrapper(tvd.ImageFolder(fakes["imagefolder"].root / "train"))
    with pytest.raises(AlignmentError, match=r"cannot tell which sample of _Wrapper is which.*`keys`.*adapter"):
        adapt(wrapper)
    keyed = _Plain()
    keyed.keys = ["a", "b", "c"]
    ad = adapt(keyed)
    assert isinstance(ad, KeyedAdapter) and ad.keys() == ["a", "b", "c"] and ad.labels().tolist() == [0, 1, 0]
    raw = np.asarray(keyed.images[2])
    h = hashlib.sha256(np.asarray(raw.shape, "<i8").tobytes() + raw.tobytes()).digest()[:8]
    np.testing.assert_array_equal(ad.load(2).digest, np.frombuffer(h, np.uint8))

    class WithMethod(_Plain):
        def keys(self):
            return [f"m{i}" for i in range(len(self))]

    assert adapt(WithMethod()).keys() == ["m0", "m1", "m2"]


def test_digits_adapter_hashes_the_scan_and_records_the_upsampled_size():
    a, b = create_adapter("digits", None, "test", image_size=16), create_adapter("digits", None, "test", image_size=32)
    assert isinstance(a, DigitsAdapter) and a.keys()[:2] == ["test/0", "test/1"] and len(a) == 364
    np.testing.assert_array_equal(a.load(3).digest, b.load(3).digest)  # same scan
    assert a.load(3).image.size == (16, 16) and b.load(3).image.size == (32, 32)


def test_bad_names_and_roots(tmp_path):
    with pytest.raises(ArgumentError, match=r"Unknown value 'mnist' for argument dataset"):
        create_adapter("mnist", tmp_path)
    with pytest.raises(ArgumentError, match=r"Unknown value 'validation' for argument split"):
        create_adapter("imagenet", tmp_path, "validation")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        create_adapter("food101", tmp_path / "nope", "train")
    with pytest.raises(FileNotFoundError, match="missing or incomplete"):
        create_adapter("food101", tmp_path, "train")
