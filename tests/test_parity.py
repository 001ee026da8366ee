"""Every replay path gives the same item for the same (seed, epoch, index): one replay core, no copies.

Paths: ``ReinforcedDataset`` on the CPU (one item and a whole batch through ``__getitems__``), the
device path finished by ``DeviceReplay`` (on the CPU here), the ``datasets`` transform over the
Parquet export, and the exact replay of one record the CLI (``show``, ``verify --teacher``) and the
builder's read-back check use. A mixing policy, so partners take part too, and originals.
"""

from __future__ import annotations

import datasets
import pytest
import torch
from torch.utils.data import default_collate

from fakes.replay_store import write_replay_store
from fakes.torchvision_data import make_food101
from imagenet_plus.adapters import create_adapter
from imagenet_plus.augment import create_policy
from imagenet_plus.datasets import ReinforcedDataset
from imagenet_plus.hf import create_transform, export_parquet


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))


@pytest.mark.parametrize("sampling", ["random", "cycle"])
def test_all_paths_give_identical_items(tmp_path, sampling):
    make_food101(tmp_path / "food", 3, 3, 1)
    adapter = create_adapter("food101", tmp_path / "food", "train")
    policy = create_policy("rrc+mix+ra/re", output_size=24, mix={"prob": 0.8})
    write_replay_store(tmp_path / "store", adapter, policy, num_augmentations=4)
    export_parquet(tmp_path / "store", tmp_path / "store", base=adapter, images=True)
    rows = datasets.load_dataset(str(tmp_path / "store"), split="train")

    kw = dict(seed=17, p_original=0.2, sampling=sampling)
    cpu = ReinforcedDataset(adapter, tmp_path / "store", **kw)
    dev = ReinforcedDataset(adapter, tmp_path / "store", **kw)
    dev.device = torch.device("meta")  # the device path (crops, sparse targets) on a machine without CUDA
    replay = dev.create_device_replay("cpu")
    transform = create_transform(tmp_path / "store", partners=rows, **kw)
    n, kinds = len(cpu), set()
    for epoch in range(4):
        for path in (cpu, dev, transform):
            path.set_epoch(epoch)
        batch = cpu.__getitems__(list(range(n)))
        xd, yd = replay(default_collate(dev.__getitems__(list(range(n)))))
        xt, yt = transform.items([rows[i] for i in range(n)])
        for i in range(n):
            x, y = cpu[i]
            for other_x, other_y in ((batch[i][0], batch[i][1]), (xd[i], yd[i]), (xt[i], yt[i])):
                assert torch.equal(x, other_x), (epoch, i)
                torch.testing.assert_close(y, other_y, atol=1e-6, rtol=0)
            original, j = cpu.choose(i)
            assert (original, j) == dev.choose(i) == transform.choose(i)
            if not original:  # the exact replay of record (i, j): the CLI's and the builder's path
                pixels, ids, probs = cpu.source.replay_record(i, j)
                assert torch.equal(policy.normalize(pixels), x)
                kinds.add(int(cpu.store.params(i, j)["mix_kind"]))
            else:
                kinds.add("original")
    assert kinds >= {0, 1, 2, "original"}  # unmixed, MixUp, CutMix and originals all compared
