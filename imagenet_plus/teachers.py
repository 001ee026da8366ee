"""Teachers: one timm model or an ensemble, mapping augmented uint8 pixels to class probabilities.

Needs timm (``pip install 'imagenet-plus[timm]'``), imported when a teacher is created.

**Weights.** timm's pretrained release (``pretrained=True``; needs the network or timm's cache),
or a local safetensors checkpoint per member (``TeacherSpec(name, checkpoint)``), loaded
strictly. A checkpoint's JSON sidecar (``t.json`` next to ``t.safetensors``, written by
``builders/finetune_teacher.py``) may set the member's ``model``, ``num_classes``,
``input_size``, ``mean``, ``std`` and ``interpolation``.

**Fresh heads are refused.** timm gives a pretrained model asked for another class count a new,
randomly initialised classifier, and a checkpoint may lack the classifier's weights or hold
another class count: its "probabilities" would be noise. :func:`create_teacher` raises
:class:`~imagenet_plus.errors.BuildError` in every such case, before any download, unless
``allow_new_head=True`` (``--allow-new-head``, for fine-tuning workflows that train the head).

**Input pipeline.** Each member sees the *same* augmented uint8 pixels, resized (antialiased,
with the member's interpolation, bilinear or bicubic, clamped to [0, 255]) to its input size
when that differs, then scaled and normalised with its mean and std. The input size comes from,
in order: ``input_size=`` (``--teacher-input-size``), the checkpoint's sidecar, timm's pretrained
config (pretrained weights), else the architecture's default (a *guess*: a checkpoint without a
sidecar says nothing about the size it was trained at). :meth:`Teacher.input_pipeline` states
all of it per member, with the resize factor; the builder records it and refuses a large resize
that rests on a guess. An ensemble averages the members' softmax probabilities (as the paper).

**How the forward runs** (:data:`COMPILE_MODES`, ``teacher_compile`` of a build). ``"none"``: eagerly.
``"compile"``: the whole ensemble forward (every member's resize and normalisation, the members,
softmax and mean) under one ``torch.compile`` with static shapes. ``"cudagraphs"`` (CUDA only): the
eager ensemble captured once per input shape in a CUDA graph and replayed (one launch per batch
instead of thousands; the inputs are copied into a static buffer, the memory pool is shared by the
shapes). The first batch of each shape is also run eagerly and the probabilities compared (at most
0.05 apart, else :class:`~imagenet_plus.errors.BuildError`), so a broken compilation or capture
fails loudly instead of storing wrong targets. Both tell the builder to pad every teacher batch to the full batch size
(:attr:`Teacher.static_batch`), so one shape is compiled or captured. What is deterministic: for one
mode on one device and software stack, equal inputs give bit-equal probabilities, run after run
(graph replay runs the captured kernels; compiled code is generated once per shape). Across modes
the probabilities agree within float rounding (the compiler fuses and reorders float operations;
inductor may pick other kernels), so top-k ids agree except where two classes' probabilities tie
within rounding. The mode is therefore not part of a store's build id, like the batch size: it
changes no result beyond float rounding, and a build resumed with another mode stays valid.

``resnext101_32x48d.fb_wsl_ig1b_ft_in1k``, the largest of the paper's four IG-ResNeXt teachers,
is no longer in timm's registry; it is built here with timm's ``ResNet`` class (ResNeXt-101,
cardinality 32, width 48, torchvision's parameter names) and needs a local checkpoint of the
released WSL weights converted to safetensors.

Example:
    >>> teacher = create_teacher("resnet18", num_classes=10, pretrained=False, input_size=32)
    >>> probs = teacher(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))  # [2, 10], rows sum to 1
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._checks import check_choice
from .errors import ArgumentError, BuildError

__all__ = ["TeacherSpec", "MemberInput", "Teacher", "IG_RESNEXT_ENSEMBLE", "INPUT_SIZE_SOURCES", "COMPILE_MODES",
           "create_teacher", "create_member", "parse_teacher_list", "read_sidecar", "checkpoint_sha256_of"]

#: The paper's ImageNet teacher: four Instagram-pretrained ResNeXt-101 models fine-tuned on ImageNet-1k.
IG_RESNEXT_ENSEMBLE = (
    "resnext101_32x8d.fb_wsl_ig1b_ft_in1k",
    "resnext101_32x16d.fb_wsl_ig1b_ft_in1k",
    "resnext101_32x32d.fb_wsl_ig1b_ft_in1k",
    "resnext101_32x48d.fb_wsl_ig1b_ft_in1k",
)
#: Where a member's input size came from (``MemberInput.source``); the last one is a guess.
INPUT_SIZE_SOURCES = ("input_size argument", "checkpoint sidecar", "pretrained config", "architecture default")
GUESSED = INPUT_SIZE_SOURCES[-1]
#: How the ensemble's forward runs (see the module docstring): eagerly, compiled, or replayed from CUDA graphs.
COMPILE_MODES = ("none", "compile", "cudagraphs")
#: Largest difference of a probability between the fast (compiled, graphed) and the eager forward on the first
#: batch of each shape (bf16 rounding moves probabilities by far less; a broken capture by far more).
_FAST_TOLERANCE = 0.05

_EXTRA_ARCHS = {"resnext101_32x48d": dict(layers=(3, 4, 23, 3), cardinality=32, base_width=48)}
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_RESIZE_MODES = ("bilinear", "bicubic")
_NEW_HEAD_FLAG = "--allow-new-head (allow_new_head=True)"


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


@dataclass(frozen=True)
class MemberInput:
    """How one member turns the augmented uint8 image into its input.

    Args:
        input_size: side of the member's square input.
        source: where ``input_size`` came from (one of :data:`INPUT_SIZE_SOURCES`).
        interpolation: ``"bilinear"`` or ``"bicubic"`` (antialiased) when the image is resized.
        mean: per-channel mean (0-1 scale).
        std: per-channel std (0-1 scale).
    """

    input_size: int
    source: str
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def describe(self, image_size: int | None = None) -> dict:
        """JSON-able description; with ``image_size`` (the augmented side) also the resize and its factor."""
        d = {"input_size": self.input_size, "input_size_source": self.source, "interpolation": self.interpolation,
             "mean": list(self.mean), "std": list(self.std)}
        if image_size is not None:
            d["image_size"] = int(image_size)
            d["resize_factor"] = round(self.input_size / image_size, 4)
        return d


def parse_teacher_list(names: str | Sequence[str], checkpoints: str | Sequence[str | None] | None = None
                       ) -> list[TeacherSpec]:
    """Pair teacher names with checkpoints (comma-separated strings or lists; empty entries mean none).

    Raises:
        ArgumentError: no teacher, or a checkpoint count that differs from the teacher count.
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
        raise ArgumentError("teacher: no model name given; pass --teacher with one or more comma-separated timm "
                            "model names (e.g. resnet50.a1_in1k)")
    if cs and len(cs) != len(ns):
        raise ArgumentError(f"teacher_checkpoint: {len(cs)} checkpoints for {len(ns)} teachers ({', '.join(ns)}); "
                            "give one per teacher, in the same order (an empty entry uses pretrained weights)")
    return [TeacherSpec(n, (cs[i] or None) if cs else None) for i, n in enumerate(ns)]


