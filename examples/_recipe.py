"""Training recipes: YAML files of nested settings, checked key by key, with per-mode overrides.

A recipe (``examples/recipes/*.yaml``) lists the settings of one paper recipe.
:func:`load_recipe` merges it over :data:`DEFAULTS`, then the recipe's own
``modes.<mode>`` section (the paper's per-mode settings, e.g. KD's smaller
weight decay), then command-line overrides (``--set key.sub=value``, values
parsed as YAML). Every key is checked: an unknown key, a wrong type or an
invalid choice raises :class:`~imagenet_plus.errors.ArgumentError` naming the
file, the key, the value and what is valid, so a typo never trains silently
with a default.

Keys (see :data:`DEFAULTS` for the defaults)::

    data.dataset        a dataset of imagenet_plus.registry (imagenet, cifar100, flowers102, ...)
    data.root           the dataset's folder in torchvision's layout (digits: unused)
    data.train_split    split the students train on (and the store was built over; null: the registry's)
    data.eval_split     split evaluated after every epoch (null: the registry's)
    data.train_samples  train on the first N samples only (null: all)
    data.eval_samples   evaluate on the first N samples of eval_split only (null: all; smoke runs)
    data.source_size    digits: side of the upsampled images (null: the registry's default)
    data.repeats        passes over the training set per epoch (throughput checks on tiny sets)
    data.device         cpu: workers replay whole items; cuda: workers crop, the GPU finishes
                        the batch (DeviceReplay) in every mode
    policy              erm/kd augmentation: a preset name or config dict (null: the store's)
    eval.resize/crop    evaluation transform: resize the shorter side, centre crop
    reinforcements      plus: the store (folder or Hub id); num_augmentations, p_original
    records_per_decode  plus: M records of a sample replayed from one decode; epochs then run as
                        epochs / M passes of M records per sample (same records and steps as M=1)
    view_buffer         plus: 0 keeps a sample's M views in one batch (FKD); N > 0 spreads them
                        through a shuffle buffer of N items per rank (imagenet_plus.ShuffleBuffer)
    teacher.models      kd: timm names of the online teacher (an ensemble when several),
    teacher.checkpoints     their safetensors weights, pretrained, input_size
    model.name          student: timm name or "cnn:WIDTHxDEPTH"; model.kwargs to timm;
    model.checkpoint    fine-tuning: start from these safetensors weights (a classifier of
                        another shape is left freshly initialised); model.pretrained: timm's weights
    epochs, batch_size  batch_size is global (divided over torchrun ranks)
    optimizer           timm create_optimizer_v2: name, lr, weight_decay, momentum,
                        filter_bias_and_bn, kwargs
    scheduler           timm create_scheduler_v2: name, warmup_epochs, warmup_lr, min_lr
                        (stepped every iteration; warm-up before the decay)
    label_smoothing     on hard labels (erm; the originals of plus keep one-hot targets)
    mix                 erm/kd in-batch MixUp/CutMix: mixup_alpha, cutmix_alpha, switch_prob, prob
    ema                 model EMA (timm ModelEmaV3): decay; evaluated alongside the model
    grad_clip           max global gradient norm (null: off)
    amp                 bf16 | off (CUDA autocast); channels_last, compile (CUDA)
    workers, seed       DataLoader workers per rank; the seed of everything
    modes.erm|kd|plus   per-mode overrides of any key above
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import yaml

from imagenet_plus import registry
from imagenet_plus.augment.config import MERGE, deep_merge
from imagenet_plus.errors import ArgumentError

__all__ = ["DEFAULTS", "MODES", "DATASETS", "MIX_DEFAULTS", "load_recipe", "parse_override", "recipe_digest"]

MODES = ("erm", "kd", "plus")
DATASETS = registry.names()  # the registry's, as this module is imported (checks read it live)
MIX_DEFAULTS = {"mixup_alpha": 0.2, "cutmix_alpha": 1.0, "switch_prob": 0.5, "prob": 1.0}
EMA_DEFAULTS = {"decay": 0.9998}

DEFAULTS: dict[str, Any] = {
    "data": {"dataset": None, "root": None, "train_split": None, "eval_split": None, "train_samples": None,
             "eval_samples": None, "source_size": None, "repeats": 1, "device": "cpu"},
    "policy": None,
    "eval": {"resize": 256, "crop": 224, "batch_size": 256},
    "reinforcements": None,
    "num_augmentations": None,
    "p_original": 0.01,
    "records_per_decode": 1,
    "view_buffer": 0,
    "teacher": {"models": [], "checkpoints": [], "pretrained": True, "input_size": None},
    "model": {"name": None, "pretrained": False, "checkpoint": None, "kwargs": {}},
    "epochs": 1,
    "batch_size": 256,
    "optimizer": {"name": "sgd", "lr": 0.1, "weight_decay": 1e-4, "momentum": 0.9, "filter_bias_and_bn": False,
                  "kwargs": {}},
    "scheduler": {"name": "cosine", "warmup_epochs": 0, "warmup_lr": 0.0, "min_lr": 0.0},
    "label_smoothing": 0.0,
    "mix": None,
    "ema": None,
    "grad_clip": None,
    "amp": "bf16",
    "channels_last": True,
    "compile": False,
    "workers": 8,
    "seed": 0,
    "modes": {"erm": {}, "kd": {}, "plus": {}},
}

# Keys whose value is free-form (checked by the code that uses it).
_FREE = {"policy", "model.kwargs", "optimizer.kwargs", "reinforcements", "data.root", "teacher.input_size",
         "model.checkpoint"}
# Keys that are null by default and hold a number (or null) when set.
_OPTIONAL_NUMBER = {"data.train_samples", "data.eval_samples", "data.source_size", "num_augmentations",
                    "grad_clip", "teacher.input_size"}
_CHOICES = {"data.dataset": DATASETS, "amp": ("bf16", "off"), "data.device": ("cpu", "cuda")}
_SECTIONS_WITH_DEFAULTS = {"mix": MIX_DEFAULTS, "ema": EMA_DEFAULTS}


def _fail(where: str, key: str, value: Any, valid: str) -> ArgumentError:
    return ArgumentError(f"{where}: invalid value {value!r} for recipe key {key}. Valid values are {valid}.")


def _merge(base: dict, over: dict, where: str, prefix: str = "") -> dict:
    """``over`` merged into a copy of ``base``; keys absent from ``base`` are refused (typos)."""
    def unknown(key: str, valid: list[str]) -> ArgumentError:
        return ArgumentError(f"{where}: unknown recipe key {key!r}. Valid keys here are "
                             f"{{{', '.join(valid) or '(none)'}}}; see examples/_recipe.py for what each means.")

    def rule(key: str, old: Any, new: Any) -> Any:
        if key.startswith("modes."):  # checked when merged over the recipe for its mode
            if new is not None and not isinstance(new, dict):
                raise _fail(where, key, new, "a mapping of recipe keys")
            return copy.deepcopy(new) or {}
        if key in _SECTIONS_WITH_DEFAULTS and isinstance(new, dict):
            return deep_merge(_SECTIONS_WITH_DEFAULTS[key], new, rule=rule, unknown=unknown, prefix=key + ".")
        if key in _FREE:
            return copy.deepcopy(new)
        if isinstance(old, dict) and not isinstance(new, dict):
            raise _fail(where, key, new, "a mapping of " + ", ".join(sorted(old)))
        return MERGE

    return deep_merge(base, over, rule=rule, unknown=unknown, prefix=prefix)


def _check_leaf(where: str, key: str, value: Any, default: Any) -> None:
    if key in _FREE or key.startswith("modes."):
        return
    if key in _CHOICES:
        valid = registry.names() if key == "data.dataset" else _CHOICES[key]
        if value not in valid:
            raise _fail(where, key, value, "{" + ", ".join(valid) + "}")
        return
    if key in _OPTIONAL_NUMBER:
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
            raise _fail(where, key, value, "a positive number or null")
        return
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif isinstance(default, str):
        ok = isinstance(value, str)
    elif isinstance(default, list):
        ok = isinstance(value, list)
    else:
        return
    if not ok:
        raise _fail(where, key, value, f"a {type(default).__name__}")


def _check(recipe: dict, where: str) -> dict:
    def walk(node: dict, defaults: dict, prefix: str) -> None:
        for k, v in node.items():
            key = prefix + k
            d = defaults.get(k) if isinstance(defaults, dict) else None
            if isinstance(v, dict) and isinstance(d, dict) and key not in _FREE:
                walk(v, d, key + ".")
            elif key in _SECTIONS_WITH_DEFAULTS and isinstance(v, dict):
                walk(v, _SECTIONS_WITH_DEFAULTS[key], key + ".")
            elif key in _SECTIONS_WITH_DEFAULTS and v is not None:
                raise _fail(where, key, v, "null or a mapping of " + ", ".join(_SECTIONS_WITH_DEFAULTS[key]))
            else:
                _check_leaf(where, key, v, d)

    walk(recipe, DEFAULTS, "")
    for key in ("epochs", "batch_size", "workers", "seed", "records_per_decode", "view_buffer"):
        low = 0 if key in ("workers", "seed", "view_buffer") else 1
        if recipe[key] < low:
            raise _fail(where, key, recipe[key], f"an integer >= {low}")
    if recipe["data"]["repeats"] < 1:
        raise _fail(where, "data.repeats", recipe["data"]["repeats"], "an integer >= 1")
    if not 0.0 <= recipe["label_smoothing"] < 1.0:
        raise _fail(where, "label_smoothing", recipe["label_smoothing"], "a number in [0, 1)")
    if not 0.0 <= recipe["p_original"] <= 1.0:
        raise _fail(where, "p_original", recipe["p_original"], "a probability in [0, 1]")
    if recipe["data"]["dataset"] is None:
        raise ArgumentError(f"{where}: recipe key data.dataset is not set. Valid values are "
                            f"{{{', '.join(registry.names())}}}.")
    _check_splits(recipe["data"], where)
    if not isinstance(recipe["model"]["name"], str):
        raise ArgumentError(f"{where}: recipe key model.name is not set; give a timm model name "
                            "(e.g. resnet50d) or 'cnn:WIDTHxDEPTH'.")
    mix = recipe["mix"]
    if mix is not None:
        for k in ("mixup_alpha", "cutmix_alpha"):
            if mix[k] < 0:
                raise _fail(where, f"mix.{k}", mix[k], "a number >= 0")
        if mix["mixup_alpha"] == 0 and mix["cutmix_alpha"] == 0:
            raise _fail(where, "mix", mix, "null (no mixing) or a mapping with mixup_alpha or cutmix_alpha > 0")
    if recipe["ema"] is not None and not 0.0 < recipe["ema"]["decay"] < 1.0:
        raise _fail(where, "ema.decay", recipe["ema"]["decay"], "a number in (0, 1)")
    return recipe


def _check_splits(data: dict, where: str) -> None:
    """Fill in the registry's train/eval split where the recipe gives none; refuse a split the dataset lacks."""
    info = registry.dataset_info(data["dataset"], "data.dataset")
    for key in ("train_split", "eval_split"):
        if data[key] is None:
            data[key] = getattr(info, key)
        elif data[key] not in info.splits:
            raise _fail(where, f"data.{key}", data[key], f"a split of {info.name}: {{{', '.join(info.splits)}}}")


