"""The Parquet export of a store, loadable with ``datasets.load_dataset``.

The Parquet files (``data/{split}-XXXXX-of-XXXXX.parquet``) hold one row per
sample, in the store's sample order:

==============  ==============================================================
column          content
==============  ==============================================================
``index``       int64, the sample's position in the base dataset's order
``key``         string, the sample's key (relative path or ``"{split}/{i}"``)
``label``       ``ClassLabel`` (int64), the label recorded at build time
``image``       ``Image(decode=False)`` (optional): ``{"bytes", "path"}``, the
                original file's bytes (``path``: its key), or a PNG of the
                decoded array for array datasets (``path`` ``None``); only where
                the dataset's adapter allows it (never ImageNet, whose licence
                forbids it). Left undecoded so that the transform decodes the
                bytes itself, as the store path does, and checks their sha256
                (cast it to ``datasets.Image()`` to look at the pictures)
one per param   ``List(List(..., length=s), length=A)``: the field's stored
field           values for every augmentation ``j < A`` (``A`` fixed lists)
``topk_ids``    int16/int32 ``[A, K]``: decoded teacher top-k class ids
``topk_probs``  float32 ``[A, K]``: decoded top-k probabilities (descending,
                summing to ``1 - tail``)
``checksum``    string: :func:`row_checksum` of the row's records under the
                store's build id and the sample index (checked by the transform
                on a row's first use and by ``imagenet-plus verify --full``)
==============  ==============================================================

The ``datasets`` features are embedded in the Parquet schema metadata (the
``huggingface`` key, as ``datasets`` writes it), so ``datasets.load_dataset``
gives exactly these types. :func:`imagenet_plus.hf.create_transform` turns such
rows into ``{"pixel_values", "soft_target"}`` through the package's replay core.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .._checks import check_int
from .._files import atomic_file
from ..errors import AlignmentError, ArgumentError, ReinforcementError, StoreError

__all__ = ["images_forbidden", "parquet_features", "parquet_filename", "row_checksum", "export_parquet",
           "check_parquet", "verify_parquet", "has_parquet"]
#: Column names the export uses itself; a param field may not take one of them.
_RESERVED = ("index", "key", "label", "image", "topk_ids", "topk_probs", "checksum")
_CHECKSUM_TAG = b"imagenet-plus parquet row v1\0"
_DATA_DIR = "data"
_NAME_RE = re.compile(r"^(?P<split>[\w.-]+)-(?P<k>\d{5})-of-(?P<n>\d{5})\.parquet$")
#: Target uncompressed size of a row group and of a file (estimates from the column widths).
_ROW_GROUP_BYTES = 64 * 1024 * 1024
_FILE_BYTES = 512 * 1024 * 1024
_VALUE_DTYPES = {"u1": "uint8", "u2": "uint16", "u4": "uint32", "u8": "uint64", "i1": "int8", "i2": "int16",
                 "i4": "int32", "i8": "int64", "f2": "float16", "f4": "float32", "f8": "float64", "b1": "bool"}


# ---------------------------------------------------------------------------------------------- schema
def _value_dtype(dtype: str) -> str:
    dt = np.dtype(dtype)
    key = f"{dt.kind}{dt.itemsize}"
    if key not in _VALUE_DTYPES:
        raise StoreError(f"field dtype {dtype!r} has no Parquet equivalent; use an integer, float or bool dtype")
    return _VALUE_DTYPES[key]


def _ids_dtype(num_classes: int) -> str:
    return "int16" if num_classes <= np.iinfo(np.int16).max + 1 else "int32"


def images_forbidden(dataset: str) -> bool:
    """Whether the licence of dataset ``dataset`` (a store's ``manifest.dataset``) forbids redistributing its images."""
    from ..adapters import ADAPTERS

    cls = ADAPTERS.get(dataset)
    return cls is not None and cls.redistributable is False


def _nested(feature, shape: Sequence[int]):
    from datasets import List

    for n in reversed(tuple(shape)):
        feature = List(feature, length=int(n))
    return feature


def parquet_features(manifest, *, image: bool, class_names: Sequence[str] | None = None):
    """The ``datasets.Features`` of the Parquet export of a store (see the module docstring).

    Args:
        manifest: the store's :class:`imagenet_plus.store.Manifest`.
        image: whether rows carry an ``image`` column.
        class_names: ``num_classes`` class names for the ``label`` ``ClassLabel`` (default ``"0"``, ``"1"``, ...).

    Returns:
        ``datasets.Features`` in column order.

    Raises:
        StoreError: a param field is named like one of the fixed columns or has an unsupported dtype.
    """
    from datasets import ClassLabel, Features, Image, Value

    a, k = manifest.num_augmentations, manifest.topk
    if class_names is not None and len(class_names) != manifest.num_classes:
        raise AlignmentError(f"class_names has {len(class_names)} names but the store has "
                             f"num_classes={manifest.num_classes}; pass the base dataset's class list or None")
    label = ClassLabel(names=[str(c) for c in class_names]) if class_names is not None \
        else ClassLabel(num_classes=manifest.num_classes)
    cols: dict[str, Any] = {"index": Value("int64"), "key": Value("string"), "label": label}
    if image:
        cols["image"] = Image(decode=False)
    for f in manifest.param_fields:
        if f.name in _RESERVED:
            raise StoreError(f"param field {f.name!r} clashes with the fixed Parquet column of that name; "
                             f"rename the field in the policy (reserved: {', '.join(_RESERVED)})")
        cols[f.name] = _nested(Value(_value_dtype(f.dtype)), (a, *f.shape))
    cols["topk_ids"] = _nested(Value(_ids_dtype(manifest.num_classes)), (a, k))
    cols["topk_probs"] = _nested(Value("float32"), (a, k))
    cols["checksum"] = Value("string")
    return Features(cols)


def row_checksum(build_id: str, index: int, fields, params, ids, probs) -> str:
    """The checksum of one exported row: sha256 (first 16 bytes, hex) of the store's build id, the sample index
    and the row's records: every param field (``[A, *shape]``, its stored little-endian dtype, in ``fields``'
    order), ``topk_ids`` (``<i4`` ``[A, K]``) and ``topk_probs`` (``<f4`` ``[A, K]``)."""
    h = hashlib.sha256(_CHECKSUM_TAG)
    h.update(str(build_id).encode() + b"\0")
    h.update(np.asarray(int(index), dtype="<i8").tobytes())
    for f in fields:
        h.update(np.ascontiguousarray(params[f.name], dtype=np.dtype(f.dtype)).tobytes())
    h.update(np.ascontiguousarray(ids, dtype="<i4").tobytes())
    h.update(np.ascontiguousarray(probs, dtype="<f4").tobytes())
    return h.hexdigest()[:32]


def parquet_filename(split: str, k: int, n: int) -> str:
    """``data/{split}-{k:05d}-of-{n:05d}.parquet`` (the Hub's convention)."""
    return f"{_DATA_DIR}/{split}-{k:05d}-of-{n:05d}.parquet"


# ---------------------------------------------------------------------------------------------- export
def _fixed_list(values: np.ndarray, shape: Sequence[int], pa_type):
    """Nested fixed-size list array of ``values[n, *shape]`` (zero-copy for numeric types)."""
    import pyarrow as pa

    native = np.dtype(pa_type.to_pandas_dtype())
    arr = pa.array(np.ascontiguousarray(values, dtype=native).reshape(-1), type=pa_type)
    for n in reversed(tuple(shape)):
        arr = pa.FixedSizeListArray.from_arrays(arr, int(n))
    return arr


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _image_cell(adapter, i: int, digest: np.ndarray, root) -> tuple[bytes, str | None]:
    """``(bytes, path)`` of sample ``i``'s image cell (original file, or PNG of the decoded array), identity-checked."""
    sample = adapter.load(i)
    if not np.array_equal(sample.digest, digest):
        raise AlignmentError(f"{adapter.describe(i)}: its content differs from the one the store {root} was built "
                             "from (digest differs); export from the same copy of the data the builder read")
    data = adapter.read(i)
    return (data, adapter.keys()[i]) if data is not None else (_png(sample.image), None)


def _check_base(adapter, store) -> None:
    n = len(store)
    if len(adapter) != n:
        raise AlignmentError(f"base dataset has {len(adapter)} samples but the store {store.root} has {n}; pass the "
                             f"split the store was built from ({store.manifest.dataset}/{store.manifest.split})")
    for i, (a, b) in enumerate(zip(adapter.keys(), store.keys)):
        if a != b:
            raise AlignmentError(f"sample {i} of the base dataset has key {a!r}, the store {store.root} records "
                                 f"{b!r}; the dataset copy is ordered differently or is another split")
    labels = np.asarray(adapter.labels(), dtype=np.int64)
    bad = np.flatnonzero(labels != store.labels)
    if bad.size:
        i = int(bad[0])
        raise AlignmentError(f"{adapter.describe(i)} has label {int(labels[i])} in the base dataset but "
                             f"{int(store.labels[i])} in the store {store.root}; the dataset copy does not match")


def _row_bytes(manifest, image_bytes: float) -> float:
    a, k = manifest.num_augmentations, manifest.topk
    ids = np.dtype(_ids_dtype(manifest.num_classes)).itemsize
    params = sum(f.nbytes for f in manifest.param_fields)
    return 64 + image_bytes + a * (params + k * (ids + 4))


def _write_table_file(path: Path, schema, tables: Callable, row_group_size: int) -> None:
    """Write the tables yielded by ``tables()`` to ``path`` atomically (temp file, fsync, rename)."""
    import pyarrow.parquet as pq

    with atomic_file(path) as f:
        kwargs = dict(compression="zstd", write_page_index=True, write_page_checksum=True)
        try:  # content-defined chunking (pyarrow >= 21) lets the Hub deduplicate re-uploads
            writer = pq.ParquetWriter(f, schema, use_content_defined_chunking=True, **kwargs)
        except TypeError:
            writer = pq.ParquetWriter(f, schema, **kwargs)
        with writer:
            for table in tables():
                writer.write_table(table, row_group_size=row_group_size)


def _open_for_export(store, base, images: bool):
    """The opened store and the base dataset's adapter (checked against it), or refusals with the fix."""
    from ..adapters import adapt
    from ..store import ReinforcementStore, open_store

    if not isinstance(store, ReinforcementStore):
        store = open_store(store)
    m = store.manifest
    if store.num_augmentations != m.num_augmentations:
        raise StoreError(f"{store.root}: opened with num_augmentations={store.num_augmentations} of "
                         f"{m.num_augmentations}; the export covers every stored augmentation, open it with all")
    forbidden = ReinforcementError(f"images=True for dataset {m.dataset!r}: its terms of access forbid "
                                   "redistributing its images; export without images (the card tells users to bring "
                                   "their own copy)")
    if images and images_forbidden(m.dataset):
        raise forbidden
    adapter = adapt(base) if base is not None else None
    if images and adapter is not None and adapter.redistributable is False:
        raise forbidden
    if images and adapter is None:
        raise ReinforcementError("images=True needs base= (the dataset the store was built from) to read the "
                                 "images from")
    if adapter is not None:
        _check_base(adapter, store)
    return store, adapter


def _chunk_table(store, adapter, schema, s0: int, s1: int, images: bool):
    """The Arrow table of samples ``[s0, s1)``: identity columns, optional images, every record's params and targets."""
    import pyarrow as pa

    m = store.manifest
    a = m.num_augmentations
    idx = np.arange(s0, s1, dtype=np.int64)
    ii, jj = np.repeat(idx, a), np.tile(np.arange(a, dtype=np.int64), s1 - s0)
    params = store.params_batch(ii, jj)
    ids, probs = store.targets_batch(ii, jj)
    cols = {"index": pa.array(idx), "key": pa.array(store.keys[s0:s1], type=pa.string()),
            "label": pa.array(store.labels[s0:s1].astype(np.int64))}
    if images:
        cells = [_image_cell(adapter, i, store.content_hashes[i], store.root) for i in range(s0, s1)]
        cols["image"] = pa.StructArray.from_arrays(
            [pa.array([c[0] for c in cells], type=pa.binary()), pa.array([c[1] for c in cells], type=pa.string())],
            names=["bytes", "path"])
    for f in m.param_fields:
        cols[f.name] = _fixed_list(params[f.name], (a, *f.shape), pa.from_numpy_dtype(np.dtype(_value_dtype(f.dtype))))
    ids_type = pa.from_numpy_dtype(np.dtype(_ids_dtype(m.num_classes)))
    cols["topk_ids"] = _fixed_list(ids, (a, m.topk), ids_type)
    cols["topk_probs"] = _fixed_list(probs, (a, m.topk), pa.float32())
    n = s1 - s0
    rows = {f.name: params[f.name].reshape(n, a, *f.shape) for f in m.param_fields}
    ids, probs = ids.reshape(n, a, m.topk), probs.reshape(n, a, m.topk)
    cols["checksum"] = pa.array([row_checksum(m.build_id, s0 + r, m.param_fields, {k: v[r] for k, v in rows.items()},
                                              ids[r], probs[r]) for r in range(n)], type=pa.string())
    return pa.Table.from_arrays([cols[name] for name in schema.names], schema=schema)


def export_parquet(store, out: str | os.PathLike, *, base=None, images: bool = False,
                   class_names: Sequence[str] | None = None, rows_per_group: int | None = None,
                   rows_per_file: int | None = None, overwrite: bool = False, progress: bool = False) -> list[Path]:
    """Write the Parquet export of a store to ``out/data/{split}-XXXXX-of-XXXXX.parquet``.

    Args:
        store: a :class:`imagenet_plus.store.ReinforcementStore` (or a store folder), opened with all
            its augmentations.
        out: the publish folder (the ``data/`` folder is created in it).
        base: the dataset the store was built from (or its adapter); needed for ``images`` and then
            checked against the store (keys, labels, and every image's digest).
        images: add the ``image`` column (original file bytes; PNG for array datasets).
        class_names: names for the ``label`` column (default: the dataset's class list when it fits).
        rows_per_group: rows per Parquet row group (default: about 64 MiB of data).
        rows_per_file: rows per file (default: about 512 MiB of data).
        overwrite: replace existing ``data/*.parquet`` files (otherwise they raise).
        progress: show a progress bar.

    Returns:
        The written files, in order.

    Raises:
        ReinforcementError: images requested for a dataset whose licence forbids it (ImageNet) or
            without ``base``; existing Parquet files without ``overwrite``.
        AlignmentError: ``base`` does not match the store (size, key, label or content of a sample).

    Example:
        >>> export_parquet(open_store("out/cifar100"), "out/cifar100", base=CIFAR100(root), images=True)
        [PosixPath('out/cifar100/data/train-00000-of-00001.parquet')]
    """
    store, adapter = _open_for_export(store, base, images)
    m = store.manifest
    check_int(rows_per_group, "rows_per_group", low=1, optional=True)
    check_int(rows_per_file, "rows_per_file", low=1, optional=True)
    data_dir = Path(out) / _DATA_DIR
    existing = sorted(data_dir.glob("*.parquet")) if data_dir.is_dir() else []
    if existing and not overwrite:
        raise ArgumentError(f"{data_dir} already holds {len(existing)} Parquet file(s) ({existing[0].name}, ...); "
                            "pass overwrite=True (--overwrite) to replace them or export to another folder")
    if class_names is None and adapter is not None and adapter.classes and len(adapter.classes) == m.num_classes:
        class_names = [str(c) for c in adapter.classes]
    schema = parquet_features(m, image=images, class_names=class_names).arrow_schema
    n = m.num_samples
    probe = [len(_image_cell(adapter, i, store.content_hashes[i], store.root)[0]) for i in range(min(n, 16))] \
        if images else [0]
    row_bytes = _row_bytes(m, float(np.mean(probe)))
    rpg = int(rows_per_group or max(1, min(n, _ROW_GROUP_BYTES // row_bytes)))
    rpf = int(rows_per_file or max(rpg, (_FILE_BYTES // row_bytes) // rpg * rpg))
    num_files = math.ceil(n / rpf)
    from tqdm.auto import tqdm

    bar = tqdm(total=n, desc=f"parquet {m.dataset}/{m.split}", unit="sample", disable=not progress)
    for old in existing:
        old.unlink()

    def tables(f0: int, f1: int):
        for s in range(f0, f1, rpg):
            yield _chunk_table(store, adapter, schema, s, min(f1, s + rpg), images)
            bar.update(min(f1, s + rpg) - s)

    written = []
    with bar:
        for k in range(num_files):
            f0, f1 = k * rpf, min(n, (k + 1) * rpf)
            path = Path(out) / parquet_filename(m.split, k, num_files)
            _write_table_file(path, schema, lambda f0=f0, f1=f1: tables(f0, f1), rpg)
            written.append(path)
    return written


def check_parquet(folder: str | os.PathLike, manifest) -> list[str]:
    """Check a folder's Parquet export against its store's manifest; return the files (relative paths).

    Checks: ``data/{split}-XXXXX-of-NNNNN.parquet`` files numbered ``0 .. N-1`` with nothing missing,
    the ``datasets`` features in the schema metadata and the columns they declare, the rows
    (``index`` is ``0 .. num_samples - 1`` in order), the per-augmentation columns sized for the
    manifest, and no ``image`` column for ImageNet.

    Raises:
        StoreError: anything missing or inconsistent (the message names the file and the fix).
        ReinforcementError: ImageNet rows carry images.
    """
    import pyarrow.parquet as pq
    from datasets import Features

    folder = Path(folder)
    files = sorted((folder / _DATA_DIR).glob("*.parquet")) if (folder / _DATA_DIR).is_dir() else []
    if not files:
        raise StoreError(f"{folder / _DATA_DIR}: no Parquet files; run builders/export.py on the folder first")
    counts = set()
    for p in files:
        mt = _NAME_RE.match(p.name)
        if mt is None or mt["split"] != manifest.split:
            raise StoreError(f"{p}: unexpected Parquet file name; expected "
                             f"'{manifest.split}-XXXXX-of-NNNNN.parquet': remove it or re-run builders/export.py "
                             "with --overwrite")
        counts.add(int(mt["n"]))
    if len(counts) != 1 or [p.name for p in files] != [Path(parquet_filename(manifest.split, k, len(files))).name
                                                        for k in range(len(files))]:
        raise StoreError(f"{folder / _DATA_DIR}: Parquet files {[p.name for p in files]} are not one complete "
                         "numbered set (a file is missing or left over from an older export); re-run "
                         "builders/export.py with --overwrite")
    want = parquet_features(manifest, image=False)
    next_index = 0
    for p in files:
        pf = pq.ParquetFile(p)
        meta = pf.schema_arrow.metadata or {}
        try:
            features = Features.from_dict(json.loads(meta[b"huggingface"])["info"]["features"])
        except (KeyError, ValueError, TypeError) as e:
            raise StoreError(f"{p}: no 'datasets' features in the schema metadata ({e}); re-run builders/export.py "
                             "--overwrite") from e
        if "image" in features and images_forbidden(manifest.dataset):
            raise ReinforcementError(f"{p}: carries an 'image' column for {manifest.dataset!r}, whose licence forbids "
                                     "redistributing the images; re-export without images")
        for name, feat in want.items():
            if name == "label":
                ok = name in features and getattr(features[name], "num_classes", None) == manifest.num_classes
            else:
                ok = name in features and features[name] == feat
            if not ok:
                raise StoreError(f"{p}: column {name!r} is {features.get(name)!r}, expected {feat!r} for this store "
                                 f"(num_augmentations={manifest.num_augmentations}, topk={manifest.topk}); "
                                 "the export is from another build: re-run builders/export.py --overwrite")
        if pf.schema_arrow.names != list(features):
            raise StoreError(f"{p}: columns {pf.schema_arrow.names} differ from the declared features "
                             f"{list(features)}; re-run builders/export.py --overwrite")
        index = pf.read(columns=["index"]).column("index").to_numpy()
        if not np.array_equal(index, np.arange(next_index, next_index + index.size)):
            raise StoreError(f"{p}: rows do not continue the sample order at index {next_index}; "
                             "re-run builders/export.py --overwrite")
        next_index += index.size
    if next_index != manifest.num_samples:
        raise StoreError(f"{folder / _DATA_DIR}: {next_index} rows for {manifest.num_samples} samples; "
                         "re-run builders/export.py --overwrite")
    return [p.relative_to(folder).as_posix() for p in files]


def _column(table, name: str, shape: Sequence[int]) -> np.ndarray:
    """A nested fixed-size list column as one numpy array ``[rows, *shape]``."""
    arr = table.column(name).combine_chunks()
    for _ in shape:
        arr = arr.flatten()
    return arr.to_numpy(zero_copy_only=False).reshape(len(table), *shape)


def _check_rows(path: Path, table, identity, problems: list[str]) -> tuple[int, int]:
    """Every row's checksum (and, where the row carries its file, the file's digest); returns (rows, images) checked."""
    from ..identity import digest_bytes

    m = identity.manifest
    a, k = m.num_augmentations, m.topk
    index = table.column("index").to_numpy()
    params = {f.name: _column(table, f.name, (a, *f.shape)) for f in m.param_fields}
    ids, probs = _column(table, "topk_ids", (a, k)), _column(table, "topk_probs", (a, k))
    sums = table.column("checksum").to_pylist()
    bad = [int(i) for r, i in enumerate(index)
           if sums[r] != row_checksum(m.build_id, int(i), m.param_fields, {n: v[r] for n, v in params.items()},
                                      ids[r], probs[r])]
    if bad:
        problems.append(f"{path}: {len(bad)} row(s) fail their checksum (records edited or corrupted, or rows of "
                        f"another store): samples {bad[:10]}{' ...' if len(bad) > 10 else ''}; re-export the store "
                        "(builders/export.py --overwrite)")
    images = 0
    if "image" in table.column_names:
        cells = table.column("image").to_pylist()
        wrong = []
        for i, cell in zip(index, cells):
            if cell is not None and cell.get("bytes") is not None and cell.get("path") is not None:
                images += 1
                if not np.array_equal(digest_bytes(cell["bytes"]), identity.content_hashes[int(i)]):
                    wrong.append(int(i))
        if wrong:
            problems.append(f"{path}: the image bytes of {len(wrong)} row(s) differ from the files the store was "
                            f"built from (sha256): samples {wrong[:10]}{' ...' if len(wrong) > 10 else ''}; re-export "
                            "the store with --images from the original files")
    return len(table), images


def verify_parquet(folder: str | os.PathLike, identity) -> dict[str, Any]:
    """Check a folder's Parquet export in full: :func:`check_parquet`, then every page and every row.

    Reads every file with page checksums verified, and checks every row's checksum against its
    records under the store's build id and sample index, and the sha256 of every row's file bytes
    (rows that carry their file) against the samples file. ``imagenet-plus verify --full`` calls it.

    Args:
        folder: the exported folder (holding ``data/``).
        identity: the opened store (its manifest and samples file).

    Returns:
        ``{"files": [...], "rows_checked": int, "images_checked": int, "problems": [...]}``.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    out: dict[str, Any] = {"files": [], "rows_checked": 0, "images_checked": 0, "problems": []}
    try:
        out["files"] = check_parquet(folder, identity.manifest)
    except ReinforcementError as e:
        out["problems"].append(str(e))
        return out
    for rel in out["files"]:
        path = Path(folder) / rel
        try:
            table = pq.ParquetFile(path, page_checksum_verification=True).read()
        except (OSError, pa.ArrowException) as e:
            out["problems"].append(f"{path}: unreadable ({type(e).__name__}: {e}); the file is corrupt: re-export "
                                   "the store (builders/export.py --overwrite) or re-download the file")
            continue
        rows, images = _check_rows(path, table, identity, out["problems"])
        out["rows_checked"] += rows
        out["images_checked"] += images
    return out


def has_parquet(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds a Parquet export (``data/*.parquet``)."""
    data = Path(folder) / _DATA_DIR
    return data.is_dir() and any(data.glob("*.parquet"))
