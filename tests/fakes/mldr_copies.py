"""Users' copies of ml-dr's four datasets (torchvision's on-disk formats) with archives written over them.

:func:`make_copy` writes a small copy of a dataset's training split in its own torchvision
format (``tests/fakes/torchvision_data.py``) with every class ml-dr's teacher predicts (ImageNet
1000, CIFAR-100 100, Flowers-102 102, Food-101 101), so the store's class count is the dataset's.
:func:`write_archive_for` writes a fake of a published archive over that copy: ml-dr's sample
index ``k`` is the ``k``-th sample of torchvision's dataset (for ImageNet ``ImageFolder`` order),
and every RandomResizedCrop box is drawn for that sample's real image size.
"""

from __future__ import annotations

from pathlib import Path

from fakes.mldr_archive import PUBLISHED, FakeArchive, write_archive
from fakes.torchvision_data import make_cifar100, make_flowers102, make_food101, make_imagenet, skip_md5_checks


def make_copy(root: Path, dataset: str, n: int = 12) -> Path:
    """Write a copy of ``dataset``'s training split under ``root`` (ImageNet and Food-101: one image per class)."""
    if dataset == "imagenet":
        make_imagenet(root, classes=1000, n_per_class=1, n_val_per_class=0)
    elif dataset == "cifar100":
        make_cifar100(root, n_train=n, n_test=2)
    elif dataset == "flowers102":
        make_flowers102(root, 3 * n)
    else:
        make_food101(root, classes=101, n_per_class=1, n_test_per_class=0)
    return root


def open_copy(root: Path, dataset: str):
    """The training split's adapter (CIFAR and Flowers md5 checks patched to existence checks)."""
    from imagenet_plus.adapters import create_adapter

    with skip_md5_checks():
        return create_adapter(dataset, root, "train")


def mldr_sizes(adapter) -> list[tuple[int, int]]:
    """Each image's (H, W) in ml-dr's index order (torchvision's; for ImageNet, ImageFolder's sorted order)."""
    from PIL import Image

    keys = adapter.keys()
    order = sorted(range(len(keys)), key=lambda i: keys[i]) if adapter.name == "imagenet" else range(len(keys))
    out = []
    for i in order:
        path = adapter.path(i)
        if path is not None:
            with Image.open(path) as im:
                out.append((im.height, im.width))
        else:
            out.append(tuple(adapter.load(i).image.size[::-1]))
    return out


def write_archive_for(path: Path, name: str, adapter, *, ns: int = 3, form: str = "tar.gz", seed: int = 0,
                      **kwargs) -> FakeArchive:
    """A fake of published archive ``name`` whose records fit the images of ``adapter``'s copy."""
    dataset, _ = PUBLISHED[name]
    assert adapter.name == dataset, (adapter.name, dataset)
    return write_archive(path, name, sizes=mldr_sizes(adapter), ns=ns, form=form, seed=seed, **kwargs)


def pack_food_archive(root: Path) -> Path:
    """``root/food-101.tar.gz`` of the copy's ``food-101/`` folder, where torchvision's download leaves its archive."""
    import tarfile

    path = Path(root) / "food-101.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        tf.add(Path(root) / "food-101", arcname="food-101")
    return path


def reorder_copy(root: Path, dataset: str, seed: int = 0) -> None:
    """Rewrite the file that fixes the copy's training order, as a user's tool might re-save it.

    CIFAR-100: ``cifar-100-python/train`` with its rows (pixels, labels, names) permuted together;
    Flowers-102: ``setid.mat`` with ``trnid`` permuted; Food-101: ``meta/train.json`` re-saved with
    sorted keys. Every sample keeps its own label and image: only the order changes.
    """
    import json
    import pickle

    import numpy as np
    import scipy.io

    rng = np.random.default_rng(seed)
    root = Path(root)
    if dataset == "cifar100":
        path = root / "cifar-100-python" / "train"
        with open(path, "rb") as f:
            entry = pickle.load(f, encoding="latin1")  # CIFAR's upstream format (written by the fake itself)
        perm = rng.permutation(len(entry["data"]))
        for k in ("filenames", "fine_labels", "coarse_labels"):
            entry[k] = [entry[k][i] for i in perm]
        entry["data"] = entry["data"][perm]
        with open(path, "wb") as f:
            pickle.dump(entry, f, protocol=2)
    elif dataset == "flowers102":
        path = root / "flowers-102" / "setid.mat"
        sets = {k: v for k, v in scipy.io.loadmat(path).items() if not k.startswith("__")}
        sets["trnid"] = sets["trnid"][:, rng.permutation(sets["trnid"].shape[1])]
        scipy.io.savemat(path, sets)
    else:
        path = root / "food-101" / "meta" / "train.json"
        path.write_text(json.dumps(json.loads(path.read_text()), sort_keys=True))
