"""The ``imagenet-plus`` command: ``info``, ``verify`` and ``show`` for reinforcement stores.

Usage::

    imagenet-plus info runs/digits-demo/digits-plus            # readable summary (--json too)
    imagenet-plus verify runs/digits-demo/digits-plus --full   # checksums, schema, value ranges
    imagenet-plus verify STORE --teacher cnn --teacher-checkpoint t.safetensors \\
        --data-root DATA --samples 64                          # rerun the teacher on replayed records
    imagenet-plus show STORE --data-root DATA --index 3 --out grid.png

Exit status: 0 on success, 1 when verification fails or the data is bad, 2 on
a usage error. Errors go to stderr as one message (no traceback).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import AlignmentError, ReinforcementError

__all__ = ["main", "build_parser"]

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


class _UsageError(Exception):
    """Bad command-line arguments detected after parsing (exit status 2)."""


# ----------------------------------------------------------------------------- helpers


def _builders_on_path() -> None:
    """Make the repository's ``builders/`` importable when the command runs from the repository root."""
    if (Path.cwd() / "builders" / "__init__.py").is_file() and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))


def _resolve_store(spec: str, *, revision: str | None = None, manifest_only: bool = False) -> Path:
    """A local store folder, or a Hub repo id (``org/name[@revision]``) resolved by :mod:`imagenet_plus.hub`.

    With ``manifest_only`` a Hub store fetches ``manifest.json`` alone and its path is returned.
    """
    p = Path(spec)
    if p.is_file() and p.name == "manifest.json":
        return p if manifest_only else p.parent
    if p.is_dir():
        return p
    from . import hub

    if manifest_only:
        return Path(hub.resolve_manifest(spec, revision=revision))
    return Path(hub.resolve_reinforcements(spec, revision=revision))


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024.0
    return f"{n} B"  # pragma: no cover


def _teacher_name(teacher: dict) -> str:
    for key in ("name", "names", "models", "members"):
        if key in teacher:
            v = teacher[key]
            if isinstance(v, list):
                return " + ".join(m if isinstance(m, str) else str(m.get("name", m)) for m in v)
            return str(v)
    return json.dumps(teacher, sort_keys=True) if teacher else "(not recorded)"


def _policy_name(policy: dict) -> str:
    return str(policy.get("name") or policy.get("preset") or policy.get("kind") or "custom")


def _info_dict(path: Path) -> dict[str, Any]:
    from .store import Manifest

    m = Manifest.load(path)
    shard_bytes = sum(s.bytes for s in m.shards)
    samples_bytes = m.samples_file.bytes if m.samples_file is not None else 0
    records = m.num_samples * m.num_augmentations
    return {
        "path": str(path.parent if path.suffix == ".json" else path),
        "dataset": m.dataset,
        "split": m.split,
        "teacher": m.teacher,
        "teacher_name": _teacher_name(m.teacher),
        "policy": m.policy,
        "policy_name": _policy_name(m.policy),
        "num_augmentations": m.num_augmentations,
        "topk": m.topk,
        "num_classes": m.num_classes,
        "num_samples": m.num_samples,
        "num_records": records,
        "num_shards": len(m.shards),
        "samples_per_shard": m.samples_per_shard,
        "augs_per_shard": m.augs_per_shard,
        "shard_bytes": shard_bytes,
        "samples_bytes": samples_bytes,
        "total_bytes": shard_bytes + samples_bytes,
        "record_bytes": m.record_bytes,
        "bytes_per_augmentation": shard_bytes / records if records else 0.0,
        "fields": [f.to_json() for f in m.fields],
        "seed": m.seed,
        "format_version": m.format_version,
        "builder_version": m.builder_version,
    }


