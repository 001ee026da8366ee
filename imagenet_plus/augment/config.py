"""Policy configs: the presets of the paper and their validation.

A policy config is a plain, JSON-able dict (it is stored in the manifest and
may come from YAML). :func:`resolve_config` fills in every default, checks
every key and value, and returns the *complete* config; a policy rebuilt from
that dict is the same policy. Unknown keys, unknown names and out-of-range
values raise :class:`~imagenet_plus.errors.PolicyError` naming the key, the
value and the valid values.

Keys (sections set to ``None`` are switched off)::

    name          free-form label (the preset's name by default)
    output_size   S, the side of the square output image (8 .. 4096)
    geometry      {"kind": "rrc", "scale": [0.08, 1.0], "ratio": [3/4, 4/3],
                   "interpolation": "bilinear", "antialias": True}
                  or {"kind": "pad_crop", "padding": 16, "fill": 0,
                      "interpolation": "bilinear", "antialias": True}
                  (pad_crop: resize the shorter side to S, pad, random S x S crop)
    hflip         probability of a horizontal flip (0 .. 1)
    randaugment   {"num_ops": 2, "magnitude": 9, "num_magnitude_bins": 31,
                   "interpolation": "nearest", "fill": 0}
    erasing       {"p": 0.25, "scale": [0.02, 0.33], "ratio": [0.3, 3.3], "value": 0}
    mix           {"mixup_alpha": 0.2, "cutmix_alpha": 1.0, "switch_prob": 0.5, "prob": 1.0}
    mean, std     normalisation constants (3 floats each; ImageNet's by default)
    flavour       absent (torchvision's semantics) or "ml-dr": apple/ml-dr's replay semantics
                  (PIL crops, MixUp then CutMix on normalised floats with the partner's params
                  stored inline; its "mix" section has other keys): see
                  :mod:`imagenet_plus.augment.mldr`. Configs without it are unchanged.
"""

from __future__ import annotations

import copy
import math
from typing import Any

from ..errors import PolicyError

__all__ = ["PRESETS", "IMAGENET_MEAN", "IMAGENET_STD", "RA_OPS", "FLAVOURS", "resolve_config"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: The 14 RandAugment ops of torchvision (``transforms.v2.RandAugment``), in its order;
#: the stored op id is the index in this tuple.
RA_OPS = (
    "Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness",
    "Color", "Contrast", "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize",
)

_RRC = {"kind": "rrc", "scale": [0.08, 1.0], "ratio": [3.0 / 4.0, 4.0 / 3.0],
        "interpolation": "bilinear", "antialias": True}
_PAD_CROP = {"kind": "pad_crop", "padding": 16, "fill": 0, "interpolation": "bilinear", "antialias": True}
_RA = {"num_ops": 2, "magnitude": 9, "num_magnitude_bins": 31, "interpolation": "nearest", "fill": 0}
_RE = {"p": 0.25, "scale": [0.02, 0.33], "ratio": [0.3, 3.3], "value": 0}
_MIX = {"mixup_alpha": 0.2, "cutmix_alpha": 1.0, "switch_prob": 0.5, "prob": 1.0}


def _preset(name, geometry, ra, re, mix):
    return {
        "name": name, "output_size": 224, "geometry": geometry, "hflip": 0.5,
        "randaugment": ra, "erasing": re, "mix": mix,
        "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
    }


#: The paper's policies (Faghri et al. 2023, Table 1 / Sec. 4): name -> complete config.
PRESETS: dict[str, dict[str, Any]] = {
    "rrc": _preset("rrc", _RRC, None, None, None),
    "rrc+mix": _preset("rrc+mix", _RRC, None, None, _MIX),
    "rrc+ra/re": _preset("rrc+ra/re", _RRC, _RA, _RE, None),
    "rrc+mix+ra/re": _preset("rrc+mix+ra/re", _RRC, _RA, _RE, _MIX),
    "cifar": _preset("cifar", _PAD_CROP, _RA, _RE, None),
}

_TOP_KEYS = ("name", "output_size", "geometry", "hflip", "randaugment", "erasing", "mix", "mean", "std", "flavour")
#: Values of the ``flavour`` key: torchvision's semantics (the key absent) or apple/ml-dr's.
FLAVOURS = ("torchvision", "ml-dr")
_SECTION_DEFAULTS = {"randaugment": _RA, "erasing": _RE, "mix": _MIX}
_GEOMETRY_DEFAULTS = {"rrc": _RRC, "pad_crop": _PAD_CROP}


def _fail(key: str, value: Any, valid: str) -> PolicyError:
    return PolicyError(f"policy config key {key!r} has invalid value {value!r}; valid values: {valid}")


def _check_keys(section: str, d: dict, allowed) -> None:
    for k in d:
        if k not in allowed:
            where = f"section {section!r}" if section else "policy config"
            raise PolicyError(
                f"unknown key {k!r} in {where}; valid keys are {{{', '.join(allowed)}}}. Remove or rename it.")


def _num(key, v, lo, hi, *, integer=False, lo_open=False):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not isinstance(v, int)):
        raise _fail(key, v, f"{'an integer' if integer else 'a number'} in {'(' if lo_open else '['}{lo}, {hi}]")
    if not math.isfinite(v) or v < lo or v > hi or (lo_open and v == lo):
        raise _fail(key, v, f"{'an integer' if integer else 'a number'} in {'(' if lo_open else '['}{lo}, {hi}]")
    return int(v) if integer else float(v)


