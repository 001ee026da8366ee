"""Streaming reader of apple/ml-dr's published reinforcement archives.

An archive (``imagenet_plus_randaug.tar.gz`` and the like) is ml-dr's output folder packed
with ``tar c[z]f ... reinforced_data``: a folder prefix (``reinforced_data/``), one
``{index}.pth.tar`` per training sample and one ``config.pth.tar``, in whatever order the
file system listed them. :class:`MLDRArchive` reads the three forms a user may have:

* ``.tar.gz`` / ``.tgz``: streamed through ``tarfile``'s stream mode (never extracted);
* ``.tar``: the same, with a fast header scan when the config must be found first;
* an extracted folder (the ``reinforced_data`` folder, or the folder holding it).

The config is needed before any sample can be decoded, and in a tar stream it may come
anywhere. Opening an archive therefore streams until the config is found, keeping the
sample members read so far in memory up to ``max_buffer_bytes``; past that it drops them,
keeps scanning for the config only (a header scan for ``.tar``) and later iterates from the
start again. Iterating yields :class:`SampleMember` (index, member name, raw bytes): the
restricted unpickling and decoding (:func:`imagenet_plus.mldr._records.decode_sample`) can
run in worker processes. Iteration checks every index against the user's dataset size N,
refuses duplicates and, at the end, missing samples, naming the last member read. A complete
iteration leaves the archive file's sha256, hashed on the way (``MLDRArchive.sha256``);
:func:`fingerprint_source` is the cheap identity known before streaming (size, first and last MiB).
"""

from __future__ import annotations

import hashlib
import os
import re
import tarfile
import zlib
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import numpy as np

from .._checks import check_int
from ..errors import ImportFormatError
from ._unpickle import MAX_PICKLE_BYTES, load_torch_file

__all__ = ["SampleMember", "MLDRArchive", "open_archive", "fingerprint_source", "CONFIG_NAME", "DEFAULT_BUFFER_BYTES"]

CONFIG_NAME = "config.pth.tar"
#: Sample members read before the config is seen are kept up to this many bytes.
DEFAULT_BUFFER_BYTES = 256 << 20
_SAMPLE_RE = re.compile(r"(0|[1-9][0-9]*)\.pth\.tar")
_STREAM_ERRORS = (tarfile.TarError, EOFError, zlib.error, OSError)
_REDOWNLOAD = ("The download is incomplete or damaged: download it again (apple/ml-dr's README lists each "
               "archive's size) and rerun.")


class SampleMember(NamedTuple):
    """One sample file of the archive: its sample index (from the name), member name and raw bytes."""

    index: int
    name: str
    data: bytes


def _split(name: str) -> tuple[str, str]:
    """``"reinforced_data/12.pth.tar"`` -> ``("reinforced_data/", "12.pth.tar")``."""
    base = name.rsplit("/", 1)[-1]
    return name[: len(name) - len(base)], base


