"""Reinforced datasets over each torchvision dataset's own on-disk format.

For ImageNet, CIFAR-100, Flowers-102 and Food-101: write a miniature copy, build
a store over it with a random-init timm teacher (``build_reinforcements``),
then check that the teacher rerun on the replayed images reproduces the stored
top-k, that soft targets are distributions whose top-1 is the stored top-1,
that ``cycle`` sampling uses every augmentation once per cycle across
DataLoader workers, that the CPU and device paths give the same batches, and
that original images get the policy's own random augmentation (RandAugment and
erasing included, never mixed), identically on both paths and for any worker count.
Misalignment and bad input are in ``test_datasets_alignment.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
import timm
import timm.loss
import torch
from torch.utils.data import DataLoader, Dataset, default_collate
from torchvision import datasets as tvd

from fakes.torchvision_data import make_cifar100, make_flowers102, make_food101, make_imagenet, skip_md5_checks
from imagenet_plus import _rng
from imagenet_plus.augment import create_policy
from imagenet_plus.adapters import adapt
from imagenet_plus.builder import build_reinforcements
from imagenet_plus.datasets import CIFAR100Plus, Flowers102Plus, Food101Plus, ImageNetPlus, ReinforcedDataset
from imagenet_plus.imageio import image_size
from imagenet_plus.replay import _STREAM_ORIGINAL, original_params
from imagenet_plus.schema import PROB_CODE_SCALE
from imagenet_plus.targets import SoftTargetCrossEntropy

NUM_AUGS = 4
SIZE = 32


def load_sample(base, d):
    sample = adapt(base).load(d)
    return sample.image, sample.label


def _store_index(ds, d: int) -> int:
    to_store = ds.source.to_store
    return int(d) if to_store is None else int(to_store[d])


def _device_path(ds):
    """Select the device path (crops and sparse targets) on a machine without CUDA: DeviceReplay then runs on
    the CPU. ``device="cuda"`` itself is refused at construction where CUDA is missing."""
    ds.device = torch.device("meta")
    return ds


@dataclass
class Case:
    name: str
    plus: type
    root: object
    store: object
    model: torch.nn.Module
    policy: object
    num_classes: int
    topk: int

    @property
    def dataset(self) -> str:
        return self.name.split("-")[0]

    def base(self, split="train"):
        with skip_md5_checks():
            if self.dataset == "cifar100":
                return tvd.CIFAR100(self.root, train=split == "train")
            return {"imagenet": tvd.ImageNet, "flowers102": tvd.Flowers102,
                    "food101": tvd.Food101}[self.dataset](self.root, split=split)

    def plus_train(self, **kw):
        with skip_md5_checks():
            return self.plus(self.root, split="train", reinforcements=self.store, **kw)


_SPECS = {
    # name: (writer, Plus class, policy, topk)
    "imagenet": (lambda r: make_imagenet(r, 4, 2, 1), ImageNetPlus,
                 lambda: create_policy("rrc+ra/re", output_size=SIZE), 3),
    "cifar100": (lambda r: make_cifar100(r, 6, 2), CIFAR100Plus,
                 lambda: create_policy("cifar", output_size=SIZE, geometry={"padding": 4}), 5),
    "flowers102": (lambda r: make_flowers102(r, 15), Flowers102Plus,
                   lambda: create_policy("rrc+ra/re", output_size=SIZE), 5),
    "food101": (lambda r: make_food101(r, 4, 2, 1), Food101Plus,
                lambda: create_policy("rrc+mix+ra/re", output_size=SIZE), 3),
    # the two presets the cases above do not cover: a teacher rerun for every preset
    "flowers102-rrc": (lambda r: make_flowers102(r, 12), Flowers102Plus, lambda: create_policy("rrc", output_size=SIZE), 4),
    "imagenet-rrc+mix": (lambda r: make_imagenet(r, 4, 3, 1), ImageNetPlus,
                         lambda: create_policy("rrc+mix", output_size=SIZE), 3),
}


class _Sharpened(torch.nn.Module):
    """A random-init timm model with its logits scaled up, so its top-1 stands out as a trained teacher's does."""

    def __init__(self, num_classes: int, seed: int, scale: float = 40.0):
        super().__init__()
        torch.manual_seed(seed)
        self.net = timm.create_model("resnet10t", pretrained=False, num_classes=num_classes)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) * self.scale


