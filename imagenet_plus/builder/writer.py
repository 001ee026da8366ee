"""Writing finished blocks behind the teacher: one writer thread, a bounded queue, errors raised in the main thread.

The pipeline hands each sample block, once the teacher has finished all its records, to a
:class:`BlockWriter`; the writer writes it (identity part, then each shard, its read-back check and
its state file, exactly as a synchronous build does) while the main thread runs the teacher on the
next block. What is written, and in which order per block, does not change, so the store is
byte-identical to a synchronous build's.

* **Bounded.** At most ``ahead`` finished blocks wait behind the one being written; the main thread
  blocks on the next hand-over until a slot frees (a finished block holds only its params and
  targets, the pixels were consumed by the teacher). ``ahead=0`` writes in the main thread.
* **Loud.** An error in the writer stops it and is raised in the main thread at its next item or
  hand-over (:meth:`BlockWriter.check`), naming the shard.
* **Crash-safe as before.** A shard's state file is written only after the shard's file was fully
  written (atomically) and read back. On an error or Ctrl-C in the main thread the writer finishes the
  shard it is on, drops the blocks still queued (their shards have no state file: rebuilt on resume)
  and is joined before the build's lock is released.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any, Callable

__all__ = ["BlockWriter", "WRITE_AHEAD"]

#: Finished blocks that may wait behind the one being written (0: write in the main thread).
WRITE_AHEAD = 1
_POLL_S = 0.05


class BlockWriter:
    """Calls ``write(block)`` for each :meth:`put` block in order, in a thread when ``ahead > 0``.

    Args:
        write: writes one block; it may call :attr:`stopping` between shards to stop early.
        ahead: finished blocks that may wait behind the one being written (0: synchronous).
    """

    def __init__(self, write: Callable[[Any], None], ahead: int = WRITE_AHEAD):
        self._write = write
        self.ahead = int(ahead)
        self._queue: queue.Queue | None = queue.Queue(maxsize=self.ahead) if self.ahead > 0 else None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._stop = threading.Event()
        #: seconds the writer spent writing, and the main thread spent waiting for it
        self.timings = {"write_s": 0.0, "write_wait_s": 0.0}

    @property
    def stopping(self) -> bool:
        """Whether the writer should stop after the shard it is on (an error, or :meth:`abort`)."""
        return self._stop.is_set()

    def check(self) -> None:
        """Raise the writer's error, if it had one (in the caller's thread)."""
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def put(self, block: Any) -> None:
        """Hand over a finished block; waits while ``ahead`` blocks are already queued."""
        self.check()
        if self._queue is None:
            t0 = time.perf_counter()
            self._write(block)
            self.timings["write_s"] += time.perf_counter() - t0
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="imagenet-plus-shard-writer", daemon=True)
            self._thread.start()
        t0 = time.perf_counter()
        while True:
            try:
                self._queue.put(block, timeout=_POLL_S)
                break
            except queue.Full:
                self.check()
        self.timings["write_wait_s"] += time.perf_counter() - t0

    def close(self) -> None:
        """Wait until every block handed over is written; raise the writer's error, if any."""
        if self._thread is not None:
            t0 = time.perf_counter()
            self._send_end()
            self._join()
            self.timings["write_wait_s"] += time.perf_counter() - t0
        self.check()

    def abort(self) -> None:
        """Stop after the shard being written, drop the queued blocks, wait for the thread (errors are dropped)."""
        self._stop.set()
        if self._thread is not None:
            while True:  # empty the queue so the end marker fits
                try:
                    self._queue.get_nowait()  # type: ignore[union-attr]
                except queue.Empty:
                    break
            self._send_end()
            self._join()
        self._error = None

    def _send_end(self) -> None:
        while self._thread is not None and self._thread.is_alive():
            try:
                self._queue.put(None, timeout=_POLL_S)  # type: ignore[union-attr]
                return
            except queue.Full:
                continue

    def _join(self) -> None:
        while self._thread is not None and self._thread.is_alive():
            self._thread.join(_POLL_S)  # a timed join: Ctrl-C still reaches the main thread
        self._thread = None

    def _run(self) -> None:
        q = self._queue
        while True:
            block = q.get()  # type: ignore[union-attr]
            if block is None:
                return
            if self._stop.is_set():
                continue  # aborted or failed: drop the block, wait for the end marker
            t0 = time.perf_counter()
            try:
                self._write(block)
            except BaseException as e:  # noqa: BLE001 - every error is raised again in the main thread
                self._error = e
                self._stop.set()
            finally:
                self.timings["write_s"] += time.perf_counter() - t0
