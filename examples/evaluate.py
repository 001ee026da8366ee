"""Is my student better? Accuracy, calibration and robustness of checkpoints ``examples/train.py`` wrote.

    python examples/evaluate.py --run erm=runs/r50-erm --run kd=runs/r50-kd --run plus=runs/r50-plus \\
        --baseline erm --out runs/r50-eval \\
        --imagenet-v2 /data/imagenetv2-matched-frequency --imagenet-r /data/imagenet-r \\
        --imagenet-a /data/imagenet-a --imagenet-sketch /data/imagenet-sketch

Each ``--run LABEL=PATH`` is a run folder (``model.safetensors``, else ``checkpoint.safetensors``;
``--ema`` for the EMA weights) or one of its ``.safetensors`` files; the model, its input
normalisation and the evaluation data are the run's own (``OUT/config.json``: the recipe, the
eval split, ``eval.resize`` and ``eval.crop``). Runs sharing a label are seeds of one arm: the
table shows their mean ± std. Reported:

* **clean**: top-1, top-5, NLL, mean confidence and the ECE over 15 equal-width bins (bin ``b``
  holds the predictions whose top-1 probability lies in ``(b/15, (b+1)/15]``; ECE = sum over bins
  of ``|B_b|/N * |accuracy(B_b) - confidence(B_b)|``), with a reliability diagram per label;
* **corruptions** (ImageNet-C style, :mod:`_corruptions`): the eval crops corrupted by each type at
  severities 1-5 (after resize and centre crop, before normalisation, as ImageNet-C), top-1 per type
  and severity, their mean, and with ``--baseline LABEL`` the mCE of Hendrycks & Dietterich (2019):
  ``CE_c = sum_s E_{s,c} / sum_s E^base_{s,c}``, mCE = mean over types of ``CE_c`` (top-1 errors,
  the baseline's averaged over its seeds), and the relative mCE
  ``sum_s (E_{s,c} - E_clean) / sum_s (E^base_{s,c} - E^base_clean)``;
* **shifted test sets**, from ImageFolder copies: ImageNetV2 (folders ``0``..``999``, the class
  index), ImageNet-Sketch (1000 WordNet-id folders), ImageNet-R and ImageNet-A (200 WordNet-id
  folders each: scored over the logits of those 200 classes, as their authors do).

Writes ``OUT/results.json``, ``OUT/table.md``, ``OUT/robustness.png`` (top-1 against severity and
per corruption type) and ``OUT/reliability.png``; prints the table.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _p in (str(ROOT), str(HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from _corruptions import CORRUPTIONS, SEVERITIES, TABLES, corrupt, table_for_size  # noqa: E402
from _data import create_base, load_image, subset_first  # noqa: E402
from _train import create_model  # noqa: E402

from imagenet_plus import atomic_write_text  # noqa: E402
from imagenet_plus.errors import ArgumentError  # noqa: E402

__all__ = ["main", "parse_args", "load_run", "calibration", "mean_corruption_error", "shifted_set",
           "evaluate_runs", "print_table", "SHIFTED", "NUM_BINS"]

NUM_BINS = 15
SHIFTED = {"imagenet-v2": 1000, "imagenet-sketch": 1000, "imagenet-r": 200, "imagenet-a": 200}
_WNID = re.compile(r"^n\d{8}$")
_IMAGE_EXT = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


# ----------------------------------------------------------------------------- runs
@dataclass
class Run:
    """One checkpoint ready to evaluate."""

    label: str
    path: str
    model: torch.nn.Module
    recipe: dict
    mean: tuple
    std: tuple

    @property
    def data_key(self) -> str:
        d, e = self.recipe["data"], self.recipe["eval"]
        return json.dumps([d["dataset"], d["root"], d["eval_split"], d.get("source_size"), e["resize"], e["crop"]])


def _run_files(path: Path, ema: bool) -> tuple[Path, Path, str]:
    """(run folder, weights file, tensor-name prefix) of a run folder or one of its safetensors files."""
    if path.is_dir():
        folder = path
        named = folder / ("model_ema.safetensors" if ema else "model.safetensors")
        weights = named if named.is_file() else folder / "checkpoint.safetensors"
    else:
        folder, weights = path.parent, path
    if not weights.is_file():
        raise ArgumentError(f"--run {path}: no {'model_ema' if ema else 'model'}.safetensors or "
                            "checkpoint.safetensors there; pass a folder examples/train.py wrote (--out)")
    if not (folder / "config.json").is_file():
        raise ArgumentError(f"--run {path}: {folder / 'config.json'} is missing; pass a folder examples/train.py "
                            "wrote (it holds the recipe the model and its evaluation data come from)")
    prefix = ("ema/" if ema else "model/") if weights.name == "checkpoint.safetensors" else ""
    return folder, weights, prefix


def _normalization(folder: Path, weights: Path, recipe: dict) -> tuple[tuple, tuple]:
    """The input mean/std the model was trained with: the weights' JSON sidecar, else the recipe's policy."""
    sidecar = weights.with_suffix(".json")
    if sidecar.is_file():
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
        if "mean" in meta and "std" in meta:
            return tuple(meta["mean"]), tuple(meta["std"])
    from imagenet_plus import create_policy, open_store

    cfg = recipe["policy"]
    if cfg is None:
        if not recipe["reinforcements"]:
            raise ArgumentError(f"--run {folder}: the recipe names neither a policy nor a store, so the input "
                                "normalisation is unknown; evaluate model.safetensors (its .json sidecar has it)")
        cfg = open_store(recipe["reinforcements"]).policy_config
    policy = create_policy(cfg, mix=None)
    return tuple(policy.mean), tuple(policy.std)


def load_run(label: str, path: str | Path, *, ema: bool = False, device: str | torch.device = "cpu") -> Run:
    """The model of a run ``examples/train.py`` wrote, in eval mode on ``device``.

    Raises:
        ArgumentError: the path holds no weights or no ``config.json``, or the weights do not fit the recipe's model.
    """
    from safetensors import safe_open

    folder, weights, prefix = _run_files(Path(path), ema)
    recipe = json.loads((folder / "config.json").read_text(encoding="utf-8"))["recipe"]
    mean, std = _normalization(folder, weights, recipe)
    with safe_open(str(weights), framework="pt", device="cpu") as f:
        state = {k[len(prefix):]: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}
    fc = [v for k, v in state.items() if k.endswith(("fc.weight", "head.weight", "classifier.weight"))]
    num_classes = int(fc[-1].shape[0]) if fc else None
    if num_classes is None:
        raise ArgumentError(f"--run {path}: cannot tell the class count from {weights} (no fc/head/classifier "
                            "weight); pass model.safetensors of an examples/train.py run")
    m = recipe["model"]
    model = create_model(m["name"], num_classes, **m["kwargs"])
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ArgumentError(f"--run {path}: {weights} does not fit model {m['name']!r} of its recipe "
                            f"({str(e).splitlines()[0]}); pass the run's own folder") from None
    return Run(label, str(path), model.to(device).eval(), recipe, mean, std)


# ----------------------------------------------------------------------------- data
class CropImages(Dataset):
    """uint8 ``[3, crop, crop]`` eval crops (shorter side resized to ``resize``, centre crop) and labels.

    ``samples`` is a base dataset (decoded as the training data is) or a list of ``(path, label)``.
    With ``corruption=(name, severity, seed, table)`` each crop is corrupted, image ``i`` with draws
    of index ``i``.
    """

    def __init__(self, samples, resize: int, crop: int, corruption: tuple | None = None, cache=None) -> None:
        from torchvision.transforms import v2

        self.samples, self.corruption, self.cache = samples, corruption, cache
        self.geometry = v2.Compose([v2.ToImage(), v2.Resize(resize, antialias=True), v2.CenterCrop(crop)])

    def __len__(self) -> int:
        return len(self.samples)

    def crop(self, i: int) -> tuple[torch.Tensor, int]:
        if self.cache is not None:
            return self.cache[0][i], int(self.cache[1][i])
        if isinstance(self.samples, list):
            from imagenet_plus.imageio import decode_bytes

            path, label = self.samples[i]
            image = decode_bytes(Path(path).read_bytes(), source=path)
        else:
            image, label = load_image(self.samples, i)
        return self.geometry(image).as_subclass(torch.Tensor).contiguous(), int(label)

    def __getitem__(self, i: int):
        x, label = self.crop(i)
        if self.corruption is not None:
            name, severity, seed, table = self.corruption
            hwc = corrupt(x.permute(1, 2, 0).numpy(), name, severity, seed=seed, index=i, table=table)
            x = torch.from_numpy(np.ascontiguousarray(hwc)).permute(2, 0, 1)
        return x, label


def _cache(ds: CropImages, limit_bytes: int = 1 << 28):
    """All clean crops in memory when they fit in ``limit_bytes`` (small eval sets: decoded once, not per pass)."""
    x0, _ = ds.crop(0)
    if len(ds) * x0.numel() > limit_bytes:
        return None
    items = [ds.crop(i) for i in range(len(ds))]
    return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items], dtype=torch.int64)


def _folders(root: Path, kind: str) -> list[str]:
    if not root.is_dir():
        raise ArgumentError(f"--{kind} {root}: not a folder; pass the {kind} copy in ImageFolder layout "
                            "(one subfolder per class)")
    names = sorted(p.name for p in root.iterdir() if p.is_dir())
    if len(names) != SHIFTED[kind]:
        raise ArgumentError(f"--{kind} {root}: {len(names)} class folders, expected {SHIFTED[kind]} "
                            f"({_layout(kind)}); point it to the folder that holds the class folders")
    return names


def _layout(kind: str) -> str:
    return "folders 0..999 named by class index" if kind == "imagenet-v2" else \
        f"{SHIFTED[kind]} folders named by WordNet id, e.g. n01440764"


def shifted_set(kind: str, root: str | Path, class_wnids: list[str]) -> tuple[list, list[int] | None]:
    """A shifted test set's ``(path, label)`` samples and the training-class indices it is scored over.

    Args:
        kind: one of :data:`SHIFTED`.
        root: the ImageFolder copy.
        class_wnids: the training classes' WordNet ids, in the model's class order.

    Returns:
        ``(samples, indices)``: labels index ``indices`` (the logits to score over), or
        ``indices=None`` for the 1000-class sets (labels are model classes).

    Raises:
        ArgumentError: a wrong number or naming of class folders, an empty class folder, or a model
            whose classes are not ImageNet's WordNet ids.
    """
    root = Path(root)
    if kind not in SHIFTED:
        raise ArgumentError(f"Unknown shifted set {kind!r}. Valid values are {{{', '.join(SHIFTED)}}}.")
    if len(class_wnids) != 1000 or not all(_WNID.match(w) for w in class_wnids):
        raise ArgumentError(f"--{kind}: the run's classes are not ImageNet's 1000 WordNet ids "
                            f"({len(class_wnids)} classes); shifted ImageNet sets need an ImageNet-1k student")
    names = _folders(root, kind)
    if kind == "imagenet-v2":
        if names != sorted(str(k) for k in range(1000)):
            bad = next(n for n in names if not n.isdigit() or not 0 <= int(n) < 1000)
            raise ArgumentError(f"--{kind} {root}: folder {bad!r} is not a class index; ImageNetV2's layout is "
                                "folders 0..999 (imagenetv2-*-format-val)")
        order, indices = [int(n) for n in names], None
    else:
        pos = {w: i for i, w in enumerate(class_wnids)}
        unknown = [n for n in names if n not in pos]
        if unknown:
            raise ArgumentError(f"--{kind} {root}: folder {unknown[0]!r} is not one of the training classes' "
                                f"WordNet ids ({len(unknown)} such folders); expected {_layout(kind)}")
        indices = [pos[n] for n in names]
        order = indices if kind == "imagenet-sketch" else list(range(len(names)))
        indices = None if kind == "imagenet-sketch" else indices
    samples = []
    for name, label in zip(names, order):
        files = sorted(p for p in (root / name).rglob("*") if p.suffix.lower() in _IMAGE_EXT and p.is_file())
        if not files:
            raise ArgumentError(f"--{kind} {root}: class folder {name!r} holds no images ({', '.join(_IMAGE_EXT)})")
        samples += [(str(p), label) for p in files]
    return samples, indices


def _class_wnids(base) -> list[str]:
    inner = getattr(base, "dataset", base)
    wnids = getattr(inner, "wnids", None) or getattr(inner, "classes", None) or []
    return [str(w) for w in wnids]


# ----------------------------------------------------------------------------- metrics
def calibration(conf: np.ndarray, correct: np.ndarray, num_bins: int = NUM_BINS) -> dict:
    """ECE and the reliability diagram's bins: bin ``b`` holds confidences in ``(b/num_bins, (b+1)/num_bins]``.

    Returns:
        ``{"ece": %, "count": [...], "accuracy": [% or nan], "confidence": [% or nan]}`` per bin.
    """
    conf = np.asarray(conf, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    bins = np.clip(np.ceil(conf * num_bins).astype(np.int64) - 1, 0, num_bins - 1)
    count = np.bincount(bins, minlength=num_bins).astype(np.float64)
    hits = np.bincount(bins, weights=correct, minlength=num_bins)
    mass = np.bincount(bins, weights=conf, minlength=num_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc, avg = hits / count, mass / count
    gaps = np.where(count > 0, np.abs(np.nan_to_num(acc) - np.nan_to_num(avg)), 0.0)
    ece = float((count / max(1, conf.size) * gaps).sum())
    return {"ece": 100.0 * ece, "count": count.astype(int).tolist(), "accuracy": (100.0 * acc).tolist(),
            "confidence": (100.0 * avg).tolist()}


def _summary(stats: dict) -> dict:
    """top-1, top-5, NLL, ECE-15, confidence from the per-sample statistics of one pass."""
    cal = calibration(stats["conf"], stats["correct"])
    return {"top1": 100.0 * float(np.mean(stats["correct"])), "top5": 100.0 * float(np.mean(stats["top5"])),
            "nll": float(-np.mean(stats["logp"])), "ece": cal["ece"],
            "confidence": 100.0 * float(np.mean(stats["conf"])), "n": int(len(stats["correct"]))}


def mean_corruption_error(errors: dict, clean_error: float, base_errors: dict, base_clean_error: float) -> dict:
    """Hendrycks & Dietterich's mCE and relative mCE (in %) of top-1 errors against a baseline's.

    Args:
        errors: ``{type: [error % at severities 1..5]}`` of the model.
        clean_error: its clean error %.
        base_errors, base_clean_error: the same of the baseline.

    Returns:
        ``{"mce", "relative_mce", "ce": {type: CE %}, "relative_ce": {type: %}, "relative_undefined": [types]}``.
        A type whose baseline error sum is 0 has CE ``nan`` and makes the mCE ``nan``. A type where the
        baseline's corrupted errors do not exceed its clean error (a mild corruption) has no relative CE:
        it is listed in ``relative_undefined`` and the relative mCE is the mean over the other types
        (``nan`` when none is left).
    """
    ce, rel = {}, {}
    for name, errs in errors.items():
        base = np.asarray(base_errors[name], dtype=np.float64)
        errs = np.asarray(errs, dtype=np.float64)
        ce[name] = 100.0 * errs.sum() / base.sum() if base.sum() > 0 else math.nan
        denom = (base - base_clean_error).sum()
        rel[name] = 100.0 * (errs - clean_error).sum() / denom if denom > 0 else math.nan
    defined = [v for v in rel.values() if not math.isnan(v)]
    return {"mce": float(np.mean(list(ce.values()))) if ce else math.nan,
            "relative_mce": float(np.mean(defined)) if defined else math.nan, "ce": ce, "relative_ce": rel,
            "relative_undefined": [t for t, v in rel.items() if math.isnan(v)]}


# ----------------------------------------------------------------------------- the passes
def channels_last_runs(runs: list[Run]) -> list[Run]:
    """Copies of ``runs`` whose models use the channels-last memory format (about 2x faster convolutions on
    the CPU). Only the order of float sums changes; the clean pass keeps ``examples/train.py``'s own layout
    so its figures equal the training run's to the last digit."""
    return [dataclasses.replace(r, model=copy.deepcopy(r.model).to(memory_format=torch.channels_last))
            for r in runs]


