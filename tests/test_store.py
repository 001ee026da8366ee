"""Tests of imagenet_plus.store: round trips, shard planning, atomic writes, verify and every bad-input case."""

from __future__ import annotations

import errno
import hashlib
import json
import multiprocessing as mp
import os
import re
import shutil
import zlib
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from fakes.store_fakes import (DEFAULT_PARAM_FIELDS, identity_columns, random_images, random_teacher_topk,
                               write_fake_store)
from imagenet_plus import _files
from imagenet_plus.errors import AlignmentError, ArgumentError, FormatVersionError, IntegrityError, StoreError
from imagenet_plus.schema import Field, decode_topk_probs, encode_topk_ids, encode_topk_probs, target_fields
from imagenet_plus.store import (BUILD_ID_FIELDS, FORMAT_VERSION, NOT_IN_BUILD_ID, ROW_CRC_NAME,  # noqa: I001
                                 Manifest, ReinforcementStore, compute_build_id, compute_teacher_id, digest_keys,
                                 open_store, plan_shards, read_shard_entry, resolve_shard_shape, shard_filename, verify,
                                 write_manifest, write_samples, write_shard)
from imagenet_plus.store import write_store as write_store_

BID = "0123456789abcdef"  # a build id for shards written outside a store
TID = "fedcba9876543210"  # a teacher id for those shards


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
    params2, ids2, probs2 = store.records_batch(i, j)  # one gather for a DataLoader batch
    assert params2.keys() == params.keys() and all(np.array_equal(params2[k], params[k]) for k in params)
    np.testing.assert_array_equal(ids2, ids)
    np.testing.assert_array_equal(probs2, probs)
    one = store.records_batch(np.int64(4), 3)  # scalars broadcast to a batch of one
    np.testing.assert_array_equal(one[1][0], fake.topk_ids[4, 3])
    empty = store.records_batch([], [])
    assert empty[1].shape == (0, 5) and empty[0]["crop"].shape == (0, 4)
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
    np.testing.assert_array_equal(store.image_sizes, [im.shape[:2] for im in fake.images])
    assert store.image_sizes.dtype == np.uint32 and store.fingerprints.shape == (11, 64)
    np.testing.assert_array_equal(store.fingerprints, fake.fingerprints)
    with pytest.raises(ValueError):
        store.labels[0] = 3  # views of the mapped file are read-only
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
    with pytest.raises(ArgumentError, match="Invalid value 2.5 for argument num_augmentations"):
        open_store(copy, num_augmentations=2.5)
    with pytest.raises(ArgumentError, match="for argument num_augmentations"):
        verify(copy, num_augmentations=0)
    with pytest.raises(StoreError, match="num_augmentations=8"):
        verify(copy, num_augmentations=8)


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
    assert set(d) == {*BUILD_ID_FIELDS, *NOT_IN_BUILD_ID}  # every key is either covered or listed as not
    assert d["shards"][0]["sha256"] and d["fields"][-1]["name"] == "topk_probs"


# -- writing -------------------------------------------------------------------------------------------

def _fields(num_classes=10, topk=3):
    return [Field("crop", "<u2", (4,), 0, 65535), *target_fields(num_classes, topk)]


def _arrays(n, a, num_classes=10, topk=3, seed=0):
    rng = np.random.default_rng(seed)
    ids, probs, _ = random_teacher_topk(rng, (n, a), num_classes, topk)
    return {"crop": rng.integers(0, 65536, (n, a, 4)).astype("<u2"), "topk_ids": encode_topk_ids(ids, num_classes),
            "topk_probs": encode_topk_probs(probs)}


def _crc_rows(tensors, fields, build_id=BID, s0=0, a0=0, a1=None):
    """Reference row checksums (format 3): zlib.crc32 of the row's place (build id UTF-8, sample <u8, a0 <u4,
    a1 <u4) followed by the row's bytes over the fields, in order."""
    n = tensors[fields[0].name].shape[0]
    a1 = tensors[fields[0].name].shape[1] + a0 if a1 is None else a1
    place = [build_id.encode() + (s0 + r).to_bytes(8, "little") + a0.to_bytes(4, "little") + a1.to_bytes(4, "little")
             for r in range(n)]
    return np.array([zlib.crc32(place[r] + b"".join(np.ascontiguousarray(tensors[f.name][r]).tobytes()
                                                    for f in fields)) for r in range(n)], dtype="<u4")


def _flip(path, offset, mask=0xFF):
    """Flip bits of one byte of a file in place (same size, same name)."""
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([b ^ mask]))


def _span(path, name):
    """(start, end) file offsets of a tensor, from the raw safetensors header."""
    data = Path(path).read_bytes()
    n = int.from_bytes(data[:8], "little")
    b, e = json.loads(data[8:8 + n])[name]["data_offsets"]
    return 8 + n + b, 8 + n + e


