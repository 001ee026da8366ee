"""The samples file opened for reading: header, build id and sha256 checked, columns as zero-copy views."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import IntegrityError
from ..schema import SAMPLE_FIELDS
from ._format import (REPAIR, check_build_id, check_tensors, check_version, key_bytes_of, read_header,
                      samples_layout)
from ._manifest import FileEntry, hash_keys
from ._scan import map_file, sha256_of

_DTYPES = {**{f.name: np.dtype(f.dtype) for f in SAMPLE_FIELDS}, "key_bytes": np.dtype("|u1"),
           "key_offsets": np.dtype("<i8")}


class SamplesFile:
    """``samples.safetensors`` of a store, memory-mapped.

    Args:
        path: the file.
        entry: its manifest entry (size and sha256).
        num_samples: the manifest's ``num_samples``.
        build_id: the manifest's build id (the file's metadata must carry it).
        check_sha256: hash the whole file and compare with ``entry.sha256`` (once per
            store object; a copy sent to a worker process skips it).

    Raises:
        IntegrityError: missing, truncated, of another build, or its sha256 differs.
    """

    def __init__(self, path: Path, entry: FileEntry, num_samples: int, build_id: str | None, *,
                 check_sha256: bool = True):
        tensors, meta, size = read_header(path)
        if size != entry.bytes:
            raise IntegrityError(f"{path}: {size} bytes, the manifest says {entry.bytes}; the samples file is "
                                 f"truncated or from another build: {REPAIR}")
        check_version(meta.get("format_version"), str(path), "samples file")
        check_build_id(path, meta, build_id, "this samples file belongs to another build (the manifest's build_id "
                       f"differs): {REPAIR}")
        check_tensors(path, tensors, samples_layout(num_samples, key_bytes_of(tensors)), size)
        self.path, self.tensors, self.num_samples = path, tensors, num_samples
        self._buf = map_file(path)
        if check_sha256:
            digest = sha256_of(self._buf)
            if digest != entry.sha256:
                raise IntegrityError(f"{path}: sha256 {digest} does not match the manifest's {entry.sha256}; the "
                                     f"samples file (labels, keys, identities) is corrupt: {REPAIR}")

    def column(self, name: str) -> np.ndarray:
        """A read-only view of one tensor (``label``, ``content_hash``, ..., ``key_offsets``)."""
        t = self.tensors[name]
        dt = _DTYPES[name]
        return np.frombuffer(self._buf, dtype=dt, count=(t.end - t.start) // dt.itemsize,
                             offset=t.start).reshape(t.shape)

    def keys_digest(self) -> str:
        """:func:`~imagenet_plus.store.digest_keys` of the stored keys, from their bytes (no decoding)."""
        return hash_keys(self.column("key_bytes"), self.column("key_offsets"))

    def keys(self) -> list[str]:
        """The decoded keys; raises :class:`IntegrityError` if the offsets or the UTF-8 are damaged."""
        data = self.column("key_bytes").tobytes()
        off = self.column("key_offsets")
        if off[0] != 0 or off[-1] != len(data) or (np.diff(off) < 0).any():
            raise IntegrityError(f"{self.path}: key offsets are inconsistent; {REPAIR}")
        o = off.tolist()
        try:
            return [data[o[k]:o[k + 1]].decode("utf-8") for k in range(self.num_samples)]
        except UnicodeDecodeError as e:
            raise IntegrityError(f"{self.path}: keys are not UTF-8 ({e}); {REPAIR}") from e