def _pair(key, v, lo, hi, lo_open=False):
    if not isinstance(v, (list, tuple)) or len(v) != 2:
        raise _fail(key, v, f"a pair [low, high] of numbers in [{lo}, {hi}] with low <= high")
    a, b = (_num(key, x, lo, hi, lo_open=lo_open) for x in v)
    if a > b:
        raise _fail(key, v, "a pair [low, high] with low <= high")
    return [a, b]


def _choice(key, v, valid):
    if v not in valid:
        raise _fail(key, v, "{" + ", ".join(map(str, valid)) + "}")
    return v


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            if k == "geometry" and v.get("kind", out[k]["kind"]) != out[k]["kind"]:
                out[k] = copy.deepcopy(v)  # a different geometry kind replaces the section
            else:
                out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def resolve_config(name_or_config: str | dict, overrides: dict | None = None) -> dict:
    """Return the complete, validated config for a preset name or a (partial) config dict.

    A dict without ``"name"`` (or with a name that is not a preset) starts from
    the ``"rrc"`` defaults for the missing top-level keys; a dict whose
    ``"name"`` is a preset starts from that preset. ``overrides`` are merged on
    top (dict-valued sections are merged key by key; ``None`` switches a section off).

    Raises:
        PolicyError: unknown preset, unknown key, or invalid value.
    """
    if isinstance(name_or_config, str):
        if name_or_config not in PRESETS:
            raise _fail("name", name_or_config, "{" + ", ".join(PRESETS) + "} or a config dict")
        cfg = copy.deepcopy(PRESETS[name_or_config])
    elif isinstance(name_or_config, dict):
        _check_keys("", name_or_config, _TOP_KEYS)
        base = PRESETS.get(name_or_config.get("name"), PRESETS["rrc"]) if isinstance(name_or_config.get("name"), str) \
            else PRESETS["rrc"]
        if name_or_config.get("name") not in PRESETS:
            base = {**base, "randaugment": None, "erasing": None, "mix": None}
        cfg = _merge(base, name_or_config)
        if "name" not in name_or_config:
            cfg["name"] = "custom"
    else:
        raise PolicyError(f"policy must be a preset name or a config dict, got {type(name_or_config).__name__}; "
                          f"valid names: {{{', '.join(PRESETS)}}}")
    if overrides:
        _check_keys("", overrides, _TOP_KEYS)
        cfg = _merge(cfg, overrides)
    return _validate(cfg)


def _section(cfg, key, defaults):
    v = cfg.get(key)
    if v is None or v is False:
        return None
    if not isinstance(v, dict):
        raise _fail(key, v, "a dict (section) or null to switch it off")
    _check_keys(key, v, tuple(defaults))
    return {**copy.deepcopy(defaults), **v}


