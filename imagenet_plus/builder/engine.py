"""The build, top to bottom: refuse what cannot work, plan, take the folder, build, write the store last.

:func:`build_reinforcements` is the whole engine in order:

1. **Refuse up front** (:mod:`~imagenet_plus.builder.checks`): class counts, keys, labels, ``topk``,
   the teacher's input size; nothing is written and no teacher runs when one fails.
2. **Plan** (:mod:`~imagenet_plus.builder.plan`): the shard plan, this rank's shards.
3. **Take the output folder** (:meth:`~imagenet_plus.builder.outdir.OutputFolder.take`, the lifecycle the
   importer shares): absent, empty, this build unfinished (resume) or finished (nothing to do); lock it;
   keep the finished shards.
4. **Build** (:mod:`~imagenet_plus.builder.pipeline`, :mod:`~imagenet_plus.builder.teacher_run`):
   decode once, render, teacher batches, top-k, shards, each read back.
5. **Finish** (rank 0, after every rank): samples file and manifest (last,
   :mod:`~imagenet_plus.builder.manifest`) with the teacher report
   (:mod:`~imagenet_plus.builder.report`), the read-back check through the store reader
   (:mod:`~imagenet_plus.builder.readback`), then the build's state files are removed.

Identity: the manifest's ``teacher`` records the sha256 of every checkpoint file the teacher loaded (taken
in step 1, before any teacher work), so the build id covers the teacher's weights: a resume or rerun with
another checkpoint under the same name is refused in step 3, naming the file and both sha256s.

Determinism: a record depends only on (data, policy, seed, teacher weights, teacher batch size);
equal settings give byte-identical stores whatever the world size, worker count, resume point or
whether shards are written behind the teacher (:mod:`~imagenet_plus.builder.writer`). The
teacher's forward mode (``teacher_compile``) changes probabilities by float rounding only and is
not part of the build id (see :mod:`imagenet_plus.teachers`).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .._checks import check_choice, check_int
from ..adapters import adapt
from ..errors import ArgumentError, BuildError, StoreError
from ..kernels import policy_kernel
from ..schema import target_fields
from ..store import MANIFEST_NAME, Manifest, ShardEntry, compute_teacher_id, read_shard_entry
from .config import PIXEL_PATHS
from .checks import check_dataset, check_teacher_input, resolve_num_classes, resolve_topk
from .manifest import build_settings, collect_identity, create_manifest, write_store_files
from .outdir import OutputFolder, shard_state_name
from .pipeline import BuildStats, Pipeline, PipelineSpec
from .plan import BuildPlan, Shard, barrier, check_ranks_agree_on_kernel, create_plan, init_distributed
from .readback import Probe, check_store
from .report import AgreementCounts, TeacherReport, create_report, resize_warnings
from .teacher_run import TeacherRunner

__all__ = ["build_reinforcements"]


@dataclass
class _Build:
    """Everything fixed before the folder is touched."""

    adapter: Any
    policy: Any
    teacher: Callable
    num_classes: int
    topk: int
    plan: BuildPlan
    manifest: Manifest  # settings and build id; files added at the end
    folder: OutputFolder
    input_pipeline: list[dict]
    device: torch.device


def _device(device: str | torch.device) -> torch.device:
    d = torch.device(device)
    if d.type == "cuda" and d.index is None and torch.cuda.is_available():
        d = torch.device("cuda", torch.cuda.current_device())
    return d


def _describe_teacher(teacher: Callable, teacher_desc: dict | None) -> dict:
    """The manifest's ``teacher``: ``teacher_desc`` (default ``teacher.describe()``) with the sha256 of every
    checkpoint file the teacher loaded (``teacher.checkpoint_sha256``), so the build id covers its weights."""
    if teacher_desc is not None:
        desc = dict(teacher_desc)
    elif callable(getattr(teacher, "describe", None)):
        desc = dict(teacher.describe())  # type: ignore[attr-defined]
    else:
        desc = {"callable": f"{type(teacher).__module__}.{type(teacher).__qualname__}"}
    shas = getattr(teacher, "checkpoint_sha256", None)
    if shas is not None:
        shas = [None if v is None else str(v) for v in shas]
        if "checkpoint_sha256" in desc and list(desc["checkpoint_sha256"] or []) != shas:
            raise BuildError(f"teacher_desc: checkpoint_sha256 {desc['checkpoint_sha256']} differs from the sha256 of "
                             f"the checkpoints the teacher loaded ({shas}); pass teacher.describe() (or leave "
                             "teacher_desc out)")
        desc["checkpoint_sha256"] = shas
    return desc


def _prepare(data, out, policy, teacher, *, num_augmentations: int, seed: int, topk: int | None,
             num_classes: int | None, dataset_name: str | None, split: str | None, teacher_desc: dict | None,
             samples_per_shard: int | None, augs_per_shard: int | None, device, rank: int, world_size: int,
             extra: dict | None) -> _Build:
    """Steps 1 and 2: every check that needs no teacher work, then the plan, manifest settings and folder."""
    adapter = adapt(data)
    check_int(num_augmentations, "num_augmentations", low=1)
    check_int(seed, "seed", low=0)
    check_int(world_size, "world_size", low=1)
    check_int(rank, "rank", low=0, high=world_size - 1)
    check_int(samples_per_shard, "samples_per_shard", low=1, optional=True)
    check_int(augs_per_shard, "augs_per_shard", low=1, optional=True)
    name = dataset_name or adapter.name
    if not name:
        raise ArgumentError(f"dataset_name: {adapter!r} has no dataset name; pass dataset_name (the store's "
                            "manifest.dataset)")
    nc = resolve_num_classes(adapter, teacher, num_classes)
    k = resolve_topk(topk, nc)
    check_dataset(adapter, nc)
    pipeline = check_teacher_input(teacher, policy.output_size)
    fields = [*policy.fields, *target_fields(nc, k)]
    plan = create_plan(len(adapter), num_augmentations, sum(f.nbytes for f in fields), samples_per_shard,
                       augs_per_shard, rank, world_size)
    keys = adapter.keys()
    manifest = create_manifest(dataset=name, split=split or adapter.split or "train", plan=plan, topk=k,
                               num_classes=nc, policy=policy, fields=fields,
                               teacher=_describe_teacher(teacher, teacher_desc),
                               seed=seed, extra=extra or {}, keys=keys)
    folder = OutputFolder(Path(out), build_settings(manifest, keys), plan)
    return _Build(adapter, policy, teacher, nc, k, plan, manifest, folder, pipeline, _device(device))


def _kept_shards(b: _Build, stats: BuildStats) -> list[Shard]:
    """Resume: this rank's shards still to build (a shard with its state file and a sound file is kept)."""
    todo = []
    for sh in b.plan.mine:
        state = b.folder.read_state(shard_state_name(sh))
        if state is not None and (b.folder.root / sh.name).is_file():
            try:
                entry = read_shard_entry(b.folder.root, sh.name, b.manifest.fields, build_id=b.manifest.build_id,
                                         teacher_id=compute_teacher_id(b.manifest))
            except StoreError:
                entry = None
            if entry is not None and entry.to_json() == ShardEntry.from_json(_entry_json(state[1])).to_json():
                stats.shards_kept += 1
                continue
        todo.append(sh)
    return todo


