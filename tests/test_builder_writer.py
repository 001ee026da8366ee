"""Shard writing behind the teacher (``imagenet_plus.builder.writer``): same bytes, bounded, loud, resumable.

The tiny digits build of ``test_builder_engine`` (3 sample blocks x 2 augmentation blocks); the
reference store there is built with the writer thread (the default), here compared with builds
that write in the main thread and with two blocks queued.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from test_builder_engine import Teacher, _build, _digests, _interrupt_after, base, policy, reference  # noqa: F401

from imagenet_plus.builder import BuildStats
from imagenet_plus.builder import pipeline as pipeline_module
from imagenet_plus.builder import writer as writer_module
from imagenet_plus.builder.writer import BlockWriter
from imagenet_plus.errors import BuildError
from imagenet_plus.store import shard_filename

_WRITER = "imagenet-plus-shard-writer"


def _writer_alive() -> bool:
    return any(t.name == _WRITER and t.is_alive() for t in threading.enumerate())


@pytest.mark.parametrize("ahead", [0, 2])
def test_the_store_written_behind_the_teacher_is_byte_identical(reference, base, policy, tmp_path, monkeypatch,
                                                                ahead):
    """``ahead=0`` is the synchronous build (every write in the main thread); the reference used the thread."""
    monkeypatch.setattr(writer_module, "WRITE_AHEAD", ahead)
    stats = BuildStats()
    _build(base, tmp_path / "store", policy, stats=stats)
    assert _digests(tmp_path / "store") == reference["digests"]
    assert stats.shards_built == 6 and stats.extra["timings"]["write_s"] > 0
    assert reference["stats"].extra["timings"]["write_s"] > 0 and not _writer_alive()


def test_shards_are_written_in_a_thread_while_the_teacher_runs_the_next_block(reference, base, policy, tmp_path,
                                                                            monkeypatch):
    teacher = Teacher()
    seen = []
    real = pipeline_module.write_shard_reporting

    def slow(folder, shard, *a, **kw):
        before = len(teacher.batches)
        if shard.s0 == 0 and shard.a0 == 0:
            time.sleep(0.6)  # the first shard is slow to write: the teacher goes on with the next block meanwhile
        seen.append((shard.name, threading.current_thread().name, before, len(teacher.batches)))
        return real(folder, shard, *a, **kw)

    monkeypatch.setattr(pipeline_module, "write_shard_reporting", slow)
    _build(base, tmp_path / "store", policy, teacher)
    assert _digests(tmp_path / "store") == reference["digests"]
    assert {thread for _, thread, _, _ in seen} == {_WRITER}
    name, _, before, after = seen[0]
    assert name == shard_filename(0, 8, 0, 4) and after > before  # teacher batches ran during the write


def test_a_failing_shard_write_stops_the_build_naming_the_shard_and_resumes(reference, base, policy, tmp_path,
                                                                          monkeypatch):
    out = tmp_path / "store"
    failed = threading.Event()
    # the first block has 11 teacher batches; the 13th (in the second block) waits until the writer has failed
    teacher = Teacher(on_call=lambda n: failed.wait(5) if n == 13 else None)
    real = pipeline_module.write_shard_reporting
    bad = Path(shard_filename(0, 8, 4, 6)).name  # the first block's second shard

    def failing(folder, shard, *a, **kw):
        if Path(shard.name).name == bad:
            failed.set()
            raise RuntimeError("boom")
        return real(folder, shard, *a, **kw)

    monkeypatch.setattr(pipeline_module, "write_shard_reporting", failing)
    with pytest.raises(BuildError, match=rf"writing shard .*{bad} failed \(RuntimeError: boom\); finished shards "
                                         "are kept .* rerun the same command to resume"):
        _build(base, out, policy, teacher)
    full = len(reference["teacher"].batches)
    # the first block's 11 batches always ran; the failure is seen before the second block starts (a fast
    # writer) or at that block's next sample once batch 13 is released: never the rest of the build
    assert 11 <= len(teacher.batches) < 16 < full
    assert not _writer_alive() and not (out / "manifest.json").exists()
    kept = sorted(p.name for p in (out / "reinforcements").iterdir())
    assert bad not in kept and not any(n.endswith(".tmp") for n in kept)
    assert (out / ".build" / f"state-{Path(shard_filename(0, 8, 0, 4)).name}").is_file()
    monkeypatch.setattr(pipeline_module, "write_shard_reporting", real)
    stats = BuildStats()
    _build(base, out, policy, stats=stats)
    assert stats.shards_kept == 1 and _digests(out) == reference["digests"]


def test_ctrl_c_while_a_shard_is_written_finishes_that_shard_and_resumes(reference, base, policy, tmp_path,
                                                                       monkeypatch):
    out = tmp_path / "store"
    real = pipeline_module.write_shard_reporting
    writing = threading.Event()

    def slow(folder, shard, *a, **kw):
        writing.set()
        time.sleep(0.3)
        return real(folder, shard, *a, **kw)

    def interrupt(n: int) -> None:
        if n == 12:  # the second block's first batch: the first block was handed to the writer
            assert writing.wait(5)
            raise KeyboardInterrupt  # Ctrl-C in the main thread while the writer is busy

    monkeypatch.setattr(pipeline_module, "write_shard_reporting", slow)
    with pytest.raises(KeyboardInterrupt):
        _build(base, out, policy, Teacher(on_call=interrupt))
    assert not _writer_alive() and not (out / "manifest.json").exists()
    first = Path(shard_filename(0, 8, 0, 4)).name
    assert (out / "reinforcements" / first).is_file() and (out / ".build" / f"state-{first}").is_file()
    monkeypatch.setattr(pipeline_module, "write_shard_reporting", real)
    stats = BuildStats()
    _build(base, out, policy, stats=stats)
    assert stats.shards_kept >= 1 and _digests(out) == reference["digests"]


def test_the_writer_queue_is_bounded_and_its_errors_reach_the_main_thread():
    release = threading.Event()
    done = []

    def write(block):
        release.wait(5)
        if block == "bad":
            raise OSError(28, "no space")
        done.append(block)

    w = BlockWriter(write, ahead=1)
    w.put("a")  # taken by the thread, blocked in write
    time.sleep(0.1)
    w.put("b")  # queued
    t = threading.Thread(target=w.put, args=("c",))
    t.start()
    t.join(0.3)
    assert t.is_alive()  # a third block waits for a slot: at most one block queued behind the one written
    release.set()
    t.join(5)
    w.close()
    assert done == ["a", "b", "c"] and w.timings["write_wait_s"] > 0.1
    w = BlockWriter(write, ahead=1)
    w.put("bad")
    deadline = time.time() + 5
    with pytest.raises(OSError, match="no space"):
        while time.time() < deadline:
            w.check()
            time.sleep(0.01)
    w.close()
