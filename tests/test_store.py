"""Tests of imagenet_plus.store: round trips, shard planning, atomic writes, verify and every bad-input case."""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file

from fakes.store_fakes import DEFAULT_PARAM_FIELDS, random_teacher_topk, write_fake_store
from imagenet_plus.errors import AlignmentError, FormatVersionError, IntegrityError, StoreError
from imagenet_plus.schema import Field, decode_topk_probs, encode_topk_ids, encode_topk_probs, target_fields
from imagenet_plus.store import (FORMAT_VERSION, Manifest, ReinforcementStore, compute_build_id,  # noqa: I001
                                 open_store, plan_shards,
                                 read_shard_entry, resolve_shard_shape, shard_filename, verify, write_manifest,
                                 write_shard)
from imagenet_plus.store import write_store as write_store_


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    # 11 samples x 7 augs in 4-sample x 3-aug shards: 3 x 3 = 9 shards, ragged in both directions.
    return write_fake_store(tmp_path_factory.mktemp("store") / "s", num_samples=11, num_augmentations=7,
                            num_classes=1000, topk=5, samples_per_shard=4, augs_per_shard=3, seed=1)


@pytest.fixture
def copy(fake, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(fake.root, dst)
    return dst


# -- planning and names --------------------------------------------------------------------------------

def test_plan_shards_covers_grid_once_in_order():
    plan = plan_shards(10, 7, 4, 3)
    assert plan[:3] == [(0, 4, 0, 3), (0, 4, 3, 6), (0, 4, 6, 7)]
    grid = np.zeros((10, 7), int)
    for s0, s1, a0, a1 in plan:
        grid[s0:s1, a0:a1] += 1
    assert (grid == 1).all() and len(plan) == 9
    assert plan == plan_shards(10, 7, 4, 3)


def test_plan_shards_respects_size_cap():
    with pytest.raises(StoreError, match="samples_per_shard <= 10"):
        plan_shards(100, 10, 50, 10, record_bytes=10, max_shard_bytes=1000)
    assert resolve_shard_shape(1000, 400, 38, max_shard_bytes=512 * 2**20) == (1000, 50)
    sps, aps = resolve_shard_shape(1_281_167, 400, 38)
    assert aps == 50 and sps * aps * 38 <= 512 * 2**20 < (sps + 1) * aps * 38
    with pytest.raises(StoreError, match="positive integer"):
        plan_shards(0, 4, 1, 1)


def test_shard_filename():
    assert shard_filename(0, 1000, 50, 100) == "reinforcements/shard-s00000000-s00001000-a00050-a00100.safetensors"


# -- round trip ----------------------------------------------------------------------------------------

def test_round_trip_every_record(fake):
    store = open_store(fake.root)
    m = fake.manifest
    assert len(store) == 11 and store.num_augmentations == 7 and store.topk == 5 and store.num_classes == 1000
    assert len(m.shards) == 9 and store.param_fields == DEFAULT_PARAM_FIELDS
    codes = encode_topk_probs(fake.topk_probs)
    for i in range(11):
        for j in range(7):
            rec = store.record(i, j)
            for f in DEFAULT_PARAM_FIELDS:
                got, want = rec.params[f.name], fake.params[f.name][i, j]
                assert got.dtype == np.dtype(f.dtype) and got.shape == f.shape
                assert got.tobytes() == want.tobytes()  # bit-exact, floats included
            np.testing.assert_array_equal(rec.topk_ids, fake.topk_ids[i, j])
            assert rec.topk_ids.dtype == np.int64 and rec.topk_probs.dtype == np.float32
            np.testing.assert_array_equal(rec.topk_probs, decode_topk_probs(codes[i, j]))
            assert (np.diff(rec.topk_probs) <= 0).all()
            ids, probs = store.targets(i, j)
            np.testing.assert_array_equal(ids, rec.topk_ids)
            np.testing.assert_array_equal(probs, rec.topk_probs)
            assert store.params(i, j).keys() == rec.params.keys()


def test_batched_access_matches_single(fake):
    store = open_store(fake.root)
    rng = np.random.default_rng(0)
    i, j = rng.integers(0, 11, 200), rng.integers(0, 7, 200)
    params = store.params_batch(i, j)
    ids, probs = store.targets_batch(i, j)
    for f in DEFAULT_PARAM_FIELDS:
        assert params[f.name].shape == (200, *f.shape)
        np.testing.assert_array_equal(params[f.name], fake.params[f.name][i, j])
    np.testing.assert_array_equal(ids, fake.topk_ids[i, j])
    np.testing.assert_array_equal(probs, decode_topk_probs(encode_topk_probs(fake.topk_probs[i, j])))
    with pytest.raises(IndexError):
        store.params_batch([0, 11], [0, 0])
    with pytest.raises(IndexError):
        store.record(0, 7)


def test_shards_are_plain_safetensors(fake):
    e = fake.manifest.shards[4]
    tensors = load_file(fake.root / e.file)
    (s0, s1), (a0, a1) = e.samples, e.augs
    np.testing.assert_array_equal(tensors["crop"], fake.params["crop"][s0:s1, a0:a1])
    np.testing.assert_array_equal(tensors["topk_ids"], encode_topk_ids(fake.topk_ids[s0:s1, a0:a1], 1000))


def test_samples_identity(fake):
    store = open_store(fake.root)
    np.testing.assert_array_equal(store.labels, fake.labels)
    assert store.labels.dtype == np.int32
    assert store.keys == fake.keys and store.keys[0].endswith(".JPEG")
    np.testing.assert_array_equal(store.content_hashes, fake.hashes)
    assert store.index_of_key(fake.keys[6]) == 6
    with pytest.raises(AlignmentError, match="not in the store"):
        store.index_of_key("n99999999/missing.JPEG")
    with pytest.raises(KeyError):
        store.index_of_key("n99999999/missing.JPEG")


def test_partial_augmentations_need_only_first_blocks(copy, fake):
    for e in fake.manifest.shards:
        if e.augs[0] >= 3:
            (copy / e.file).unlink()  # a Mini download: only the first augmentation block
    with pytest.raises(IntegrityError, match="missing"):
        open_store(copy)
    store = open_store(copy, num_augmentations=2)
    assert store.num_augmentations == 2 and store.manifest.num_augmentations == 7
    for i in range(11):
        np.testing.assert_array_equal(store.targets(i, 1)[0], fake.topk_ids[i, 1])
    opened = [k for k, sh in enumerate(store._open) if sh is not None]
    assert all(fake.manifest.shards[k].augs == (0, 3) for k in opened) and len(opened) == 3
    with pytest.raises(IndexError):
        store.targets(0, 2)
    assert verify(copy, full=True, num_augmentations=3).num_shards == 3
    with pytest.raises(StoreError, match="num_augmentations=8"):
        open_store(copy, num_augmentations=8)


def test_lazy_opening_and_eviction(fake):
    store = ReinforcementStore(fake.root, max_open_shards=2)
    assert all(sh is None for sh in store._open)
    for i, j in [(0, 0), (5, 0), (10, 6), (0, 0)]:
        np.testing.assert_array_equal(store.targets(i, j)[0], fake.topk_ids[i, j])
    assert sum(sh is not None for sh in store._open) == 2


def _child_read(store, q):
    q.put((os.getpid(), store.targets(10, 6)[0].tolist(), store._pid == os.getpid()))


def test_fork_safe(fake):
    store = open_store(fake.root)
    store.targets(10, 6)  # parent maps the shard before forking
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child_read, args=(store, q))
    p.start()
    pid, ids, reopened = q.get(timeout=60)
    p.join(60)
    assert pid != os.getpid() and reopened and ids == fake.topk_ids[10, 6].tolist()
    clone = ReinforcementStore.__new__(ReinforcementStore)  # what spawn-started workers receive
    clone.__setstate__(store.__getstate__())
    assert store.__getstate__()["_open"] is None
    np.testing.assert_array_equal(clone.targets(3, 3)[0], fake.topk_ids[3, 3])


