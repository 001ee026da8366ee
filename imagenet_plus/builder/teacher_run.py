"""Running the teacher: the records of one shard, padded teacher batches, device staging, top-k.

Determinism. Teacher batches never cross a shard and always start at the shard's first record;
a shard's last partial batch is zero-padded to the next power of two (at most the batch size),
or to the full batch size for a teacher that asks for one static shape (``teacher.static_batch``:
a compiled or CUDA-graphed :class:`~imagenet_plus.teachers.Teacher`, one compilation or capture).
The same shard is thus computed by the same kernels on the same batch shapes whatever the world
size, worker count or resume point.

CUDA. Batches are stacked straight into a ring of three pinned host buffers and uploaded
asynchronously; the upload and, on the batched pixel path, the photometric stage
(:meth:`~imagenet_plus.augment.Policy.finish`) run on a side stream, so a host sync inside
``finish`` waits for the previous ``finish`` only, never for the teacher's batch on the main
stream. Results come back through pinned buffers with one batch in flight.
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np
import torch

from ..errors import BuildError
from ..schema import Field, encode_topk_ids, encode_topk_probs, target_fields
from .plan import Shard
from .report import TOP_N, AgreementCounts, record_hits

__all__ = ["ShardWork", "TeacherRunner"]


class ShardWork:
    """The records of one shard being built: params, pixels waiting for the teacher, targets, agreement.

    Args:
        shard: the shard.
        param_fields: the policy's fields.
        topk: probabilities kept per record.
        num_classes: the teacher's classes.
        probe: the record (row ``(i - s0) * augs + (j - a0)``) whose teacher pixels are kept for
            the read-back check.
    """

    def __init__(self, shard: Shard, param_fields: Sequence[Field], topk: int, num_classes: int, probe: int):
        n = shard.num_records
        self.shard = shard
        self.params = {f.name: np.zeros((n, *f.shape), dtype=f.np_dtype) for f in param_fields}
        self.partner_params: dict[str, np.ndarray] | None = None
        ids_field, probs_field = target_fields(num_classes, topk)
        self.ids = np.zeros((n, *ids_field.shape), dtype=np.uint8)
        self.probs = np.zeros((n, *probs_field.shape), dtype=np.uint8)
        self.labels = np.zeros(n, dtype=np.int64)
        self.partner_labels = np.full(n, -1, dtype=np.int64)
        self.hits1 = np.zeros(n, dtype=bool)
        self.hitsn = np.zeros(n, dtype=bool)
        self.pending: list[torch.Tensor] = []
        self.pending_partners: list[torch.Tensor] = []
        self.next_record = 0  # first record whose pixels are pending
        self.filled = 0  # records whose params have arrived
        self.probe = probe
        self.probe_pixels: torch.Tensor | None = None
        self.probe_exact = True  # the probe's pixels came from the CPU (bit-exact with the CPU replay)

    def add(self, index: int, label: int, part, dataset_labels: np.ndarray) -> None:
        """Append sample ``index``'s records (an :class:`~imagenet_plus.builder.pipeline.AugPart`)."""
        na = self.shard.num_augs
        r0 = (index - self.shard.s0) * na
        if r0 != self.filled:
            raise RuntimeError(f"internal error: sample {index} arrived out of order for shard {self.shard.name}")
        rows = slice(r0, r0 + na)
        for name, arr in self.params.items():
            arr[rows] = np.asarray(part.params[name]).reshape(arr[rows].shape)
        self.labels[rows] = label
        if part.partner_params is not None:
            if self.partner_params is None:
                self.partner_params = {k: np.zeros((self.params[k].shape[0], *np.shape(v)[1:]),
                                                   dtype=np.asarray(v).dtype) for k, v in part.partner_params.items()}
            for name, arr in self.partner_params.items():
                arr[rows] = np.asarray(part.partner_params[name])
        if part.mixes_with is not None:
            partners = np.asarray(part.mixes_with, dtype=np.int64).reshape(na)
            self.partner_labels[rows] = np.where(partners >= 0, dataset_labels[np.maximum(partners, 0)], -1)
        self.pending.extend(part.images.unbind(0))
        if part.partners is not None:
            self.pending_partners.extend(part.partners.unbind(0))
        self.filled += na

    def arrays(self) -> dict[str, np.ndarray]:
        """The shard's arrays as :func:`~imagenet_plus.store.write_shard` takes them."""
        ns, na = self.shard.num_samples, self.shard.num_augs
        out = {k: v.reshape(ns, na, *v.shape[1:]) for k, v in self.params.items()}
        out["topk_ids"] = self.ids.reshape(ns, na, self.ids.shape[-1])
        out["topk_probs"] = self.probs.reshape(ns, na, self.probs.shape[-1])
        return out

    def counts(self, num_classes: int) -> AgreementCounts:
        """The shard's agreement counts (every record must have been collected)."""
        return AgreementCounts.of_records(self.labels, self.hits1, self.hitsn, self.partner_labels >= 0, num_classes)


