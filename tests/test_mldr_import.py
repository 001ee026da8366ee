"""``import_mldr`` end to end: archives in ml-dr's published format over copies of the four datasets.

Every published variant is imported; every stored parameter is compared with the values the fake
archive's writer drew (its truth arrays), and replays through the dataset classes with ml-dr's
semantics as the independent reference computes them (tests/fakes/mldr_reference.py). ImageNet's
and Food-101's copies have one image per class (the stores must have the datasets' class counts).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from fakes.mldr_archive import PUBLISHED
from fakes.mldr_copies import make_copy, open_copy, write_archive_for
from fakes.mldr_reference import replay
from fakes.torchvision_data import skip_md5_checks
from imagenet_plus.adapters import ImageNetAdapter
from imagenet_plus.augment.mldr import lam_from_bits
from imagenet_plus.datasets import CIFAR100Plus, Flowers102Plus, Food101Plus, ImageNetPlus, ReinforcedDataset
from imagenet_plus.mldr import import_mldr
from imagenet_plus.replay import DeviceReplay
from imagenet_plus.store import open_store, verify

NS = 3
CLASSES = {"imagenet": ImageNetPlus, "cifar100": CIFAR100Plus, "flowers102": Flowers102Plus, "food101": Food101Plus}
# Every published variant: ImageNet+'s RRC and +M* formats over the (smaller) Food-101 copy; +RA/RE is
# Food-101's and Flowers-102's own; +M*+R* ImageNet's.
EXTRA = {"food_101_rrc": ("food101", "rrc"), "food_101_mixing": ("food101", "rrc+mix")}
NAMES = ["imagenet_plus_mixing_randaug", "cifar100", "flowers_102", "food_101", *EXTRA]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Copies of the four datasets, and every archive imported once (workers=0; one with a pool of 2)."""
    tmp = tmp_path_factory.mktemp("mldr-import")
    with pytest.MonkeyPatch.context() as mp:
        for k, v in EXTRA.items():
            mp.setitem(PUBLISHED, k, v)
        copies = {d: open_copy(make_copy(tmp / d, d), d) for d in CLASSES}
        out = {}
        for k, name in enumerate(NAMES):
            dataset, variant = PUBLISHED[name]
            form = "tar" if dataset == "imagenet" else "folder" if name == "food_101_rrc" else "tar.gz"
            fa = write_archive_for(tmp / f"{name}.{form}", name, copies[dataset], ns=NS, seed=k, form=form)
            with skip_md5_checks():
                result = import_mldr(fa.path, tmp / f"{name}-store", dataset=dataset, adapter=copies[dataset],
                                     workers=2 if name == "flowers_102" else 0, progress=False, augs_per_shard=2,
                                     samples_per_shard=7 if dataset != "imagenet" else 400)
            out[name] = (fa, result)
    return tmp, copies, out


def _decode_ops(ops: np.ndarray, num_ops: int):
    """Independent reading of the ``ops`` bits: flip, RandAugment op ids and negative-magnitude bits."""
    ops = ops.astype(np.int64)
    op = np.stack([(ops >> (1 + 5 * k)) & 15 for k in range(num_ops)], -1) if num_ops else None
    neg = np.stack([(ops >> (5 + 5 * k)) & 1 for k in range(num_ops)], -1) if num_ops else None
    return ops & 1, op, neg


def _pixels(q: np.ndarray, size: np.ndarray) -> np.ndarray:
    return np.floor(q.astype(np.float64) / 65535 * size + 0.5).astype(np.int64)  # round half up, as documented


def _to_store(adapter) -> np.ndarray:
    keys = adapter.keys()
    return np.asarray(sorted(range(len(keys)), key=lambda i: keys[i]) if adapter.name == "imagenet"
                      else range(len(keys)))


@pytest.mark.parametrize("name", NAMES)
def test_every_stored_parameter_is_the_archives(world, name):
    tmp, copies, out = world
    fa, result = out[name]
    dataset, variant = {**PUBLISHED, **EXTRA}[name]
    store = open_store(result.out)
    m = store.manifest
    assert (m.dataset, m.split, m.num_augmentations, m.topk) == (dataset, "train", NS, 10)
    assert m.policy["flavour"] == "ml-dr" and m.extra["provenance"]["variant"] == variant
    to_store = _to_store(copies[dataset])
    sizes = np.asarray(store.image_sizes, dtype=np.int64)
    for k, sample in fa.samples.items():
        t = sample.truth
        s = int(to_store[k])
        p = store.params_batch(np.full(NS, s), np.arange(NS))
        ids, probs = store.targets_batch(np.full(NS, s), np.arange(NS))
        _check_single(p, "", t, sizes[s], variant)
        assert np.array_equal(ids, t["ids"])
        assert np.allclose(probs, t["probs"], rtol=0.06, atol=2e-5)  # the 8-bit log codes' step, renormalised
        if "mix" in variant:
            has = t["partner"] >= 0
            kind = p["mix_kind"].astype(np.int64)
            assert np.array_equal(kind & 1, t["mixup"]) and np.array_equal(kind >> 1, t["cutmix"])
            assert np.array_equal(p["mix_partner"][has], to_store[t["partner"][has]])
            mixup = t["mixup"]
            assert np.array_equal(lam_from_bits(p["mix_lam"])[mixup], t["mixup_lam"][mixup].astype(np.float32))
            assert np.array_equal(p["mix_box"][t["cutmix"]], t["cutmix_box"][t["cutmix"]])
            if has.any():
                psizes = sizes[to_store[t["partner"][has]]]
                _check_single({f: v[has] for f, v in p.items()}, "partner_", {f: v[has] for f, v in t.items()},
                              psizes, variant)


