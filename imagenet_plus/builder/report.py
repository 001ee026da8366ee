"""The teacher report: how well the teacher agrees with the dataset's labels, and how it sees the images.

A store is only as good as its teacher, and a wrong teacher (another class set, a freshly
initialised head, a checkpoint fed images at the wrong size) still produces well-formed
records. The builder therefore measures, over every stored augmentation, how often the
teacher's top-1 (top-5) class is the record's label, overall and for the worst class, and
records it with the teacher's input pipeline in ``manifest.reports["teacher"]`` (outside the
build id), prints it in the build summary, and warns loudly (stderr, and recorded):

* when a member's input is the augmented image resized by more than :data:`MAX_RESIZE` (either
  way): a model trained at 32 px fed 224 px (or the reverse) sees pixels unlike any it was
  trained on;
* when top-1 agreement is *near chance*: below twice chance, or below a quarter of the way from
  chance to perfect agreement, whichever is lower (``min(2 c, c + (1 - c) / 4)`` for chance ``c``:
  20% for 10 classes, 50% for 3).

A record that mixes two images (MixUp/CutMix) agrees when the class is either image's label;
its chance level is counted as two labels' worth. Counts are kept per shard (in the build's
state folder, so every rank and every resume contributes exactly its shards) and summed in
plan order by rank 0: the report is the same whatever the world size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

__all__ = ["MAX_RESIZE", "AgreementCounts", "TeacherReport", "record_hits", "create_report", "resize_warnings",
           "summarize"]

#: Largest resize factor (teacher input side / augmented side, or its inverse) that is not warned about.
MAX_RESIZE = 2.0
#: Agreement is reported for the top-1 and the top-``TOP_N`` classes.
TOP_N = 5


def record_hits(ids: np.ndarray, labels: np.ndarray, partner_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top-1 and top-n hits of records whose teacher classes (best first) are ``ids [B, n]``.

    ``partner_labels`` is ``-1`` for records that do not mix (never matches a class).
    """
    ids = np.asarray(ids, dtype=np.int64)
    lab = np.asarray(labels, dtype=np.int64)[:, None]
    plab = np.asarray(partner_labels, dtype=np.int64)[:, None]
    match = (ids == lab) | (ids == plab)
    return match[:, 0].copy(), match.any(axis=1)


@dataclass
class AgreementCounts:
    """Per class (of each record's own label): records, top-1 hits and top-n hits; and mixed records."""

    records: np.ndarray
    top1: np.ndarray
    topn: np.ndarray
    mixed: int = 0

    @classmethod
    def zeros(cls, num_classes: int) -> "AgreementCounts":
        z = np.zeros(num_classes, dtype=np.int64)
        return cls(z.copy(), z.copy(), z.copy(), 0)

    @classmethod
    def of_records(cls, labels: np.ndarray, hits1: np.ndarray, hitsn: np.ndarray, mixed: np.ndarray,
                   num_classes: int) -> "AgreementCounts":
        """Counts of records with own ``labels``, their hits and whether each ``mixed``."""
        lab = np.asarray(labels, dtype=np.int64)
        return cls(np.bincount(lab, minlength=num_classes).astype(np.int64),
                   np.bincount(lab, weights=hits1, minlength=num_classes).astype(np.int64),
                   np.bincount(lab, weights=hitsn, minlength=num_classes).astype(np.int64),
                   int(np.count_nonzero(mixed)))

    def add(self, other: "AgreementCounts") -> None:
        self.records += other.records
        self.top1 += other.top1
        self.topn += other.topn
        self.mixed += int(other.mixed)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """As arrays for a state file."""
        return {"agree_records": self.records, "agree_top1": self.top1, "agree_topn": self.topn,
                "agree_mixed": np.array([self.mixed], dtype=np.int64)}

    @classmethod
    def from_arrays(cls, d: dict) -> "AgreementCounts":
        return cls(np.asarray(d["agree_records"], np.int64).copy(), np.asarray(d["agree_top1"], np.int64).copy(),
                   np.asarray(d["agree_topn"], np.int64).copy(), int(d["agree_mixed"][0]))


def resize_warnings(pipeline: Sequence[dict]) -> list[str]:
    """A warning per member whose input resizes the augmented image by more than :data:`MAX_RESIZE`."""
    out = []
    for m in pipeline:
        f = float(m.get("resize_factor", 1.0))
        if f > MAX_RESIZE or f < 1.0 / MAX_RESIZE:
            out.append(f"teacher {m.get('model', '?')}: the {m['image_size']} px augmented images are resized "
                       f"{f:g}x to its {m['input_size']} px input (input size from its {m['input_size_source']}); "
                       "a model trained at another resolution sees pixels unlike its training images: check its "
                       "input size (--teacher-input-size, or the checkpoint's .json sidecar)")
    return out


