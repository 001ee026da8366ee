"""Hugging Face ``datasets`` interop: the Parquet export of a store and a replay transform.

The Parquet files (``data/{split}-XXXXX-of-XXXXX.parquet``) hold one row per
sample, in the store's sample order:

==============  ==============================================================
column          content
==============  ==============================================================
``index``       int64, the sample's position in the base dataset's order
``key``         string, the sample's key (relative path or ``"{split}/{i}"``)
``label``       ``ClassLabel`` (int64), the label recorded at build time
``image``       ``Image`` (optional): original file bytes, or PNG for array
                datasets; never for ImageNet, whose licence forbids it
one per param   ``List(List(..., length=s), length=A)``: the field's stored
field           values for every augmentation ``j < A`` (``A`` fixed lists)
``topk_ids``    int16/int32 ``[A, K]``: decoded teacher top-k class ids
``topk_probs``  float32 ``[A, K]``: decoded top-k probabilities (descending,
                summing to ``1 - tail``)
==============  ==============================================================

The ``datasets`` features are embedded in the Parquet schema metadata (the
``huggingface`` key, as ``datasets`` writes it), so ``datasets.load_dataset``
gives exactly these types. :func:`create_transform` turns such rows into
``{"pixel_values", "soft_target"}`` by replaying a stored augmentation with
the same :meth:`Policy.apply` the builder used.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import secrets
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from .errors import AlignmentError, PolicyError, ReinforcementError, StoreError

__all__ = [
    "NO_IMAGE_DATASETS",
    "parquet_features",
    "parquet_filename",
    "export_parquet",
    "check_parquet",
    "create_transform",
    "ReplayTransform",
]

#: Datasets whose licence forbids redistributing the images: their Parquet never carries pixels.
NO_IMAGE_DATASETS = frozenset({"imagenet", "imagenet1k", "imagenet-1k", "ilsvrc2012"})
#: Column names the export uses itself; a param field may not take one of them.
_RESERVED = ("index", "key", "label", "image", "topk_ids", "topk_probs")
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


def _nested(feature, shape: Sequence[int]):
    try:
        from datasets import List
    except ImportError:  # datasets < 4: fixed-length lists are Sequence(feature, length=n)
        from datasets import Sequence as List

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
        cols["image"] = Image()
    for f in manifest.param_fields:
        if f.name in _RESERVED:
            raise StoreError(f"param field {f.name!r} clashes with the fixed Parquet column of that name; "
                             f"rename the field in the policy (reserved: {', '.join(_RESERVED)})")
        cols[f.name] = _nested(Value(_value_dtype(f.dtype)), (a, *f.shape))
    cols["topk_ids"] = _nested(Value(_ids_dtype(manifest.num_classes)), (a, k))
    cols["topk_probs"] = _nested(Value("float32"), (a, k))
    return Features(cols)


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


def _png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _image_file(base, i: int) -> str | None:
    """Path of sample ``i``'s original file, for datasets that have files (else ``None``)."""
    from torch.utils.data import Subset
    from torchvision.datasets import DatasetFolder

    if isinstance(base, Subset):
        return _image_file(base.dataset, int(base.indices[i]))
    if isinstance(base, DatasetFolder):
        return str(base.samples[i][0])
    files = getattr(base, "_image_files", None)
    if files is not None:
        return str(files[i])
    return None


def _image_cell(base, i: int, key: str) -> tuple[bytes, str | None]:
    """``(bytes, path)`` of sample ``i``'s image cell: the original file, or a PNG of the decoded pixels."""
    from torch.utils.data import Subset
    from torchvision.datasets import CIFAR10

    from .identity import load_sample
    from .imageio import to_rgb_array

    path = _image_file(base, i)
    if path is not None:
        with open(path, "rb") as fh:
            return fh.read(), key
    inner, j = base, i
    while isinstance(inner, Subset):
        inner, j = inner.dataset, int(inner.indices[j])
    if isinstance(inner, CIFAR10):
        return _png(inner.data[j]), None
    return _png(to_rgb_array(load_sample(base, i)[0])), None


