"""Evidence that the user's copy lists its samples in torchvision's order, the order ml-dr's indices refer to.

ml-dr's archives name samples by index only. The crop-fits-the-image check of
:class:`~imagenet_plus.mldr._convert.Converter` catches another copy only where image sizes differ
(never for CIFAR-100, whose images are all 32x32; rarely for Food-101, whose images share a few
sizes), so the order of the copy is checked here, up front, with whatever evidence it offers:

==========  ===============================================================================
dataset     evidence
==========  ===============================================================================
ImageNet    none needed: ml-dr's order (``ImageFolder``'s sort) is recomputed from the file names
CIFAR-100   the md5 of ``cifar-100-python/train`` (the pixel rows in order) against torchvision's
Flowers-102 the md5 of ``imagelabels.mat`` and ``setid.mat`` (``trnid`` lists the training images in
            order) against torchvision's
Food-101    torchvision publishes no md5 of ``meta/train.json`` (whose class order is the sample
            order), only of the archive ``food-101.tar.gz``: when that archive sits in the root
            (where torchvision's download leaves it) and has torchvision's md5, the copy's
            ``meta/train.json`` must equal the archive's
==========  ===============================================================================

A copy that contradicts the evidence (another md5, another ``meta/train.json``) is refused: ml-dr's
records would land on other samples. Where there is no evidence (Food-101 without its archive, an
adapter not backed by torchvision's files) the import goes on, and says so in its summary and in
``manifest.reports["import"]["order"]``.
"""

from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path

from ..errors import AlignmentError

__all__ = ["check_order", "order_warning"]

_CHUNK = 1 << 20
_FOOD_ARCHIVE = "food-101.tar.gz"
_FOOD_SPLIT = "meta/train.json"


def _md5_ok(module: str, path: Path, md5: str) -> bool:
    """torchvision's own md5 check of ``path`` (the dataset module's ``check_integrity``)."""
    import importlib

    return bool(importlib.import_module(f"torchvision.datasets.{module}").check_integrity(str(path), md5))


def _refuse(path: Path, dataset: str, fix: str) -> AlignmentError:
    return AlignmentError(f"{path}: its md5 is not torchvision's, so your copy of {dataset} may list its samples "
                          f"in another order than the one ml-dr's indices refer to, and the import would give "
                          f"samples other samples' records; {fix}")


def _cifar(ds) -> dict:
    name, md5 = type(ds).train_list[0]
    path = Path(ds.root) / type(ds).base_folder / name
    if not _md5_ok("cifar", path, md5):
        raise _refuse(path, "CIFAR-100", "restore torchvision's file (download=True writes it) and import again")
    return {"status": "verified", "evidence": f"md5 of {path.name} is torchvision's ({md5})"}


def _flowers(ds) -> dict:
    files = [type(ds)._file_dict[k] for k in ("label", "setid")]
    for name, md5 in files:
        path = Path(ds._base_folder) / name
        if not _md5_ok("flowers102", path, md5):
            raise _refuse(path, "Flowers-102", "restore torchvision's imagelabels.mat and setid.mat and import again")
    return {"status": "verified", "evidence": "md5 of " + " and ".join(f"{n} ({m})" for n, m in files)
            + " are torchvision's"}


class _Md5Reader:
    """A file object that hashes what is read through it."""

    def __init__(self, f):
        self.f, self.md5 = f, hashlib.md5()

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.md5.update(data)
        return data

    def drain(self) -> str:
        while self.read(_CHUNK):
            pass
        return self.md5.hexdigest()


def _archive_split(path: Path) -> tuple[str, bytes | None]:
    """``(md5 of the archive, its meta/train.json or None)``, in one streaming pass."""
    found = None
    with open(path, "rb") as f:
        reader = _Md5Reader(f)
        try:
            with tarfile.open(fileobj=reader, mode="r|gz") as tf:
                for m in tf:
                    if found is None and m.isfile() and m.name.endswith("/" + _FOOD_SPLIT):
                        found = tf.extractfile(m).read()
        except (tarfile.TarError, OSError, EOFError):
            pass  # not a readable archive: its md5 (of the bytes read so far, then the rest) will not match
        return reader.drain(), found


def _food(ds) -> dict:
    split = Path(ds._meta_folder) / "train.json"
    archive = Path(ds.root) / _FOOD_ARCHIVE
    no_checksum = (f"torchvision publishes no md5 of {_FOOD_SPLIT}, whose class order is the sample order "
                   f"ml-dr indexes (a copy re-saved with sorted keys gives every class another class's records)")
    if not archive.is_file():
        return {"status": "unverified", "evidence": f"{no_checksum}, and {archive} (torchvision's download, "
                f"which has one) is not there: keep {_FOOD_ARCHIVE} in the root to have the order checked"}
    md5, inside = _archive_split(archive)
    want = type(ds)._MD5
    if md5 != want:
        return {"status": "unverified", "evidence": f"{no_checksum}, and {archive} is not torchvision's archive "
                f"(md5 {md5}, torchvision's {want})"}
    if inside is None or inside != split.read_bytes():
        raise AlignmentError(f"{split} differs from the one in {archive} (torchvision's archive, md5 {want}): its "
                             "order of classes or images is not torchvision's, so ml-dr's records would land on other "
                             f"samples; restore {_FOOD_SPLIT} from the archive and import again")
    return {"status": "verified", "evidence": f"{split.name} equals the one in {archive.name}, whose md5 is "
            f"torchvision's ({want})"}


def check_order(adapter, dataset: str) -> dict:
    """The evidence that ``adapter`` lists its samples in torchvision's order (see the module docstring).

    Returns:
        ``{"status": "verified" | "derived" | "unverified", "evidence": "..."}`` (for the manifest's report).

    Raises:
        AlignmentError: the copy contradicts torchvision's order (the file named, with the fix).
    """
    if dataset == "imagenet":
        return {"status": "derived", "evidence": "ml-dr's order (ImageFolder's sorted class folders and files) is "
                "recomputed from the file names, whatever order your copy lists them in"}
    import torchvision.datasets as tvd

    ds = getattr(adapter, "dataset", None)
    checks = {"cifar100": (tvd.CIFAR100, _cifar), "flowers102": (tvd.Flowers102, _flowers),
              "food101": (tvd.Food101, _food)}
    cls, check = checks[dataset]
    if type(ds) is not cls:
        return {"status": "unverified", "evidence": f"the copy is not torchvision's {cls.__name__} over its own "
                f"files ({type(ds).__name__}), so nothing shows that it lists its samples in torchvision's order"}
    return check(ds)


def order_warning(order: dict) -> str | None:
    """The warning an import without evidence of its copy's order prints (``None`` when there is evidence)."""
    if order.get("status") != "unverified":
        return None
    return (f"the order of your copy's samples is UNVERIFIED: {order.get('evidence')}. If your copy lists its "
            "samples in another order than torchvision's, every record belongs to another sample and nothing "
            "else will tell; use an unmodified copy as torchvision downloads it")