@dataclass
class TeacherReport:
    """The teacher report (``manifest.reports["teacher"]``); see the module docstring."""

    records: int
    mixed_records: int
    top1_hits: int
    topn_hits: int
    top_n: int
    num_classes: int
    chance_top1: float
    worst_class: dict | None
    input_pipeline: list[dict]
    warnings: list[str] = field(default_factory=list)

    @property
    def top1(self) -> float:
        return self.top1_hits / self.records if self.records else 0.0

    @property
    def topn(self) -> float:
        return self.topn_hits / self.records if self.records else 0.0

    def to_json(self) -> dict:
        return {
            "records": self.records, "mixed_records": self.mixed_records,
            "top1_agreement": round(self.top1, 6), "top1_hits": self.top1_hits,
            f"top{self.top_n}_agreement": round(self.topn, 6), f"top{self.top_n}_hits": self.topn_hits,
            "top_n": self.top_n, "chance_top1": round(self.chance_top1, 6), "worst_class": self.worst_class,
            "input_pipeline": self.input_pipeline, "warnings": list(self.warnings),
        }

    def summary_lines(self) -> list[str]:
        """The report as the build summary prints it (see :func:`summarize`)."""
        return summarize(self.to_json())


def _worst_class(counts: AgreementCounts, classes: Sequence[str] | None, top_n: int) -> dict | None:
    seen = np.flatnonzero(counts.records > 0)
    if seen.size == 0:
        return None
    rate = counts.top1[seen] / counts.records[seen]
    c = int(seen[np.argmin(rate)])  # lowest rate; ties: the lowest class index
    name = str(classes[c]) if classes is not None and c < len(classes) else str(c)
    n = int(counts.records[c])
    return {"class": c, "name": name, "records": n, "top1_agreement": round(int(counts.top1[c]) / n, 6),
            f"top{top_n}_agreement": round(int(counts.topn[c]) / n, 6)}


def summarize(report: dict) -> list[str]:
    """Readable lines of a teacher report (``manifest.reports["teacher"]``), warnings last.

    Example:
        >>> print("\\n".join(summarize(open_store("out").manifest.reports["teacher"])))
    """
    n = int(report["top_n"])
    lines = [f"teacher agreement with the labels over {report['records']:,} stored augmentations"
             + (f" ({report['mixed_records']:,} mixed: either image's label counts)" if report["mixed_records"] else "")
             + f": top-1 {100 * report['top1_agreement']:.1f}%, top-{n} {100 * report[f'top{n}_agreement']:.1f}% "
             f"(chance {100 * report['chance_top1']:.1f}%)"]
    w = report.get("worst_class")
    if w is not None:
        lines.append(f"worst class: {w['name']!r} (class {w['class']}, {w['records']:,} records): top-1 "
                     f"{100 * w['top1_agreement']:.1f}%, top-{n} {100 * w[f'top{n}_agreement']:.1f}%")
    for m in report.get("input_pipeline", []):
        f = m.get("resize_factor")
        how = "unknown" if f is None else "no resize" if f == 1.0 else \
            f"resized {f:g}x ({m['interpolation']}, antialiased)"
        lines.append(f"teacher input: {m.get('model', '?')}: {m.get('image_size', '?')} px augmented image -> "
                     f"{m.get('input_size', '?')} px input, {how}; input size from its "
                     f"{m.get('input_size_source', '?')}; mean {m.get('mean')}, std {m.get('std')}")
    return lines + [f"WARNING: {x}" for x in report.get("warnings", [])]


def create_report(counts: AgreementCounts, num_classes: int, classes: Sequence[str] | None,
                  input_pipeline: Sequence[dict]) -> TeacherReport:
    """The report of a build's summed counts and its teacher's input pipeline (with its warnings)."""
    records = int(counts.records.sum())
    mixed = int(counts.mixed)
    chance = min(1.0, (records + mixed) / max(records, 1) / num_classes)
    top_n = min(TOP_N, num_classes)
    report = TeacherReport(records, mixed, int(counts.top1.sum()), int(counts.topn.sum()), top_n, num_classes, chance,
                           _worst_class(counts, classes, top_n), [dict(m) for m in input_pipeline])
    report.warnings = resize_warnings(report.input_pipeline)
    if records and report.top1 < min(2.0 * chance, chance + (1.0 - chance) / 4.0):
        report.warnings.append(
            f"the teacher's top-1 agrees with the labels on {100 * report.top1:.1f}% of {records:,} records, near "
            f"chance ({100 * chance:.1f}%): it may not fit this dataset (other classes or class order, a freshly "
            "initialised head, a wrong input size): check it before training on this store")
    return report
