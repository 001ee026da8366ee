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
from imagenet_plus.adapters import adapt
from imagenet_plus.datasets import CIFAR100Plus, Food101Plus, ImageNetPlus, ReinforcedDataset
from imagenet_plus.errors import (AlignmentError, ArgumentError, ImageDecodeError, IntegrityError, ReinforcementError,
                                  StoreError)
from test_datasets import build_case


def sample_keys(base):
    return adapt(base).keys()


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
    assert moved.reinforced.source.to_store is not None
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
    with pytest.raises(AlignmentError, match=rf"key '{wnid}/extra.JPEG'.* is not in the store"):
        ImageNetPlus(root, reinforcements=imagenet.store)


def _all_items(ds):
    for d in range(len(ds)):
        ds[d]


def test_swapped_files_fail_every_time_naming_both(imagenet, tmp_path):
    """Finding 1: the old random check accepted a copy with two swapped files in 12 of 20 constructions."""
    root = _copy_imagenet(imagenet, tmp_path / "copy")
    files = sorted((root / "train").rglob("*.JPEG"))
    a, b = files[1].read_bytes(), files[6].read_bytes()
    files[1].write_bytes(b)
    files[6].write_bytes(a)
    keys = [f"{f.parent.name}/{f.name}" for f in (files[1], files[6])]
    for seed in range(20):
        ds = ImageNetPlus(root, reinforcements=imagenet.store, seed=seed, p_original=0.5)
        for key in keys:
            d = sample_keys(ds.base).index(key)
            with pytest.raises(AlignmentError, match=rf"key {key!r}, file .*{files[0].suffix}\).*content differs"):
                ds[d]


def test_reencoded_file_fails_exact_and_passes_resized(imagenet, tmp_path):
    root = _copy_imagenet(imagenet, tmp_path / "copy")
    victim = sorted((root / "train").rglob("*.JPEG"))[4]
    Image.open(victim).convert("RGB").save(victim, "JPEG", quality=60)  # same picture, other bytes
    key = f"{victim.parent.name}/{victim.name}"
    ds = ImageNetPlus(root, reinforcements=imagenet.store, seed=3)
    d = sample_keys(ds.base).index(key)
    with pytest.raises(AlignmentError, match=rf"{key}.*content differs.*check='resized'"):
        ds[d]
    resized = ImageNetPlus(root, reinforcements=imagenet.store, seed=3, check="resized")
    _all_items(resized)


def test_resized_copy_replays_the_same_regions(imagenet, tmp_path):
    root = _copy_imagenet(imagenet, tmp_path / "copy")
    for f in (root / "train").rglob("*.JPEG"):
        im = Image.open(f).convert("RGB")
        im.resize((im.width * 2, im.height * 2), Image.BICUBIC).save(f, "JPEG", quality=95)
    with pytest.raises(AlignmentError, match="content differs"):
        _all_items(ImageNetPlus(root, reinforcements=imagenet.store, seed=1))
    big = ImageNetPlus(root, reinforcements=imagenet.store, seed=1, p_original=0.0, check="resized")
    orig = ImageNetPlus(imagenet.root, reinforcements=imagenet.store, seed=1, p_original=0.0)
    for d in range(len(big)):
        assert big.reinforced.choose(d) == orig.reinforced.choose(d)
        # the crop fractions pick the same region; resampled from 2x the pixels it stays close
        assert float((big[d][0] - orig[d][0]).abs().mean()) < 0.35, d


def test_another_picture_under_the_same_name_fails_both_checks(imagenet, tmp_path):
    root = _copy_imagenet(imagenet, tmp_path / "copy")
    files = sorted((root / "train").rglob("*.JPEG"))
    Image.open(files[0]).convert("RGB").resize(Image.open(files[5]).size).save(files[5], "JPEG", quality=95)
    key = f"{files[5].parent.name}/{files[5].name}"
    for check, pattern in (("exact", "content differs"), ("resized", "another picture")):
        ds = ImageNetPlus(root, reinforcements=imagenet.store, check=check)
        with pytest.raises(AlignmentError, match=rf"{key}.*{pattern}"):
            ds[sample_keys(ds.base).index(key)]


def test_truncated_file_names_the_file_inside_a_dataloader_worker(imagenet, tmp_path):
    """Finding 5: a truncated JPEG used to kill a worker with 'image file is truncated', naming no file."""
    from torch.utils.data import DataLoader

    root = _copy_imagenet(imagenet, tmp_path / "copy")
    victim = sorted((root / "train").rglob("*.JPEG"))[2]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) * 2 // 3])
    ds = ImageNetPlus(root, reinforcements=imagenet.store)  # construction stays cheap: no image is decoded
    with pytest.raises(ImageDecodeError, match=rf"{victim.name}.*truncated, corrupt or not an image"):
        for _ in DataLoader(ds, batch_size=4, num_workers=1):
            pass


