"""The replay core: which record an item uses (seed, epoch, random/cycle, p_original), and the batched replay.

Also the dataset paths built on it: every item equals an independent per-record replay with
``Policy.apply`` of the stored params (and the partner's own stored params), for every preset;
choices follow the epoch per sample, across persistent DataLoader workers too.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, default_collate

from fakes.replay_store import write_replay_store
from fakes.torchvision_data import make_food101
from imagenet_plus.adapters import create_adapter
from imagenet_plus.augment import create_policy
from imagenet_plus.datasets import ReinforcedDataset
from imagenet_plus.errors import ArgumentError
from imagenet_plus.replay import Chooser, original_params
from imagenet_plus.targets import densify

PRESETS = ["rrc", "rrc+mix", "rrc+ra/re", "rrc+mix+ra/re", "cifar"]


def test_random_choices_follow_the_epoch_for_every_sample():
    c = Chooser(seed=5, num_augmentations=10, p_original=0.0, sampling="random")
    js = np.stack([c.choose(np.arange(50), e)[1] for e in range(30)])  # [epoch, sample]
    assert js.min() == 0 and js.max() == 9
    distinct = [len(set(js[:, s])) for s in range(50)]
    assert min(distinct) >= 5  # each sample moves between stored augmentations from epoch to epoch
    assert (js[0] != js[1]).mean() > 0.7  # and samples do not move in lockstep
    counts = np.bincount(js.reshape(-1), minlength=10)
    assert counts.min() > 0.7 * counts.mean()  # roughly uniform
    c.set_epoch(7)
    np.testing.assert_array_equal(c.choose(np.arange(50))[1], js[7])  # the shared epoch is what choose() uses


def test_cycle_replays_every_augmentation_once_per_cycle_in_a_per_sample_order():
    na = 6
    c = Chooser(seed=1, num_augmentations=na, p_original=0.0, sampling="cycle")
    js = np.stack([c.choose(np.arange(20), e)[1] for e in range(3 * na)])
    for cycle in range(3):
        block = js[cycle * na:(cycle + 1) * na]
        assert all(sorted(block[:, s]) == list(range(na)) for s in range(20))
    assert (js[:na] != js[na:2 * na]).any()  # a new order every cycle
    assert len({tuple(js[:na, s]) for s in range(20)}) > 10  # per-sample orders


def test_originals_are_drawn_per_sample_and_epoch():
    c = Chooser(seed=2, num_augmentations=4, p_original=0.25)
    orig = np.stack([c.choose(np.arange(400), e)[0] for e in range(4)])
    assert 0.2 < orig.mean() < 0.3
    assert (orig[0] != orig[1]).any()
    with pytest.raises(ArgumentError, match="p_original"):
        Chooser(seed=2, num_augmentations=4, p_original=1.5)
    with pytest.raises(ArgumentError, match="Unknown value 'shuffle' for argument sampling"):
        Chooser(seed=2, num_augmentations=4, sampling="shuffle")


def test_the_shared_epoch_survives_deep_copies():
    c = Chooser(seed=0, num_augmentations=3)
    d = copy.deepcopy(c)
    c.set_epoch(4)
    assert d.epoch.get() == 4


@pytest.fixture(scope="module")
def food(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("core")
    make_food101(tmp / "food", 4, 3, 1)
    return tmp, create_adapter("food101", tmp / "food", "train")


@pytest.fixture(scope="module", params=PRESETS)
def built(request, food):
    tmp, adapter = food
    policy = create_policy(request.param, output_size=24,
                           **({"geometry": {"padding": 4}} if request.param == "cifar" else {}))
    root = tmp / request.param.replace("/", "_").replace("+", "_")
    if not root.exists():
        write_replay_store(root, adapter, policy)
    params, ids, probs = _arrays(root, adapter, policy)
    return adapter, root, policy, params, ids, probs


def _arrays(root, adapter, policy):
    from imagenet_plus.store import open_store

    store = open_store(root)
    n, a = len(store), store.num_augmentations
    i, j = np.repeat(np.arange(n), a), np.tile(np.arange(a), n)
    params = {k: v.reshape(n, a, *v.shape[1:]) for k, v in store.params_batch(i, j).items()}
    ids, probs = store.targets_batch(i, j)
    return params, ids.reshape(n, a, -1), probs.reshape(n, a, -1)


def _reference(adapter, policy, params, ids, probs, i, j, num_classes):
    """Record (i, j) replayed independently: Policy.apply on the decoded image, the partner's own record."""
    rec = {k: v[i, j] for k, v in params.items()}
    partner = pparams = None
    if policy.uses_mix and int(rec["mix_kind"]) != 0:
        p = int(rec["mix_partner"])
        partner, pparams = adapter.load(p).image, {k: v[p, j] for k, v in params.items()}
    x = policy.normalize(policy.apply(adapter.load(i).image, rec, partner, pparams))
    return x, torch.from_numpy(densify(ids[i, j], probs[i, j], num_classes))


