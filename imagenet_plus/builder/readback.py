"""The read-back check: stored records replay to the pixels the teacher saw.

A params field stored wrongly (a wrong dtype, row order or layout) produces a store that
opens, verifies and trains, on the wrong pixels. So the builder keeps, for one record of
every shard (its *probe*), the exact pixels the teacher saw, and checks them twice:

1. right after the shard is written: the record's params are read back from the file (by
   the ``safetensors`` library, independently of the package's reader) and replayed with the
   replay core's :func:`~imagenet_plus.replay.render` on the image decoded again through the
   adapter; the stored targets must equal the teacher's. A failure stops the build at its first
   shard, not after days.
2. once the manifest is written: every probe is replayed exactly as training does, through the
   store reader and :meth:`ReplaySource.replay_record <imagenet_plus.replay.ReplaySource.replay_record>`
   (identity checked, mixing partners from their own stored records).

Pixels rendered on the CPU must be equal; pixels the teacher saw after the batched
photometric stage on CUDA must agree within the replay's stated CPU-vs-CUDA tolerance (mean
absolute difference at most :data:`TOLERANCE` grey levels).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import BuildError
from .plan import Shard

__all__ = ["TOLERANCE", "Probe", "probe_row", "check_written_shard", "check_store"]

#: Largest mean absolute difference (grey levels) between the device-finished pixels and the CPU replay.
TOLERANCE = 1.0
_BUG = ("this is a bug in imagenet-plus, not in your data: please report it with this message; the store must "
        "not be trained on")


def probe_row(shard: Shard) -> int:
    """The probe record of a shard (row ``(i - s0) * augs + (j - a0)``): spread over samples and augmentations."""
    return (shard.s0 * 31 + shard.a0 * 17 + 5) % shard.num_records


@dataclass
class Probe:
    """One shard's probe: record ``(index, aug)`` and the uint8 ``[3, S, S]`` pixels the teacher saw."""

    shard: Shard
    index: int
    aug: int
    pixels: np.ndarray
    exact: bool

    @classmethod
    def of_work(cls, work) -> "Probe":
        sh, r = work.shard, work.probe
        if work.probe_pixels is None:
            raise RuntimeError(f"internal error: shard {sh.name} finished without its probe's pixels")
        return cls(sh, sh.s0 + r // sh.num_augs, sh.a0 + r % sh.num_augs,
                   work.probe_pixels.numpy().astype(np.uint8), bool(work.probe_exact))

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"probe_record": np.array([self.index, self.aug], dtype=np.int64), "probe_pixels": self.pixels,
                "probe_exact": np.array([int(self.exact)], dtype=np.uint8)}

    @classmethod
    def from_arrays(cls, shard: Shard, d: dict) -> "Probe":
        i, j = (int(v) for v in d["probe_record"])
        return cls(shard, i, j, np.asarray(d["probe_pixels"], dtype=np.uint8), bool(d["probe_exact"][0]))

    def compare(self, pixels: torch.Tensor | np.ndarray, how: str) -> None:
        """Raise :class:`BuildError` unless ``pixels`` (the replay) agree with the teacher's pixels."""
        got = np.asarray(pixels.cpu() if isinstance(pixels, torch.Tensor) else pixels, dtype=np.int16)
        if got.shape != self.pixels.shape:
            raise BuildError(f"read-back check of {self.shard.name}: record ({self.index}, {self.aug}) replays to "
                             f"shape {list(got.shape)}, the teacher saw {list(self.pixels.shape)}; {_BUG}")
        mad = float(np.abs(got - self.pixels.astype(np.int16)).mean())
        if (self.exact and mad > 0) or mad > TOLERANCE:
            bound = "equal pixels (both rendered on the CPU)" if self.exact else f"a mean difference <= {TOLERANCE:g}"
            raise BuildError(f"read-back check of {self.shard.name}: record ({self.index}, {self.aug}) {how} differs "
                             f"from the pixels the teacher saw by {mad:.3f} grey levels on average (expected "
                             f"{bound}): a params field is stored or replayed wrongly; {_BUG}")


def _row(d: dict, r: int) -> dict:
    return {k: np.asarray(v)[r:r + 1] for k, v in d.items()}


def check_written_shard(root: Path, work, probe: Probe, adapter, policy, num_classes: int, topk: int) -> None:
    """Check 1 (see the module docstring): read the probe back from the shard file just written and replay it."""
    from safetensors import safe_open

    from ..replay import render

    sh, r = work.shard, work.probe
    rs, ra = probe.index - sh.s0, probe.aug - sh.a0
    with safe_open(str(root / sh.name), framework="numpy") as f:
        stored = {name: f.get_slice(name)[rs:rs + 1, ra:ra + 1] for name in (*work.params, "topk_ids", "topk_probs")}
    stored = {k: np.asarray(v).reshape(1, *np.asarray(v).shape[2:]) for k, v in stored.items()}
    for name, want in (("topk_ids", work.ids), ("topk_probs", work.probs)):
        if not np.array_equal(stored.pop(name)[0], want[r]):
            raise BuildError(f"read-back check of {sh.name}: record ({probe.index}, {probe.aug}) has other {name} in "
                             f"the file than the teacher gave; {_BUG}")
    image = adapter.load(probe.index).image
    partner = pparams = None
    mixes, p = policy.mixing(stored)
    if mixes[0]:
        partner = [adapter.load(int(p[0])).image]
        pparams = _row(work.partner_params, r)  # the partner's own record may be in a shard not written yet
    probe.compare(render(policy, [image], stored, partner, pparams, normalized=False)[0],
                  "read back from its shard and replayed")


def check_store(root: Path, adapter, policy, probes: list[Probe]) -> None:
    """Check 2 (see the module docstring): replay every probe through the store reader and the replay core."""
    from ..identity import IdentityChecker
    from ..replay import Chooser, ReplaySource, StoreRecords
    from ..store import open_store

    store = open_store(root)
    source = ReplaySource(StoreRecords(adapter, store, IdentityChecker(store, "exact")), policy,
                          Chooser(0, store.num_augmentations, p_original=0.0))
    for probe in probes:
        pixels, _, _ = source.replay_record(probe.index, probe.aug)
        probe.compare(pixels, "replayed from the finished store as training does")