def _check_single(p: dict, prefix: str, t: dict, hw: np.ndarray, variant: str) -> None:
    crop = p[prefix + "crop"]
    if variant == "cifar":
        assert np.array_equal(crop, t[prefix + "crop"])
    else:
        H, W = np.broadcast_to(hw, (len(crop), 2)).T
        got = np.stack([_pixels(crop[:, 0], H), _pixels(crop[:, 1], W), _pixels(crop[:, 2], H),
                        _pixels(crop[:, 3], W)], 1)
        assert np.array_equal(got, t[prefix + "crop"])
    num_ops = 2 if prefix + "ra_op" in t else 0
    flip, op, neg = _decode_ops(p[prefix + "ops"], num_ops)
    assert np.array_equal(flip, t[prefix + "flip"])
    if num_ops:
        assert np.array_equal(op, t[prefix + "ra_op"]) and np.array_equal(neg, t[prefix + "ra_magnitude"] < 0)
        assert np.array_equal(p[prefix + "erase"], t[prefix + "erase"])


def _mldr_densify(probs, ids, num_classes: int) -> np.ndarray:
    """ml-dr's densify(..., "smooth") (dr/utils.py), restated: the tail spread over the other classes."""
    sp = np.asarray(probs, np.float32)
    r = np.float32(1) - sp.sum(dtype=np.float32)
    dense = np.full(num_classes, r / (num_classes - len(ids)), np.float32)
    dense[np.asarray(ids)] = sp
    return dense


