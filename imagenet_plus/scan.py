"""Check a whole copy of a dataset against a store, every sample, in parallel: ``imagenet-plus verify --data-root``.

:func:`scan_copy` compares every sample of the user's copy with the store's recorded identity
(key, label, and by decoding each image: digest and size, or thumbnail and aspect ratio for
``mode="resized"``) and reports **every** mismatching sample, not only the first, so a user can
repair a copy in one pass. Decoding runs in worker processes (one per core by default) with a
progress bar and an ETA.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from dataclasses import dataclass, field

import numpy as np

from .errors import ReinforcementError

__all__ = ["CopyReport", "scan_copy"]

_CHUNK = 64
_STATE: dict = {}


@dataclass
class CopyReport:
    """What :func:`scan_copy` found: one line per problem, each naming the sample, its key and file."""

    samples: int
    decoded: int
    mode: str
    seconds: float
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict:
        return {"samples": self.samples, "decoded": self.decoded, "mode": self.mode, "seconds": round(self.seconds, 3),
                "ok": self.ok, "problems": list(self.problems)}


def _alignment_problems(adapter, store) -> tuple[list[str], list[tuple[int, int]]]:
    """Key and label problems of every sample, and the (dataset index, store index) pairs to decode."""
    keys, skeys = adapter.keys(), store.keys
    index = {k: n for n, k in enumerate(skeys)}
    labels = np.asarray(adapter.labels(), dtype=np.int64)
    problems, pairs, seen = [], [], np.zeros(len(skeys), dtype=bool)
    for d, k in enumerate(keys):
        s = index.get(k)
        if s is None:
            problems.append(f"{adapter.describe(d)}: not in the store (a file the store was not built with): "
                            "remove it")
            continue
        seen[s] = True
        if int(labels[d]) != int(store.labels[s]):
            problems.append(f"{adapter.describe(d)}: label {int(labels[d])}, the store records {int(store.labels[s])}"
                            " (class list or order differs): use a copy with the build's classes")
        pairs.append((d, s))
    for s in np.flatnonzero(~seen).tolist():
        problems.append(f"store sample {s} (key {skeys[s]!r}): missing from the copy: restore the file")
    return problems, pairs


def _init(adapter, checker) -> None:
    _STATE["adapter"], _STATE["checker"] = adapter, checker


def _check_chunk(pairs: list[tuple[int, int]]) -> tuple[int, list[tuple[int, str]]]:
    adapter, checker = _STATE["adapter"], _STATE["checker"]
    out = []
    for d, s in pairs:
        try:
            sample = adapter.load(d)
            msg = checker.problem(s, sample.image, sample.digest)
        except ReinforcementError as e:  # unreadable or undecodable file: the message names it
            out.append((d, str(e)))
            continue
        if msg is not None:
            out.append((d, f"{adapter.describe(d)}: {msg}"))
    return len(pairs), out


def scan_copy(adapter, store, mode: str = "exact", workers: int | None = None, progress: bool = True) -> CopyReport:
    """Check every sample of a dataset copy against a store.

    Args:
        adapter: the copy's :class:`~imagenet_plus.adapters.DatasetAdapter` (or a dataset object).
        store: the opened store.
        mode: ``"exact"`` or ``"resized"`` (see :mod:`imagenet_plus.identity`).
        workers: decoding processes (default: the machine's cores; 0 or 1: in this process).
        progress: show a progress bar with rate and ETA.

    Returns:
        A :class:`CopyReport` listing every problem.
    """
    from tqdm.auto import tqdm

    from .adapters import adapt
    from .identity import IdentityChecker

    adapter = adapt(adapter)
    t0 = time.perf_counter()
    checker = IdentityChecker(store, mode)
    problems, pairs = _alignment_problems(adapter, store)
    chunks = [pairs[k:k + _CHUNK] for k in range(0, len(pairs), _CHUNK)]
    workers = os.cpu_count() or 1 if workers is None else int(workers)
    found: list[tuple[int, str]] = []
    with tqdm(total=len(pairs), unit="img", desc="verify copy", disable=not progress, dynamic_ncols=True) as bar:
        if workers <= 1 or len(chunks) <= 1:
            _init(adapter, checker)
            results = map(_check_chunk, chunks)
            pool = None
        else:
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            pool = multiprocessing.get_context(method).Pool(workers, initializer=_init, initargs=(adapter, checker))
            results = pool.imap_unordered(_check_chunk, chunks)
        try:
            for count, res in results:
                found.extend(res)
                bar.update(count)
        finally:
            if pool is not None:
                pool.terminate()
    problems += [msg for _, msg in sorted(found)]
    return CopyReport(len(adapter), len(pairs), mode, time.perf_counter() - t0, problems)
