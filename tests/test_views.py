"""Several records per decode (``records_per_decode=M``): every view is the one-record item of its record-epoch.

Pass ``e`` with ``M`` views serves, for every sample, the records of record-epochs ``e*M .. e*M+M-1``;
view ``k`` must be bit for bit (``torch.equal``, images and targets) what ``records_per_decode=1``
serves for that sample in epoch ``e*M+k``: originals (their fresh params), ``cycle`` positions and
mixing partners (their own records) included. Checked through real DataLoaders with persistent
workers, the ``datasets`` transform, the dataset wrappers, ``DistributedSampler`` ranks (no process
group), and :class:`ShuffleBuffer`, which spreads the views over batches and must yield every item
exactly once per pass, deterministically.
"""

from __future__ import annotations

import json

import datasets
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from fakes.replay_store import write_replay_store
from fakes.torchvision_data import make_food101
from imagenet_plus.adapters import create_adapter
from imagenet_plus.augment import create_policy
from imagenet_plus.datasets import Food101Plus, ReinforcedDataset, ShuffleBuffer
from imagenet_plus.errors import ArgumentError
from imagenet_plus.hf import create_transform, export_parquet

M = 3
KW = dict(seed=17, p_original=0.25)


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))


@pytest.fixture(scope="module")
def mixing(tmp_path_factory):
    """A mixing policy (MixUp, CutMix, RandAugment, erasing) over 8 Food-101 samples, rows exported too."""
    tmp = tmp_path_factory.mktemp("views")
    make_food101(tmp / "food", 4, 2, 1)
    adapter = create_adapter("food101", tmp / "food", "train")
    policy = create_policy("rrc+mix+ra/re", output_size=24, mix={"prob": 0.8})
    write_replay_store(tmp / "store", adapter, policy, num_augmentations=4)
    return tmp, adapter, policy


def _reference(one: ReinforcedDataset, record_epoch: int) -> list:
    """Every item of the one-record dataset in ``record_epoch`` (a whole batch: bit-exact with single items)."""
    one.set_epoch(record_epoch)
    return one.__getitems__(list(range(len(one))))


def _assert_view(item, ref, where) -> None:
    assert torch.equal(item[0], ref[0]), where
    assert torch.equal(item[1], ref[1]), where


@pytest.mark.parametrize("sampling", ["random", "cycle"])
def test_every_view_is_the_one_record_item_of_its_epoch_through_persistent_workers(mixing, sampling):
    tmp, adapter, policy = mixing
    one = ReinforcedDataset(adapter, tmp / "store", sampling=sampling, **KW)
    many = ReinforcedDataset(adapter, tmp / "store", sampling=sampling, records_per_decode=M, **KW)
    n = len(many)
    assert len(many) == len(one) == n  # the index space stays the samples
    loader = DataLoader(many, batch_size=3, shuffle=False, num_workers=2, persistent_workers=True)
    kinds = set()
    for e in (0, 1, 2):  # set_epoch between passes reaches the persistent workers (shared memory)
        many.set_epoch(e)
        assert many.record_epochs == [e * M + k for k in range(M)]
        refs = [_reference(one, e * M + k) for k in range(M)]
        xs, ys = zip(*loader)
        assert [len(x) for x in xs] == [3 * M, 3 * M, 2 * M]  # B indices -> B*M items
        x, y = torch.cat(xs), torch.cat(ys)
        for i in range(n):
            views = many.choose_views(i)
            for k in range(M):
                _assert_view((x[i * M + k], y[i * M + k]), refs[k][i], (sampling, e, i, k))
                r, original, j = views[k]
                assert r == e * M + k and (original, j) == one.choose(i, r)
                kinds.add("original" if original else int(many.store.params(i, j)["mix_kind"]))
    assert kinds >= {0, 1, 2, "original"}  # unmixed, MixUp, CutMix and originals all compared


def test_a_sample_is_decoded_once_for_its_views(mixing):
    tmp, adapter, policy = mixing
    many = ReinforcedDataset(adapter, tmp / "store", records_per_decode=4, **KW)
    calls = []
    inner = many.source.data.adapter
    load = inner.load
    inner.load = lambda d: (calls.append(int(d)), load(d))[1]
    try:
        many.set_epoch(1)
        items = many.__getitems__([0, 1, 2, 3])
        plan = many.source.plan([0, 1, 2, 3], views=4)
        params = many.store.params_batch(plan.store_index, plan.read_aug)
        mixes, partners = many.policy.mixing(params)
        partners = set(partners[mixes & ~plan.original].tolist())
    finally:
        inner.load = load
    assert len(items) == 16
    assert calls[:4] == [0, 1, 2, 3]  # the four samples, once each
    assert sorted(calls[4:]) == sorted(partners)  # then each partner once, however many views mix with it