class MLDRArchive:
    """An ml-dr archive (``.tar.gz``, ``.tar`` or folder), its config read, ready to stream samples.

    Args:
        source: the archive file or extracted folder.
        num_samples: the size N of the user's copy of the dataset (ml-dr's index space).
        config_file: a ``config.pth.tar`` extracted separately, used instead of searching the
            archive for one (the archive's own config, if present, must equal it).
        max_buffer_bytes: how many bytes of sample members to keep while looking for the config.
        require_complete: raise at the end of iteration unless every index in ``[0, N)`` was seen.

    Attributes:
        config: the unpickled config (a dict; :func:`~imagenet_plus.mldr.parse_config`
            turns it into a layout). config_member: where it came from. kind: ``"tar.gz"``,
            ``"tar"`` or ``"folder"``. skipped: names of members that are neither samples nor the
            config (directories excluded), at most 1000 of them; ``num_skipped`` counts all.
        sha256: after a complete iteration, the hex sha256 of the archive file (hashed while
            streaming it) or, for a folder, of its sample files' bytes in index order; else None.
        bytes_read: the bytes that hash covers.

    Raises:
        ImportFormatError: no config, two configs, a truncated or unreadable archive, joblib files.
    """

    def __init__(self, source: str | os.PathLike, num_samples: int, *, config_file: str | os.PathLike | None = None,
                 max_buffer_bytes: int = DEFAULT_BUFFER_BYTES, require_complete: bool = True):
        self.source = Path(source)
        self.num_samples = check_int(num_samples, "num_samples", low=1)
        self.max_buffer_bytes = check_int(max_buffer_bytes, "max_buffer_bytes", low=0)
        self.require_complete = bool(require_complete)
        self.kind = _detect_kind(self.source)
        self.skipped: list[str] = []
        self.num_skipped = 0
        self.sha256: str | None = None
        self.bytes_read = 0
        self._prefix: str | None = None
        self._pending: list[SampleMember] | None = None  # members read while looking for the config
        self._rest: Iterator | None = None  # the stream, positioned after the config
        self.config: Any = None
        self.config_member: str | None = None
        self._config_override = config_file is not None
        if config_file is not None:
            path = Path(config_file)
            self.config, self.config_member = self._load_config(path.read_bytes(), str(path)), str(path)
        if self.kind == "folder":
            self._root = self._folder_root()
            if self.config is None:
                cfg = self._root / CONFIG_NAME
                if not cfg.is_file():
                    raise ImportFormatError(f"{self._root}: no {CONFIG_NAME} in this folder; it is not an ml-dr "
                                            f"reinforcement folder, or the config was lost while extracting: "
                                            f"extract it again or pass it with --config (config_file=).")
                self.config_member = str(cfg)
                self.config = self._load_config(cfg.read_bytes(), self.config_member)
        elif self.config is None:
            self._find_config()

    def __repr__(self) -> str:
        return (f"MLDRArchive({str(self.source)!r}, kind={self.kind!r}, num_samples={self.num_samples}, "
                f"config_member={self.config_member!r})")

    def close(self) -> None:
        """Close the tar stream kept open after the config (if the archive was not iterated)."""
        if self._rest is not None:
            self._rest.close()
        self._rest = self._pending = None

    def __enter__(self) -> "MLDRArchive":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ config
    @staticmethod
    def _load_config(data: bytes, member: str) -> Any:
        config = load_torch_file(data, member)
        if not isinstance(config, dict):
            raise ImportFormatError(f"{member}: holds a {type(config).__name__}, not ml-dr's config dict; this is "
                                    f"not an ml-dr reinforcement archive.")
        return config

    def _find_config(self) -> None:
        """Stream until the config; keep earlier samples (up to the buffer) and the stream's position."""
        pending: list[SampleMember] | None = []
        size = 0
        stream = self._entries()
        for name, info, read in stream:
            what = self._classify(name, info)
            if what == "config":
                self.config_member = f"{self.source}:{name}"
                self.config = self._load_config(read(), self.config_member)
                if pending is None:  # samples were dropped: iterate from the start
                    stream.close()
                else:
                    self._pending, self._rest = pending, stream
                return
            if what == "sample" and pending is not None:
                size += info.size
                if size > self.max_buffer_bytes:
                    pending = None  # too much to keep: find the config first, iterate again later
                    if self.kind == "tar":
                        stream.close()
                        self._scan_plain_tar()
                        return
                else:
                    pending.append(SampleMember(int(_SAMPLE_RE.fullmatch(_split(name)[1])[1]), name, read()))
        raise ImportFormatError(f"{self.source}: no {CONFIG_NAME} in the archive; it is not a complete ml-dr "
                                f"reinforcement archive (or the download is truncated). {_REDOWNLOAD} If you have its "
                                f"{CONFIG_NAME} as a separate file, pass it with --config (config_file=).")

    def _scan_plain_tar(self) -> None:
        """Find the config of an uncompressed tar by its headers (seeking over the data)."""
        try:
            with tarfile.open(self.source, mode="r:") as tf:
                for info in tf:
                    if info.isfile() and _split(info.name)[1] == CONFIG_NAME:
                        self.config_member = f"{self.source}:{info.name}"
                        self.config = self._load_config(tf.extractfile(info).read(), self.config_member)
                        return
        except _STREAM_ERRORS as e:
            raise ImportFormatError(f"{self.source}: unreadable tar while looking for {CONFIG_NAME} "
                                    f"({type(e).__name__}: {e}). {_REDOWNLOAD}") from None
        raise ImportFormatError(f"{self.source}: no {CONFIG_NAME} in the archive; it is not a complete ml-dr "
                                f"reinforcement archive (or the download is truncated). {_REDOWNLOAD} If you have its "
                                f"{CONFIG_NAME} as a separate file, pass it with --config (config_file=).")

    # ------------------------------------------------------------------ members
    def _classify(self, name: str, info) -> str:
        """``"config"``, ``"sample"`` or ``"skip"``; refuses links posing as samples and joblib files."""
        prefix, base = _split(name)
        if info.isdir():
            return "skip"
        if base == CONFIG_NAME or _SAMPLE_RE.fullmatch(base):
            if not info.isfile():
                raise ImportFormatError(f"{self.source}: member {name} is a link or special file, not a plain "
                                        f"file; ml-dr archives hold plain files. {_REDOWNLOAD}")
            if info.size > MAX_PICKLE_BYTES:
                raise ImportFormatError(f"{self.source}: member {name} is {info.size} bytes, more than the "
                                        f"{MAX_PICKLE_BYTES}-byte limit for one ml-dr sample; not an ml-dr archive.")
            if self._prefix is None:
                self._prefix = prefix
            elif prefix != self._prefix:
                raise ImportFormatError(f"{self.source}: members in {self._prefix or './'} and {name} lie in "
                                        f"different folders; an ml-dr archive holds one folder of samples and "
                                        f"its config. Import each reinforcement separately.")
            return "config" if base == CONFIG_NAME else "sample"
        if base.endswith(".jb") and base[:-3].isdigit():
            raise ImportFormatError(f"{self.source}: member {name} was written by joblib (ml-dr's "
                                    f"reinforce.joblib=true), which this importer does not read; the published "
                                    f"archives use torch.save files.")
        self.num_skipped += 1
        if len(self.skipped) < 1000:
            self.skipped.append(name)
        return "skip"

    def _entries(self):
        """A generator of ``(name, info, read)`` over the tar stream; stream errors name the last member."""
        mode = "r|gz" if self.kind == "tar.gz" else "r|"
        last = "(none: the archive's first member)"

        def read(tf, info) -> bytes:
            try:
                return tf.extractfile(info).read()
            except _STREAM_ERRORS as e:
                raise ImportFormatError(f"{self.source}: the archive is truncated or corrupt inside member "
                                        f"{info.name}, after member {last} ({type(e).__name__}: {e}). "
                                        f"{_REDOWNLOAD}") from None

        try:
            with open(self.source, "rb") as raw:
                f = _HashingReader(raw)
                with tarfile.open(fileobj=f, mode=mode) as tf:
                    for info in tf:
                        yield info.name, info, (lambda i=info: read(tf, i))
                        last = info.name
                self.sha256, self.bytes_read = f.finish(), f.count
        except _STREAM_ERRORS as e:
            raise ImportFormatError(f"{self.source}: the archive is truncated or corrupt after member {last} "
                                    f"({type(e).__name__}: {e}). {_REDOWNLOAD}") from None

    def _tar_samples(self) -> Iterator[SampleMember]:
        configs = 0  # config members seen in this pass
        if self._rest is not None:
            pending, stream = self._pending, self._rest
            self._pending = self._rest = None
            configs = 1
            yield from pending or ()
        else:
            stream = self._entries()
        for name, info, read in stream:
            what = self._classify(name, info)
            if what == "sample":
                yield SampleMember(int(_SAMPLE_RE.fullmatch(_split(name)[1])[1]), name, read())
            elif what == "config":
                configs += 1
                if configs > 1:
                    raise ImportFormatError(f"{self.source}: a second {name} in the archive; it mixes two "
                                            f"reinforcements: import each separately.")
                if self._config_override:
                    self._check_same_config(read(), f"{self.source}:{name}")

    def _check_same_config(self, data: bytes, member: str) -> None:
        if self._load_config(data, member) != self.config:
            raise ImportFormatError(f"{member}: differs from the config_file {self.config_member}; the two belong "
                                    f"to different reinforcements. Pass the archive's own config (or none).")

    def _folder_root(self) -> Path:
        return self._folder_root_of(self.source)

    @staticmethod
    def _folder_root_of(root: Path) -> Path:
        def holds(d: Path) -> bool:
            return (d / CONFIG_NAME).is_file() or any(_SAMPLE_RE.fullmatch(e.name) for e in os.scandir(d))

        if holds(root):
            return root
        subs = [d for d in sorted(root.iterdir()) if d.is_dir() and holds(d)]
        if len(subs) == 1:
            return subs[0]
        raise ImportFormatError(f"{root}: neither this folder nor exactly one of its sub-folders holds ml-dr's "
                                f"{CONFIG_NAME} and sample files ({len(subs)} sub-folders do); pass the "
                                f"reinforced_data folder itself.")

    def _folder_samples(self) -> Iterator[SampleMember]:
        index: dict[int, str] = {}
        for e in os.scandir(self._root):
            m = _SAMPLE_RE.fullmatch(e.name)
            if m and e.is_file():
                index[int(m[1])] = e.name
            elif e.name.endswith(".jb") and e.name[:-3].isdigit():
                self._classify(e.name, _FileInfo(0, False))
            elif e.name != CONFIG_NAME and not e.is_dir():
                self.num_skipped += 1
                if len(self.skipped) < 1000:
                    self.skipped.append(e.name)
        digest, count = hashlib.sha256(), 0
        for i in sorted(index):
            path = self._root / index[i]
            if path.stat().st_size > MAX_PICKLE_BYTES:
                raise ImportFormatError(f"{path}: larger than the {MAX_PICKLE_BYTES}-byte limit for one ml-dr "
                                        f"sample; not an ml-dr reinforcement file.")
            data = path.read_bytes()
            digest.update(data)
            count += len(data)
            yield SampleMember(i, str(path), data)
        self.sha256, self.bytes_read = digest.hexdigest(), count

    def __iter__(self) -> Iterator[SampleMember]:
        """Yield every sample member once, checked against ``[0, N)`` and for duplicates.

        Raises:
            ImportFormatError: an index outside the dataset, a duplicate, a truncated archive,
                and (``require_complete``) samples missing at the end.
        """
        N = self.num_samples
        seen = np.zeros(N, dtype=bool)
        count, last = 0, "(none)"
        members = self._folder_samples() if self.kind == "folder" else self._tar_samples()
        for m in members:
            if m.index >= N:
                raise ImportFormatError(f"{self.source}: member {m.name} is sample {m.index}, outside the dataset's "
                                        f"[0, {N}): the archive belongs to another dataset or split (ml-dr indexes "
                                        f"torchvision's training split: ImageNet 1281167, CIFAR-100 50000, "
                                        f"Food-101 75750, Flowers-102 1020 samples).")
            if seen[m.index]:
                raise ImportFormatError(f"{self.source}: sample {m.index} appears twice (the second time as "
                                        f"{m.name}); the archive is corrupt or two archives were merged. "
                                        f"{_REDOWNLOAD}")
            seen[m.index] = True
            count += 1
            last = m.name
            yield m
        if self.require_complete and count != N:
            missing = np.flatnonzero(~seen)
            raise ImportFormatError(f"{self.source}: holds {count} of the dataset's {N} samples; missing "
                                    f"{len(missing)}, e.g. {missing[:5].tolist()}. It ended after member {last}: "
                                    f"the archive may be truncated (download it again) or belong to another "
                                    f"dataset or split.")


