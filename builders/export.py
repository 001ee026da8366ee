"""Turn a finished store into the folder published on the Hub: store + Parquet + dataset card.

The store and Parquet part is the installed ``imagenet-plus export``
(:func:`imagenet_plus.cli.export.export_store`); this script adds the card, whose templates
live in the repository.

The published folder, exactly as it sits in the Hub dataset repo::

    manifest.json, samples.safetensors, reinforcements/*.safetensors    the store
    data/{split}-XXXXX-of-NNNNN.parquet                                 rows for `datasets`
    README.md                                                           the dataset card

The card is rendered from ``hub_cards/<dataset>-plus.md``: a Markdown template with
YAML front matter and ``{{name}}`` placeholders filled from the manifest (see
:func:`card_values`). Usage::

    python builders/export.py runs/cifar100-plus --data-root /data/cifar100 \\
        --repo-id imagenet-plus/cifar100-plus
    python builders/push.py runs/cifar100-plus --repo-id imagenet-plus/cifar100-plus
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

if __package__ in (None, ""):  # run as a script: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imagenet_plus import atomic_write_text  # noqa: E402
from imagenet_plus.errors import ReinforcementError  # noqa: E402

__all__ = ["ExportConfig", "ExportResult", "CARDS_DIR", "pretty_name", "card_template", "card_values",
           "render_card", "write_card", "main"]

#: Card templates: ``hub_cards/<dataset>-plus.md``, else the generic ``hub_cards/generic-plus.md``.
CARDS_DIR = Path(__file__).resolve().parents[1] / "hub_cards"
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_SIZE_CATEGORIES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                    (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B"))


@dataclass
class ExportConfig:
    """Settings of one export.

    Args:
        store: the store folder written by ``builders/build.py``.
        out: the publish folder (default: the store folder itself, completed in place). A
            different folder gets hard links (or copies) of the store files.
        repo_id: the Hub repo the card's snippets name (default: the package's default repo).
        data_root: the base dataset's root in torchvision's layout; needed for images.
        images: put the images in the Parquet (``None``: yes when the images can be read, i.e.
            ``data_root`` is given or the dataset needs none (digits), and the registry says they
            may be redistributed; never for ImageNet, whose licence forbids it).
        template: the card template (default ``hub_cards/<dataset>-plus.md``).
        rows_per_group: Parquet rows per row group (default: about 64 MiB).
        rows_per_file: Parquet rows per file (default: about 512 MiB).
        overwrite: replace an existing Parquet export and card.
        progress: show progress bars.
    """

    store: str
    out: str | None = None
    repo_id: str | None = None
    data_root: str | None = None
    images: bool | None = None
    template: str | None = None
    rows_per_group: int | None = None
    rows_per_file: int | None = None
    overwrite: bool = False
    progress: bool = True


@dataclass
class ExportResult:
    """What an export wrote: the folder, its Parquet files and its card."""

    folder: Path
    parquet: list[Path]
    card: Path


# ---------------------------------------------------------------------------------------------- the card
def pretty_name(dataset: str) -> str:
    """The dataset's display name (the registry's), e.g. ``CIFAR-100+``; ``<name>+`` for others."""
    info = _info(dataset)
    return info.pretty_name if info is not None and not info.generic else f"{dataset}+"


def _info(dataset: str):
    """The registry entry of ``dataset`` (``None``: a name the package does not know)."""
    from imagenet_plus import registry

    return registry.dataset_info(dataset) if dataset in registry.names() else None


def card_template(dataset: str) -> Path:
    """The card template of a dataset (``hub_cards/<dataset>-plus.md``, else the generic one)."""
    path = CARDS_DIR / f"{dataset}-plus.md"
    return path if path.is_file() else CARDS_DIR / "generic-plus.md"


def _images_note(dataset: str, parquet: list[Path]) -> tuple[str, str]:
    """(the card's paragraph on images, the column list entry) as the Parquet files really are."""
    import pyarrow.parquet as pq

    has = bool(parquet) and "image" in pq.read_schema(parquet[0]).names
    if has:
        return ("This repo is self-contained: the Parquet files carry the images (the original files, or PNG "
                "for datasets stored as arrays) next to the stored parameters and targets, so no other download "
                "is needed.", "`image`, ")
    return ("**No images are included** in this repo: bring your own copy of the dataset. Every record is tied "
            "to its image by the `key` column and a digest of the image, and a copy that does not match is "
            "refused.", "")


def _human(nbytes: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if nbytes < 1024 or unit == "TiB":
            return f"{nbytes:.0f} {unit}" if unit == "bytes" else f"{nbytes:.2f} {unit}"
        nbytes /= 1024
    raise AssertionError("unreachable")


def _size_category(n: int) -> str:
    for limit, name in _SIZE_CATEGORIES:
        if n < limit:
            return name
    return "n>1T"


def _describe_teacher(teacher: dict) -> str:
    models = teacher.get("models") or teacher.get("names") or ([teacher["name"]] if "name" in teacher else [])
    if not models:
        return json.dumps(teacher, sort_keys=True)
    text = " + ".join(f"`{m}`" for m in models)
    if len(models) > 1:
        text = f"ensemble of {len(models)}: {text} ({teacher.get('ensemble', 'mean of probabilities')})"
    ckpts = [c for c in teacher.get("checkpoints") or [] if c]
    if ckpts:
        text += f", fine-tuned weights {', '.join(f'`{c}`' for c in ckpts)}"
    elif teacher.get("pretrained"):
        text += ", timm pretrained weights"
    return text


def _describe_policy(policy: dict) -> str:
    parts = [f"`{policy.get('name', 'custom')}`"]
    size = policy.get("output_size")
    geo = policy.get("geometry") or {}
    if geo.get("kind") == "rrc":
        parts.append(f"RandomResizedCrop {size} (scale {geo.get('scale')}, ratio "
                     f"[{', '.join(f'{r:.3g}' for r in geo.get('ratio', []))}])")
    elif geo.get("kind") == "pad_crop":
        parts.append(f"resize {size}, random crop {size} with padding {geo.get('padding')}")
    if policy.get("hflip"):
        parts.append(f"horizontal flip p={policy['hflip']}")
    ra = policy.get("randaugment")
    if ra:
        parts.append(f"RandAugment({ra.get('num_ops')}, {ra.get('magnitude')})")
    er = policy.get("erasing")
    if er:
        parts.append(f"RandomErasing(p={er.get('p')})")
    mix = policy.get("mix")
    if mix:
        parts.append(f"MixUp(alpha={mix.get('mixup_alpha')}) / CutMix(alpha={mix.get('cutmix_alpha')})")
    return parts[0] + ": " + ", ".join(parts[1:]) if len(parts) > 1 else parts[0]


def _blocks(manifest) -> str:
    ends = sorted({s.augs[1] for s in manifest.shards})
    if len(ends) > 6:
        return ", ".join(str(e) for e in ends[:3]) + ", ..., " + str(ends[-1])
    return ", ".join(str(e) for e in ends)


def card_values(manifest, folder: str | os.PathLike, *, repo_id: str) -> dict[str, Any]:
    """The placeholder values of a store's card (figures from its manifest and files).

    Args:
        manifest: the store's manifest.
        folder: the publish folder (its ``manifest.json`` and ``data/*.parquet`` are measured).
        repo_id: the Hub repo the usage snippets name.
    """
    folder = Path(folder)
    m = manifest
    shard_bytes = sum(s.bytes for s in m.shards)
    store_bytes = shard_bytes + m.samples_file.bytes + (folder / "manifest.json").stat().st_size
    parquet = sorted((folder / "data").glob("*.parquet"))
    records = m.num_samples * m.num_augmentations
    note, column = _images_note(m.dataset, parquet)
    return {
        "pretty_name": pretty_name(m.dataset),
        "images_note": note,
        "image_column": column,
        "repo_id": repo_id,
        "dataset": m.dataset,
        "split": m.split,
        "num_samples": f"{m.num_samples:,}",
        "num_augmentations": m.num_augmentations,
        "topk": m.topk,
        "num_classes": m.num_classes,
        "num_records": f"{records:,}",
        "teacher": _describe_teacher(m.teacher),
        "policy": _describe_policy(m.policy),
        "seed": m.seed,
        "builder_version": m.builder_version,
        "store_bytes": f"{store_bytes:,}",
        "store_size": _human(store_bytes),
        "bytes_per_augmentation": f"{shard_bytes / records:.1f} bytes ({m.record_bytes} bytes of fields per record "
                                  "plus shard headers)",
        "parquet_size": _human(sum(p.stat().st_size for p in parquet)) + f" in {len(parquet)} file(s) "
                        + ("(with images)" if column else "(no images)"),
        "augmentation_blocks": f"num_augmentations in {{{_blocks(m)}}} downloads only the blocks needed",
        "param_columns": ", ".join(f"`{f.name}`" for f in m.param_fields),
        "size_category": _size_category(m.num_samples),
        "data_files": f"data/{m.split}-*.parquet",
    }


def render_card(template: str, values: dict[str, Any], *, source: str = "template") -> str:
    """Fill ``{{name}}`` placeholders; every placeholder must have a value.

    Raises:
        ReinforcementError: a placeholder without a value (named, with the template).
    """
    missing = sorted({m.group(1) for m in _PLACEHOLDER.finditer(template)} - set(values))
    if missing:
        raise ReinforcementError(f"{source}: placeholders {missing} have no value; known: {sorted(values)}. "
                                 "Fix the template's placeholder names")
    return _PLACEHOLDER.sub(lambda mt: str(values[mt.group(1)]), template)


def write_card(folder: str | os.PathLike, manifest, *, repo_id: str, template: str | os.PathLike | None = None
               ) -> Path:
    """Render the card of ``folder`` into ``folder/README.md`` and check its metadata parses.

    Returns:
        The card's path.

    Raises:
        ReinforcementError: an unknown template or placeholder, or metadata the Hub would reject
            (no ``configs``, ``license``, ``task_categories`` ...).
    """
    from huggingface_hub import DatasetCard

    folder = Path(folder)
    tpl = Path(template) if template is not None else card_template(manifest.dataset)
    text = render_card(tpl.read_text(encoding="utf-8"), card_values(manifest, folder, repo_id=repo_id),
                       source=str(tpl))
    card = DatasetCard(text)
    data = card.data.to_dict()
    for key in ("configs", "license", "task_categories", "size_categories", "source_datasets", "pretty_name"):
        if not data.get(key):
            raise ReinforcementError(f"{tpl}: the rendered card declares no {key!r} in its YAML front matter; "
                                     "add it to the template")
    path = folder / "README.md"
    atomic_write_text(path, text)
    return path


# ---------------------------------------------------------------------------------------------- the export
def main(config: ExportConfig, *, base=None) -> ExportResult:
    """Export a store: link it into the publish folder, write the Parquet files and the card.

    Args:
        config: the settings.
        base: the dataset the store was built from (default: opened from ``config.data_root``
            when images are wanted).

    Returns:
        An :class:`ExportResult`.
    """
    from imagenet_plus.cli.export import export_store
    from imagenet_plus.store import Manifest

    src = Path(config.store)
    out = Path(config.out) if config.out else src
    if (out / "README.md").exists() and not config.overwrite:
        raise ReinforcementError(f"{out / 'README.md'} exists; pass --overwrite to re-render the card")
    out, files = export_store(src, out, base=base, data_root=config.data_root, images=config.images,
                              rows_per_group=config.rows_per_group, rows_per_file=config.rows_per_file,
                              overwrite=config.overwrite, progress=config.progress)
    manifest = Manifest.load(out)
    info = _info(manifest.dataset)
    repo_id = config.repo_id or (info and info.default_repo) or f"<org>/{manifest.dataset}-plus"
    card = write_card(out, manifest, repo_id=repo_id, template=config.template)
    return ExportResult(out, files, card)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="builders/export.py", description=__doc__.split("\n")[0])
    p.add_argument("store", help="the store folder written by builders/build.py")
    p.add_argument("--out", help="publish folder (default: complete the store folder in place)")
    p.add_argument("--repo-id", help="Hub repo named in the card (default: the package's default repo)")
    p.add_argument("--data-root", help="the dataset's root in torchvision's layout (for the image column)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--images", dest="images", action="store_true", default=None, help="include the images")
    g.add_argument("--no-images", dest="images", action="store_false", help="leave the images out")
    p.add_argument("--template", help="card template (default hub_cards/<dataset>-plus.md)")
    p.add_argument("--rows-per-group", type=int)
    p.add_argument("--rows-per-file", type=int)
    p.add_argument("--overwrite", action="store_true", help="replace an existing Parquet export and card")
    p.add_argument("--quiet", dest="progress", action="store_false", help="no progress bars")
    return p


def cli(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    ns = _parser().parse_args(argv)
    try:
        result = main(ExportConfig(**vars(ns)))
    except (ReinforcementError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"folder": str(result.folder), "parquet": [str(p) for p in result.parquet],
                      "card": str(result.card)}))
    return 0


if __name__ == "__main__":
    sys.exit(cli())