def _entry_json(meta: dict) -> dict:
    return json.loads(meta["entry"])


def _run_pipeline(b: _Build, todo: list[Shard], *, batch_size: int, num_workers: int, pixel_path: str,
                  progress: bool, stats: BuildStats) -> None:
    """Step 4: build this rank's remaining shards."""
    batched = pixel_path == "batched" or (pixel_path == "auto" and b.device.type == "cuda")
    runner = TeacherRunner(b.teacher, b.policy, b.device, batch_size, b.topk, b.num_classes,
                           finish_on_device=batched)
    spec = PipelineSpec(b.adapter, b.policy, b.manifest.fields, b.manifest.seed, b.topk, b.num_classes,
                        b.manifest.build_id, b.folder, runner, batch_size,
                        np.asarray(b.adapter.labels(), dtype=np.int64), stats, progress and b.plan.rank == 0,
                        compute_teacher_id(b.manifest))
    Pipeline(spec, b.plan.blocks(todo)).run(num_workers, "crop" if batched else "apply")


def _shard_states(b: _Build) -> tuple[list[ShardEntry], AgreementCounts, list[Probe]]:
    """Every shard's entry, the summed agreement counts and the probes, from the state files (plan order)."""
    entries, probes = [], []
    counts = AgreementCounts.zeros(b.num_classes)
    for sh in b.plan.shards:
        state = b.folder.read_state(shard_state_name(sh))
        if state is None:
            raise BuildError(f"{b.folder.state_dir / shard_state_name(sh)} is missing or damaged after every rank "
                             f"finished; rerun the same command to rebuild shard {sh.name}")
        arrays, meta = state
        entries.append(ShardEntry.from_json(_entry_json(meta)))
        counts.add(AgreementCounts.from_arrays(arrays))
        probes.append(Probe.from_arrays(sh, arrays))
    return entries, counts, probes