def test_manifest_json_round_trip(fake, tmp_path):
    m = Manifest.load(fake.root)
    assert m.to_json() == fake.manifest.to_json()
    assert m.format_version == FORMAT_VERSION and m.samples_file.file == "samples.safetensors"
    m.save(tmp_path / "m.json")
    assert Manifest.load(tmp_path / "m.json") == m
    d = json.loads((fake.root / "manifest.json").read_text())
    for key in ("dataset", "split", "num_samples", "num_augmentations", "topk", "num_classes", "policy", "fields",
                "teacher", "seed", "builder_version", "shards", "samples_file"):
        assert key in d
    assert d["shards"][0]["sha256"] and d["fields"][-1]["name"] == "topk_probs"


# -- writing -------------------------------------------------------------------------------------------

def _fields(num_classes=10, topk=3):
    return [Field("crop", "<u2", (4,), 0, 65535), *target_fields(num_classes, topk)]


def _arrays(n, a, num_classes=10, topk=3, seed=0):
    rng = np.random.default_rng(seed)
    ids, probs, _ = random_teacher_topk(rng, (n, a), num_classes, topk)
    return {"crop": rng.integers(0, 65536, (n, a, 4)).astype("<u2"), "topk_ids": encode_topk_ids(ids, num_classes),
            "topk_probs": encode_topk_probs(probs)}