def _is_imagenet(base) -> bool:
    from torch.utils.data import Subset
    from torchvision.datasets import ImageNet

    while isinstance(base, Subset):
        base = base.dataset
    return isinstance(base, ImageNet)


def _decoded_hash(data: bytes) -> np.ndarray:
    """Content hash of image bytes decoded the way the ``datasets`` transform decodes them."""
    from PIL import Image

    from .imageio import to_rgb_array
    from .schema import content_hash

    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return content_hash(to_rgb_array(img))


def _check_base(base, store) -> None:
    from .identity import sample_keys, sample_labels

    n = len(store)
    if len(base) != n:
        raise AlignmentError(f"base dataset has {len(base)} samples but the store {store.root} has {n}; pass the "
                             f"split the store was built from ({store.manifest.dataset}/{store.manifest.split})")
    keys = sample_keys(base)
    for i, (a, b) in enumerate(zip(keys, store.keys)):
        if a != b:
            raise AlignmentError(f"sample {i} of the base dataset has key {a!r}, the store {store.root} records "
                                 f"{b!r}; the dataset copy is ordered differently or is another split")
    labels = sample_labels(base)
    bad = np.flatnonzero(labels != store.labels)
    if bad.size:
        i = int(bad[0])
        raise AlignmentError(f"sample {i} ({keys[i]!r}) has label {int(labels[i])} in the base dataset but "
                             f"{int(store.labels[i])} in the store {store.root}; the dataset copy does not match")


def _row_bytes(manifest, image_bytes: float) -> float:
    a, k = manifest.num_augmentations, manifest.topk
    ids = np.dtype(_ids_dtype(manifest.num_classes)).itemsize
    params = sum(f.nbytes for f in manifest.param_fields)
    return 64 + image_bytes + a * (params + k * (ids + 4))


