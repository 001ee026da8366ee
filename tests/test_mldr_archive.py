"""The archive reader: .tar.gz / .tar / folder, the config anywhere, truncation, duplicates, ranges."""

from __future__ import annotations

import io
import os
import tarfile

import pytest

from fakes.mldr_archive import mldr_config, pack, torch_save_bytes, write_archive
from imagenet_plus.errors import ArgumentError, ImportFormatError
from imagenet_plus.mldr import _archive, open_archive, parse_config

SIZES = [(60 + 3 * i, 50 + 2 * i) for i in range(7)]
N = len(SIZES)


def _indices(archive) -> list[int]:
    return sorted(m.index for m in archive)


@pytest.mark.parametrize("form", ["tar.gz", "tar", "folder"])
@pytest.mark.parametrize("config_at", ["first", 3, "last"])
def test_every_sample_once_wherever_the_config_is(tmp_path, form, config_at):
    fa = write_archive(tmp_path / f"a.{form}", sizes=SIZES, ns=3, form=form, config_at=config_at)
    a = open_archive(fa.path, N)
    assert a.kind == form and a.config == fa.config
    assert a.config_member.endswith("reinforced_data/config.pth.tar")
    members = list(a)
    assert sorted(m.index for m in members) == list(range(N))
    assert all(m.name.endswith(f"reinforced_data/{m.index}.pth.tar") for m in members)
    assert _indices(a) == list(range(N))  # iterating again reads again


@pytest.mark.parametrize("form", ["tar.gz", "tar"])
def test_config_after_more_than_the_buffer_rereads_from_the_start(tmp_path, form, monkeypatch):
    fa = write_archive(tmp_path / f"a.{form}", sizes=SIZES, ns=3, form=form, config_at="last")
    scans = []
    real = _archive.MLDRArchive._scan_plain_tar
    monkeypatch.setattr(_archive.MLDRArchive, "_scan_plain_tar", lambda self: (scans.append(1), real(self)))
    a = open_archive(fa.path, N, max_buffer_bytes=0)
    assert a._rest is None and a.config == fa.config  # nothing kept; the first pass only found the config
    assert scans == ([1] if form == "tar" else [])  # a plain tar finds it by a header scan
    assert _indices(a) == list(range(N))


def test_config_found_early_keeps_the_stream_position(tmp_path):
    fa = write_archive(tmp_path / "a.tar.gz", sizes=SIZES, ns=3, config_at=2)
    a = open_archive(fa.path, N)
    assert len(a._pending) == 2 and a._rest is not None
    assert _indices(a) == list(range(N))
    with open_archive(fa.path, N) as b:  # closing without iterating releases the open stream
        assert b._rest is not None
    assert b._rest is None and _indices(b) == list(range(N))


@pytest.mark.parametrize("prefix", ["", "reinforced_data/", "./mnt/reinforced_data/"])
@pytest.mark.parametrize("form", ["tar.gz", "tar"])
def test_any_folder_prefix(tmp_path, prefix, form):
    fa = write_archive(tmp_path / f"a.{form}", sizes=SIZES, ns=2, form=form, prefix=prefix)
    assert _indices(open_archive(fa.path, N)) == list(range(N))


def test_folder_given_as_parent_or_itself(tmp_path):
    fa = write_archive(tmp_path / "out", sizes=SIZES, ns=2, form="folder")
    for root in (fa.path, fa.path / "reinforced_data"):
        a = open_archive(root, N)
        assert a.config == fa.config and _indices(a) == list(range(N))


def test_truncated_tar_gz_names_the_last_good_member(tmp_path):
    fa = write_archive(tmp_path / "a.tar.gz", sizes=SIZES, ns=40, config_at="first")
    data = fa.path.read_bytes()
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    a = open_archive(cut, N)
    with pytest.raises(ImportFormatError, match=r"cut\.tar\.gz: the archive is truncated or corrupt (inside "
                                                r"member \S+, )?after member reinforced_data/\S+\.pth\.tar .*download "
                                                r"it again"):
        list(a)


