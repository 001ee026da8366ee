"""import-ml-dr over a copy listed in another order than torchvision's: refused where the copy offers
evidence of torchvision's order (torchvision's md5 of the split files, Food-101's archive), said loudly
where it offers none. Real files: each dataset's torchvision format (tests/fakes), re-saved in another
order the way a user's tool might, and archives of the published formats written over the original."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torchvision.datasets as tvd

from fakes.mldr_copies import make_copy, open_copy, pack_food_archive, reorder_copy, write_archive_for
from imagenet_plus.errors import AlignmentError
from imagenet_plus.mldr import import_mldr
from imagenet_plus.store import open_store

ARCHIVES = {"cifar100": "cifar100", "flowers102": "flowers_102", "food101": "food_101"}


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _publish(monkeypatch, root: Path, dataset: str) -> None:
    """Make torchvision's published md5s those of this copy's (original) files, as if it were the real one."""
    if dataset == "cifar100":
        monkeypatch.setattr(tvd.CIFAR100, "train_list", [["train", _md5(root / "cifar-100-python" / "train")]])
    elif dataset == "flowers102":
        files = dict(tvd.Flowers102._file_dict)
        for k in ("label", "setid"):
            name = files[k][0]
            files[k] = (name, _md5(root / "flowers-102" / name))
        monkeypatch.setattr(tvd.Flowers102, "_file_dict", files)
    else:
        monkeypatch.setattr(tvd.Food101, "_MD5", _md5(pack_food_archive(root)))


def _import(fa, out: Path, dataset: str, adapter):
    return import_mldr(fa.path, out, dataset=dataset, adapter=adapter, workers=0, progress=False,
                       augs_per_shard=2, samples_per_shard=40)


@pytest.mark.parametrize("dataset", sorted(ARCHIVES))
def test_a_copy_in_another_order_is_refused(tmp_path, monkeypatch, dataset):
    """It used to import: for CIFAR-100 (all images 32x32) every sample silently got another one's records."""
    root = make_copy(tmp_path / dataset, dataset)
    _publish(monkeypatch, root, dataset)
    fa = write_archive_for(tmp_path / "a.tar.gz", ARCHIVES[dataset], open_copy(root, dataset), ns=2)
    reorder_copy(root, dataset)
    shuffled = open_copy(root, dataset)  # torchvision's own md5 check patched, as a user-made adapter skips it
    split = {"cifar100": "cifar-100-python/train", "flowers102": "setid.mat", "food101": "meta/train.json"}[dataset]
    with pytest.raises(AlignmentError, match=rf"{split}.*(torchvision's|other samples)"):
        _import(fa, tmp_path / "bad", dataset, shuffled)
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("dataset", sorted(ARCHIVES))
def test_torchvisions_files_verify_the_order(tmp_path, monkeypatch, dataset):
    root = make_copy(tmp_path / dataset, dataset)
    _publish(monkeypatch, root, dataset)
    fa = write_archive_for(tmp_path / "a.tar.gz", ARCHIVES[dataset], open_copy(root, dataset), ns=2)
    r = _import(fa, tmp_path / "ok", dataset, open_copy(root, dataset))
    order = open_store(r.out).manifest.reports["import"]["order"]
    assert order["status"] == "verified" and "torchvision" in order["evidence"], order
    assert "UNVERIFIED" not in r.summary() and "sample order verified" in r.summary()


def test_food_without_its_archive_imports_and_says_the_order_is_unverified(tmp_path, capsys):
    root = make_copy(tmp_path / "food", "food101")
    fa = write_archive_for(tmp_path / "a.tar.gz", "food_101", open_copy(root, "food101"), ns=2)
    # torchvision's download leaves food-101.tar.gz in the root; without it nothing can tell the order: said loudly
    r = import_mldr(fa.path, tmp_path / "out", dataset="food101", adapter=open_copy(root, "food101"), workers=0,
                    progress=True, augs_per_shard=2, samples_per_shard=40)
    order = open_store(r.out).manifest.reports["import"]["order"]
    assert order["status"] == "unverified" and "food-101.tar.gz" in order["evidence"], order
    assert "order of your copy's samples is UNVERIFIED" in r.summary()
    assert "WARNING: the order of your copy's samples is UNVERIFIED" in capsys.readouterr().err


def test_an_archive_that_is_not_torchvisions_is_no_evidence(tmp_path):
    root = make_copy(tmp_path / "food", "food101")
    pack_food_archive(root)  # its md5 is not torchvision's
    fa = write_archive_for(tmp_path / "a.tar.gz", "food_101", open_copy(root, "food101"), ns=2)
    r = _import(fa, tmp_path / "out", "food101", open_copy(root, "food101"))
    order = open_store(r.out).manifest.reports["import"]["order"]
    assert order["status"] == "unverified" and "not torchvision's archive" in order["evidence"], order


def test_imagenet_order_is_derived_from_the_file_names(tmp_path):
    root = make_copy(tmp_path / "imagenet", "imagenet")
    adapter = open_copy(root, "imagenet")
    fa = write_archive_for(tmp_path / "a.tar", "imagenet_plus_rrc", adapter, ns=1, form="tar")
    r = import_mldr(fa.path, tmp_path / "out", dataset="imagenet", adapter=adapter, workers=0, progress=False,
                    augs_per_shard=1, samples_per_shard=1000)
    assert open_store(r.out).manifest.reports["import"]["order"]["status"] == "derived"
    assert "UNVERIFIED" not in r.summary()