def _finish(b: _Build) -> tuple[Manifest, TeacherReport]:
    """Step 5 (rank 0): samples file, manifest (last) with the teacher report, read-back check, clean-up."""
    entries, counts, probes = _shard_states(b)
    identity = collect_identity(b.folder, b.plan, b.adapter)
    report = create_report(counts, b.num_classes, b.adapter.classes, b.input_pipeline)
    manifest = write_store_files(b.folder, b.manifest, entries, identity, b.adapter.keys(),
                                 {"teacher": report.to_json()})
    try:
        check_store(b.folder.root, b.adapter, b.policy, probes)
    except BaseException:
        (b.folder.root / MANIFEST_NAME).unlink(missing_ok=True)  # the store is not presented as finished
        raise
    b.folder.remove_state()
    return manifest, report


def _check_leftover(b: _Build) -> None:
    """A build killed after its manifest: the read-back check its clean-up waited for (rank 0, under the lock)."""
    _, _, probes = _shard_states(b)
    check_store(b.folder.root, b.adapter, b.policy, probes)


def _warn(lines: list[str]) -> None:
    for line in lines:
        print(f"WARNING: {line}", file=sys.stderr)


def build_reinforcements(data, out, *, policy, teacher: Callable[[torch.Tensor], torch.Tensor],
                         num_augmentations: int, seed: int = 0, topk: int | None = None,
                         num_classes: int | None = None, dataset_name: str | None = None, split: str | None = None,
                         teacher_desc: dict | None = None, samples_per_shard: int | None = None,
                         augs_per_shard: int | None = 50, batch_size: int = 256, device: str | torch.device = "cpu",
                         rank: int = 0, world_size: int = 1, num_workers: int = 0, pixel_path: str = "auto",
                         extra: dict | None = None, progress: bool = True,
                         stats: BuildStats | None = None) -> Manifest | None:
    """Build (or resume, or find finished) a reinforcement store of ``data`` in ``out``.

    Args:
        data: the dataset (a torchvision-style dataset or a
            :class:`~imagenet_plus.adapters.DatasetAdapter`), in its canonical order.
        out: output folder: absent, empty, an unfinished build of the same settings (resumed) or a finished
            store of the same settings (nothing to do).
        policy: an :class:`~imagenet_plus.augment.Policy`.
        teacher: maps uint8 ``[B, 3, S, S]`` on ``device`` to probabilities ``[B, num_classes]`` (a
            :class:`~imagenet_plus.teachers.Teacher`, or any callable).
        num_augmentations: augmentations per sample.
        seed: the build seed (all randomness is counter-based on it).
        topk: probabilities kept per record (default ``min(10, num_classes)``).
        num_classes: the teacher's classes (default the teacher's ``num_classes``, else the dataset's).
        dataset_name: the store's ``manifest.dataset`` (default the adapter's name).
        split: recorded in the manifest (default the dataset's split).
        teacher_desc: JSON-able description of the teacher (default ``teacher.describe()``), part of the build
            id; a teacher with ``checkpoint_sha256`` (a :class:`~imagenet_plus.teachers.Teacher`) adds the sha256
            of each checkpoint it loaded. For another callable, describe its weights here (their sha256): the
            build id covers only what is described.
        samples_per_shard: samples per shard (``None``: the largest under the store's size cap).
        augs_per_shard: augmentations per shard (``None``: ``min(num_augmentations, 50)``).
        batch_size: teacher batch size (records depend on it through float rounding only).
        device: where the teacher (and on the batched path the photometric stage) runs.
        rank: this process's rank; it builds shards ``rank, rank + world_size, ...`` of the plan.
        world_size: number of processes (``> 1`` needs ``torch.distributed``, see :func:`init_distributed`).
        num_workers: DataLoader workers decoding and cropping images (0: in this process).
        pixel_path: ``"apply"`` renders records with ``Policy.apply`` in the workers (bit-exact with the CPU
            replay), ``"batched"`` crops in the workers and finishes teacher batches on ``device``;
            ``"auto"``: batched on CUDA, else apply.
        extra: JSON-able settings recorded in the manifest (part of the build id).
        progress: a progress bar and a summary on stderr (rank 0). Warnings are printed regardless.
        stats: filled with this rank's counts and timings when given.

    Returns:
        The written (or already finished) :class:`~imagenet_plus.store.Manifest` on rank 0, ``None`` on
        other ranks. ``manifest.reports["teacher"]`` holds the teacher report.

    Raises:
        BuildError: a setting the dataset or reader would refuse, an occupied or locked output folder, a
            teacher that does not fit, or a failed read-back check.
        ArgumentError: a bad argument value.
        ImageDecodeError: a sample's file is missing, truncated or not an image (named).
        OSError: writing failed (e.g. a full disk); finished shards stay valid, rerun to resume.

    Example:
        >>> m = build_reinforcements(Digits(split="train"), "out/digits-plus", teacher=teacher, seed=0,
        ...                          policy=create_policy("cifar", output_size=32), num_augmentations=8)
    """
    t_start = time.perf_counter()
    stats = stats if stats is not None else BuildStats()
    check_int(batch_size, "batch_size", low=1)
    check_int(num_workers, "num_workers", low=0)
    check_choice(pixel_path, "pixel_path", PIXEL_PATHS)
    b = _prepare(data, out, policy, teacher, num_augmentations=num_augmentations, seed=seed, topk=topk,
                 num_classes=num_classes, dataset_name=dataset_name, split=split, teacher_desc=teacher_desc,
                 samples_per_shard=samples_per_shard, augs_per_shard=augs_per_shard, device=device, rank=rank,
                 world_size=world_size, extra=extra)
    if world_size > 1:
        init_distributed(b.device, rank, world_size)  # no-op when the caller initialised it; fails fast otherwise
        check_ranks_agree_on_kernel(b.device, rank, world_size, policy_kernel(b.manifest.policy))
    lock = b.folder.take(rank, finish_leftover=lambda: _check_leftover(b))
    if lock is None:  # finished (by an earlier run, or another process meanwhile): nothing to do
        stats.already_finished = True
        return Manifest.load(b.folder.root) if rank == 0 else None
    if rank == 0:
        _warn(resize_warnings(b.input_pipeline))
    with lock:
        return _build_locked(b, rank, world_size, t_start, batch_size=batch_size, num_workers=num_workers,
                             pixel_path=pixel_path, progress=progress, stats=stats)


def _build_locked(b, rank: int, world_size: int, t_start: float, *, batch_size: int, num_workers: int,
                  pixel_path: str, progress: bool, stats: BuildStats) -> Manifest | None:
    """Build this rank's missing shards, and (rank 0) write the store's files last (the folder is claimed)."""
    todo = _kept_shards(b, stats)
    b.folder.remove_temp_files(b.plan.mine)
    _run_pipeline(b, todo, batch_size=batch_size, num_workers=num_workers, pixel_path=pixel_path,
                  progress=progress, stats=stats)
    if world_size > 1:
        barrier(b.device)
    if rank != 0:
        stats.seconds = time.perf_counter() - t_start
        if progress:
            print(f"[rank {rank}] {stats.summary()}", file=sys.stderr)
        return None
    manifest, report = _finish(b)
    stats.bytes_written += manifest.samples_file.bytes + (b.folder.root / MANIFEST_NAME).stat().st_size
    stats.seconds = time.perf_counter() - t_start
    up_front = resize_warnings(b.input_pipeline)
    _warn([w for w in report.warnings if w not in up_front])  # the resize warnings were printed before the build
    if progress:
        print(f"[rank 0] {stats.summary()}", file=sys.stderr)
    return manifest
