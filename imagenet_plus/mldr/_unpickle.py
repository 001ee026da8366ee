"""A restricted unpickler for the ``torch.save`` files of apple/ml-dr's published archives.

ml-dr stores every training sample as ``torch.save((index, records), "{index}.pth.tar",
pickle_protocol=4)`` and the run's config as ``torch.save(config, "config.pth.tar")``.
Those files are pickles; a general unpickler executes whatever a pickle names, and
``torch.load(weights_only=True)`` refuses them (protocol 4's FRAME opcode, "Unsupported
operand 149"). This module reads them without executing anything:

* the only globals it resolves are numpy's scalar reconstructor
  (``numpy.core.multiarray.scalar``, ``numpy._core.multiarray.scalar`` under numpy 2) and
  ``numpy.dtype``, and neither is handed out: the names resolve to guards that accept
  numeric dtype codes only (bool, signed and unsigned integers, floats), check the
  dtype's pickled state, and decode the scalar's bytes with ``numpy.frombuffer``;
* every other global, and every persistent id (a tensor storage), is refused with an
  :class:`~imagenet_plus.errors.ImportFormatError` naming the archive member;
* the guards are frozen objects: a pickle cannot rebind their attributes, instantiate
  them as classes (NEWOBJ needs a type) or BUILD state into them.

Both ``torch.save`` layouts are read: the zip layout (torch >= 1.6: ``<name>/data.pkl``
plus small metadata records) and the legacy layout (a sequence of pickles: magic
number, protocol version, system info, the object, the storage keys).
"""

from __future__ import annotations

import io
import pickle
import zipfile
from typing import Any

import numpy as np

from ..errors import ImportFormatError, short_repr as _short

__all__ = ["MAX_PICKLE_BYTES", "NUMERIC_DTYPES", "load_pickle", "load_torch_file"]

#: The largest pickle (``data.pkl`` or a whole legacy file) read; ml-dr's biggest per-sample
#: files (Flowers-102, 8000 records) are a few MB.
MAX_PICKLE_BYTES = 256 << 20

#: numpy dtype codes a pickle may construct: bool, integers, unsigned integers, floats.
NUMERIC_DTYPES = frozenset({"b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8"})

_SCALAR_GLOBALS = frozenset({("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar")})
_DTYPE_GLOBAL = ("numpy", "dtype")
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_ZIP_MAGIC = b"PK\x03\x04"
_FIX = ("Only ml-dr's own files (tuples, lists, dicts, strings, numbers and numpy numeric scalars) "
        "can be imported; re-download the archive from the URL in apple/ml-dr's README.")


class _Frozen:
    """Base of the guard objects: no attribute can be set or BUILD into them after creation."""

    __slots__ = ("_member",)

    def __init__(self, member: str):
        object.__setattr__(self, "_member", member)

    def __setattr__(self, key, value):
        raise ImportFormatError(f"{self._member}: the pickle tries to set attribute {key!r} on a numpy "
                                f"reconstructor; refused. {_FIX}")

    def __setstate__(self, state):
        raise ImportFormatError(f"{self._member}: the pickle tries to BUILD state into a numpy reconstructor; "
                                f"refused. {_FIX}")

    def __reduce__(self):
        raise TypeError("guard objects cannot be pickled")


class _DtypeSpec(_Frozen):
    """What the guarded ``numpy.dtype(code, align, copy)`` returns: a checked numeric dtype."""

    __slots__ = ("code", "byteorder")

    def __init__(self, member: str, code: str):
        super().__init__(member)
        object.__setattr__(self, "code", code)
        object.__setattr__(self, "byteorder", "=")

    def __setstate__(self, state):
        # numpy pickles a dtype's state as (3, byteorder, subarray, names, fields, elsize,
        # alignment, flags); numeric dtypes have no subarray/names/fields and elsize=alignment=-1.
        ok = (isinstance(state, tuple) and len(state) == 8 and state[0] == 3
              and state[1] in ("<", ">", "|", "=") and state[2:5] == (None, None, None)
              and state[5:7] == (-1, -1) and type(state[7]) is int and state[7] == 0)
        if not ok:
            raise ImportFormatError(f"{self._member}: numpy dtype {self.code!r} with pickled state "
                                    f"{_short(state)} is not a plain numeric dtype; refused. {_FIX}")
        object.__setattr__(self, "byteorder", state[1])

    def dtype(self) -> np.dtype:
        """The numpy dtype (explicit byte order where one was pickled)."""
        return np.dtype(self.byteorder + self.code if self.byteorder in "<>" else self.code)