def test_truncated_tar_inside_a_member_and_at_a_member_boundary(tmp_path):
    fa = write_archive(tmp_path / "a.tar", sizes=SIZES, ns=40, form="tar", config_at="first")
    data = fa.path.read_bytes()
    with tarfile.open(fa.path) as tf:
        infos = tf.getmembers()
    inside = tmp_path / "inside.tar"
    inside.write_bytes(data[: infos[4].offset_data + 100])
    with pytest.raises(ImportFormatError, match=rf"inside member {infos[4].name}, after member {infos[3].name}"):
        list(open_archive(inside, N))
    boundary = tmp_path / "boundary.tar"
    boundary.write_bytes(data[: infos[5].offset])  # ends cleanly after member 4: tar sees no error
    with pytest.raises(ImportFormatError, match=rf"holds 3 of the dataset's {N} samples; missing 4, .* ended after "
                                                rf"member {infos[4].name}: the archive may be truncated"):
        list(open_archive(boundary, N))


def test_missing_config(tmp_path):
    cfg_bytes = torch_save_bytes(mldr_config("imagenet", "rrc+ra/re", ns=2), "config.pth.tar", tmp_path, protocol=None)
    fa = write_archive(tmp_path / "a.tar.gz", sizes=SIZES, ns=2)
    members = [(n, tarfile.open(fa.path).extractfile(n).read()) for n in fa.members if "config" not in n]
    for form in ("tar.gz", "tar", "folder"):
        path = pack(tmp_path / f"noconfig.{form}", members, form)
        with pytest.raises(ImportFormatError, match=r"no config\.pth\.tar"):
            open_archive(path, N)
        cfg = tmp_path / "config.pth.tar"
        cfg.write_bytes(cfg_bytes)
        a = open_archive(path, N, config_file=cfg)  # the fix the message names
        assert a.config_member == str(cfg) and _indices(a) == list(range(N))


def test_config_file_must_match_the_archives_own(tmp_path):
    fa = write_archive(tmp_path / "a.tar", sizes=SIZES, ns=2, form="tar")
    other = tmp_path / "config.pth.tar"
    other.write_bytes(torch_save_bytes(mldr_config("imagenet", "rrc", ns=2), "config.pth.tar", tmp_path, protocol=None))
    with pytest.raises(ImportFormatError, match="differs from the config_file"):
        list(open_archive(fa.path, N, config_file=other))


def test_duplicate_index(tmp_path):
    fa = write_archive(tmp_path / "a.tar", sizes=SIZES, ns=2, form="tar", config_at="first")
    with tarfile.open(fa.path) as tf:
        dup = tf.extractfile("reinforced_data/2.pth.tar").read()
    with tarfile.open(fa.path, "a") as tf:
        info = tarfile.TarInfo("reinforced_data/2.pth.tar")
        info.size = len(dup)
        tf.addfile(info, io.BytesIO(dup))
    with pytest.raises(ImportFormatError, match=r"sample 2 appears twice \(the second time as reinforced_data/2\.pth"):
        list(open_archive(fa.path, N))


def test_index_outside_the_users_dataset_and_missing_samples(tmp_path):
    fa = write_archive(tmp_path / "a.tar.gz", sizes=SIZES, ns=2)
    with pytest.raises(ImportFormatError, match=r"member reinforced_data/6\.pth\.tar is sample 6, outside the "
                                                r"dataset's \[0, 6\): the archive belongs to another dataset"):
        list(open_archive(fa.path, N - 1))
    with pytest.raises(ImportFormatError, match=rf"holds {N} of the dataset's {N + 2} samples; missing 2, e\.g\. "
                                                rf"\[{N}, {N + 1}\]"):
        list(open_archive(fa.path, N + 2))
    assert _indices(open_archive(fa.path, N + 2, require_complete=False)) == list(range(N))
    with pytest.raises(ArgumentError, match="num_samples"):
        open_archive(fa.path, 0)


