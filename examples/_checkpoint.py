"""Training checkpoints as one safetensors file with JSON metadata (no pickle), written atomically.

A checkpoint holds everything a resumed run needs to continue bit for bit:
the model, the EMA model, the optimiser state (tensors in the file, scalars
and the param groups in the JSON), the RNG states, the completed epoch, the
global step and the per-epoch history. It is written through
:func:`imagenet_plus.atomic_write`, so a kill at any moment leaves the
previous checkpoint or the new one, never a torn file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save as save_tensors

from imagenet_plus import atomic_write

__all__ = ["FORMAT", "save_checkpoint", "load_checkpoint", "save_weights", "load_pretrained"]

FORMAT = "imagenet-plus-train-checkpoint/1"


def _optimizer_parts(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, entries in state["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim/{pid}/{name}"] = value.detach().to("cpu").contiguous()
            else:
                scalars.setdefault(str(pid), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _cpu(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    # clone: safetensors refuses tensors sharing storage (tied weights)
    return {f"{prefix}/{k}": v.detach().to("cpu").clone(memory_format=torch.contiguous_format)
            for k, v in state.items()}


def save_checkpoint(path: str | Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    ema: torch.nn.Module | None, meta: dict) -> None:
    """Write a checkpoint atomically.

    Args:
        path: destination (``.safetensors``).
        model: the unwrapped student.
        optimizer: its optimiser.
        ema: the EMA copy (or ``None``).
        meta: JSON-able run state (epoch, step, history, settings digest, ...).
    """
    tensors = _cpu(model.state_dict(), "model")
    if ema is not None:
        tensors.update(_cpu(ema.state_dict(), "ema"))
    opt_tensors, opt_json = _optimizer_parts(optimizer.state_dict())
    tensors.update(opt_tensors)
    tensors["rng/torch"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda/{i}"] = s
    body = {"format": FORMAT, "meta": meta, "optimizer": opt_json}
    blob = save_tensors(tensors, metadata={"json": json.dumps(body)})
    atomic_write(path, [blob])


def load_checkpoint(path: str | Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    ema: torch.nn.Module | None, device: torch.device) -> dict:
    """Restore a checkpoint written by :func:`save_checkpoint` into the given objects; returns its ``meta``.

    Raises:
        ValueError: the file is not a training checkpoint of this format, or its parts do not fit the model.
    """
    path = Path(path)
    with safe_open(str(path), framework="pt", device="cpu") as f:
        header = f.metadata() or {}
        try:
            body = json.loads(header["json"])
        except (KeyError, json.JSONDecodeError):
            raise ValueError(f"{path} is not a training checkpoint (no JSON metadata); remove it or pick another "
                             "--out folder") from None
        if body.get("format") != FORMAT:
            raise ValueError(f"{path} has format {body.get('format')!r}, this script reads {FORMAT!r}; "
                             "resume with the script version that wrote it or start in a new --out folder")
        tensors = {k: f.get_tensor(k) for k in f.keys()}

    def part(prefix: str) -> dict[str, torch.Tensor]:
        n = len(prefix) + 1
        return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix + "/")}

    model.load_state_dict(part("model"))
    if ema is not None:
        ema_state = part("ema")
        if not ema_state:
            raise ValueError(f"{path} holds no EMA weights but the recipe enables ema; resume with the same recipe")
        ema.load_state_dict(ema_state)
    opt = body["optimizer"]
    state: dict[int, dict[str, Any]] = {}
    for key, value in part("optim").items():
        pid, name = key.split("/", 1)
        state.setdefault(int(pid), {})[name] = value.to(device)
    for pid, entries in opt["scalars"].items():
        state.setdefault(int(pid), {}).update(entries)
    optimizer.load_state_dict({"state": state, "param_groups": opt["param_groups"]})
    torch.set_rng_state(tensors["rng/torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng/cuda/")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
    return body["meta"]


def save_weights(path: str | Path, model: torch.nn.Module, sidecar: dict) -> None:
    """The trained weights as safetensors plus a JSON sidecar (``imagenet_plus.teachers`` reads both)."""
    path = Path(path)
    weights = {k: v.detach().to("cpu").clone(memory_format=torch.contiguous_format)
               for k, v in model.state_dict().items()}
    atomic_write(path, [save_tensors(weights)])
    atomic_write(path.with_suffix(".json"), [(json.dumps(sidecar, indent=1) + "\n").encode("utf-8")])


def load_pretrained(model: torch.nn.Module, path: str | Path) -> list[str]:
    """Load fine-tuning weights (e.g. another run's ``model.safetensors``) into ``model``.

    Entries whose shape differs from the model's (the classifier of another class count)
    are skipped and stay freshly initialised; every other model entry must be present.

    Returns:
        The names of the skipped entries.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the weights lack entries of the model or hold entries it does not have.
    """
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model.checkpoint {path} does not exist; point it to a .safetensors file of "
                                "pretrained weights (e.g. OUT/model.safetensors of an ImageNet run)")
    weights = load_file(str(path))
    own = model.state_dict()
    skipped = sorted(k for k in weights if k in own and weights[k].shape != own[k].shape)
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    if missing or unexpected:
        raise ValueError(f"model.checkpoint {path} does not fit the model: missing {missing[:5]}, unexpected "
                         f"{unexpected[:5]}; use weights of the same architecture (model.name)")
    model.load_state_dict({k: v for k, v in weights.items() if k not in skipped}, strict=False)
    return skipped
