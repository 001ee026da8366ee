"""Write archives in apple/ml-dr's published format (a fake written from docs/ml-dr-format.md).

The writer draws every parameter the way ml-dr's reinforcement run draws it (torchvision's
own ``get_params`` and RandAugment's augmentation space, numpy's Beta and ``np.clip`` for
CutMix, which is why CutMix boxes come out as ``np.int64``), keeps the drawn values as
*truth* arrays (the field names of ``imagenet_plus.mldr.SampleRecords``), encodes them into
ml-dr's compressed parameter lists, pairs them with a random teacher's top-k from
``np.argpartition`` (unsorted), and saves each sample with
``torch.save((index, records), "{index}.pth.tar", pickle_protocol=4)`` and the config with
``torch.save(config, "config.pth.tar")``. Archives come as ``.tar.gz``, ``.tar`` or folder.
"""

from __future__ import annotations

import io
import random
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms as T

#: The published reinforcements: name -> (ml-dr dataset, variant).
PUBLISHED = {
    "imagenet_plus_rrc": ("imagenet", "rrc"),
    "imagenet_plus_mixing": ("imagenet", "rrc+mix"),
    "imagenet_plus_randaug": ("imagenet", "rrc+ra/re"),
    "imagenet_plus_mixing_randaug": ("imagenet", "rrc+mix+ra/re"),
    "cifar100": ("cifar100", "cifar"),
    "flowers_102": ("flowers102", "rrc+ra/re"),
    "food_101": ("food101", "rrc+ra/re"),
}
NUM_CLASSES = {"imagenet": 1000, "cifar100": 100, "flowers102": 102, "food101": 101}
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
CIFAR_MEAN = [0.507075159237, 0.4865488733149, 0.440917843367]
CIFAR_STD = [0.267334285879, 0.2564384629170, 0.276150471325]
S = 224


def mldr_config(dataset: str, variant: str, *, ns: int, topk: int = 10, misspelled_rrc: bool = False) -> dict:
    """The dict ml-dr's ``reinforce.py`` saves as ``config.pth.tar`` (its YAML ``parameters`` plus
    what ``main`` adds), with ``image_augmentation`` in the YAML's order (normalize before erasing)."""
    aug: dict = {"uint8": {"enable": True}}
    if variant == "cifar":
        aug["resize"] = {"size": S}
        aug["random_crop"] = {"size": S, "padding": 16}
    else:
        aug["random_resize_crop" if misspelled_rrc else "random_resized_crop"] = {"enable": True, "size": S}
    aug["random_horizontal_flip"] = {"enable": True, "p": 0.5}
    if "ra/re" in variant or variant == "cifar":
        aug["rand_augment"] = {"enable": True, "p": 1.0}
    aug["to_tensor"] = {"enable": True}
    mean, std = (CIFAR_MEAN, CIFAR_STD) if dataset == "cifar100" else (IMAGENET_MEAN, IMAGENET_STD)
    aug["normalize"] = {"mean": mean, "std": std}
    if "ra/re" in variant or variant == "cifar":
        aug["random_erase"] = {"enable": True, "p": 0.25}
    if "mix" in variant:
        aug["mixup"] = {"enable": True, "alpha": 1.0, "div_by": 2.0, "p": 0.5}
        aug["cutmix"] = {"enable": True, "alpha": 1.0, "p": 0.5}
    teacher = ({"timm_ensemble": True, "name": "ig_resnext101_32x8d,ig_resnext101_32x16d,ig_resnext101_32x32d,"
                "ig_resnext101_32x48d"} if dataset == "imagenet" else {"ensemble": True})
    return {
        "dataset": dataset, "teacher": teacher, "batch_size": 32, "print_freq": 10,
        "dist_url": "tcp://127.0.0.1:23333", "dist_backend": "nccl", "multiprocessing_distributed": True,
        "world_size": 8, "rank": 0, "workers": 88, "pin_memory": True, "seed": None, "gpu": None,
        "download_data": False, "data_path": "", "artifact_path": "", "num_classes": NUM_CLASSES[dataset],
        "distributed": True,
        "reinforce": {"num_samples": ns, "num_candidates": None, "topk": topk, "compress": True, "joblib": False,
                      "gzip": True, "image_augmentation": aug},
    }


