"""What the commands share: store resolution, opening the user's copy, the replay of one record."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import registry


class UsageError(Exception):
    """Bad command-line arguments detected after parsing (exit status 2)."""


def resolve_store(spec: str, *, revision: str | None = None, manifest_only: bool = False) -> Path:
    """A store folder, its ``manifest.json``, or a Hub repo id (``org/name[@revision]``): :func:`hub.resolve_store`.

    A local folder is returned as it is (``verify`` checks and reports its files itself). With
    ``manifest_only`` only ``manifest.json`` is fetched, and its path is returned.
    """
    from .. import hub

    folder = hub.resolve_store(spec, files="manifest" if manifest_only else "records", check_local=manifest_only,
                               revision=revision)
    return folder / "manifest.json" if manifest_only else folder


def add_data_arguments(p: argparse.ArgumentParser) -> None:
    """``--data-root``, ``--dataset``, ``--split``, ``--check``: where the user's copy of the data is."""
    rootless = ", ".join(i.name for i in registry.infos() if not i.needs_root)
    p.add_argument("--data-root", default=None,
                   help=f"root of your copy of the base dataset, in torchvision's layout (not needed for {rootless})")
    p.add_argument("--dataset", default=None,
                   help=f"dataset name (default: the manifest's): {', '.join(registry.names())}")
    p.add_argument("--split", default=None, help="dataset split (default: the manifest's)")
    p.add_argument("--check", default="exact", choices=("exact", "resized"),
                   help="identity check of your copy: exact (the build's files) or resized (a resized or "
                        "re-encoded copy); default exact")


def open_adapter(args: argparse.Namespace, store):
    """The adapter of the user's copy named by ``--dataset``/``--data-root``/``--split`` (manifest defaults)."""
    from ..adapters import create_store_adapter

    dataset, root = args.dataset or store.manifest.dataset, args.data_root
    if root is not None and not Path(root).exists():
        raise FileNotFoundError(f"--data-root {root}: no such folder; point it to your copy of the {dataset} data")
    if root is None and registry.dataset_info(dataset, "--dataset").needs_root:
        raise UsageError(f"--data-root is required for dataset {dataset!r} (the folder holding your copy)")
    return create_store_adapter(store, root, dataset=dataset, split=args.split)


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
