"""Policy configs: the flavour registry, the deep merge, and resolving a config from its stages' sections.

A policy config is a plain, JSON-able dict (it is stored in the manifest and
may come from YAML). :func:`resolve_config` fills in every default, checks
every key and value, and returns the *complete* config; a policy rebuilt from
that dict is the same policy. Unknown keys, unknown names and out-of-range
values raise :class:`~imagenet_plus.errors.PolicyError` naming the key, the
value and the valid values (the checks of :class:`imagenet_plus._checks.Checks`, as :data:`POLICY`).

The config's own keys are ``name`` (free-form; the preset's name by default), ``output_size``
(S, the side of the square output image, 8 .. 4096), ``mean`` and ``std`` (normalisation
constants, 3 floats each; ImageNet's by default) and ``flavour``. Every other key is a stage's
*section*: each stage class declares its own (:class:`~imagenet_plus.augment.stages.Stage`:
``section``, ``defaults``, ``optional``, ``kind`` and ``check_section``), and a *flavour* is an
ordered list of stage classes registered under a name (:func:`register_flavour`; the package's own,
``"torchvision"``, in :mod:`~imagenet_plus.augment.stages`, whose presets are the paper's
policies, and ``"ml-dr"`` in :mod:`~imagenet_plus.augment.mldr`). A config without ``flavour``
is the torchvision flavour and records none, so existing configs are unchanged. The
torchvision flavour's sections (set a section to ``None`` to switch it off)::

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

``"flavour": "ml-dr"`` is apple/ml-dr's replay semantics (PIL crops, MixUp then CutMix on
normalised floats with the partner's params stored inline; its ``mix`` section has other keys):
see :mod:`imagenet_plus.augment.mldr`.

This module imports no stage: stage classes are described by what they declare, and the
flavour modules fill :data:`FLAVOURS` and :data:`PRESETS` when :mod:`imagenet_plus.augment` is imported.
"""

from __future__ import annotations

import collections.abc
import copy
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable, Mapping, Sequence

from .._checks import Checks
from ..errors import PolicyError

