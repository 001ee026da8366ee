"""Maintainers' builds of the published stores: the recipes in ``builders/configs/`` run by the package's build command.

Everything here is a thin wrapper over ``imagenet-plus build`` (:mod:`imagenet_plus.builder.cli`),
which works from the installed wheel alone; this script only adds ``--recipe NAME`` (the YAML
file ``builders/configs/NAME.yaml``). Flags override the recipe's values, as ``--config`` does.

Scale-out: under ``torchrun --nproc-per-node N`` or ``srun`` every process builds its share of the
shards; the output is byte-identical to a single-process build. Resume: run the same command again.

Example::

    python builders/build.py --recipe digits-plus --out runs/digits-plus
    torchrun --nproc-per-node 8 builders/build.py --recipe imagenet-plus --data-root /data/imagenet \\
        --out /data/imagenet-plus
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imagenet_plus.builder.cli import add_arguments, config_from_args, run, run_build  # noqa: E402
from imagenet_plus.builder.config import BuildConfig, load_config  # noqa: E402
from imagenet_plus.errors import ArgumentError  # noqa: E402

__all__ = ["CONFIGS", "BuildConfig", "recipe_path", "load_config", "parse_args", "create_dataset",
           "main", "cli"]

#: The maintainers' recipes, one YAML file per published store.
CONFIGS = Path(__file__).resolve().parent / "configs"


def recipe_path(name: str) -> Path:
    """``builders/configs/{name}.yaml``.

    Raises:
        ArgumentError: no such recipe (the message lists them).
    """
    p = CONFIGS / f"{name}.yaml"
    if not p.is_file():
        names = sorted(q.stem for q in CONFIGS.glob("*.yaml"))
        raise ArgumentError(f"--recipe {name!r}: no such recipe; valid values are {{{', '.join(names)}}}")
    return p


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="builders/build.py", description=__doc__.split("\n")[0],
                                argument_default=argparse.SUPPRESS)
    p.add_argument("--recipe", help="a recipe of builders/configs/ by name (e.g. imagenet-plus, digits-plus)")
    add_arguments(p)
    return p


def _namespace(argv: Sequence[str] | None) -> argparse.Namespace:
    args = _parser().parse_args(argv)
    name = vars(args).pop("recipe", None)
    if name is not None:
        if getattr(args, "config", None):
            raise ArgumentError("give --recipe or --config, not both")
        args.config = str(recipe_path(name))
    return args


def parse_args(argv: Sequence[str] | None = None) -> BuildConfig:
    """Command line -> :class:`BuildConfig` (defaults < recipe / ``--config`` < flags)."""
    return config_from_args(_namespace(argv))


def create_dataset(cfg: BuildConfig):
    """The torchvision-style dataset of ``cfg`` (through the package's adapters; never downloads)."""
    from imagenet_plus.adapters import create_adapter

    return create_adapter(cfg.dataset, cfg.data_root, cfg.split, image_size=cfg.source_size).dataset


def main(config: BuildConfig):
    """Run one build (this process's share under torchrun/srun); see :func:`imagenet_plus.builder.cli.run_build`."""
    return run_build(config)


def cli(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: the package's ``build`` command with ``--recipe`` (same exit statuses)."""
    try:
        args = _namespace(argv)
    except ArgumentError as e:
        print(f"builders/build.py: error: {e}", file=sys.stderr)
        return 2
    return run(args)


if __name__ == "__main__":
    sys.exit(cli())
