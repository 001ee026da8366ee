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
130 when interrupted, 141 when the reader of its output went away (``... | head``: no traceback).
Errors go to stderr as one message (no traceback).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Sequence

from ..errors import EXIT_FAIL, EXIT_INTERRUPTED, EXIT_USAGE, ReinforcementError
from ._common import UsageError

__all__ = ["main", "build_parser"]

#: Exit status when stdout's reader closed the pipe (128 + SIGPIPE, what a shell reports for a killed writer).
EXIT_PIPE = 141

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
    """Run the command line; returns the exit status (0 ok, 1 failure, 2 usage, 130 interrupted, 141 closed pipe)."""
    try:
        status = _main(argv)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
        return status
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_PIPE


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot fail again (Python's documented recipe)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # stdout is not a real file (a test's capture)
        pass


def _main(argv: Sequence[str] | None) -> int:
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
