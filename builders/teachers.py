"""Teachers for the builder: one timm model or an ensemble, mapping augmented uint8 pixels to probabilities.

Each member gets its own preprocessing from timm's pretrained config
(``timm.data.resolve_data_config``: input size, mean, std, interpolation),
applied to the *same* augmented uint8 pixels: a batch whose side differs from
the member's input size is resized (bilinear, antialiased), then normalised.
An ensemble averages the members' softmax probabilities (as in the paper).

Weights come from timm's pretrained release (``pretrained=True``, real runs)
or from local safetensors checkpoints (one per member, loaded with
``safetensors.torch.load_file`` and ``load_state_dict(strict=True)``); a
checkpoint's JSON sidecar (written by ``builders/finetune_teacher.py``) may set
the member's ``num_classes``, ``mean``, ``std`` and ``input_size``.

``resnext101_32x48d.fb_wsl_ig1b_ft_in1k``, the largest of the paper's four
IG-ResNeXt teachers, is no longer part of timm's model registry; it is built
here with timm's ``ResNet`` class (ResNeXt-101, cardinality 32, width 48, the
``torchvision`` parameter names) and needs a local checkpoint of the released
WSL weights converted to safetensors.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["TeacherSpec", "Teacher", "TeacherLoadError", "create_teacher", "parse_teacher_list", "IG_RESNEXT_ENSEMBLE"]

#: The paper's ImageNet teacher: four Instagram-pretrained ResNeXt-101 models fine-tuned on ImageNet-1k.
IG_RESNEXT_ENSEMBLE = (
    "resnext101_32x8d.fb_wsl_ig1b_ft_in1k",
    "resnext101_32x16d.fb_wsl_ig1b_ft_in1k",
    "resnext101_32x32d.fb_wsl_ig1b_ft_in1k",
    "resnext101_32x48d.fb_wsl_ig1b_ft_in1k",
)

_EXTRA_ARCHS = {"resnext101_32x48d": dict(layers=(3, 4, 23, 3), cardinality=32, base_width=48)}
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class TeacherLoadError(RuntimeError):
    """A teacher cannot be built or its weights cannot be fetched."""


@dataclass(frozen=True)
class TeacherSpec:
    """One ensemble member.

    Args:
        name: timm model name, optionally with a pretrained tag (``resnet50.a1_in1k``).
        checkpoint: local safetensors file with the weights (``None``: timm's pretrained weights
            when ``pretrained`` is true, else random initialisation).
    """

    name: str
    checkpoint: str | None = None


def parse_teacher_list(names: str | Sequence[str], checkpoints: str | Sequence[str | None] | None = None
                       ) -> list[TeacherSpec]:
    """Pair teacher names with checkpoints (comma-separated strings or lists; empty entries mean none).

    Raises:
        ValueError: no teacher, or a checkpoint count that differs from the teacher count.
    """
    def split(v) -> list:
        if v is None:
            return []
        if isinstance(v, str):
            return [s.strip() for s in v.split(",")]
        return [None if s is None else str(s).strip() for s in v]

    ns = [n for n in split(names) if n]
    cs = split(checkpoints)
    if not ns:
        raise ValueError("teacher: no model name given; pass --teacher with one or more comma-separated timm "
                         "model names (e.g. resnet50.a1_in1k)")
    if cs and len(cs) != len(ns):
        raise ValueError(f"teacher_checkpoint: {len(cs)} checkpoints for {len(ns)} teachers ({', '.join(ns)}); "
                         "give one per teacher, in the same order (an empty entry uses pretrained weights)")
    return [TeacherSpec(n, (cs[i] or None) if cs else None) for i, n in enumerate(ns)]


def _sidecar(checkpoint: str) -> dict:
    p = Path(checkpoint).with_suffix(".json")
    if not p.is_file():
        return {}
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{p}: the checkpoint's JSON sidecar is not valid JSON ({e}); fix or delete it") from e


def _create_model(spec: TeacherSpec, num_classes: int | None, pretrained: bool) -> nn.Module:
    import timm

    arch = spec.name.split(".")[0]
    use_pretrained = pretrained and spec.checkpoint is None
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    try:
        if arch in _EXTRA_ARCHS and arch not in timm.list_models(arch):
            if use_pretrained:
                raise TeacherLoadError(f"timm has no pretrained weights for {arch}; convert the released WSL weights "
                                   "to safetensors and pass them with --teacher-checkpoint")
            from timm.models.resnet import Bottleneck, ResNet

            cfg = _EXTRA_ARCHS[arch]
            model = ResNet(Bottleneck, list(cfg["layers"]), cardinality=cfg["cardinality"],
                           base_width=cfg["base_width"], num_classes=num_classes or 1000)
            model.pretrained_cfg = {"input_size": (3, 224, 224), "interpolation": "bilinear",
                                    "mean": _IMAGENET_MEAN, "std": _IMAGENET_STD, "crop_pct": 0.875,
                                    "num_classes": 1000, "architecture": arch}
            return model
        return timm.create_model(spec.name, pretrained=use_pretrained, **kwargs)
    except TeacherLoadError:
        raise
    except Exception as e:  # timm raises RuntimeError/ValueError/OSError/HF errors: report them all the same way
        how = ("downloading its pretrained weights" if use_pretrained else "building it")
        raise TeacherLoadError(f"teacher {spec.name!r}: {how} failed ({type(e).__name__}: {e}). Check the name with "
                           f"timm.list_models(pretrained=True); without network access pass local weights with "
                           f"--teacher-checkpoint (safetensors).") from e


def _load_checkpoint(model: nn.Module, spec: TeacherSpec) -> None:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(spec.checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"teacher checkpoint {path} (for {spec.name!r}) does not exist; check "
                                "--teacher-checkpoint")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"teacher checkpoint {path} is not a readable safetensors file ({e}); checkpoints must be "
                         "safetensors (convert .pth files with safetensors.torch.save_file)") from e
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        msg = str(e).split("\n")
        detail = "; ".join(m.strip() for m in msg[1:4] if m.strip())[:600]
        raise ValueError(f"teacher checkpoint {path} does not match model {spec.name!r} ({detail}); pass the "
                         "checkpoint's own model name (see its .json sidecar) and --num-classes") from e


class Teacher(nn.Module):
    """An ensemble of timm classifiers mapping uint8 ``[B, 3, S, S]`` pixels to mean probabilities ``[B, C]``.

    Args:
        models: the members (eval mode).
        data_configs: one ``{"input_size", "mean", "std", "interpolation"}`` dict per member.
        names: the members' names (for the description).
        checkpoints: the members' checkpoint paths (``None`` for pretrained/random).
        amp: run the members under bf16 autocast (CUDA).
    """

    def __init__(self, models: Sequence[nn.Module], data_configs: Sequence[dict], names: Sequence[str],
                 checkpoints: Sequence[str | None], amp: bool = False):
        super().__init__()
        self.members = nn.ModuleList(models)
        self.data_configs = [dict(c) for c in data_configs]
        self.names = list(names)
        self.checkpoints = list(checkpoints)
        self.amp = amp
        for i, c in enumerate(self.data_configs):
            self.register_buffer(f"mean{i}", torch.tensor(c["mean"], dtype=torch.float32).view(1, 3, 1, 1) * 255,
                                 persistent=False)
            self.register_buffer(f"std{i}", torch.tensor(c["std"], dtype=torch.float32).view(1, 3, 1, 1) * 255,
                                 persistent=False)
        self._forwards = list(self.members)

    @property
    def num_classes(self) -> int:
        return int(self.members[0].num_classes)

    def compile_members(self, **kwargs) -> "Teacher":
        """``torch.compile`` every member (static shapes: the builder pads every batch to full size)."""
        self._forwards = [torch.compile(m, **kwargs) for m in self.members]
        return self

    def preprocess(self, x: torch.Tensor, i: int) -> torch.Tensor:
        """Member ``i``'s input: resize to its input size if needed, scale and normalise."""
        c = self.data_configs[i]
        h, w = int(c["input_size"][1]), int(c["input_size"][2])
        x = x.float()
        if x.shape[-2:] != (h, w):
            x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        x = (x - getattr(self, f"mean{i}")) / getattr(self, f"std{i}")
        return x.contiguous(memory_format=torch.channels_last)

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Mean softmax probabilities (float32) of the members for uint8 pixels ``x``."""
        if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"teacher input must be uint8 [B, 3, H, W], got {x.dtype} {list(x.shape)}")
        total = None
        for i, fwd in enumerate(self._forwards):
            xi = self.preprocess(x, i)
            with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=self.amp):
                logits = fwd(xi)
            p = torch.softmax(logits.float(), dim=1)
            total = p if total is None else total + p
        return total / len(self._forwards)

    def describe(self) -> dict:
        """JSON-able description for the manifest (names, checkpoint file names, preprocessing)."""
        return {
            "models": list(self.names),
            "checkpoints": [None if c is None else Path(c).name for c in self.checkpoints],
            "ensemble": "mean of softmax probabilities",
            "num_classes": self.num_classes,
            "data_configs": [{"input_size": list(c["input_size"]), "mean": list(c["mean"]), "std": list(c["std"])}
                             for c in self.data_configs],
        }


def create_teacher(specs: Sequence[TeacherSpec] | str, *, num_classes: int | None = None, pretrained: bool = True,
                   device: str | torch.device = "cpu", compile: bool = False, amp: bool | None = None,
                   input_size: int | None = None) -> Teacher:
    """Build an (ensemble) teacher.

    Args:
        specs: members, or a comma-separated string of timm names.
        num_classes: classifier size (``None``: the pretrained head, or the checkpoint sidecar's value).
        pretrained: download timm's pretrained weights for members without a checkpoint.
        device: where the teacher runs.
        compile: ``torch.compile`` the members (CUDA only; ignored on CPU).
        amp: bf16 autocast (default: on CUDA).
        input_size: side of every member's input (``None``: each member's pretrained config, or
            its checkpoint sidecar); the augmented pixels are resized to it when they differ.

    Returns:
        A :class:`Teacher` in eval mode, channels_last, on ``device``.

    Raises:
        TeacherLoadError: a member cannot be built or its pretrained weights cannot be fetched.
        FileNotFoundError, ValueError: a checkpoint is missing, unreadable, or does not match its model;
            members disagree on the number of classes.

    Example:
        >>> t = create_teacher("resnet18", num_classes=10, pretrained=False)
        >>> probs = t(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    """
    import timm.data

    if isinstance(specs, str):
        specs = parse_teacher_list(specs)
    device = torch.device(device)
    models, cfgs = [], []
    for spec in specs:
        side = _sidecar(spec.checkpoint) if spec.checkpoint else {}
        nc = num_classes if num_classes is not None else side.get("num_classes")
        if spec.checkpoint and side.get("model") and side["model"].split(".")[0] != spec.name.split(".")[0]:
            raise ValueError(f"teacher checkpoint {spec.checkpoint} was trained as {side['model']!r}, not "
                             f"{spec.name!r}; pass --teacher {side['model']}")
        with device:  # parameters are created (and randomly initialised) on the device directly
            model = _create_model(spec, nc, pretrained)
        if spec.checkpoint:
            _load_checkpoint(model, spec)
        cfg = dict(timm.data.resolve_data_config({}, model=model))
        for k in ("mean", "std", "input_size"):
            if k in side:
                cfg[k] = tuple(side[k])
        if input_size is not None:
            cfg["input_size"] = (3, int(input_size), int(input_size))
        models.append(model.eval().to(device).to(memory_format=torch.channels_last))
        cfgs.append(cfg)
    counts = {s.name: int(m.num_classes) for s, m in zip(specs, models)}
    if len(set(counts.values())) != 1:
        raise ValueError(f"teachers disagree on the number of classes ({counts}); an ensemble needs one class set "
                         "(set --num-classes or use matching checkpoints)")
    if num_classes is not None and next(iter(counts.values())) != num_classes:
        raise ValueError(f"teachers have {next(iter(counts.values()))} classes but num_classes={num_classes}")
    teacher = Teacher(models, cfgs, [s.name for s in specs], [s.checkpoint for s in specs],
                      amp=(device.type == "cuda") if amp is None else amp).to(device)
    if compile and device.type == "cuda":
        teacher.compile_members()
    return teacher