def _write_table_file(path: Path, schema, tables: Callable, row_group_size: int) -> None:
    """Write the tables yielded by ``tables()`` to ``path`` via a temp file and a rename."""
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        kwargs = dict(compression="zstd", write_page_index=True)
        try:  # content-defined chunking (pyarrow >= 21) lets the Hub deduplicate re-uploads
            writer = pq.ParquetWriter(tmp, schema, use_content_defined_chunking=True, **kwargs)
        except TypeError:
            writer = pq.ParquetWriter(tmp, schema, **kwargs)
        with writer:
            for table in tables():
                writer.write_table(table, row_group_size=row_group_size)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def export_parquet(store, out: str | os.PathLike, *, base=None, images: bool = False,
                   class_names: Sequence[str] | None = None, rows_per_group: int | None = None,
                   rows_per_file: int | None = None, overwrite: bool = False, progress: bool = False) -> list[Path]:
    """Write the Parquet export of a store to ``out/data/{split}-XXXXX-of-XXXXX.parquet``.

    Args:
        store: a :class:`imagenet_plus.store.ReinforcementStore` (or a store folder), opened with all
            its augmentations.
        out: the publish folder (the ``data/`` folder is created in it).
        base: the torchvision-style dataset the store was built from; needed for ``images`` and then
            checked against the store (keys, labels, and every image's content hash).
        images: add the ``image`` column (original file bytes; PNG for array datasets).
        class_names: names for the ``label`` column (default: ``base.classes`` when it fits).
        rows_per_group: rows per Parquet row group (default: about 64 MiB of data).
        rows_per_file: rows per file (default: about 512 MiB of data).
        overwrite: replace existing ``data/*.parquet`` files (otherwise they raise).
        progress: show a progress bar.

    Returns:
        The written files, in order.

    Raises:
        ReinforcementError: images requested for ImageNet (its licence forbids redistribution) or
            without ``base``; existing Parquet files without ``overwrite``.
        AlignmentError: ``base`` does not match the store (size, key, label or pixels of a sample).

    Example:
        >>> export_parquet(open_store("out/cifar100"), "out/cifar100", base=CIFAR100(root), images=True)
        [PosixPath('out/cifar100/data/train-00000-of-00001.parquet')]
    """
    import pyarrow as pa

    from .store import ReinforcementStore, open_store

    if not isinstance(store, ReinforcementStore):
        store = open_store(store)
    m = store.manifest
    if store.num_augmentations != m.num_augmentations:
        raise StoreError(f"{store.root}: opened with num_augmentations={store.num_augmentations} of "
                         f"{m.num_augmentations}; the export covers every stored augmentation, open it with all")
    if images and (m.dataset.lower() in NO_IMAGE_DATASETS or _is_imagenet(base)):
        raise ReinforcementError(f"images=True for dataset {m.dataset!r}: ImageNet's terms of access forbid "
                                 "redistributing its images; export without images (the card tells users to "
                                 "bring their own copy)")
    if images and base is None:
        raise ReinforcementError("images=True needs base= (the dataset the store was built from) to read the "
                                 "images from")
    out = Path(out)
    data_dir = out / _DATA_DIR
    existing = sorted(data_dir.glob("*.parquet")) if data_dir.is_dir() else []
    if existing and not overwrite:
        raise ReinforcementError(f"{data_dir} already holds {len(existing)} Parquet file(s) ({existing[0].name}, ...); "
                                 "pass overwrite=True (--overwrite) to replace them or export to another folder")
    if base is not None:
        _check_base(base, store)
        if class_names is None:
            names = getattr(base, "classes", None)
            if names is not None and len(names) == m.num_classes:
                class_names = [str(c) for c in names]
    features = parquet_features(m, image=images, class_names=class_names)
    schema = features.arrow_schema
    n = m.num_samples
    image_estimate = 0.0
    if images:
        probe = [_image_cell(base, i, store.keys[i])[0] for i in range(min(n, 16))]
        image_estimate = float(np.mean([len(b) for b in probe]))
    for name, v in (("rows_per_group", rows_per_group), ("rows_per_file", rows_per_file)):
        if v is not None and (isinstance(v, bool) or int(v) != v or v < 1):
            raise ReinforcementError(f"{name}={v!r}: pass a positive integer or None (sized automatically)")
    row_bytes = _row_bytes(m, image_estimate)
    rpg = int(rows_per_group or max(1, min(n, _ROW_GROUP_BYTES // row_bytes)))
    rpf = int(rows_per_file or max(rpg, (_FILE_BYTES // row_bytes) // rpg * rpg))
    num_files = math.ceil(n / rpf)
    keys, labels, hashes = store.keys, store.labels, store.content_hashes
    param_fields = m.param_fields
    ids_type = pa.from_numpy_dtype(np.dtype(_ids_dtype(m.num_classes)))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc=f"parquet {m.dataset}/{m.split}", unit="sample")

    def chunk(s0: int, s1: int):
        idx = np.arange(s0, s1, dtype=np.int64)
        ii = np.repeat(idx, m.num_augmentations)
        jj = np.tile(np.arange(m.num_augmentations, dtype=np.int64), s1 - s0)
        params = store.params_batch(ii, jj)
        ids, probs = store.targets_batch(ii, jj)
        cols = {"index": pa.array(idx), "key": pa.array(keys[s0:s1], type=pa.string()),
                "label": pa.array(labels[s0:s1].astype(np.int64))}
        if images:
            cells = []
            for i in range(s0, s1):
                data, path = _image_cell(base, i, keys[i])
                if not np.array_equal(_decoded_hash(data), hashes[i]):
                    raise AlignmentError(f"sample {i} ({keys[i]!r}): the base dataset's image decodes to other "
                                         f"pixels than the store {store.root} was built from (content hash "
                                         "differs); export from the same copy of the data the builder read")
                cells.append((data, path))
            cols["image"] = pa.StructArray.from_arrays(
                [pa.array([c[0] for c in cells], type=pa.binary()), pa.array([c[1] for c in cells], type=pa.string())],
                names=["bytes", "path"])
        for f in param_fields:
            cols[f.name] = _fixed_list(params[f.name], (m.num_augmentations, *f.shape),
                                       pa.from_numpy_dtype(np.dtype(_value_dtype(f.dtype))))
        cols["topk_ids"] = _fixed_list(ids, (m.num_augmentations, m.topk), ids_type)
        cols["topk_probs"] = _fixed_list(probs, (m.num_augmentations, m.topk), pa.float32())
        if bar is not None:
            bar.update(s1 - s0)
        return pa.Table.from_arrays([cols[name] for name in schema.names], schema=schema)

    for old in existing:
        old.unlink()
    written = []
    try:
        for k in range(num_files):
            f0, f1 = k * rpf, min(n, (k + 1) * rpf)
            path = out / parquet_filename(m.split, k, num_files)
            _write_table_file(path, schema,
                              lambda f0=f0, f1=f1: (chunk(s, min(f1, s + rpg)) for s in range(f0, f1, rpg)), rpg)
            written.append(path)
    finally:
        if bar is not None:
            bar.close()
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
        if "image" in features and manifest.dataset.lower() in NO_IMAGE_DATASETS:
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


# ---------------------------------------------------------------------------------------------- transform
# The choice stream of imagenet_plus.datasets.ReinforcedDataset: with the same seed and epoch, both paths pick
# the same (is_original, j) per sample; originals' params come from the dataset module's own
# _original_params, so both draw the same augmentation (tests/test_hf.py checks the parity).
_STREAM_CHOICE = 101


class ReplayTransform:
    """A ``datasets`` transform replaying stored augmentations: rows -> ``pixel_values``, ``soft_target``.

    Build it with :func:`create_transform`. Called on a batch of rows (``dict`` of lists, as
    ``Dataset.with_transform`` passes them), it picks for each row's sample ``i`` and the current
    epoch, from counter-based draws on ``(seed, i, epoch)``, either a stored augmentation ``j``
    (uniform in ``[0, num_augmentations)``), replayed on the row's ``image`` with
    :meth:`Policy.apply` and paired with the teacher's densified top-k, or (with probability
    ``p_original``) the original image with the policy's ordinary random augmentation (drawn
    afresh, never mixed) and its one-hot label, as
    :class:`imagenet_plus.datasets.ReinforcedDataset` does. Call :meth:`set_epoch` each epoch.
    """

    def __init__(self, manifest, policy, *, spec=None, store=None, num_augmentations: int, seed: int,
                 p_original: float, densify: str, source: str, partners=None,
                 hub_kwargs: Mapping[str, Any] | None = None):
        self.manifest = manifest
        self.policy = policy
        self.num_augmentations = num_augmentations
        self.seed = int(seed)
        self.p_original = float(p_original)
        self.densify = densify
        self.source = source
        self.partners = partners
        self.epoch = 0
        self._spec = spec
        self._store = store
        self._hub_kwargs = dict(hub_kwargs or {})

    def __repr__(self) -> str:
        m = self.manifest
        return (f"ReplayTransform(dataset={m.dataset!r}, policy={self.policy.name!r}, "
                f"num_augmentations={self.num_augmentations}, p_original={self.p_original}, seed={self.seed}, "
                f"source={self.source!r}, densify={self.densify!r})")

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch the draws depend on (call it before each epoch's DataLoader iterator)."""
        self.epoch = int(epoch)

    def choose(self, i: int, epoch: int | None = None) -> tuple[bool, int]:
        """``(is_original, j)`` for sample ``i`` in ``epoch`` (default the current one)."""
        from . import _rng

        e = self.epoch if epoch is None else int(epoch)
        u = _rng.uniforms(self.seed, int(i), e, 2, stream=_STREAM_CHOICE)
        na = self.num_augmentations
        return bool(u[0] < self.p_original), min(int(u[1] * na), na - 1)

    # -- pieces ---------------------------------------------------------------------------------------
    @property
    def store(self):
        """The store (opened on first use when params or targets come from it)."""
        if self._store is None:
            from .hub import resolve_reinforcements
            from .store import open_store

            path = resolve_reinforcements(self._spec, self.num_augmentations, **self._hub_kwargs)
            self._store = open_store(path, num_augmentations=self.num_augmentations)
        return self._store

    def _use_rows(self, row: Mapping[str, Any]) -> bool:
        if self.source == "row":
            return True
        if self.source == "store":
            return False
        return all(f.name in row for f in self.manifest.param_fields) and "topk_ids" in row and "topk_probs" in row

    def _record(self, row: Mapping[str, Any], i: int, j: int):
        """``(params, topk_ids, topk_probs)`` of record ``(i, j)`` from the row or the store."""
        m = self.manifest
        if self._use_rows(row):
            missing = [c for c in [f.name for f in m.param_fields] + ["topk_ids", "topk_probs"] if c not in row]
            if missing:
                raise StoreError(f"row {i} has no column(s) {missing}; load the Parquet export with all its columns "
                                 "or create the transform with source='store'")
            params = {f.name: np.asarray(row[f.name][j], dtype=np.dtype(f.dtype)).reshape(f.shape)
                      for f in m.param_fields}
            return params, np.asarray(row["topk_ids"][j], dtype=np.int64), \
                np.asarray(row["topk_probs"][j], dtype=np.float32)
        store = self.store
        if "key" in row and row["key"] != store.keys[i]:
            raise AlignmentError(f"row {i} has key {row['key']!r} but the store {store.root} records "
                                 f"{store.keys[i]!r} at that index; the rows and the store are from different builds")
        ids, probs = store.targets(i, j)
        return store.params(i, j), ids, probs

    def _partner(self, p: int, j: int):
        if self.partners is None:
            raise PolicyError(f"policy {self.policy.name!r} mixes images: the record mixes with sample {p}; pass "
                              "partners= (the dataset without transform, e.g. load_dataset(...)) to "
                              "create_transform so the partner's image can be read")
        prow = self.partners[int(p)]
        if int(prow["index"]) != int(p):
            raise AlignmentError(f"partners[{p}] has index {prow['index']}; pass the full dataset, unshuffled and "
                                 "unfiltered, as partners=")
        params, _, _ = self._record(prow, int(p), j)
        return prow["image"], params

    def _check_row(self, row: Mapping[str, Any]) -> tuple[int, Any]:
        m = self.manifest
        if "index" not in row:
            raise StoreError("row has no 'index' column; load the Parquet export of the store (or keep the "
                             "'index' column when selecting columns)")
        i = int(row["index"])
        if not 0 <= i < m.num_samples:
            raise AlignmentError(f"row index {i} is outside the store's {m.num_samples} samples "
                                 f"({m.dataset}/{m.split}); the rows and the store are from different builds")
        image = row.get("image")
        if image is None:
            hint = (" ImageNet+ rows carry no pixels (licence): add your own copy's images as an 'image' column "
                    "(match rows by 'key')" if m.dataset.lower() in NO_IMAGE_DATASETS else "")
            raise StoreError(f"row {i} has no 'image'; the transform replays augmentations on the row's image.{hint}")
        return i, image

    def replay(self, row: Mapping[str, Any], j: int) -> dict[str, torch.Tensor]:
        """Replay stored augmentation ``j`` of one row (a ``dict`` of column values).

        Returns:
            ``{"pixel_values": float32 [3, S, S], "soft_target": float32 [C]}``.
        """
        from .targets import densify

        i, image = self._check_row(row)
        if not 0 <= j < self.num_augmentations:
            raise IndexError(f"augmentation {j} outside [0, {self.num_augmentations})")
        params, ids, probs = self._record(row, i, j)
        partner_image = partner_params = None
        if self.policy.uses_mix and "mix_kind" in params and int(params["mix_kind"]) != 0:
            partner_image, partner_params = self._partner(int(params["mix_partner"]), j)
        pixels = self.policy.apply(image, params, partner_image, partner_params)
        target = torch.from_numpy(densify(np.asarray(ids), np.asarray(probs, dtype=np.float32),
                                          self.manifest.num_classes, self.densify))
        return {"pixel_values": self.policy.normalize(pixels), "soft_target": target}

    def original(self, row: Mapping[str, Any], epoch: int | None = None) -> dict[str, torch.Tensor]:
        """The original image of one row, freshly augmented by the policy (never mixed), with its one-hot label.

        The params are drawn exactly as :class:`imagenet_plus.datasets.ReinforcedDataset` draws
        them (crop, flip, RandAugment, erasing from ``Policy.sample`` on the original-image stream,
        mixing off) and replayed with :meth:`Policy.apply`.
        """
        from .datasets import _original_params
        from .imageio import to_rgb_image
        from .targets import one_hot

        i, image = self._check_row(row)
        if "label" not in row:
            raise StoreError(f"row {i} has no 'label'; original images (p_original > 0) are paired with it")
        image = to_rgb_image(image)
        e = self.epoch if epoch is None else int(epoch)
        params = _original_params(self.policy, self.seed, i, e, image.height, image.width, self.manifest.num_samples)
        pixels = self.policy.apply(image, params)
        target = one_hot(torch.tensor(int(row["label"])), self.manifest.num_classes)
        return {"pixel_values": self.policy.normalize(pixels), "soft_target": target}

    def item(self, row: Mapping[str, Any], epoch: int | None = None) -> dict[str, torch.Tensor]:
        """The training item of one row in ``epoch``: a replayed augmentation or, rarely, the original."""
        original, j = self.choose(int(row["index"]) if "index" in row else -1, epoch)
        return self.original(row, epoch) if original else self.replay(row, j)

    def __call__(self, batch: Mapping[str, list]) -> dict[str, list]:
        if "index" not in batch:
            raise StoreError("rows have no 'index' column; load the Parquet export of the store")
        out: dict[str, list] = {"pixel_values": [], "soft_target": []}
        for b in range(len(batch["index"])):
            r = self.item({name: values[b] for name, values in batch.items()})
            out["pixel_values"].append(r["pixel_values"])
            out["soft_target"].append(r["soft_target"])
        return out


def create_transform(reinforcements, policy=None, num_augmentations: int | None = None, seed: int | None = None,
                     densify: str = "smooth", *, p_original: float = 0.0, source: str = "auto", partners=None,
                     revision: str | None = None,
                     cache_dir: str | os.PathLike | None = None, local_files_only: bool | None = None
                     ) -> ReplayTransform:
    """A transform for ``datasets.Dataset.with_transform`` that replays the stored augmentations.

    Args:
        reinforcements: the store: an open :class:`~imagenet_plus.store.ReinforcementStore`, a folder,
            or a Hub spec (``"org/name[@revision]"`` or a dataset name, see
            :func:`imagenet_plus.hub.resolve_reinforcements`). With rows from the Parquet export only
            its ``manifest.json`` is read; the shards are fetched only for ``source="store"``.
        policy: the augmentation policy (default: rebuilt from the manifest). A policy passed here
            must declare the stored param fields.
        num_augmentations: draw ``j`` from the first ``num_augmentations`` augmentations (default all).
        seed: seed of the per-epoch choices (``None``: drawn once, see ``transform.seed``). Draws
            depend only on ``(seed, sample index, epoch)``, never on worker count or access order.
        densify: ``"smooth"`` (spread the tail mass over the other classes) or ``"none"``.
        p_original: probability of the original image with the policy's ordinary random
            augmentation (drawn afresh, never mixed) and its one-hot label (the paper trains with
            0.01; default 0, replay only).
        source: where params and targets come from: ``"row"`` (the Parquet columns), ``"store"``
            (the safetensors shards, by the row's ``index``) or ``"auto"`` (the row when it has them).
        partners: mixing policies only: the dataset (un-transformed) to read partner images from.
        revision, cache_dir, local_files_only: Hub options, as in ``resolve_reinforcements``.

    Returns:
        A :class:`ReplayTransform`: rows -> ``{"pixel_values": float32 [3, S, S], "soft_target": float32 [C]}``.

    Raises:
        StoreError: the store cannot be found or read.
        PolicyError: ``policy`` does not declare the stored fields.

    Example:
        >>> ds = load_dataset("imagenet-plus/cifar100-plus", split="train")
        >>> ds = ds.with_transform(create_transform("imagenet-plus/cifar100-plus", seed=0))
        >>> ds[0]["pixel_values"].shape, ds[0]["soft_target"].shape
        (torch.Size([3, 224, 224]), torch.Size([100]))
    """
    from .augment import create_policy
    from .store import Manifest, ReinforcementStore

    if source not in ("auto", "row", "store"):
        raise ReinforcementError(f"Unknown value {source!r} for argument source. Valid values are "
                                 "{auto, row, store}.")
    if densify not in ("smooth", "none"):
        raise ReinforcementError(f"Unknown value {densify!r} for argument densify. Valid values are {{smooth, none}}.")
    if isinstance(p_original, bool) or not isinstance(p_original, (int, float)) or not 0 <= p_original <= 1:
        raise ReinforcementError(f"p_original must be a probability in [0, 1], got {p_original!r}")
    if seed is None:
        seed = secrets.randbits(63)
    hub_kwargs = {"revision": revision, "cache_dir": cache_dir, "local_files_only": local_files_only}
    store = spec = None
    if isinstance(reinforcements, ReinforcementStore):
        store = reinforcements
        manifest = store.manifest
        available = store.num_augmentations
    else:
        spec = reinforcements
        manifest = Manifest.load(_manifest_path(reinforcements, **hub_kwargs))
        available = manifest.num_augmentations
    if num_augmentations is None:
        num_augmentations = available
    if isinstance(num_augmentations, bool) or int(num_augmentations) != num_augmentations \
            or not 1 <= num_augmentations <= available:
        raise StoreError(f"num_augmentations={num_augmentations!r}: the store provides {available} augmentations "
                         f"per sample; pass an integer in [1, {available}] or None")
    if policy is None:
        pol = create_policy(manifest.policy)
    else:
        pol = create_policy(policy)
        want = [(f.name, np.dtype(f.dtype), tuple(f.shape)) for f in manifest.param_fields]
        got = [(f.name, np.dtype(f.dtype), tuple(f.shape)) for f in pol.fields]
        if want != got:
            raise PolicyError(f"policy {pol.name!r} declares fields {[g[0] for g in got]} but the store was built "
                              f"with {[w[0] for w in want]} (policy {manifest.policy.get('name')!r}); pass "
                              "policy=None to replay with the store's own policy")
    return ReplayTransform(manifest, pol, spec=spec, store=store, num_augmentations=int(num_augmentations),
                           seed=seed, p_original=p_original, densify=densify, source=source, partners=partners,
                           hub_kwargs=hub_kwargs)


def _manifest_path(spec, *, revision, cache_dir, local_files_only) -> Path:
    """``manifest.json`` of a store spec (a folder, or downloaded alone from the Hub)."""
    from .hub import resolve_manifest

    return resolve_manifest(spec, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only)
