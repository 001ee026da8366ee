"""``imagenet-plus info``: a readable summary of a store, its teacher's report included."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .._files import human_bytes
from ..errors import EXIT_OK
from ._common import resolve_store


def _teacher_name(teacher: dict) -> str:
    for key in ("name", "names", "models", "members"):
        if key in teacher:
            v = teacher[key]
            if isinstance(v, list):
                return " + ".join(m if isinstance(m, str) else str(m.get("name", m)) for m in v)
            return str(v)
    return json.dumps(teacher, sort_keys=True) if teacher else "(not recorded)"


def info_dict(path: Path) -> dict[str, Any]:
    """Everything ``info`` prints, as JSON-able values."""
    from ..store import Manifest

    m = Manifest.load(path)
    shard_bytes = sum(s.bytes for s in m.shards)
    samples_bytes = m.samples_file.bytes if m.samples_file is not None else 0
    records = m.num_samples * m.num_augmentations
    return {
        "path": str(path.parent if path.suffix == ".json" else path), "dataset": m.dataset, "split": m.split,
        "teacher": m.teacher, "teacher_name": _teacher_name(m.teacher), "policy": m.policy,
        "policy_name": str(m.policy.get("name") or "custom"), "num_augmentations": m.num_augmentations,
        "topk": m.topk, "num_classes": m.num_classes, "num_samples": m.num_samples, "num_records": records,
        "num_shards": len(m.shards), "samples_per_shard": m.samples_per_shard, "augs_per_shard": m.augs_per_shard,
        "shard_bytes": shard_bytes, "samples_bytes": samples_bytes, "total_bytes": shard_bytes + samples_bytes,
        "record_bytes": m.record_bytes, "bytes_per_augmentation": shard_bytes / records if records else 0.0,
        "fields": [f.to_json() for f in m.fields], "seed": m.seed, "format_version": m.format_version,
        "builder_version": m.builder_version, "report": dict(getattr(m, "report", None) or {}),
        "provenance": m.extra.get("provenance"),
    }


def _pct(v) -> str:
    return f"{100 * float(v):.1f}%" if isinstance(v, (int, float)) else "?"


def _report_rows(report: dict) -> list[tuple[str, str]]:
    """Rows for the teacher report (agreement with the labels, input pipeline, warnings)."""
    t = report.get("teacher") or {}
    rows = []
    if "top1" in t:
        worst = t.get("worst_class") or {}
        rows.append(("teacher vs labels", f"top-1 {_pct(t['top1'])}, top-5 {_pct(t.get('top5'))} over "
                     f"{t.get('records', '?'):,} records; worst class {worst.get('class', '?')} "
                     f"(top-1 {_pct(worst.get('top1'))}, {worst.get('records', '?')} records); chance "
                     f"{_pct(t.get('chance'))}"))
    for i, p in enumerate(t.get("inputs") or []):
        rows.append((f"teacher input {i}" if len(t.get("inputs")) > 1 else "teacher input",
                     ", ".join(f"{k} {v}" for k, v in p.items())))
    for w in report.get("warnings") or []:
        rows.append(("WARNING", str(w)))
    return rows


def print_info(d: dict[str, Any]) -> None:
    fields = ", ".join(f"{f['name']}{'' if not f['shape'] else list(f['shape'])}:{f['dtype']}" for f in d["fields"])
    rows = [
        ("store", d["path"]),
        ("dataset", f"{d['dataset']} (split {d['split']})"),
        ("teacher", d["teacher_name"]),
        *_report_rows(d["report"]),
        ("policy", d["policy_name"]),
        ("augmentations (NS)", f"{d['num_augmentations']} per sample"),
        ("top-k (K)", str(d["topk"])),
        ("classes", str(d["num_classes"])),
        ("samples", f"{d['num_samples']:,} ({d['num_records']:,} records)"),
        ("shards", f"{d['num_shards']} ({d['samples_per_shard']} samples x {d['augs_per_shard']} augmentations each)"),
        ("bytes", f"{d['total_bytes']:,} ({human_bytes(d['total_bytes'])}; shards {human_bytes(d['shard_bytes'])}, "
                  f"samples file {human_bytes(d['samples_bytes'])})"),
        ("bytes per augmentation", f"{d['bytes_per_augmentation']:.2f} on disk, {d['record_bytes']} per record"),
        ("record fields", fields),
        ("seed", str(d["seed"])),
        ("format", f"version {d['format_version']}, built by imagenet-plus {d['builder_version']}"),
    ]
    if d.get("provenance"):
        rows.append(("imported from", ", ".join(f"{k} {v}" for k, v in d["provenance"].items())))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


def run(args: argparse.Namespace) -> int:
    d = info_dict(resolve_store(args.store, revision=args.revision, manifest_only=True))
    if args.json:
        print(json.dumps(d, indent=1, default=str))
    else:
        print_info(d)
    return EXIT_OK


def add_parser(sub) -> None:
    p = sub.add_parser("info", help="summarise a store (dataset, teacher and its agreement, policy, NS, K, sizes)",
                       description="Print a readable summary of a reinforcement store.")
    p.add_argument("store", help="store folder (holding manifest.json) or a Hub repo id")
    p.add_argument("--revision", default=None, help="Hub revision when STORE is a repo id")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)