class _DtypeGuard(_Frozen):
    """Stands in for ``numpy.dtype``: accepts exactly the numeric codes, before constructing anything."""

    __slots__ = ()

    def __call__(self, code=None, align=False, copy=True, *rest):
        if rest or type(code) is not str or code not in NUMERIC_DTYPES or type(align) is not bool \
                or type(copy) is not bool:
            raise ImportFormatError(f"{self._member}: the pickle asks for numpy dtype {_short(code)} (align="
                                    f"{_short(align)}); only numeric dtypes {sorted(NUMERIC_DTYPES)} are allowed. "
                                    f"{_FIX}")
        return _DtypeSpec(self._member, code)


class _ScalarGuard(_Frozen):
    """Stands in for ``numpy.core.multiarray.scalar``: decodes a numeric scalar from its raw bytes."""

    __slots__ = ()

    def __call__(self, dtype=None, data=None, *rest):
        if rest or type(dtype) is not _DtypeSpec:
            raise ImportFormatError(f"{self._member}: numpy scalar reconstruction with dtype {_short(dtype)} "
                                    f"refused (only numeric dtypes built by numpy.dtype are allowed). {_FIX}")
        dt = dtype.dtype()
        if type(data) is not bytes or len(data) != dt.itemsize:
            raise ImportFormatError(f"{self._member}: numpy scalar of dtype {dt} has {_short(data)} as its data; "
                                    f"expected {dt.itemsize} bytes. The file is corrupt; {_FIX}")
        return np.frombuffer(data, dtype=dt)[0]