@torch.no_grad()
def _pass(runs: list[Run], loader, device: torch.device, indices: list[int] | None = None, *,
          channels_last: bool = False) -> list[dict]:
    """Per-sample statistics of every run over one loader: confidence, correct, log p(label), top-5 hit.

    Inputs are normalised as ``examples/train.py``'s evaluation does (``to_dtype(scale=True)``, then
    ``normalize``), in float32. With ``indices`` the logits are those classes' only (ImageNet-R/A).
    ``channels_last``: the inputs are passed in the channels-last layout (for :func:`channels_last_runs`).
    """
    from torchvision.transforms.v2 import functional as TF

    stats = [{"conf": [], "correct": [], "logp": [], "top5": []} for _ in runs]
    idx = None if indices is None else torch.tensor(indices, dtype=torch.int64, device=device)
    for x, y in loader:
        x = TF.to_dtype(x.to(device), torch.float32, scale=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = y.to(device)
        for run, st in zip(runs, stats):
            logits = run.model(TF.normalize(x, list(run.mean), list(run.std))).float()
            if idx is not None:
                logits = logits.index_select(1, idx)
            logp = torch.log_softmax(logits.double(), dim=1)
            conf, pred = logp.exp().max(dim=1)
            k = min(5, logits.shape[1])
            st["conf"].append(conf.cpu())
            st["correct"].append((pred == y).cpu())
            st["logp"].append(logp.gather(1, y[:, None])[:, 0].cpu())
            st["top5"].append((logits.topk(k, dim=1).indices == y[:, None]).any(dim=1).cpu())
    return [{k: torch.cat(v).numpy() if v else np.zeros(0) for k, v in st.items()} for st in stats]


@dataclass
class Options:
    """What :func:`evaluate_runs` measures and how."""

    corruptions: tuple = CORRUPTIONS
    table: str = "auto"
    seed: int = 0
    samples: int | None = None
    shifted: dict = field(default_factory=dict)
    batch_size: int = 256
    workers: int = 0
    device: str = "cpu"
    log: object = None


def _eval_base(runs: list[Run], samples: int | None):
    keys = {r.data_key for r in runs}
    if len(keys) != 1:
        raise ArgumentError("--run: the runs evaluate different data (dataset, root, eval split, eval.resize/crop: "
                            f"{sorted(keys)}); compare runs of one dataset and evaluation transform")
    data = runs[0].recipe["data"]
    return subset_first(create_base(data, data["eval_split"]), samples)


def evaluate_runs(runs: list[Run], opts: Options) -> dict:
    """Clean, corrupted and shifted evaluation of ``runs`` (each image decoded and corrupted once for all runs).

    Returns:
        ``{"settings": ..., "runs": [{"label", "path", "clean", "calibration", "corruptions":
        {type: [top-1 % per severity]}, "corruption_top1", "shifted": {kind: summary}}]}``.
    """
    log = opts.log or (lambda msg: None)
    device = torch.device(opts.device)
    ev = runs[0].recipe["eval"]
    base = _eval_base(runs, opts.samples)
    clean = CropImages(base, ev["resize"], ev["crop"])
    cache = _cache(clean)
    table = table_for_size(ev["crop"]) if opts.table == "auto" else opts.table

    def loader(ds):
        return DataLoader(ds, batch_size=opts.batch_size, num_workers=0 if cache is not None else opts.workers)

    out = [{"label": r.label, "path": r.path, "corruptions": {}, "shifted": {}} for r in runs]
    for o, st in zip(out, _pass(runs, loader(CropImages(base, ev["resize"], ev["crop"], cache=cache)), device)):
        o["clean"], o["calibration"], o["_clean_stats"] = _summary(st), calibration(st["conf"], st["correct"]), st
    log(f"clean: {len(clean)} images, " + ", ".join(f"{o['label']} {o['clean']['top1']:.2f}%" for o in out))
    fast = channels_last_runs(runs)  # every later pass: many images, the layout that convolves fastest
    for name in opts.corruptions:
        for severity in SEVERITIES:
            ds = CropImages(base, ev["resize"], ev["crop"], (name, severity, opts.seed, table), cache=cache)
            for o, st in zip(out, _pass(fast, loader(ds), device, channels_last=True)):
                o["corruptions"].setdefault(name, []).append(100.0 * float(np.mean(st["correct"])))
        log(f"{name}: " + ", ".join(f"{o['label']} {np.mean(o['corruptions'][name]):.2f}%" for o in out))
    for o in out:
        o["corruption_top1"] = float(np.mean([v for s in o["corruptions"].values() for v in s])) \
            if o["corruptions"] else math.nan
    for kind, folder in opts.shifted.items():
        samples, indices = shifted_set(kind, folder, _class_wnids(base))
        ds = CropImages(samples, ev["resize"], ev["crop"])
        for o, st in zip(out, _pass(fast, loader(ds), device, indices, channels_last=True)):
            o["shifted"][kind] = _summary(st)
        log(f"{kind}: {len(samples)} images, " + ", ".join(f"{o['label']} {o['shifted'][kind]['top1']:.2f}%"
                                                          for o in out))
    settings = {"corruptions": list(opts.corruptions), "severities": list(SEVERITIES), "table": table,
                "seed": opts.seed, "samples": len(clean), "ece_bins": NUM_BINS, "shifted": dict(opts.shifted),
                "eval": {"dataset": runs[0].recipe["data"]["dataset"], "split": runs[0].recipe["data"]["eval_split"],
                         "resize": ev["resize"], "crop": ev["crop"]}}
    return {"settings": settings, "runs": out}


def summarize_labels(results: dict, baseline: str | None) -> dict:
    """Per label (its runs: seeds): mean ± std of each figure, mCE against the baseline's mean errors, pooled bins."""
    labels: dict[str, list[dict]] = {}
    for r in results["runs"]:
        labels.setdefault(r["label"], []).append(r)
    if baseline is not None and baseline not in labels:
        raise ArgumentError(f"--baseline {baseline!r} is not a run label; labels are {{{', '.join(labels)}}}")
    if baseline is not None and results["settings"]["corruptions"]:
        base = labels[baseline]
        types = results["settings"]["corruptions"]
        base_err = {t: [100.0 - float(np.mean([r["corruptions"][t][s] for r in base]))
                        for s in range(len(SEVERITIES))] for t in types}
        base_clean = 100.0 - float(np.mean([r["clean"]["top1"] for r in base]))
        for r in results["runs"]:
            errs = {t: [100.0 - v for v in r["corruptions"][t]] for t in types}
            r["mce"] = mean_corruption_error(errs, 100.0 - r["clean"]["top1"], base_err, base_clean)

    def ms(values) -> dict:
        arr = np.asarray(values, dtype=np.float64)
        return {"mean": float(arr.mean()), "std": float(arr.std()), "values": arr.tolist()}

    summary = {}
    for label, runs in labels.items():
        s = {k: ms([r["clean"][k] for r in runs]) for k in ("top1", "top5", "nll", "ece", "confidence")}
        if results["settings"]["corruptions"]:
            s["corruption_top1"] = ms([r["corruption_top1"] for r in runs])
            s["per_type"] = {t: ms([np.mean(r["corruptions"][t]) for r in runs]) for t in runs[0]["corruptions"]}
            s["per_severity"] = [ms([np.mean([r["corruptions"][t][k] for t in r["corruptions"]]) for r in runs])
                                 for k in range(len(SEVERITIES))]
        if "mce" in runs[0]:
            s["mce"] = ms([r["mce"]["mce"] for r in runs])
            s["relative_mce"] = ms([r["mce"]["relative_mce"] for r in runs])
            s["relative_undefined"] = sorted({t for r in runs for t in r["mce"]["relative_undefined"]})
        for kind in runs[0]["shifted"]:
            s[kind] = ms([r["shifted"][kind]["top1"] for r in runs])
        pooled = {k: np.concatenate([r["_clean_stats"][k] for r in runs]) for k in ("conf", "correct")}
        s["calibration_pooled"] = calibration(pooled["conf"], pooled["correct"])
        s["runs"] = len(runs)
        summary[label] = s
    return summary


# ----------------------------------------------------------------------------- report
_COLUMNS = (("top1", "top-1 (%)", ".2f"), ("top5", "top-5 (%)", ".2f"), ("nll", "NLL", ".4f"),
            ("ece", "ECE-15 (%)", ".2f"), ("confidence", "confidence (%)", ".2f"),
            ("corruption_top1", "corrupted top-1 (%)", ".2f"), ("mce", "mCE (%)", ".1f"),
            ("relative_mce", "rel. mCE (%)", ".1f"), ("imagenet-v2", "ImageNetV2 (%)", ".2f"),
            ("imagenet-r", "ImageNet-R (%)", ".2f"), ("imagenet-a", "ImageNet-A (%)", ".2f"),
            ("imagenet-sketch", "Sketch (%)", ".2f"))


def table_rows(summary: dict, names: dict | None = None) -> list[tuple[str, ...]]:
    """The comparison table (header first): one row per label, mean ± std over its runs where it has several."""
    cols = [c for c in _COLUMNS if any(c[0] in s for s in summary.values())]
    rows = [("",) + tuple(c[1] for c in cols)]
    for label, s in summary.items():
        cells = []
        for key, _, fmt in cols:
            v = s.get(key)
            if v is None:
                cells.append("-")
            elif s["runs"] > 1:
                cells.append(f"{format(v['mean'], fmt)} ± {format(v['std'], fmt)}")
            else:
                cells.append(format(v["mean"], fmt))
        rows.append(((names or {}).get(label, label),) + tuple(cells))
    return rows


def print_table(rows: list[tuple[str, ...]]) -> str:
    """Print ``rows`` aligned (first column left); returns the text."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    line = lambda r: "  ".join(v.ljust(widths[i]) if i == 0 else v.rjust(widths[i]) for i, v in enumerate(r))  # noqa
    text = "\n".join([line(rows[0]), "-" * len(line(rows[0]))] + [line(r) for r in rows[1:]])
    print(text, flush=True)
    return text


def markdown_table(rows: list[tuple[str, ...]]) -> str:
    head = "| " + " | ".join(rows[0]) + " |"
    sep = "|" + "|".join("---" if i == 0 else "---:" for i in range(len(rows[0]))) + "|"
    return "\n".join([head, sep] + ["| " + " | ".join(r) + " |" for r in rows[1:]]) + "\n"


def plot_reliability(summary: dict, path: str | Path, names: dict | None = None) -> None:
    """One reliability diagram per label (its runs pooled): accuracy per confidence bin against the diagonal."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(summary)
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.8), dpi=110, squeeze=False)
    edges = np.linspace(0, 1, NUM_BINS + 1)
    for ax, (label, s) in zip(axes[0], summary.items()):
        cal = s["calibration_pooled"]
        acc = np.nan_to_num(np.asarray(cal["accuracy"], dtype=np.float64)) / 100.0
        conf = np.asarray(cal["confidence"], dtype=np.float64) / 100.0
        count = np.asarray(cal["count"])
        ax.bar(edges[:-1], acc, width=1.0 / NUM_BINS, align="edge", color="C0", edgecolor="k", lw=0.5,
               label="accuracy")
        has = count > 0
        ax.bar(edges[:-1][has], (conf - acc)[has], bottom=acc[has], width=1.0 / NUM_BINS, align="edge",
               color="C3", alpha=0.35, label="gap to confidence")
        ax.plot([0, 1], [0, 1], "k--", lw=1)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence (15 equal-width bins)")
        ax.set_title(f"{(names or {}).get(label, label)}\nECE {cal['ece']:.2f}%, {int(count.sum())} predictions",
                     fontsize=8)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy")
    axes[0][0].legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_robustness(summary: dict, clean_key: str, path: str | Path, names: dict | None = None) -> None:
    """Top-1 against severity (0 = clean; mean over types) and per corruption type (mean over severities)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_sev, by_type) = plt.subplots(1, 2, figsize=(13, 4.2), dpi=110, gridspec_kw={"width_ratios": [1, 2.4]})
    labels = [lb for lb, s in summary.items() if "per_type" in s]
    types = list(summary[labels[0]]["per_type"]) if labels else []
    width = 0.8 / max(1, len(labels))
    for k, label in enumerate(labels):
        s = summary[label]
        name = (names or {}).get(label, label)
        sev = [s[clean_key]["mean"]] + [v["mean"] for v in s["per_severity"]]
        sd = [s[clean_key]["std"]] + [v["std"] for v in s["per_severity"]]
        by_sev.errorbar(range(len(sev)), sev, yerr=sd, marker="o", ms=3, capsize=2, label=name)
        x = np.arange(len(types)) + (k - (len(labels) - 1) / 2) * width
        by_type.bar(x, [s["per_type"][t]["mean"] for t in types], width=width,
                    yerr=[s["per_type"][t]["std"] for t in types], capsize=1.5, label=name)
    by_sev.set_xlabel("severity (0 = clean)")
    by_sev.set_ylabel("top-1 (%)")
    by_sev.grid(alpha=0.3)
    by_sev.legend(fontsize=7)
    by_type.set_xticks(np.arange(len(types)))
    by_type.set_xticklabels([t.replace("_", " ") for t in types], rotation=30, ha="right", fontsize=7)
    by_type.set_ylabel("top-1 (%), mean over severities 1-5")
    by_type.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(results: dict, summary: dict, out: str | Path, names: dict | None = None) -> str:
    """``OUT/results.json``, ``OUT/table.md``, ``OUT/reliability.png``, ``OUT/robustness.png``; returns the table."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = table_rows(summary, names)
    text = print_table(rows)
    undefined = sorted({t for s in summary.values() for t in s.get("relative_undefined", [])})
    if undefined:
        note = ("rel. mCE: over the types whose corrupted error exceeds the baseline's clean error; left out: "
                + ", ".join(undefined))
        print(note, flush=True)
        text += "\n" + note
    runs = [{k: v for k, v in r.items() if not k.startswith("_")} for r in results["runs"]]
    body = {"settings": results["settings"], "labels": summary, "runs": runs}
    atomic_write_text(out / "results.json", json.dumps(body, indent=1, allow_nan=True) + "\n")
    atomic_write_text(out / "table.md", markdown_table(rows))
    plot_reliability(summary, out / "reliability.png", names)
    if results["settings"]["corruptions"]:
        plot_robustness(summary, "top1", out / "robustness.png", names)
    return text