def read_sidecar(checkpoint: str | Path) -> dict:
    """The JSON sidecar of a checkpoint (``t.json`` next to ``t.safetensors``), ``{}`` when there is none."""
    p = Path(checkpoint).with_suffix(".json")
    if not p.is_file():
        return {}
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BuildError(f"{p}: the checkpoint's JSON sidecar is not valid JSON ({e}); fix or delete it") from e
    if not isinstance(d, dict):
        raise BuildError(f"{p}: the checkpoint's JSON sidecar must be an object, got {type(d).__name__}")
    return d


def _timm():
    try:
        import timm
        import timm.data
        import timm.models
    except ImportError as e:
        raise BuildError(f"teachers need timm ({e}): pip install 'imagenet-plus[timm]'") from None
    return timm


def _arch(name: str) -> str:
    return name.split(".")[0]


def _build_model(spec: TeacherSpec, num_classes: int | None, pretrained: bool) -> nn.Module:
    """The timm model of ``spec`` (pretrained weights only when asked and there is no checkpoint)."""
    timm = _timm()

    arch = _arch(spec.name)
    use_pretrained = pretrained and spec.checkpoint is None
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    if arch in _EXTRA_ARCHS and arch not in timm.list_models(arch):
        if use_pretrained:
            raise BuildError(f"timm has no pretrained weights for {arch}; convert the released WSL weights to "
                             "safetensors and pass them with --teacher-checkpoint")
        from timm.models.resnet import Bottleneck, ResNet

        cfg = _EXTRA_ARCHS[arch]
        model = ResNet(Bottleneck, list(cfg["layers"]), cardinality=cfg["cardinality"],
                       base_width=cfg["base_width"], num_classes=num_classes or 1000)
        model.pretrained_cfg = {"input_size": (3, 224, 224), "interpolation": "bilinear", "mean": _IMAGENET_MEAN,
                                "std": _IMAGENET_STD, "crop_pct": 0.875, "num_classes": 1000,
                                "architecture": arch, "classifier": "fc"}
        return model
    try:
        return timm.create_model(spec.name, pretrained=use_pretrained, **kwargs)
    except Exception as e:  # timm raises RuntimeError/ValueError/OSError/HF errors: report them all the same way
        how = "downloading its pretrained weights" if use_pretrained else "building it"
        raise BuildError(f"teacher {spec.name!r}: {how} failed ({type(e).__name__}: {e}). Check the name with "
                         f"timm.list_models(pretrained=True); without network access pass local weights with "
                         f"--teacher-checkpoint (safetensors)") from e


