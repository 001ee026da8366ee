"""The build's settings: :class:`BuildConfig`, read from defaults < a YAML ``--config`` < command-line flags.

YAML keys and flags share the field names (``--teacher-input-size`` is ``teacher_input_size``).
A key that is not a field is an error naming it and the file; a value of the wrong type or range
is an :class:`~imagenet_plus.errors.ArgumentError` naming where it came from.

Example:
    >>> cfg = load_config("builders/configs/digits-plus.yaml")
    >>> cfg = merge_config(cfg, {"out": "runs/digits-plus", "topk": 3}, "command line")
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import registry
from .._checks import check_choice, check_int
from ..errors import ArgumentError

__all__ = ["BuildConfig", "DEVICES", "PIXEL_PATHS", "TEACHER_COMPILE", "load_config", "merge_config", "check_config",
           "resolve_teacher_compile", "available_cores", "default_workers"]

#: ``--pixel-path`` choices (see :func:`~imagenet_plus.builder.build_reinforcements`).
PIXEL_PATHS = ("auto", "apply", "batched")
DEVICES = ("auto", "cpu", "cuda")
#: ``--teacher-compile`` choices: ``auto`` and :data:`imagenet_plus.teachers.COMPILE_MODES`.
TEACHER_COMPILE = ("auto", "none", "compile", "cudagraphs")
_MAX_DEFAULT_WORKERS = 8


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the platform has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def default_workers() -> int:
    """The default DataLoader workers of a build: the cores this process may use, at most 8.

    More workers than cores only oversubscribe the machine (torch warns about it).
    """
    return min(_MAX_DEFAULT_WORKERS, available_cores())


@dataclass
class BuildConfig:
    """Everything a build needs (YAML keys and command-line flags share these names).

    Args:
        dataset: a dataset of :mod:`imagenet_plus.registry`.
        data_root: the dataset's root folder, in torchvision's layout (never downloaded; unused for digits).
        split: dataset split (ImageFolder reads ``data_root/split`` when that folder exists, else ``data_root``).
        out: output folder of the store (absent, empty, or this build unfinished).
        teacher: timm model names (a list or a comma-separated string); several form an ensemble.
        teacher_checkpoint: local safetensors weights, one per teacher (empty entries: pretrained).
        pretrained: use timm's pretrained weights for teachers without a checkpoint.
        teacher_input_size: every teacher's input side (``None``: its sidecar, pretrained config or
            architecture default; see :mod:`imagenet_plus.teachers`).
        allow_new_head: accept a teacher whose classifier would be freshly initialised (fine-tuning only).
        teacher_compile: how the teacher ensemble's forward runs: ``none`` (eager), ``compile``
            (``torch.compile``), ``cudagraphs`` (CUDA graphs, CUDA only), ``auto``: ``none`` for now (the CUDA-graph
            path becomes ``auto``'s choice on CUDA once ``benchmarks/gpu_check.py`` has measured it; opt in
            with ``cudagraphs``). Not part of the build id (see :mod:`imagenet_plus.teachers`).
        num_classes: classes of the teacher's output (``None``: the teacher's; for random-init teachers
            the dataset's).
        num_augmentations: augmentations per sample (the paper's NS).
        topk: probabilities kept per record (the paper's K; ``None``: ``min(10, num_classes)``).
        policy: a preset name (``rrc``, ``rrc+mix``, ``rrc+ra/re``, ``rrc+mix+ra/re``, ``cifar``) or a complete
            or partial policy config dict.
        image_size: the policy's output size (``None``: the policy's own).
        source_size: side of the images of a dataset that generates them (``digits``; ``None``: the
            registry's default); refused for other datasets.
        seed: the build seed.
        batch_size: teacher batch size.
        num_workers: DataLoader workers decoding and cropping (default: the cores this process may use,
            at most 8).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (``cuda:LOCAL_RANK`` under torchrun).
        pixel_path: ``auto``, ``apply`` or ``batched`` (where the photometric stage runs).
        samples_per_shard: samples per shard (``None``: fill the store's size cap).
        augs_per_shard: augmentations per shard (a reader of the first block downloads one block).
        limit_samples: build only the first N samples (smoke runs; recorded in the manifest).
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
    allow_new_head: bool = False
    teacher_compile: str = "auto"
    num_classes: int | None = None
    num_augmentations: int = 400
    topk: int | None = None
    policy: Any = "rrc+ra/re"
    image_size: int | None = None
    source_size: int | None = None
    seed: int = 0
    batch_size: int = 256
    num_workers: int = field(default_factory=default_workers)
    device: str = "auto"
    pixel_path: str = "auto"
    samples_per_shard: int | None = None
    augs_per_shard: int | None = 50
    limit_samples: int | None = None
    progress: bool = True


FIELDS = tuple(f.name for f in dataclasses.fields(BuildConfig))
#: Integer settings and their smallest value (all may be ``None`` where the default is ``None``).
_INTS = {"teacher_input_size": 1, "num_classes": 1, "num_augmentations": 1, "topk": 1, "image_size": 1,
         "source_size": 8, "seed": 0, "batch_size": 1, "num_workers": 0, "samples_per_shard": 1,
         "augs_per_shard": 1, "limit_samples": 1}
_OPTIONAL_INTS = ("teacher_input_size", "num_classes", "topk", "image_size", "source_size", "samples_per_shard",
                  "augs_per_shard", "limit_samples")
_BOOLS = ("pretrained", "allow_new_head", "progress")
_STRS = ("split", "device")
_OPTIONAL_STRS = ("data_root", "out")


def resolve_teacher_compile(mode: str, device) -> str:
    """The teacher's :data:`~imagenet_plus.teachers.COMPILE_MODES` entry for ``mode`` on ``device``
    (``auto``: ``none`` on every device until the CUDA-graph path has run on a GPU; ``cudagraphs`` opts in)."""
    return "none" if mode == "auto" else mode


def _check_device(device: str, where: str) -> None:
    head, _, index = device.partition(":")
    if head not in DEVICES or (index and (head != "cuda" or not index.isdigit())):
        raise ArgumentError(f"{where}: Unknown value {device!r} for argument device. Valid values are {{auto, cpu, "
                            "cuda, cuda:N}.")


def check_config(cfg: BuildConfig, source: str) -> BuildConfig:
    """Check every value's type and range; ``source`` (a file, "command line") prefixes the messages.

    Raises:
        ArgumentError: naming the source, the setting, the value and what is valid.
    """
    try:
        for name, low in _INTS.items():
            check_int(getattr(cfg, name), name, low=low, optional=name in _OPTIONAL_INTS)
        for name in _BOOLS:
            if not isinstance(getattr(cfg, name), bool):
                raise ArgumentError(f"Invalid value {getattr(cfg, name)!r} for argument {name}. Valid values are "
                                    "{true, false}.")
        for name in _STRS + _OPTIONAL_STRS:
            v = getattr(cfg, name)
            if not (isinstance(v, str) or (v is None and name in _OPTIONAL_STRS)):
                raise ArgumentError(f"Invalid value {v!r} for argument {name}. Valid values are a string.")
        check_choice(cfg.dataset, "dataset", registry.names())
        check_choice(cfg.pixel_path, "pixel_path", PIXEL_PATHS)
        check_choice(cfg.teacher_compile, "teacher_compile", TEACHER_COMPILE)
        _check_device(cfg.device, source)
        if not isinstance(cfg.policy, (str, dict)):
            raise ArgumentError(f"Invalid value {cfg.policy!r} for argument policy. Valid values are a preset name "
                                "or a policy config mapping.")
    except ArgumentError as e:
        raise ArgumentError(f"{source}: {e}") from None
    return cfg


def merge_config(base: BuildConfig, overrides: dict[str, Any], source: str) -> BuildConfig:
    """``base`` with ``overrides`` (setting name -> value) applied and checked.

    Raises:
        ArgumentError: an unknown setting name (naming it and ``source``) or a bad value.
    """
    if "compile" in overrides:
        raise ArgumentError(f"{source}: the setting compile was replaced by teacher_compile {{auto, none, compile, "
                            "cudagraphs}; write teacher_compile: compile (or cudagraphs on CUDA; auto "
                            "is eager for now) instead of compile: true, and leave compile: false out")
    unknown = sorted(set(overrides) - set(FIELDS))
    if unknown:
        raise ArgumentError(f"{source}: unknown config key(s) {', '.join(map(repr, unknown))}; valid keys are "
                            f"{{{', '.join(FIELDS)}}}")
    return check_config(dataclasses.replace(base, **overrides), source)


def load_config(path: str | os.PathLike, base: BuildConfig | None = None) -> BuildConfig:
    """Read a YAML recipe (a mapping of settings) over ``base`` (default: the defaults).

    Raises:
        FileNotFoundError: the file does not exist.
        ArgumentError: not a YAML mapping, an unknown key, or a bad value.
    """
    import yaml

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--config {p}: file not found (the repository's recipes live in builders/configs/)")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ArgumentError(f"--config {p}: not valid YAML ({e})") from e
    if not isinstance(data, dict):
        raise ArgumentError(f"--config {p}: expected a mapping of settings, got {type(data).__name__}")
    return merge_config(base or BuildConfig(), data, f"--config {p}")