# ----------------------------------------------------------------------------- command line
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", action="append", required=True, metavar="[LABEL=]PATH",
                   help="a run folder of examples/train.py (or one of its .safetensors); repeat; runs sharing a "
                        "label are seeds of one arm (default label: the run's mode)")
    p.add_argument("--out", required=True, help="output folder (results.json, table.md, *.png)")
    p.add_argument("--baseline", default=None, help="label whose errors normalise the mCE (the ERM run)")
    p.add_argument("--ema", action="store_true", help="evaluate the EMA weights (model_ema.safetensors)")
    p.add_argument("--corruptions", default="all",
                   help="all, none or a comma-separated list of: " + ", ".join(CORRUPTIONS))
    p.add_argument("--corruption-table", default="auto", choices=("auto",) + tuple(TABLES),
                   help="severity parameters: imagenet (ImageNet-C, 224 px), cifar (CIFAR-10-C, 32 px); auto: cifar "
                        "below 128 px crops (default)")
    p.add_argument("--seed", type=int, default=0, help="seed of the corruptions' draws (default 0)")
    p.add_argument("--samples", type=int, default=None, help="evaluate the first N images of the eval split only")
    for kind in SHIFTED:
        p.add_argument(f"--{kind}", default=None, metavar="DIR", help=f"{kind} in ImageFolder layout ({_layout(kind)})")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=4, help="DataLoader workers (decoding and corrupting)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return p.parse_args(argv)