class _Unpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves only the numpy guards and refuses persistent ids."""

    def __init__(self, file, member: str):
        super().__init__(file)
        self._member = member
        self._scalar = _ScalarGuard(member)
        self._dtype = _DtypeGuard(member)

    def find_class(self, module, name):
        if (module, name) in _SCALAR_GLOBALS:
            return self._scalar
        if (module, name) == _DTYPE_GLOBAL:
            return self._dtype
        raise ImportFormatError(f"{self._member}: the pickle refers to the global {module}.{name}, which this "
                                f"importer never loads (only numpy's numeric scalars are allowed). {_FIX}")

    def persistent_load(self, pid):
        raise ImportFormatError(f"{self._member}: the pickle holds a tensor storage (persistent id "
                                f"{_short(pid)}); ml-dr's records hold no tensors, so this is not an ml-dr "
                                f"reinforcement file. {_FIX}")


def _load_one(f: io.BytesIO, member: str) -> Any:
    try:
        return _Unpickler(f, member).load()
    except ImportFormatError:
        raise
    except Exception as e:  # anything the unpickler raises on malformed input
        raise ImportFormatError(f"{member}: not a readable pickle ({type(e).__name__}: {_short(str(e), 160)}). "
                                f"The file is truncated or corrupt: re-download the archive.") from None


def load_pickle(data: bytes, member: str) -> Any:
    """Unpickle ``data`` with the restricted unpickler; all of ``data`` must be one pickle.

    Args:
        data: the pickle's bytes.
        member: the archive member the bytes come from (named in every error).

    Returns:
        The object (tuples, lists, dicts, str, bytes, numbers, bool, None, numpy numeric scalars).

    Raises:
        ImportFormatError: a refused global or persistent id, a malformed or truncated pickle,
            or bytes left over after the pickle's STOP.
    """
    if len(data) > MAX_PICKLE_BYTES:
        raise ImportFormatError(f"{member}: a {len(data)}-byte pickle is larger than the {MAX_PICKLE_BYTES}-byte "
                                f"limit for one ml-dr sample; this is not an ml-dr reinforcement file.")
    f = io.BytesIO(data)
    obj = _load_one(f, member)
    if f.tell() != len(data):
        raise ImportFormatError(f"{member}: {len(data) - f.tell()} bytes follow the end of the pickle; the file "
                                f"is corrupt: re-download the archive.")
    return obj


def load_torch_file(data: bytes, member: str) -> Any:
    """Read a ``torch.save`` file's object without executing code (zip or legacy layout).

    Args:
        data: the file's bytes.
        member: its name in the archive (named in every error).

    Returns:
        The saved object.

    Raises:
        ImportFormatError: not a ``torch.save`` file, truncated, corrupt, or holding anything
            beyond plain data and numpy numeric scalars.

    Example:
        >>> index, records = load_torch_file(open("reinforced_data/0.pth.tar", "rb").read(), "0.pth.tar")
    """
    if data[:4] == _ZIP_MAGIC:
        return _load_zip(data, member)
    return _load_legacy(data, member)


def _load_zip(data: bytes, member: str) -> Any:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            pkls = [i for i in zf.infolist() if i.filename.endswith("/data.pkl") and i.filename.count("/") == 1]
            if len(pkls) != 1:
                raise ImportFormatError(f"{member}: a torch.save zip holds exactly one '<name>/data.pkl'; found "
                                        f"{[i.filename for i in pkls] or 'none'} among {_short(zf.namelist())}. "
                                        f"This is not a torch.save file; re-download the archive.")
            info = pkls[0]
            if info.file_size > MAX_PICKLE_BYTES:
                raise ImportFormatError(f"{member}: {info.filename} declares {info.file_size} bytes, more than the "
                                        f"{MAX_PICKLE_BYTES}-byte limit; this is not an ml-dr reinforcement file.")
            pkl = zf.read(info)  # checks the CRC
    except ImportFormatError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError, NotImplementedError) as e:
        raise ImportFormatError(f"{member}: a truncated or corrupt torch.save zip ({type(e).__name__}: "
                                f"{_short(str(e), 160)}); re-download the archive.") from None
    return load_pickle(pkl, f"{member}:{info.filename}")


def _load_legacy(data: bytes, member: str) -> Any:
    if len(data) > MAX_PICKLE_BYTES:
        raise ImportFormatError(f"{member}: {len(data)} bytes is more than the {MAX_PICKLE_BYTES}-byte limit for "
                                f"one ml-dr sample file; this is not an ml-dr reinforcement file.")
    if data[:1] != b"\x80":
        raise ImportFormatError(f"{member}: not a torch.save file (it starts with {data[:8]!r}, neither the zip "
                                f"layout's 'PK' nor a pickle); the file is corrupt: re-download the archive.")
    f = io.BytesIO(data)
    magic = _load_one(f, member)
    if type(magic) is not int or magic != _LEGACY_MAGIC:
        raise ImportFormatError(f"{member}: a pickle but not a torch.save file (its first value is {_short(magic)}, "
                                f"not torch's legacy magic number); re-download the archive.")
    version = _load_one(f, member)
    if version != _LEGACY_PROTOCOL:
        raise ImportFormatError(f"{member}: legacy torch.save protocol {_short(version)} is not "
                                f"{_LEGACY_PROTOCOL}; the file is corrupt or not from torch.")
    sys_info = _load_one(f, member)
    if not isinstance(sys_info, dict):
        raise ImportFormatError(f"{member}: legacy torch.save system info is {_short(sys_info)}, not a dict; "
                                f"the file is corrupt.")
    obj = _load_one(f, member)
    keys = _load_one(f, member)
    if keys != [] or f.tell() != len(data):
        raise ImportFormatError(f"{member}: legacy torch.save file with storages {_short(keys)} or "
                                f"{len(data) - f.tell()} trailing bytes; ml-dr's records hold no tensors.")
    return obj
