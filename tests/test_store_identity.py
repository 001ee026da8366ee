"""A store's identity on disk: rows bound to their place, shards to their teacher, paths confined to the store.

Real stores written by ``write_store`` (``tests/fakes/store_fakes.py``), edited byte by byte the
way a careless copy or a hostile manifest would.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from fakes.hub_cache import populate_hub_cache
from fakes.store_fakes import write_fake_store
from imagenet_plus.cli import main
from imagenet_plus.errors import FormatVersionError, IntegrityError, StoreError
from imagenet_plus.store import FORMAT_VERSION, Manifest, compute_teacher_id, open_store, verify
from imagenet_plus.store._format import read_header, row_place


def _rows_of(path: Path) -> dict:
    """Per tensor of a shard: (start byte, bytes per sample row)."""
    tensors = read_header(path)[0]
    return {name: (t.start, (t.end - t.start) // t.shape[0]) for name, t in tensors.items()}


def _swap_rows(path: Path, r1: int, r2: int) -> None:
    """Swap two sample rows of a shard in place: every field's values and the stored CRC32s together."""
    data = bytearray(path.read_bytes())
    for start, nb in _rows_of(path).values():
        a, b = slice(start + r1 * nb, start + (r1 + 1) * nb), slice(start + r2 * nb, start + (r2 + 1) * nb)
        data[a], data[b] = bytes(data[b]), bytes(data[a])
    path.write_bytes(bytes(data))


def _copy_row(src: Path, r_src: int, dst: Path, r_dst: int) -> None:
    """Copy one sample row (values and CRC32) of shard ``src`` over a row of shard ``dst`` (same layout)."""
    s, d = bytearray(src.read_bytes()), bytearray(dst.read_bytes())
    for name, (start, nb) in _rows_of(dst).items():
        s_start, s_nb = _rows_of(src)[name]
        assert s_nb == nb
        d[start + r_dst * nb:start + (r_dst + 1) * nb] = s[s_start + r_src * nb:s_start + (r_src + 1) * nb]
    dst.write_bytes(bytes(d))


def _edit_manifest(root: Path, edit) -> None:
    d = json.loads((root / "manifest.json").read_text())
    edit(d)
    (root / "manifest.json").write_text(json.dumps(d))


@pytest.fixture
def fake(tmp_path):
    return write_fake_store(tmp_path / "store", num_samples=11, num_augmentations=6, samples_per_shard=4,
                            augs_per_shard=3, seed=1)


# -- rows bound to their place --------------------------------------------------------------------------

def test_a_swap_of_two_rows_fails_on_first_read_naming_shard_and_sample(fake):
    e = fake.manifest.shards[0]  # samples [0, 4) x augs [0, 3)
    _swap_rows(fake.root / e.file, 1, 2)
    store = open_store(fake.root)
    np.testing.assert_array_equal(store.params(0, 0)["crop"], fake.params["crop"][0, 0])  # untouched rows read fine
    for read, sample in ((lambda s: s.record(1, 0), 1), (lambda s: s.targets(2, 2), 2),
                         (lambda s: s.params_batch([0, 2], [0, 1]), 2), (lambda s: s.records_batch([3, 1], [0, 2]), 1)):
        with pytest.raises(IntegrityError, match=rf"{e.file}: the records of sample {sample} \(augmentations "
                                                 r"\[0, 3\)\) fail their checksum.*moved from another sample"):
            read(open_store(fake.root))
    report = verify(fake.root, full=True, raise_on_problems=False)
    assert any(e.file in p and "samples [1, 2]" in p for p in report.problems), report.problems


def test_a_swap_is_caught_by_the_batched_check_of_many_rows(tmp_path):
    fake = write_fake_store(tmp_path / "s", num_samples=40, num_augmentations=2, samples_per_shard=40,
                            augs_per_shard=2, seed=4)
    e = fake.manifest.shards[0]
    _swap_rows(fake.root / e.file, 30, 7)
    with pytest.raises(IntegrityError, match=rf"{e.file}: the records of sample 7 "):
        open_store(fake.root).records_batch(np.arange(40), np.zeros(40, int))  # > 16 new rows: one vector pass


