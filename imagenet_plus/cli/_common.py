"""What the commands share: store resolution, opening the user's copy, the replay of one record."""

from __future__ import annotations

import argparse
from pathlib import Path


EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(Exception):
    """Bad command-line arguments detected after parsing (exit status 2)."""


def resolve_store(spec: str, *, revision: str | None = None, manifest_only: bool = False) -> Path:
    """A local store folder, or a Hub repo id (``org/name[@revision]``) resolved by :mod:`imagenet_plus.hub`.

    With ``manifest_only`` a Hub store fetches ``manifest.json`` alone and its path is returned.
    """
    p = Path(spec)
    if p.is_file() and p.name == "manifest.json":
        return p if manifest_only else p.parent
    if p.is_dir():
        return p
    from .. import hub

    if manifest_only:
        return Path(hub.resolve_manifest(spec, revision=revision))
    return Path(hub.resolve_reinforcements(spec, revision=revision))


def add_data_arguments(p: argparse.ArgumentParser) -> None:
    """``--data-root``, ``--dataset``, ``--split``, ``--check``: where the user's copy of the data is."""
    p.add_argument("--data-root", default=None,
                   help="root of your copy of the base dataset, in torchvision's layout (not needed for digits)")
    p.add_argument("--dataset", default=None,
                   help="dataset name (default: the manifest's): imagenet, cifar100, cifar10, flowers102, food101, "
                        "imagefolder, digits")
    p.add_argument("--split", default=None, help="dataset split (default: the manifest's)")
    p.add_argument("--check", default="exact", choices=("exact", "resized"),
                   help="identity check of your copy: exact (the build's files) or resized (a resized or "
                        "re-encoded copy); default exact")


def open_adapter(args: argparse.Namespace, store):
    """The adapter of the user's copy named by ``--dataset``/``--data-root``/``--split`` (manifest defaults)."""
    from ..adapters import create_adapter

    m = store.manifest
    dataset, split, root = args.dataset or m.dataset, args.split or m.split, args.data_root
    if root is not None and not Path(root).exists():
        raise FileNotFoundError(f"--data-root {root}: no such folder; point it to your copy of the {dataset} data")
    kwargs = {}
    if dataset == "digits":  # the decoded size is recorded per sample
        kwargs["image_size"] = int(store.image_sizes[0][0])
    elif root is None:
        raise UsageError(f"--data-root is required for dataset {dataset!r} (the folder holding your copy)")
    adapter = create_adapter(dataset, root, split, **kwargs)
    limit = m.extra.get("limit_samples")
    if limit is not None and int(limit) < len(adapter):
        from torch.utils.data import Subset

        from ..adapters import SubsetAdapter

        adapter = SubsetAdapter(Subset(adapter.dataset, range(int(limit))), adapter)
    return adapter


def open_replay(args: argparse.Namespace, store):
    """A :class:`~imagenet_plus.datasets.ReinforcedDataset` over the user's copy (checked), for exact replays."""
    from ..datasets import ReinforcedDataset

    return ReinforcedDataset(open_adapter(args, store), store, seed=0, p_original=0.0, check=args.check)


def _int_at_least(text: str, low: int, what: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a {what} integer, got {text!r}") from None
    if v < low:
        raise argparse.ArgumentTypeError(f"expected a {what} integer, got {v}")
    return v


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _int_at_least(text, 1, "positive")


def count(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _int_at_least(text, 0, "non-negative")
