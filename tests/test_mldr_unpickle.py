"""The restricted unpickler: reads ml-dr's torch.save files, refuses everything that could run code."""

from __future__ import annotations

import builtins
import io
import os
import pickle
import zipfile

import numpy as np
import pytest
import torch

from imagenet_plus.errors import ImportFormatError
from imagenet_plus.mldr import _unpickle
from imagenet_plus.mldr._unpickle import load_pickle, load_torch_file

# --- hand-assembled pickles (opcodes from the pickle module's documented format) -----------------


def _glob(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _str(s: str) -> bytes:
    b = s.encode()
    return b"X" + len(b).to_bytes(4, "little") + b


def _bytes(b: bytes) -> bytes:
    return b"C" + bytes([len(b)]) + b


def _int(i: int) -> bytes:
    return b"J" + i.to_bytes(4, "little", signed=True)


def _pickle(*parts: bytes) -> bytes:
    return b"\x80\x04" + b"".join(parts) + b"."


_NUMERIC_STATE = b"NNN" + _int(-1) + _int(-1) + _int(0)


def _dtype(code: str, byteorder: str = "<", state_tail: bytes = _NUMERIC_STATE) -> bytes:
    """numpy.dtype(code, False, True) with BUILD state (3, byteorder, ...), as numpy pickles it."""
    return (_glob("numpy", "dtype") + _str(code) + b"\x89\x88\x87R" + b"(" + _int(3) + _str(byteorder)
            + state_tail + b"t" + b"b")


def _scalar(module: str, code: str, byteorder: str, data: bytes, state_tail: bytes = _NUMERIC_STATE) -> bytes:
    return _pickle(_glob(module, "scalar") + _dtype(code, byteorder, state_tail) + _bytes(data) + b"\x86R")


def _torch_zip(pkl: bytes, name: str = "7.pth", extra: dict | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{name}/data.pkl", pkl)
        z.writestr(f"{name}/version", b"3\n")
        for k, v in (extra or {}).items():
            z.writestr(k, v)
    return buf.getvalue()


def _saved(obj, tmp_path, name="7.pth.tar", **kw) -> bytes:
    path = tmp_path / name
    torch.save(obj, path, pickle_protocol=4, **kw)
    return path.read_bytes()


# --- what must read ---------------------------------------------------------------------------------


def test_reads_an_mldr_like_sample_with_every_numeric_numpy_scalar(tmp_path):
    scalars = [np.bool_(True), np.int8(-3), np.int16(-300), np.int32(-70000), np.int64(-2 ** 40), np.uint8(200),
               np.uint16(60000), np.uint32(4_000_000_000), np.uint64(2 ** 63 + 5), np.float16(0.5),
               np.float32(0.1), np.float64(1 / 3)]
    obj = (12, [{"params": [None, (1, 2, 3, 4), [True, False], [0.25, *scalars]], "prob": ([0.5, 0.25], [3, 1])}])
    data = _saved(obj, tmp_path)
    got = load_torch_file(data, "reinforced_data/12.pth.tar")
    assert got == obj
    for a, b in zip(got[1][0]["params"][3][1:], scalars):
        assert type(a) is type(b) and a == b


@pytest.mark.parametrize("module", ["numpy.core.multiarray", "numpy._core.multiarray"])
@pytest.mark.parametrize("byteorder", ["<", ">"])
def test_numpy_scalar_under_numpy1_and_numpy2_names_and_both_byte_orders(module, byteorder):
    raw = (123456789).to_bytes(8, "little" if byteorder == "<" else "big", signed=True)
    got = load_pickle(_scalar(module, "i8", byteorder, raw), "m")
    assert type(got) is np.int64 and got == 123456789
    f = np.float32(0.7).tobytes() if byteorder == "<" else np.float32(0.7).byteswap().tobytes()
    assert load_pickle(_scalar(module, "f4", byteorder, f), "m") == np.float32(0.7)
    assert load_pickle(_scalar(module, "b1", "|", b"\x01"), "m") == np.True_


def test_protocol3_pickle_written_by_numpy_itself_reads():
    data = pickle.dumps([np.int64(-5), np.float64(2.5)], protocol=3)
    assert load_pickle(data, "m") == [-5, 2.5]


def test_legacy_torch_save_layout_reads(tmp_path):
    obj = (3, [{"params": [(0, 0, 5, 5), True], "prob": ([0.9], [7])}])
    data = _saved(obj, tmp_path, _use_new_zipfile_serialization=False)
    assert data[:4] != b"PK\x03\x04"
    assert load_torch_file(data, "3.pth.tar") == obj


def test_torch_load_weights_only_refuses_these_files(tmp_path):
    """The motivation (issue #13): torch's own safe loader cannot read ml-dr's protocol-4 files."""
    path = tmp_path / "0.pth.tar"
    torch.save((0, [{"params": [(1, 2, 3, 4), True], "prob": ([0.5], [1])}]), path, pickle_protocol=4)
    with pytest.raises(Exception, match="(?i)weights only|weights_only|Unsupported"):
        torch.load(path, weights_only=True)
    assert load_torch_file(path.read_bytes(), "0.pth.tar")[0] == 0


# --- what must be refused, with nothing executed ------------------------------------------------------


class _Runs:
    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return (self.func, (self.arg,))


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_os_system_payload_is_refused_and_never_runs(tmp_path, layout):
    marker = tmp_path / "pwned"
    kw = {"_use_new_zipfile_serialization": False} if layout == "legacy" else {}
    data = _saved((0, [_Runs(os.system, f"touch {marker}")]), tmp_path, **kw)
    with pytest.raises(ImportFormatError, match=r"reinforced_data/0\.pth\.tar.*(posix|os)\.system"):
        load_torch_file(data, "reinforced_data/0.pth.tar")
    assert not marker.exists()
    # Positive control: the payload is live; a general unpickler runs it.
    pkl = zipfile.ZipFile(io.BytesIO(_saved(_Runs(os.system, f"touch {marker}"), tmp_path))).read("7.pth/data.pkl")
    pickle.loads(pkl)
    assert marker.exists()


def test_builtins_eval_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    data = _saved(_Runs(builtins.eval, f"open({str(marker)!r}, 'w')"), tmp_path)
    with pytest.raises(ImportFormatError, match=r"7\.pth\.tar.*builtins\.eval"):
        load_torch_file(data, "7.pth.tar")
    assert not marker.exists()


@pytest.mark.parametrize("code,state", [
    ("O8", b"NNN" + _int(-1) + _int(-1) + _int(63)),  # object
    ("c8", _NUMERIC_STATE),  # complex
    ("U3", b"NNN" + _int(12) + _int(4) + _int(8)),  # unicode
    ("V8", _NUMERIC_STATE),  # void
])
def test_non_numeric_dtypes_are_refused_before_construction(code, state):
    with pytest.raises(ImportFormatError, match=rf"member-x.*dtype '{code}'"):
        load_pickle(_scalar("numpy._core.multiarray", code, "|", b"\0" * 8, state), "member-x")


def test_numpy_object_array_is_refused(tmp_path):
    data = _saved(np.array([print], dtype=object), tmp_path)
    with pytest.raises(ImportFormatError, match=r"7\.pth\.tar.*numpy.*_reconstruct"):
        load_torch_file(data, "7.pth.tar")


def test_structured_dtype_state_is_refused():
    fields = b"(" + _str("a") + b"t" + b"}" + _int(8) + _int(1) + _int(16)  # names, fields, elsize, ...
    with pytest.raises(ImportFormatError, match=r"m: numpy dtype 'i8' with pickled state"):
        load_pickle(_scalar("numpy.core.multiarray", "i8", "<", b"\0" * 8, b"N" + fields), "m")


def test_scalar_with_wrong_byte_count_or_fake_dtype_is_refused():
    with pytest.raises(ImportFormatError, match="expected 8 bytes"):
        load_pickle(_scalar("numpy._core.multiarray", "i8", "<", b"\0" * 3), "m")
    fake = _pickle(_glob("numpy._core.multiarray", "scalar") + _str("i8") + _bytes(b"\0" * 8) + b"\x86R")
    with pytest.raises(ImportFormatError, match="scalar reconstruction with dtype 'i8' refused"):
        load_pickle(fake, "m")


def test_guards_cannot_be_tampered_with():
    build = _pickle(_glob("numpy", "dtype") + b"}" + _str("_member") + _str("x") + b"s" + b"b")
    with pytest.raises(ImportFormatError, match="BUILD state into a numpy reconstructor"):
        load_pickle(build, "m")
    slots = _pickle(_glob("numpy", "dtype") + b"N" + b"}" + _str("_member") + _str("x") + b"s" + b"\x86b")
    with pytest.raises(ImportFormatError, match="BUILD state into a numpy reconstructor"):
        load_pickle(slots, "m")
    newobj = _pickle(_glob("numpy", "dtype") + b")" + b"\x81")  # NEWOBJ needs a type, not a guard
    with pytest.raises(ImportFormatError, match="m: not a readable pickle"):
        load_pickle(newobj, "m")
    extra = _pickle(_glob("numpy", "dtype") + b"(" + _str("i8") + b"\x89\x88" + _str("O") + b"tR")
    with pytest.raises(ImportFormatError, match="only numeric dtypes"):
        load_pickle(extra, "m")


def test_tensor_inside_is_refused(tmp_path):
    data = _saved({"t": torch.zeros(3)}, tmp_path)
    with pytest.raises(ImportFormatError, match=r"7\.pth\.tar.*torch\._utils\._rebuild_tensor"):
        load_torch_file(data, "7.pth.tar")
    persid = b"\x80\x02" + _str("storage0") + b"Q."  # BINPERSID without any global
    with pytest.raises(ImportFormatError, match=r"m: the pickle holds a tensor storage"):
        load_pickle(persid, "m")


def test_truncated_file_is_a_clear_error(tmp_path):
    data = _saved((0, [{"params": [(1, 2, 3, 4)] * 50, "prob": ([0.5] * 10, list(range(10)))}]), tmp_path)
    with pytest.raises(ImportFormatError, match=r"reinforced_data/0\.pth\.tar: a truncated or corrupt torch\.save zip"):
        load_torch_file(data[: len(data) // 2], "reinforced_data/0.pth.tar")
    pkl = zipfile.ZipFile(io.BytesIO(data)).read("7.pth/data.pkl")
    with pytest.raises(ImportFormatError, match=r"0\.pth\.tar:5/data\.pkl: not a readable pickle"):
        load_torch_file(_torch_zip(pkl[:-20], "5"), "0.pth.tar")
    legacy = _saved((0, [1, 2, 3]), tmp_path, _use_new_zipfile_serialization=False)
    with pytest.raises(ImportFormatError, match="0.pth.tar: not a readable pickle"):
        load_torch_file(legacy[:-12], "0.pth.tar")


def test_garbage_bytes_are_a_clear_error():
    with pytest.raises(ImportFormatError, match=r"junk\.pth\.tar: not a torch\.save file"):
        load_torch_file(os.urandom(64).replace(b"\x80", b"\x81").replace(b"PK", b"QK"), "junk.pth.tar")
    with pytest.raises(ImportFormatError, match=r"j: a pickle but not a torch\.save file"):
        load_torch_file(pickle.dumps([1, 2], protocol=4), "j")
    with pytest.raises(ImportFormatError, match="bytes follow the end of the pickle"):
        load_pickle(pickle.dumps(5, protocol=4) + b"xx", "m")


def test_zip_must_hold_exactly_one_data_pkl():
    pkl = pickle.dumps(1, protocol=4)
    with pytest.raises(ImportFormatError, match="exactly one '<name>/data.pkl'"):
        load_torch_file(_torch_zip(pkl, "a", extra={"b/data.pkl": pkl}), "m")
    assert load_torch_file(_torch_zip(pkl), "m") == 1


def test_size_limit(monkeypatch):
    monkeypatch.setattr(_unpickle, "MAX_PICKLE_BYTES", 100)
    with pytest.raises(ImportFormatError, match="larger than the 100-byte limit"):
        load_pickle(pickle.dumps(list(range(100)), protocol=4), "m")
    with pytest.raises(ImportFormatError, match="declares .* bytes, more than the 100-byte limit"):
        load_torch_file(_torch_zip(pickle.dumps(list(range(100)), protocol=4)), "m")
