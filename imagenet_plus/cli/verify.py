"""``imagenet-plus verify``: the store's files, the user's copy of the data, and (optionally) a teacher rerun."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EXIT_FAIL, EXIT_OK, ReinforcementError
from ._common import UsageError, add_data_arguments, open_adapter, open_replay, positive_int, resolve_store


def _load_teacher(args: argparse.Namespace, num_classes: int):
    """A callable mapping uint8 [B, 3, S, S] to probabilities [B, C] (:mod:`imagenet_plus.teachers`)."""
    for c in (args.teacher_checkpoint or "").split(","):
        if c.strip() and not Path(c.strip()).is_file():
            raise FileNotFoundError(f"--teacher-checkpoint {c.strip()}: no such file; pass the teacher's "
                                    ".safetensors (one per teacher, comma-separated)")
    from ..teachers import create_teacher, parse_teacher_list

    try:
        specs = parse_teacher_list(args.teacher, args.teacher_checkpoint)
        return create_teacher(specs, num_classes=num_classes, pretrained=False, device=args.device)
    except (ValueError, RuntimeError) as e:
        raise ReinforcementError(f"--teacher {args.teacher}: {e}") from e


def _kl(p, q):
    """KL(p || q) per row, in nats (0 log 0 = 0)."""
    import torch

    return torch.sum(torch.where(p > 0, p * (torch.log(p.clamp_min(1e-300)) - torch.log(q.clamp_min(1e-12))),
                                 torch.zeros_like(p)), dim=1)


def teacher_check(store, args: argparse.Namespace) -> dict[str, Any]:
    """Rerun the teacher on records replayed through the replay core; compare with the stored targets."""
    import torch

    from ..targets import densify

    m = store.manifest
    ds = open_replay(args, store)
    teacher = _load_teacher(args, m.num_classes)
    rng = np.random.default_rng(args.seed)
    total = len(store) * store.num_augmentations
    flat = np.sort(rng.choice(total, size=min(args.samples, total), replace=False))
    ii, jj = flat // store.num_augmentations, flat % store.num_augmentations
    agree, kls, dense_kls = 0, [], []
    for s in range(0, len(flat), args.batch_size):
        bi, bj = ii[s:s + args.batch_size], jj[s:s + args.batch_size]
        x = torch.stack([ds.source.replay_record(int(i), int(j))[0] for i, j in zip(bi, bj)])
        probs = teacher(x.to(args.device)).float().cpu().double()
        ids, tp = store.targets_batch(bi, bj)
        ids, tp = torch.as_tensor(ids), torch.as_tensor(tp).double()
        agree += int((probs.argmax(1) == ids[:, 0]).sum())
        # KL on the K + 1 bins the store keeps (the top-k classes and the rest): quantisation and replay error
        stored = torch.cat([tp, (1.0 - tp.sum(1, keepdim=True)).clamp_min(0.0)], dim=1)
        rerun_k = probs.gather(1, ids)
        kls.append(_kl(stored, torch.cat([rerun_k, (1.0 - rerun_k.sum(1, keepdim=True)).clamp_min(0.0)], dim=1)))
        dense_kls.append(_kl(densify(ids, tp.float(), m.num_classes, mode="smooth").double(), probs))
    mean_kl, agreement = float(torch.cat(kls).mean()), agree / len(flat)
    return {"records": int(len(flat)), "topk": m.topk, "top1_agreement": agreement, "mean_kl": mean_kl,
            "mean_kl_dense": float(torch.cat(dense_kls).mean()), "min_agreement": args.min_agreement,
            "max_kl": args.max_kl, "ok": bool(agreement >= args.min_agreement and mean_kl <= args.max_kl)}


def _print_store_report(path: Path, report) -> None:
    d = report.to_json() if hasattr(report, "to_json") else dict(vars(report))
    checked, not_checked = d.get("checked") or [], d.get("not_checked") or []
    print(f"{path}: {'full' if d.get('full') else 'fast'} check of the store files: "
          f"{'OK' if d.get('ok', True) else 'PROBLEMS'}")
    for line in checked:
        print(f"  checked: {line}")
    for line in not_checked:
        print(f"  NOT checked: {line}")
    for line in d.get("problems") or []:
        print(f"  problem: {line}")


def _check_export(path: Path, report, full: bool) -> None:
    """The folder's Parquet export, if it has one (``data/*.parquet``): every page and row with ``--full``."""
    from ..hf.export import has_parquet

    if not has_parquet(path):
        return
    if not full:
        report.not_checked.append("the Parquet export in data/ (pages, row checksums, image bytes): run with --full")
        return
    from ..hf import verify_parquet
    from ..store import open_store

    try:
        got = verify_parquet(path, open_store(path, check_files=False))
    except ReinforcementError as e:
        report.problems.append(str(e))
        return
    report.checked.append(f"the Parquet export: {len(got['files'])} file(s) read with page checksums, "
                          f"{got['rows_checked']} row checksum(s) against the build id, {got['images_checked']} "
                          "row image(s) against the samples file (sha256)")
    report.problems.extend(got["problems"])


