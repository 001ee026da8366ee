"""The build engine: run a teacher over stored augmentations and write a reinforcement store.

:func:`build_reinforcements` decodes every sample once, samples all of that
sample's augmentation parameters with the policy's counter-based
:meth:`~imagenet_plus.augment.Policy.sample`, renders the augmented pixels,
runs the teacher on them in batches, keeps the teacher's top-k probabilities
and writes one shard per ``(sample block, augmentation block)`` of
:func:`~imagenet_plus.store.plan_shards`.

Pixels. On the CPU every record is rendered with
:meth:`~imagenet_plus.augment.Policy.apply`, the very function the CPU replay
calls, so replay equals build bit for bit. On CUDA the geometric stage
(:meth:`~imagenet_plus.augment.Policy.crop`) runs in the DataLoader workers and
the photometric stage (:meth:`~imagenet_plus.augment.Policy.finish`) runs
batched on the GPU; the pixels then agree with the CPU replay within the
augmentation engine's stated CPU-vs-CUDA tolerance (a few intensity levels on
a small fraction of pixels), not bit for bit.

Determinism. A record depends only on (base data, policy, seed, teacher
weights) and on the teacher batch size: teacher batches never cross a shard,
always start at the shard's first record, and a shard's last partial batch is
zero-padded to a power of two, so the same shard is computed by the same
kernels on the same batch shapes whatever the world size, worker count or
resume point (and ``torch.compile`` sees a handful of static shapes). Shards are assigned to ranks
round-robin over the plan; each rank writes only its own shards, rank 0 writes
``samples.safetensors`` and ``manifest.json`` after a final barrier. Nothing
wall-clock dependent is written, so equal settings give byte-identical stores.

Resume. An interrupted build (even ``SIGKILL``) is resumed by calling the
function again with the same arguments: finished shards are checked with
:func:`~imagenet_plus.store.read_shard_entry` and kept, broken ones and stale
temp files are removed and rebuilt. ``out/.build/`` holds the build's settings
(a resume with other settings is refused) and the per-sample identity of every
finished sample block; it is removed once the manifest is written.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from safetensors.numpy import load_file as _st_load_file
from safetensors.numpy import save_file as _st_save_file
from torch.utils.data import DataLoader, Dataset

from . import __version__
from .errors import ReinforcementError, StoreError
from .identity import load_sample, sample_keys
from .imageio import to_rgb_array
from .schema import content_hash, encode_topk_ids, encode_topk_probs, fingerprint, target_fields

__all__ = ["BuildStats", "build_reinforcements", "resolve_dist_env", "init_distributed"]

_BUILD_DIR = ".build"
_SETTINGS_NAME = "settings.json"
_PARTNER_CACHE = 64


# ----------------------------------------------------------------------------- ranks


def resolve_dist_env(environ: dict | None = None) -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from torchrun's or SLURM's environment variables.

    torchrun sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``; ``srun`` sets
    ``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID``. torchrun's variables win.
    Without either, ``(0, 1, 0)``.

    Raises:
        ReinforcementError: the variables are not integers or ``rank >= world_size``.
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
        raise ReinforcementError(f"environment variables {names} must be integers ({e}); "
                                 "launch with torchrun or srun, or unset them for a single-process build") from None
    if world < 1 or not 0 <= rank < world:
        raise ReinforcementError(f"{names[0]}={rank} and {names[1]}={world} are inconsistent; "
                                 "rank must lie in [0, world_size)")
    return rank, world, local


def init_distributed(device: str | torch.device, rank: int, world_size: int, *,
                     timeout_s: float = 7 * 24 * 3600) -> None:
    """Initialise ``torch.distributed`` (gloo on CPU, nccl on CUDA) for the final barrier.

    Uses ``MASTER_ADDR``/``MASTER_PORT`` (set by torchrun; set them yourself under srun).
    The long timeout lets ranks that finish early wait for the others at the barrier.
    """
    import datetime

    import torch.distributed as dist

    if world_size <= 1 or dist.is_initialized():
        return
    missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise ReinforcementError(f"world_size={world_size} but {missing} are not set; launch with torchrun, or under "
                                 "SLURM export MASTER_ADDR (the first node) and MASTER_PORT before srun")
    backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
    dist.init_process_group(backend, rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=timeout_s))


def _barrier(device: torch.device) -> None:
    import torch.distributed as dist

    if device.type == "cuda":
        dist.barrier(device_ids=[device.index if device.index is not None else torch.cuda.current_device()])
    else:
        dist.barrier()


# ----------------------------------------------------------------------------- decoding workers


def _identity_collate(item):
    return item


class _SampleJobs(Dataset):
    """Item ``k``: sample ``tasks[k][0]`` decoded once, with every augmentation of ``tasks[k][1]`` rendered.

    ``tasks`` is a list of ``(sample index, [(a0, a1), ...])``. ``mode="apply"`` renders final
    pixels with ``Policy.apply`` (the CPU replay's path); ``mode="crop"`` renders only the
    geometric stage (``Policy.crop``) of the sample and of its mixing partners, for a batched
    ``Policy.finish`` on the device.
    """

    def __init__(self, base, tasks: Sequence[tuple[int, Sequence[tuple[int, int]]]], policy, seed: int,
                 num_samples: int, mode: str):
        self.base = base
        self.tasks = [(int(i), list(r)) for i, r in tasks]
        self.policy = policy
        self.seed = int(seed)
        self.num_samples = int(num_samples)
        self.mode = mode
        self._partners: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self.tasks)

    def _partner(self, p: int):
        img = self._partners.get(p)
        if img is None:
            img = load_sample(self.base, p)[0]
            if len(self._partners) >= _PARTNER_CACHE:
                self._partners.pop(next(iter(self._partners)))
            self._partners[p] = img
        return img

    def _sample(self, i_arr: np.ndarray, j_arr: np.ndarray, h_arr: np.ndarray, w_arr: np.ndarray) -> dict:
        return self.policy.sample(self.seed, i_arr, j_arr, h_arr, w_arr, self.num_samples)

    def __getitem__(self, k: int) -> dict:
        i, aug_ranges = self.tasks[k]
        image, label = load_sample(self.base, i)
        h, w = image.height, image.width
        rgb = to_rgb_array(image)
        item = {"index": i, "label": int(label), "hash": content_hash(rgb), "size": rgb.shape[:2],
                "print": fingerprint(rgb), "blocks": []}
        mix = bool(self.policy.uses_mix)
        shared = torch.utils.data.get_worker_info() is not None  # born in shared memory: no copy on the way
        for a0, a1 in aug_ranges:
            n = a1 - a0
            j = np.arange(a0, a1, dtype=np.int64)
            params = self._sample(np.full(n, i, dtype=np.int64), j, np.full(n, h, dtype=np.int64),
                                  np.full(n, w, dtype=np.int64))
            pparams = None
            partners: list = [None] * n
            if mix:  # partner p of record (i, j) is replayed as record (p, j) with its own params
                pidx = np.asarray(params["mix_partner"]).reshape(n).astype(np.int64)
                mixes = np.asarray(params["mix_kind"]).reshape(n) != 0
                partners = [self._partner(int(p)) if m else None for p, m in zip(pidx, mixes)]
                hp = np.array([im.height if im is not None else h for im in partners], dtype=np.int64)
                wp = np.array([im.width if im is not None else w for im in partners], dtype=np.int64)
                pparams = self._sample(pidx, j, hp, wp)
            s = int(self.policy.output_size)
            images = torch.empty((n, 3, s, s), dtype=torch.uint8)
            pimages = torch.zeros((n, 3, s, s), dtype=torch.uint8) if (mix and self.mode == "crop") else None
            if shared:
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
            item["blocks"].append({"augs": (a0, a1), "params": params, "partner_params": pparams,
                                   "images": images, "partners": pimages})
        return item


# ----------------------------------------------------------------------------- per-shard accumulation


class _ShardWork:
    """Params, pending pixels and targets of one shard being built."""

    def __init__(self, s0: int, s1: int, a0: int, a1: int, param_fields, topk: int, num_classes: int):
        self.s0, self.s1, self.a0, self.a1 = s0, s1, a0, a1
        self.na = a1 - a0
        self.n = (s1 - s0) * self.na
        self.params = {f.name: np.zeros((self.n, *f.shape), dtype=f.np_dtype) for f in param_fields}
        self.partner_params: dict[str, np.ndarray] | None = None
        tf = target_fields(num_classes, topk)
        self.ids = np.zeros((self.n, *tf[0].shape), dtype=np.uint8)
        self.probs = np.zeros((self.n, *tf[1].shape), dtype=np.uint8)
        self.pending: list[torch.Tensor] = []
        self.pending_partners: list[torch.Tensor] = []
        self.next_record = 0  # first record whose pixels are pending
        self.filled = 0  # records whose params have arrived

    def add(self, i: int, block: dict) -> None:
        r0 = (i - self.s0) * self.na
        if r0 != self.filled:
            raise RuntimeError(f"internal error: sample {i} arrived out of order for shard {self.name}")
        for name, arr in self.params.items():
            arr[r0:r0 + self.na] = np.asarray(block["params"][name]).reshape(arr[r0:r0 + self.na].shape)
        if block["partner_params"] is not None:
            if self.partner_params is None:
                self.partner_params = {k: np.zeros((self.n, *np.shape(v)[1:]), dtype=np.asarray(v).dtype)
                                       for k, v in block["partner_params"].items()}
            for name, arr in self.partner_params.items():
                arr[r0:r0 + self.na] = np.asarray(block["partner_params"][name])
        self.pending.extend(block["images"].unbind(0))
        if block["partners"] is not None:
            self.pending_partners.extend(block["partners"].unbind(0))
        self.filled += self.na

    @property
    def name(self) -> str:
        from .store import shard_filename

        return shard_filename(self.s0, self.s1, self.a0, self.a1)

    def arrays(self, ids_bytes: int) -> dict[str, np.ndarray]:
        ns = self.s1 - self.s0
        out = {k: v.reshape(ns, self.na, *v.shape[1:]) for k, v in self.params.items()}
        out["topk_ids"] = self.ids.reshape(ns, self.na, ids_bytes)
        out["topk_probs"] = self.probs.reshape(ns, self.na, self.probs.shape[-1])
        return out


@dataclass
class BuildStats:
    """What one rank did: counts, bytes written and time."""

    shards_built: int = 0
    shards_kept: int = 0
    samples: int = 0
    records: int = 0
    bytes_written: int = 0
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    def summary(self) -> str:
        t = max(self.seconds, 1e-9)
        return (f"built {self.shards_built} shards (kept {self.shards_kept} finished ones), {self.samples} samples, "
                f"{self.records} augmentations in {self.seconds:.1f} s: {self.samples / t:.1f} samples/s, "
                f"{self.records / t:.1f} augmentations/s, {_human_bytes(self.bytes_written)} written")


def _human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return f"{n} B"


class _Teacher:
    """Runs the teacher on padded batches; on CUDA uploads from pinned buffers and keeps one batch in flight."""

    def __init__(self, teacher: Callable, policy, device: torch.device, batch_size: int, topk: int,
                 num_classes: int, finish_on_device: bool):
        self.teacher = teacher
        self.policy = policy
        self.device = device
        self.batch_size = batch_size
        self.topk = topk
        self.num_classes = num_classes
        self.finish = finish_on_device
        self.inflight: list[tuple] = []
        self.checked = False
        self._rings: dict[str, list[torch.Tensor]] = {}
        self._ring_pos: dict[str, int] = {}
        self.aux = torch.cuda.Stream(device) if device.type == "cuda" else None
        #: host-side seconds per phase (teacher_s on CUDA is launch time, collect_wait_s the wait for results)
        self.timings = {"stage_finish_s": 0.0, "teacher_s": 0.0, "collect_wait_s": 0.0, "batches": 0}

    def padded_size(self, count: int) -> int:
        """Rows computed for ``count`` records: the batch size, or for a shard's last partial batch the
        next power of two (a function of the shard alone, so the bytes do not depend on the world size)."""
        return min(self.batch_size, 1 << max(0, count - 1).bit_length())

    def _stage(self, name: str, tensors: list[torch.Tensor], rows: int) -> torch.Tensor:
        """Stack ``tensors`` (zero-padded to ``rows``) and move them to the device.

        On CUDA the stack goes straight into a ring of pinned buffers (one copy, asynchronous upload);
        a buffer is reused three batches later, after the batch two before it was collected.
        """
        count = len(tensors)
        if self.device.type != "cuda":
            x = torch.stack(tensors)
            return torch.cat([x, x.new_zeros((rows - count, *x.shape[1:]))]) if rows > count else x
        ring = self._rings.setdefault(name, [])
        k = self._ring_pos.get(name, 0)
        if len(ring) < 3:
            ring.append(torch.empty((self.batch_size, *tensors[0].shape), dtype=torch.uint8, pin_memory=True))
            k = len(ring) - 1
        buf = ring[k]
        self._ring_pos[name] = (k + 1) % 3
        torch.stack(tensors, out=buf[:count])
        if rows > count:
            buf[count:rows].zero_()
        return buf[:rows].to(self.device, non_blocking=True)

    def submit(self, work: _ShardWork, count: int) -> None:
        """Run the next ``count`` pending records of ``work`` (padded, see :meth:`padded_size`)."""
        r0 = work.next_record
        imgs = work.pending[:count]
        del work.pending[:count]
        rows = self.padded_size(count)
        cuda = self.device.type == "cuda"
        t0 = time.perf_counter()
        if cuda:
            # Upload and photometric stage on a side stream: any host sync inside Policy.finish then waits
            # for the previous finish only, never for the teacher's batch still running on the main stream.
            main = torch.cuda.current_stream(self.device)
            with torch.cuda.stream(self.aux):
                x = self._stage("images", imgs, rows)
                if self.finish:
                    x = self._finish(work, r0, count, x)
                ready = torch.cuda.Event()
                ready.record(self.aux)
            main.wait_event(ready)
            x.record_stream(main)
        else:
            x = self._stage("images", imgs, rows)
            if self.finish:
                x = self._finish(work, r0, count, x)
        t1 = time.perf_counter()
        self.timings["stage_finish_s"] += t1 - t0
        with torch.inference_mode():
            probs = self.teacher(x)
            if not isinstance(probs, torch.Tensor) or probs.ndim != 2 or probs.shape[0] != x.shape[0] \
                    or probs.shape[1] != self.num_classes:
                got = list(probs.shape) if isinstance(probs, torch.Tensor) else type(probs).__name__
                raise ReinforcementError(f"teacher returned {got}; expected probabilities of shape "
                                         f"[{x.shape[0]}, num_classes={self.num_classes}] (check num_classes)")
            probs = probs[:count].float()
            if not self.checked:
                self._check(probs)
            vals, ids = torch.topk(probs, self.topk, dim=1, largest=True, sorted=True)
        if cuda:
            vals_h = torch.empty(vals.shape, dtype=vals.dtype, pin_memory=True)
            ids_h = torch.empty(ids.shape, dtype=ids.dtype, pin_memory=True)
            vals_h.copy_(vals, non_blocking=True)
            ids_h.copy_(ids, non_blocking=True)
            ev = torch.cuda.Event()
            ev.record()
            self.inflight.append((work, r0, count, vals_h, ids_h, ev))
            t2 = time.perf_counter()
            while len(self.inflight) > 1:
                self._collect(*self.inflight.pop(0))
            self.timings["collect_wait_s"] += time.perf_counter() - t2
        else:
            t2 = time.perf_counter()
            self._collect(work, r0, count, vals, ids, None)
        self.timings["teacher_s"] += t2 - t1
        self.timings["batches"] += 1
        work.next_record = r0 + count

    def _finish(self, work: _ShardWork, r0: int, count: int, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]

        def padded(arrs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            out = {}
            for k, v in arrs.items():
                a = v[r0:r0 + count]
                if count < b:  # pad with copies of the first record: always valid params
                    a = np.concatenate([a, np.repeat(a[:1], b - count, axis=0)])
                out[k] = np.ascontiguousarray(a)
            return out

        partners = pparams = None
        if work.partner_params is not None:
            partners = self._stage("partners", work.pending_partners[:count], b)
            del work.pending_partners[:count]
            pparams = padded(work.partner_params)
        return self.policy.finish(x, padded(work.params), partners, pparams)

    def _check(self, probs: torch.Tensor) -> None:
        sums = probs.sum(dim=1)
        if not torch.isfinite(probs).all() or (probs < -1e-6).any() or ((sums - 1).abs() > 1e-2).any():
            raise ReinforcementError(
                f"teacher output is not a probability distribution (row sums in [{sums.min().item():.4g}, "
                f"{sums.max().item():.4g}]); the teacher callable must return softmax probabilities, not logits")
        self.checked = True

    def _collect(self, work: _ShardWork, r0: int, count: int, vals, ids, ev) -> None:
        if ev is not None:
            ev.synchronize()
        v = vals.cpu().numpy().astype(np.float64)
        work.ids[r0:r0 + count] = encode_topk_ids(ids.cpu().numpy(), self.num_classes)
        work.probs[r0:r0 + count] = encode_topk_probs(v)

    def drain(self) -> None:
        while self.inflight:
            self._collect(*self.inflight.pop(0))


# ----------------------------------------------------------------------------- settings and resume


def _settings(**kw) -> dict:
    return json.loads(json.dumps(kw, sort_keys=True, default=_json_default))


def _json_default(o):
    if hasattr(o, "to_json"):
        return o.to_json()
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, (tuple, set)):
        return list(o)
    raise TypeError(f"{type(o).__name__} is not JSON-serialisable")


def _diff(a: dict, b: dict) -> list[str]:
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def _check_or_record_settings(out: Path, settings: dict) -> None:
    from .store import MANIFEST_NAME, Manifest

    mpath = out / MANIFEST_NAME
    if mpath.is_file():
        m = Manifest.load(mpath)
        have = _manifest_settings(m)
        want = {k: settings[k] for k in have}
        bad = _diff(have, want)
        if bad:
            raise StoreError(f"{out} already holds a finished store with other settings ({', '.join(bad)} differ); "
                             "choose another output folder or delete this one")
    spath = out / _BUILD_DIR / _SETTINGS_NAME
    if spath.is_file():
        try:
            have = json.loads(spath.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            have = None
        if have is not None and have != settings:
            bad = _diff(have, settings) if isinstance(have, dict) else ["(unreadable)"]
            raise StoreError(f"{out} holds an unfinished build with other settings ({', '.join(bad)} differ); "
                             "rerun with the original settings to resume it, or choose another output folder "
                             "(or delete this one) to start afresh")
        if have is not None:
            return
    _atomic_text(spath, json.dumps(settings, indent=1, sort_keys=True) + "\n")


def _manifest_settings(m) -> dict:
    return _settings(dataset=m.dataset, split=m.split, num_samples=m.num_samples,
                     num_augmentations=m.num_augmentations, topk=m.topk, num_classes=m.num_classes,
                     policy=m.policy, fields=[f.to_json() for f in m.fields], teacher=m.teacher, seed=m.seed,
                     samples_per_shard=m.samples_per_shard, augs_per_shard=m.augs_per_shard)


def _atomic_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _remove_temp_files(folder: Path, prefixes: Sequence[str] | None) -> None:
    """Remove ``.{name}.*.tmp`` files (the store writers' temp names) for the given names (``None``: all)."""
    if not folder.is_dir():
        return
    for p in folder.iterdir():
        n = p.name
        if not (n.startswith(".") and n.endswith(".tmp")):
            continue
        if prefixes is None or any(n.startswith(f".{pre}.") for pre in prefixes):
            try:
                p.unlink()
            except FileNotFoundError:
                pass


def _identity_path(out: Path, s0: int, s1: int) -> Path:
    return out / _BUILD_DIR / f"identity-s{s0:08d}-s{s1:08d}.safetensors"


def _write_identity(out: Path, s0: int, s1: int, labels: np.ndarray, hashes: np.ndarray, sizes: np.ndarray,
                    prints: np.ndarray) -> None:
    path = _identity_path(out, s0, s1)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        _st_save_file({"label": labels.astype("<i8"), "content_hash": hashes.astype(np.uint8),
                       "image_size": sizes.astype("<u4"), "fingerprint": prints.astype(np.uint8)}, str(tmp))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _read_identity(out: Path, s0: int, s1: int) -> tuple[np.ndarray, ...] | None:
    path = _identity_path(out, s0, s1)
    if not path.is_file():
        return None
    try:
        d = _st_load_file(str(path))
        got = d["label"], d["content_hash"], d["image_size"], d["fingerprint"]
    except Exception:  # a damaged part is recomputed
        return None
    if [a.shape for a in got] != [(s1 - s0,), (s1 - s0, 8), (s1 - s0, 2), (s1 - s0, 64)]:
        return None
    return got


# ----------------------------------------------------------------------------- the engine


def build_reinforcements(base, out, *, policy, teacher: Callable[[torch.Tensor], torch.Tensor], num_classes: int,
                         num_augmentations: int, topk: int, seed: int, dataset_name: str, teacher_desc: dict,
                         samples_per_shard: int | None, augs_per_shard: int | None = 50, batch_size: int = 256,
                         device: str | torch.device = "cpu", rank: int = 0, world_size: int = 1,
                         progress: bool = True, split: str = "train", num_workers: int = 0,
                         extra: dict | None = None, stats: BuildStats | None = None, pixel_path: str = "auto"):
    """Build (or resume) a reinforcement store of ``base`` in ``out``.

    Args:
        base: a torchvision-style dataset in its canonical order (``base[i] -> (image, label)``).
        out: output folder (created; an unfinished build there is resumed).
        policy: an :class:`~imagenet_plus.augment.Policy`.
        teacher: maps ``uint8 [B, 3, S, S]`` on ``device`` to probabilities ``[B, num_classes]``.
        num_classes: number of classes of the teacher's output.
        num_augmentations: augmentations per sample.
        topk: probabilities kept per record.
        seed: the build seed (all randomness is counter-based on it).
        dataset_name: recorded in the manifest (e.g. ``"imagenet"``).
        teacher_desc: JSON-able description of the teacher, recorded in the manifest.
        samples_per_shard: samples per shard (``None``: the largest under the store's size cap).
        augs_per_shard: augmentations per shard (``None``: ``min(num_augmentations, 50)``), so a
            reader wanting the first 50 augmentations downloads one block.
        batch_size: teacher batch size (records depend on it only through float rounding).
        device: where the teacher (and on CUDA the photometric stage) runs.
        rank: this process's rank; it builds shards ``rank, rank + world_size, ...`` of the plan.
        world_size: number of processes; ``> 1`` needs ``torch.distributed`` (see :func:`init_distributed`).
        progress: show a tqdm progress bar (rank 0) and print a summary.
        split: dataset split, recorded in the manifest.
        num_workers: DataLoader workers decoding and cropping images (0: in this process).
        extra: free-form JSON-able manifest extras (part of the build's settings).
        stats: filled with this rank's counts and timings when given.
        pixel_path: ``"apply"`` renders each record with ``Policy.apply`` in the workers (bit-exact
            with the CPU replay), ``"batched"`` crops in the workers and runs ``Policy.finish`` on
            ``device`` in teacher batches; ``"auto"``: ``"batched"`` on CUDA, else ``"apply"``.

    Returns:
        The written :class:`~imagenet_plus.store.Manifest` on rank 0, ``None`` on other ranks.

    Raises:
        ReinforcementError: bad arguments, a teacher that does not return probabilities,
            or an output folder holding a build with other settings.
        OSError: writing failed (e.g. a full disk); finished shards stay valid, rerun to resume.

    Example:
        >>> m = build_reinforcements(ds, "out/digits-plus", policy=create_policy("cifar", output_size=32),
        ...                          teacher=teacher, num_classes=10, num_augmentations=8, topk=5, seed=0,
        ...                          dataset_name="digits", teacher_desc={"models": ["resnet18"]},
        ...                          samples_per_shard=256, augs_per_shard=4, batch_size=64)
    """
    from .store import (MANIFEST_NAME, SHARD_DIR, Manifest, compute_build_id, digest_keys, plan_shards,
                        read_shard_entry, resolve_shard_shape, write_manifest, write_samples, write_shard)

    t_start = time.perf_counter()
    stats = stats if stats is not None else BuildStats()
    device = torch.device(device)
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    out = Path(out)
    n = len(base)
    for name, v in (("num_classes", num_classes), ("num_augmentations", num_augmentations), ("topk", topk),
                    ("batch_size", batch_size), ("world_size", world_size)):
        if not isinstance(v, (int, np.integer)) or v < 1:
            raise ReinforcementError(f"{name} must be a positive integer, got {v!r}")
    if n < 1:
        raise ReinforcementError("the base dataset is empty; check the dataset root and split")
    if topk > num_classes:
        raise ReinforcementError(f"topk={topk} exceeds num_classes={num_classes}; use topk <= num_classes")
    if not 0 <= rank < world_size:
        raise ReinforcementError(f"rank={rank} must lie in [0, world_size={world_size})")
    if num_workers < 0:
        raise ReinforcementError(f"num_workers must be >= 0, got {num_workers}")
    if world_size > 1:
        init_distributed(device, rank, world_size)  # no-op when the caller initialised it; fails fast otherwise
    fields = [*policy.fields, *target_fields(num_classes, topk)]
    record_bytes = sum(f.nbytes for f in fields)
    sps, aps = resolve_shard_shape(n, num_augmentations, record_bytes, samples_per_shard, augs_per_shard)
    plan = plan_shards(n, num_augmentations, sps, aps, record_bytes=record_bytes)
    mine = plan[rank::world_size]

    settings = _settings(dataset=dataset_name, split=split, num_samples=n, num_augmentations=num_augmentations,
                         topk=topk, num_classes=num_classes, policy=policy.config,
                         fields=[f.to_json() for f in fields], teacher=teacher_desc, seed=int(seed),
                         samples_per_shard=sps, augs_per_shard=aps, extra=extra or {})
    # Every file of this build carries its id, so a shard from another build is never kept or read.
    manifest = Manifest(dataset=dataset_name, split=split, num_samples=n, num_augmentations=num_augmentations,
                        topk=topk, num_classes=num_classes, policy=policy.config, fields=fields,
                        teacher=dict(teacher_desc), seed=int(seed), builder_version=__version__,
                        samples_per_shard=sps, augs_per_shard=aps, extra=dict(extra or {}))
    build_id = compute_build_id(manifest, digest_keys(sample_keys(base)))
    out.mkdir(parents=True, exist_ok=True)
    (out / SHARD_DIR).mkdir(exist_ok=True)
    _check_or_record_settings(out, settings)
    _remove_temp_files(out / SHARD_DIR, [Path(_shard_name(r)).name for r in mine])

    # Resume: keep finished shards that check out, rebuild the rest.
    entries: dict[tuple, Any] = {}
    todo: list[tuple] = []
    for r in mine:
        name = _shard_name(r)
        if (out / name).is_file():
            try:
                entries[r] = read_shard_entry(out, name, fields, build_id=build_id)
                stats.shards_kept += 1
                continue
            except StoreError:
                (out / name).unlink()
        todo.append(r)

    if pixel_path not in ("auto", "apply", "batched"):
        raise ReinforcementError(f"pixel_path must be 'auto', 'apply' or 'batched', got {pixel_path!r}")
    batched = pixel_path == "batched" or (pixel_path == "auto" and device.type == "cuda")
    mode = "crop" if batched else "apply"
    runner = _Teacher(teacher, policy, device, batch_size, topk, num_classes, finish_on_device=(mode == "crop"))
    ids_bytes = target_fields(num_classes, topk)[0].shape[0]
    blocks: dict[tuple[int, int], list[tuple]] = {}
    for r in todo:
        blocks.setdefault((r[0], r[1]), []).append(r)
    total_records = sum((r[1] - r[0]) * (r[3] - r[2]) for r in todo)
    bar = _progress_bar(total_records, rank, progress)
    t_work = time.perf_counter()
    block_list = list(blocks.items())  # plan order: sample blocks ascending
    tasks = [(i, [(r[2], r[3]) for r in shard_list]) for (s0, s1), shard_list in block_list for i in range(s0, s1)]
    # One loader for the whole run: workers keep decoding the next block while this one is finished.
    loader = DataLoader(_SampleJobs(base, tasks, policy, seed, n, mode), batch_size=None, shuffle=False,
                        num_workers=num_workers, collate_fn=_identity_collate,
                        prefetch_factor=2 if num_workers > 0 else None)

    def finish_block(block: dict) -> None:
        for work in block["works"]:
            while work.pending:
                runner.submit(work, min(batch_size, len(work.pending)))
        runner.drain()
        s0, s1 = block["range"]
        _write_identity(out, s0, s1, block["labels"], block["hashes"], block["sizes"], block["prints"])
        for r, work in zip(block["shards"], block["works"]):
            entries[r] = _write_shard_checked(write_shard, out, r, work.arrays(ids_bytes), fields, build_id)
            stats.shards_built += 1
            stats.bytes_written += entries[r].bytes

    def start_block(k: int) -> dict:
        (s0, s1), shard_list = block_list[k]
        return {"k": k, "range": (s0, s1), "shards": shard_list,
                "works": [_ShardWork(*r, policy.fields, topk, num_classes) for r in shard_list],
                "labels": np.zeros(s1 - s0, dtype=np.int64), "hashes": np.zeros((s1 - s0, 8), dtype=np.uint8),
                "sizes": np.zeros((s1 - s0, 2), dtype=np.uint32), "prints": np.zeros((s1 - s0, 64), dtype=np.uint8)}

    block = None
    wait = {"loader_wait_s": 0.0, "block_finish_s": 0.0}
    try:
        t_ask = time.perf_counter()
        for item in loader:
            wait["loader_wait_s"] += time.perf_counter() - t_ask
            i = item["index"]
            if block is None or i >= block["range"][1]:
                if block is not None:
                    tb = time.perf_counter()
                    finish_block(block)
                    wait["block_finish_s"] += time.perf_counter() - tb
                block = start_block(0 if block is None else block["k"] + 1)
            s0 = block["range"][0]
            block["labels"][i - s0] = item["label"]
            block["hashes"][i - s0] = item["hash"]
            block["sizes"][i - s0] = item["size"]
            block["prints"][i - s0] = item["print"]
            for work, blk in zip(block["works"], item["blocks"]):
                work.add(i, blk)
                while len(work.pending) >= batch_size:
                    runner.submit(work, batch_size)
            stats.samples += 1
            recs = sum(w.na for w in block["works"])
            stats.records += recs
            if bar is not None:
                bar.update(recs)
                el = max(time.perf_counter() - t_work, 1e-9)
                bar.set_postfix_str(f"{stats.samples / el:.1f} samples/s", refresh=False)
            t_ask = time.perf_counter()
        if block is not None:
            tb = time.perf_counter()
            finish_block(block)
            wait["block_finish_s"] += time.perf_counter() - tb
        stats.extra["timings"] = {**{k: round(v, 3) for k, v in wait.items()},
                                  **{k: round(v, 3) for k, v in runner.timings.items()}}
    finally:
        if bar is not None:
            bar.close()

    if world_size > 1:
        _barrier(device)
    stats.seconds = time.perf_counter() - t_start
    if rank != 0:
        if progress:
            print(f"[rank {rank}] {stats.summary()}", file=sys.stderr)
        return None

    # Rank 0: every shard exists now; write the identity file and the manifest (last).
    shard_entries = []
    for r in plan:
        e = entries.get(r)
        shard_entries.append(e if e is not None else read_shard_entry(out, _shard_name(r), fields,
                                                                       build_id=build_id))
    labels, hashes, sizes, prints = _collect_identity(base, out, plan)
    samples_entry = write_samples(out, labels, sample_keys(base), hashes, sizes, prints, build_id=build_id)
    manifest.samples_file, manifest.shards, manifest.build_id = samples_entry, shard_entries, build_id
    write_manifest(out, manifest)
    shutil.rmtree(out / _BUILD_DIR, ignore_errors=True)
    _remove_temp_files(out / SHARD_DIR, None)
    stats.bytes_written += samples_entry.bytes + (out / MANIFEST_NAME).stat().st_size
    stats.seconds = time.perf_counter() - t_start
    if progress:
        total = sum(e.bytes for e in shard_entries) + samples_entry.bytes
        print(f"[rank 0] {stats.summary()}; store {out} holds {len(plan)} shards, {_human_bytes(total)}",
              file=sys.stderr)
    return manifest


def _shard_name(r: tuple) -> str:
    from .store import shard_filename

    return shard_filename(*r)


def _write_shard_checked(write_shard, out: Path, r: tuple, arrays: dict, fields, build_id: str):
    try:
        return write_shard(out, *r, arrays, fields, build_id=build_id)
    except OSError as e:
        name = _shard_name(r)
        _remove_temp_files((out / name).parent, [Path(name).name])
        reason = "the disk is full" if e.errno == errno.ENOSPC else f"{type(e).__name__}: {e}"
        raise OSError(e.errno, f"writing shard {out / name} failed ({reason}); finished shards are kept and no "
                               f"partial shard is left: free space (or fix the folder) and rerun the same command "
                               f"to resume") from e


def _collect_identity(base, out: Path, plan) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    n = len(base)
    labels = np.zeros(n, dtype=np.int64)
    hashes = np.zeros((n, 8), dtype=np.uint8)
    sizes = np.zeros((n, 2), dtype=np.uint32)
    prints = np.zeros((n, 64), dtype=np.uint8)
    for s0, s1 in sorted({(r[0], r[1]) for r in plan}):
        got = _read_identity(out, s0, s1)
        if got is None:  # shards kept from an interrupted build of a rank that never wrote its part
            for i in range(s0, s1):
                img, lab = load_sample(base, i)
                rgb = to_rgb_array(img)
                labels[i], hashes[i], sizes[i], prints[i] = lab, content_hash(rgb), rgb.shape[:2], fingerprint(rgb)
        else:
            labels[s0:s1], hashes[s0:s1], sizes[s0:s1], prints[s0:s1] = got
    return labels, hashes, sizes, prints


def _progress_bar(total: int, rank: int, enabled: bool):
    if not enabled or rank != 0 or total == 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="aug", unit_scale=True, dynamic_ncols=True, desc="reinforce", file=sys.stderr,
                smoothing=0.05)
