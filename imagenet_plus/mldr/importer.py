"""Import one of apple/ml-dr's published reinforcements into this package's store: :func:`import_mldr`.

Read top to bottom, the import is:

1. **Refuse up front, write nothing**: open the archive and read its config (streaming as far as
   the config), check the variant, the dataset and its classes against the user's copy, and the
   evidence that the copy lists its samples in torchvision's order (:mod:`~imagenet_plus.mldr._order`:
   a contradiction is refused, no evidence is said loudly); plan the
   store (``ml-dr`` flavour policy, fields, shards) and its settings, with a cheap fingerprint of
   the archive (size, sha256 of its first and last MiB) standing in for its full sha256.
2. **Take the output folder** (:class:`~imagenet_plus.mldr._staging.ImportFolder`): absent, empty
   or this import unfinished (resume); locked; a finished import of the same settings is left as is.
3. **Identity pass** (:func:`~imagenet_plus.mldr._pipeline.identify`): every image of the user's
   copy decoded through its adapter (all cores): labels, digests, sizes, fingerprints.
4. **Archive pass** (:func:`~imagenet_plus.mldr._pipeline.stage_archive`): stream the archive, decode
   and convert each sample in the pool, stage its rows; the archive's sha256 is computed on the way.
5. **Shards, samples file, manifest** (last): each shard cut from the staging area, written with the
   store's atomic writer and read back (every row's checksum); then the store is opened by the reader.

A failure on bad data (:class:`~imagenet_plus.errors.ReinforcementError`: an unsafe member, a truncated
archive, an index outside the dataset, a crop that does not fit the user's image, ...) removes
everything the import wrote; a kill, Ctrl-C or a full disk keeps it, and the same command resumes
(byte-identical to an uninterrupted import).
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._checks import check_choice, check_int
from .._files import atomic_write_text, human_bytes
from ..builder.config import available_cores
from ..builder.manifest import build_settings, create_manifest, write_store_files
from ..builder.outdir import shard_state_name
from ..builder.plan import Shard, create_plan
from ..errors import AlignmentError, ImportFormatError, ReinforcementError, StoreError
from ..schema import target_fields
from ..store import MANIFEST_NAME, Manifest, ShardEntry, compute_teacher_id, open_store, read_shard_entry, write_shard
from ._archive import fingerprint_source, open_archive
from ._config import DATASETS, parse_config
from ._convert import Converter, mldr_order, policy_config
from ._order import check_order, order_warning
from ._pipeline import identify, stage_archive
from ._staging import ARCHIVE_NAME, HASH_KEY, ImportFolder, Staging

__all__ = ["import_mldr", "ImportResult"]


@dataclass
class ImportResult:
    """What an import did (``summary()`` is what the command prints)."""

    out: Path
    manifest: Manifest
    archive_bytes: int
    store_bytes: int
    seconds: float
    already_finished: bool = False
    samples_staged: int = 0
    samples_resumed: int = 0
    shards_written: int = 0
    shards_kept: int = 0
    timings: dict = field(default_factory=dict)
    order: dict = field(default_factory=dict)  # evidence of the copy's sample order (reports["import"]["order"])

    @property
    def records(self) -> int:
        return self.manifest.num_samples * self.manifest.num_augmentations

    def summary(self) -> str:
        m, t = self.manifest, max(self.seconds, 1e-9)
        warning = order_warning(self.order or (m.reports.get("import") or {}).get("order") or {})
        tail = f"\nWARNING: {warning}" if warning else ""
        if self.already_finished:
            return f"{self.out}: already imported ({self.records:,} records, {human_bytes(self.store_bytes)}); " \
                   "nothing to do" + tail
        prov = m.extra.get("provenance", {})
        return (f"imported {prov.get('archive')} ({prov.get('variant')}, {m.dataset}) into {self.out}: "
                f"{m.num_samples:,} samples x {m.num_augmentations} = {self.records:,} records in {self.seconds:.1f} s "
                f"({self.records / t:,.0f} records/s); {human_bytes(self.archive_bytes)} archive -> "
                f"{human_bytes(self.store_bytes)} store ({self.store_bytes / max(self.archive_bytes, 1):.2f}x); "
                f"{self.samples_resumed:,} samples staged by an earlier run, {self.shards_kept} shards kept; sample "
                f"order {(self.order or {}).get('status', '?')}") + tail


def _teacher(config: dict) -> dict:
    """The manifest's teacher description: ml-dr's config entry (JSON values only) and where it comes from."""
    raw = config.get("teacher") if isinstance(config.get("teacher"), dict) else {}
    keep = {k: v for k, v in raw.items() if isinstance(v, (str, int, float, bool)) or v is None}
    out = {"source": "apple/ml-dr", **keep}
    if isinstance(keep.get("name"), str):  # ml-dr names an ensemble's timm models in one comma-separated string
        out["names"] = [n.strip() for n in out.pop("name").split(",") if n.strip()]
        out["ensemble"] = "mean of probabilities" if len(out["names"]) > 1 else None
    return out


def _provenance(archive, layout, fp: dict) -> dict:
    prov = {"source": "apple/ml-dr", "variant": layout.variant, "dataset": layout.dataset,
            "archive": fp["name"], "kind": fp["kind"], "bytes": fp["bytes"],
            "config_member": str(archive.config_member).rsplit(":", 1)[-1].rsplit("/", 1)[-1]}
    prov.update({k: v for k, v in fp.items() if k not in prov and k != "name"})
    return prov


def _check_copy(adapter, layout, dataset: str, warn: bool) -> None:
    if layout.dataset != dataset:
        raise ImportFormatError(f"{layout.config_member}: the archive is ml-dr's {layout.dataset} reinforcement, not "
                                f"{dataset}'s; pass --dataset {layout.dataset} (and that dataset's --data-root)")
    classes = adapter.num_classes
    if classes is not None and classes != layout.num_classes:
        raise AlignmentError(f"your copy of {dataset} ({adapter.describe(0) if len(adapter) else adapter!r}) has "
                             f"{classes} classes, ml-dr's {dataset} has {layout.num_classes}; import over a complete "
                             f"copy of the training split")
    published = DATASETS[dataset][1]
    if len(adapter) != published and warn:
        print(f"WARNING: your copy of {dataset} has {len(adapter):,} training samples, torchvision's has "
              f"{published:,}: ml-dr's published archives index every one of them, so only an archive written for "
              f"this copy can be imported (the import stops at the first sample outside it)", file=sys.stderr)


def _plan_manifest(adapter, layout, archive, fp: dict, samples_per_shard, augs_per_shard):
    from ..augment import create_policy

    policy = create_policy(policy_config(layout))
    fields = [*policy.fields, *target_fields(layout.num_classes, layout.topk)]
    plan = create_plan(len(adapter), layout.num_augmentations, sum(f.nbytes for f in fields), samples_per_shard,
                       augs_per_shard)
    manifest = create_manifest(dataset=adapter.name, split="train", plan=plan, topk=layout.topk,
                               num_classes=layout.num_classes, policy=policy, fields=fields,
                               teacher=_teacher(archive.config), seed=0,
                               extra={"provenance": _provenance(archive, layout, fp)}, keys=adapter.keys())
    return fields, plan, manifest


def _kept(folder: ImportFolder, sh: Shard, fields, build_id: str) -> ShardEntry | None:
    """A shard an earlier run wrote and recorded (its state file and a sound file of this build), else None."""
    state = folder.read_state(shard_state_name(sh))
    if state is None or not (folder.root / sh.name).is_file():
        return None
    try:
        entry = read_shard_entry(folder.root, sh.name, fields, build_id=build_id)
    except StoreError:
        return None
    return entry if entry.to_json() == json.loads(state[1]["entry"]) else None


def _write_shards(folder: ImportFolder, staging: Staging, fields, manifest: Manifest, kept: dict, result) -> list:
    """Cut every missing shard from its block's staging file, write it and read it back; the entries in plan order.

    Each shard carries the build id and the teacher id, both covering the archive's sha256 (its provenance: the
    imported store's teacher is the archive's), so a shard of another archive's import is refused on first read.
    """
    build_id, teacher_id = manifest.build_id, compute_teacher_id(manifest)
    entries = {}
    for block in folder.plan.blocks(folder.plan.shards):
        for sh in block.shards:
            if sh not in kept:
                part = staging.shard_fields(sh.s0, sh.s1, sh.a0, sh.a1, fields)
                entry = write_shard(folder.root, sh.s0, sh.s1, sh.a0, sh.a1, part, fields, build_id=build_id,
                                    teacher_id=teacher_id)
                back = read_shard_entry(folder.root, sh.name, fields, build_id=build_id,  # every row's checksum
                                        teacher_id=teacher_id)
                if back.to_json() != entry.to_json():  # an OSError: the import's state is kept for a rerun
                    raise OSError(errno.EIO, f"{folder.root / sh.name}: read back differs from what was written "
                                             f"({back.sha256} != {entry.sha256}); check the disk, then rerun the same "
                                             f"command to rewrite it")
                folder.write_state(shard_state_name(sh), {"ok": np.ones(1, np.uint8)},
                                   {"entry": json.dumps(entry.to_json(), sort_keys=True)})
                entries[sh] = entry
                result.shards_written += 1
        staging.remove_block(block.s0, block.s1)
    return [kept.get(sh) or entries[sh] for sh in folder.plan.shards]


def import_mldr(source: str | os.PathLike, out: str | os.PathLike, *, dataset: str,
                data_root: str | os.PathLike | None = None, adapter=None, config_file: str | os.PathLike | None = None,
                num_augmentations: int | None = None, workers: int | None = None,
                samples_per_shard: int | None = None, augs_per_shard: int | None = None, progress: bool = True,
                checkpoint_seconds: float = 30.0) -> ImportResult:
    """Import an ml-dr archive (``.tar.gz``, ``.tar`` or extracted folder) into a store at ``out``.

    Args:
        source: the downloaded archive or its extracted folder.
        out: the store folder: absent, empty, or this import unfinished (resumed).
        dataset: ``imagenet``, ``cifar100``, ``flowers102`` or ``food101`` (the archive's own).
        data_root: root of the user's copy of the dataset, in torchvision's layout (its training split
            is what ml-dr indexes).
        adapter: instead of ``data_root``, the training split's :class:`~imagenet_plus.adapters.DatasetAdapter`.
        config_file: ml-dr's ``config.pth.tar`` as a separate file (for an archive without one).
        num_augmentations: records per sample when the config's ``num_samples`` is wrong.
        workers: decoding processes (default: every core this process may use; 0: none).
        samples_per_shard, augs_per_shard: the shard shape (default: the store's).
        progress: progress bars (rate, ETA) and warnings on stderr.
        checkpoint_seconds: how often the staged samples are recorded for a resume.

    Returns:
        An :class:`ImportResult` (its ``manifest`` is the written store's).

    Raises:
        ImportFormatError: the archive is unsafe, malformed, truncated, of another dataset or variant.
        AlignmentError: the user's copy is not the one ml-dr indexed (classes, image sizes, a split file
            whose md5 is not torchvision's: :mod:`~imagenet_plus.mldr._order`).
        BuildError: ``out`` holds something else, or another import is writing it.
        ImageDecodeError: an image of the user's copy cannot be decoded.

    Example:
        >>> r = import_mldr("imagenet_plus_randaug.tar.gz", "stores/imagenet-plus", dataset="imagenet",
        ...                 data_root="data/imagenet")
        >>> print(r.summary())
    """
    t0 = time.perf_counter()
    check_choice(dataset, "dataset", tuple(DATASETS))
    workers = available_cores() if workers is None else check_int(workers, "workers", low=0)
    if adapter is None:
        from ..adapters import create_adapter

        adapter = create_adapter(dataset, data_root, "train")
    archive = open_archive(source, len(adapter), config_file=config_file)
    try:
        fp = fingerprint_source(source)
        layout = parse_config(archive.config, archive.config_member, num_augmentations=num_augmentations)
        _check_copy(adapter, layout, dataset, progress)
        order = check_order(adapter, dataset)  # refuses a copy in another order than torchvision's
        if progress and order_warning(order):
            print(f"WARNING: {order_warning(order)}", file=sys.stderr)
        fields, plan, pre = _plan_manifest(adapter, layout, archive, fp, samples_per_shard, augs_per_shard)
        keys = adapter.keys()
        folder = ImportFolder(Path(out), build_settings(pre, keys), plan)
        lock = folder.take(0, finish_leftover=lambda: open_store(folder.root))
        if lock is None:  # finished (by an earlier run, or another process meanwhile): nothing to do
            m = Manifest.load(folder.root)
            return ImportResult(folder.root, m, fp["bytes"], _store_bytes(folder.root, m), time.perf_counter() - t0,
                                already_finished=True, order=order)
        with lock:
            try:
                return _run(archive, layout, adapter, folder, pre, fields, keys, fp, workers=workers,
                            progress=progress, checkpoint_seconds=checkpoint_seconds, t0=t0, order=order)
            except ReinforcementError:
                folder.discard()
                raise
    finally:
        archive.close()


def _run(archive, layout, adapter, folder: ImportFolder, pre: Manifest, fields, keys, fp: dict, *, workers: int,
         progress: bool, checkpoint_seconds: float, t0: float, order: dict) -> ImportResult:
    """Steps 3 to 5 (the folder is claimed)."""
    result = ImportResult(folder.root, pre, fp["bytes"], 0, 0.0, order=order)
    timings = result.timings
    t = time.perf_counter()
    identity = identify(folder, adapter, workers=workers, progress=progress)
    timings["identity_s"] = round(time.perf_counter() - t, 3)
    converter = Converter(layout, fields, identity.sizes, mldr_order(keys, layout.dataset))
    staging = Staging(folder, layout.num_augmentations, converter.record_bytes, checkpoint_seconds)
    sha = _read_archive_hash(folder, fp)  # recorded once an earlier run streamed the whole archive
    manifest = _final_manifest(pre, sha, keys) if sha is not None else None
    kept = {} if manifest is None else \
        {sh: e for sh in folder.plan.shards if (e := _kept(folder, sh, fields, manifest.build_id)) is not None}
    staging.load({(b.s0, b.s1) for b in folder.plan.blocks(folder.plan.shards) if any(sh not in kept
                                                                                   for sh in b.shards)})
    t = time.perf_counter()
    if manifest is None or not staging.done.all():
        counts = stage_archive(archive, staging, layout, converter, workers=workers, progress=progress)
        result.samples_staged, result.samples_resumed = counts["staged"], counts["skipped"]
        sha = {HASH_KEY[fp["kind"] == "folder"]: archive.sha256}
        atomic_write_text(folder.state_dir / ARCHIVE_NAME, json.dumps({"fingerprint": fp, **sha}, sort_keys=True))
        manifest = _final_manifest(pre, sha, keys)
    else:
        result.samples_resumed = len(staging.done)
    timings["archive_s"] = round(time.perf_counter() - t, 3)
    result.shards_kept = len(kept)
    t = time.perf_counter()
    entries = _write_shards(folder, staging, fields, manifest, kept, result)
    over = int(staging.over.sum())
    staging.close()
    reports = {"import": {"records_topk_sum_above_1": over, "densify": "such records are stored with tail mass 0 "
                          "(ml-dr's densify would spread them as a softmax over the top-k; docs/ml-dr-format.md)",
                          "order": order}}
    manifest = write_store_files(folder, manifest, entries, identity, keys, reports)
    open_store(folder.root)  # the reader's own checks: manifest, build id, samples file, shard headers
    folder.remove_state()
    timings["write_s"] = round(time.perf_counter() - t, 3)
    result.manifest, result.seconds = manifest, time.perf_counter() - t0
    result.store_bytes = _store_bytes(folder.root, manifest)
    return result


def _read_archive_hash(folder: ImportFolder, fp: dict) -> dict | None:
    """The archive's full hash recorded by an earlier run of this import (``None``: stream it)."""
    p = folder.state_dir / ARCHIVE_NAME
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(d, dict) or d.get("fingerprint") != fp:
        return None
    return {k: v for k, v in d.items() if k != "fingerprint"}


def _final_manifest(pre: Manifest, sha: dict, keys) -> Manifest:
    """The settings with the archive's full hash in the provenance, and their build id."""
    from ..store import compute_build_id, digest_keys

    m = dataclasses.replace(pre, extra={**pre.extra, "provenance": {**pre.extra["provenance"], **sha}})
    m.build_id = compute_build_id(m, digest_keys(keys))
    return m


def _store_bytes(root: Path, m: Manifest) -> int:
    return sum(s.bytes for s in m.shards) + (m.samples_file.bytes if m.samples_file else 0) + \
        (root / MANIFEST_NAME).stat().st_size