def test_a_row_moved_to_another_augmentation_block_fails(fake):
    first, second = fake.manifest.shards[0], fake.manifest.shards[1]  # augs [0, 3) and [3, 6) of samples [0, 4)
    assert (first.augs, second.augs) == ((0, 3), (3, 6))
    _copy_row(fake.root / first.file, 1, fake.root / second.file, 1)
    with pytest.raises(IntegrityError, match=rf"{second.file}: the records of sample 1 \(augmentations \[3, 6\)\)"):
        open_store(fake.root).record(1, 4)


def test_a_row_copied_from_a_store_of_other_records_fails(fake, tmp_path):
    other = write_fake_store(tmp_path / "other", num_samples=11, num_augmentations=6, samples_per_shard=4,
                             augs_per_shard=3, seed=2)
    e = fake.manifest.shards[0]
    _copy_row(other.root / e.file, 2, fake.root / e.file, 2)  # the other store's row 2 with its own CRC32
    with pytest.raises(IntegrityError, match=rf"{e.file}: the records of sample 2 "):
        open_store(fake.root).record(2, 0)


def test_row_place_is_the_documented_32_bytes():
    place = row_place("0123456789abcdef", 5, 3, 6)
    assert place == b"0123456789abcdef" + (5).to_bytes(8, "little") + (3).to_bytes(4, "little") + \
        (6).to_bytes(4, "little")


@pytest.mark.parametrize("where", ["manifest", "shard"])
def test_a_version_2_store_is_refused_with_rebuild_or_reimport(fake, where):
    # version 2 rows were not bound to their place and its build id did not cover the teacher's weights
    e = fake.manifest.shards[0]
    if where == "manifest":
        _edit_manifest(fake.root, lambda d: d.update(format_version=2))
        named = "manifest.json: store format version 2"
    else:
        from safetensors.numpy import load_file, save_file

        meta = read_header(fake.root / e.file)[1]
        save_file(load_file(fake.root / e.file), fake.root / e.file, metadata={**meta, "format_version": "2"})
        named = f"{e.file}: shard format version '2'"
    with pytest.raises(FormatVersionError, match=rf"{named}, this release reads version {FORMAT_VERSION}; .*"
                                                 r"rebuild it with this release.*re-import it"):
        open_store(fake.root, check_files=False).record(0, 0)


# -- shards bound to their teacher ----------------------------------------------------------------------

def _teacher(sha: str) -> dict:
    return {"models": ["test_resnet"], "checkpoints": ["model.safetensors"], "checkpoint_sha256": [sha]}


def test_a_shard_of_a_store_with_another_teacher_is_refused_on_first_read(tmp_path):
    # same settings, same records (same seed), same checkpoint name: only the checkpoint's bytes differ
    a = write_fake_store(tmp_path / "a", num_samples=8, num_augmentations=3, seed=3, teacher=_teacher("a" * 64))
    b = write_fake_store(tmp_path / "b", num_samples=8, num_augmentations=3, seed=3, teacher=_teacher("b" * 64))
    assert a.manifest.build_id != b.manifest.build_id
    e = a.manifest.shards[1]
    shutil.copyfile(b.root / e.file, a.root / e.file)
    assert (a.root / e.file).stat().st_size == e.bytes  # the same size: only its metadata tells
    store = open_store(a.root)
    store.record(0, 0)  # the store's own shards read fine
    with pytest.raises(IntegrityError, match=rf"{e.file} was written with teacher '{compute_teacher_id(b.manifest)}"
                                             rf"', the store's teacher is '{compute_teacher_id(a.manifest)}'"):
        store.record(e.samples[0], e.augs[0])
    with pytest.raises(IntegrityError, match="another teacher"):
        verify(a.root)


def test_every_shard_carries_the_teacher_id(fake):
    tid = compute_teacher_id(fake.manifest)
    for e in fake.manifest.shards:
        assert read_header(fake.root / e.file)[1]["teacher_id"] == tid


# -- paths confined to the store ------------------------------------------------------------------------

def _no_outside_advice(message: str) -> None:
    assert "delete" not in message and "re-download" not in message, message


@pytest.mark.parametrize("name", ["../../../../etc/passwd", "/etc/passwd", "../outside/samples.safetensors",
                                  "sub/../samples.safetensors", "reinforcements/../samples.safetensors"])