def _validate(cfg: dict) -> dict:
    out: dict[str, Any] = {}
    name = cfg.get("name", "custom")
    if not isinstance(name, str):
        raise _fail("name", name, "a string")
    out["name"] = name
    flavour = _choice("flavour", cfg.get("flavour", "torchvision"), FLAVOURS)
    if flavour != "torchvision":  # only recorded when set: every torchvision-flavour config stays as it was
        out["flavour"] = flavour
    size = out["output_size"] = _num("output_size", cfg.get("output_size", 224), 8, 4096, integer=True)

    geo = cfg.get("geometry")
    if not isinstance(geo, dict):
        raise _fail("geometry", geo, 'a dict with "kind" in {rrc, pad_crop}')
    kind = _choice("geometry.kind", geo.get("kind", "rrc"), tuple(_GEOMETRY_DEFAULTS))
    g = {**copy.deepcopy(_GEOMETRY_DEFAULTS[kind]), **geo}
    _check_keys("geometry", g, tuple(_GEOMETRY_DEFAULTS[kind]))
    if kind == "rrc":
        g["scale"] = _pair("geometry.scale", g["scale"], 0.0, 1.0, lo_open=True)
        g["ratio"] = _pair("geometry.ratio", g["ratio"], 0.0, 100.0, lo_open=True)
    else:
        g["padding"] = _num("geometry.padding", g["padding"], 0, 4096, integer=True)
        g["fill"] = _num("geometry.fill", g["fill"], 0, 255, integer=True)
    g["interpolation"] = _choice("geometry.interpolation", g["interpolation"], ("bilinear", "bicubic", "nearest"))
    if not isinstance(g["antialias"], bool):
        raise _fail("geometry.antialias", g["antialias"], "true or false")
    out["geometry"] = g
    out["hflip"] = _num("hflip", cfg.get("hflip", 0.5), 0.0, 1.0)

    ra = _section(cfg, "randaugment", _RA)
    if ra is not None:
        ra["num_ops"] = _num("randaugment.num_ops", ra["num_ops"], 0, 6, integer=True)
        ra["num_magnitude_bins"] = _num("randaugment.num_magnitude_bins", ra["num_magnitude_bins"], 2, 1000,
                                        integer=True)
        ra["magnitude"] = _num("randaugment.magnitude", ra["magnitude"], 0, ra["num_magnitude_bins"] - 1,
                               integer=True)
        ra["interpolation"] = _choice("randaugment.interpolation", ra["interpolation"], ("nearest", "bilinear"))
        ra["fill"] = _num("randaugment.fill", ra["fill"], 0, 255, integer=True)
    out["randaugment"] = ra

    re = _section(cfg, "erasing", _RE)
    if re is not None:
        re["p"] = _num("erasing.p", re["p"], 0.0, 1.0)
        re["scale"] = _pair("erasing.scale", re["scale"], 0.0, 1.0, lo_open=True)
        re["ratio"] = _pair("erasing.ratio", re["ratio"], 0.0, 100.0, lo_open=True)
        re["value"] = _num("erasing.value", re["value"], 0, 255, integer=True)
    out["erasing"] = re

    if flavour == "ml-dr":
        from .mldr import check_config

        mix = check_config(cfg, out)
    else:
        mix = _section(cfg, "mix", _MIX)
    if mix is not None and flavour == "torchvision":
        mix["mixup_alpha"] = _num("mix.mixup_alpha", mix["mixup_alpha"], 0.0, 100.0)
        mix["cutmix_alpha"] = _num("mix.cutmix_alpha", mix["cutmix_alpha"], 0.0, 100.0)
        if mix["mixup_alpha"] == 0 and mix["cutmix_alpha"] == 0:
            raise _fail("mix", mix, "at least one of mixup_alpha, cutmix_alpha > 0 (or mix: null to switch mixing off)")
        mix["switch_prob"] = _num("mix.switch_prob", mix["switch_prob"], 0.0, 1.0)
        mix["prob"] = _num("mix.prob", mix["prob"], 0.0, 1.0)
    out["mix"] = mix

    for key, default in (("mean", IMAGENET_MEAN), ("std", IMAGENET_STD)):
        v = cfg.get(key, list(default))
        if not isinstance(v, (list, tuple)) or len(v) != 3:
            raise _fail(key, v, "a list of 3 numbers (per RGB channel, on the [0, 1] scale)")
        out[key] = [_num(key, x, 0.0, 1e3, lo_open=(key == "std")) for x in v]
    return out
