"""Alignment of a user's dataset copy with a store, and bad input: every case fails loudly or aligns correctly."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Subset
from torchvision import datasets as tvd

from fakes.torchvision_data import make_cifar100
from imagenet_plus.datasets import CIFAR100Plus, Food101Plus, ImageNetPlus, ReinforcedDataset
from imagenet_plus.errors import AlignmentError, ReinforcementError, StoreError
from imagenet_plus.identity import sample_keys
from test_datasets import build_case


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory):
    return build_case("imagenet", tmp_path_factory.mktemp("imagenet"))


@pytest.fixture(scope="module")
def food(tmp_path_factory):
    return build_case("food101", tmp_path_factory.mktemp("food"))


def _items(ds, keys, epochs=(0, 1)):
    out = {}
    for e in epochs:
        ds.set_epoch(e)
        for d, k in enumerate(keys):
            out[(k, e)] = ds[d]
    return out


def _assert_same_items(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k][0], b[k][0]) and torch.equal(a[k][1], b[k][1]), k


def test_reordered_copy_is_aligned_by_key(food, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(food.root, copy)
    meta = copy / "food-101" / "meta" / "train.json"
    lists = json.loads(meta.read_text())
    meta.write_text(json.dumps({c: lists[c][::-1] for c in sorted(lists)}))  # other class and file order
    kw = dict(reinforcements=food.store, p_original=0.25, seed=4)
    orig, moved = Food101Plus(food.root, **kw), Food101Plus(copy, **kw)
    keys_o, keys_m = sample_keys(orig.base), sample_keys(moved.base)
    assert keys_o != keys_m and sorted(keys_o) == sorted(keys_m)
    assert moved.reinforced._to_store is not None
    # Mixing policy: partners are found by store index in the reordered copy, so items match key by key.
    _assert_same_items(_items(orig, keys_o), _items(moved, keys_m))


def test_subset_in_another_order_is_aligned(imagenet):
    base = imagenet.base()
    n = len(base)
    reordered = Subset(base, list(range(n))[::-1])
    a = ReinforcedDataset(base, imagenet.store, seed=1, p_original=0.2)
    b = ReinforcedDataset(reordered, imagenet.store, seed=1, p_original=0.2)
    _assert_same_items(_items(a, sample_keys(base)), _items(b, sample_keys(reordered)))


def test_imagefolder_layout_without_devkit(imagenet, tmp_path):
    shutil.copytree(imagenet.root / "train", tmp_path / "train")
    folder = ImageNetPlus(tmp_path, reinforcements=imagenet.store, seed=2, p_original=0.2)
    devkit = ImageNetPlus(imagenet.root, reinforcements=imagenet.store, seed=2, p_original=0.2)
    assert isinstance(folder.base, tvd.ImageFolder) and isinstance(devkit.base, tvd.ImageNet)
    keys = sample_keys(devkit.base)
    assert sample_keys(folder.base) == keys
    _assert_same_items(_items(devkit, keys), _items(folder, keys))


def _copy_imagenet(imagenet, dst):
    shutil.copytree(imagenet.root, dst)
    return dst


def test_missing_file_is_rejected_naming_the_sample(imagenet, tmp_path):
    root = _copy_imagenet(imagenet, tmp_path / "copy")
    victim = sorted((root / "train").rglob("*.JPEG"))[3]
    key = f"{victim.parent.name}/{victim.name}"
    victim.unlink()
    with pytest.raises(AlignmentError, match=rf"\({key!r}\) is missing from the dataset copy.*restore"):
        ImageNetPlus(root, reinforcements=imagenet.store)


def test_extra_file_is_rejected_naming_it(imagenet, tmp_path):
    root = _copy_imagenet(imagenet, tmp_path / "copy")
    wnid = sorted(p.name for p in (root / "train").iterdir())[1]
    Image.new("RGB", (20, 30), (10, 200, 30)).save(root / "train" / wnid / "extra.JPEG")
    with pytest.raises(AlignmentError, match=rf"'{wnid}/extra.JPEG'\) is not in the store"):
        ImageNetPlus(root, reinforcements=imagenet.store)


def test_changed_pixels_are_rejected_unless_check_is_none(imagenet, tmp_path):
    root = _copy_imagenet(imagenet, tmp_path / "copy")
    files = sorted((root / "train").rglob("*.JPEG"))
    shutil.copyfile(files[0], files[5])  # same key, other pixels
    key = f"{files[5].parent.name}/{files[5].name}"
    for check in ("fast", "full"):
        with pytest.raises(AlignmentError, match=rf"\({key!r}\) has other pixels.*check='none'"):
            ImageNetPlus(root, reinforcements=imagenet.store, check=check)
    ds = ImageNetPlus(root, reinforcements=imagenet.store, check="none")
    assert len(ds) == len(files)


def test_missing_class_folder_is_a_class_count_error(imagenet, tmp_path):
    shutil.copytree(imagenet.root / "train", tmp_path / "train")
    shutil.rmtree(sorted((tmp_path / "train").iterdir())[0])
    with pytest.raises(AlignmentError, match=rf"has {imagenet.num_classes} classes but the base dataset has "
                                             rf"{imagenet.num_classes - 1}"):
        ImageNetPlus(tmp_path, reinforcements=imagenet.store)


def test_relabelled_copy_is_rejected(imagenet):
    base = imagenet.base()
    base.samples = [(p, (t + 1) % imagenet.num_classes) for p, t in base.samples]
    base.targets = [t for _, t in base.samples]
    with pytest.raises(AlignmentError, match=r"sample 0 of the dataset \('n01440764/.*'\) has label 1 but"):
        ReinforcedDataset(base, imagenet.store)


def test_store_of_another_dataset_split_or_class_count(imagenet, food, tmp_path):
    with pytest.raises(AlignmentError, match="imagenet/train, not food101/train"):
        Food101Plus(food.root, reinforcements=imagenet.store)
    with pytest.raises(AlignmentError, match=r"built for dataset 'imagenet'.*Food101"):
        ReinforcedDataset(food.base(), imagenet.store)
    with pytest.raises(AlignmentError, match=r"built for split 'train', but the base dataset is split 'val'"):
        ReinforcedDataset(imagenet.base("val"), imagenet.store)
    with pytest.raises(AlignmentError, match=r"has 4 classes but the base dataset has 100"):
        _cifar_with_store(tmp_path, imagenet.store)


def _cifar_with_store(tmp_path, store):
    from fakes.torchvision_data import skip_md5_checks

    make_cifar100(tmp_path / "cifar", 2, 1)
    with skip_md5_checks():
        base = tvd.CIFAR100(tmp_path / "cifar", train=True)
    base_name_free = Subset(base, range(len(base)))  # no dataset name: the class count is what differs
    base_name_free.classes = base.classes
    ReinforcedDataset(base_name_free, store)


def test_bad_split_and_root(imagenet, tmp_path):
    with pytest.raises(ValueError, match=r"^Unknown value 'test' for argument split\. Valid values are "
                                         r"\{train, val\}\.$"):
        ImageNetPlus(imagenet.root, split="test", reinforcements=imagenet.store)
    with pytest.raises(ValueError, match=r"Unknown value 'val' for argument split\. Valid values are \{train, test\}"):
        Food101Plus(tmp_path, split="val")
    with pytest.raises(FileNotFoundError, match=rf"root='{tmp_path}'.*food-101/images"):
        Food101Plus(tmp_path)
    with pytest.raises(FileNotFoundError, match=rf"root='{tmp_path}'.*cifar-100-python/train"):
        CIFAR100Plus(tmp_path)
    with pytest.raises(FileNotFoundError, match=rf"no ImageNet 'train' split under root='{tmp_path}'"):
        ImageNetPlus(tmp_path, reinforcements=imagenet.store)


def test_bad_arguments(imagenet, tmp_path):
    base = imagenet.base()
    for kw, pattern in [
        (dict(densify="hard"), r"Unknown value 'hard' for argument densify\. Valid values are \{smooth, none\}"),
        (dict(sampling="epoch"), r"argument sampling\. Valid values are \{random, cycle\}"),
        (dict(check="some"), r"argument check\. Valid values are \{fast, full, none\}"),
        (dict(p_original=1.5), r"p_original must be a probability"),
        (dict(num_augmentations=0), r"num_augmentations must be a positive integer"),
        (dict(device="cuda", transform=lambda x: x), r"transform/target_transform apply to the CPU path"),
    ]:
        with pytest.raises(ReinforcementError, match=pattern):
            ReinforcedDataset(base, imagenet.store, **kw)
    with pytest.raises(StoreError, match="num_augmentations=99"):
        ReinforcedDataset(base, imagenet.store, num_augmentations=99)
    with pytest.raises(StoreError):
        ReinforcedDataset(base, tmp_path / "no-store-here")
    ds = ReinforcedDataset(base, imagenet.store)
    with pytest.raises(ReinforcementError, match="epoch must be a non-negative integer"):
        ds.set_epoch(-1)
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_transforms_override_and_fewer_augmentations(imagenet):
    base = imagenet.base()
    plain = ReinforcedDataset(base, imagenet.store, seed=9, p_original=0.0, num_augmentations=2)
    custom = ReinforcedDataset(base, imagenet.store, seed=9, p_original=0.0, num_augmentations=2,
                               transform=lambda u8: u8, target_transform=lambda t: t * 2)
    assert plain.num_augmentations == 2
    for epoch in range(3):
        plain.set_epoch(epoch)
        custom.set_epoch(epoch)
        for d in range(len(plain)):
            assert plain.choose(d)[1] < 2
            (x, t), (u8, t2) = plain[d], custom[d]
            assert u8.dtype == torch.uint8
            assert torch.equal(plain.policy.normalize(u8), x) and torch.equal(t2, 2 * t)


def test_same_seed_same_items_other_seed_other_choices(imagenet):
    base = imagenet.base()
    keys = sample_keys(base)
    a, b = (ReinforcedDataset(base, imagenet.store, seed=21, p_original=0.2) for _ in range(2))
    _assert_same_items(_items(a, keys), _items(b, keys))
    c = ReinforcedDataset(base, imagenet.store, seed=22, p_original=0.2)
    choices = lambda ds: [ds.choose(d, e) for d in range(len(ds)) for e in range(4)]  # noqa: E731
    assert choices(a) != choices(c)
    assert "ReinforcedDataset(base=ImageNet" in repr(a) and "seed=21" in repr(a)
    np.testing.assert_array_equal(a.labels, np.asarray(base.targets))


def test_without_the_hub_module_only_local_folders_are_accepted(imagenet, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "imagenet_plus.hub", None)  # import fails as if the module were absent
    base = imagenet.base()
    ds = ReinforcedDataset(base, str(imagenet.store), seed=0)
    assert len(ds) == len(base)
    with pytest.raises(StoreError, match=r"reinforcements='org/imagenet-plus@v1': no such folder.*imagenet_plus\.hub"):
        ReinforcedDataset(base, "org/imagenet-plus@v1")