def test_a_samples_file_named_outside_the_store_is_refused_before_it_is_touched(fake, tmp_path, name, capsys):
    (tmp_path / "outside").mkdir()
    shutil.copyfile(fake.root / "samples.safetensors", tmp_path / "outside" / "samples.safetensors")
    _edit_manifest(fake.root, lambda d: d["samples_file"].update(file=name))
    for call in (lambda: open_store(fake.root), lambda: verify(fake.root, full=True), lambda: Manifest.load(fake.root)):
        with pytest.raises(StoreError, match=r"manifest.json: samples_file.file .* (not a path inside the store|"
                                             r"a store's samples file is 'samples.safetensors')") as err:
            call()
        _no_outside_advice(str(err.value))
    assert main(["info", str(fake.root)]) == 1
    out, err = capsys.readouterr()
    assert "samples_file.file" in err and "bytes" not in out and "Traceback" not in err
    _no_outside_advice(err)


@pytest.mark.parametrize("name", ["../elsewhere/shard-s00000000-s00000004-a00000-a00003.safetensors",
                                  "/tmp/reinforcements/shard-s00000000-s00000004-a00000-a00003.safetensors"])
def test_a_shard_named_outside_the_store_is_refused(fake, name):
    _edit_manifest(fake.root, lambda d: d["shards"][0].update(file=name))
    for call in (lambda: open_store(fake.root), lambda: verify(fake.root)):
        with pytest.raises(StoreError, match=r"manifest.json: shard .* not a path inside the store") as err:
            call()
        _no_outside_advice(str(err.value))


def test_a_symlinked_samples_file_leading_outside_is_refused(fake, tmp_path):
    outside = tmp_path / "outside.safetensors"  # a valid samples file, of this very store
    shutil.move(fake.root / "samples.safetensors", outside)
    os.symlink(outside, fake.root / "samples.safetensors")
    for call in (lambda: open_store(fake.root), lambda: open_store(fake.root, check_files=False)):
        with pytest.raises(StoreError, match=r"samples.safetensors: the store's .*symbolic link leading outside") as e:
            call()
        _no_outside_advice(str(e.value))
    report = verify(fake.root, full=True, raise_on_problems=False)
    assert not report.ok and any("leading outside the store" in p for p in report.problems)


def test_links_leading_outside_are_refused_and_links_inside_or_into_hub_blobs_are_followed(fake, tmp_path):
    e = fake.manifest.shards[2]
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.move(fake.root / e.file, outside / "shard.safetensors")
    os.symlink(os.path.relpath(outside / "shard.safetensors", (fake.root / e.file).parent), fake.root / e.file)
    with pytest.raises(StoreError, match=rf"{e.file}: the store's .*leading outside"):
        open_store(fake.root)
    with pytest.raises(StoreError, match=rf"{e.file}: the store's .*leading outside"):
        open_store(fake.root, check_files=False).record(e.samples[0], e.augs[0])
    assert not verify(fake.root, full=True, raise_on_problems=False).ok
    # the whole shard folder elsewhere
    (fake.root / e.file).unlink()
    shutil.move(outside / "shard.safetensors", fake.root / e.file)
    shutil.move(fake.root / "reinforcements", outside / "reinforcements")
    os.symlink(outside / "reinforcements", fake.root / "reinforcements")
    with pytest.raises(StoreError, match="leading outside the store folder"):
        open_store(fake.root)
    assert not verify(fake.root, raise_on_problems=False).ok

    # links that stay inside the store, and a Hub cache snapshot's links into its blobs/, are followed
    os.unlink(fake.root / "reinforcements")
    shutil.move(outside / "reinforcements", fake.root / "reinforcements")
    (fake.root / "data").mkdir()
    shutil.move(fake.root / "samples.safetensors", fake.root / "data" / "samples.safetensors")
    os.symlink("data/samples.safetensors", fake.root / "samples.safetensors")
    store = open_store(fake.root)
    assert store.keys == fake.keys
    verify(fake.root, full=True)
    os.unlink(fake.root / "samples.safetensors")
    shutil.move(fake.root / "data" / "samples.safetensors", fake.root / "samples.safetensors")
    os.rmdir(fake.root / "data")
    snap = populate_hub_cache(tmp_path / "hub", "org/fake-plus", fake.root)  # files are links into ../../blobs
    assert (snap / "manifest.json").is_symlink()
    store = open_store(snap)
    np.testing.assert_array_equal(store.params(5, 4)["crop"], fake.params["crop"][5, 4])
    verify(snap, full=True)
