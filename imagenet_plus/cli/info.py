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
        "builder_version": m.builder_version, "build_id": m.build_id, "reports": dict(m.reports or {}),
        "provenance": m.extra.get("provenance"), "resize_kernel": _kernel_dict(m),
    }


def _kernel_dict(m) -> dict[str, Any]:
    """The resize kernel family the store was rendered with, this machine's for its policy, and what that means."""
    from ..kernels import kernel_mismatch, policy_kernel, recorded_kernel

    built, here = recorded_kernel(m), policy_kernel(m.policy)
    if built is None:
        note = "not recorded (a store built before it was); replay here uses " + repr(here)
    else:
        note = kernel_mismatch(m) or "the same resize kernel here: CPU replay is bit-exact"
    return {"build": built, "here": here, "note": note}


def _kernel_row(k: dict[str, Any]) -> tuple[str, str]:
    built = k["build"]
    if built is None:
        return "resize kernel", k["note"]
    head = f"{built['family']} at build (torch CPU capability {built.get('cpu_capability', '?')}, " \
           f"{built.get('machine', '?')}), {k['here']} here"
    if built["family"] == k["here"]:
        return "resize kernel", f"{head}: CPU replay is bit-exact"
    return "resize kernel", f"{head}: WARNING replayed pixels may differ by up to 1 grey level (see the warning " \
                            "on replay)"


def _report_rows(reports: dict) -> list[tuple[str, str]]:
    """Rows for the manifest's reports: the teacher's agreement with the labels, its input pipeline, and every
    report's warnings (the teacher report is what tells a garbage teacher from a good one)."""
    from ..builder.report import summarize

    rows: list[tuple[str, str]] = []
    teacher = reports.get("teacher")
    if isinstance(teacher, dict):
        try:
            lines = summarize(teacher)
        except (KeyError, TypeError, ValueError) as e:
            lines = [f"WARNING: the teacher report is unreadable ({type(e).__name__}: {e}); the manifest was edited"]
        for line in lines:
            if line.startswith("WARNING: "):
                rows.append(("WARNING", line[len("WARNING: "):]))
            elif line.startswith("teacher input: "):
                rows.append(("teacher input", line[len("teacher input: "):]))
            else:
                rows.append(("teacher vs labels", line))
    else:
        rows.append(("teacher vs labels", "no teacher report in the manifest (an imported store: see its source)"))
    for name, report in sorted(reports.items()):
        if name != "teacher" and isinstance(report, dict):
            rows += [("WARNING", f"{name}: {w}") for w in report.get("warnings") or []]
    return rows


def _weights_rows(teacher: dict) -> list[tuple[str, str]]:
    """The teacher's checkpoint files and their sha256 (part of the build id)."""
    files, shas = teacher.get("checkpoints") or [], teacher.get("checkpoint_sha256") or []
    pairs = [f"{f or '(pretrained or random)'} sha256 {s or '-'}" for f, s in zip(files, shas)]
    return [("teacher weights", "; ".join(pairs))] if pairs else []


def print_info(d: dict[str, Any]) -> None:
    fields = ", ".join(f"{f['name']}{'' if not f['shape'] else list(f['shape'])}:{f['dtype']}" for f in d["fields"])
    rows = [
        ("store", d["path"]),
        ("dataset", f"{d['dataset']} (split {d['split']})"),
        ("teacher", d["teacher_name"]),
        *_weights_rows(d["teacher"]),
        *_report_rows(d["reports"]),
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
        _kernel_row(d["resize_kernel"]),
        ("format", f"version {d['format_version']}, built by imagenet-plus {d['builder_version']}"),
        ("build id", str(d["build_id"])),
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
