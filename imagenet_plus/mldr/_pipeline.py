"""The import's two passes over data, each: the main process feeds a process pool, results come back in order.

* :func:`identify`: decode every image of the user's copy through its adapter (digest, size,
  fingerprint, label): the store's identity columns, and the image sizes the crop boxes are
  converted with. One state file per sample block (a resumed import keeps finished blocks).
* :func:`stage_archive`: the main process streams the archive (members in the archive's order);
  workers unpickle (restricted), decode and convert each sample; the main process writes the
  rows into the staging area (:class:`~imagenet_plus.mldr._staging.Staging`).

Workers ignore SIGINT (the main process handles Ctrl-C and stops the pool) and are started by
``fork`` where the platform has it, so the adapter and converter are inherited, not pickled. A
bounded number of tasks is in flight, so memory stays flat whatever the archive's size.
``workers=0`` runs everything in the calling process.
"""

from __future__ import annotations

import multiprocessing
import signal
import sys
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Iterable, Iterator

import numpy as np

from ..builder.manifest import IdentityPart
from ..builder.outdir import identity_part_name
from ..identity import fingerprint
from ._records import decode_sample
from ._staging import ImportFolder, Staging

__all__ = ["run_ordered", "identify", "stage_archive", "progress_bar"]

_STATE: dict = {}  # what a worker process needs, set by _init (inherited, or pickled once per worker)
_MEMBERS_PER_TASK = 16
_BYTES_PER_TASK = 4 << 20
_SAMPLES_PER_IDENTITY_TASK = 32


def _init(state: dict) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process handles Ctrl-C
    _STATE.clear()
    _STATE.update(state)


def run_ordered(fn: Callable, tasks: Iterable[tuple], *, workers: int, state: dict, in_flight: int | None = None
                ) -> Iterator:
    """``fn(*task)`` for every task, in a pool of ``workers`` processes (0: here), results in task order.

    At most ``in_flight`` tasks (default ``4 * workers``) are submitted and not yet consumed.
    """
    if workers <= 0:
        _STATE.clear()
        _STATE.update(state)
        for t in tasks:
            yield fn(*t)
        return
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods and sys.platform != "darwin" else None)
    pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init, initargs=(state,))
    limit = in_flight or 4 * workers
    pending: deque = deque()
    try:
        for t in tasks:
            pending.append(pool.submit(fn, *t))
            while len(pending) >= limit:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def progress_bar(total: int, desc: str, unit: str, enabled: bool):
    """A tqdm bar on stderr with rate and ETA (``None`` when disabled)."""
    if not enabled or total == 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, dynamic_ncols=True, file=sys.stderr,
                smoothing=0.05)


# ----------------------------------------------------------------------------- identity pass
def _identity_task(s0: int, s1: int) -> tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    adapter = _STATE["adapter"]
    part = IdentityPart.empty(s0, s1)
    for i in range(s0, s1):
        sample = adapter.load(i)
        part.set(i, sample.label, sample.digest, (sample.image.height, sample.image.width), fingerprint(sample.image))
    return s0, part.labels, part.digests, part.sizes, part.fingerprints


def identify(folder: ImportFolder, adapter, *, workers: int, progress: bool) -> IdentityPart:
    """Every sample's identity (label, digest, size, fingerprint), from state files or by decoding the images."""
    n = folder.plan.num_samples
    whole = IdentityPart.empty(0, n)
    todo = []
    for s0, s1 in folder.plan.sample_blocks:
        got = folder.read_state(identity_part_name(s0, s1))
        part = IdentityPart.from_arrays(s0, s1, got[0]) if got is not None else None
        if part is None:
            todo.append((s0, s1))
            continue
        _put(whole, part, s0, s1)
    bar = progress_bar(sum(s1 - s0 for s0, s1 in todo), "identity", "img", progress)
    tasks = [(a, min(a + _SAMPLES_PER_IDENTITY_TASK, s1)) for s0, s1 in todo
             for a in range(s0, s1, _SAMPLES_PER_IDENTITY_TASK)]
    ends = {s1: s0 for s0, s1 in todo}
    try:
        for a, labels, digests, sizes, thumbs in run_ordered(_identity_task, tasks, workers=workers,
                                                             state={"adapter": adapter}):
            b = a + len(labels)
            whole.labels[a:b], whole.digests[a:b], whole.sizes[a:b], whole.fingerprints[a:b] = \
                labels, digests, sizes, thumbs
            if b in ends:  # the block is complete: keep it for a resumed import
                s0 = ends[b]
                part = IdentityPart(s0, whole.labels[s0:b], whole.digests[s0:b], whole.sizes[s0:b],
                                    whole.fingerprints[s0:b])
                folder.write_state(identity_part_name(s0, b), part.to_arrays())
            if bar is not None:
                bar.update(b - a)
    finally:
        if bar is not None:
            bar.close()
    return whole


def _put(whole: IdentityPart, part: IdentityPart, s0: int, s1: int) -> None:
    whole.labels[s0:s1], whole.digests[s0:s1] = part.labels, part.digests
    whole.sizes[s0:s1], whole.fingerprints[s0:s1] = part.sizes, part.fingerprints


# ----------------------------------------------------------------------------- archive pass
def _records_task(members: list[tuple[int, str, bytes]]) -> list[tuple[int, np.ndarray, int]]:
    layout, converter, n = _STATE["layout"], _STATE["converter"], _STATE["num_samples"]
    return [converter.convert(decode_sample(data, name, layout, expected_index=k, num_samples=n), name)
            for k, name, data in members]


def stage_archive(archive, staging: Staging, layout, converter, *, workers: int, progress: bool) -> dict:
    """Stream ``archive`` into ``staging`` (samples already staged are read but not decoded again).

    Returns:
        Counts: ``staged`` (samples decoded now), ``skipped`` (staged by an earlier run), ``seconds``.
    """
    n = len(staging.done)
    counts = {"staged": 0, "skipped": 0}
    bar = progress_bar(n, "import", "sample", progress)
    t0 = time.perf_counter()

    def tasks():
        chunk, size = [], 0
        for m in archive:
            if staging.done[converter.store_index(m.index)]:
                counts["skipped"] += 1
                if bar is not None:
                    bar.update(1)
                continue
            chunk.append((m.index, m.name, m.data))
            size += len(m.data)
            if len(chunk) >= _MEMBERS_PER_TASK or size >= _BYTES_PER_TASK:
                yield (chunk,)
                chunk, size = [], 0
        if chunk:
            yield (chunk,)

    state = {"layout": layout, "converter": converter, "num_samples": n}
    try:
        for results in run_ordered(_records_task, tasks(), workers=workers, state=state):
            for s, rows, over in results:
                staging.put(s, rows, over)
            counts["staged"] += len(results)
            if bar is not None:
                bar.update(len(results))
    finally:
        if bar is not None:
            bar.close()
        try:
            staging.checkpoint()  # killed or interrupted: what is staged so far is kept for the next run
        except OSError:  # e.g. the disk is full: the error being raised says more; unsaved samples are redone
            pass
    counts["seconds"] = time.perf_counter() - t0
    return counts