def run(args: argparse.Namespace) -> int:
    from ..scan import scan_copy
    from ..store import open_store, verify

    if args.teacher_checkpoint and not args.teacher:
        raise UsageError("--teacher-checkpoint needs --teacher (the model name of the checkpoint)")
    path = resolve_store(args.store)
    report = verify(path, full=args.full, raise_on_problems=False)
    _check_export(path, report, args.full)
    report.raise_for_problems()
    out: dict[str, Any] = {"store": str(path), "full": bool(args.full),
                           "report": report.to_json() if hasattr(report, "to_json") else str(report)}
    ok = bool(getattr(report, "ok", True))
    store = open_store(path)
    if args.data_root is not None or args.dataset is not None:
        copy = scan_copy(open_adapter(args, store), store, args.check, workers=args.workers,
                         progress=not args.json)
        out["copy"] = copy.to_json()
        ok = ok and copy.ok
    if args.teacher:
        out["teacher_check"] = teacher_check(store, args)
        ok = ok and out["teacher_check"]["ok"]
    out["ok"] = ok
    if args.json:
        print(json.dumps(out, indent=1, default=str))
        return EXIT_OK if ok else EXIT_FAIL
    _print_store_report(path, report)
    if "copy" in out:
        c = out["copy"]
        verdict = "OK" if c["ok"] else f"{len(c['problems'])} problem(s)"
        print(f"your copy ({c['samples']:,} samples, {c['decoded']:,} decoded, check={c['mode']}, "
              f"{c['seconds']:.1f} s): {verdict}")
        for line in c["problems"]:
            print(f"  {line}")
    else:
        print("your copy of the data: NOT checked (pass --data-root, and --dataset/--split if they differ from the "
              "manifest's, to check every sample's key, label and content)")
    if "teacher_check" in out:
        t = out["teacher_check"]
        print(f"teacher rerun on {t['records']} replayed records: top-1 agreement {100 * t['top1_agreement']:.2f}%, "
              f"mean KL(stored || rerun) {t['mean_kl']:.5f} nats over the top-{t['topk']} + rest bins "
              f"({t['mean_kl_dense']:.4f} for the densified targets) -> {'OK' if t['ok'] else 'MISMATCH'}")
        if not t["ok"]:
            print(f"{path}: the stored targets do not match the teacher rerun (top-1 agreement "
                  f"{100 * t['top1_agreement']:.2f}% < {100 * args.min_agreement:.0f}% or mean KL {t['mean_kl']:.4f} > "
                  f"{args.max_kl}); check that the teacher, checkpoint and data are the ones the store was built "
                  "with", file=sys.stderr)
    return EXIT_OK if ok else EXIT_FAIL


def add_parser(sub) -> None:
    p = sub.add_parser(
        "verify", help="check the store's files, your copy of the data, and optionally rerun the teacher",
        description="Check a store's files (default: sizes, headers, build ids; --full: every byte, every row "
                    "checksum, value ranges, the manifest against the shards). With --data-root, check every sample "
                    "of your copy of the data against the store (keys, labels, content), in parallel, listing every "
                    "mismatch. With --teacher, rerun the teacher on replayed records and compare with the stored "
                    "targets.")
    p.add_argument("store", help="store folder (holding manifest.json)")
    p.add_argument("--full", action="store_true", help="hash every file and check every row and value range")
    add_data_arguments(p)
    p.add_argument("--workers", type=int, default=None, help="decoding processes for --data-root (default: cores)")
    p.add_argument("--teacher", default=None, help="teacher name (a timm model, or a comma-separated ensemble)")
    p.add_argument("--teacher-checkpoint", default=None, help="teacher weights (.safetensors)")
    p.add_argument("--samples", type=positive_int, default=64, help="replayed records to rerun (default 64)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="teacher batch size (default 32)")
    p.add_argument("--seed", type=int, default=0, help="seed for picking records (default 0)")
    p.add_argument("--device", default="cpu", help="device for the teacher (default cpu)")
    p.add_argument("--min-agreement", type=float, default=0.95, help="smallest top-1 agreement that passes")
    p.add_argument("--max-kl", type=float, default=0.05,
                   help="largest mean KL(stored || rerun) over the top-k + rest bins, in nats (default 0.05)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)