def _corruption_list(text: str) -> tuple:
    if text == "all":
        return CORRUPTIONS
    if text == "none":
        return ()
    names = tuple(s.strip() for s in text.split(",") if s.strip())
    bad = [n for n in names if n not in CORRUPTIONS]
    if bad:
        raise ArgumentError(f"--corruptions: unknown {bad[0]!r}. Valid values are all, none or a comma-separated "
                            f"list of {{{', '.join(CORRUPTIONS)}}}.")
    return names


def main(argv=None) -> dict:
    """Evaluate as the command line says; returns ``{"settings", "labels", "runs"}`` (also ``OUT/results.json``)."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    runs = []
    for spec in args.run:
        label, sep, path = spec.partition("=")
        if not sep:
            path = spec
            cfg = Path(path) if Path(path).is_dir() else Path(path).parent
            label = json.loads((cfg / "config.json").read_text(encoding="utf-8"))["recipe"]["mode"] \
                if (cfg / "config.json").is_file() else Path(path).name
        runs.append(load_run(label, path, ema=args.ema, device=device))
    opts = Options(corruptions=_corruption_list(args.corruptions), table=args.corruption_table, seed=args.seed,
                   samples=args.samples, batch_size=args.batch_size, workers=args.workers, device=device,
                   shifted={k: getattr(args, k.replace("-", "_")) for k in SHIFTED
                            if getattr(args, k.replace("-", "_"))}, log=lambda m: print(m, flush=True))
    results = evaluate_runs(runs, opts)
    summary = summarize_labels(results, args.baseline)
    write_report(results, summary, args.out)
    print(f"wrote {Path(args.out) / 'results.json'}, table.md, reliability.png"
          + (", robustness.png" if opts.corruptions else ""), flush=True)
    return {"settings": results["settings"], "labels": summary,
            "runs": [{k: v for k, v in r.items() if not k.startswith("_")} for r in results["runs"]]}


if __name__ == "__main__":
    main()
