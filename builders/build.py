"""Build a reinforced dataset: ``python builders/build.py --config builders/configs/imagenet-plus.yaml ...``.

Settings come from, in increasing precedence: the :class:`BuildConfig` defaults,
the YAML file given with ``--config`` (keys are the field names below; an
unknown key is an error naming it), and the command-line flags.

Scale-out: under ``torchrun --nproc-per-node N`` (``RANK``/``WORLD_SIZE``/
``LOCAL_RANK``) or ``srun`` (``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID``;
export ``MASTER_ADDR``/``MASTER_PORT``) every process builds its round-robin
share of the shards on device ``cuda:LOCAL_RANK``; rank 0 writes the manifest
after a final barrier. The output is byte-identical to a single-process build.

Resume: run the same command again after an interruption (even ``kill -9``).

Example::

    python builders/build.py --config builders/configs/digits-plus.yaml --out runs/digits-plus
    torchrun --nproc-per-node 8 builders/build.py --config builders/configs/imagenet-plus.yaml \\
        --data-root /data/imagenet --out /data/imagenet-plus
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

__all__ = ["BuildConfig", "DATASETS", "load_config", "parse_args", "create_dataset", "main", "cli"]

#: ``--dataset`` choices.
DATASETS = ("imagenet", "cifar100", "flowers102", "food101", "imagefolder", "digits")


@dataclass
class BuildConfig:
    """Everything a build needs (YAML keys and command-line flags share these names).

    Args:
        dataset: one of :data:`DATASETS`.
        data_root: the dataset's root folder, in torchvision's layout (never downloaded).
        split: dataset split (``train``, ``val``, ``test``; ImageFolder reads ``data_root/split``
            when that folder exists, else ``data_root``).
        out: output folder of the store.
        teacher: timm model names (a list or a comma-separated string); several form an ensemble.
        teacher_checkpoint: local safetensors weights, one per teacher (empty entries: pretrained).
        pretrained: use timm's pretrained weights for teachers without a checkpoint.
        teacher_input_size: override every teacher's input side (``None``: its pretrained config).
        compile: ``torch.compile`` the teachers (CUDA).
        num_classes: classes of the teacher's output (``None``: the dataset's class count).
        num_augmentations: augmentations per sample (the paper's NS).
        topk: probabilities kept per record (the paper's K).
        policy: a preset name (``rrc``, ``rrc+mix``, ``rrc+ra/re``, ``rrc+mix+ra/re``, ``cifar``)
            or a complete/partial policy config dict.
        image_size: the policy's output size (``None``: the policy's own).
        source_size: side of the generated images (``digits`` only).
        seed: the build seed.
        batch_size: teacher batch size.
        num_workers: DataLoader workers decoding and cropping.
        device: ``cpu``, ``cuda`` (``cuda:LOCAL_RANK`` under torchrun) or ``auto``.
        samples_per_shard: samples per shard (``None``: fill the store's size cap).
        augs_per_shard: augmentations per shard (a reader of the first block downloads one block).
        limit_samples: build only the first N samples (smoke runs).
        progress: show a progress bar and a summary.
    """

    dataset: str = "imagenet"
    data_root: str | None = None
    split: str = "train"
    out: str | None = None
    teacher: Any = "resnet50.a1_in1k"
    teacher_checkpoint: Any = None
    pretrained: bool = True
    teacher_input_size: int | None = None
    compile: bool = False
    num_classes: int | None = None
    num_augmentations: int = 400
    topk: int = 10
    policy: Any = "rrc+ra/re"
    image_size: int | None = None
    source_size: int = 32
    seed: int = 0
    batch_size: int = 256
    num_workers: int = 8
    device: str = "auto"
    samples_per_shard: int | None = None
    augs_per_shard: int | None = 50
    limit_samples: int | None = None
    progress: bool = True


_FIELDS = {f.name: f for f in dataclasses.fields(BuildConfig)}
_INT_KEYS = ("teacher_input_size", "num_classes", "num_augmentations", "topk", "image_size", "source_size", "seed",
             "batch_size", "num_workers", "samples_per_shard", "augs_per_shard", "limit_samples")
_BOOL_KEYS = ("pretrained", "compile", "progress")


def _check_values(cfg: BuildConfig, source: str) -> BuildConfig:
    for k in _INT_KEYS:
        v = getattr(cfg, k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
            raise ValueError(f"{source}: {k} must be an integer, got {v!r}")
    for k in _BOOL_KEYS:
        if not isinstance(getattr(cfg, k), bool):
            raise ValueError(f"{source}: {k} must be true or false, got {getattr(cfg, k)!r}")
    if cfg.dataset not in DATASETS:
        raise ValueError(f"{source}: unknown dataset {cfg.dataset!r}; valid values are {{{', '.join(DATASETS)}}}")
    for k in ("num_augmentations", "topk", "batch_size"):
        if getattr(cfg, k) < 1:
            raise ValueError(f"{source}: {k} must be >= 1, got {getattr(cfg, k)}")
    for k in ("samples_per_shard", "augs_per_shard", "limit_samples", "num_classes", "image_size"):
        if getattr(cfg, k) is not None and getattr(cfg, k) < 1:
            raise ValueError(f"{source}: {k} must be >= 1, got {getattr(cfg, k)}")
    if cfg.num_workers < 0:
        raise ValueError(f"{source}: num_workers must be >= 0, got {cfg.num_workers}")
    return cfg


def load_config(path: str | os.PathLike, base: BuildConfig | None = None) -> BuildConfig:
    """Read a YAML recipe into a :class:`BuildConfig` (over ``base``, default: the defaults).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the YAML is not a mapping, has an unknown key, or a value of the wrong type.
    """
    import yaml

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--config {p}: file not found (recipes live in builders/configs/)")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"--config {p}: not valid YAML ({e})") from e
    if not isinstance(data, dict):
        raise ValueError(f"--config {p}: expected a mapping of settings, got {type(data).__name__}")
    for k in data:
        if k not in _FIELDS:
            raise ValueError(f"--config {p}: unknown config key {k!r}; valid keys are {{{', '.join(_FIELDS)}}}")
    cfg = dataclasses.replace(base or BuildConfig(), **data)
    return _check_values(cfg, f"--config {p}")


def _bool(v: str) -> bool:
    s = v.strip().lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {v!r}")


def _optional_int(v: str) -> int | None:
    return None if v.strip().lower() in ("none", "null", "") else int(v)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="builders/build.py", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                argument_default=argparse.SUPPRESS)
    p.add_argument("--config", help="YAML recipe (builders/configs/*.yaml); flags override its values")
    p.add_argument("--dataset", choices=DATASETS)
    p.add_argument("--data-root", dest="data_root")
    p.add_argument("--split")
    p.add_argument("--out")
    p.add_argument("--teacher", help="comma-separated timm model names (an ensemble averages probabilities)")
    p.add_argument("--teacher-checkpoint", dest="teacher_checkpoint",
                   help="comma-separated safetensors files, one per teacher (empty entry: pretrained)")
    p.add_argument("--pretrained", type=_bool, help="timm pretrained weights for teachers without a checkpoint")
    p.add_argument("--teacher-input-size", dest="teacher_input_size", type=_optional_int)
    p.add_argument("--compile", type=_bool, help="torch.compile the teachers (CUDA)")
    p.add_argument("--num-classes", dest="num_classes", type=_optional_int)
    p.add_argument("--num-augmentations", dest="num_augmentations", type=int)
    p.add_argument("--topk", type=int)
    p.add_argument("--policy", help="preset name: rrc, rrc+mix, rrc+ra/re, rrc+mix+ra/re, cifar")
    p.add_argument("--image-size", dest="image_size", type=_optional_int)
    p.add_argument("--source-size", dest="source_size", type=int, help="digits: side of the upsampled images")
    p.add_argument("--seed", type=int)
    p.add_argument("--batch-size", dest="batch_size", type=int)
    p.add_argument("--num-workers", dest="num_workers", type=int)
    p.add_argument("--device", help="cpu, cuda or auto")
    p.add_argument("--samples-per-shard", dest="samples_per_shard", type=_optional_int)
    p.add_argument("--augs-per-shard", dest="augs_per_shard", type=_optional_int)
    p.add_argument("--limit-samples", dest="limit_samples", type=_optional_int)
    p.add_argument("--progress", type=_bool)
    return p


def parse_args(argv: Sequence[str] | None = None) -> BuildConfig:
    """Command line -> :class:`BuildConfig` (defaults < ``--config`` YAML < flags)."""
    ns = vars(_parser().parse_args(argv))
    path = ns.pop("config", None)
    cfg = load_config(path) if path else BuildConfig()
    cfg = dataclasses.replace(cfg, **ns)
    return _check_values(cfg, "command line")


def create_dataset(cfg: BuildConfig):
    """The base dataset of ``cfg`` (torchvision's classes; never downloads).

    Raises:
        FileNotFoundError: the dataset is not under ``data_root`` in torchvision's layout.
        ValueError: an unknown dataset or split.
    """
    import torchvision.datasets as tvd

    name, root, split = cfg.dataset, cfg.data_root, cfg.split
    if name == "digits":
        from builders.digits import Digits

        return Digits(root, split=split, image_size=cfg.source_size)
    if not root:
        raise ValueError(f"--data-root is required for --dataset {name} (the folder holding the dataset in "
                         "torchvision's layout)")
    where = f"--dataset {name} --data-root {root} --split {split}"
    if not Path(root).is_dir():
        raise FileNotFoundError(f"{where}: folder {root} does not exist; point --data-root to the dataset")
    try:
        if name == "imagenet":
            return tvd.ImageNet(root, split=split)
        if name == "cifar100":
            if split not in ("train", "test"):
                raise ValueError(f"Unknown value '{split}' for argument split. Valid values are {{train, test}}.")
            return tvd.CIFAR100(root, train=split == "train", download=False)
        if name == "flowers102":
            return tvd.Flowers102(root, split=split, download=False)
        if name == "food101":
            return tvd.Food101(root, split=split, download=False)
        folder = Path(root) / split
        return tvd.ImageFolder(str(folder if folder.is_dir() else root))
    except (RuntimeError, FileNotFoundError) as e:
        raise FileNotFoundError(f"{where}: the dataset is missing or incomplete ({e}); place the files in "
                                "torchvision's layout under --data-root (this tool never downloads)") from e


def _num_classes(cfg: BuildConfig, base) -> int:
    if cfg.num_classes is not None:
        return cfg.num_classes
    inner = getattr(base, "dataset", base)
    classes = getattr(inner, "classes", None)
    if not classes:
        raise ValueError(f"--num-classes is required: dataset {cfg.dataset!r} does not list its classes")
    return len(classes)


def _resolve_device(cfg: BuildConfig, local_rank: int):
    import torch

    dev = cfg.device
    if dev == "auto":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    d = torch.device(dev)
    if d.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {cfg.device}: CUDA is not available on this machine; use --device cpu")
        if d.index is None:
            d = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(d)
    elif d.type != "cpu":
        raise ValueError(f"--device {cfg.device}: expected cpu, cuda[:N] or auto")
    return d


def main(config: BuildConfig):
    """Run one build (this process's share under torchrun/srun).

    Args:
        config: the settings.

    Returns:
        The written :class:`~imagenet_plus.store.Manifest` on rank 0, ``None`` on other ranks.
    """
    import torch
    from torch.utils.data import Subset

    from builders.teachers import create_teacher, parse_teacher_list
    from imagenet_plus.augment import create_policy
    from imagenet_plus.reinforce import build_reinforcements, init_distributed, resolve_dist_env

    cfg = _check_values(config, "config")
    if not cfg.out:
        raise ValueError("--out is required (the output folder of the store)")
    rank, world, local_rank = resolve_dist_env()
    device = _resolve_device(cfg, local_rank)
    if device.type == "cpu" and world > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    init_distributed(device, rank, world)
    try:
        base = create_dataset(cfg)
        if cfg.limit_samples is not None and cfg.limit_samples < len(base):
            base = Subset(base, range(cfg.limit_samples))
        num_classes = _num_classes(cfg, base)
        overrides = {} if cfg.image_size is None else {"output_size": cfg.image_size}
        policy = create_policy(cfg.policy, **overrides)
        specs = parse_teacher_list(cfg.teacher, cfg.teacher_checkpoint)
        torch.manual_seed(cfg.seed)  # randomly initialised teachers (benchmarks, tests) are equal on every rank
        teacher = create_teacher(specs, num_classes=num_classes, pretrained=cfg.pretrained, device=device,
                                 compile=cfg.compile, input_size=cfg.teacher_input_size)
        desc = teacher.describe()
        desc["pretrained"] = cfg.pretrained and any(s.checkpoint is None for s in specs)
        extra = {} if cfg.limit_samples is None else {"limit_samples": cfg.limit_samples}
        return build_reinforcements(
            base, cfg.out, policy=policy, teacher=teacher, num_classes=num_classes,
            num_augmentations=cfg.num_augmentations, topk=cfg.topk, seed=cfg.seed, dataset_name=cfg.dataset,
            teacher_desc=desc, samples_per_shard=cfg.samples_per_shard, augs_per_shard=cfg.augs_per_shard,
            batch_size=cfg.batch_size, device=device, rank=rank, world_size=world, progress=cfg.progress,
            split=cfg.split, num_workers=cfg.num_workers, extra=extra)
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def cli(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: prints a one-line error (no traceback) for bad input and returns 2."""
    from builders.teachers import TeacherLoadError

    try:
        cfg = parse_args(argv)
        main(cfg)
    except (ValueError, OSError, TeacherLoadError) as e:
        print(f"builders/build.py: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
