"""``imagenet-plus import-ml-dr``: import one of apple/ml-dr's published reinforcements into a store.

Example::

    imagenet-plus import-ml-dr imagenet_plus_randaug.tar.gz --dataset imagenet \\
        --data-root data/imagenet --out stores/imagenet-plus

SOURCE is the downloaded ``.tar.gz`` / ``.tar`` (streamed, never extracted) or the folder it was
extracted to. The store then works with ``ImageNetPlus(root, reinforcements=OUT)`` (and the other
dataset classes, the ``datasets`` export and the Hub push) exactly as a built one. Run the same
command again to resume an interrupted import (even after ``kill -9``).

Exit status: 0 done (or nothing to do), 1 the import failed (one line saying why and what to do;
nothing half-written is left under OUT), 2 a bad argument, 130 interrupted (the last line is the
command that resumes it). This module imports nothing heavy until the command runs.
"""

from __future__ import annotations

import argparse
import sys

from ..cli._common import count, positive_int

__all__ = ["add_parser", "run"]

_PROG = "imagenet-plus import-ml-dr"
_DATASETS = ("imagenet", "cifar100", "flowers102", "food101")


def add_parser(sub) -> None:
    """Add the ``import-ml-dr`` command to the ``imagenet-plus`` subparsers."""
    p = sub.add_parser("import-ml-dr", help="import an apple/ml-dr reinforcement archive (ImageNet+, CIFAR-100, "
                                            "Flowers-102, Food-101) into a store",
                       description=__doc__.split("\n\n")[0] + " " + __doc__.split("\n\n")[2].replace("\n", " "))
    p.add_argument("source", help="the downloaded .tar.gz / .tar, or the folder it was extracted to")
    p.add_argument("--dataset", required=True, choices=_DATASETS, help="the archive's dataset")
    p.add_argument("--data-root", required=True,
                   help="root of your copy of the dataset in torchvision's layout (its training split)")
    p.add_argument("--out", required=True, help="the store folder: absent, empty, or this import unfinished")
    p.add_argument("--config", default=None,
                   help="ml-dr's config.pth.tar as a separate file (for an archive that lacks one)")
    p.add_argument("--num-augmentations", type=positive_int, default=None,
                   help="records per sample, when the archive's config states a wrong num_samples")
    p.add_argument("--workers", type=count, default=None,
                   help="decoding processes (default: every core; 0 decodes in this process)")
    p.add_argument("--samples-per-shard", type=positive_int, default=None,
                   help="samples per shard (default: the store's)")
    p.add_argument("--augs-per-shard", type=positive_int, default=None, help="augmentations per shard (default 50)")
    p.add_argument("--checkpoint-seconds", type=float, default=30.0,
                   help="how often the samples imported so far are recorded for a resume (default 30)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars or warnings")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the command; returns the exit status (see the module docstring). Errors print one line."""
    from ..builder.cli import resume_command
    from ..errors import ArgumentError, ReinforcementError
    from .importer import import_mldr

    try:
        result = import_mldr(args.source, args.out, dataset=args.dataset, data_root=args.data_root,
                             config_file=args.config, num_augmentations=args.num_augmentations,
                             workers=args.workers, samples_per_shard=args.samples_per_shard,
                             augs_per_shard=args.augs_per_shard, progress=not args.no_progress,
                             checkpoint_seconds=args.checkpoint_seconds)
    except KeyboardInterrupt:
        print(f"{_PROG}: interrupted; what is imported so far is kept, resume with: {resume_command()}",
              file=sys.stderr)
        return 130
    except ArgumentError as e:
        print(f"{_PROG}: error: {e}", file=sys.stderr)
        return 2
    except (ReinforcementError, OSError, ImportError) as e:
        print(f"{_PROG}: error: {e}", file=sys.stderr)
        return 1
    print(f"{_PROG}: {result.summary()}")
    return 0
