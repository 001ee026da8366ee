"""Per sample block: decode each sample once, sample its params, render, run the teacher, write the shards.

Workers (a ``DataLoader`` over :class:`SampleJobs`) decode sample ``i`` through its adapter
(:meth:`~imagenet_plus.adapters.DatasetAdapter.load`: pixels, label, digest), take its
identity (image size, :func:`~imagenet_plus.identity.fingerprint`), draw the params of every
augmentation this rank stores for it with the policy's counter-based
:meth:`~imagenet_plus.augment.Policy.sample`, and render them:

* ``"apply"``: final pixels with :meth:`~imagenet_plus.augment.Policy.apply`, the very function
  the CPU replay calls (replay equals build bit for bit);
* ``"crop"``: only the geometric stage (:meth:`~imagenet_plus.augment.Policy.crop`, of the
  sample and of its mixing partners); :class:`~imagenet_plus.builder.teacher_run.TeacherRunner`
  runs :meth:`~imagenet_plus.augment.Policy.finish` batched on the device (the CUDA path).

The main process gathers each sample block's records per shard, feeds the teacher full batches
as they fill, and at the block's end flushes the last batches and hands the block to the
:class:`~imagenet_plus.builder.writer.BlockWriter`, which writes, in this order, the block's
identity part, each shard (checked by reading its probe back) and the shard's state file, in a
thread while the teacher works on the next block (at most one finished block waits): a shard on
disk with a state file is finished, anything else is rebuilt on resume. A writer's error stops the
build at the main thread's next sample, naming the shard.
"""

from __future__ import annotations

import errno
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import BuildError
from ..identity import fingerprint
from ..store import ShardEntry, write_shard
from .checks import ReplayLimits
from .manifest import IdentityPart
from .outdir import OutputFolder, identity_part_name, shard_state_name
from .plan import SampleBlock, Shard
from .readback import Probe, check_written_shard, probe_row
from .teacher_run import ShardWork, TeacherRunner
from . import writer as writer_module
from .writer import BlockWriter

__all__ = ["AugPart", "DecodedSample", "SampleJobs", "BuildStats", "PipelineSpec", "Pipeline", "RENDER_MODES"]

#: How workers render records: final pixels, or crops finished in teacher batches.
RENDER_MODES = ("apply", "crop")
_PARTNER_CACHE = 64


@dataclass
class AugPart:
    """One shard's augmentations of one sample, as a worker rendered them."""

    params: dict[str, np.ndarray]
    partner_params: dict[str, np.ndarray] | None
    images: torch.Tensor  # uint8 [n, 3, S, S]: final pixels ("apply") or crops ("crop")
    partners: torch.Tensor | None  # the partners' crops ("crop" with mixing)
    mixes_with: np.ndarray | None = None  # mixing policies: each record's partner sample, -1 where it does not mix


@dataclass
class DecodedSample:
    """A decoded sample: its identity and one :class:`AugPart` per shard of its block."""

    index: int
    label: int
    digest: np.ndarray
    size: tuple[int, int]
    fingerprint: np.ndarray
    parts: list[AugPart]


def _as_item(item):
    return item


class SampleJobs(Dataset):
    """Item ``k``: sample ``tasks[k][0]`` decoded once, every augmentation range of ``tasks[k][1]`` rendered.

    Args:
        adapter: the dataset's adapter.
        tasks: ``(sample index, [(a0, a1), ...])`` in build order.
        policy: the policy.
        seed: the build seed.
        mode: one of :data:`RENDER_MODES`.
    """

    def __init__(self, adapter, tasks: Sequence[tuple[int, Sequence[tuple[int, int]]]], policy, seed: int,
                 mode: str):
        self.adapter = adapter
        self.tasks = [(int(i), [tuple(r) for r in ranges]) for i, ranges in tasks]
        self.policy = policy
        self.seed = int(seed)
        self.num_samples = len(adapter)
        self.mode = mode
        self.limits = ReplayLimits.of(policy)
        self._partners: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self.tasks)

    def _partner(self, p: int):
        img = self._partners.get(p)
        if img is None:
            img = self.adapter.load(p).image
            if len(self._partners) >= _PARTNER_CACHE:
                self._partners.pop(next(iter(self._partners)))
            self._partners[p] = img
        return img

    def __getitem__(self, k: int) -> DecodedSample:
        i, ranges = self.tasks[k]
        sample = self.adapter.load(i)
        image = sample.image
        h, w = image.height, image.width
        self.limits.check(h, w, self.adapter.describe(i))
        parts = [self._render(image, i, a0, a1) for a0, a1 in ranges]
        return DecodedSample(i, int(sample.label), sample.digest, (h, w), fingerprint(image), parts)

    def _sample(self, idx: np.ndarray, j: np.ndarray, images: Sequence) -> dict[str, np.ndarray]:
        hs = np.array([im.height for im in images], dtype=np.int64)
        ws = np.array([im.width for im in images], dtype=np.int64)
        return self.policy.sample(self.seed, idx, j, hs, ws, self.num_samples)

    def _render(self, image, i: int, a0: int, a1: int) -> AugPart:
        """Params and pixels of augmentations ``[a0, a1)`` of sample ``i``."""
        n = a1 - a0
        j = np.arange(a0, a1, dtype=np.int64)
        params = self._sample(np.full(n, i, dtype=np.int64), j, [image] * n)
        pparams, partners, mixes_with = None, [None] * n, None
        if self.policy.uses_mix:  # partner p of record (i, j) is replayed as record (p, j) with its own params
            mixes, pidx = self.policy.mixing(params)
            mixes_with = np.where(mixes, pidx, -1)
            partners = [self._partner(int(p)) if m else None for p, m in zip(pidx, mixes)]
            pparams = self._sample(pidx, j, [im if im is not None else image for im in partners])
        s = int(self.policy.output_size)
        crop_partners = self.policy.uses_mix and self.mode == "crop"
        images = torch.empty((n, 3, s, s), dtype=torch.uint8)
        pimages = torch.zeros((n, 3, s, s), dtype=torch.uint8) if crop_partners else None
        if torch.utils.data.get_worker_info() is not None:  # born in shared memory: no copy on the way back
            images.share_memory_()
            if pimages is not None:
                pimages.share_memory_()
        for r in range(n):
            one = {f: v[r] for f, v in params.items()}
            pone = None if pparams is None else {f: v[r] for f, v in pparams.items()}
            if self.mode == "apply":
                images[r] = self.policy.apply(image, one, partners[r], None if partners[r] is None else pone)
            else:
                images[r] = self.policy.crop(image, one)
                if pimages is not None and partners[r] is not None:
                    pimages[r] = self.policy.crop(partners[r], pone)
        return AugPart(params, pparams, images, pimages, mixes_with)


