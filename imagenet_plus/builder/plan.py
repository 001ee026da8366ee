"""The shard plan of a build and this process's share of it (torchrun / SLURM ranks).

A store's shards tile the (sample, augmentation) grid: sample blocks of ``samples_per_shard``,
each cut into augmentation blocks of ``augs_per_shard``
(:func:`imagenet_plus.store.plan_shards`, sample block major). Shards go to ranks round-robin
over that list; a rank works through its shards one *sample block* at a time, so every sample
is decoded once per rank that holds one of its shards (once in total with one process).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Mapping

import torch

from ..errors import BuildError
from ..store import plan_shards, resolve_shard_shape, shard_filename

__all__ = ["Shard", "SampleBlock", "BuildPlan", "create_plan", "resolve_dist_env", "init_distributed", "barrier",
           "check_ranks_agree_on_kernel"]


@dataclass(frozen=True)
class Shard:
    """Shard ``[s0, s1) x [a0, a1)`` of the plan."""

    s0: int
    s1: int
    a0: int
    a1: int

    @property
    def name(self) -> str:
        """Path relative to the store root (``reinforcements/shard-...safetensors``)."""
        return shard_filename(self.s0, self.s1, self.a0, self.a1)

    @property
    def file_name(self) -> str:
        return self.name.rsplit("/", 1)[-1]

    @property
    def num_samples(self) -> int:
        return self.s1 - self.s0

    @property
    def num_augs(self) -> int:
        return self.a1 - self.a0

    @property
    def num_records(self) -> int:
        return self.num_samples * self.num_augs


@dataclass(frozen=True)
class SampleBlock:
    """Samples ``[s0, s1)`` and the shards of them this rank builds."""

    s0: int
    s1: int
    shards: tuple[Shard, ...]


@dataclass(frozen=True)
class BuildPlan:
    """Every shard of the store, and this rank's.

    Attributes:
        num_samples: samples in the dataset.
        num_augmentations: augmentations per sample.
        samples_per_shard, augs_per_shard: the shard shape.
        shards: every shard, in manifest order.
        rank, world_size: this process and the number of processes.
    """

    num_samples: int
    num_augmentations: int
    samples_per_shard: int
    augs_per_shard: int
    shards: tuple[Shard, ...]
    rank: int = 0
    world_size: int = 1

    @property
    def mine(self) -> tuple[Shard, ...]:
        """This rank's shards: ``rank, rank + world_size, ...`` of the plan."""
        return self.shards[self.rank::self.world_size]

    def blocks(self, shards: tuple[Shard, ...] | list[Shard]) -> list[SampleBlock]:
        """``shards`` grouped by sample block, in plan order."""
        out: dict[tuple[int, int], list[Shard]] = {}
        for sh in shards:
            out.setdefault((sh.s0, sh.s1), []).append(sh)
        return [SampleBlock(s0, s1, tuple(v)) for (s0, s1), v in out.items()]

    @property
    def sample_blocks(self) -> list[tuple[int, int]]:
        """Every sample block ``(s0, s1)`` of the store, in order."""
        return sorted({(sh.s0, sh.s1) for sh in self.shards})


def create_plan(num_samples: int, num_augmentations: int, record_bytes: int, samples_per_shard: int | None,
                augs_per_shard: int | None, rank: int = 0, world_size: int = 1) -> BuildPlan:
    """The plan of a store (``None`` shard sizes: the store's defaults under its size cap)."""
    sps, aps = resolve_shard_shape(num_samples, num_augmentations, record_bytes, samples_per_shard, augs_per_shard)
    ranges = plan_shards(num_samples, num_augmentations, sps, aps, record_bytes=record_bytes)
    return BuildPlan(num_samples, num_augmentations, sps, aps, tuple(Shard(*r) for r in ranges), rank, world_size)


def resolve_dist_env(environ: Mapping[str, str] | None = None) -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from torchrun's or SLURM's environment variables.

    torchrun sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``; ``srun`` sets
    ``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID``. torchrun's variables win.
    Without either, ``(0, 1, 0)``.

    Raises:
        BuildError: the variables are not integers or ``rank >= world_size``.
    """
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        names = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
    elif "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        names = ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID")
    else:
        return 0, 1, 0
    try:
        rank, world = int(env[names[0]]), int(env[names[1]])
        local = int(env.get(names[2], rank))
    except ValueError as e:
        raise BuildError(f"environment variables {names} must be integers ({e}); launch with torchrun or srun, or "
                         "unset them for a single-process build") from None
    if world < 1 or not 0 <= rank < world:
        raise BuildError(f"{names[0]}={rank} and {names[1]}={world} are inconsistent; rank must lie in "
                         "[0, world_size)")
    return rank, world, local


def init_distributed(device: str | torch.device, rank: int, world_size: int, *,
                     timeout_s: float = 7 * 24 * 3600) -> None:
    """Initialise ``torch.distributed`` (gloo on CPU, nccl on CUDA) for the final barrier.

    Uses ``MASTER_ADDR``/``MASTER_PORT`` (set by torchrun; set them yourself under srun). The
    long timeout lets ranks that finish early wait for the others at the barrier.
    """
    import torch.distributed as dist

    if world_size <= 1 or dist.is_initialized():
        return
    missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise BuildError(f"world_size={world_size} but {missing} are not set; launch with torchrun, or under "
                         "SLURM export MASTER_ADDR (the first node) and MASTER_PORT before srun")
    backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
    dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=datetime.timedelta(seconds=timeout_s))


def barrier(device: torch.device) -> None:
    """Wait for every rank (``torch.distributed`` must be initialised)."""
    import torch.distributed as dist

    if device.type == "cuda":
        dist.barrier(device_ids=[device.index if device.index is not None else torch.cuda.current_device()])
    else:
        dist.barrier()


def check_ranks_agree_on_kernel(device: torch.device, rank: int, world_size: int, family: str) -> None:
    """Refuse a build whose ranks would render pixels with different resize kernel families.

    Every rank renders its own shards; on a cluster whose nodes differ (an x86 node below AVX2, or one
    with ``ATEN_CPU_CAPABILITY=default``) some shards would be rendered with the float kernel and the
    others with the integer one, so no machine could replay the whole store bit for bit, and the
    manifest (written by rank 0) would name only rank 0's family. Each rank contributes its family
    (:func:`imagenet_plus.kernels.policy_kernel`) to one ``all_gather``; if they differ, every rank raises
    the same :class:`BuildError` before any shard is written. A collective: every rank must call it.
    """
    import torch.distributed as dist

    from ..kernels import FAMILIES

    if world_size <= 1:
        return
    mine = torch.tensor([FAMILIES.index(family)], device=device)  # on the device: nccl gathers device tensors
    every = [torch.empty_like(mine) for _ in range(world_size)]
    dist.all_gather(every, mine)
    families = [FAMILIES[int(t)] for t in every]
    if len(set(families)) > 1:
        by_rank = ", ".join(f"rank {r}: {f!r}" for r, f in enumerate(families))
        raise BuildError(
            f"the ranks of this build resize with different kernel families ({by_rank}); their shards would "
            "differ from what one machine replays by up to 1 grey level, and the store could not be replayed "
            "bit for bit anywhere. Run every rank on machines of one kind: on x86 where torch reports AVX2 or "
            "AVX512 (torch.backends.cpu.get_cpu_capability()) or on aarch64, with ATEN_CPU_CAPABILITY unset "
            f"on every node, or with ATEN_CPU_CAPABILITY=default set on every node (this is rank {rank}, torch "
            f"CPU capability {torch.backends.cpu.get_cpu_capability()})")