def test_two_configs_and_two_sample_folders_are_refused(tmp_path):
    cfg = torch_save_bytes(mldr_config("imagenet", "rrc", ns=2), "config.pth.tar", tmp_path, protocol=None)
    fa = write_archive(tmp_path / "a.tar", sizes=SIZES, ns=2, form="tar", config_at="first",
                       extra=[("reinforced_data/sub/config.pth.tar", cfg)])
    with pytest.raises(ImportFormatError, match="lie in different folders"):
        list(open_archive(fa.path, N))
    fb = write_archive(tmp_path / "b.tar", sizes=SIZES, ns=2, form="tar", config_at="first",
                       extra=[("reinforced_data/config.pth.tar", cfg)])
    with pytest.raises(ImportFormatError, match="a second reinforced_data/config.pth.tar"):
        list(open_archive(fb.path, N))


def test_joblib_links_and_other_members(tmp_path):
    fa = write_archive(tmp_path / "a.tar", sizes=SIZES, ns=2, form="tar",
                       extra=[("reinforced_data/README.txt", b"hi"), ("__MACOSX/reinforced_data/._3.pth.tar", b"x"),
                              ("reinforced_data/0007.pth.tar", b"x")])
    a = open_archive(fa.path, N)
    assert _indices(a) == list(range(N))
    assert sorted(a.skipped) == ["__MACOSX/reinforced_data/._3.pth.tar", "reinforced_data/0007.pth.tar",
                                 "reinforced_data/README.txt"] and a.num_skipped == 3
    jb = write_archive(tmp_path / "jb.tar", sizes=SIZES, ns=2, form="tar", extra=[("reinforced_data/9.jb", b"x")])
    with pytest.raises(ImportFormatError, match=r"reinforced_data/9\.jb was written by joblib"):
        list(open_archive(jb.path, N))
    with tarfile.open(fa.path, "a") as tf:
        info = tarfile.TarInfo("reinforced_data/5.pth.tar")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(info)
    with pytest.raises(ImportFormatError, match=r"member reinforced_data/5\.pth\.tar is a link"):
        list(open_archive(fa.path, N))


def test_folder_with_joblib_or_without_samples(tmp_path):
    fa = write_archive(tmp_path / "out", sizes=SIZES, ns=2, form="folder")
    (fa.path / "reinforced_data" / "3.jb").write_bytes(b"x")
    with pytest.raises(ImportFormatError, match=r"3\.jb was written by joblib"):
        list(open_archive(fa.path, N))
    empty = tmp_path / "empty"
    (empty / "x").mkdir(parents=True)
    with pytest.raises(ImportFormatError, match="pass the reinforced_data folder itself"):
        open_archive(empty, N)


def test_not_an_archive(tmp_path):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(os.urandom(2000).replace(b"\x1f\x8b", b"xx"))
    with pytest.raises(ImportFormatError, match=r"junk\.bin: neither a gzip-compressed tar, a tar, nor a folder"):
        open_archive(junk, N)
    with pytest.raises(ImportFormatError, match="no such file or folder"):
        open_archive(tmp_path / "nope.tar.gz", N)


def test_member_size_limit(tmp_path, monkeypatch):
    fa = write_archive(tmp_path / "a.tar", sizes=SIZES, ns=2, form="tar", config_at="first")
    monkeypatch.setattr(_archive, "MAX_PICKLE_BYTES", 100)
    with pytest.raises(ImportFormatError, match=r"reinforced_data/config\.pth\.tar is \d+ bytes, more than the "
                                                r"100-byte limit"):
        open_archive(fa.path, N)


def test_samples_decode_in_worker_processes(tmp_path):
    """Raw bytes out of the reader, unpickling and decoding in a process pool (the intended design)."""
    import multiprocessing
    import pickle
    from concurrent.futures import ProcessPoolExecutor

    from functools import partial

    from imagenet_plus.mldr import decode_member

    fa = write_archive(tmp_path / "a.tar.gz", "imagenet_plus_mixing_randaug", sizes=SIZES, ns=3)
    a = open_archive(fa.path, N)
    layout = parse_config(a.config, a.config_member)
    assert pickle.loads(pickle.dumps(layout)) == layout
    members = list(a)
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork")) as pool:
        recs = list(pool.map(partial(decode_member, layout=layout, num_samples=N), members))
    assert [r.index for r in recs] == [m.index for m in members]
    assert all(r.probs.shape == (3, 10) for r in recs)
