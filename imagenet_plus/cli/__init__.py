"""The ``imagenet-plus`` command: ``info``, ``verify``, ``show``, ``export``, ``build`` and ``import-ml-dr``.

Usage::

    imagenet-plus info STORE                                    # readable summary (--json too)
    imagenet-plus verify STORE --full                           # every byte, row checksum and value range
    imagenet-plus verify STORE --data-root DATA                 # every sample of your copy of the data
    imagenet-plus verify STORE --data-root DATA --teacher resnet18 --teacher-checkpoint t.safetensors
    imagenet-plus show STORE --data-root DATA --index 3 --out grid.png
    imagenet-plus export STORE --data-root DATA                 # STORE/data/*.parquet for datasets
    imagenet-plus build --dataset imagefolder --data-root DATA --teacher ... --out STORE
    imagenet-plus import-ml-dr ARCHIVE --dataset imagenet --data-root DATA --out STORE

Exit status: 0 on success, 1 when verification fails or the data is bad, 2 on a usage error,
130 when interrupted. Errors go to stderr as one message (no traceback).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from ..errors import ReinforcementError
from ._common import EXIT_FAIL, EXIT_INTERRUPTED, EXIT_USAGE, UsageError

__all__ = ["main", "build_parser"]

# Each command's module exposes add_parser(subparsers) and sets func; heavy imports stay inside run().
_COMMANDS = ("imagenet_plus.cli.info", "imagenet_plus.cli.verify", "imagenet_plus.cli.show",
             "imagenet_plus.cli.export", "imagenet_plus.builder.cli", "imagenet_plus.mldr.cli")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``imagenet-plus`` command."""
    p = argparse.ArgumentParser(prog="imagenet-plus",
                                description="Build, import, inspect, verify and preview reinforcement stores "
                                            "(Dataset Reinforcement).")
    sub = p.add_subparsers(dest="command", metavar="{info,verify,show,export,build,import-ml-dr}")
    sub.required = True
    for name in _COMMANDS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:  # a command whose module is absent from this install
            if e.name != name:
                raise
            continue
        module.add_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 failure, 2 usage error, 130 interrupted)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse exits 2 on usage errors and 0 after --help
        return int(e.code or 0)
    try:
        return int(args.func(args))
    except UsageError as e:
        parser.print_usage(sys.stderr)
        print(f"imagenet-plus {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (ReinforcementError, FileNotFoundError, NotADirectoryError, PermissionError, ImportError) as e:
        print(f"imagenet-plus {args.command}: error: {e}", file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        hint = getattr(args, "resume_hint", None)
        print(f"imagenet-plus {args.command}: interrupted" + (f"; {hint}" if hint else ""), file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