def test_write_shard_atomic_and_entry(tmp_path):
    e = write_shard(tmp_path, 4, 8, 0, 2, _arrays(4, 2), _fields())
    assert e.file == shard_filename(4, 8, 0, 2) and e.samples == (4, 8) and e.augs == (0, 2)
    assert sorted(p.name for p in (tmp_path / "reinforcements").iterdir()) == [Path(e.file).name]  # no temp left
    assert read_shard_entry(tmp_path, e.file, _fields()) == e
    assert read_shard_entry(tmp_path, Path(e.file).name, _fields()) == e
    assert (tmp_path / e.file).stat().st_mode & 0o044  # readable by others, as ordinary files


@pytest.mark.parametrize("change, match", [
    (lambda a: a.pop("crop"), "exactly the fields"),
    (lambda a: a.update(extra=np.zeros((4, 2), np.uint8)), "exactly the fields"),
    (lambda a: a.update(crop=a["crop"][:, :1]), "shape"),
    (lambda a: a.update(crop=a["crop"].astype("<i4")), "dtype"),
    (lambda a: a.update(crop=a["crop"].astype(">u2")), "dtype"),
])
def test_write_shard_rejects_bad_arrays(tmp_path, change, match):
    arrays = _arrays(4, 2)
    change(arrays)
    with pytest.raises(StoreError, match=match):
        write_shard(tmp_path, 0, 4, 0, 2, arrays, _fields())
    assert not (tmp_path / "reinforcements").exists() or not any((tmp_path / "reinforcements").iterdir())


def test_write_shard_rejects_out_of_range_params_and_oversize(tmp_path):
    fields = [Field("ops", "|u1", (), 0, 13), *target_fields(10, 3)]
    arrays = _arrays(4, 2)
    arrays.pop("crop")
    arrays["ops"] = np.full((4, 2), 14, np.uint8)
    with pytest.raises(StoreError, match="outside its declared range"):
        write_shard(tmp_path, 0, 4, 0, 2, arrays, fields)
    with pytest.raises(StoreError, match="size cap"):
        write_shard(tmp_path, 0, 4, 0, 2, _arrays(4, 2), _fields(), max_shard_bytes=100)


def test_read_shard_entry_rejects_foreign_shard(tmp_path):
    e = write_shard(tmp_path, 0, 4, 0, 2, _arrays(4, 2), _fields())
    with pytest.raises(StoreError, match="do not match the manifest's fields"):
        read_shard_entry(tmp_path, e.file, [Field("box", "<u2", (4,)), *target_fields(10, 3)])
    with pytest.raises(StoreError, match="the manifest expects"):
        read_shard_entry(tmp_path, e.file, _fields(num_classes=1000))
    os.rename(tmp_path / e.file, tmp_path / shard_filename(0, 4, 2, 4))  # renamed: ranges disagree
    with pytest.raises(StoreError, match="renamed"):
        read_shard_entry(tmp_path, shard_filename(0, 4, 2, 4), _fields())
    with pytest.raises(StoreError, match="not a shard file name"):
        read_shard_entry(tmp_path, "other.safetensors", _fields())


