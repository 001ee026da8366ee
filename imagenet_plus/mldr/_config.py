"""ml-dr's reinforcement config (``config.pth.tar``) -> a checked :class:`Layout`.

The facts this module encodes are documented with their sources in ``docs/ml-dr-format.md``.
In short: ml-dr's ``config.pth.tar`` holds the run's YAML parameters; the transforms of
``config["reinforce"]["image_augmentation"]`` run in the order of ml-dr's own table
(``dr/transforms.py``), whatever order the config lists them in. :func:`parse_config` turns the
config into a :class:`Layout`: which published variant, which entries each record's compressed
parameter list holds, and the settings every record must agree with. A plain function of
picklable values, so the layout can travel to worker processes.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any, Mapping

from .._checks import Checks
from ..errors import ImportFormatError

__all__ = ["MLDR_RA_OPS", "TRANSFORM_ORDER", "VARIANTS", "DATASETS", "Layout", "parse_config",
           "ra_magnitude_table"]

#: ml-dr's RandAugment op list (``dr/transforms.py``, ``RandAugment.op_names``); a stored op is
#: an index into it. Same order as torchvision's ``RandAugment`` augmentation space.
MLDR_RA_OPS = ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness",
               "Color", "Contrast", "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize")
SIGNED_OPS = frozenset({1, 2, 3, 4, 5, 6, 7, 8, 9})  # ShearX .. Sharpness

#: ml-dr's transform table: transforms run in this order, whatever order the config lists them in.
TRANSFORM_ORDER = ("uint8", "resize", "center_crop", "random_crop", "random_resized_crop",
                   "random_horizontal_flip", "rand_augment", "to_tensor", "random_erase", "normalize",
                   "mixup", "cutmix")
_NO_PARAM = frozenset({"uint8", "center_crop", "to_tensor", "normalize"})
_MIXING = ("mixup", "cutmix")
_BASE = frozenset({"uint8", "random_horizontal_flip", "to_tensor", "normalize"})

#: The published variants, by the set of enabled transforms (names as this package's presets).
VARIANTS: dict[str, frozenset] = {
    "rrc": _BASE | {"random_resized_crop"},
    "rrc+mix": _BASE | {"random_resized_crop", "mixup", "cutmix"},
    "rrc+ra/re": _BASE | {"random_resized_crop", "rand_augment", "random_erase"},
    "rrc+mix+ra/re": _BASE | {"random_resized_crop", "rand_augment", "random_erase", "mixup", "cutmix"},
    "cifar": _BASE | {"resize", "random_crop", "rand_augment", "random_erase"},
}

#: ml-dr's datasets (``data.py``): name -> (number of classes, training-set size).
DATASETS = {"imagenet": (1000, 1281167), "cifar100": (100, 50000), "flowers102": (102, 1020),
            "food101": (101, 75750)}

# Options each transform's config may carry (ml-dr passes them to torchvision's constructor).
_OPTIONS = {
    "uint8": (), "to_tensor": (), "normalize": ("mean", "std"),
    "resize": ("size",), "random_crop": ("size", "padding"),
    "random_resized_crop": ("size", "scale", "ratio"), "random_horizontal_flip": ("p",),
    "rand_augment": ("p", "num_ops", "magnitude", "num_magnitude_bins"),
    "random_erase": ("p", "scale", "ratio", "value", "inplace"),
    "mixup": ("alpha", "p", "div_by"), "cutmix": ("alpha", "p"),
}
# flowers102/food101 reinforce.yaml in apple/ml-dr spell RandomResizedCrop's key this way; see the docs.
_ALIASES = {"random_resize_crop": "random_resized_crop"}


@dataclass(frozen=True)
class Layout:
    """What a config says about every record of an archive (picklable; built by :func:`parse_config`).

    Attributes:
        variant: one of :data:`VARIANTS`.
        dataset: ml-dr's dataset name (``imagenet``, ``cifar100``, ``flowers102``, ``food101``).
        num_classes: classes of the dataset (teacher ids lie in ``[0, num_classes)``).
        num_augmentations: records per sample (ml-dr's ``num_samples``, NS).
        topk: teacher entries per record (K).
        size: output side S of the crop (224).
        padding: the pad-crop's padding (``cifar``), else 0.
        slots: the names of the compressed parameter list's entries, in order.
        ra_num_ops, ra_magnitude, ra_num_bins, ra_p: RandAugment's settings (0 ops without it).
        ra_table: the unsigned magnitude of each op at ``ra_magnitude`` (float32 values, as Python floats).
        erase_p: RandomErasing's probability (None without it).
        mixup: ``(alpha, p, div_by)`` or None; cutmix: ``(alpha, p)`` or None.
        mean, std: Normalize's per-channel mean and std.
        config_member: the archive member the config came from.
        hflip_p: the horizontal flip's probability.
        rrc_scale, rrc_ratio: RandomResizedCrop's ranges (torchvision's defaults unless the config sets them).
        erase_scale, erase_ratio: RandomErasing's ranges (torchvision's defaults unless the config sets them).
        The last five only describe how ml-dr *drew* its parameters (this package draws original images'
        augmentations with them); no stored value depends on them.
    """

    variant: str
    dataset: str
    num_classes: int
    num_augmentations: int
    topk: int
    size: int
    padding: int
    slots: tuple
    ra_num_ops: int
    ra_magnitude: int
    ra_num_bins: int
    ra_p: float
    ra_table: tuple
    erase_p: float | None
    mixup: tuple | None
    cutmix: tuple | None
    mean: tuple
    std: tuple
    config_member: str
    hflip_p: float = 0.5
    rrc_scale: tuple = (0.08, 1.0)
    rrc_ratio: tuple = (3.0 / 4.0, 4.0 / 3.0)
    erase_scale: tuple = (0.02, 0.33)
    erase_ratio: tuple = (0.3, 3.3)

    @property
    def geometry(self) -> str:
        """``"rrc"`` (RandomResizedCrop) or ``"pad_crop"`` (resize, pad, random crop)."""
        return "pad_crop" if self.variant == "cifar" else "rrc"

    @property
    def mixing(self) -> bool:
        return self.mixup is not None or self.cutmix is not None


# ----------------------------------------------------------------------------- config
def ra_magnitude_table(magnitude: int, num_bins: int, size: int) -> tuple:
    """|magnitude| of each of the 14 ops at bin ``magnitude`` (torchvision's v1 RandAugment bins).

    Computed in float32 with ``torch.linspace`` exactly as torchvision's
    ``RandAugment._augmentation_space(num_bins, (size, size))``; ml-dr stores
    ``float(bins[magnitude])``, negated for signed ops with probability 1/2.
    """
    import torch

    lin = lambda hi, lo=0.0: float(torch.linspace(lo, hi, num_bins)[magnitude])  # noqa: E731
    posterize = int((8 - (torch.arange(num_bins) / ((num_bins - 1) / 4)).round().int())[magnitude])
    translate = lin(150.0 / 331.0 * size)
    return (0.0, lin(0.3), lin(0.3), translate, translate, lin(30.0), lin(0.9), lin(0.9), lin(0.9), lin(0.9),
            float(posterize), float(torch.linspace(255.0, 0.0, num_bins)[magnitude]), 0.0, 0.0)


def _cfg_error(member: str, what: str) -> ImportFormatError:
    return ImportFormatError(f"{member}: {what}. Known variants (ml-dr transforms enabled): "
                             + "; ".join(f"{k}: {', '.join(t for t in TRANSFORM_ORDER if t in v)}"
                                         for k, v in VARIANTS.items()) + ".")


def _checks(member: str) -> Checks:
    """The checks of the config's options, their errors naming ``member`` and listing the known variants."""
    return Checks("config option", lambda message: _cfg_error(member, message.rstrip(".")))


def _num(opts: Mapping, key: str, default, member: str, where: str, *, integer=False, low=None, high=None):
    v = opts.get(key, default)
    if integer:
        if isinstance(v, float) and v.is_integer():  # a pickled config may hold 400.0 for 400
            v = int(v)
        return _checks(member).int(v, f"{where}.{key}", low=low, high=high)
    return _checks(member).number(v, f"{where}.{key}", low=low, high=high)


def _side(v, member: str, where: str) -> int:
    if isinstance(v, (list, tuple)) and len(v) in (1, 2) and len(set(v)) == 1:
        v = v[0]
    if not (isinstance(v, numbers.Integral) and not isinstance(v, bool) and v > 0):
        raise _cfg_error(member, f"config option {where}.size = {v!r} is not a square size (an int or [s, s])")
    return int(v)


def _enabled(aug: Mapping, member: str) -> dict:
    out = {}
    for key, opts in aug.items():
        opts = {} if opts is None else opts
        if not isinstance(opts, Mapping):
            raise _cfg_error(member, f"image_augmentation.{key} is {opts!r}, not a mapping of options")
        opts = dict(opts)
        if not opts.pop("enable", True):  # ml-dr's clean_config drops disabled transforms
            continue
        key = _ALIASES.get(key, key)
        if key not in _OPTIONS:
            raise _cfg_error(member, f"image_augmentation holds transform {key!r}, which no published variant "
                                     f"uses (ml-dr's transforms: {', '.join(TRANSFORM_ORDER)})")
        extra = sorted(set(opts) - set(_OPTIONS[key]))
        if extra:
            raise _cfg_error(member, f"image_augmentation.{key} sets {extra}, options this importer does not "
                                     f"know how to replay (known: {list(_OPTIONS[key])})")
        out[key] = opts
    return out


def parse_config(config: Any, member: str = "config.pth.tar", *, num_augmentations: int | None = None) -> Layout:
    """Check an ml-dr config (the object in ``config.pth.tar``) and return its :class:`Layout`.

    Args:
        config: the unpickled config (a dict of ml-dr's YAML ``parameters``).
        member: the archive member it came from (named in errors).
        num_augmentations: override the records-per-sample count the config states.

    Returns:
        The archive's layout.

    Raises:
        ImportFormatError: not an ml-dr reinforcement config, uncompressed or joblib records,
            or a set of transforms/options that is not one of :data:`VARIANTS`.
    """
    rein = config.get("reinforce") if isinstance(config, Mapping) else None
    if not isinstance(rein, Mapping) or not isinstance(rein.get("image_augmentation"), Mapping):
        raise _cfg_error(member, "is not an ml-dr reinforcement config (no reinforce.image_augmentation mapping)")
    if rein.get("compress", True) is not True or rein.get("joblib", False):
        raise _cfg_error(member, f"records were written with reinforce.compress={rein.get('compress')!r}, "
                                 f"joblib={rein.get('joblib')!r}; only the published format (compress=true, "
                                 f"joblib=false) is supported")
    dataset = str(config.get("dataset", "imagenet")).lower()
    if dataset not in DATASETS:
        raise _cfg_error(member, f"dataset {dataset!r} is not one of ml-dr's {sorted(DATASETS)}")
    num_classes = DATASETS[dataset][0]
    if config.get("num_classes", num_classes) != num_classes:
        raise _cfg_error(member, f"num_classes {config.get('num_classes')!r} differs from {dataset}'s {num_classes}")
    ns = rein.get("num_samples") if num_augmentations is None else num_augmentations
    ns = _num({"num_samples": ns}, "num_samples", None, member, "reinforce", integer=True, low=1)
    topk = _num(rein, "topk", None, member, "reinforce", integer=True, low=1, high=num_classes)
    t = _enabled(rein["image_augmentation"], member)
    variant = next((k for k, v in VARIANTS.items() if v == frozenset(t)), None)
    if variant is None:
        raise _cfg_error(member, f"enabled transforms {[n for n in TRANSFORM_ORDER if n in t]} are not a "
                                 f"published variant")
    return _layout(t, variant, dataset, num_classes, ns, topk, member)


def _layout(t: dict, variant: str, dataset: str, num_classes: int, ns: int, topk: int, member: str) -> Layout:
    padding = 0
    if variant == "cifar":
        size = _side(t["random_crop"].get("size"), member, "random_crop")
        padding = _num(t["random_crop"], "padding", 0, member, "random_crop", integer=True, low=0)
        if _side(t["resize"].get("size"), member, "resize") != size:
            raise _cfg_error(member, "resize.size differs from random_crop.size")
    else:
        size = _side(t["random_resized_crop"].get("size"), member, "random_resized_crop")
    norm = t["normalize"]
    mean, std = norm.get("mean"), norm.get("std")
    ok = all(isinstance(v, (list, tuple)) and len(v) == 3 and all(isinstance(x, numbers.Real) for x in v)
             for v in (mean, std)) and all(x > 0 for x in std)
    if not ok:
        raise _cfg_error(member, f"normalize needs 3-channel mean and positive std, got {mean!r}, {std!r}")
    ra = t.get("rand_augment")
    num_ops = magnitude = bins = 0
    ra_p, table = 0.0, ()
    if ra is not None:
        num_ops = _num(ra, "num_ops", 2, member, "rand_augment", integer=True, low=1, high=16)
        bins = _num(ra, "num_magnitude_bins", 31, member, "rand_augment", integer=True, low=2, high=1000)
        magnitude = _num(ra, "magnitude", 9, member, "rand_augment", integer=True, low=0, high=bins - 1)
        ra_p = _num(ra, "p", 1.0, member, "rand_augment", low=0.0, high=1.0)
        table = ra_magnitude_table(magnitude, bins, size)
    erase_p = None
    ranges = {"rrc_scale": (0.08, 1.0), "rrc_ratio": (3.0 / 4.0, 4.0 / 3.0), "erase_scale": (0.02, 0.33),
              "erase_ratio": (0.3, 3.3)}
    if "random_resized_crop" in t:
        ranges["rrc_scale"] = _range(t["random_resized_crop"], "scale", ranges["rrc_scale"], member,
                                     "random_resized_crop", 1.0)
        ranges["rrc_ratio"] = _range(t["random_resized_crop"], "ratio", ranges["rrc_ratio"], member,
                                     "random_resized_crop", 100.0)
    if "random_erase" in t:
        erase_p = _num(t["random_erase"], "p", 0.5, member, "random_erase", low=0.0, high=1.0)
        ranges["erase_scale"] = _range(t["random_erase"], "scale", ranges["erase_scale"], member, "random_erase",
                                       1.0)
        ranges["erase_ratio"] = _range(t["random_erase"], "ratio", ranges["erase_ratio"], member, "random_erase",
                                       100.0)
    hflip_p = _num(t["random_horizontal_flip"], "p", 0.5, member, "random_horizontal_flip", low=0.0, high=1.0)
    mixup = cutmix = None
    if "mixup" in t:
        m = t["mixup"]
        mixup = (_num(m, "alpha", 1.0, member, "mixup", low=0.0), _num(m, "p", 1.0, member, "mixup", low=0.0,
                 high=1.0), _num(m, "div_by", 1.0, member, "mixup", low=1.0))
    if "cutmix" in t:
        c = t["cutmix"]
        cutmix = (_num(c, "alpha", 1.0, member, "cutmix", low=0.0), _num(c, "p", 1.0, member, "cutmix", low=0.0,
                  high=1.0))
    slots = (("id2",) if (mixup or cutmix) else ()) + tuple(n for n in TRANSFORM_ORDER
                                                             if n in t and n not in _NO_PARAM)
    return Layout(variant=variant, dataset=dataset, num_classes=num_classes, num_augmentations=ns, topk=topk,
                  size=size, padding=padding, slots=slots, ra_num_ops=num_ops, ra_magnitude=magnitude,
                  ra_num_bins=bins, ra_p=ra_p, ra_table=table, erase_p=erase_p, mixup=mixup, cutmix=cutmix,
                  mean=tuple(float(x) for x in mean), std=tuple(float(x) for x in std), config_member=member,
                  hflip_p=hflip_p, **ranges)


def _range(opts: Mapping, key: str, default: tuple, member: str, where: str, high: float) -> tuple:
    return tuple(_checks(member).pair(opts.get(key, default), f"{where}.{key}", low=0.0, high=high, low_open=True))