def test_items_equal_the_independent_per_record_replay(built):
    adapter, root, policy, params, ids, probs = built
    ds = ReinforcedDataset(adapter, root, seed=3, p_original=0.0)
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        batch = ds.__getitems__(list(range(len(ds))))
        for i, (x, y) in enumerate(batch):
            original, j = ds.choose(i)
            assert not original
            rx, ry = _reference(adapter, policy, params, ids, probs, i, j, ds.num_classes)
            assert torch.equal(x, rx), (i, j)
            torch.testing.assert_close(y, ry, atol=1e-6, rtol=0)
            assert torch.equal(ds[i][0], x)  # one item at a time == the batch


def test_the_dataset_uses_the_epoch_it_is_set_to(built):
    """Mutation guard: a dataset that ignored the epoch passed every dataset test before."""
    adapter, root, policy, params, ids, probs = built
    for sampling in ("random", "cycle"):
        ds = ReinforcedDataset(adapter, root, seed=9, p_original=0.3, sampling=sampling)
        seen = {i: set() for i in range(len(ds))}
        for epoch in range(6):
            ds.set_epoch(epoch)
            for i in range(len(ds)):
                original, j = ds.choose(i)
                assert (original, j) == ds.choose(i, epoch)
                x, y = ds[i]
                if original:
                    assert float(y.max()) == 1.0 and int(y.argmax()) == adapter.label(i)
                else:
                    assert torch.equal(x, _reference(adapter, policy, params, ids, probs, i, j, ds.num_classes)[0])
                seen[i].add((original, j))
        assert all(len(v) >= 3 for v in seen.values()), (sampling, seen)


def test_originals_get_the_policys_ordinary_random_augmentation(built):
    adapter, root, policy, params, ids, probs = built
    ds = ReinforcedDataset(adapter, root, seed=4, p_original=1.0)
    for epoch in (0, 3):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            img = adapter.load(i).image
            fresh = {k: v[0] for k, v in original_params(policy, 4, [i], epoch, [img.height], [img.width],
                                                         len(ds)).items()}
            assert int(fresh.get("mix_kind", 0)) == 0
            x, y = ds[i]
            assert torch.equal(x, policy.normalize(policy.apply(img, fresh)))
            assert torch.equal(y, torch.nn.functional.one_hot(torch.tensor(adapter.label(i)), ds.num_classes).float())


def test_device_path_equals_cpu_path(built):
    adapter, root, policy, params, ids, probs = built
    cpu = ReinforcedDataset(adapter, root, seed=6, p_original=0.3)
    dev = ReinforcedDataset(adapter, root, seed=6, p_original=0.3)
    dev.device = torch.device("meta")  # any non-CPU device selects the device path; DeviceReplay runs on the CPU here
    replay = dev.create_device_replay("cpu")
    for epoch in (0, 1):
        cpu.set_epoch(epoch)
        dev.set_epoch(epoch)
        idx = list(range(len(cpu)))
        x, y = replay(default_collate(dev.__getitems__(idx)))
        want = cpu.__getitems__(idx)
        assert torch.equal(x, torch.stack([w[0] for w in want]))
        torch.testing.assert_close(y, torch.stack([w[1] for w in want]), atol=1e-6, rtol=0)