def _padded_rows(arrs: dict[str, np.ndarray], r0: int, count: int, rows: int) -> dict[str, np.ndarray]:
    """Rows ``[r0, r0 + count)`` of each array, padded to ``rows`` with copies of the first (always valid params)."""
    out = {}
    for k, v in arrs.items():
        a = v[r0:r0 + count]
        if count < rows:
            a = np.concatenate([a, np.repeat(a[:1], rows - count, axis=0)])
        out[k] = np.ascontiguousarray(a)
    return out


class TeacherRunner:
    """Runs the teacher on padded batches of a :class:`ShardWork`'s pending pixels.

    Args:
        teacher: maps uint8 ``[B, 3, S, S]`` on ``device`` to probabilities ``[B, num_classes]``.
        policy: the policy (its ``finish`` runs here on the batched pixel path).
        device: where the teacher runs.
        batch_size: teacher batch size.
        topk: probabilities kept per record.
        num_classes: the teacher's classes.
        finish_on_device: the pending pixels are crops; finish them in teacher batches on ``device``.
    """

    def __init__(self, teacher: Callable, policy, device: torch.device, batch_size: int, topk: int,
                 num_classes: int, finish_on_device: bool):
        self.teacher, self.policy, self.device = teacher, policy, device
        self.batch_size, self.topk, self.num_classes = batch_size, topk, num_classes
        self.ranked = max(topk, min(TOP_N, num_classes))  # classes ranked per record: stored top-k and the report's
        self.finish = finish_on_device
        self.inflight: list[tuple] = []
        self.checked = False
        self._rings: dict[str, list[torch.Tensor]] = {}
        self._ring_pos: dict[str, int] = {}
        self.aux = torch.cuda.Stream(device) if device.type == "cuda" else None
        #: host-side seconds per phase (teacher_s on CUDA is launch time, collect_wait_s the wait for results)
        self.timings = {"stage_finish_s": 0.0, "teacher_s": 0.0, "collect_wait_s": 0.0, "batches": 0}

    def padded_size(self, count: int) -> int:
        """Rows computed for ``count`` records: the batch size, or for a shard's last partial batch the next
        power of two (a function of the shard alone, so the bytes do not depend on the world size); always the
        batch size for a teacher with ``static_batch`` (compiled or CUDA-graphed: one shape)."""
        if getattr(self.teacher, "static_batch", False):
            return self.batch_size
        return min(self.batch_size, 1 << max(0, count - 1).bit_length())

    def _stage(self, name: str, tensors: list[torch.Tensor], rows: int) -> torch.Tensor:
        """Stack ``tensors`` (zero-padded to ``rows``) and move them to the device.

        On CUDA the stack goes straight into a ring of pinned buffers (one copy, asynchronous upload); a
        buffer is reused three batches later, after the batch two before it was collected.
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

    def _pixels(self, work: ShardWork, r0: int, count: int, rows: int) -> torch.Tensor:
        """The teacher's input for records ``[r0, r0 + count)`` (padded to ``rows``), on the device."""
        x = self._stage("images", work.pending[:count], rows)
        del work.pending[:count]
        if self.finish:
            x = self._finish(work, r0, count, x)
        if r0 <= work.probe < r0 + count:  # the read-back check compares the store's replay with these pixels
            work.probe_pixels = x[work.probe - r0].to("cpu", copy=True)
            work.probe_exact = not (self.finish and x.device.type != "cpu")  # finished on a GPU: within tolerance
        return x

    def submit(self, work: ShardWork, count: int) -> None:
        """Run the next ``count`` pending records of ``work`` (padded, see :meth:`padded_size`)."""
        r0 = work.next_record
        rows = self.padded_size(count)
        cuda = self.device.type == "cuda"
        t0 = time.perf_counter()
        if cuda:
            main = torch.cuda.current_stream(self.device)
            with torch.cuda.stream(self.aux):
                x = self._pixels(work, r0, count, rows)
                ready = torch.cuda.Event()
                ready.record(self.aux)
            main.wait_event(ready)
            x.record_stream(main)
        else:
            x = self._pixels(work, r0, count, rows)
        t1 = time.perf_counter()
        self.timings["stage_finish_s"] += t1 - t0
        vals, ids = self._run_teacher(x, count)
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

    def _run_teacher(self, x: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-ranked probabilities and class ids of the first ``count`` rows of ``x``."""
        with torch.inference_mode():
            probs = self.teacher(x)
            if not isinstance(probs, torch.Tensor) or probs.ndim != 2 or probs.shape[0] != x.shape[0] \
                    or probs.shape[1] != self.num_classes:
                got = list(probs.shape) if isinstance(probs, torch.Tensor) else type(probs).__name__
                raise BuildError(f"teacher returned {got}; expected probabilities of shape "
                                 f"[{x.shape[0]}, num_classes={self.num_classes}] (check num_classes)")
            probs = probs[:count].float()
            if not self.checked:
                self._check(probs)
            return torch.topk(probs, self.ranked, dim=1, largest=True, sorted=True)

    def _finish(self, work: ShardWork, r0: int, count: int, x: torch.Tensor) -> torch.Tensor:
        """The photometric stage of records ``[r0, r0 + count)`` on the staged crops ``x`` (padded rows)."""
        b = x.shape[0]
        partners = pparams = None
        if work.partner_params is not None:
            partners = self._stage("partners", work.pending_partners[:count], b)
            del work.pending_partners[:count]
            pparams = _padded_rows(work.partner_params, r0, count, b)
        return self.policy.finish(x, _padded_rows(work.params, r0, count, b), partners, pparams)

    def _check(self, probs: torch.Tensor) -> None:
        sums = probs.sum(dim=1)
        if not torch.isfinite(probs).all() or (probs < -1e-6).any() or ((sums - 1).abs() > 1e-2).any():
            raise BuildError(
                f"teacher output is not a probability distribution (row sums in [{sums.min().item():.4g}, "
                f"{sums.max().item():.4g}]); the teacher callable must return softmax probabilities, not logits")
        self.checked = True

    def _collect(self, work: ShardWork, r0: int, count: int, vals, ids, ev) -> None:
        if ev is not None:
            ev.synchronize()
        ranked = ids.cpu().numpy()
        rows = slice(r0, r0 + count)
        work.ids[rows] = encode_topk_ids(ranked[:, :self.topk], self.num_classes)
        work.probs[rows] = encode_topk_probs(vals[:, :self.topk].cpu().numpy().astype(np.float64))
        n = min(TOP_N, self.num_classes)
        work.hits1[rows], work.hitsn[rows] = record_hits(ranked[:, :n], work.labels[rows], work.partner_labels[rows])

    def drain(self) -> None:
        """Collect every batch still in flight."""
        while self.inflight:
            self._collect(*self.inflight.pop(0))
