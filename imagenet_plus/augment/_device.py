"""Host-to-device transfers that never make the host wait for the device.

``Policy.finish`` runs on a CUDA stream that may be queued behind a teacher's
forward pass on another stream. A pageable ``tensor.to("cuda")``, ``torch.tensor(...,
device="cuda")`` or ``.item()`` would block the host until the device catches up.
Everything here only enqueues: host arrays are staged in pinned memory and copied with
``non_blocking=True`` (PyTorch's pinned-memory allocator keeps the staging buffer alive
until its copy has run), and constants are uploaded once per device *and stream*, so a
cached tensor is always read on the stream that wrote it.
"""

from __future__ import annotations

from typing import Callable, Hashable

import numpy as np
import torch

__all__ = ["upload", "cached_upload"]

_CACHE: dict[tuple, torch.Tensor] = {}
_CACHE_LIMIT = 512


def upload(value: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """``value`` on ``device`` without a host sync (CPU: the same memory where possible).

    Args:
        value: a numpy array or a CPU tensor.
        device: the target device.
    """
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(np.require(value, requirements=("C", "W")))
    if value.device == device:
        return value
    if device.type == "cuda" and value.device.type == "cpu":
        return value.pin_memory().to(device, non_blocking=True)
    return value.to(device)


def cached_upload(key: Hashable, device: torch.device, make: Callable[[], torch.Tensor]) -> torch.Tensor:
    """The CPU tensor ``make()`` on ``device``, uploaded once per (key, device, current stream).

    On the CPU this is ``make()`` itself (callers cache that themselves).
    """
    if device.type == "cpu":
        return make()
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
    k = (key, str(device), stream)
    t = _CACHE.get(k)
    if t is None:
        if len(_CACHE) >= _CACHE_LIMIT:
            _CACHE.clear()  # tensors were allocated on the stream that reads them: freeing them is safe
        t = _CACHE[k] = upload(make(), device)
    return t