def test_write_shard_atomic_and_entry(tmp_path, monkeypatch):
    from imagenet_plus.store import _writer

    def no_reading(*args, **kwargs):
        raise AssertionError("write_shard must not read back the shard it wrote")

    for name in ("read_header", "sha256_file", "map_file", "scan_shard"):
        monkeypatch.setattr(_writer, name, no_reading)
    e = write_shard(tmp_path, 4, 8, 0, 2, _arrays(4, 2), _fields(), build_id=BID, teacher_id=TID)
    monkeypatch.undo()
    p = tmp_path / e.file
    assert e.file == shard_filename(4, 8, 0, 2) and e.samples == (4, 8) and e.augs == (0, 2)
    assert e.sha256 == hashlib.sha256(p.read_bytes()).hexdigest() and e.bytes == p.stat().st_size
    assert sorted(p.name for p in (tmp_path / "reinforcements").iterdir()) == [Path(e.file).name]  # no temp left
    assert read_shard_entry(tmp_path, e.file, _fields()) == e
    assert read_shard_entry(tmp_path, Path(e.file).name, _fields()) == e
    assert p.stat().st_mode & 0o044  # readable by others, as ordinary files
    with safe_open(p, "np") as f:
        assert f.metadata() == {"format_version": str(FORMAT_VERSION), "s0": "4", "s1": "8", "a0": "0", "a1": "2",
                                "build_id": BID, "teacher_id": TID}


def test_row_checksums_match_zlib_over_each_rows_bytes(tmp_path):
    fields = [Field("box", "<u2", (4,), 0, 65535), Field("lam", "<f4", (), 0.0, 1.0),
              Field("s", "<i2", (), -5, 5), *target_fields(1000, 5)]
    rng = np.random.default_rng(3)
    ids, probs, _ = random_teacher_topk(rng, (6, 3), 1000, 5)
    arrays = {"box": rng.integers(0, 65536, (6, 3, 4)).astype("<u2"), "lam": rng.random((6, 3)).astype("<f4"),
              "s": rng.integers(-5, 6, (6, 3)).astype("<i2"), "topk_ids": encode_topk_ids(ids, 1000),
              "topk_probs": encode_topk_probs(probs)}
    e = write_shard(tmp_path, 0, 6, 0, 3, arrays, fields, build_id=BID, teacher_id=TID)
    t = load_file(tmp_path / e.file)  # the safetensors library's own reader
    assert t[ROW_CRC_NAME].dtype == np.dtype("<u4") and t[ROW_CRC_NAME].shape == (6,)
    np.testing.assert_array_equal(t[ROW_CRC_NAME], _crc_rows(arrays, fields))
    assert _crc_rows(arrays, fields[::-1])[0] != t[ROW_CRC_NAME][0]  # field order matters


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
        write_shard(tmp_path, 0, 4, 0, 2, arrays, _fields(), build_id=BID, teacher_id=TID)
    assert not (tmp_path / "reinforcements").exists() or not any((tmp_path / "reinforcements").iterdir())


def test_write_shard_rejects_out_of_range_params_and_oversize(tmp_path):
    fields = [Field("ops", "|u1", (), 0, 13), *target_fields(10, 3)]
    arrays = _arrays(4, 2)
    arrays.pop("crop")
    arrays["ops"] = np.full((4, 2), 14, np.uint8)
    with pytest.raises(StoreError, match="outside its declared range"):
        write_shard(tmp_path, 0, 4, 0, 2, arrays, fields, build_id=BID, teacher_id=TID)
    with pytest.raises(StoreError, match="size cap"):
        write_shard(tmp_path, 0, 4, 0, 2, _arrays(4, 2), _fields(), max_shard_bytes=100, build_id=BID,
                    teacher_id=TID)
    reserved = [Field(ROW_CRC_NAME, "<u2", (4,)), *target_fields(10, 3)]
    arrays = _arrays(4, 2)
    arrays[ROW_CRC_NAME] = arrays.pop("crop")
    with pytest.raises(StoreError, match="reserved"):
        write_shard(tmp_path, 0, 4, 0, 2, arrays, reserved, build_id=BID, teacher_id=TID)
    with pytest.raises(StoreError, match="build_id must be a non-empty string"):
        write_shard(tmp_path, 0, 4, 0, 2, _arrays(4, 2), _fields(), build_id="", teacher_id=TID)


def _enospc_after_first(chunks):
    it = iter(chunks)
    yield next(it)
    raise OSError(errno.ENOSPC, "No space left on device")


def test_no_temp_files_after_a_full_disk(tmp_path, monkeypatch):
    from imagenet_plus.store import _writer

    with pytest.raises(OSError) as info:
        _files.atomic_write(tmp_path / "a" / "x.bin", _enospc_after_first([b"1" * 100, b"2" * 100]))
    assert info.value.errno == errno.ENOSPC and list((tmp_path / "a").iterdir()) == []
    good = write_shard(tmp_path, 0, 4, 0, 2, _arrays(4, 2), _fields(), build_id=BID, teacher_id=TID)
    before = (tmp_path / good.file).read_bytes()
    monkeypatch.setattr(_writer, "atomic_write", lambda path, chunks: _files.atomic_write(
        path, _enospc_after_first(chunks)))
    for write in (lambda: write_shard(tmp_path, 0, 4, 0, 2, _arrays(4, 2, seed=9), _fields(), build_id=BID,
                                      teacher_id=TID),
                  lambda: write_shard(tmp_path, 4, 8, 0, 2, _arrays(4, 2), _fields(), build_id=BID, teacher_id=TID),
                  lambda: write_samples(tmp_path, [1, 2], ["a", "b"], np.zeros((2, 8), np.uint8),
                                        np.ones((2, 2), np.uint32), np.zeros((2, 64), np.uint8), build_id=BID)):
        with pytest.raises(OSError, match="No space left"):
            write()
    assert sorted(p.name for p in (tmp_path / "reinforcements").iterdir()) == [Path(good.file).name]
    assert (tmp_path / good.file).read_bytes() == before  # the finished shard is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "reinforcements"]  # no samples file, no temp