def _check_pretrained_head(spec: TeacherSpec, num_classes: int | None, allow_new_head: bool) -> None:
    """Refuse (before any download) a pretrained model asked for another class count: timm would give it a new head."""
    if num_classes is None or allow_new_head:
        return
    cfg = _timm().models.get_pretrained_cfg(spec.name)
    have = getattr(cfg, "num_classes", None) if cfg is not None else None
    if have and have != num_classes:
        raise BuildError(f"teacher {spec.name!r}: its pretrained classifier has {have} classes, num_classes is "
                         f"{num_classes}; timm would replace the head with a randomly initialised one and the "
                         f"teacher's probabilities would be noise. Use a checkpoint fine-tuned on your {num_classes} "
                         f"classes (--teacher-checkpoint, see builders/finetune_teacher.py), or pass {_NEW_HEAD_FLAG} "
                         "if a fresh head is really what you want (fine-tuning workflows)")


def _classifier_names(model_name: str, model: nn.Module | None = None) -> list[str]:
    """The classifier module names of a timm model (its pretrained config's ``classifier``), without building it."""
    if model is not None and isinstance(getattr(model, "pretrained_cfg", None), dict):
        names = model.pretrained_cfg.get("classifier")
    elif _arch(model_name) in _EXTRA_ARCHS:
        names = "fc"
    else:
        cfg = _timm().models.get_pretrained_cfg(model_name)
        names = getattr(cfg, "classifier", None) if cfg is not None else None
    return [names] if isinstance(names, str) else list(names or [])


def _head_keys(keys, names: Sequence[str]) -> set[str]:
    """The state-dict keys (of ``keys``) that belong to the classifier modules ``names``."""
    return {k for k in keys for n in names if k == n or k.startswith(n + ".")}


def _checkpoint_num_classes(state: dict, head: set[str]) -> int | None:
    """The class count a checkpoint's classifier was trained for (its head weight's first dimension)."""
    weights = sorted(k for k in head if k.endswith("weight") and k in state and state[k].ndim >= 1)
    return int(state[weights[-1]].shape[0]) if weights else None