def test_a_plain_wrapper_is_told_how_to_give_keys(imagenet):
    class Wrapper(torch.utils.data.Dataset):
        def __init__(self, inner):
            self.inner = inner

        def __len__(self):
            return len(self.inner)

        def __getitem__(self, i):
            return self.inner[i]

    with pytest.raises(AlignmentError, match=r"cannot tell which sample of Wrapper is which.*`keys`"):
        ReinforcedDataset(Wrapper(imagenet.base()), imagenet.store)
    keyed = Wrapper(imagenet.base())
    keyed.keys = sample_keys(imagenet.base())
    _all_items(ReinforcedDataset(keyed, imagenet.store, check="resized"))


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
    with pytest.raises(AlignmentError, match=r"sample 0 \(key 'n01440764/.*'.*\) of the dataset has label 1 but"):
        ReinforcedDataset(base, imagenet.store)


def test_store_of_another_dataset_split_or_class_count(imagenet, food, tmp_path):
    # the wrapper and ReinforcedDataset refuse with the one check (datasets._check_meta), the same words
    with pytest.raises(AlignmentError, match=r"\(imagenet/train\) was built for dataset 'imagenet', but the base "
                                             r"dataset is Food101 \('food101'\); pass reinforcements built for food101"):
        Food101Plus(food.root, reinforcements=imagenet.store)
    with pytest.raises(AlignmentError, match=r"built for dataset 'imagenet'.*Food101"):
        ReinforcedDataset(food.base(), imagenet.store)
    with pytest.raises(AlignmentError, match=r"built for split 'train', but the base dataset is split 'val'"):
        ReinforcedDataset(imagenet.base("val"), imagenet.store)
    with pytest.raises(AlignmentError, match=r"built for dataset 'imagenet'.*'cifar100'"):
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
    with pytest.raises(ArgumentError, match=r"^Unknown value 'test' for argument split\. Valid values are "
                                            r"\{train, val\}\.$"):
        ImageNetPlus(imagenet.root, split="test", reinforcements=imagenet.store)
    with pytest.raises(ArgumentError, match=r"Unknown value 'val' for argument split\. Valid values are \{train, test\}"):
        Food101Plus(tmp_path, split="val")
    with pytest.raises(FileNotFoundError, match=r"Food101.*missing or incomplete.*never downloads"):
        Food101Plus(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"CIFAR100.*missing or incomplete"):
        CIFAR100Plus(tmp_path)
    with pytest.raises(FileNotFoundError, match=rf"split='train' \(class folders train/<wnid>/\*\.JPEG"):
        ImageNetPlus(tmp_path, reinforcements=imagenet.store)


def test_bad_arguments(imagenet, tmp_path):
    base = imagenet.base()
    for kw, pattern in [
        (dict(densify="hard"), r"Unknown value 'hard' for argument densify\. Valid values are \{smooth, none\}"),
        (dict(sampling="epoch"), r"argument sampling\. Valid values are \{random, cycle\}"),
        (dict(check="fast"), r"argument check\. Valid values are \{exact, resized\}"),
        (dict(p_original=1.5), r"Invalid value 1\.5 for argument p_original"),
        (dict(num_augmentations=0), r"Invalid value 0 for argument num_augmentations"),
        (dict(device="meta", transform=lambda x: x), r"transform/target_transform apply to the CPU path"),
    ]:
        with pytest.raises(ArgumentError, match=pattern):
            ReinforcedDataset(base, imagenet.store, **kw)
    with pytest.raises(StoreError, match="num_augmentations=99"):
        ReinforcedDataset(base, imagenet.store, num_augmentations=99)
    with pytest.raises(StoreError):
        ReinforcedDataset(base, tmp_path / "no-store-here")
    ds = ReinforcedDataset(base, imagenet.store)
    with pytest.raises(ArgumentError, match="Invalid value -1 for argument epoch"):
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


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the error case cannot occur")
def test_cuda_without_cuda_fails_at_construction(imagenet):
    """Finding 9: device='cuda' used to construct fine and fail at the first batch."""
    with pytest.raises(ArgumentError, match=r"device='cuda': CUDA is not available on this machine"):
        ReinforcedDataset(imagenet.base(), imagenet.store, device="cuda")


def test_a_flipped_byte_in_a_shard_stops_training_naming_the_shard(imagenet, tmp_path):
    """Finding 6: a one-byte flip in a shard used to train silently."""
    shutil.copytree(imagenet.store, tmp_path / "store")
    shard = sorted((tmp_path / "store" / "reinforcements").glob("*.safetensors"))[0]
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0x10  # inside the last tensor of the shard (its first sample row)
    shard.write_bytes(bytes(data))
    ds = ReinforcedDataset(imagenet.base(), tmp_path / "store", seed=0, p_original=0.0, sampling="cycle")
    with pytest.raises(IntegrityError, match=rf"{shard.name}.*verify"):
        for epoch in range(ds.num_augmentations):  # every record once
            ds.set_epoch(epoch)
            for d in range(len(ds)):
                ds[d]