__all__ = ["PRESETS", "IMAGENET_MEAN", "IMAGENET_STD", "FLAVOURS", "DEFAULT_FLAVOUR", "POLICY", "Flavour",
           "register_flavour", "resolve_config", "deep_merge", "MERGE"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: The checks of a policy config's keys: messages name "policy config key 'x'"; errors are PolicyError.
POLICY = Checks("policy config key", PolicyError, quote=True)
#: The flavour of a config without a ``flavour`` key.
DEFAULT_FLAVOUR = "torchvision"
#: The config's own keys; every other key is a stage's section.
_OWN_KEYS = ("name", "output_size", "mean", "std", "flavour")

#: ``rule`` of :func:`deep_merge` returns this to let the default rule decide.
MERGE = object()


def _copy(value: Any) -> Any:
    """A deep copy; JSON-like values (dicts, lists, strings, numbers) without ``copy.deepcopy``'s overhead."""
    t = type(value)
    if t is dict:
        return {k: _copy(v) for k, v in value.items()}
    if t is list:
        return [_copy(v) for v in value]
    if t in (str, int, float, bool, type(None)):
        return value
    return copy.deepcopy(value)


def _is_mapping(value: Any) -> bool:
    return type(value) is dict or isinstance(value, collections.abc.Mapping)


def deep_merge(base: Mapping, over: Mapping, *, rule: Callable[[str, Any, Any], Any] | None = None,
               unknown: Callable[[str, list[str]], Exception] | None = None, prefix: str = "") -> dict:
    """A deep copy of ``base`` with ``over`` merged into it, key by key (neither is modified).

    A key whose old and new values are both mappings is merged recursively; any other new value
    replaces the old one (deep-copied). Used for policy configs and the examples' training recipes.

    Args:
        base: the settings merged into.
        over: the settings that win.
        rule: ``rule(path, old, new)`` for every key of ``over`` (``path`` dotted from the top,
            ``old`` is :data:`MERGE` where ``base`` lacks the key; neither may be modified): return
            the key's new value, or :data:`MERGE` for the default rule; it may raise to refuse a value.
        unknown: refuse keys of ``over`` that ``base`` lacks: ``unknown(path, sorted keys of
            base at that level)`` returns the exception to raise. ``None``: new keys are added.
        prefix: the dotted path of ``base`` inside the whole (for ``rule`` and ``unknown``).
    """
    out = dict(base)
    for k, v in over.items():
        path = f"{prefix}{k}"
        if unknown is not None and k not in out:
            raise unknown(path, sorted(out))
        old = base.get(k, MERGE)
        value = MERGE if rule is None else rule(path, old, v)
        if value is not MERGE:
            out[k] = value
        elif _is_mapping(v) and _is_mapping(old):
            out[k] = deep_merge(old, v, rule=rule, unknown=unknown, prefix=path + ".")
        else:
            out[k] = _copy(v)
    for k, v in base.items():
        if k not in over:
            out[k] = _copy(v)
    return out


@dataclass(frozen=True)
class Flavour:
    """A registered flavour: its stage classes in policy order, grouped by the section each declares."""

    name: str
    stages: tuple[type, ...]

    @cached_property
    def sections(self) -> dict[str, tuple[type, ...]]:
        """Section key -> the stage classes that read it (several: alternatives picked by ``kind``)."""
        out: dict[str, tuple[type, ...]] = {}
        for cls in self.stages:
            out[cls.section] = out.get(cls.section, ()) + (cls,)
        return out

    @cached_property
    def keys(self) -> tuple[str, ...]:
        """Every key a config of this flavour may hold, in the order the complete config lists them."""
        return ("name", "output_size", *self.sections, "mean", "std", "flavour")

    def stage_class(self, key: str, section: Any) -> type:
        """The stage class of ``key`` for a checked ``section`` (by its ``kind`` where there are several)."""
        classes = self.sections[key]
        if classes[0].kind is None:
            return classes[0]
        return next(c for c in classes if c.kind == section["kind"])


#: Flavour name -> :class:`Flavour`, filled by :func:`register_flavour`.
FLAVOURS: dict[str, Flavour] = {}
#: Preset name -> complete config (the paper's policies, Faghri et al. 2023, Table 1 / Sec. 4), filled by
#: :func:`register_flavour`.
PRESETS: dict[str, dict[str, Any]] = {}


def register_flavour(name: str, stages: Sequence[type], presets: Mapping[str, dict] | None = None) -> Flavour:
    """Register a flavour: its stage classes in policy order (each declares its config section).

    Stage classes that share a section are alternatives: each declares a distinct ``kind``, the
    value of the section's ``"kind"`` key that picks it (the first is the default).

    Raises:
        PolicyError: the name or a preset name is taken, or a stage class's declaration is unusable.
    """
    if name in FLAVOURS:
        raise PolicyError(f"register_flavour: flavour {name!r} is already registered; pick another name")
    flavour = Flavour(name, tuple(stages))
    for key, classes in flavour.sections.items():
        if not isinstance(key, str) or not key or key in _OWN_KEYS:
            raise PolicyError(f"register_flavour({name!r}): {classes[0].__name__}.section is {key!r}; a stage's "
                              f"section is a config key other than {{{', '.join(_OWN_KEYS)}}}")
        kinds = [c.kind for c in classes]
        if len(classes) > 1 and (None in kinds or len(set(kinds)) != len(kinds)):
            raise PolicyError(f"register_flavour({name!r}): {[c.__name__ for c in classes]} share section {key!r}; "
                              f"alternatives need distinct kinds, got {kinds}")
        if any(c.kind is not None and not isinstance(c.defaults, dict) for c in classes):
            raise PolicyError(f"register_flavour({name!r}): section {key!r} has kinds, so its defaults must be dicts")
    taken = sorted(set(presets or ()) & set(PRESETS))
    if taken:
        raise PolicyError(f"register_flavour({name!r}): preset names {taken} are already registered")
    FLAVOURS[name] = flavour
    PRESETS.update(presets or {})
    return flavour


def _flavour(*layers: Mapping) -> Flavour:
    """The flavour the last layer that names one names (the default flavour if none does)."""
    value = next((layer["flavour"] for layer in reversed(layers) if "flavour" in layer), DEFAULT_FLAVOUR)
    return FLAVOURS[POLICY.choice(value, "flavour", tuple(FLAVOURS))]


def _defaults(flavour: Flavour) -> dict:
    """A config of ``flavour`` with every optional section off and the others at their defaults."""
    out: dict[str, Any] = {"name": "custom", "output_size": 224}
    for key, classes in flavour.sections.items():
        out[key] = None if classes[0].optional else _copy(classes[0].defaults)
    return {**out, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}


def _kind_rule(path: str, old: Any, new: Any) -> Any:
    """Merge rule of policy configs: a section given with another ``kind`` replaces the old section."""
    if _is_mapping(old) and _is_mapping(new) and "kind" in old and new.get("kind", old["kind"]) != old["kind"]:
        return _copy(new)
    return MERGE


def resolve_config(name_or_config: str | dict, overrides: dict | None = None) -> dict:
    """Return the complete, validated config for a preset name or a (partial) config dict.

    A dict without ``"name"`` (or with a name that is not a preset) starts from its flavour's
    defaults with every optional section off; a dict whose ``"name"`` is a preset starts from that
    preset. ``overrides`` are merged on top (dict-valued sections are merged key by key; a section
    given with another ``kind`` replaces the old one; ``None`` switches a section off).

    Raises:
        PolicyError: unknown preset, unknown key, or invalid value.
    """
    overrides = overrides or {}
    if isinstance(name_or_config, str):
        if name_or_config not in PRESETS:
            raise POLICY.fail(name_or_config, "name", "{" + ", ".join(PRESETS) + "} or a config dict")
        layers = [PRESETS[name_or_config], overrides]
    elif isinstance(name_or_config, dict):
        name = name_or_config.get("name")
        base = PRESETS.get(name) if isinstance(name, str) else None
        layers = [base or {}, name_or_config, overrides]
    else:
        raise PolicyError(f"policy must be a preset name or a config dict, got {type(name_or_config).__name__}; "
                          f"valid names: {{{', '.join(PRESETS)}}}")
    flavour = _flavour(*layers)
    cfg = _defaults(flavour)
    for layer in layers:
        if layer:
            POLICY.keys(layer, "policy config", flavour.keys)
            cfg = deep_merge(cfg, layer, rule=_kind_rule)
    return _validate(cfg, flavour)


def _section(flavour: Flavour, key: str, value: Any, out: dict) -> Any:
    """The checked section ``key`` of the config being validated (``out``: the checked keys so far)."""
    classes = flavour.sections[key]
    first = classes[0]
    if first.optional and (value is None or value is False):
        return None
    if not isinstance(first.defaults, dict):  # a one-value section (e.g. hflip)
        return first.check_section(value, out)
    if first.kind is not None:
        kinds = tuple(c.kind for c in classes)
        if not isinstance(value, dict):
            raise POLICY.fail(value, key, f'a dict with "kind" in {{{", ".join(kinds)}}}')
        kind = POLICY.choice(value.get("kind", first.kind), f"{key}.kind", kinds)
        cls = next(c for c in classes if c.kind == kind)
    else:
        cls = first
        if not isinstance(value, dict):
            raise POLICY.fail(value, key, "a dict (section)" + (" or null to switch it off" if cls.optional else ""))
    section = {**_copy(cls.defaults), **value}
    where = f"section {key!r}" + ("" if flavour.name == DEFAULT_FLAVOUR else f" of the {flavour.name} flavour")
    POLICY.keys(section, where, cls.defaults)
    return cls.check_section(section, out)


def _validate(cfg: dict, flavour: Flavour) -> dict:
    out: dict[str, Any] = {}
    name = cfg.get("name", "custom")
    if not isinstance(name, str):
        raise POLICY.fail(name, "name", "a string")
    out["name"] = name
    if flavour.name != DEFAULT_FLAVOUR:  # only recorded when set: every torchvision-flavour config stays as it was
        out["flavour"] = flavour.name
    out["output_size"] = POLICY.int(cfg.get("output_size", 224), "output_size", low=8, high=4096)
    for key in flavour.sections:
        out[key] = _section(flavour, key, cfg.get(key), out)
    for key, default in (("mean", IMAGENET_MEAN), ("std", IMAGENET_STD)):
        v = cfg.get(key, list(default))
        if not isinstance(v, (list, tuple)) or len(v) != 3:
            raise POLICY.fail(v, key, "a list of 3 numbers (per RGB channel, on the [0, 1] scale)")
        out[key] = [POLICY.number(x, key, low=0.0, high=1e3, low_open=(key == "std")) for x in v]
    return out