def test_write_samples_checks_its_arguments(tmp_path):
    images = random_images(np.random.default_rng(0), 3)
    hashes, sizes, prints = identity_columns(images)
    ok = dict(labels=[0, 1, 2], keys=["a", "b", "c"], hashes=hashes, sizes=sizes, fingerprints=prints)
    e = write_samples(tmp_path, **ok, build_id=BID)
    assert e.sha256 == hashlib.sha256((tmp_path / e.file).read_bytes()).hexdigest()
    t = load_file(tmp_path / e.file)
    np.testing.assert_array_equal(t["image_size"], [im.shape[:2] for im in images])
    np.testing.assert_array_equal(t["fingerprint"], prints)
    assert t["key_bytes"].tobytes() == b"abc" and t["key_offsets"].tolist() == [0, 1, 2, 3]
    for change, match in [(dict(keys=["a", "b", "a"]), "'a' occurs more than once"),
                          (dict(sizes=np.zeros((3, 2), np.uint32)), r"sizes holds values in \[0, 0\]"),
                          (dict(sizes=sizes[:, :1]), r"sizes must be an integer array \[3, 2\]"),
                          (dict(fingerprints=prints[:2]), r"fingerprints must be an integer array \[3, 64\]"),
                          (dict(hashes=hashes.astype(np.float32)), "hashes must be an integer array"),
                          (dict(labels=[0, -1, 2]), "labels must lie in"),
                          (dict(keys=["a"]), "1 keys for 3 labels")]:
        with pytest.raises(StoreError, match=match):
            write_samples(tmp_path / "bad", **{**ok, **change}, build_id=BID)
    with pytest.raises(StoreError, match="build_id"):
        write_samples(tmp_path / "bad", **ok, build_id=None)
    assert not (tmp_path / "bad").exists()


def test_read_shard_entry_rejects_foreign_or_corrupt_shard(tmp_path):
    e = write_shard(tmp_path, 0, 4, 0, 2, _arrays(4, 2), _fields(), build_id=BID, teacher_id=TID)
    with pytest.raises(StoreError, match="do not match the manifest's"):
        read_shard_entry(tmp_path, e.file, [Field("box", "<u2", (4,)), *target_fields(10, 3)])
    with pytest.raises(StoreError, match="the manifest expects"):
        read_shard_entry(tmp_path, e.file, _fields(num_classes=1000))
    start, _ = _span(tmp_path / e.file, "topk_probs")
    _flip(tmp_path / e.file, start + 2 * 2 * 4 + 1)  # sample 2's row (2 augs x 4 codes per sample)
    with pytest.raises(IntegrityError, match=r"1 sample row\(s\) fail their checksum \(samples \[2\]\)"):
        read_shard_entry(tmp_path, e.file, _fields())  # a resumed build does not keep it
    _flip(tmp_path / e.file, start + 2 * 2 * 4 + 1)
    assert read_shard_entry(tmp_path, e.file, _fields()) == e
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


def test_write_manifest_refuses_a_build_id_that_does_not_fit(fake, copy):
    m = Manifest.load(copy)
    m.seed += 1  # a setting changed after the shards were written, build id kept
    with pytest.raises(StoreError, match=r"is not compute_build_id\(manifest, keys_digest\)"):
        write_manifest(copy, m)
    m.build_id = compute_build_id(m, digest_keys(fake.keys))  # a fitting id, but the files carry the old one
    with pytest.raises(StoreError, match="belongs to another build"):
        write_manifest(copy, m)
    m.build_id = None
    with pytest.raises(StoreError, match="build_id is missing"):
        write_manifest(copy, m)
    assert Manifest.load(copy) == fake.manifest  # nothing was written


# -- integrity at read time ----------------------------------------------------------------------------

def test_one_byte_flip_in_a_shard_raises_on_read(copy, fake):
    e = fake.manifest.shards[4]  # samples [4, 8) x augs [3, 6)
    assert e.samples == (4, 8) and e.augs == (3, 6)
    start, _ = _span(copy / e.file, "crop")
    _flip(copy / e.file, start + 2 * (3 * 4 * 2) + 5)  # sample 6 (row 2): 3 augs x 4 values x 2 bytes per row
    store = open_store(copy)  # same size: opening (which stats shards) cannot tell
    store.record(5, 4)  # other rows of the shard read fine
    store.record(6, 0)  # and so does sample 6 in another augmentation block (another shard)
    pattern = (rf"{e.file}: the records of sample 6 \(augmentations \[3, 6\)\) fail their checksum.*corrupt.*; "
               r"delete it and re-download it or rebuild the store; run `imagenet-plus verify STORE --full`")
    for read in (lambda s: s.params(6, 3), lambda s: s.targets(6, 5), lambda s: s.record(6, 4),
                 lambda s: s.params_batch([0, 6], [0, 4]), lambda s: s.targets_batch([6], [3]),
                 lambda s: s.records_batch([10, 6, 1], [6, 5, 2])):
        with pytest.raises(IntegrityError, match=pattern):
            read(store)
        with pytest.raises(IntegrityError, match=pattern):
            read(open_store(copy))
    _flip(copy / e.file, _span(copy / e.file, ROW_CRC_NAME)[0] + 4 * 1)  # the stored checksum of sample 5
    with pytest.raises(IntegrityError, match=f"{e.file}: the records of sample 5 "):
        open_store(copy).targets(5, 3)