def test_write_manifest_refuses_incomplete_store(fake, copy):
    m = Manifest.load(copy)
    (copy / m.shards[3].file).unlink()
    with pytest.raises(StoreError, match="missing"):
        write_manifest(copy, m)
    m.shards = m.shards[:3] + m.shards[4:]
    with pytest.raises(StoreError, match="does not match the plan"):
        write_manifest(copy, m)


# -- verify and bad input ------------------------------------------------------------------------------

def test_verify_good_store(fake):
    r = verify(fake.root)
    assert r.num_shards == 9 and r.num_records == 77 and not r.full
    r = verify(fake.root, full=True)
    assert r.full and r.bytes_checked == sum(e.bytes for e in fake.manifest.shards) + fake.manifest.samples_file.bytes


def test_missing_shard(copy, fake):
    (copy / fake.manifest.shards[5].file).unlink()
    with pytest.raises(IntegrityError, match=r"shard-s00000004-s00000008-a00006-a00007.*missing"):
        verify(copy)
    with pytest.raises(IntegrityError, match="re-download"):
        open_store(copy)
    store = open_store(copy, check_files=False)
    with pytest.raises(IntegrityError, match="missing"):
        store.targets(5, 6)


def test_missing_manifest_and_samples(copy):
    (copy / "samples.safetensors").unlink()
    with pytest.raises(IntegrityError, match="samples.safetensors"):
        open_store(copy)
    (copy / "manifest.json").unlink()
    with pytest.raises(StoreError, match="manifest"):
        open_store(copy)
    with pytest.raises(StoreError, match="manifest not found"):
        verify(copy)


def test_truncated_shard(copy, fake):
    e = fake.manifest.shards[0]
    data = (copy / e.file).read_bytes()
    (copy / e.file).write_bytes(data[:-7])
    with pytest.raises(IntegrityError, match="bytes"):
        verify(copy)
    with pytest.raises(IntegrityError):
        open_store(copy)
    store = open_store(copy, check_files=False)
    with pytest.raises(IntegrityError, match="truncated"):
        store.record(0, 0)
    (copy / e.file).write_bytes(data[:5])
    with pytest.raises(IntegrityError, match="too short"):
        open_store(copy, check_files=False).record(0, 0)


def test_flipped_bytes(copy, fake):
    e = fake.manifest.shards[2]
    p = copy / e.file
    data = bytearray(p.read_bytes())
    data[-3] ^= 0xFF  # in the tensor data: same size, only the hash can tell
    p.write_bytes(bytes(data))
    verify(copy)  # the quick check sees sizes and headers only
    with pytest.raises(IntegrityError, match="sha256"):
        verify(copy, full=True)
    data = bytearray(p.read_bytes())
    data[12] ^= 0x5A  # in the JSON header: the reader must refuse, not reinterpret
    p.write_bytes(bytes(data))
    with pytest.raises(StoreError):
        open_store(copy).record(0, 6)


def test_unknown_format_version(copy, fake):
    d = json.loads((copy / "manifest.json").read_text())
    d["format_version"] = FORMAT_VERSION + 1
    (copy / "manifest.json").write_text(json.dumps(d))
    with pytest.raises(FormatVersionError, match="upgrade imagenet-plus"):
        open_store(copy)
    with pytest.raises(FormatVersionError):
        verify(copy)


def test_shard_format_version_mismatch(copy, fake):
    e = fake.manifest.shards[0]
    t = load_file(copy / e.file)
    from safetensors.numpy import save_file
    save_file(t, copy / e.file, metadata={"format_version": "99", "s0": "0", "s1": "4", "a0": "0", "a1": "3"})
    with pytest.raises(FormatVersionError, match="shard format version '99'"):
        open_store(copy, check_files=False).record(0, 0)


