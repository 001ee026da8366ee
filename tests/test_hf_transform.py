"""The ``datasets`` transform replays exactly what ReinforcedDataset replays: same choices, partners, epochs, workers."""

from __future__ import annotations

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from fakes.replay_store import write_replay_store
from fakes.torchvision_data import make_food101
from imagenet_plus.adapters import create_adapter
from imagenet_plus.augment import create_policy
from imagenet_plus.datasets import ReinforcedDataset
from imagenet_plus.errors import AlignmentError
from imagenet_plus.hf import create_transform, export_parquet


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """A mixing policy's store over a fake Food-101, exported with its images."""
    tmp = tmp_path_factory.mktemp("hft")
    make_food101(tmp / "food", 3, 3, 1)
    adapter = create_adapter("food101", tmp / "food", "train")
    policy = create_policy("rrc+mix+ra/re", output_size=24, mix={"prob": 1.0})
    write_replay_store(tmp / "store", adapter, policy, num_augmentations=4)
    export_parquet(tmp / "store", tmp / "store", base=adapter, images=True)
    return adapter, tmp / "store"


def _rows(folder):
    return datasets.load_dataset(str(folder), split="train")


def test_defaults_match_the_dataset():
    import inspect

    from imagenet_plus.datasets import ReinforcedDataset as RD

    t = inspect.signature(create_transform).parameters
    d = inspect.signature(RD).parameters
    for name in ("p_original", "densify", "sampling"):
        assert t[name].default == d[name].default, name


@pytest.mark.parametrize("sampling", ["random", "cycle"])
def test_items_equal_reinforced_dataset_items_with_partners_and_originals(mixed, sampling):
    adapter, folder = mixed
    rows = _rows(folder)
    rd = ReinforcedDataset(adapter, folder, seed=11, p_original=0.25, sampling=sampling)
    t = create_transform(folder, seed=11, p_original=0.25, sampling=sampling, partners=rows)
    mixes = originals = 0
    for epoch in range(4):
        rd.set_epoch(epoch)
        t.set_epoch(epoch)
        x, y = t.items([rows[i] for i in range(len(rows))])
        for i in range(len(rows)):
            original, j = rd.choose(i)
            assert t.choose(i) == (original, j)
            rx, ry = rd[i]
            assert torch.equal(x[i], rx) and torch.equal(y[i], ry), (epoch, i)
            originals += original
            mixes += (not original) and int(rd.source.store.params(i, j)["mix_kind"]) != 0
    assert originals > 0 and mixes > 5


def test_set_epoch_reaches_persistent_workers(mixed):
    adapter, folder = mixed
    rows = _rows(folder)
    t = create_transform(folder, seed=2, partners=rows)
    ds = rows.with_transform(t)
    loader = DataLoader(ds, batch_size=4, num_workers=2, persistent_workers=True)
    rd = ReinforcedDataset(adapter, folder, seed=2)
    for epoch in range(3):
        t.set_epoch(epoch)
        rd.set_epoch(epoch)
        got = torch.cat([b["pixel_values"] for b in loader])
        want = torch.stack([x for x, _ in rd.__getitems__(list(range(len(rd))))])
        assert torch.equal(got, want), epoch


def test_a_row_with_another_picture_is_refused(mixed):
    adapter, folder = mixed
    rows = _rows(folder)
    t = create_transform(folder, seed=0, partners=rows)
    row = dict(rows[0])
    row["image"] = rows[3]["image"].resize(row["image"].size)
    with pytest.raises(AlignmentError, match=r"row 0 .*another picture"):
        t.item(row)