def checkpoint_sha256_of(path: str | Path) -> str:
    """Hex sha256 of a checkpoint file's bytes (what a store's build id records of its teacher's weights).

    Raises:
        FileNotFoundError: the file does not exist (named, with the flag to fix).
    """
    import hashlib

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"teacher checkpoint {p} does not exist; check --teacher-checkpoint")
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _read_checkpoint(path: Path, name: str) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise FileNotFoundError(f"teacher checkpoint {path} (for {name!r}) does not exist; check --teacher-checkpoint")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise BuildError(f"teacher checkpoint {path} is not a readable safetensors file ({e}); checkpoints must be "
                         "safetensors (convert .pth files with safetensors.torch.save_file)") from e


def _load_checkpoint(model: nn.Module, spec: TeacherSpec, state: dict, allow_new_head: bool) -> None:
    """Load ``state`` into ``model`` strictly; a missing or mismatched classifier only with ``allow_new_head``."""
    own = model.state_dict()
    head = _head_keys(own.keys(), _classifier_names(spec.name, model))
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    body = [k for k in missing + mismatched if k not in head] + [k for k in unexpected if k not in head]
    if body:
        detail = ", ".join((missing + unexpected + mismatched)[:6])
        raise BuildError(f"teacher checkpoint {spec.checkpoint} does not match model {spec.name!r} (keys missing, "
                         f"unexpected or of another shape: {detail}); pass the checkpoint's own model name (see its "
                         ".json sidecar) and --num-classes")
    bad_head = [k for k in missing + mismatched if k in head]
    if bad_head and not allow_new_head:
        if missing:
            what = f"has no weights for the classifier head ({', '.join(bad_head)})"
            fix = "use a checkpoint with its trained head"
        else:
            got = _checkpoint_num_classes(state, head)
            what = f"has a classifier head for {got} classes but num_classes is {model.num_classes}"
            fix = (f"use a checkpoint trained on {model.num_classes} classes (--num-classes cannot change a trained "
                   f"head; leave it out only if your data has the checkpoint's {got} classes)")
        raise BuildError(f"teacher checkpoint {spec.checkpoint} (of {spec.name!r}) {what}: the model's head would be "
                         f"randomly initialised and the teacher's probabilities would be noise; {fix}, or pass "
                         f"{_NEW_HEAD_FLAG} for fine-tuning workflows")
    keep = {k: v for k, v in state.items() if k not in bad_head and k in own}
    model.load_state_dict(keep, strict=not bad_head)


def _member_input(model: nn.Module, spec: TeacherSpec, side: dict, input_size: int | None,
                  pretrained: bool) -> MemberInput:
    """Resolve a member's input pipeline (see the module docstring for the order)."""
    cfg = dict(_timm().data.resolve_data_config({}, model=model))
    size = int(cfg["input_size"][-1])
    source = "pretrained config" if pretrained and spec.checkpoint is None else GUESSED
    if "input_size" in side:
        size, source = int(side["input_size"][-1]), "checkpoint sidecar"
    if input_size is not None:
        size, source = int(input_size), "input_size argument"
    interp = str(side.get("interpolation", cfg.get("interpolation", "bilinear")))
    mean = tuple(float(v) for v in side.get("mean", cfg["mean"]))
    std = tuple(float(v) for v in side.get("std", cfg["std"]))
    interp = interp if interp in _RESIZE_MODES else "bilinear"
    return MemberInput(size, source, interp, mean, std)  # type: ignore[arg-type]