def _replace_shard(root, entry, arrays, fields):
    """Overwrite a shard with other content and patch its size in the manifest (sha256 left stale)."""
    new = write_shard(root, *entry.samples, *entry.augs, arrays, fields)
    d = json.loads((root / "manifest.json").read_text())
    for s in d["shards"]:
        if s["file"] == entry.file:
            s["bytes"] = new.bytes
    (root / "manifest.json").write_text(json.dumps(d))


def test_shard_disagreeing_with_manifest_raises(copy, fake):
    e = fake.manifest.shards[0]  # samples [0, 4) x augs [0, 3)
    fields = list(fake.manifest.fields)
    t = load_file(copy / e.file)
    t["crop"] = t["crop"].astype("<i4")  # dtype disagrees
    _replace_shard(copy, e, t, [Field("crop", "<i4", (4,)), *fields[1:]])
    with pytest.raises(StoreError, match="'crop' is I32"):
        open_store(copy).params(0, 0)
    with pytest.raises(StoreError, match="'crop' is I32"):
        verify(copy)


def test_shard_with_other_shape_raises(copy, fake):
    e = fake.manifest.shards[0]
    fields = list(fake.manifest.fields)
    t = load_file(copy / e.file)
    t["erase"] = t["erase"][..., :2].copy()
    _replace_shard(copy, e, t, [*fields[:2], Field("erase", "|u1", (2,)), *fields[3:]])
    with pytest.raises(StoreError, match=r"'erase' is U8\[4, 3, 2\].*U8\[4, 3, 4\]"):
        open_store(copy).record(1, 1)


def test_out_of_range_values(tmp_path):
    # 10 classes are stored in 4 bits, so ids 10..15 are representable but invalid.
    fake = write_fake_store(tmp_path / "s", num_samples=6, num_augmentations=4, samples_per_shard=3,
                            augs_per_shard=2)
    e = fake.manifest.shards[1]
    t = load_file(fake.root / e.file)
    t["topk_ids"] = encode_topk_ids(np.full((3, 2, 3), 9), 16)
    t["topk_ids"][1, 1, 0] = 0xFF  # ids 15, 15
    _replace_shard(fake.root, e, t, list(fake.manifest.fields))
    d = json.loads((fake.root / "manifest.json").read_text())
    d["shards"][1]["sha256"] = __import__("hashlib").sha256((fake.root / e.file).read_bytes()).hexdigest()
    (fake.root / "manifest.json").write_text(json.dumps(d))
    with pytest.raises(IntegrityError, match="class id 15 >= num_classes=10"):
        verify(fake.root, full=True)

    fake = write_fake_store(tmp_path / "p", num_samples=6, num_augmentations=4, samples_per_shard=3,
                            augs_per_shard=2)
    e = fake.manifest.shards[2]
    t = load_file(fake.root / e.file)
    t["strength"][0, 0] = 2000  # declared range [-1000, 1000]
    from safetensors.numpy import save_file
    save_file(t, fake.root / e.file, metadata={"format_version": "1", "s0": "3", "s1": "6", "a0": "0", "a1": "2"})
    d = json.loads((fake.root / "manifest.json").read_text())
    d["shards"][2]["sha256"] = __import__("hashlib").sha256((fake.root / e.file).read_bytes()).hexdigest()
    d["shards"][2]["bytes"] = (fake.root / e.file).stat().st_size
    (fake.root / "manifest.json").write_text(json.dumps(d))
    with pytest.raises(IntegrityError, match=r"'strength' holds values in \[.*2000\]"):
        verify(fake.root, full=True)


def test_incompatible_dataset(fake):
    with pytest.raises(AlignmentError, match="11 samples .* has 12"):
        ReinforcementStore(fake.root, expected_num_samples=12)
    with pytest.raises(AlignmentError, match="1000 classes"):
        ReinforcementStore(fake.root, expected_num_classes=100)
    store = ReinforcementStore(fake.root, expected_num_samples=11, expected_num_classes=1000)
    with pytest.raises(AlignmentError, match="CIFAR"):
        store.check_compatible(50000, 100, source="CIFAR100(train)")