def _teacher(num_classes: int, seed: int) -> torch.nn.Module:
    return _Sharpened(num_classes, seed).eval()


def build_case(name: str, tmp) -> Case:
    writer, plus, make_policy, topk = _SPECS[name]
    fake = writer(tmp / "data")
    policy = make_policy()
    model = _teacher(fake.num_classes, 0)
    case = Case(name, plus, fake.root, tmp / "store", model, policy, fake.num_classes, topk)

    def teacher(u8: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(policy.normalize(u8)).softmax(-1)

    build_reinforcements(case.base(), case.store, policy=policy, teacher=teacher, num_classes=fake.num_classes,
                         num_augmentations=NUM_AUGS, topk=topk, seed=7, dataset_name=case.dataset,
                         teacher_desc={"model": "resnet10t", "init": "random"}, samples_per_shard=3,
                         augs_per_shard=2, batch_size=8, progress=False, split="train")
    return case


@pytest.fixture(scope="module", params=list(_SPECS))
def case(request, tmp_path_factory):
    return build_case(request.param, tmp_path_factory.mktemp(request.param))


def test_teacher_rerun_on_replayed_images_reproduces_stored_topk(case):
    ds = case.plus_train(p_original=0.0, seed=3)
    r = ds.reinforced
    store = r.store
    seen = set()
    for epoch in range(2):
        ds.set_epoch(epoch)
        for d in range(len(ds)):
            image, target = ds[d]
            original, j = r.choose(d)
            assert not original
            i = _store_index(r, d)
            seen.add(j)
            ids, probs = store.targets(i, j)
            assert image.dtype == torch.float32 and image.shape == (3, SIZE, SIZE)
            with torch.no_grad():
                rerun = case.model(image[None]).softmax(-1)[0].double().numpy()
            top = np.argsort(-rerun, kind="stable")[:case.topk]
            np.testing.assert_array_equal(top, ids, err_msg=f"{case.name} sample {d} aug {j}")
            # 8-bit log codes: +-1/(2*20) nats per value, plus the renormalisation over K + 1 values.
            keep = probs > 1e-4
            err = np.abs(np.log(probs[keep]) - np.log(rerun[top][keep]))
            assert err.max() <= 1.0 / PROB_CODE_SCALE + 1e-3, (case.name, d, j, err.max())
            # Soft target: a distribution, top-1 the stored top-1, top-k mass as stored.
            assert target.dtype == torch.float32 and target.shape == (case.num_classes,)
            assert math.isclose(float(target.sum()), 1.0, abs_tol=1e-5)
            assert float(target[ids[0]]) == float(target.max())  # ties: values within one 8-bit code
            np.testing.assert_allclose(target[ids].numpy(), probs, rtol=1e-5, atol=1e-7)
    assert len(seen) > 1


def test_cycle_uses_every_augmentation_once_per_cycle_across_workers(case):
    ds = _device_path(ReinforcedDataset(case.base(), case.store, sampling="cycle", p_original=0.0, seed=11))
    store = ds.store

    class WithIndex(Dataset):
        def __len__(self):
            return len(ds)

        def __getitem__(self, k):
            return k, ds[k]

    def identify(k, params, ids):
        i = _store_index(ds, k)
        hits = [j for j in range(NUM_AUGS)
                if all(np.array_equal(params[f].numpy(), np.asarray(v).astype(np.int64))
                       for f, v in store.params(i, j).items())
                and np.array_equal(ids.numpy(), store.targets(i, j)[0])]
        assert len(hits) == 1, (k, hits)
        return hits[0]

    def run(num_workers):
        loader = DataLoader(WithIndex(), batch_size=3, shuffle=True, num_workers=num_workers,
                            persistent_workers=num_workers > 0, generator=torch.Generator().manual_seed(0))
        used = {}
        for epoch in range(2 * NUM_AUGS):
            ds.set_epoch(epoch)
            for ks, batch in loader:
                for b, k in enumerate(ks.tolist()):
                    params = {f: v[b] for f, v in batch["params"].items()}
                    used[(k, epoch)] = identify(k, params, batch["topk_ids"][b])
        return used

    used = run(2)
    for k in range(len(ds)):
        for cycle in range(2):
            js = [used[(k, cycle * NUM_AUGS + e)] for e in range(NUM_AUGS)]
            assert sorted(js) == list(range(NUM_AUGS)), (k, cycle, js)
            assert js == [ds.choose(k, cycle * NUM_AUGS + e)[1] for e in range(NUM_AUGS)]
    assert run(0) == used  # the worker count changes nothing


def test_cpu_and_device_paths_give_the_same_batch(case):
    kw = dict(p_original=0.3, seed=5)
    cpu = ReinforcedDataset(case.base(), case.store, **kw)
    dev = _device_path(ReinforcedDataset(case.base(), case.store, **kw))
    replay = dev.create_device_replay(device="cpu")
    for epoch in (0, 1):
        cpu.set_epoch(epoch)
        dev.set_epoch(epoch)
        order = list(range(len(cpu)))[::-1]
        images, targets = zip(*(cpu[k] for k in order))
        batch = default_collate([dev[k] for k in order])
        x, t = replay(batch)
        assert torch.equal(torch.stack(images), x), case.name
        torch.testing.assert_close(torch.stack(targets), t, rtol=0, atol=1e-6)  # float32 sums differ by an ulp
    originals = [cpu.choose(k, e)[0] for k in range(len(cpu)) for e in (0, 1)]
    assert any(originals) and not all(originals)


def test_wrapper_device_path_matches_its_cpu_path(case):
    """The README's GPU pattern on the wrapper classes (run here with the replay on the CPU)."""
    cpu = case.plus_train(p_original=0.0, seed=2)
    dev = case.plus_train(p_original=0.0, seed=2)
    _device_path(dev.reinforced)
    replay = dev.create_device_replay("cpu")
    order = list(range(len(cpu)))
    x, t = replay(default_collate([dev[k] for k in order]))
    images, targets = zip(*(cpu[k] for k in order))
    assert torch.equal(torch.stack(images), x)
    torch.testing.assert_close(torch.stack(targets), t, rtol=0, atol=1e-6)


def test_original_images_get_one_hot_targets(case):
    ds = case.plus_train(p_original=1.0, seed=2)
    base = case.base()
    for d in range(min(3, len(ds))):
        image, target = ds[d]
        assert image.shape == (3, SIZE, SIZE)
        assert float(target.max()) == 1.0 and int(target.argmax()) == base[d][1]


def _expected_original_params(policy, seed, i, epoch, image, num_samples):
    """Original-image params drawn as the issue states: ``Policy.sample`` under stream 103, mixing off."""
    derived = int(_rng.record_keys(seed, 0, 0, stream=_STREAM_ORIGINAL)) >> 1
    drawn = policy.sample(derived, i, epoch, image.height, image.width, num_samples)
    params = {k: v[0] for k, v in drawn.items()}
    if policy.uses_mix:
        params.update(mix_partner=np.zeros((), "<u4"), mix_kind=np.zeros((), "|u1"),
                      mix_lam=np.full((), 65535, "<u2"), mix_box=np.zeros_like(params["mix_box"]))
    return params


def _identity(x):
    return x


def test_original_images_get_the_policys_random_augmentation(case):
    ds = ReinforcedDataset(case.base(), case.store, p_original=1.0, seed=2, transform=_identity)
    base = case.base()
    with_ra = changed_by_finish = 0
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        for d in range(len(ds)):
            image, label = load_sample(base, d)
            params = _expected_original_params(case.policy, 2, _store_index(ds, d), epoch, image, len(ds))
            case.policy.check_params(params)
            x, target = ds[d]
            assert torch.equal(x, case.policy.apply(image, params)), (case.name, d, epoch)
            assert torch.equal(target, torch.nn.functional.one_hot(torch.tensor(label), case.num_classes).float())
            with_ra += int(params["ops"]) >> 1 != 0
            changed_by_finish += not torch.equal(x, case.policy.crop(image, params))
    n = 2 * len(ds)
    if case.policy.config["randaugment"]:
        assert with_ra > n // 2  # RandAugment(2, 9) ops drawn for originals (only op id 0 twice encodes as 0)
        assert changed_by_finish > n // 2, (case.name, changed_by_finish, n)
    else:
        assert with_ra == 0 and changed_by_finish == 0  # crop and flip only


def test_soft_targets_work_with_timm_and_our_loss(case):
    ds = case.plus_train(p_original=0.0, seed=1)
    images, targets = default_collate([ds[k] for k in range(len(ds))])
    logits = case.model(images)
    ours = SoftTargetCrossEntropy()(logits, targets)
    theirs = timm.loss.SoftTargetCrossEntropy()(logits, targets)
    torch.testing.assert_close(ours, theirs)
    assert torch.isfinite(ours)


def test_evaluation_split_yields_image_and_label(case):
    split = {"imagenet": "val", "cifar100": "test", "flowers102": "val", "food101": "test"}[case.dataset]
    with skip_md5_checks():
        ds = case.plus(case.root, split=split)
    base = case.base(split)
    assert len(ds) == len(base) and ds.reinforced is None
    image, label = ds[0]
    assert image.dtype == torch.float32 and image.shape == (3, 224, 224)
    assert label == base[0][1] and isinstance(label, int)
    assert f"split={split}" in repr(ds)


@pytest.fixture(scope="module")
def erasing_case(tmp_path_factory):
    """A small ImageNet store whose policy always erases (p=1, fill 0), so erased originals are visible."""
    tmp = tmp_path_factory.mktemp("erasing")
    fake = make_imagenet(tmp / "data", 3, 2, 1)
    policy = create_policy("rrc+ra/re", output_size=SIZE, erasing={"p": 1.0, "value": 0})
    case = Case("imagenet", ImageNetPlus, fake.root, tmp / "store", None, policy, fake.num_classes, 2)
    weights = torch.randn(3, fake.num_classes, generator=torch.Generator().manual_seed(0))

    def teacher(u8: torch.Tensor) -> torch.Tensor:
        return (u8.float().mean((2, 3)) / 64 @ weights).softmax(-1)

    build_reinforcements(case.base(), case.store, policy=policy, teacher=teacher, num_classes=fake.num_classes,
                         num_augmentations=2, topk=2, seed=3, dataset_name="imagenet",
                         teacher_desc={"model": "linear", "init": "random"}, samples_per_shard=4,
                         augs_per_shard=2, batch_size=8, progress=False, split="train")
    return case


def test_originals_are_erased_when_the_policy_always_erases(erasing_case):
    case = erasing_case
    cpu = ReinforcedDataset(case.base(), case.store, p_original=1.0, seed=4, transform=_identity)
    dev = _device_path(ReinforcedDataset(case.base(), case.store, p_original=1.0, seed=4))
    for d in range(len(cpu)):
        h, w = image_size(load_sample(case.base(), d)[0])
        params = {k: v[0] for k, v in original_params(case.policy, 4, [_store_index(cpu, d)], 0, [h], [w],
                                                        len(cpu)).items()}
        top, left, h, w = (int(v) for v in params["erase"])
        assert h > 0 and w > 0, params
        x, _ = cpu[d]
        box = x[:, top:top + h, left:left + w]
        assert int(box.max()) == 0, d  # the erased box holds the fill value
        assert int(x.max()) > 0  # and the rest of the image is still there
    order = list(range(len(dev)))
    x, t = dev.create_device_replay(device="cpu")(default_collate([dev[k] for k in order]))
    normalised = ReinforcedDataset(case.base(), case.store, p_original=1.0, seed=4)
    assert torch.equal(x, torch.stack([normalised[k][0] for k in order]))
    hot = torch.nn.functional.one_hot(torch.as_tensor(normalised.labels), case.num_classes).float()
    torch.testing.assert_close(t, hot)


def test_originals_do_not_depend_on_the_worker_count(erasing_case):
    ds = ReinforcedDataset(erasing_case.base(), erasing_case.store, p_original=0.5, seed=6)

    def run(num_workers):
        loader = DataLoader(ds, batch_size=4, num_workers=num_workers, persistent_workers=num_workers > 0)
        out = []
        for epoch in range(3):
            ds.set_epoch(epoch)
            out += [(x.clone(), y.clone()) for x, y in loader]
        return out

    kinds = [ds.choose(k, e)[0] for k in range(len(ds)) for e in range(3)]
    assert any(kinds) and not all(kinds)
    for (xa, ya), (xb, yb) in zip(run(0), run(2), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