@dataclass
class BuildStats:
    """What one rank did: counts, bytes written and time."""

    shards_built: int = 0
    shards_kept: int = 0
    samples: int = 0
    records: int = 0
    bytes_written: int = 0
    seconds: float = 0.0
    already_finished: bool = False
    extra: dict = field(default_factory=dict)

    def summary(self) -> str:
        from .._files import human_bytes

        t = max(self.seconds, 1e-9)
        return (f"built {self.shards_built} shards (kept {self.shards_kept} finished ones), {self.samples} samples, "
                f"{self.records} augmentations in {self.seconds:.1f} s: {self.samples / t:.1f} samples/s, "
                f"{self.records / t:.1f} augmentations/s, {human_bytes(self.bytes_written)} written")


@dataclass
class PipelineSpec:
    """The fixed settings of a rank's pipeline."""

    adapter: Any
    policy: Any
    fields: list
    seed: int
    topk: int
    num_classes: int
    build_id: str
    folder: OutputFolder
    runner: TeacherRunner
    batch_size: int
    labels: np.ndarray  # every sample's label (mixed records' partner labels for the report)
    stats: BuildStats
    progress: bool = False
    teacher_id: str = ""  # compute_teacher_id(manifest), stamped on every shard


@dataclass
class _Block:
    block: SampleBlock
    works: list[ShardWork]
    identity: IdentityPart