def test_malformed_manifest(copy):
    (copy / "manifest.json").write_text("{not json")
    with pytest.raises(StoreError, match="not valid JSON"):
        open_store(copy)
    (copy / "manifest.json").write_text(json.dumps({"format_version": FORMAT_VERSION, "dataset": "x"}))
    with pytest.raises(StoreError, match="malformed manifest"):
        open_store(copy)


def test_manifest_target_fields_must_match_schema(copy):
    d = json.loads((copy / "manifest.json").read_text())
    d["num_classes"] = 100  # 7-bit ids: the stored 10-bit ids would be reinterpreted
    (copy / "manifest.json").write_text(json.dumps(d))
    with pytest.raises(StoreError, match="does not match the schema"):
        open_store(copy)


def test_write_shard_rejects_nan_params(tmp_path):
    fields = [Field("lam", "<f4", (), 0.0, 1.0), *target_fields(10, 3)]
    arrays = _arrays(4, 2)
    arrays.pop("crop")
    arrays["lam"] = np.full((4, 2), np.nan, np.float32)
    with pytest.raises(StoreError, match="NaN"):
        write_shard(tmp_path, 0, 4, 0, 2, arrays, fields)


def test_index_types(fake):
    store = open_store(fake.root)
    np.testing.assert_array_equal(store.targets(np.int64(3), np.uint16(2))[0], fake.topk_ids[3, 2])
    with pytest.raises(TypeError):
        store.targets(3.0, 2)
    with pytest.raises(IndexError):
        store.params(-1, 0)


def test_overlapping_tensors_rejected(copy, fake):
    e = fake.manifest.shards[0]
    p = copy / e.file
    data = p.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    first, second = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])[:2]
    b0, e0 = header[first]["data_offsets"]
    b1, e1 = header[second]["data_offsets"]
    if e1 - b1 == e0 - b0:
        pytest.fail("test needs two tensors of different sizes")
    # point the second tensor at the first one's bytes, keeping its length: overlap + gap
    header[second]["data_offsets"] = [b0, b0 + (e1 - b1)]
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (n - len(raw))
    assert len(raw) == n
    p.write_bytes(data[:8] + raw + data[8 + n:])
    with pytest.raises(IntegrityError, match="overlap"):
        open_store(copy).record(0, 0)


def test_write_store_accepts_manifest_fields(tmp_path, fake):
    m = fake.manifest
    kwargs = dict(dataset="fake", split="train", num_classes=1000, policy={}, teacher={}, seed=0,
                  builder_version="t", params=fake.params, topk_ids=fake.topk_ids, topk_probs=fake.topk_probs,
                  labels=fake.labels, keys=fake.keys, hashes=fake.hashes, samples_per_shard=4, augs_per_shard=3)
    m2 = write_store_(tmp_path / "a", fields=m.fields, topk=5, **kwargs)
    assert m2.fields == m.fields and [e.sha256 for e in m2.shards] == [e.sha256 for e in m.shards]
    with pytest.raises(StoreError, match="topk=4"):
        write_store_(tmp_path / "b", fields=m.fields, topk=4, **kwargs)
    with pytest.raises(StoreError, match="exactly one"):
        write_store_(tmp_path / "c", **kwargs)
    with pytest.raises(StoreError, match="target fields"):
        write_store_(tmp_path / "d", fields=[*m.fields[:-2], *target_fields(100, 5)], **kwargs)
    bad = dict(kwargs, topk_probs=fake.topk_probs[..., ::-1])
    with pytest.raises(StoreError, match="descending"):
        write_store_(tmp_path / "e", fields=m.fields, **bad)


def test_manifest_files_for_partial_download(fake):
    m = fake.manifest
    assert m.files()[:2] == ["manifest.json", "samples.safetensors"] and len(m.files()) == 2 + 9
    mini = m.files(num_augmentations=3)
    assert len(mini) == 2 + 3 and all("-a00000-a00003" in f for f in mini[2:])
    assert len(m.files(num_augmentations=4)) == 2 + 6
    with pytest.raises(StoreError):
        m.files(num_augmentations=0)


