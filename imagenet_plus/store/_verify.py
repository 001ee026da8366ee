"""``verify``: check a store against its manifest and say exactly what was checked and what was not."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from .._checks import check_int
from .._files import human_bytes
from ..errors import IntegrityError, StoreError
from ._format import (check_build_id, check_shard_metadata, check_teacher_id, check_tensors, confined_path,
                      read_header, shard_layout)
from ._manifest import BUILD_ID_FIELDS, NOT_IN_BUILD_ID, Manifest, compute_build_id, compute_teacher_id
from ._samples import SamplesFile
from ._scan import scan_shard

__all__ = ["VerifyReport", "verify"]

_SHOWN = 20
#: How to ask for the full check, from Python and from the command line.
_FULL = "run with full=True (`imagenet-plus verify STORE --full` on the command line)"


@dataclass
class VerifyReport:
    """What :func:`verify` checked, what it did not, and every problem it found.

    Attributes:
        path: the store folder.
        full: whether files were hashed and every row and value checked.
        manifest: the store's manifest.
        num_shards: shards checked.
        num_records: records in the checked shards.
        bytes_checked: bytes of the files whose size and header were checked.
        bytes_hashed: bytes hashed (sha256; 0 without ``full``).
        files_hashed: files hashed (0 without ``full``; with it, every file whose header passed).
        rows_checked: sample rows checked against their CRC32 (0 without ``full``).
        checked: one sentence per kind of check made.
        not_checked: one sentence per kind of check not made, with how to make it.
        problems: every problem found (empty: the store passed every check made).
        not_in_build_id: manifest fields the build id does not cover, and how each is checked instead.
        seconds: time taken.
    """

    path: str
    full: bool
    manifest: Manifest = field(repr=False)
    num_shards: int = 0
    num_records: int = 0
    bytes_checked: int = 0
    bytes_hashed: int = 0
    files_hashed: int = 0
    rows_checked: int = 0
    checked: list[str] = field(default_factory=list)
    not_checked: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    not_in_build_id: dict[str, str] = field(default_factory=lambda: dict(NOT_IN_BUILD_ID))
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Whether every check made passed (see :attr:`not_checked` for what was not checked)."""
        return not self.problems

    def to_json(self) -> dict:
        return {"path": self.path, "full": self.full, "ok": self.ok, "num_shards": self.num_shards,
                "num_records": self.num_records, "bytes_checked": self.bytes_checked,
                "bytes_hashed": self.bytes_hashed, "files_hashed": self.files_hashed,
                "rows_checked": self.rows_checked, "checked": self.checked,
                "not_checked": self.not_checked, "problems": self.problems,
                "not_in_build_id": self.not_in_build_id, "seconds": round(self.seconds, 3)}

    def summary(self) -> str:
        """A human-readable account: verdict, checked, not checked, problems."""
        kind = "full check" if self.full else "quick check (no hashing)"
        verdict = "OK" if self.ok else f"{len(self.problems)} problem(s)"
        lines = [f"{self.path}: {verdict} ({kind}, {self.seconds:.1f} s)", "checked:"]
        lines += [f"  - {c}" for c in self.checked]
        lines += ["not checked:"] + [f"  - {c}" for c in self.not_checked or ["nothing"]]
        if self.problems:
            lines += ["problems:"] + [f"  - {p}" for p in self.problems]
        return "\n".join(lines)

    def raise_for_problems(self) -> None:
        """Raise :class:`IntegrityError` listing every problem (its ``report`` attribute is this report)."""
        if self.ok:
            return
        shown = self.problems[:_SHOWN]
        more = f"\n  ... and {len(self.problems) - _SHOWN} more" if len(self.problems) > _SHOWN else ""
        err = IntegrityError(f"verify {self.path}: {len(self.problems)} problem(s):\n  - " + "\n  - ".join(shown)
                             + more + "\nre-download or rebuild the files named above")
        err.report = self  # type: ignore[attr-defined]
        raise err