# ----------------------------------------------------------------------------- draws
def _draw_geometry(variant: str, hw: tuple[int, int]):
    """RandomResizedCrop box (top, left, height, width), or the CIFAR crop's (top, left)."""
    if variant == "cifar":  # Resize(224) of a square image, then RandomCrop(224, padding=16)
        top, left, _, _ = T.RandomCrop.get_params(torch.empty(3, S + 32, S + 32), (S, S))
        return (top, left)
    return tuple(T.RandomResizedCrop.get_params(torch.empty(3, *hw), [0.08, 1.0], [3.0 / 4.0, 4.0 / 3.0]))


_OP_META = T.RandAugment()._augmentation_space(31, (S, S))


def draw_randaugment(num_ops: int = 2, magnitude: int = 9) -> list:
    """(op index, signed magnitude) pairs, drawn with the calls torchvision's RandAugment makes."""
    pairs = []
    for _ in range(num_ops):
        op_index = int(torch.randint(len(_OP_META), (1,)).item())
        mags, signed = _OP_META[list(_OP_META)[op_index]]
        mag = float(mags[magnitude].item()) if mags.ndim > 0 else 0.0
        if signed and torch.randint(2, (1,)):
            mag *= -1.0
        pairs.append((op_index, mag))
    return pairs


def draw_erase(p: float = 0.25):
    """None (skipped with probability 1 - p) or torchvision RandomErasing's (top, left, height, width)."""
    if torch.rand(1) > p:
        return None
    top, left, h, w, _ = T.RandomErasing.get_params(torch.empty(3, S, S), scale=(0.02, 0.33), ratio=(0.3, 3.3))
    return (top, left, h, w)