def test_close_and_threads(fake):
    from concurrent.futures import ThreadPoolExecutor

    store = ReinforcementStore(fake.root, max_open_shards=3)
    rng = np.random.default_rng(5)
    pairs = list(zip(rng.integers(0, 11, 400).tolist(), rng.integers(0, 7, 400).tolist()))
    with ThreadPoolExecutor(4) as ex:
        got = list(ex.map(lambda p: store.targets(*p)[0], pairs))
    for (i, j), ids in zip(pairs, got):
        np.testing.assert_array_equal(ids, fake.topk_ids[i, j])
    assert sum(sh is not None for sh in store._open) <= 3
    store.close()
    assert all(sh is None for sh in store._open)
    np.testing.assert_array_equal(store.targets(0, 0)[0], fake.topk_ids[0, 0])


# -- build ids -----------------------------------------------------------------------------------------

def test_compute_build_id_is_canonical():
    ident = dict(dataset="imagenet", split="train", num_samples=11, num_classes=1000, topk=5, num_augmentations=7,
                 policy={"name": "rrc", "scale": [0.08, 1.0]}, teacher={"name": "t", "ensemble": 2}, seed=0,
                 format_version=FORMAT_VERSION, keys_digest="ab" * 32)
    bid = compute_build_id(**ident)
    assert len(bid) == 16 and int(bid, 16) >= 0 and bid == bid.lower()
    assert compute_build_id(**dict(reversed(list(ident.items())))) == bid  # key order does not matter
    assert compute_build_id(**{**ident, "policy": {"scale": (0.08, 1.0), "name": "rrc"}}) == bid
    assert compute_build_id(**{**ident, "seed": np.int64(0)}) == bid
    expected = hashlib.sha256(json.dumps(ident, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]
    assert bid == expected
    for change in ({"seed": 1}, {"teacher": {"name": "t", "ensemble": 3}}, {"policy": {"name": "rrc"}}):
        assert compute_build_id(**{**ident, **change}) != bid
    with pytest.raises(StoreError, match="not JSON-able"):
        compute_build_id(seed=object())
    with pytest.raises(StoreError, match="not JSON-able"):
        compute_build_id(scale=float("nan"))


def test_read_shard_entry_checks_build_id(tmp_path):
    e = write_shard(tmp_path, 0, 4, 0, 2, _arrays(4, 2), _fields(), build_id="build-aaaa")
    with safe_open(tmp_path / e.file, "np") as f:
        assert f.metadata()["build_id"] == "build-aaaa"
    assert read_shard_entry(tmp_path, e.file, _fields(), build_id="build-aaaa") == e
    assert read_shard_entry(tmp_path, e.file, _fields()) == e  # no id asked: not compared
    with pytest.raises(IntegrityError) as info:
        read_shard_entry(tmp_path, e.file, _fields(), build_id="build-bbbb")
    msg = str(info.value)
    for part in (e.file, "'build-aaaa'", "'build-bbbb'", "belongs to another build; delete it or use a fresh --out"):
        assert part in msg
    old = write_shard(tmp_path, 4, 8, 0, 2, _arrays(4, 2), _fields())  # written without an id
    with safe_open(tmp_path / old.file, "np") as f:
        assert "build_id" not in f.metadata()
    with pytest.raises(IntegrityError, match="has no build_id.*'build-aaaa'.*fresh --out"):
        read_shard_entry(tmp_path, old.file, _fields(), build_id="build-aaaa")
    with pytest.raises(StoreError, match="build_id must be a non-empty string"):
        write_shard(tmp_path, 0, 4, 0, 2, _arrays(4, 2), _fields(), build_id="")


def _small_store(root, seed, build_id):
    rng = np.random.default_rng(seed)
    ids, probs, _ = random_teacher_topk(rng, (6, 4), 10, 3)
    return write_store_(root, dataset="fake", split="train", num_classes=10, policy={"name": "p", "seed": seed},
                        teacher={"name": "t"}, seed=seed, builder_version="tests",
                        params={"crop": rng.integers(0, 65536, (6, 4, 4)).astype("<u2")}, topk_ids=ids,
                        topk_probs=probs, labels=rng.integers(0, 10, 6), keys=[f"k{i}" for i in range(6)],
                        hashes=rng.integers(0, 256, (6, 8), dtype=np.uint8), param_fields=_fields()[:1],
                        samples_per_shard=3, augs_per_shard=2, build_id=build_id)


def test_leftover_shard_of_another_build_is_rejected(tmp_path):
    ma = _small_store(tmp_path / "a", seed=0, build_id=compute_build_id(seed=0))
    mb = _small_store(tmp_path / "b", seed=1, build_id=compute_build_id(seed=1))
    assert ma.build_id == compute_build_id(seed=0) != mb.build_id
    assert json.loads((tmp_path / "a" / "manifest.json").read_text())["build_id"] == ma.build_id
    assert Manifest.load(tmp_path / "a") == ma
    e = ma.shards[1]  # samples [0, 3) x augs [2, 4)
    shutil.copyfile(tmp_path / "b" / e.file, tmp_path / "a" / e.file)  # same size, same name: only the id differs
    assert (tmp_path / "a" / e.file).stat().st_size == e.bytes
    with pytest.raises(IntegrityError, match=f"{e.file}.*{mb.build_id}.*{ma.build_id}.*another build"):
        read_shard_entry(tmp_path / "a", e.file, ma.fields, build_id=ma.build_id)
    store = open_store(tmp_path / "a")  # sizes match, so opening is fine ...
    store.record(0, 0)  # ... and other shards read
    with pytest.raises(IntegrityError, match=f"{e.file}.*{mb.build_id}.*{ma.build_id}.*another build"):
        store.record(0, 2)  # ... but the foreign shard is refused when first opened
    with pytest.raises(IntegrityError, match=f"{e.file}.*{mb.build_id}.*another build"):
        store.params_batch([0, 5], [3, 0])
    with pytest.raises(IntegrityError, match=f"{e.file}.*another build"):
        verify(tmp_path / "a")  # the quick check, not only full
    verify(tmp_path / "a", num_augmentations=2)  # the foreign shard is not among the first two augmentations
    # A foreign samples file is caught too (by the reader, verify and write_manifest).
    shutil.copyfile(tmp_path / "b" / "samples.safetensors", tmp_path / "a" / "samples.safetensors")
    with pytest.raises(IntegrityError, match="samples.safetensors.*another build"):
        open_store(tmp_path / "a")
    with pytest.raises(StoreError, match="samples.safetensors.*another build"):
        write_manifest(tmp_path / "a", ma)


def test_stores_without_build_id_still_work(fake, tmp_path):
    assert fake.manifest.build_id is None
    assert "build_id" not in json.loads((fake.root / "manifest.json").read_text())  # old manifests unchanged
    assert Manifest.load(fake.root).build_id is None
    open_store(fake.root).record(10, 6)
    verify(fake.root, full=True)
    # A store without an id does not compare ids, even when its shards carry one.
    m = _small_store(tmp_path / "a", seed=0, build_id=None)
    mb = _small_store(tmp_path / "b", seed=1, build_id=None)
    assert m.build_id is None and "build_id" not in m.to_json()
    shutil.copyfile(tmp_path / "b" / m.shards[0].file, tmp_path / "a" / m.shards[0].file)
    verify(tmp_path / "a")  # same size, no ids: only the full check (sha256) can tell
    with pytest.raises(IntegrityError, match="sha256"):
        verify(tmp_path / "a", full=True)
    assert read_shard_entry(tmp_path / "a", m.shards[0].file, m.fields) == mb.shards[0]
    d = m.to_json()
    d["build_id"] = 5
    with pytest.raises(StoreError, match="build_id must be a non-empty string"):
        Manifest.from_json(d)