def test_batches_of_many_new_rows_are_checked_in_one_pass(tmp_path):
    fake = write_fake_store(tmp_path / "s", num_samples=40, num_augmentations=4, samples_per_shard=40,
                            augs_per_shard=2, seed=3)
    e = fake.manifest.shards[1]  # samples [0, 40) x augs [2, 4)
    start, _ = _span(fake.root / e.file, "topk_probs")
    _flip(fake.root / e.file, start + 25 * 2 * 4 + 6, 0x10)  # sample 25: 2 augs x 4 codes per row
    store = open_store(fake.root)
    params, ids, _ = store.records_batch(np.arange(40), np.zeros(40, int))  # 40 new rows of shard 0: fine
    np.testing.assert_array_equal(ids, fake.topk_ids[:, 0])
    with pytest.raises(IntegrityError, match=rf"{e.file}: the records of sample 25 \(augmentations \[2, 4\)\)"):
        store.records_batch(np.arange(40)[::-1], np.full(40, 3))
    assert store.records_batch(np.arange(20), np.full(20, 2))[1].shape == (20, 3)  # rows before 25 are fine
    with pytest.raises(IntegrityError, match="sample 25 "):
        store.targets(25, 2)  # a failed row is not marked checked


def test_each_row_is_checked_once(fake, monkeypatch):
    import zlib as zlib_module

    calls = []
    real = zlib_module.crc32
    monkeypatch.setattr(zlib_module, "crc32", lambda data, value=0: calls.append(1) or real(data, value))
    store = open_store(fake.root)
    nfields = len(fake.manifest.fields)
    store.record(0, 0)
    # format 3: opening the shard computes the CRC of the build id once; each row then costs one CRC update for
    # its place (sample, augmentation block) and one per field
    per_row = 1 + nfields
    assert len(calls) == 1 + per_row
    store.targets(0, 2)
    store.params_batch([0, 1, 0], [1, 0, 0])  # sample 1's row is new
    assert len(calls) == 1 + 2 * per_row
    store.records_batch(np.arange(4), np.zeros(4, int))
    assert len(calls) == 1 + 4 * per_row  # samples 2 and 3


