"""``imagenet-plus build``: reinforce a dataset with a teacher, from the installed package.

Settings come from, in increasing precedence, the :class:`~imagenet_plus.builder.config.BuildConfig`
defaults, a YAML ``--config`` and the flags. Under ``torchrun`` (``RANK``/``WORLD_SIZE``/
``LOCAL_RANK``) or ``srun`` (``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID``, with
``MASTER_ADDR``/``MASTER_PORT`` exported) every process builds its share of the shards on
``cuda:LOCAL_RANK``; the output is byte-identical to a single-process build. Run the same
command again to resume an interrupted build (even after ``kill -9``).

Example::

    imagenet-plus build --dataset imagefolder --data-root photos --teacher resnet18 \\
        --teacher-checkpoint t.safetensors --num-classes 3 --topk 3 --teacher-input-size 64 \\
        --policy rrc+ra/re --image-size 64 --num-augmentations 50 --out photos-plus

Exit status: 0 done (or nothing to do), 1 the build failed (the message says why and what to
do), 2 a bad argument, 130 interrupted (the last line is the command that resumes it).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path
from typing import Any, Sequence

from .. import registry
from .._checks import check_device
from ..errors import EXIT_FAIL, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, ArgumentError, ReinforcementError
from .config import PIXEL_PATHS, BuildConfig, load_config, merge_config, resolve_teacher_compile

__all__ = ["add_parser", "add_arguments", "config_from_args", "run", "run_build", "main", "resume_command"]

_PROG = "imagenet-plus build"

#: (flag, setting, type, help) of every command-line flag; ``type`` None means a string.
_FLAGS: tuple[tuple[str, str, Any, str], ...] = (
    ("--dataset", "dataset", None, f"dataset kind: {{{', '.join(registry.names())}}}"),
    ("--data-root", "data_root", None, "the dataset's root folder in torchvision's layout (never downloaded)"),
    ("--split", "split", None, "dataset split (default train)"),
    ("--out", "out", None, "output folder: absent, empty, or this build unfinished (resumed)"),
    ("--teacher", "teacher", None, "comma-separated timm model names (an ensemble averages probabilities)"),
    ("--teacher-checkpoint", "teacher_checkpoint", None,
     "comma-separated safetensors files, one per teacher (empty entry: pretrained weights)"),
    ("--pretrained", "pretrained", "bool", "timm's pretrained weights for teachers without a checkpoint"),
    ("--teacher-input-size", "teacher_input_size", "int?",
     "every teacher's input side (default: its checkpoint sidecar's, its pretrained config's, else a guess)"),
    ("--allow-new-head", "allow_new_head", "bool",
     "accept a teacher whose classifier head would be randomly initialised (fine-tuning workflows only)"),
    ("--teacher-compile", "teacher_compile", None, "how the teacher's forward runs: auto (eager for now), none, "
                                                   "compile (torch.compile), cudagraphs (CUDA graphs, opt-in)"),
    ("--num-classes", "num_classes", "int?", "classes of the teacher's output (default: the teacher's)"),
    ("--num-augmentations", "num_augmentations", "int", "augmentations per sample (default 400)"),
    ("--topk", "topk", "int?", "probabilities kept per record (default min(10, num_classes))"),
    ("--policy", "policy", None, "policy preset: rrc, rrc+mix, rrc+ra/re, rrc+mix+ra/re, cifar"),
    ("--image-size", "image_size", "int?", "the policy's output side (default: the policy's)"),
    ("--source-size", "source_size", "int?",
     "side of the images of a dataset that generates them (digits; default: the dataset's)"),
    ("--seed", "seed", "int", "the build seed"),
    ("--batch-size", "batch_size", "int", "teacher batch size"),
    ("--num-workers", "num_workers", "int", "DataLoader workers decoding and cropping (default: the cores "
                                           "this process may use, at most 8)"),
    ("--device", "device", None, "auto, cpu, cuda or cuda:N"),
    ("--pixel-path", "pixel_path", None, f"where the photometric stage runs: {{{', '.join(PIXEL_PATHS)}}}"),
    ("--samples-per-shard", "samples_per_shard", "int?", "samples per shard (default: fill the size cap)"),
    ("--augs-per-shard", "augs_per_shard", "int?", "augmentations per shard (default 50)"),
    ("--limit-samples", "limit_samples", "int?", "build only the first N samples (smoke runs)"),
    ("--progress", "progress", "bool", "progress bar and summary"),
)


def _bool(v: str) -> bool:
    s = v.strip().lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {v!r}")


def _optional_int(v: str) -> int | None:
    return None if v.strip().lower() in ("none", "null", "") else int(v)


_TYPES = {None: str, "int": int, "int?": _optional_int, "bool": _bool}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the build flags (and ``--config``) to ``p`` (this command, ``builders/build.py``)."""
    p.add_argument("--config", help="YAML recipe (keys are the settings); flags override its values")
    for flag, dest, kind, help_ in _FLAGS:
        if kind == "bool":  # --flag, --flag true/false
            p.add_argument(flag, dest=dest, type=_bool, nargs="?", const=True, help=help_)
        else:
            p.add_argument(flag, dest=dest, type=_TYPES[kind], help=help_)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``build`` command to an ``argparse`` subparsers object (the lead's ``imagenet-plus`` CLI)."""
    p = subparsers.add_parser("build", help="reinforce a dataset: run a teacher over stored augmentations",
                              description=__doc__.split("\n\n")[0], argument_default=argparse.SUPPRESS)
    add_arguments(p)
    p.set_defaults(func=run)
    return p


def config_from_args(args: argparse.Namespace) -> BuildConfig:
    """defaults < ``--config`` < flags (only the flags given override)."""
    given = {k: v for k, v in vars(args).items() if k in BuildConfig.__dataclass_fields__}
    path = getattr(args, "config", None)
    base = load_config(path) if path else BuildConfig()
    return merge_config(base, given, "command line")


def resume_command() -> str:
    """The command line that resumes this build: the one that started it."""
    argv = list(sys.argv)
    script = Path(argv[0]) if argv else Path(_PROG)
    if script.suffix == ".py" or script.name == "-c":
        return shlex.join(getattr(sys, "orig_argv", [sys.executable, *argv]))  # python -m ... / python x.py ...
    return shlex.join([script.name, *argv[1:]])  # a console script: imagenet-plus build ...


def _resolve_device(device: str, local_rank: int):
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    d = check_device(device, f"--device {device}", "use --device cpu")
    if d.type == "cuda":
        if d.index is None:
            d = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(d)
    return d


def _create_data(cfg: BuildConfig):
    from torch.utils.data import Subset

    from ..adapters import adapt, create_adapter

    adapter = create_adapter(cfg.dataset, cfg.data_root, cfg.split, image_size=cfg.source_size)
    if cfg.limit_samples is not None and cfg.limit_samples < len(adapter):
        return adapt(Subset(adapter.dataset, range(cfg.limit_samples)))
    return adapter


def _create_teacher(cfg: BuildConfig, adapter, device):
    import torch

    from ..teachers import create_teacher, parse_teacher_list

    specs = parse_teacher_list(cfg.teacher, cfg.teacher_checkpoint)
    random_init = not cfg.pretrained and all(s.checkpoint is None for s in specs)
    num_classes = cfg.num_classes if cfg.num_classes is not None or not random_init else adapter.num_classes
    torch.manual_seed(cfg.seed)  # randomly initialised teachers (benchmarks, tests) are equal on every rank
    teacher = create_teacher(specs, num_classes=num_classes, pretrained=cfg.pretrained, device=device,
                             compile=resolve_teacher_compile(cfg.teacher_compile, device),
                             input_size=cfg.teacher_input_size,
                             allow_new_head=cfg.allow_new_head)
    desc = teacher.describe()
    desc["pretrained"] = cfg.pretrained and any(s.checkpoint is None for s in specs)
    return teacher, desc


def run_build(config: BuildConfig, stats=None):
    """Run one build from its settings (this process's share under torchrun/srun).

    Returns:
        The written (or already finished) :class:`~imagenet_plus.store.Manifest` on rank 0, ``None`` on
        other ranks.

    Raises:
        ArgumentError, BuildError, ImageDecodeError, FileNotFoundError, OSError: see
            :func:`~imagenet_plus.builder.build_reinforcements`.
    """
    import torch

    from ..augment import create_policy
    from .engine import build_reinforcements
    from .plan import init_distributed, resolve_dist_env

    cfg = config
    if not cfg.out:
        raise ArgumentError("--out is required (the output folder of the store)")
    rank, world, local_rank = resolve_dist_env()
    device = _resolve_device(cfg.device, local_rank)
    if device.type == "cpu" and world > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    init_distributed(device, rank, world)
    try:
        adapter = _create_data(cfg)
        policy = create_policy(cfg.policy, **({} if cfg.image_size is None else {"output_size": cfg.image_size}))
        teacher, desc = _create_teacher(cfg, adapter, device)
        extra = {} if cfg.limit_samples is None else {"limit_samples": cfg.limit_samples}
        return build_reinforcements(
            adapter, cfg.out, policy=policy, teacher=teacher, num_classes=cfg.num_classes,
            num_augmentations=cfg.num_augmentations, topk=cfg.topk, seed=cfg.seed, dataset_name=cfg.dataset,
            split=cfg.split, teacher_desc=desc, samples_per_shard=cfg.samples_per_shard,
            augs_per_shard=cfg.augs_per_shard, batch_size=cfg.batch_size, device=device, rank=rank,
            world_size=world, num_workers=cfg.num_workers, pixel_path=cfg.pixel_path, extra=extra,
            progress=cfg.progress, stats=stats)
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def _print_summary(manifest, stats, out: str) -> None:
    from .._files import human_bytes
    from .report import summarize

    size = sum(s.bytes for s in manifest.shards) + manifest.samples_file.bytes
    head = (f"{out} already holds this finished store (build id {manifest.build_id}): nothing to do"
            if stats.already_finished else f"wrote {out} (build id {manifest.build_id})")
    print(f"{_PROG}: {head}: {manifest.num_samples:,} samples x {manifest.num_augmentations} augmentations, "
          f"top-{manifest.topk} of {manifest.num_classes} classes, {len(manifest.shards)} shards, {human_bytes(size)}")
    if "teacher" in manifest.reports:
        for line in summarize(manifest.reports["teacher"]):
            print(f"  {line}")


def run(args: argparse.Namespace) -> int:
    """Run the ``build`` command on parsed arguments; returns the exit status (see the module docstring).

    Errors print one line (no traceback); Ctrl-C prints the command that resumes the build.
    """
    from .pipeline import BuildStats

    stats = BuildStats()
    try:
        cfg = config_from_args(args)
        manifest = run_build(cfg, stats)
    except KeyboardInterrupt:
        print(f"{_PROG}: interrupted; finished shards are kept, resume with: {resume_command()}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except ArgumentError as e:
        print(f"{_PROG}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (ReinforcementError, OSError, ImportError) as e:
        print(f"{_PROG}: error: {e}", file=sys.stderr)
        return EXIT_FAIL
    if manifest is not None:
        _print_summary(manifest, stats, cfg.out)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m imagenet_plus.builder ...``: the ``build`` command on its own."""
    parser = argparse.ArgumentParser(prog="python -m imagenet_plus.builder", description=__doc__.split("\n\n")[0],
                                     argument_default=argparse.SUPPRESS)
    add_arguments(parser)
    return run(parser.parse_args(argv))