class _HashingReader:
    """A read-only file that hashes what is read through it (tarfile's stream mode reads sequentially)."""

    def __init__(self, raw) -> None:
        self.raw, self.hash, self.count = raw, hashlib.sha256(), 0

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.hash.update(data)
        self.count += len(data)
        return data

    def finish(self) -> str:
        """Hash the rest of the file (tarfile stops at the end-of-archive blocks); the file's hex sha256."""
        while True:
            data = self.raw.read(1 << 22)
            if not data:
                return self.hash.hexdigest()
            self.hash.update(data)
            self.count += len(data)


def fingerprint_source(source: str | os.PathLike, edge_bytes: int = 1 << 20) -> dict:
    """A cheap identity of an archive, known before streaming it (a resumed import must see the same one).

    A file: its name, size and the sha256 of its first and last ``edge_bytes``. A folder: its name, the
    number and total size of its sample files and the sha256 of their sorted ``name size`` listing.
    """
    p = Path(source)
    if p.is_dir():
        root = MLDRArchive._folder_root_of(p)
        entries = sorted((e.name, e.stat().st_size) for e in os.scandir(root)
                         if e.is_file() and (_SAMPLE_RE.fullmatch(e.name) or e.name == CONFIG_NAME))
        listing = "".join(f"{n} {size}\n" for n, size in entries).encode()
        return {"kind": "folder", "name": p.name, "files": len(entries), "bytes": sum(s for _, s in entries),
                "listing_sha256": hashlib.sha256(listing).hexdigest()}
    size = p.stat().st_size
    with open(p, "rb") as f:
        head = hashlib.sha256(f.read(edge_bytes)).hexdigest()
        f.seek(max(0, size - edge_bytes))
        tail = hashlib.sha256(f.read(edge_bytes)).hexdigest()
    return {"kind": _detect_kind(p), "name": p.name, "bytes": size, "head_sha256": head, "tail_sha256": tail}