def test_flip_in_the_samples_file_raises_at_open(copy, fake):
    p = copy / "samples.safetensors"
    start, end = _span(p, "fingerprint")
    _flip(p, (start + end) // 2, 0x01)
    with pytest.raises(IntegrityError, match=r"samples.safetensors: sha256 .* does not match the manifest's"):
        open_store(copy)
    with pytest.raises(IntegrityError, match="samples.safetensors: sha256"):
        verify(copy, full=True)
    verify(copy)  # the quick check does not hash (and says so)


# -- verify --------------------------------------------------------------------------------------------

def test_verify_quick_says_what_it_did_not_hash(fake):
    r = verify(fake.root)
    assert r.ok and not r.full and r.bytes_hashed == 0 and r.rows_checked == 0
    assert r.num_shards == 9 and r.num_records == 77
    assert r.bytes_checked == sum(e.bytes for e in fake.manifest.shards) + fake.manifest.samples_file.bytes
    assert r.not_checked[0].startswith("sha256 of 9 shard file(s) (") and "and the samples file" in r.not_checked[0]
    assert "full=True" in r.not_checked[0]
    assert r.not_checked[1].startswith("CRC32 of 33 sample row(s) (77 records): run with full=True")
    assert any("value ranges" in s for s in r.not_checked)
    assert any(s.startswith("manifest fields outside the build id: builder_version") for s in r.not_checked)
    assert any(f"build id {fake.manifest.build_id} recomputed" in s for s in r.checked)
    text = r.summary()
    assert "OK (quick check (no hashing)" in text and "not checked:" in text and "sha256 of 9 shard" in text
    assert json.loads(json.dumps(r.to_json()))["not_checked"] == r.not_checked


def test_verify_full_hashes_and_checks_everything(fake):
    r = verify(fake.root, full=True)
    total = sum(e.bytes for e in fake.manifest.shards) + fake.manifest.samples_file.bytes
    assert r.ok and r.full and r.bytes_hashed == total == r.bytes_checked and r.rows_checked == 33
    assert r.files_hashed == 10 and any(s.startswith("sha256 of 10 file(s) (") for s in r.checked)
    assert any(s.startswith("CRC32 of 33 sample row(s)") for s in r.checked)
    assert not any("sha256" in s or "CRC32" in s for s in r.not_checked)
    assert r.not_in_build_id == NOT_IN_BUILD_ID


def test_verify_full_lists_every_flipped_byte(copy, fake):
    a, b = fake.manifest.shards[2], fake.manifest.shards[7]
    _flip(copy / a.file, _span(copy / a.file, "crop")[0] + 3, 0x01)  # sample 0 (row 0); any crop value is valid
    _flip(copy / b.file, _span(copy / b.file, "crop")[1] - 1, 0x01)  # last row: sample 10
    r = verify(copy)
    assert r.ok and any("sha256" in s for s in r.not_checked)  # quick: sizes and headers only, and it says so
    r = verify(copy, full=True, raise_on_problems=False)
    assert not r.ok and len(r.problems) == 4
    assert f"{a.file}: sha256" in r.problems[0] and "samples [0] (augmentations [6, 7))" in r.problems[1]
    assert f"{b.file}: sha256" in r.problems[2] and "samples [10] (augmentations [3, 6))" in r.problems[3]
    with pytest.raises(IntegrityError, match=r"4 problem\(s\)") as info:
        verify(copy, full=True)
    assert a.file in str(info.value) and b.file in str(info.value) and info.value.report.problems == r.problems
    assert "problems:" in r.summary() and "4 problem(s)" in r.summary()


def _edit_manifest(root, edit):
    d = json.loads((root / "manifest.json").read_text())
    edit(d)
    (root / "manifest.json").write_text(json.dumps(d))


# Hand edits of every field the build id covers; the first group keeps the manifest self-consistent,
# so only the recomputed build id can tell.
CONSISTENT_EDITS = {
    "dataset": lambda d: d.update(dataset="imagenet"),
    "split": lambda d: d.update(split="val"),
    "num_classes": lambda d: d.update(num_classes=1020),  # 10-bit ids either way: same shapes
    "seed": lambda d: d.update(seed=d["seed"] + 1),
    "policy": lambda d: d["policy"].update(name="rrc+ra/re"),
    "teacher": lambda d: d["teacher"].update(name="resnet152"),
    "fields": lambda d: d["fields"][0].update(high=4095),  # a param's declared range
    "extra": lambda d: d["extra"].update(limit_samples=5),
}
INCONSISTENT_EDITS = {
    "format_version": lambda d: d.update(format_version=1),
    "num_samples": lambda d: d.update(num_samples=12),
    "num_augmentations": lambda d: d.update(num_augmentations=6),
    "topk": lambda d: d.update(topk=4),
    "samples_per_shard": lambda d: d.update(samples_per_shard=5),
    "augs_per_shard": lambda d: d.update(augs_per_shard=2),
}


def test_edit_tables_cover_every_build_id_field():
    assert set(CONSISTENT_EDITS) | set(INCONSISTENT_EDITS) == set(BUILD_ID_FIELDS)


@pytest.mark.parametrize("name", sorted(CONSISTENT_EDITS))
def test_edited_manifest_fails_by_its_build_id(copy, fake, name):
    _edit_manifest(copy, CONSISTENT_EDITS[name])
    Manifest.load(copy)  # the edit leaves a well-formed manifest: only the build id can tell
    for full in (False, True):
        with pytest.raises(IntegrityError, match=rf"manifest.json: its settings and the samples file's keys give "
                                                 rf"build id '[0-9a-f]{{16}}', but the manifest and the files it "
                                                 rf"lists carry '{fake.manifest.build_id}'; the manifest was edited"):
            verify(copy, full=full)
    with pytest.raises(IntegrityError, match="manifest.json: its settings .* edited after the build"):
        open_store(copy)


@pytest.mark.parametrize("name", sorted(INCONSISTENT_EDITS))
def test_edited_manifest_fails_by_its_schema_or_plan(copy, name):
    _edit_manifest(copy, INCONSISTENT_EDITS[name])
    with pytest.raises(StoreError, match="manifest.json"):
        verify(copy, full=True)
    with pytest.raises(StoreError, match="manifest.json"):
        open_store(copy)


def test_edit_with_a_recomputed_build_id_fails_by_the_files_ids(copy, fake):
    m = Manifest.load(copy)
    m.num_classes = 1020
    m.build_id = compute_build_id(m, digest_keys(fake.keys))  # a careful edit: the manifest agrees with itself
    m.save(copy)
    r = verify(copy, raise_on_problems=False)
    assert len(r.problems) == 10  # the samples file and all 9 shards carry the real id
    assert all(f"has build_id '{fake.manifest.build_id}', the build's is '{m.build_id}'" in p for p in r.problems)
    with pytest.raises(IntegrityError, match="samples.safetensors has build_id"):
        open_store(copy)


def test_fields_outside_the_build_id_can_change(copy, fake):
    _edit_manifest(copy, lambda d: d.update(builder_version="9.9", reports={"teacher": {"top1_agreement": 0.9}}))
    r = verify(copy, full=True)
    assert r.ok and set(r.not_in_build_id) == {"builder_version", "reports", "samples_file", "shards", "build_id"}
    assert open_store(copy).manifest.reports == {"teacher": {"top1_agreement": 0.9}}


def test_verify_partial_download_says_what_it_skipped(copy, fake):
    for e in fake.manifest.shards:
        if e.augs[0] >= 3:
            (copy / e.file).unlink()
    r = verify(copy, full=True, num_augmentations=3)
    assert r.num_shards == 3 and r.rows_checked == 11
    assert any(s.startswith("6 shard(s) of augmentations >= 3: not requested") for s in r.not_checked)
    r = verify(copy, raise_on_problems=False)
    assert len(r.problems) == 6 and all("missing" in p for p in r.problems)


def test_missing_shard(copy, fake):
    (copy / fake.manifest.shards[5].file).unlink()
    with pytest.raises(IntegrityError, match=r"shard-s00000004-s00000008-a00006-a00007.*missing"):
        verify(copy)
    r = verify(copy, full=True, raise_on_problems=False)
    assert len(r.problems) == 1 and r.files_hashed == 9
    assert "sha256, rows and values of 1 file(s) whose header or size failed (see problems)" in r.not_checked
    with pytest.raises(IntegrityError, match="re-download"):
        open_store(copy)
    store = open_store(copy, check_files=False)
    with pytest.raises(IntegrityError, match="missing"):
        store.targets(5, 6)


def test_missing_manifest_and_samples(copy):
    (copy / "samples.safetensors").unlink()
    with pytest.raises(IntegrityError, match="samples.safetensors"):
        open_store(copy)
    with pytest.raises(IntegrityError, match="samples.safetensors.*missing"):
        verify(copy)
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


def test_flipped_header_byte_is_refused(copy, fake):
    p = copy / fake.manifest.shards[2].file
    _flip(p, 12, 0x5A)  # in the JSON header: the reader must refuse, not reinterpret
    with pytest.raises(StoreError):
        open_store(copy).record(0, 6)
    with pytest.raises(StoreError):
        verify(copy)


def test_version_1_store_is_refused(copy, fake):
    _edit_manifest(copy, lambda d: d.update(format_version=1))
    with pytest.raises(FormatVersionError, match=rf"format version 1, this release reads version {FORMAT_VERSION}; "
                                                 ".*rebuild the store with this release"):
        open_store(copy)
    with pytest.raises(FormatVersionError, match="rebuild the store with this release"):
        verify(copy)
    _edit_manifest(copy, lambda d: d.update(format_version=FORMAT_VERSION + 1))
    with pytest.raises(FormatVersionError, match="upgrade imagenet-plus"):
        open_store(copy)


@pytest.mark.parametrize("version, match", [("1", "rebuild the store with this release"), ("99", "upgrade")])
def test_shard_format_version_mismatch(copy, fake, version, match):
    e = fake.manifest.shards[0]
    t = load_file(copy / e.file)
    save_file(t, copy / e.file, metadata={"format_version": version, "s0": "0", "s1": "4", "a0": "0", "a1": "3",
                                          "build_id": fake.manifest.build_id,
                                          "teacher_id": compute_teacher_id(fake.manifest)})
    with pytest.raises(FormatVersionError, match=f"shard format version '{version}'.*{match}"):
        open_store(copy, check_files=False).record(0, 0)


def _forge_shard(root, entry, tensors, fields, build_id):
    """Write a shard as a faulty builder would (valid checksums, any values) and fix the manifest's entry."""
    tensors = {k: v for k, v in tensors.items() if k != ROW_CRC_NAME}
    (s0, s1), (a0, a1) = entry.samples, entry.augs
    tensors[ROW_CRC_NAME] = _crc_rows(tensors, fields, build_id, s0, a0, a1)
    teacher_id = compute_teacher_id(Manifest.load(root))
    save_file(tensors, root / entry.file, metadata={"format_version": str(FORMAT_VERSION), "s0": str(s0),
                                                     "s1": str(s1), "a0": str(a0), "a1": str(a1),
                                                     "build_id": build_id, "teacher_id": teacher_id})
    data = (root / entry.file).read_bytes()
    d = json.loads((root / "manifest.json").read_text())
    for s in d["shards"]:
        if s["file"] == entry.file:
            s["bytes"], s["sha256"] = len(data), hashlib.sha256(data).hexdigest()
    (root / "manifest.json").write_text(json.dumps(d))


def test_shard_disagreeing_with_manifest_raises(copy, fake):
    e = fake.manifest.shards[0]  # samples [0, 4) x augs [0, 3)
    fields = list(fake.manifest.fields)
    t = load_file(copy / e.file)
    t["crop"] = t["crop"].astype("<i4")  # dtype disagrees
    _forge_shard(copy, e, t, [Field("crop", "<i4", (4,)), *fields[1:]], fake.manifest.build_id)
    with pytest.raises(StoreError, match="'crop' is I32"):
        open_store(copy).params(0, 0)
    with pytest.raises(StoreError, match="'crop' is I32"):
        verify(copy)


def test_shard_with_other_shape_raises(copy, fake):
    e = fake.manifest.shards[0]
    fields = list(fake.manifest.fields)
    t = load_file(copy / e.file)
    t["erase"] = t["erase"][..., :2].copy()
    _forge_shard(copy, e, t, [*fields[:2], Field("erase", "|u1", (2,)), *fields[3:]], fake.manifest.build_id)
    with pytest.raises(StoreError, match=r"'erase' is U8\[4, 3, 2\].*U8\[4, 3, 4\]"):
        open_store(copy).record(1, 1)


def test_out_of_range_values(tmp_path):
    # 10 classes are stored in 4 bits, so ids 10..15 are representable but invalid.
    fake = write_fake_store(tmp_path / "s", num_samples=6, num_augmentations=4, samples_per_shard=3,
                            augs_per_shard=2)
    fields = list(fake.manifest.fields)
    e = fake.manifest.shards[1]
    t = load_file(fake.root / e.file)
    t["topk_ids"] = encode_topk_ids(np.full((3, 2, 3), 9), 16)
    t["topk_ids"][1, 1, 0] = 0xFF  # ids 15, 15
    _forge_shard(fake.root, e, t, fields, fake.manifest.build_id)
    e = fake.manifest.shards[2]
    t = load_file(fake.root / e.file)
    t["strength"][0, 0] = 2000  # declared range [-1000, 1000]
    _forge_shard(fake.root, e, t, fields, fake.manifest.build_id)
    verify(fake.root)  # quick: not checked, and it says so
    r = verify(fake.root, full=True, raise_on_problems=False)
    assert len(r.problems) == 2
    assert "class id 15 >= num_classes=10" in r.problems[0] and e.file in r.problems[1]
    assert re.search(r"'strength' holds values in \[.*2000\], outside its declared range \[-1000, 1000\]",
                     r.problems[1])


def test_samples_file_values_are_checked(tmp_path):
    fake = write_fake_store(tmp_path / "s", num_samples=5, num_augmentations=2, num_classes=10)
    t = load_file(fake.root / "samples.safetensors")
    t["label"][3] = 12  # outside [0, num_classes)
    t["image_size"][1] = [0, 5]
    with safe_open(fake.root / "samples.safetensors", "np") as f:
        meta = f.metadata()
    save_file(t, fake.root / "samples.safetensors", metadata=meta)
    data = (fake.root / "samples.safetensors").read_bytes()
    _edit_manifest(fake.root, lambda d: d["samples_file"].update(bytes=len(data),
                                                                 sha256=hashlib.sha256(data).hexdigest()))
    r = verify(fake.root, full=True, raise_on_problems=False)
    assert len(r.problems) == 2 and "labels in [" in r.problems[0] and "image size of 0" in r.problems[1]


def test_incompatible_dataset(fake):
    with pytest.raises(AlignmentError, match="11 samples .* has 12"):
        ReinforcementStore(fake.root, expected_num_samples=12)
    with pytest.raises(AlignmentError, match="1000 classes"):
        ReinforcementStore(fake.root, expected_num_classes=100)
    store = ReinforcementStore(fake.root, expected_num_samples=11, expected_num_classes=1000)
    with pytest.raises(AlignmentError, match="CIFAR"):
        store.check_compatible(50000, 100, source="CIFAR100(train)")


def test_malformed_manifest(copy):
    d = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text("{not json")
    with pytest.raises(StoreError, match="not valid JSON"):
        open_store(copy)
    (copy / "manifest.json").write_text(json.dumps({"format_version": FORMAT_VERSION, "dataset": "x"}))
    with pytest.raises(StoreError, match="malformed manifest"):
        open_store(copy)
    (copy / "manifest.json").write_text(json.dumps({**d, "num_clases": 12}))
    with pytest.raises(StoreError, match=r"unknown manifest keys \['num_clases'\]"):
        open_store(copy)
    (copy / "manifest.json").write_text(json.dumps({k: v for k, v in d.items() if k != "build_id"}))
    with pytest.raises(StoreError, match="build_id is missing"):
        open_store(copy)


def test_manifest_target_fields_must_match_schema(copy):
    _edit_manifest(copy, lambda d: d.update(num_classes=100))  # 7-bit ids: the stored 10-bit ids would be misread
    with pytest.raises(StoreError, match="does not match the schema"):
        open_store(copy)


def test_write_shard_rejects_nan_params(tmp_path):
    fields = [Field("lam", "<f4", (), 0.0, 1.0), *target_fields(10, 3)]
    arrays = _arrays(4, 2)
    arrays.pop("crop")
    arrays["lam"] = np.full((4, 2), np.nan, np.float32)
    with pytest.raises(StoreError, match="NaN"):
        write_shard(tmp_path, 0, 4, 0, 2, arrays, fields, build_id=BID, teacher_id=TID)


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
    kwargs = dict(dataset="fake", split="train", num_classes=1000, policy=m.policy, teacher=m.teacher, seed=m.seed,
                  builder_version="other", params=fake.params, topk_ids=fake.topk_ids, topk_probs=fake.topk_probs,
                  labels=fake.labels, keys=fake.keys, hashes=fake.hashes, sizes=fake.sizes,
                  fingerprints=fake.fingerprints, samples_per_shard=4, augs_per_shard=3)
    m2 = write_store_(tmp_path / "a", fields=m.fields, topk=5, **kwargs)
    assert m2.fields == m.fields and m2.build_id == m.build_id  # builder_version is outside the build id
    assert [e.sha256 for e in m2.shards] == [e.sha256 for e in m.shards]  # reproducible bytes
    with pytest.raises(StoreError, match="topk=4"):
        write_store_(tmp_path / "b", fields=m.fields, topk=4, **kwargs)
    with pytest.raises(StoreError, match="exactly one"):
        write_store_(tmp_path / "c", **kwargs)
    with pytest.raises(StoreError, match="target fields"):
        write_store_(tmp_path / "d", fields=[*m.fields[:-2], *target_fields(100, 5)], **kwargs)
    bad = dict(kwargs, topk_probs=fake.topk_probs[..., ::-1])
    with pytest.raises(StoreError, match="descending"):
        write_store_(tmp_path / "e", fields=m.fields, **bad)
    with pytest.raises(TypeError, match="sizes"):
        write_store_(tmp_path / "f", fields=m.fields, **{k: v for k, v in kwargs.items() if k != "sizes"})


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

def test_digest_keys_is_sha256_of_offsets_then_bytes():
    keys = ["n01440764/a.JPEG", "b", "", "ü/ß.png"]
    enc = [k.encode("utf-8") for k in keys]
    offsets = np.cumsum([0] + [len(b) for b in enc]).astype("<i8")
    assert digest_keys(keys) == hashlib.sha256(offsets.tobytes() + b"".join(enc)).hexdigest()
    assert digest_keys(["ab", "c"]) != digest_keys(["a", "bc"])  # the offsets separate keys


def test_compute_build_id_is_canonical(fake):
    m = Manifest.load(fake.root)
    kd = digest_keys(fake.keys)
    bid = compute_build_id(m, kd)
    assert bid == m.build_id and len(bid) == 16 and bid == bid.lower()
    d = json.loads((fake.root / "manifest.json").read_text())
    ident = {**{k: d[k] for k in BUILD_ID_FIELDS}, "keys_digest": kd}
    assert bid == hashlib.sha256(json.dumps(ident, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]
    same = Manifest.load(fake.root)
    same.policy = dict(reversed(list(m.policy.items())))  # key order does not matter
    same.policy["fields"] = tuple(same.policy["fields"])  # tuples hash as lists
    same.seed = np.int64(m.seed)
    same.builder_version, same.reports, same.shards, same.samples_file = "x", {"r": 1}, [], None
    assert compute_build_id(same, kd) == bid
    for name, value in [("dataset", "x"), ("split", "x"), ("num_classes", 999), ("topk", 4), ("seed", 7),
                        ("policy", {}), ("teacher", {}), ("extra", {"limit_samples": 3}), ("num_samples", 12),
                        ("num_augmentations", 6), ("samples_per_shard", 3), ("augs_per_shard", 2),
                        ("format_version", 1), ("fields", m.fields[1:])]:
        other = Manifest.load(fake.root)
        setattr(other, name, value)
        assert compute_build_id(other, kd) != bid, name
    assert compute_build_id(m, digest_keys(fake.keys[::-1])) != bid
    other = Manifest.load(fake.root)
    other.teacher = {"scale": float("nan")}
    with pytest.raises(StoreError, match="not JSON-able"):
        compute_build_id(other, kd)
    other.teacher = {"x": object()}
    with pytest.raises(StoreError, match="not JSON-able"):
        compute_build_id(other, kd)
    with pytest.raises(StoreError, match="keys_digest must be"):
        compute_build_id(m, "abc")


def test_check_manifest_recomputes_the_build_id(copy, fake):
    store = open_store(copy)
    assert store.check_manifest() == fake.manifest.build_id
    store.manifest.seed += 1  # an edit in memory, after opening
    with pytest.raises(IntegrityError, match="manifest.json: its settings and the samples file's keys give"):
        store.check_manifest()


def test_read_shard_entry_checks_build_id(tmp_path):
    e = write_shard(tmp_path, 0, 4, 0, 2, _arrays(4, 2), _fields(), build_id="build-aaaa", teacher_id=TID)
    with safe_open(tmp_path / e.file, "np") as f:
        assert f.metadata()["build_id"] == "build-aaaa"
    assert read_shard_entry(tmp_path, e.file, _fields(), build_id="build-aaaa", teacher_id=TID) == e
    assert read_shard_entry(tmp_path, e.file, _fields()) == e  # no id asked: not compared
    with pytest.raises(IntegrityError) as info:
        read_shard_entry(tmp_path, e.file, _fields(), build_id="build-bbbb")
    msg = str(info.value)
    for part in (e.file, "'build-aaaa'", "'build-bbbb'", "belongs to another build; delete it or use a fresh --out"):
        assert part in msg
    with pytest.raises(StoreError, match="build_id must be a non-empty string"):
        read_shard_entry(tmp_path, e.file, _fields(), build_id="", teacher_id=TID)


def _small_store(root, seed):
    rng = np.random.default_rng(seed)
    ids, probs, _ = random_teacher_topk(rng, (6, 4), 10, 3)
    hashes, sizes, prints = identity_columns(random_images(rng, 6))
    return write_store_(root, dataset="fake", split="train", num_classes=10, policy={"name": "p", "seed": seed},
                        teacher={"name": "t"}, seed=seed, builder_version="tests",
                        params={"crop": rng.integers(0, 65536, (6, 4, 4)).astype("<u2")}, topk_ids=ids,
                        topk_probs=probs, labels=rng.integers(0, 10, 6), keys=[f"k{i}" for i in range(6)],
                        hashes=hashes, sizes=sizes, fingerprints=prints, param_fields=_fields()[:1],
                        samples_per_shard=3, augs_per_shard=2)


def test_leftover_shard_of_another_build_is_rejected(tmp_path):
    ma = _small_store(tmp_path / "a", seed=0)
    mb = _small_store(tmp_path / "b", seed=1)
    assert ma.build_id != mb.build_id
    assert json.loads((tmp_path / "a" / "manifest.json").read_text())["build_id"] == ma.build_id
    assert Manifest.load(tmp_path / "a") == ma
    e = ma.shards[1]  # samples [0, 3) x augs [2, 4)
    own = (tmp_path / "a" / e.file).read_bytes()
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
    with pytest.raises(StoreError, match=f"{e.file}.*another build"):
        write_manifest(tmp_path / "a", ma)
    (tmp_path / "a" / e.file).write_bytes(own)
    # A foreign samples file is caught too (by the reader, verify and write_manifest).
    shutil.copyfile(tmp_path / "b" / "samples.safetensors", tmp_path / "a" / "samples.safetensors")
    with pytest.raises(IntegrityError, match="samples.safetensors.*another build"):
        open_store(tmp_path / "a")
    with pytest.raises(StoreError, match="samples.safetensors.*another build"):
        write_manifest(tmp_path / "a", ma)