def draw_cutmix(rng: np.random.RandomState, lam: float):
    """ml-dr's CutMix box for a 224 x 224 image: ``(x1, y1, x2, y2)`` rows then columns, np.int64."""
    cut = np.sqrt(1.0 - lam)
    ch, cw = int(S * cut), int(S * cut)
    cx, cy = rng.randint(S), rng.randint(S)
    return (np.clip(cx - ch // 2, 0, S), np.clip(cy - cw // 2, 0, S),
            np.clip(cx + ch // 2, 0, S), np.clip(cy + cw // 2, 0, S))


def _draw_single(variant: str, hw) -> dict:
    p = {"crop": _draw_geometry(variant, hw), "flip": torch.rand(1).item() < 0.5}
    if "ra/re" in variant or variant == "cifar":
        p["ra"] = draw_randaugment()
        p["erase"] = draw_erase()
    return p


def _teacher(rng: np.random.RandomState, num_classes: int, k: int):
    logits = (rng.standard_normal(num_classes) * 3).astype(np.float32)
    p = np.exp(logits - logits.max())
    p = (p / p.sum()).astype(np.float32)
    ids = np.argpartition(p, -k)[-k:]
    return p[ids].tolist(), ids.tolist()


# ----------------------------------------------------------------------------- one sample
@dataclass
class FakeSample:
    """A written sample: ml-dr's ``(index, records)`` object and the truth arrays behind it."""

    index: int
    obj: tuple
    truth: dict = field(default_factory=dict)


def _encode(variant: str, own: dict, partner: dict | None, id2, mixup, cutmix, resize_entry):
    """ml-dr's ``Compose.compress``: [id2] + one entry per random transform in table order (+ mixing)."""
    mixing = "mix" in variant
    out = [id2] if mixing else []
    names = (["resize"] if variant == "cifar" and resize_entry != "none" else []) + ["crop", "flip"]
    if "ra" in own:
        names += ["ra", "erase"]
    for n in names:
        if n == "resize":
            v = S if resize_entry == "int" else [S]
            out.append([v, v] if id2 is not None else v)
            continue
        conv = (lambda x: None if x is None else list(x)) if n == "ra" else (lambda x: x)
        out.append([conv(own[n]), conv(partner[n])] if id2 is not None else conv(own[n]))
    if mixing:
        out += [mixup, None if cutmix is None else [cutmix[0]] + list(cutmix[1])]
    return out


def draw_sample(index: int, variant: str, sizes: list, *, ns: int, topk: int, num_classes: int,
                rng: np.random.RandomState, resize_entry: str = "int") -> FakeSample:
    """Draw sample ``index``'s ``ns`` records (global torch RNG must be seeded by the caller)."""
    mixing = "mix" in variant
    records, truth = [], {k: [] for k in ("crop", "flip", "probs", "ids")}
    for _ in range(ns):
        own = _draw_single(variant, sizes[index])
        id2 = partner = mix_lam = cut = None
        if mixing:
            pidx = int(rng.randint(len(sizes)))
            partner = _draw_single(variant, sizes[pidx])
            mix_lam = None if torch.rand(1) > 0.5 else rng.beta(1.0, 1.0) / 2.0
            if torch.rand(1) <= 0.5:
                lam = rng.beta(1.0, 1.0)
                cut = (lam, draw_cutmix(rng, lam))
            id2 = pidx if (mix_lam is not None or cut is not None) else None
        probs, ids = _teacher(rng, num_classes, topk)
        records.append({"params": _encode(variant, own, partner, id2, mix_lam, cut, resize_entry),
                        "prob": (probs, ids)})
        _add_truth(truth, own, partner if id2 is not None else None, id2, mix_lam, cut, probs, ids, mixing)
    return FakeSample(index, (index, records), {k: np.array(v) for k, v in truth.items()})


def _add_truth(truth, own, partner, id2, mix_lam, cut, probs, ids, mixing):
    order = sorted(range(len(ids)), key=lambda c: (-probs[c], ids[c]))
    truth["probs"].append([np.float32(probs[c]) for c in order])
    truth["ids"].append([ids[c] for c in order])
    for prefix, p in (("", own), ("partner_", partner)):
        if prefix and not mixing:
            continue
        z = p or {"crop": (0,) * len(own["crop"]), "flip": False, "ra": [(-1, 0.0)] * 2, "erase": None}
        truth.setdefault(prefix + "crop", []).append(list(z["crop"]))
        truth.setdefault(prefix + "flip", []).append(z["flip"])
        if "ra" in own:
            ra = z["ra"] if z["ra"] is not None else [(-1, 0.0)] * 2
            truth.setdefault(prefix + "ra_op", []).append([o for o, _ in ra])
            truth.setdefault(prefix + "ra_magnitude", []).append([m for _, m in ra])
            truth.setdefault(prefix + "erase", []).append(list(z["erase"] or (0, 0, 0, 0)))
    if mixing:
        truth.setdefault("partner", []).append(-1 if id2 is None else id2)
        truth.setdefault("mixup", []).append(mix_lam is not None)
        truth.setdefault("mixup_lam", []).append(mix_lam or 0.0)
        truth.setdefault("cutmix", []).append(cut is not None)
        truth.setdefault("cutmix_lam", []).append(cut[0] if cut else 0.0)
        x1, y1, x2, y2 = cut[1] if cut else (0, 0, 0, 0)
        truth.setdefault("cutmix_box", []).append([x1, y1, x2 - x1, y2 - y1])


# ----------------------------------------------------------------------------- archives
def torch_save_bytes(obj, name: str, tmp: Path, *, protocol: int | None = 4) -> bytes:
    """``torch.save(obj, tmp / name, pickle_protocol=protocol)``'s bytes (the zip's records named after the file)."""
    path = tmp / name
    if protocol is None:
        torch.save(obj, path)
    else:
        torch.save(obj, path, pickle_protocol=protocol)
    data = path.read_bytes()
    path.unlink()
    return data


@dataclass
class FakeArchive:
    """What :func:`write_archive` wrote: where, the config, each sample's truth arrays, member order."""

    path: Path
    config: dict
    samples: dict
    members: list


def pack(path: Path, members: list[tuple[str, bytes]], form: str, *, dir_entry: str | None = None) -> Path:
    """Write ``(name, bytes)`` members as ``form``: ``tar.gz``, ``tar`` or ``folder`` (in that order)."""
    if form == "folder":
        for name, data in members:
            (path / name).parent.mkdir(parents=True, exist_ok=True)
            (path / name).write_bytes(data)
        return path
    with tarfile.open(path, "w:gz" if form == "tar.gz" else "w") as tf:
        if dir_entry:
            info = tarfile.TarInfo(dir_entry.rstrip("/"))
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tf.addfile(info)
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tf.addfile(info, io.BytesIO(data))
    return path


def write_archive(path: str | Path, name: str = "imagenet_plus_randaug", *, sizes: list, ns: int = 4,
                  topk: int = 10, form: str = "tar.gz", seed: int = 0, prefix: str = "reinforced_data/",
                  config_at: str | int = "shuffled", resize_entry: str = "int", misspelled_rrc: bool = False,
                  extra: list | None = None) -> FakeArchive:
    """Write a fake of published reinforcement ``name`` over a dataset with image ``sizes`` (H, W).

    Args:
        path: the archive file, or the folder to create for ``form="folder"``.
        name: a key of :data:`PUBLISHED`.
        sizes: each sample's (H, W); the dataset size N is ``len(sizes)``.
        ns, topk: records per sample, teacher entries per record.
        form: ``"tar.gz"``, ``"tar"`` or ``"folder"``.
        seed: seeds the draws (torch's global RNG inside ``fork_rng``, and a numpy RandomState).
        prefix: folder prefix of the members (ml-dr's tar command gives ``reinforced_data/``).
        config_at: ``"first"``, ``"last"``, ``"shuffled"`` (a random position, like a file system
            listing) or a position; samples are always in a shuffled order.
        resize_entry: CIFAR's Resize entry as ``"int"`` (224), ``"list"`` ([224]) or ``"none"``.
        misspelled_rrc: write flowers102/food101's ``random_resize_crop`` key (apple/ml-dr's YAML).
        extra: more ``(name, bytes)`` members to add (after the samples).
    """
    dataset, variant = PUBLISHED[name]
    path = Path(path)
    config = mldr_config(dataset, variant, ns=ns, topk=topk, misspelled_rrc=misspelled_rrc)
    rng = np.random.RandomState(seed)
    tmp = path.parent / f".{path.name}.parts"
    tmp.mkdir(parents=True, exist_ok=True)
    samples, members = {}, []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for i in range(len(sizes)):
            s = draw_sample(i, variant, sizes, ns=ns, topk=topk, num_classes=NUM_CLASSES[dataset], rng=rng,
                            resize_entry=resize_entry)
            samples[i] = s
            members.append((f"{prefix}{i}.pth.tar", torch_save_bytes(s.obj, f"{i}.pth.tar", tmp)))
    random.Random(seed).shuffle(members)
    cfg = (f"{prefix}config.pth.tar", torch_save_bytes(config, "config.pth.tar", tmp, protocol=None))
    pos = {"first": 0, "last": len(members)}.get(config_at, config_at)
    if pos == "shuffled":
        pos = random.Random(seed + 1).randint(0, len(members))
    members.insert(pos, cfg)
    members += list(extra or ())
    tmp.rmdir()
    pack(path, members, form, dir_entry=prefix or None)
    return FakeArchive(path, config, samples, [n for n, _ in members])