def test_set_epoch_reaches_persistent_workers(built):
    adapter, root, policy, params, ids, probs = built
    ds = ReinforcedDataset(adapter, root, seed=8, p_original=0.2)
    loader = DataLoader(ds, batch_size=3, num_workers=2, persistent_workers=True, shuffle=False)
    for epoch in range(3):
        ds.set_epoch(epoch)
        got = torch.cat([x for x, _ in loader])
        want = torch.stack([x for x, _ in ds.__getitems__(list(range(len(ds))))])
        assert torch.equal(got, want), epoch


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the error case cannot occur")
def test_cuda_without_cuda_fails_at_construction(built):
    adapter, root, *_ = built
    with pytest.raises(ArgumentError, match="CUDA is not available"):
        ReinforcedDataset(adapter, root, device="cuda")


def test_one_replay_core_no_copies_of_its_logic():
    """Record choice, originals' params, partners and mixing's fields live in the replay core and the policy only:
    the `datasets` transform is a thin layer, and no module outside augment/ reads mixing's stored fields."""
    import re
    from pathlib import Path

    pkg = Path(__file__).resolve().parents[1] / "imagenet_plus"
    transform = (pkg / "hf" / "transform.py").read_text()
    for name in ("original_params", "records_batch", "params_batch", "partner_params", "render(", "make_targets",
                 "mix_", ".choose(s"):
        assert name not in transform, name
    readers = []
    for path in sorted(pkg.rglob("*.py")):
        rel = path.relative_to(pkg).as_posix()
        if rel.startswith("augment/") or rel == "mldr/_convert.py":  # the converter writes ml-dr's fields, all of them
            continue
        if re.search(r"mix_kind|mix_partner", path.read_text()):
            readers.append(rel)
    assert readers == []


def test_default_seeds_are_drawn_one_way(tmp_path, monkeypatch):
    import imagenet_plus.datasets as ds_module
    import imagenet_plus.hf.transform as tf_module
    from imagenet_plus.hf import create_transform
    from imagenet_plus.replay import draw_seed

    assert draw_seed(5) == 5
    drawn = {draw_seed() for _ in range(4)}
    assert len(drawn) == 4 and all(0 <= s < 1 << 63 for s in drawn)
    with pytest.raises(ArgumentError, match="seed"):
        draw_seed(-1)
    make_food101(tmp_path / "food", 3, 1, 1)
    adapter = create_adapter("food101", tmp_path / "food", "train")
    write_replay_store(tmp_path / "store", adapter, create_policy("rrc", output_size=16), num_augmentations=2)
    for module in (ds_module, tf_module):  # both paths draw through the one helper
        monkeypatch.setattr(module, "draw_seed", lambda seed=None: 12345 if seed is None else seed)
    assert ReinforcedDataset(adapter, tmp_path / "store").seed == 12345
    assert create_transform(tmp_path / "store").seed == 12345
    assert ReinforcedDataset(adapter, tmp_path / "store", seed=3).seed == create_transform(tmp_path / "store",
                                                                                            seed=3).seed == 3


def test_policy_says_which_records_mix_and_with_whom():
    policy = create_policy("rrc+mix", output_size=16, mix={"prob": 0.5})
    params = policy.sample(3, np.arange(40) % 10, np.arange(40) // 10, 30, 40, num_samples=10)
    mixes, partner = policy.mixing(params)
    assert mixes.dtype == bool and mixes.shape == partner.shape == (40,) and 0 < mixes.sum() < 40
    assert np.array_equal(mixes, params["mix_kind"] != 0)
    assert np.array_equal(partner[mixes], params["mix_partner"][mixes]) and (partner[~mixes] == 0).all()
    one = {k: v[int(np.flatnonzero(mixes)[0])] for k, v in params.items()}
    assert policy.mixing(one)[0].tolist() == [True]
    unmixed = policy.without_mixing(params, mixes)
    assert not policy.mixing(unmixed)[0].any() and policy.mixing(params)[0].sum() == mixes.sum()  # a copy
    plain = create_policy("rrc", output_size=16)
    p = plain.sample(0, np.arange(5), 0, 30, 40)
    assert plain.mixing(p)[0].tolist() == [False] * 5 and plain.mixing({k: v[0] for k, v in p.items()})[0].shape == (1,)