def _check_samples(root: Path, m: Manifest, full: bool, report: VerifyReport) -> SamplesFile | None:
    """Header (and with ``full`` sha256 and values) of the samples file; returns it opened, or None."""
    e = m.samples_file
    try:
        p = confined_path(root, e.file, "samples file")  # type: ignore[union-attr]
        samples = SamplesFile(p, e, m.num_samples, m.build_id, check_sha256=full)  # type: ignore[arg-type]
    except StoreError as err:
        report.problems.append(str(err))
        return None
    report.bytes_checked += e.bytes  # type: ignore[union-attr]
    if not full:
        return samples
    report.bytes_hashed += e.bytes  # type: ignore[union-attr]
    report.files_hashed += 1
    labels, sizes = samples.column("label"), samples.column("image_size")
    if labels.size and (labels.min() < 0 or labels.max() >= m.num_classes):
        report.problems.append(f"{p}: labels in [{labels.min()}, {labels.max()}], outside [0, {m.num_classes}); "
                               "rebuild the store")
    if sizes.size and sizes.min() < 1:
        report.problems.append(f"{p}: an image size of 0 pixels; rebuild the store")
    try:
        keys = samples.keys()
        if len(set(keys)) != len(keys):
            report.problems.append(f"{p}: {len(keys) - len(set(keys))} duplicate key(s); rebuild the store")
    except StoreError as err:
        report.problems.append(str(err))
    return samples


def _check_build_id(root: Path, m: Manifest, samples: SamplesFile | None, report: VerifyReport) -> None:
    if samples is None:
        report.not_checked.append("the build id recomputed from the manifest's settings and the keys: the samples "
                                  "file is unusable (see problems)")
        return
    report.checked.append(f"build id {m.build_id} recomputed from the manifest's settings "
                          f"({', '.join(BUILD_ID_FIELDS)}) and the {m.num_samples} sample keys")
    got = compute_build_id(m, samples.keys_digest())
    if got != m.build_id:
        report.problems.append(
            f"{root / 'manifest.json'}: its settings and the samples file's keys give build id {got!r}, but the "
            f"manifest and the files it lists carry {m.build_id!r}; the manifest was edited after the build (one of "
            f"{', '.join(BUILD_ID_FIELDS)}) or belongs to other files")


def _check_shard(root: Path, m: Manifest, e, full: bool, report: VerifyReport) -> None:
    (s0, s1), (a0, a1) = e.samples, e.augs
    try:
        p = confined_path(root, e.file, "shard")
        tensors, meta, size = read_header(p)
        if size != e.bytes:
            raise IntegrityError(f"{p}: {size} bytes, the manifest says {e.bytes}; the file is truncated or from "
                                 "another build")
        check_shard_metadata(p, meta, s0, s1, a0, a1)
        check_teacher_id(p, meta, compute_teacher_id(m))
        check_build_id(p, meta, m.build_id, "this shard belongs to another build (the manifest's build_id differs)")
        check_tensors(p, tensors, shard_layout(m.fields, s0, s1, a0, a1), size)
    except StoreError as err:
        report.problems.append(str(err))
        return
    report.bytes_checked += size
    if not full:
        return
    scan = scan_shard(p, tensors, m.fields, s1 - s0, place=(m.build_id, s0, a0, a1), num_classes=m.num_classes,
                      topk=m.topk)
    report.bytes_hashed += size
    report.files_hashed += 1
    report.rows_checked += s1 - s0
    if scan.sha256 != e.sha256:
        report.problems.append(f"{p}: sha256 {scan.sha256} does not match the manifest's {e.sha256}")
    if scan.bad_rows:
        bad = [s0 + r for r in scan.bad_rows]
        report.problems.append(f"{p}: {len(bad)} sample row(s) fail their checksum (corrupt, or moved from another "
                               f"sample, block or store): samples {bad[:10]}{' ...' if len(bad) > 10 else ''} "
                               f"(augmentations [{a0}, {a1}))")
    report.problems.extend(scan.problems)


