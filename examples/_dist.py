"""This process's place in a training run: rank, world size, device, and the collectives the trainer uses.

Under ``torchrun`` (``WORLD_SIZE`` > 1) it joins the process group (NCCL on CUDA, gloo on
the CPU) and pins ``cuda:LOCAL_RANK``; alone, it is rank 0 of 1 and every collective is a no-op.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from imagenet_plus.errors import ArgumentError

__all__ = ["Dist"]


class Dist:
    """This process's place in the run: rank, world size and device."""

    def __init__(self, device_arg: str) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        want = device_arg if device_arg != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        self.device = torch.device(want)
        if self.device.type == "cuda":
            if not torch.cuda.is_available():
                raise ArgumentError(f"--device {device_arg}: CUDA is not available here; use --device cpu")
            if self.device.index is None:
                self.device = torch.device("cuda", local % torch.cuda.device_count())
            torch.cuda.set_device(self.device)
        elif self.device.type != "cpu":
            raise ArgumentError(f"Unknown value {device_arg!r} for argument --device. Valid values are "
                                "{auto, cpu, cuda, cuda:N}.")
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """Concatenate ``t`` (first dim may differ by one per rank) from every rank, in rank order."""
        if self.world == 1:
            return t
        n = torch.tensor([t.shape[0]], device=t.device)
        sizes = [torch.zeros_like(n) for _ in range(self.world)]
        dist.all_gather(sizes, n)
        width = int(max(s.item() for s in sizes))
        padded = torch.zeros((width, *t.shape[1:]), dtype=t.dtype, device=t.device)
        padded[: t.shape[0]] = t
        parts = [torch.zeros_like(padded) for _ in range(self.world)]
        dist.all_gather(parts, padded)
        return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes)])

    def mean(self, t: torch.Tensor) -> torch.Tensor:
        """The mean of ``t`` over the ranks (``t`` itself on one rank)."""
        if self.world == 1:
            return t
        dist.all_reduce(t)
        return t / self.world

    def close(self) -> None:
        """Leave the process group (torchrun runs)."""
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()