def _print_info(d: dict[str, Any]) -> None:
    fields = ", ".join(f"{f['name']}{'' if not f['shape'] else list(f['shape'])}:{f['dtype']}" for f in d["fields"])
    rows = [
        ("store", d["path"]),
        ("dataset", f"{d['dataset']} (split {d['split']})"),
        ("teacher", d["teacher_name"]),
        ("policy", d["policy_name"]),
        ("augmentations (NS)", f"{d['num_augmentations']} per sample"),
        ("top-k (K)", str(d["topk"])),
        ("classes", str(d["num_classes"])),
        ("samples", f"{d['num_samples']:,} ({d['num_records']:,} records)"),
        ("shards", f"{d['num_shards']} ({d['samples_per_shard']} samples x {d['augs_per_shard']} augmentations each)"),
        ("bytes", f"{d['total_bytes']:,} ({_human_bytes(d['total_bytes'])}; shards {_human_bytes(d['shard_bytes'])}, "
                  f"samples file {_human_bytes(d['samples_bytes'])})"),
        ("bytes per augmentation", f"{d['bytes_per_augmentation']:.2f} on disk, {d['record_bytes']} per record"),
        ("record fields", fields),
        ("seed", str(d["seed"])),
        ("format", f"version {d['format_version']}, built by imagenet-plus {d['builder_version']}"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


def _open_base(args: argparse.Namespace, manifest):
    """The torchvision-style base dataset the store was built from (``--dataset``/``--data-root``/``--split``)."""
    dataset = args.dataset or manifest.dataset
    split = args.split or manifest.split
    root = args.data_root
    if root is not None and not Path(root).exists():
        raise FileNotFoundError(f"--data-root {root}: no such folder; point it to your copy of the {dataset} data")
    try:
        _builders_on_path()
        from builders.build import DATASETS, BuildConfig, create_dataset  # the builder's registry (repository)
    except ImportError:
        raise _UsageError("showing or re-teaching records needs the repository's builders/ package (the dataset "
                          "registry): run imagenet-plus from the repository root or add it to PYTHONPATH") from None
    if dataset not in DATASETS:
        raise _UsageError(f"--dataset {dataset!r}: unknown dataset; valid values are {{{', '.join(DATASETS)}}}")
    try:
        base = create_dataset(BuildConfig(dataset=dataset, data_root=root, split=split,
                                          source_size=args.source_size))
    except ValueError as e:
        raise ReinforcementError(str(e)) from e
    limit = manifest.extra.get("limit_samples")
    if limit is not None and int(limit) < len(base):
        from torch.utils.data import Subset

        base = Subset(base, range(int(limit)))
    if len(base) != manifest.num_samples:
        raise ReinforcementError(f"--data-root {root}: the {dataset}/{split} copy has {len(base)} samples, the "
                                 f"store {manifest.num_samples}; point to the copy the store was built from")
    return base


def _load_image(store, base, i: int):
    """Decode sample ``i`` and check its content hash against the store (AlignmentError if it differs)."""
    from .identity import load_sample
    from .imageio import to_rgb_array
    from .schema import content_hash

    img = load_sample(base, i)[0]
    h = content_hash(to_rgb_array(img))
    if not np.array_equal(h, store.content_hashes[i]):
        raise AlignmentError(f"sample {i} ({store.keys[i]!r}) of the dataset copy has other pixels than the image "
                             f"the store was built on (content hash {h.tobytes().hex()} != "
                             f"{store.content_hashes[i].tobytes().hex()}); check --dataset, --data-root, --split "
                             "(and --source-size for digits)")
    return img


def _replay_record(store, policy, base, i: int, j: int):
    """The uint8 [3, S, S] pixels of record (i, j), replayed from the store's parameters."""
    img = _load_image(store, base, i)
    params = store.params(i, j)
    partner = partner_params = None
    if policy.uses_mix and int(np.asarray(params["mix_kind"])) != 0:
        p = int(np.asarray(params["mix_partner"]))
        partner = _load_image(store, base, p)
        partner_params = store.params(p, j)
    return policy.apply(img, params, partner, partner_params)


def _load_teacher(args: argparse.Namespace, num_classes: int):
    """A callable mapping uint8 [B, 3, S, S] to probabilities [B, C] (``builders/teachers.py``)."""
    for c in (args.teacher_checkpoint or "").split(","):
        if c.strip() and not Path(c.strip()).is_file():
            raise FileNotFoundError(f"--teacher-checkpoint {c.strip()}: no such file; pass the teacher's "
                                    ".safetensors (one per teacher, comma-separated)")
    try:
        _builders_on_path()
        from builders.teachers import create_teacher, parse_teacher_list
    except ImportError:
        raise _UsageError("--teacher needs the repository's builders/ package: run imagenet-plus from the "
                          "repository root or add it to PYTHONPATH") from None
    try:
        specs = parse_teacher_list(args.teacher, args.teacher_checkpoint)
        return create_teacher(specs, num_classes=num_classes, pretrained=False, device=args.device)
    except (ValueError, RuntimeError) as e:
        raise ReinforcementError(f"--teacher {args.teacher}: {e}") from e


# ----------------------------------------------------------------------------- commands


def _cmd_info(args: argparse.Namespace) -> int:
    d = _info_dict(_resolve_store(args.store, revision=args.revision, manifest_only=True))
    if args.json:
        print(json.dumps(d, indent=1, sort_keys=False, default=str))
    else:
        _print_info(d)
    return EXIT_OK


def _cmd_verify(args: argparse.Namespace) -> int:
    from .store import verify

    path = _resolve_store(args.store)
    if args.teacher_checkpoint and not args.teacher:
        raise _UsageError("--teacher-checkpoint needs --teacher (the model name of the checkpoint)")
    report = verify(path, full=args.full)
    out: dict[str, Any] = {"store": str(path), "ok": True, "full": bool(args.full)}
    summary = getattr(report, "to_json", None)
    out["report"] = summary() if callable(summary) else {k: v for k, v in vars(report).items() if _jsonable(v)}
    if args.teacher:
        out["teacher_check"] = _teacher_check(path, args)
        out["ok"] = out["teacher_check"]["ok"]
    if args.json:
        print(json.dumps(out, indent=1, default=str))
    else:
        print(report.summary())  # says what was checked and what was not
        if "teacher_check" in out:
            t = out["teacher_check"]
            print(f"teacher rerun on {t['records']} replayed records: "
                  f"top-1 agreement {100 * t['top1_agreement']:.2f}%, "
                  f"mean KL(stored || rerun) {t['mean_kl']:.5f} nats over the top-{t['topk']} + rest bins "
                  f"({t['mean_kl_dense']:.4f} for the densified targets) -> {'OK' if t['ok'] else 'MISMATCH'}")
    if not out["ok"]:
        print(f"{path}: the stored targets do not match the teacher rerun (top-1 agreement "
              f"{100 * out['teacher_check']['top1_agreement']:.2f}% < {100 * args.min_agreement:.0f}% or mean KL "
              f"{out['teacher_check']['mean_kl']:.4f} > {args.max_kl}); check that the teacher, checkpoint and data "
              "are the ones the store was built with", file=sys.stderr)
        return EXIT_FAIL
    return EXIT_OK


def _jsonable(v: Any) -> bool:
    try:
        json.dumps(v)
        return True
    except TypeError:
        return False


def _teacher_check(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from .augment import create_policy
    from .store import open_store
    from .targets import densify

    store = open_store(path)
    m = store.manifest
    policy = create_policy(store.policy_config)
    base = _open_base(args, m)
    teacher = _load_teacher(args, m.num_classes)
    rng = np.random.default_rng(args.seed)
    n = min(args.samples, len(store) * store.num_augmentations)
    flat = rng.choice(len(store) * store.num_augmentations, size=n, replace=False)
    ii, jj = flat // store.num_augmentations, flat % store.num_augmentations
    agree, kls, dense_kls = 0, [], []
    for s in range(0, n, args.batch_size):
        bi, bj = ii[s : s + args.batch_size], jj[s : s + args.batch_size]
        x = torch.stack([_replay_record(store, policy, base, int(i), int(j)) for i, j in zip(bi, bj)])
        probs = teacher(x.to(args.device)).float().cpu().double()
        ids, tp = store.targets_batch(bi, bj)
        ids, tp = torch.as_tensor(ids), torch.as_tensor(tp).double()
        agree += int((probs.argmax(1) == ids[:, 0]).sum())
        # KL on the K + 1 bins the store keeps (the top-k classes and the rest): quantisation and replay error
        stored = torch.cat([tp, (1.0 - tp.sum(1, keepdim=True)).clamp_min(0.0)], dim=1)
        rerun_k = probs.gather(1, ids)
        rerun = torch.cat([rerun_k, (1.0 - rerun_k.sum(1, keepdim=True)).clamp_min(0.0)], dim=1)
        kls.append(_kl(stored, rerun))
        # KL of the densified training target ("smooth"), which also counts the tail's assumed uniform shape
        dense = densify(ids, tp.float(), m.num_classes, mode="smooth").double()
        dense_kls.append(_kl(dense, probs))
    mean_kl = float(torch.cat(kls).mean())
    agreement = agree / n
    return {
        "records": int(n),
        "topk": m.topk,
        "top1_agreement": agreement,
        "mean_kl": mean_kl,
        "mean_kl_dense": float(torch.cat(dense_kls).mean()),
        "min_agreement": args.min_agreement,
        "max_kl": args.max_kl,
        "ok": bool(agreement >= args.min_agreement and mean_kl <= args.max_kl),
    }


def _kl(p, q):
    """KL(p || q) per row, in nats (0 log 0 = 0)."""
    import torch

    return torch.sum(torch.where(p > 0, p * (torch.log(p.clamp_min(1e-300)) - torch.log(q.clamp_min(1e-12))),
                                 torch.zeros_like(p)), dim=1)


def _caption(ids: np.ndarray, probs: np.ndarray, classes: Sequence[str] | None, k: int = 3) -> str:
    parts = []
    for c, p in zip(ids[:k], probs[:k]):
        name = classes[int(c)] if classes is not None and int(c) < len(classes) else str(int(c))
        parts.append(f"{name[:14]} {100 * float(p):.1f}%")
    return "\n".join(parts)


def _cmd_show(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .augment import create_policy
    from .store import open_store

    path = _resolve_store(args.store)
    store = open_store(path)
    m = store.manifest
    if not 0 <= args.index < len(store):
        raise _UsageError(f"--index {args.index}: out of range, the store has samples 0..{len(store) - 1}")
    if args.num < 1:
        raise _UsageError(f"--num {args.num}: must be >= 1")
    policy = create_policy(store.policy_config)
    base = _open_base(args, m)
    classes = getattr(getattr(base, "dataset", base), "classes", None)
    num = min(args.num, store.num_augmentations)
    original = _load_image(store, base, args.index)
    label = int(store.labels[args.index])
    cols = min(num + 1, args.cols)
    rows = -(-(num + 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.9 * rows), dpi=110, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    axes.flat[0].imshow(np.asarray(original), interpolation="nearest")
    label_name = classes[label] if classes is not None and label < len(classes) else str(label)
    axes.flat[0].set_title(f"original #{args.index}\nlabel {label_name}", fontsize=8)
    for j in range(num):
        x = _replay_record(store, policy, base, args.index, j)
        ids, probs = store.targets(args.index, j)
        ax = axes.flat[j + 1]
        ax.imshow(x.permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_title(f"aug {j}\n{_caption(ids, probs, classes)}", fontsize=7)
    fig.suptitle(f"{m.dataset}/{m.split} sample {args.index} ({key_of(store, args.index)})", fontsize=9)
    fig.tight_layout()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    print(f"wrote {out} (original + {num} replayed augmentations of sample {args.index})")
    return EXIT_OK


def key_of(store, i: int) -> str:
    try:
        return store.keys[i]
    except Exception:  # noqa: BLE001 - a caption is not worth failing over
        return f"index {i}"


# ----------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``imagenet-plus`` command."""
    p = argparse.ArgumentParser(
        prog="imagenet-plus",
        description="Inspect, verify and preview reinforcement stores (Dataset Reinforcement).",
    )
    sub = p.add_subparsers(dest="command", metavar="{info,verify,show}")
    sub.required = True

    info = sub.add_parser("info", help="summarise a store (dataset, teacher, policy, NS, K, sizes)",
                          description="Print a readable summary of a reinforcement store.")
    info.add_argument("store", help="store folder (holding manifest.json) or a Hub repo id")
    info.add_argument("--revision", default=None, help="Hub revision when STORE is a repo id")
    info.add_argument("--json", action="store_true", help="print the summary as JSON")
    info.set_defaults(func=_cmd_info)

    ver = sub.add_parser("verify", help="check checksums and schema; optionally rerun the teacher",
                         description="Check a store's checksums and schema (--full: every byte and value range). "
                                     "With --teacher and --data-root, rerun the teacher on random replayed records "
                                     "and compare with the stored targets.")
    ver.add_argument("store", help="store folder (holding manifest.json)")
    ver.add_argument("--full", action="store_true", help="hash every shard and check every value range")
    ver.add_argument("--teacher", default=None, help="teacher name (builders/teachers.py name or timm model)")
    ver.add_argument("--teacher-checkpoint", default=None, help="teacher weights (.safetensors)")
    ver.add_argument("--data-root", default=None,
                     help="root of your copy of the base dataset, for --teacher (not needed for digits)")
    ver.add_argument("--dataset", default=None, help="dataset name (default: the manifest's)")
    ver.add_argument("--split", default=None, help="dataset split (default: the manifest's)")
    ver.add_argument("--source-size", type=_positive_int, default=32,
        help="side of the digits images (--dataset digits only; default 32, the builder's default)")
    ver.add_argument("--samples", type=_positive_int, default=64, help="replayed records to rerun (default 64)")
    ver.add_argument("--batch-size", type=_positive_int, default=32, help="teacher batch size (default 32)")
    ver.add_argument("--seed", type=int, default=0, help="seed for picking records (default 0)")
    ver.add_argument("--device", default="cpu", help="device for the teacher (default cpu)")
    ver.add_argument("--min-agreement", type=float, default=0.95,
                     help="smallest top-1 agreement that passes (default 0.95)")
    ver.add_argument("--max-kl", type=float, default=0.05,
                     help="largest mean KL(stored || rerun) over the top-k + rest bins, in nats (default 0.05)")
    ver.add_argument("--json", action="store_true", help="print the result as JSON")
    ver.set_defaults(func=_cmd_verify)

    show = sub.add_parser("show", help="draw an image and its replayed augmentations with teacher top-3",
                          description="Write a PNG grid: the original image and its replayed augmentations, "
                                      "each captioned with the stored teacher top-3 classes and probabilities.")
    show.add_argument("store", help="store folder (holding manifest.json)")
    show.add_argument("--data-root", default=None,
                      help="root of your copy of the base dataset (not needed for digits)")
    show.add_argument("--dataset", default=None, help="dataset name (default: the manifest's)")
    show.add_argument("--split", default=None, help="dataset split (default: the manifest's)")
    show.add_argument("--source-size", type=_positive_int, default=32,
        help="side of the digits images (--dataset digits only; default 32, the builder's default)")
    show.add_argument("--index", type=int, required=True, help="sample index")
    show.add_argument("--num", type=int, default=8, help="number of augmentations to draw (default 8)")
    show.add_argument("--cols", type=_positive_int, default=5, help="images per row (default 5)")
    show.add_argument("--out", required=True, help="output PNG path")
    show.set_defaults(func=_cmd_show)
    return p


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 failure, 2 usage error)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse exits 2 on usage errors and 0 after --help
        return int(e.code or 0)
    try:
        return int(args.func(args))
    except _UsageError as e:
        parser.print_usage(sys.stderr)
        print(f"imagenet-plus {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (ReinforcementError, FileNotFoundError, NotADirectoryError, PermissionError) as e:
        print(f"imagenet-plus {args.command}: error: {e}", file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