class _FileInfo(NamedTuple):
    size: int
    link: bool

    def isdir(self) -> bool:
        return False

    def isfile(self) -> bool:
        return not self.link


def _detect_kind(source: Path) -> str:
    if source.is_dir():
        return "folder"
    if not source.is_file():
        raise ImportFormatError(f"{source}: no such file or folder; pass the downloaded ml-dr archive "
                                f"(.tar.gz or .tar) or the folder it was extracted to.")
    with open(source, "rb") as f:
        head = f.read(2)
    if head == b"\x1f\x8b":
        return "tar.gz"
    if tarfile.is_tarfile(source):
        return "tar"
    raise ImportFormatError(f"{source}: neither a gzip-compressed tar, a tar, nor a folder; ml-dr publishes "
                            f".tar.gz archives (apple/ml-dr README). {_REDOWNLOAD}")


def open_archive(source: str | os.PathLike, num_samples: int, **kwargs) -> MLDRArchive:
    """Open an ml-dr archive and read its config. See :class:`MLDRArchive` for the arguments.

    Example:
        >>> archive = open_archive("imagenet_plus_randaug.tar.gz", num_samples=len(train_set))
        >>> layout = parse_config(archive.config, archive.config_member)
        >>> for member in archive:
        ...     records = decode_sample(member.data, member.name, layout,
        ...                             expected_index=member.index, num_samples=len(train_set))
    """
    return MLDRArchive(source, num_samples, **kwargs)