# ----------------------------------------------------------------------------- Subsets of the store's samples
def test_partial_subset_serves_the_full_datasets_items_partners_included(food):
    """A Subset of part of the store's samples (a 10% run): its items are the full dataset's at those samples.

    Food's policy mixes: a record's partner may be a sample outside the subset, loaded from the copy under it.
    """
    base = food.base()
    n = len(base)
    idx = [n - 1, 0, 2, 2]  # part of the samples, in another order, one of them twice
    kw = dict(seed=4, p_original=0.25)
    full = ReinforcedDataset(base, food.store, **kw)
    part = ReinforcedDataset(Subset(base, idx), food.store, **kw)
    nested = ReinforcedDataset(Subset(Subset(base, idx), [3, 0]), food.store, **kw)  # rows 2 and n-1
    assert len(part) == 4 and part.labels.tolist() == full.labels[idx].tolist()
    outside = 0
    for e in range(4):
        for ds in (full, part, nested):
            ds.set_epoch(e)
        for k, i in enumerate(idx):
            a, b = full[i], part[k]
            assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]), (e, k)
        batch = part.__getitems__([0, 1, 2, 3])  # the DataLoader's batched path
        assert all(torch.equal(batch[k][0], full[i][0]) for k, i in enumerate(idx))
        assert torch.equal(nested[0][0], full[2][0]) and torch.equal(nested[1][0], full[n - 1][0])
        plan = full.source.plan(idx, e)
        params = full.store.params_batch(plan.store_index, plan.aug)
        mixes = (np.asarray(params["mix_kind"]).reshape(-1) != 0) & ~plan.original
        outside += sum(int(p) not in idx for p in np.asarray(params["mix_partner"]).reshape(-1)[mixes])
    assert outside > 0  # some served record mixed with a partner outside the subset


def test_subset_of_a_copy_missing_files(imagenet, food, tmp_path):
    """A copy lacking files: refused whole (with the Subset advice); a Subset of it serves what it has when the
    policy does not mix, and is refused when it mixes (partners come from the whole store)."""
    root = _copy_imagenet(imagenet, tmp_path / "copy")
    victim = sorted((root / "train").rglob("*.JPEG"))[3]
    victim.unlink()
    with pytest.raises(AlignmentError, match=r"missing from the dataset copy.*restore.*torch\.utils\.data\.Subset"):
        ImageNetPlus(root, reinforcements=imagenet.store)
    partial = tvd.ImageFolder(root / "train")
    kw = dict(seed=3, p_original=0.2)
    part = ReinforcedDataset(Subset(partial, range(len(partial))), imagenet.store, **kw)
    full = ReinforcedDataset(imagenet.base(), imagenet.store, **kw)
    keys = sample_keys(imagenet.base())
    where = {k: d for d, k in enumerate(keys)}
    for d, k in enumerate(sample_keys(partial)):
        a, b = part[d], full[where[k]]
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    copy = tmp_path / "food"
    shutil.copytree(food.root, copy)
    meta = copy / "food-101" / "meta" / "train.json"
    lists = json.loads(meta.read_text())
    first = sorted(lists)[0]
    meta.write_text(json.dumps({**lists, first: lists[first][1:]}))  # one training image fewer
    short = tvd.Food101(copy, split="train")
    with pytest.raises(AlignmentError, match=r"mixes each record with a partner.*\(1 of \d+ missing\).*Subset of a "
                                             r"complete copy"):
        ReinforcedDataset(Subset(short, [0, 1]), food.store)


def test_subset_with_a_sample_the_store_lacks_or_out_of_range(imagenet, tmp_path):
    base = imagenet.base()
    with pytest.raises(ArgumentError, match=r"Subset index 999 is out of range"):
        ReinforcedDataset(Subset(base, [0, 999]), imagenet.store)
    root = _copy_imagenet(imagenet, tmp_path / "copy")
    src = sorted((root / "train").rglob("*.JPEG"))[0]
    shutil.copy(src, src.with_name("extra.JPEG"))
    extra = tvd.ImageFolder(root / "train")
    d = sample_keys(extra).index(f"{src.parent.name}/extra.JPEG")
    ReinforcedDataset(Subset(extra, [k for k in range(len(extra)) if k != d]), imagenet.store)  # extra not served
    with pytest.raises(AlignmentError, match=r"sample 1 \(key '.*/extra\.JPEG'.*is not in the store"):
        ReinforcedDataset(Subset(extra, [1 if d == 0 else 0, d]), imagenet.store)
