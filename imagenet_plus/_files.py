"""Atomic file writes and byte formatting: the one place the package writes a file.

Every file the package writes (shards, the samples file, the manifest, build
state, Parquet, cards) goes through :func:`atomic_write`: the bytes go to a
temporary file in the destination folder (``.{name}.<random>.tmp``), are
fsync'd and hashed on the way, and the file is renamed over the destination.
A failure at any point (a full disk included) removes the temporary file, so
no partial file is ever left under the destination's name.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator, NamedTuple

__all__ = ["WrittenFile", "atomic_file", "atomic_write", "atomic_write_text", "temp_name_prefix", "is_temp_of", "fsync_dir",
           "human_bytes", "json_default"]

_UMASK = os.umask(0o022)
os.umask(_UMASK)


class WrittenFile(NamedTuple):
    """What :func:`atomic_write` wrote: size in bytes and sha256 (hex) of the content."""

    bytes: int
    sha256: str


def temp_name_prefix(name: str) -> str:
    """The prefix of the temporary files :func:`atomic_write` uses for a destination named ``name``."""
    return f".{name}."


def is_temp_of(path: Path, name: str | None = None) -> bool:
    """Whether ``path`` is a temporary file of :func:`atomic_write` (for destination ``name``, or any)."""
    n = path.name
    if not (n.startswith(".") and n.endswith(".tmp")):
        return False
    return name is None or n.startswith(temp_name_prefix(name))


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file object whose content replaces ``path`` atomically when the block ends without error.

    For writers that need a file object (Parquet); the file is fsync'd and renamed on success, removed
    on any failure. Use :func:`atomic_write` when the content comes as chunks (it also hashes them).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=temp_name_prefix(path.name), suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write(path: str | os.PathLike, chunks: Iterable[bytes | memoryview]) -> WrittenFile:
    """Write byte chunks to ``path`` atomically (temp file, fsync, rename), hashing them on the way.

    Args:
        path: the destination; its folder is created if needed.
        chunks: the content, in order (bytes-like objects).

    Returns:
        ``WrittenFile(bytes, sha256)`` of what was written.

    Example:
        >>> atomic_write("out/notes.txt", [b"hello\\n"]).bytes
        6
    """
    h, size = hashlib.sha256(), 0
    with atomic_file(path) as f:
        for chunk in chunks:
            f.write(chunk)
            h.update(chunk)
            size += len(chunk)
    return WrittenFile(size, h.hexdigest())


def atomic_write_text(path: str | os.PathLike, text: str) -> WrittenFile:
    """:func:`atomic_write` of UTF-8 text."""
    return atomic_write(path, [text.encode("utf-8")])


def fsync_dir(folder: str | os.PathLike) -> None:
    """fsync a folder (so a rename in it survives a crash); silently skipped where unsupported."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def human_bytes(n: float) -> str:
    """``1536`` -> ``"1.5 KiB"`` (binary units, one decimal; plain bytes below 1 KiB)."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024.0
    raise AssertionError("unreachable")


def json_default(o):
    """``json.dumps(..., default=json_default)``: numpy scalars as Python numbers; anything else is refused."""
    import numpy as np  # numpy is loaded wherever a value to write can be one of its scalars

    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")