def parse_override(text: str) -> tuple[str, Any]:
    """``"optimizer.lr=0.2"`` -> ``("optimizer.lr", 0.2)`` (the value is parsed as YAML)."""
    if "=" not in text:
        raise ArgumentError(f"--set {text!r}: expected KEY=VALUE, e.g. --set optimizer.lr=0.2")
    key, _, raw = text.partition("=")
    return key.strip(), yaml.safe_load(raw) if raw.strip() else None


def _nest(key: str, value: Any) -> dict:
    out: Any = value
    for part in reversed(key.split(".")):
        out = {part: out}
    return out


def load_recipe(path: str | Path | None, mode: str, overrides: list[tuple[str, Any]] = (), *,
                base: dict | None = None) -> dict:
    """The resolved settings of ``mode``: defaults < recipe file < ``modes.<mode>`` < ``overrides``.

    Args:
        path: a YAML recipe, or ``None`` for :data:`DEFAULTS` (then ``base``/``overrides`` set everything).
        mode: ``"erm"``, ``"kd"`` or ``"plus"``.
        overrides: ``(dotted key, value)`` pairs applied last (the command line's ``--set``).
        base: a recipe dict used in place of reading ``path`` (tests, benchmarks).

    Returns:
        The complete, checked settings (``modes`` removed, ``mode`` added).

    Raises:
        ArgumentError: an unknown key, a wrong type or an invalid value (the message names it).
        FileNotFoundError: ``path`` does not exist.
    """
    if mode not in MODES:
        raise ArgumentError(f"Unknown value {mode!r} for argument mode. Valid values are {{{', '.join(MODES)}}}.")
    where = str(path) if path is not None else "recipe"
    raw = copy.deepcopy(base) if base is not None else {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"recipe {p} does not exist; pass one of examples/recipes/*.yaml or your own file")
        raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        if not isinstance(raw, dict):
            raise ArgumentError(f"{where}: a recipe is a YAML mapping of keys, got {type(raw).__name__}")
    recipe = _merge(DEFAULTS, raw, where)
    modes = recipe.pop("modes")  # _merge refused unknown modes
    recipe = _merge(recipe, modes.get(mode) or {}, f"{where} (modes.{mode})")
    for key, value in overrides:
        if key.startswith("modes."):
            raise ArgumentError(f"--set {key}: per-mode sections live in the recipe file; override the key itself "
                                "(it applies to the mode being run)")
        recipe = _merge(recipe, _nest(key, value), f"--set {key}")
    recipe = _check(recipe, where)
    recipe["mode"] = mode
    return recipe


def recipe_digest(recipe: dict, ignore: tuple[str, ...] = ("workers",)) -> str:
    """A canonical JSON string of the settings that change the result (``ignore`` left out)."""
    kept = {k: v for k, v in recipe.items() if k not in ignore}
    return json.dumps(kept, sort_keys=True, default=str)
