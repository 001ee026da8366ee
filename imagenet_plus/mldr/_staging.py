"""The import's output folder and its staging area, where records wait for their shards.

ml-dr's archives list their samples in the order the file system listed them (effectively random),
so no shard is complete before the whole archive has been read. Converted records are therefore
staged in ``OUT/.build/``: one file per sample block of the shard plan holding raw rows
``uint8 [samples, NS, record_bytes]`` (each record's fields concatenated in manifest order), written
in place as samples arrive (memory-mapped). Every few seconds the rows are flushed and then a bitmap
of the staged samples is saved (atomically), so a killed import resumes: the archive is read again
from its start (a gzip stream cannot seek) and staged samples are skipped (decoding them is the
costly part). Once every sample is staged, each block's shards are cut from its staging file, which
is then removed: the disk holds the staging area plus one block's shards at most (about twice the
store's size; the store is about half the archive's).

:class:`ImportFolder` is the build's :class:`~imagenet_plus.builder.outdir.OutputFolder` (same rules:
``--out`` absent, empty, or this import unfinished; one process at a time; only its own files are ever
removed) with the importer's state files, a finished-store check that ignores the archive's full
sha256 (known only after streaming); the lifecycle (:meth:`~imagenet_plus.builder.outdir.OutputFolder.take`)
and :meth:`~imagenet_plus.builder.outdir.OutputFolder.discard` are the build's: an import that fails on
bad data removes everything it wrote, so nothing half-written stays under ``OUT``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from ..builder.outdir import OutputFolder
from ..errors import BuildError, StoreError
from ..store import Manifest, compute_build_id
from ._convert import read_field

__all__ = ["ImportFolder", "Staging", "STAGED_NAME", "ARCHIVE_NAME", "HASH_KEY", "staging_name", "strip_full_hash"]

STAGED_NAME = "staged.safetensors"
ARCHIVE_NAME = "archive.json"
#: The provenance key of the full hash known only after streaming: a file's sha256, or a folder's
#: sha256 of its sample files' bytes in index order (``HASH_KEY[is_folder]``).
HASH_KEY = ("sha256", "content_sha256")


def staging_name(s0: int, s1: int) -> str:
    """Staging file of sample block ``[s0, s1)``."""
    return f"staging-s{s0:08d}-s{s1:08d}.bin"


def strip_full_hash(manifest: Manifest) -> Manifest:
    """A copy of an imported store's manifest without the archive's full sha256 (the settings known up front)."""
    prov = {k: v for k, v in (manifest.extra.get("provenance") or {}).items() if k not in HASH_KEY}
    return dataclasses.replace(manifest, extra={**manifest.extra, "provenance": prov})


class ImportFolder(OutputFolder):
    """``--out`` of one import (see the module docstring)."""

    builder = "imagenet-plus import-ml-dr"

    def __post_init__(self) -> None:
        super().__post_init__()
        self._state |= {STAGED_NAME, ARCHIVE_NAME} | {staging_name(s0, s1) for s0, s1 in self.plan.sample_blocks}

    def _check_finished(self) -> None:
        try:
            m = Manifest.load(self.root)
            same = compute_build_id(strip_full_hash(m), self.settings["keys_digest"]) == self.settings["build_id"]
        except StoreError as e:
            raise BuildError(f"--out {self.root} holds a manifest.json that is not a readable store manifest ({e}); "
                             "choose another --out (the folder is left as it is)") from e
        if not same:
            raise BuildError(f"--out {self.root} holds a finished store of other settings (another archive, "
                             "dataset copy or shard shape); choose another --out (the store is left as it is)")


class Staging:
    """The staged rows of every sample block and the bitmap of staged samples (see the module docstring).

    Args:
        folder: the import's folder.
        num_augmentations: NS.
        record_bytes: bytes per record (all fields).
        checkpoint_seconds: save the bitmap at most this often while staging.
    """

    def __init__(self, folder: ImportFolder, num_augmentations: int, record_bytes: int,
                 checkpoint_seconds: float = 30.0):
        self.folder, self.ns, self.record_bytes = folder, num_augmentations, record_bytes
        self.blocks = list(folder.plan.sample_blocks)
        self._starts = np.asarray([s0 for s0, _ in self.blocks], dtype=np.int64)
        n = folder.plan.num_samples
        self.done = np.zeros(n, dtype=bool)
        self.over = np.zeros(n, dtype=np.int32)  # records whose float32 top-k sums above 1, per sample
        self.checkpoint_seconds = checkpoint_seconds
        self._maps: dict[tuple[int, int], np.memmap] = {}
        self._last = time.monotonic()

    def _layout(self) -> dict[str, str]:
        return {"num_samples": str(len(self.done)), "num_augmentations": str(self.ns),
                "record_bytes": str(self.record_bytes), "blocks": json.dumps(self.blocks)}

    def load(self, needed: set[tuple[int, int]]) -> None:
        """Read the bitmap of an earlier run; blocks in ``needed`` whose staging file is gone start over.

        Blocks not in ``needed`` (their shards are all written) count as staged.
        """
        got = self.folder.read_state(STAGED_NAME)
        if got is not None and got[1] == self._layout() and got[0].get("done", np.zeros(0)).shape == self.done.shape:
            self.done[:] = got[0]["done"].astype(bool)
            self.over[:] = got[0]["over"].astype(np.int32)
        for s0, s1 in self.blocks:
            path = self.folder.state_dir / staging_name(s0, s1)
            if (s0, s1) not in needed:
                self.done[s0:s1] = True
            elif not (path.is_file() and path.stat().st_size == (s1 - s0) * self.ns * self.record_bytes):
                self.done[s0:s1] = False
                self.over[s0:s1] = 0

    def _map(self, s0: int, s1: int) -> np.memmap:
        m = self._maps.get((s0, s1))
        if m is None:
            path = self.folder.state_dir / staging_name(s0, s1)
            size = (s1 - s0) * self.ns * self.record_bytes
            if not path.is_file() or path.stat().st_size != size:
                with open(path, "wb") as f:  # sparse until written
                    f.truncate(size)
            m = self._maps[(s0, s1)] = np.memmap(path, dtype=np.uint8, mode="r+", shape=(s1 - s0, self.ns,
                                                                                         self.record_bytes))
        return m

    def _block(self, s: int) -> tuple[int, int]:
        return self.blocks[int(np.searchsorted(self._starts, s, side="right")) - 1]

    def put(self, s: int, rows: np.ndarray, over: int) -> None:
        """Stage sample ``s``'s rows (``uint8 [NS, record_bytes]``)."""
        s0, s1 = self._block(s)
        self._map(s0, s1)[s - s0] = rows
        self.done[s] = True
        self.over[s] = over
        if time.monotonic() - self._last >= self.checkpoint_seconds:
            self.checkpoint()

    def checkpoint(self) -> None:
        """Flush the staged rows, then save the bitmap (rows first: a staged bit always has its rows on disk)."""
        for m in self._maps.values():
            m.flush()
        self.folder.write_state(STAGED_NAME, {"done": self.done.astype(np.uint8), "over": self.over}, self._layout())
        self._last = time.monotonic()

    def shard_fields(self, s0: int, s1: int, a0: int, a1: int, fields) -> dict[str, np.ndarray]:
        """Every field of records ``[s0, s1) x [a0, a1)`` (a shard) as ``[s1 - s0, a1 - a0, *field.shape]``."""
        b0, b1 = self._block(s0)
        rows = self._map(b0, b1)[s0 - b0:s1 - b0, a0:a1]
        out, off = {}, 0
        for f in fields:
            out[f.name] = read_field(rows, f, off)
            off += f.nbytes
        return out

    def remove_block(self, s0: int, s1: int) -> None:
        """Drop a block's staging file once its shards are written."""
        self._maps.pop((s0, s1), None)
        Path(self.folder.state_dir / staging_name(s0, s1)).unlink(missing_ok=True)

    def close(self) -> None:
        for m in self._maps.values():
            m.flush()
        self._maps.clear()