class Pipeline:
    """Builds the shards of a list of sample blocks (see the module docstring).

    Args:
        spec: the settings.
        blocks: this rank's blocks, each with the shards still to build, in plan order.
    """

    def __init__(self, spec: PipelineSpec, blocks: list[SampleBlock]):
        self.spec = spec
        self.blocks = blocks
        self.entries: dict[Shard, ShardEntry] = {}
        self._wait = {"loader_wait_s": 0.0, "block_finish_s": 0.0}
        self._writer = BlockWriter(self._write_block, writer_module.WRITE_AHEAD)

    def run(self, num_workers: int, mode: str) -> dict[Shard, ShardEntry]:
        """Build every block; returns the written shards' entries."""
        tasks = [(i, [(sh.a0, sh.a1) for sh in b.shards]) for b in self.blocks for i in range(b.s0, b.s1)]
        jobs = SampleJobs(self.spec.adapter, tasks, self.spec.policy, self.spec.seed, mode)
        # One loader for the whole run: workers keep decoding the next block while this one is finished.
        loader = DataLoader(jobs, batch_size=None, shuffle=False, num_workers=num_workers, collate_fn=_as_item,
                            prefetch_factor=2 if num_workers > 0 else None)
        bar = _progress_bar(sum(sh.num_records for b in self.blocks for sh in b.shards), self.spec.progress)
        current: _Block | None = None
        k = 0
        t_start = time.perf_counter()
        try:
            t_ask = time.perf_counter()
            for item in loader:
                self._wait["loader_wait_s"] += time.perf_counter() - t_ask
                self._writer.check()  # a failed shard write stops the build here, at the next sample
                if current is None or item.index >= current.block.s1:
                    if current is not None:
                        self._finish(current)
                    current, k = self._start(self.blocks[k]), k + 1
                self._add(current, item, bar, t_start)
                t_ask = time.perf_counter()
            if current is not None:
                self._finish(current)
            self._writer.close()
        except BaseException:
            self._writer.abort()  # the shard being written is finished, queued blocks are rebuilt on resume
            raise
        finally:
            if bar is not None:
                bar.close()
        self.spec.stats.extra["timings"] = {**{k: round(v, 3) for k, v in self._wait.items()},
                                            **{k: round(v, 3) for k, v in self._writer.timings.items()},
                                            **{k: round(v, 3) for k, v in self.spec.runner.timings.items()}}
        return self.entries

    def _start(self, block: SampleBlock) -> _Block:
        s = self.spec
        works = [ShardWork(sh, s.policy.fields, s.topk, s.num_classes, probe_row(sh)) for sh in block.shards]
        return _Block(block, works, IdentityPart.empty(block.s0, block.s1))

    def _add(self, cur: _Block, item: DecodedSample, bar, t_start: float) -> None:
        """Take one decoded sample: its identity, its records; run the teacher on every full batch."""
        s = self.spec
        cur.identity.set(item.index, item.label, item.digest, item.size, item.fingerprint)
        for work, part in zip(cur.works, item.parts):
            work.add(item.index, item.label, part, s.labels)
            while len(work.pending) >= s.batch_size:
                s.runner.submit(work, s.batch_size)
        records = sum(w.shard.num_augs for w in cur.works)
        s.stats.samples += 1
        s.stats.records += records
        if bar is not None:
            bar.update(records)
            bar.set_postfix_str(f"{s.stats.samples / max(time.perf_counter() - t_start, 1e-9):.1f} samples/s",
                                refresh=False)

    def _finish(self, cur: _Block) -> None:
        """Flush the block's last batches, then hand it to the writer (identity part, shards, state files)."""
        s = self.spec
        t0 = time.perf_counter()
        for work in cur.works:
            while work.pending:
                s.runner.submit(work, min(s.batch_size, len(work.pending)))
        s.runner.drain()
        self._wait["block_finish_s"] += time.perf_counter() - t0
        self._writer.put(cur)

    def _write_block(self, cur: _Block) -> None:
        """The writer's work for one block: its identity part, then each shard (stopping between shards when
        the build stops)."""
        self.spec.folder.write_state(identity_part_name(cur.block.s0, cur.block.s1), cur.identity.to_arrays())
        for work in cur.works:
            if self._writer.stopping:
                return
            try:
                self._write(work)
            except Exception as e:
                named = _naming_shard(e, Path(self.spec.folder.root) / work.shard.name)
                if named is e:
                    raise
                raise named from e

    def _write(self, work: ShardWork) -> None:
        """Write one shard, read its probe back, then record the shard's state (entry, counts, probe)."""
        s = self.spec
        sh = work.shard
        entry = write_shard_reporting(s.folder, sh, work.arrays(), s.fields, s.build_id, s.teacher_id)
        probe = Probe.of_work(work)
        check_written_shard(s.folder.root, work, probe, s.adapter, s.policy, s.num_classes, s.topk)
        state = {**work.counts(s.num_classes).to_arrays(), **probe.to_arrays()}
        s.folder.write_state(shard_state_name(sh), state, {"entry": json.dumps(entry.to_json(), sort_keys=True)})
        self.entries[sh] = entry
        s.stats.shards_built += 1
        s.stats.bytes_written += entry.bytes


def _naming_shard(e: Exception, path: Path) -> Exception:
    """``e`` itself when its message names the shard, else an error of its kind that does (and how to resume)."""
    if path.name in str(e):
        return e
    msg = (f"writing shard {path} failed ({type(e).__name__}: {e}); finished shards are kept and no partial shard "
           "is left: fix the cause and rerun the same command to resume")
    return OSError(e.errno, msg) if isinstance(e, OSError) else BuildError(msg)


def write_shard_reporting(folder: OutputFolder, shard: Shard, arrays: dict, fields, build_id: str,
                          teacher_id: str) -> ShardEntry:
    """:func:`~imagenet_plus.store.write_shard`; a failed write (a full disk) names the shard and how to resume."""
    try:
        return write_shard(folder.root, shard.s0, shard.s1, shard.a0, shard.a1, arrays, fields, build_id=build_id,
                           teacher_id=teacher_id)
    except OSError as e:
        path = Path(folder.root) / shard.name
        reason = "the disk is full" if e.errno == errno.ENOSPC else f"{type(e).__name__}: {e}"
        raise OSError(e.errno, f"writing shard {path} failed ({reason}); finished shards are kept and no partial "
                               "shard is left: free space (or fix the folder) and rerun the same command to "
                               "resume") from e


def _progress_bar(total: int, enabled: bool):
    if not enabled or total == 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="aug", unit_scale=True, dynamic_ncols=True, desc="reinforce", file=sys.stderr,
                smoothing=0.05)