def test_one_item_stacks_its_views_and_the_wrapper_passes_the_option_through(mixing):
    tmp, adapter, policy = mixing
    one = ReinforcedDataset(adapter, tmp / "store", **KW)
    many = Food101Plus(tmp / "food", split="train", reinforcements=tmp / "store", records_per_decode=M, **KW)
    many.set_epoch(2)
    refs = [_reference(one, 2 * M + k) for k in range(M)]
    for i in (0, 5):
        x, y = many[i]
        assert x.shape == (M, 3, 24, 24) and y.shape == (M, one.num_classes)
        for k in range(M):
            _assert_view((x[k], y[k]), refs[k][i], (i, k))
    batch = many.__getitems__([5, 0])
    assert len(batch) == 2 * M
    _assert_view(batch[M + 1], refs[1][0], "wrapper batch")
    assert "records_per_decode=3" in repr(many.reinforced)


def test_distributed_ranks_keep_each_samples_views_without_gaps_or_duplicates(mixing):
    tmp, adapter, policy = mixing
    one = ReinforcedDataset(adapter, tmp / "store", **KW)
    many = ReinforcedDataset(adapter, tmp / "store", records_per_decode=M, **KW)
    n, e = len(many), 1
    many.set_epoch(e)
    refs = [_reference(one, e * M + k) for k in range(M)]
    served = []
    for rank in (0, 1):
        sampler = DistributedSampler(many, num_replicas=2, rank=rank, shuffle=True, seed=5)
        sampler.set_epoch(e)
        order = list(sampler)
        x, y = (torch.cat(t) for t in zip(*DataLoader(many, batch_size=2, sampler=sampler, num_workers=1)))
        assert len(x) == len(order) * M
        for b, i in enumerate(order):
            for k in range(M):
                _assert_view((x[b * M + k], y[b * M + k]), refs[k][i], (rank, i, k))
                served.append((rank, i, k))
    pairs = [(i, k) for _, i, k in served]
    assert sorted(pairs) == [(i, k) for i in range(n) for k in range(M)]  # each view of each sample once
    for i in range(n):  # all M views of a sample on one rank
        assert len({r for r, s, _ in served if s == i}) == 1


def test_the_datasets_transform_replays_views_from_one_decode(mixing):
    tmp, adapter, policy = mixing
    export_parquet(tmp / "store", tmp / "store", base=adapter, images=True)
    rows = datasets.load_dataset(str(tmp / "store"), split="train")
    one = create_transform(tmp / "store", partners=rows, **KW)
    many = create_transform(tmp / "store", partners=rows, records_per_decode=M, **KW)
    e = 1
    many.set_epoch(e)
    refs = []
    for k in range(M):
        one.set_epoch(e * M + k)
        refs.append(one.items([rows[i] for i in range(len(rows))]))
    loader = DataLoader(rows.with_transform(many), batch_size=3, num_workers=0)
    batches = list(loader)
    assert [len(b["pixel_values"]) for b in batches] == [3 * M, 3 * M, 2 * M]
    x = torch.cat([b["pixel_values"] for b in batches])
    y = torch.cat([b["soft_target"] for b in batches])
    for i in range(len(rows)):
        for k in range(M):
            assert torch.equal(x[i * M + k], refs[k][0][i]), (i, k)
            assert torch.equal(y[i * M + k], refs[k][1][i]), (i, k)
        item = many.item(rows[i])
        assert torch.equal(item["pixel_values"], x[i * M:(i + 1) * M])
        assert [v[0] for v in many.choose_views(i)] == [e * M + k for k in range(M)]
    with pytest.raises(ArgumentError, match="choose_views"):
        many.choose(0)
    with pytest.raises(ArgumentError, match="records_per_decode"):
        create_transform(tmp / "store", partners=rows, records_per_decode=0)


def test_records_per_decode_is_checked(mixing):
    tmp, adapter, policy = mixing
    for bad in (0, -1, 1.5, "2"):
        with pytest.raises(ArgumentError, match="records_per_decode"):
            ReinforcedDataset(adapter, tmp / "store", records_per_decode=bad, **KW)
    many = ReinforcedDataset(adapter, tmp / "store", records_per_decode=2, **KW)
    with pytest.raises(ArgumentError, match="choose_views"):
        many.choose(0)
    with pytest.raises(ArgumentError, match="exact replay"):
        many.source.items([0], aug=[1], views=2)
    many.device = torch.device("meta")  # the device path, selected as the tests do without CUDA
    with pytest.raises(ArgumentError, match="CPU-path option"):
        many.__getitems__([0])