def create_member(spec: TeacherSpec, *, num_classes: int | None = None, pretrained: bool = True,
                  allow_new_head: bool = False, input_size: int | None = None,
                  device: str | torch.device = "cpu") -> tuple[nn.Module, MemberInput]:
    """One member: its model (eval mode, on ``device``) and input pipeline.

    ``num_classes`` defaults to the sidecar's, else the checkpoint head's, else the pretrained head's.

    Raises:
        BuildError: the model cannot be built, its weights cannot be fetched or do not fit, or its head
            would be freshly initialised (without ``allow_new_head``).
        FileNotFoundError: the checkpoint does not exist.
    """
    side = read_sidecar(spec.checkpoint) if spec.checkpoint else {}
    if spec.checkpoint and side.get("model") and _arch(str(side["model"])) != _arch(spec.name):
        raise BuildError(f"teacher checkpoint {spec.checkpoint} was trained as {side['model']!r}, not {spec.name!r}; "
                         f"pass --teacher {side['model']}")
    state = _read_checkpoint(Path(spec.checkpoint), spec.name) if spec.checkpoint else None
    nc = num_classes if num_classes is not None else side.get("num_classes")
    if state is not None and nc is None:
        nc = _checkpoint_num_classes(state, _head_keys(state.keys(), _classifier_names(spec.name)))
    if pretrained and spec.checkpoint is None:
        _check_pretrained_head(spec, nc, allow_new_head)
    with torch.device(device):  # parameters are created (and randomly initialised) on the device directly
        model = _build_model(spec, None if nc is None else int(nc), pretrained)
    if state is not None:
        _load_checkpoint(model, spec, state, allow_new_head)
    return model.eval(), _member_input(model, spec, side, input_size, pretrained)