def verify(path: str | os.PathLike, full: bool = False, *, num_augmentations: int | None = None,
           raise_on_problems: bool = True) -> VerifyReport:
    """Check a store against its manifest; the report says what was checked and what was not.

    Quick (default, no hashing): the manifest (schema, shard plan, format version);
    the build id recomputed from the manifest's settings and the samples file's keys
    (an edited setting fails); the samples file and every shard present with their
    sizes, headers, shapes, ranges and build ids.

    With ``full``, also: the sha256 of every file against the manifest, every sample
    row against its CRC32, and every value (params within their declared ranges, class
    ids below ``num_classes``, probabilities in ``[0, 1]`` summing to at most 1 and
    descending, labels in ``[0, num_classes)``, image sizes >= 1, unique UTF-8 keys).

    Every problem is reported, not only the first.

    Args:
        path: the store folder.
        full: hash every file and check every row and value (reads the whole store).
        num_augmentations: check only the shards serving the first ``num_augmentations``
            augmentations (a partial download).
        raise_on_problems: raise :class:`IntegrityError` listing every problem (else
            return the report; see ``report.ok``).

    Returns:
        A :class:`VerifyReport`.

    Raises:
        FormatVersionError: the store was written by an incompatible release.
        StoreError: the manifest is missing or malformed (nothing else can be checked).
        IntegrityError: with ``raise_on_problems``, any problem; the message lists them all.

    Example:
        >>> print(verify("imagenet-plus/train", full=True).summary())
    """
    t0 = time.perf_counter()
    root = Path(path)
    m = Manifest.load(root)
    limit = check_int(num_augmentations, "num_augmentations", low=1, optional=True) or m.num_augmentations
    if limit > m.num_augmentations:
        raise StoreError(f"verify: num_augmentations={num_augmentations} outside [1, {m.num_augmentations}]")
    shards = [e for e in m.shards if e.augs[0] < limit]
    report = VerifyReport(str(root), bool(full), m)
    samples = _check_samples(root, m, full, report)
    _check_build_id(root, m, samples, report)
    for e in shards:
        _check_shard(root, m, e, full, report)
    report.num_shards = len(shards)
    report.num_records = sum((e.samples[1] - e.samples[0]) * (e.augs[1] - e.augs[0]) for e in shards)
    _describe(report, m, shards, limit)
    report.seconds = time.perf_counter() - t0
    if raise_on_problems:
        report.raise_for_problems()
    return report


def _describe(report: VerifyReport, m: Manifest, shards: list, limit: int) -> None:
    """Fill ``checked`` and ``not_checked``."""
    n, shard_bytes = len(shards), sum(e.bytes for e in shards)
    rows = sum(e.samples[1] - e.samples[0] for e in shards)
    samples_bytes = m.samples_file.bytes  # type: ignore[union-attr]
    report.checked[:0] = [f"manifest: format version, schema, shard plan ({len(m.shards)} shards)"]
    report.checked += [
        f"samples file and {n} shard file(s) ({human_bytes(shard_bytes + samples_bytes)}): inside the store folder, "
        "present, sizes, headers, tensor shapes and dtypes, sample/augmentation ranges, build ids, teacher ids",
    ]
    if report.full:
        report.checked += [
            f"sha256 of {report.files_hashed} file(s) ({human_bytes(report.bytes_hashed)}) against the manifest",
            f"CRC32 of {report.rows_checked} sample row(s) ({report.num_records} records), each bound to its place "
            "(build id, sample, augmentation block)",
            "values: params within their declared ranges, class ids < num_classes, probabilities in [0, 1] summing "
            "to <= 1 and descending, labels in [0, num_classes), image sizes >= 1, keys unique and UTF-8",
        ]
        unread = n + 1 - report.files_hashed
        if unread:
            report.not_checked.append(f"sha256, rows and values of {unread} file(s) whose header or size failed "
                                      "(see problems)")
    else:
        report.not_checked += [
            f"sha256 of {n} shard file(s) ({human_bytes(shard_bytes)}) and the samples file "
            f"({human_bytes(samples_bytes)}): {_FULL}",
            f"CRC32 of {rows} sample row(s) ({report.num_records} records): {_FULL}; readers check each row on "
            "first read",
            f"value ranges (params, class ids, probabilities, labels, image sizes): {_FULL}",
        ]
    skipped = len(m.shards) - n
    if skipped:
        report.not_checked.append(f"{skipped} shard(s) of augmentations >= {limit}: not requested "
                                  "(num_augmentations)")
    report.not_checked.append("manifest fields outside the build id: "
                              + "; ".join(f"{k} ({v})" for k, v in NOT_IN_BUILD_ID.items()
                                          if v.startswith("not checked")))
    report.not_checked.append("whether the targets are the teacher's: `imagenet-plus verify STORE --teacher ...` "
                              "reruns it on a sample of records")