@pytest.mark.parametrize("name", NAMES)
def test_dataset_classes_replay_mldrs_pixels_and_targets(world, name):
    tmp, copies, out = world
    fa, result = out[name]
    dataset = {**PUBLISHED, **EXTRA}[name][0]
    lay_mean, lay_std = result.manifest.policy["mean"], result.manifest.policy["std"]
    kind = result.manifest.policy["geometry"]["kind"]
    with skip_md5_checks():
        ds = CLASSES[dataset](tmp / dataset, reinforcements=result.out, p_original=0.0, seed=5)
    adapter, to_store = copies[dataset], _to_store(copies[dataset])
    from_store = np.argsort(to_store)
    kls, mixed = [], 0
    for epoch in range(2):
        ds.set_epoch(epoch)
        for i in range(0, len(ds), max(1, len(ds) // 24)):
            x, y = ds[i]
            _, j = ds.reinforced.choose(i)
            sample = fa.samples[int(from_store[i])]
            t = sample.truth
            ref = _reference(adapter, sample, j, kind, lay_mean, lay_std, to_store)
            assert (x - ref).abs().max() < 1e-6, (name, i, j)
            dense = _mldr_densify(t["probs"][j], t["ids"][j], result.manifest.num_classes)
            kls.append(float((dense * (np.log(np.maximum(dense, 1e-30)) - np.log(y.numpy().clip(1e-30)))).sum()))
            mixed += "partner" in t and t["partner"][j] >= 0
    assert np.mean(kls) <= 1e-3, np.mean(kls)
    assert mixed > 0 or "mix" not in name


def _mldr_image(adapter, s: int):
    """What ml-dr's loader gives for sample ``s``: torchvision's PIL decode, ``.convert("RGB")``."""
    from PIL import Image

    if adapter.name == "cifar100":
        return Image.fromarray(adapter.dataset.data[s])
    with Image.open(adapter.path(s)) as im:
        return im.convert("RGB")


def _reference(adapter, sample, j: int, kind: str, mean, std, to_store) -> torch.Tensor:
    """ml-dr's normalised image of the archive's record ``j`` of ``sample`` (the reference, on ml-dr's decode)."""
    t = sample.truth

    def params(prefix):
        p = {"crop": t[prefix + "crop"][j].tolist(), "flip": bool(t[prefix + "flip"][j])}
        if prefix + "ra_op" in t:
            p["ra"] = list(zip(t[prefix + "ra_op"][j].tolist(), t[prefix + "ra_magnitude"][j].tolist()))
            if t[prefix + "erase"][j][2] > 0:
                p["erase"] = t[prefix + "erase"][j].tolist()
        return p

    image = _mldr_image(adapter, int(to_store[sample.index]))
    if "partner" not in t or t["partner"][j] < 0:
        return replay(image, params(""), kind=kind, mean=mean, std=std)
    box = None
    if t["cutmix"][j]:
        top, left, h, w = t["cutmix_box"][j].tolist()
        box = (top, left, top + h, left + w)
    return replay(image, params(""), kind=kind, mean=mean, std=std,
                  partner_image=_mldr_image(adapter, int(to_store[t["partner"][j]])),
                  partner_params=params("partner_"), mixup_lam=float(t["mixup_lam"][j]) if t["mixup"][j] else None,
                  cutmix_box=box)


def test_imagenet_copy_listed_in_another_order_is_aligned_by_key(world, tmp_path):
    """ml-dr indexes ImageFolder's sorted order; a copy whose adapter lists samples otherwise gets the same records."""
    tmp, copies, out = world
    fa, result = out["imagenet_plus_mixing_randaug"]
    ds = copy.copy(copies["imagenet"].dataset)
    ds.samples = ds.imgs = list(reversed(ds.samples))
    ds.targets = [t for _, t in ds.samples]
    rev = ImageNetAdapter(ds, "train")
    r = import_mldr(fa.path, tmp_path / "rev", dataset="imagenet", adapter=rev, workers=0, progress=False,
                    augs_per_shard=2)
    a, b = open_store(result.out), open_store(r.out)
    assert b.keys == list(reversed(a.keys))
    n = len(a.keys)
    for s in (0, 17, 500, n - 1):
        pa, pb = a.params_batch(np.full(NS, s), np.arange(NS)), b.params_batch(np.full(NS, n - 1 - s), np.arange(NS))
        for f in pa:  # the same records; partners are store indices, reversed too
            want = np.where(pa["mix_kind"] != 0, n - 1 - pa[f], 0) if f == "mix_partner" else pa[f]
            assert np.array_equal(pb[f], want), (s, f)
    rd = ReinforcedDataset(rev, r.out, p_original=0.0, seed=3)
    ra = ReinforcedDataset(copies["imagenet"], result.out, p_original=0.0, seed=3)
    for s in (3, 999):
        j = rd.choose(n - 1 - s)[1]
        assert torch.equal(rd.source.replay_record(n - 1 - s, j)[0], ra.source.replay_record(s, j)[0])


def test_device_path_equals_the_cpu_path(world):
    tmp, copies, out = world
    fa, result = out["imagenet_plus_mixing_randaug"]
    ds = ReinforcedDataset(copies["imagenet"], result.out, p_original=0.2, seed=1)
    idx = list(range(0, 1000, 37))
    x, y = ds.source.items(idx)
    batch = default_collate(ds.source.device_items(idx))
    dx, dy = DeviceReplay(ds.policy, ds.num_classes, device="cpu")(batch)
    assert torch.equal(dx, x) and torch.allclose(dy, y, atol=1e-7)


def test_provenance_summary_and_verify(world):
    import hashlib

    tmp, copies, out = world
    for name in ("imagenet_plus_mixing_randaug", "food_101_rrc"):
        fa, result = out[name]
        prov = result.manifest.extra["provenance"]
        assert prov["archive"] == fa.path.name and prov["variant"] == PUBLISHED.get(name, EXTRA.get(name))[1]
        if fa.path.is_file():
            assert prov["sha256"] == hashlib.sha256(fa.path.read_bytes()).hexdigest()
            assert prov["bytes"] == fa.path.stat().st_size and prov["kind"] == "tar"
        else:
            members = sorted((int(p.name.split(".")[0]), p) for p in fa.path.rglob("*.pth.tar") if p.name[0] != "c")
            assert prov["content_sha256"] == hashlib.sha256(b"".join(p.read_bytes() for _, p in members)).hexdigest()
        report = verify(result.out, full=True)
        assert report.ok, report
        assert "records" in result.summary() and f"{result.records:,}" in result.summary()
        assert result.manifest.teacher["source"] == "apple/ml-dr"


def test_rerunning_a_finished_import_does_nothing(world):
    tmp, copies, out = world
    fa, result = out["cifar100"]
    before = {p: p.stat().st_mtime_ns for p in result.out.rglob("*")}
    with skip_md5_checks():
        again = import_mldr(fa.path, result.out, dataset="cifar100", adapter=copies["cifar100"], workers=0,
                            progress=False, augs_per_shard=2, samples_per_shard=7)
    assert again.already_finished and {p: p.stat().st_mtime_ns for p in result.out.rglob("*")} == before
    assert "nothing to do" in again.summary()


def test_hf_transform_and_export_replay_the_imported_mixing_store(world, tmp_path, monkeypatch):
    import datasets

    from imagenet_plus.hf import create_transform, export_parquet

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    tmp, copies, out = world
    fa, result = out["food_101_mixing"]
    export_parquet(result.out, tmp_path / "pub", base=copies["food101"], images=True)
    rows = datasets.load_dataset(str(tmp_path / "pub"), split="train")
    rd = ReinforcedDataset(copies["food101"], result.out, seed=4, p_original=0.2)
    t = create_transform(result.out, seed=4, p_original=0.2, partners=rows)
    x, y = t.items([rows[i] for i in range(len(rows))])
    mixes = 0
    for i in range(len(rows)):
        rx, ry = rd[i]
        assert torch.equal(x[i], rx) and torch.equal(y[i], ry), i
        original, j = rd.choose(i)
        mixes += (not original) and int(rd.store.params(i, j)["mix_kind"]) != 0
    assert mixes > 0


def test_imported_imagenet_store_makes_a_publish_folder(world, tmp_path):
    from builders.export import ExportConfig, main as export_main
    from builders.push import check_publish_folder

    tmp, copies, out = world
    fa, result = out["imagenet_plus_mixing_randaug"]
    pub = tmp_path / "pub"
    export_main(ExportConfig(store=str(result.out), out=str(pub), repo_id="org/imagenet-plus", progress=False))
    files, manifest = check_publish_folder(pub)
    assert "README.md" in files and manifest.extra["provenance"]["variant"] == "rrc+mix+ra/re"
    assert "`ig_resnext101_32x48d`" in (pub / "README.md").read_text()  # the teacher ensemble, from ml-dr's config


def test_a_top_k_summing_above_one_keeps_the_teachers_distribution(world, tmp_path, monkeypatch):
    """ml-dr's densify falls back to softmax(top-k) when the float32 top-k sums above 1; the import keeps the top-k
    (tail 0) and counts such records in the manifest's import report."""
    import fakes.mldr_archive as writer

    tmp, copies, out = world
    calls = {"n": 0}
    draw = writer._teacher

    def confident(rng, num_classes, k):
        calls["n"] += 1
        probs, ids = draw(rng, num_classes, k)
        if calls["n"] % 2:
            probs = [0.6, 0.4000001] + [1e-9] * (k - 2)  # float32 sum 1.0000001 in any order
        return probs, ids

    monkeypatch.setattr(writer, "_teacher", confident)
    fa = write_archive_for(tmp_path / "food_101.tar.gz", "food_101", copies["food101"], ns=2, seed=9)
    r = import_mldr(fa.path, tmp_path / "store", dataset="food101", adapter=copies["food101"], workers=0,
                    progress=False)
    over = sum(int((np.asarray(s.truth["probs"], np.float32).sum(1, dtype=np.float32) > 1).sum())
               for s in fa.samples.values())
    assert over > 50 and r.manifest.reports["import"]["records_topk_sum_above_1"] == over
    ds = ReinforcedDataset(copies["food101"], r.out, p_original=0.0, seed=0)
    for i in range(0, len(ds), 10):
        _, j = ds.choose(i)
        t = fa.samples[i].truth
        _, y = ds[i]
        if np.float32(t["probs"][j].sum(dtype=np.float32)) > 1:
            assert y[t["ids"][j][:2]].numpy() == pytest.approx([0.6, 0.4], rel=0.03)
            assert y.sum() == pytest.approx(1.0, abs=1e-6) and y.max() < 0.62
            softmax = np.exp(t["probs"][j]) / np.exp(t["probs"][j]).sum()  # what ml-dr would have trained on
            assert softmax.max() < 0.25


def test_an_imported_stores_teacher_is_its_archive(world):
    """The teacher of an imported store is the archive: its sha256 is in the build id and every shard's teacher id."""
    import dataclasses

    from imagenet_plus.store import compute_build_id, compute_teacher_id, teacher_identity
    from imagenet_plus.store._format import read_header

    tmp, copies, out = world
    for name in ("imagenet_plus_mixing_randaug", "food_101_rrc"):
        fa, result = out[name]
        m = result.manifest
        prov = m.extra["provenance"]
        archive = teacher_identity(m)["archive"]
        assert archive and archive == {k: prov[k] for k in ("sha256", "content_sha256") if k in prov}
        tid = compute_teacher_id(m)
        for e in m.shards:
            assert read_header(result.out / e.file)[1]["teacher_id"] == tid
        key = next(iter(archive))
        other = dataclasses.replace(m, extra={**m.extra, "provenance": {**prov, key: "0" * 64}})  # another archive
        store = open_store(result.out)
        assert compute_teacher_id(other) != tid
        assert compute_build_id(other, store._samples_file.keys_digest()) != m.build_id