# -- ShuffleBuffer ------------------------------------------------------------------------------------------

def _id_loader(n: int, batch: int):
    """Batches of ``(ids, images)``: item ``t`` carries its id, so where each item went can be read back."""
    ids = torch.arange(n)
    return DataLoader(TensorDataset(ids, ids.view(-1, 1, 1).expand(n, 2, 3).to(torch.uint8)), batch_size=batch)


def _ids(buffer) -> list[list[int]]:
    out = []
    for ids, images in buffer:
        assert torch.equal(images[:, 0, 0], ids.to(torch.uint8))  # the fields of an item stay together
        out.append(ids.tolist())
    return out


def test_the_shuffle_buffer_yields_every_item_once_per_pass_deterministically():
    buffer = ShuffleBuffer(_id_loader(103, 12), 16, buffer_size=40, seed=3)
    buffer.set_epoch(2)
    first, again = _ids(buffer), _ids(buffer)
    assert first == again  # same seed and epoch: the same batches
    assert sorted(t for b in first for t in b) == list(range(103))  # every item exactly once
    assert [len(b) for b in first] == [16] * 6 + [7]
    assert [t for b in first for t in b] != list(range(103))  # shuffled
    buffer.set_epoch(3)
    assert _ids(buffer) != first  # another epoch: other draws
    other_seed = ShuffleBuffer(_id_loader(103, 12), 16, buffer_size=40, seed=4)
    other_seed.set_epoch(2)
    assert _ids(other_seed) != first
    dropped = ShuffleBuffer(_id_loader(103, 12), 16, buffer_size=40, seed=3, drop_last=True)
    dropped.set_epoch(2)
    assert [len(b) for b in _ids(dropped)] == [16] * 6
    with pytest.raises(ArgumentError, match="buffer_size"):
        ShuffleBuffer(_id_loader(10, 2), 16, buffer_size=8)
    with pytest.raises(ArgumentError, match="common first"):
        list(ShuffleBuffer([(torch.zeros(4, 2), [1, 2, 3, 4])], 2, buffer_size=2))


def test_the_shuffle_buffer_spreads_a_samples_views_over_batches(mixing):
    tmp, adapter, policy = mixing
    # cycle over the 4 stored augmentations: the 4 views of a pass are 4 different records, told apart by pixels
    one = ReinforcedDataset(adapter, tmp / "store", sampling="cycle", **KW)
    many = ReinforcedDataset(adapter, tmp / "store", sampling="cycle", records_per_decode=4, **KW)
    many.set_epoch(1)
    refs = [(k, i, item) for k in range(4) for i, item in enumerate(_reference(one, 4 + k))]
    loader = DataLoader(many, batch_size=2, shuffle=True, num_workers=0, generator=torch.Generator().manual_seed(0))
    buffer = ShuffleBuffer(loader, 8, buffer_size=24, seed=1)
    buffer.set_epoch(1)
    seen, together = [], 0
    for x, y in buffer:
        owners = []
        for b in range(len(x)):
            match = [(k, i) for k, i, ref in refs if torch.equal(x[b], ref[0]) and torch.equal(y[b], ref[1])]
            assert len(match) == 1  # each yielded item is exactly one view's one-record item
            seen.append(match[0])
            owners.append(match[0][1])
        together += len(owners) - len(set(owners))
    assert sorted(seen) == sorted((k, i) for k, i, _ in refs)  # every view of every sample, once
    grouped = len(refs) - len(refs) // 4  # batches of 8 = 2 samples x 4 views: 3 repeats per sample
    assert together < grouped / 2


def test_the_benchmark_reports_every_m_against_m1_and_torchvision():
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, str(root / "benchmarks" / "records_per_decode.py"), "--quick", "--views",
                        "1,4"], cwd=root, env=dict(os.environ, PYTHONPATH=str(root), OMP_NUM_THREADS="1"),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["benchmark"] == "records_per_decode" and out["threads"] == 1 and set(out["views"]) == {"1", "4"}
    assert out["views"]["1"]["vs_m1"] == 1.0 and out["torchvision_pil_items_per_s"] > 0
    for v in out["views"].values():
        assert v["items_per_s"] > 0 and v["vs_torchvision_pil"] >= v["vs_torchvision_fastest"] > 0
