"""The build engine: run a teacher over stored augmentations of a dataset and write a reinforcement store.

Read top to bottom (see :mod:`imagenet_plus.builder.engine` for the order):
:mod:`~imagenet_plus.builder.checks` (refuse up front), :mod:`~imagenet_plus.builder.plan` (the
shard plan, this rank's share), :mod:`~imagenet_plus.builder.outdir` (output-folder rules, the
lock, state files), :mod:`~imagenet_plus.builder.pipeline` (decode once, render, shards),
:mod:`~imagenet_plus.builder.teacher_run` (padded teacher batches, device staging, top-k),
:mod:`~imagenet_plus.builder.report` (the teacher's agreement with the labels and its input
pipeline), :mod:`~imagenet_plus.builder.readback` (stored records replay to the teacher's pixels),
:mod:`~imagenet_plus.builder.manifest` (samples file and manifest, written last),
:mod:`~imagenet_plus.builder.config` (``BuildConfig``: defaults < YAML < flags) and
:mod:`~imagenet_plus.builder.cli` (``imagenet-plus build``; ``python -m imagenet_plus.builder``).

Example:
    >>> from imagenet_plus.builder import build_reinforcements
    >>> manifest = build_reinforcements(dataset, "out/store", policy=policy, teacher=teacher,
    ...                                 num_augmentations=50)
    >>> manifest.reports["teacher"]["top1_agreement"]
"""

from __future__ import annotations

# Imported on first use (PEP 562): `imagenet-plus build --help` (build.cli, build.config) starts without torch.
_LAZY = {
    "build_reinforcements": ".engine", "BuildStats": ".pipeline", "BuildConfig": ".config", "load_config": ".config",
    "resolve_dist_env": ".plan", "init_distributed": ".plan", "summarize_teacher_report": ".report",
}
_RENAMED = {"summarize_teacher_report": "summarize"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), _RENAMED.get(name, name))
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = ["build_reinforcements", "BuildStats", "BuildConfig", "load_config", "resolve_dist_env",
           "init_distributed", "summarize_teacher_report"]