class Teacher(nn.Module):
    """An ensemble of timm classifiers mapping uint8 ``[B, 3, S, S]`` pixels to mean probabilities ``[B, C]``.

    Args:
        models: the members (eval mode).
        inputs: one :class:`MemberInput` per member.
        names: the members' names (for the description).
        checkpoints: the members' checkpoint paths (``None`` for pretrained/random).
        amp: run the members under bf16 autocast (CUDA).
    """

    def __init__(self, models: Sequence[nn.Module], inputs: Sequence[MemberInput], names: Sequence[str],
                 checkpoints: Sequence[str | None], amp: bool = False,
                 checkpoint_sha256: Sequence[str | None] | None = None):
        super().__init__()
        self.members = nn.ModuleList(models)
        self.inputs = list(inputs)
        self.names = list(names)
        self.checkpoints = list(checkpoints)
        #: sha256 (hex) of each member's checkpoint file (``None``: pretrained or random weights); part of a
        #: store's build id through :meth:`describe`.
        self.checkpoint_sha256 = list(checkpoint_sha256) if checkpoint_sha256 is not None else \
            [None if c is None else checkpoint_sha256_of(c) for c in self.checkpoints]
        self.amp = amp
        for i, c in enumerate(self.inputs):
            self.register_buffer(f"mean{i}", torch.tensor(c.mean, dtype=torch.float32).view(1, 3, 1, 1) * 255,
                                 persistent=False)
            self.register_buffer(f"std{i}", torch.tensor(c.std, dtype=torch.float32).view(1, 3, 1, 1) * 255,
                                 persistent=False)
        self.compile_mode = "none"
        self._compiled = None
        self._graphs: dict[tuple, tuple[torch.Tensor, "torch.cuda.CUDAGraph", torch.Tensor]] = {}
        self._checked: set[tuple] = set()  # input shapes whose fast forward was checked against eager

    @property
    def num_classes(self) -> int:
        return int(self.members[0].num_classes)

    @property
    def static_batch(self) -> bool:
        """Whether callers should pad every batch to one size (compiled or graphed: one shape, one compilation)."""
        return self.compile_mode != "none"

    def set_compile(self, mode: str, backend: str | None = None) -> "Teacher":
        """Run the forward as ``mode`` (one of :data:`COMPILE_MODES`, see the module docstring).

        Args:
            mode: ``"none"``, ``"compile"`` or ``"cudagraphs"``.
            backend: ``torch.compile``'s backend for ``"compile"`` (default inductor).

        Raises:
            ArgumentError: an unknown mode, or ``"cudagraphs"`` for a teacher that is not on a CUDA device.
        """
        check_choice(mode, "teacher_compile", COMPILE_MODES)
        device = next(self.members[0].parameters()).device
        if mode == "cudagraphs" and device.type != "cuda":
            raise ArgumentError(f"teacher_compile: 'cudagraphs' needs the teacher on a CUDA device, it is on "
                                f"{device}; use teacher_compile none or compile (--teacher-compile)")
        self.compile_mode = mode
        self._graphs, self._checked = {}, set()
        kwargs = {} if backend is None else {"backend": backend}
        self._compiled = torch.compile(self._ensemble, dynamic=False, **kwargs) if mode == "compile" else None
        return self

    def preprocess(self, x: torch.Tensor, i: int) -> torch.Tensor:
        """Member ``i``'s input: resize to its input size if needed (clamped to [0, 255]), scale, normalise."""
        c = self.inputs[i]
        x = x.float()
        if x.shape[-2:] != (c.input_size, c.input_size):
            x = F.interpolate(x, size=(c.input_size, c.input_size), mode=c.interpolation, align_corners=False,
                              antialias=True).clamp_(0.0, 255.0)
        x = (x - getattr(self, f"mean{i}")) / getattr(self, f"std{i}")
        return x.contiguous(memory_format=torch.channels_last)

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Mean softmax probabilities (float32) of the members for uint8 pixels ``x``."""
        if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1] != 3:
            raise ArgumentError(f"teacher input must be uint8 [B, 3, H, W], got {x.dtype} {list(x.shape)}")
        if self.compile_mode == "none":
            return self._ensemble(x)
        out = self._compiled(x) if self._compiled is not None else self._replay(x)
        key = (tuple(x.shape), str(x.device))
        if key not in self._checked:  # once per shape: the fast forward against the eager one on the same batch
            self._check_fast(out, self._ensemble(x), list(x.shape))
            self._checked.add(key)
        return out

    def _check_fast(self, fast: torch.Tensor, eager: torch.Tensor, shape: list) -> None:
        """Refuse a compiled or graphed forward whose probabilities differ from eager's by more than rounding."""
        diff = float((fast.float() - eager.float()).abs().max()) if fast.shape == eager.shape else float("inf")
        if not diff <= _FAST_TOLERANCE:
            raise BuildError(f"teacher_compile {self.compile_mode}: the teacher's ({', '.join(self.names)}) "
                             f"probabilities for input {shape} differ from its eager forward's by {diff:.3g} "
                             f"(more than float rounding, {_FAST_TOLERANCE}); use --teacher-compile none and report "
                             "the model and torch version")

    def _ensemble(self, x: torch.Tensor) -> torch.Tensor:
        """The ensemble's computation (eager; what ``compile`` compiles and ``cudagraphs`` captures)."""
        total = None
        for i, member in enumerate(self.members):
            xi = self.preprocess(x, i)
            # no autocast weight cache: it would outlive a CUDA graph's capture (and saves nothing here)
            with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=self.amp,
                                cache_enabled=False):
                logits = member(xi)
            p = torch.softmax(logits.float(), dim=1)
            total = p if total is None else total + p
        return total / len(self.members)

    def _replay(self, x: torch.Tensor) -> torch.Tensor:
        """``cudagraphs``: copy ``x`` into the static input of its shape's graph (captured on first use), replay."""
        key = (tuple(x.shape), str(x.device))
        if key not in self._graphs:
            self._graphs[key] = self._capture(x)
        static_in, graph, static_out = self._graphs[key]
        static_in.copy_(x)
        graph.replay()
        return static_out.clone()  # the next replay overwrites static_out

    def _capture(self, x: torch.Tensor) -> tuple[torch.Tensor, "torch.cuda.CUDAGraph", torch.Tensor]:
        """Warm up on a side stream (cuDNN's autotuning, lazy initialisation), then capture one forward."""
        static_in = x.clone()
        main = torch.cuda.current_stream(x.device)
        side = torch.cuda.Stream(x.device)
        side.wait_stream(main)
        try:
            with torch.cuda.stream(side):
                for _ in range(3):
                    self._ensemble(static_in)
            main.wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            pool = next(iter(self._graphs.values()))[1].pool() if self._graphs else None
            # thread_local: work of the build's other threads (the shard writer) does not break the capture
            with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
                static_out = self._ensemble(static_in)
        except RuntimeError as e:
            raise BuildError(f"teacher_compile cudagraphs: capturing the teacher ({', '.join(self.names)}) for input "
                             f"{list(x.shape)} in a CUDA graph failed ({e}); use --teacher-compile compile or "
                             "none") from e
        return static_in, graph, static_out

    def describe(self) -> dict:
        """JSON-able description for the manifest (names, checkpoint file names and sha256s, input pipelines)."""
        return {
            "models": list(self.names),
            "checkpoints": [None if c is None else Path(c).name for c in self.checkpoints],
            "checkpoint_sha256": list(self.checkpoint_sha256),
            "ensemble": "mean of softmax probabilities",
            "num_classes": self.num_classes,
            "inputs": [c.describe() for c in self.inputs],
        }

    def input_pipeline(self, image_size: int) -> list[dict]:
        """Per member: how an augmented ``image_size`` image becomes its input (with the resize factor)."""
        return [{"model": n, "checkpoint": None if ck is None else Path(ck).name, **c.describe(image_size)}
                for n, ck, c in zip(self.names, self.checkpoints, self.inputs)]


