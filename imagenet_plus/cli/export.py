"""``imagenet-plus export``: a store's Parquet export for Hugging Face ``datasets``, from the installed package.

Usage::

    imagenet-plus export STORE                          # STORE/data/{split}-XXXXX-of-NNNNN.parquet
    imagenet-plus export STORE --out PUB --data-root DATA --images

The export folder holds the store (hard links, or copies, when ``--out`` is another folder) and
``data/*.parquet``; ``datasets.load_dataset("parquet", data_files="PUB/data/*.parquet")`` reads it
with typed features, and :func:`imagenet_plus.hf.create_transform` replays its rows. The rows are
written by :func:`imagenet_plus.hf.export_parquet`. The dataset card of a published repo is the
maintainers' (``builders/export.py`` adds it, from ``hub_cards/``).
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

from .. import registry
from ..errors import ReinforcementError
from ..errors import EXIT_OK
from ._common import open_adapter, positive_int

__all__ = ["link_store", "export_store", "add_parser"]


def link_store(src: Path, dst: Path, manifest, overwrite: bool) -> None:
    """Hard-link (or copy) the store files of ``src`` into ``dst``; the manifest last.

    Raises:
        ReinforcementError: ``dst`` holds another store and ``overwrite`` is false.
    """
    existing = dst / "manifest.json"
    if existing.is_file() and existing.read_bytes() != (src / "manifest.json").read_bytes() and not overwrite:
        raise ReinforcementError(f"{dst} already holds another store (its manifest.json differs); pass "
                                 "--overwrite or export to an empty folder")
    for rel in [manifest.samples_file.file, *(s.file for s in manifest.shards), "manifest.json"]:
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            target.unlink()
        try:
            os.link(src / rel, target)
        except OSError:
            shutil.copy2(src / rel, target)


def export_store(store: str | os.PathLike, out: str | os.PathLike | None = None, *, base=None,
                 data_root: str | os.PathLike | None = None, dataset: str | None = None, split: str | None = None,
                 images: bool | None = None, rows_per_group: int | None = None, rows_per_file: int | None = None,
                 overwrite: bool = False, progress: bool = False) -> tuple[Path, list[Path]]:
    """Verify a store, link it into ``out`` (default: the store folder itself) and write its Parquet files.

    Args:
        store: the store folder.
        out: the export folder (default: ``store``, completed in place).
        base: the dataset the store was built from (default: opened from ``data_root`` when images are wanted).
        data_root, dataset, split: the user's copy of the data (defaults: the manifest's dataset and split).
        images: put the images in the Parquet (``None``: yes when they can be read, i.e. ``base`` or
            ``data_root`` is given or the dataset ships with a package, and the registry marks the
            dataset redistributable; never for ImageNet or an ImageFolder of unknown licence).
        rows_per_group, rows_per_file, overwrite, progress: see :func:`imagenet_plus.hf.export_parquet`.

    Returns:
        ``(export folder, Parquet files written)``.

    Raises:
        StoreError: the store fails its quick verification.
        ReinforcementError: images without a readable copy of the data, or an export folder holding another store.
        AlignmentError: the copy of the data does not match the store.
    """
    from ..hf import export_parquet
    from ..store import open_store, verify

    src = Path(store)
    manifest = verify(src).manifest
    dst = Path(out) if out is not None else src
    if dst.resolve() != src.resolve():
        link_store(src, dst, manifest, overwrite)
    info = registry.dataset_info(manifest.dataset) if manifest.dataset in registry.names() else None
    readable = base is not None or data_root is not None or (info is not None and not info.needs_root)
    if images is None:  # by default only where the registry says the licence allows it
        images = readable and info is not None and info.redistributable is True
    opened = open_store(dst)
    if images and base is None:
        if not readable:
            raise ReinforcementError(f"images for {manifest.dataset!r} need --data-root (the dataset the store was "
                                     "built from), or pass --no-images")
        where = argparse.Namespace(dataset=dataset, split=split, data_root=None if data_root is None
                                   else str(data_root))
        base = open_adapter(where, opened)
    files = export_parquet(opened, dst, base=base if images else None, images=bool(images),
                           rows_per_group=rows_per_group, rows_per_file=rows_per_file, overwrite=overwrite,
                           progress=progress)
    return dst, files


def run(args: argparse.Namespace) -> int:
    folder, files = export_store(args.store, args.out, data_root=args.data_root, dataset=args.dataset,
                                 split=args.split, images=args.images, rows_per_group=args.rows_per_group,
                                 rows_per_file=args.rows_per_file, overwrite=args.overwrite, progress=args.progress)
    size = sum(p.stat().st_size for p in files)
    print(f"exported {folder}: {len(files)} Parquet file(s) in {folder / 'data'} ({size:,} bytes); load them with "
          f"datasets.load_dataset(\"parquet\", data_files=\"{folder / 'data'}/*.parquet\")")
    return EXIT_OK


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="write a store's Parquet export for Hugging Face datasets",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("store", help="the store folder (holding manifest.json)")
    p.add_argument("--out", default=None, help="export folder (default: complete the store folder in place; "
                                               "another folder gets hard links or copies of the store files)")
    p.add_argument("--data-root", default=None, help="root of your copy of the base dataset, in torchvision's "
                                                     "layout (for the image column; not needed for digits)")
    p.add_argument("--dataset", default=None, help="dataset name of your copy (default: the manifest's)")
    p.add_argument("--split", default=None, help="dataset split of your copy (default: the manifest's)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--images", dest="images", action="store_true", default=None,
                   help="include the images (default: when --data-root is given and their licence allows it)")
    g.add_argument("--no-images", dest="images", action="store_false", help="leave the images out")
    p.add_argument("--rows-per-group", type=positive_int, default=None, help="Parquet rows per row group")
    p.add_argument("--rows-per-file", type=positive_int, default=None, help="Parquet rows per file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing Parquet export")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=run)