def create_teacher(specs: Sequence[TeacherSpec] | str, *, num_classes: int | None = None, pretrained: bool = True,
                   device: str | torch.device = "cpu", compile: str | bool = "none", amp: bool | None = None,
                   input_size: int | None = None, allow_new_head: bool = False) -> Teacher:
    """Build an (ensemble) teacher.

    Args:
        specs: members, or a comma-separated string of timm names.
        num_classes: classifier size (``None``: each checkpoint's sidecar or head, or the pretrained head).
        pretrained: download timm's pretrained weights for members without a checkpoint.
        device: where the teacher runs.
        compile: how the forward runs, one of :data:`COMPILE_MODES` (``True`` is ``"compile"``, ``False``
            ``"none"``); see :meth:`Teacher.set_compile`.
        amp: bf16 autocast (default: on CUDA).
        input_size: side of every member's input (``None``: the sidecar's, the pretrained config's, else
            the architecture's default); augmented images are resized to it when they differ.
        allow_new_head: accept a freshly initialised classifier (see the module docstring).

    Returns:
        A :class:`Teacher` in eval mode, channels_last, on ``device``.

    Raises:
        BuildError: a member cannot be built, its weights cannot be fetched or do not match, its head
            would be freshly initialised, or the members disagree on the number of classes.
        FileNotFoundError: a checkpoint is missing.

    Example:
        >>> t = create_teacher("resnet18", num_classes=10, pretrained=False)
        >>> probs = t(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    """
    if isinstance(specs, str):
        specs = parse_teacher_list(specs)
    device = torch.device(device)
    models, inputs = [], []
    # hashed before loading: the store's build id records the weights' files (teacher_desc -> manifest.teacher)
    shas = [None if s.checkpoint is None or not Path(s.checkpoint).is_file() else checkpoint_sha256_of(s.checkpoint)
            for s in specs]
    for spec in specs:
        model, member_input = create_member(spec, num_classes=num_classes, pretrained=pretrained,
                                            allow_new_head=allow_new_head, input_size=input_size, device=device)
        models.append(model.to(device).to(memory_format=torch.channels_last))
        inputs.append(member_input)
    counts = {s.name: int(m.num_classes) for s, m in zip(specs, models)}
    if len(set(counts.values())) != 1:
        raise BuildError(f"teachers disagree on the number of classes ({counts}); an ensemble needs one class set "
                         "(set --num-classes or use matching checkpoints)")
    if num_classes is not None and next(iter(counts.values())) != num_classes:
        raise BuildError(f"teachers have {next(iter(counts.values()))} classes but num_classes={num_classes}")
    teacher = Teacher(models, inputs, [s.name for s in specs], [s.checkpoint for s in specs],
                      amp=(device.type == "cuda") if amp is None else amp, checkpoint_sha256=shas).to(device)
    mode = {True: "compile", False: "none"}.get(compile, compile) if isinstance(compile, bool) else compile
    return teacher.set_compile(mode)
