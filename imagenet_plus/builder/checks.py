"""Refusing up front what the dataset, the reader or the replay would refuse later.

Before any teacher work the builder checks what a finished store would be rejected for: the
teacher's class count against the dataset's (``ReinforcedDataset`` refuses a store of another
class count), duplicate or empty sample keys (the store ties records to samples by key), labels
outside ``[0, C)``, ``topk > num_classes``, and a teacher input size that is a guess (a
checkpoint without a sidecar) resizing the augmented images by more than 2x. Image sizes are
known only once an image is decoded: :class:`ReplayLimits` checks each one before its records
reach the teacher (crop fractions are exact for sides up to 65535 px; pad-crop offsets are
stored in 16 bits).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .._checks import check_int
from ..errors import BuildError
from .report import MAX_RESIZE

__all__ = ["resolve_num_classes", "resolve_topk", "check_dataset", "check_teacher_input", "ReplayLimits"]

_MAX_SIDE = 65535  # crop boxes are stored as fractions q / 65535: exact for sides up to this
_MAX_OFFSET = 65535  # pad-crop offsets are stored as <u2
_SHOWN = 5
_GUESSED = "architecture default"


def resolve_num_classes(adapter, teacher: Any, num_classes: int | None) -> int:
    """The store's class count: ``num_classes``, else the teacher's, else the dataset's; all must agree.

    Raises:
        BuildError: the teacher's, the dataset's and ``num_classes`` disagree (the message names each).
    """
    given = check_int(num_classes, "num_classes", low=1, optional=True)
    teacher_nc = getattr(teacher, "num_classes", None)
    teacher_nc = int(teacher_nc) if isinstance(teacher_nc, (int, np.integer)) else None
    data_nc = adapter.num_classes
    if given is not None and teacher_nc is not None and given != teacher_nc:
        raise BuildError(f"the teacher has {teacher_nc} classes but num_classes is {given} (--num-classes); use a "
                         f"teacher trained on {given} classes (--num-classes cannot change a trained head)")
    nc = given if given is not None else teacher_nc if teacher_nc is not None else data_nc
    if nc is None:
        raise BuildError(f"cannot tell the number of classes: the dataset ({adapter!r}) does not list its classes "
                         "and the teacher does not say; pass num_classes (--num-classes)")
    if data_nc is not None and nc != data_nc:
        names = ", ".join(map(str, (adapter.classes or [])[:_SHOWN])) + (", ..." if data_nc > _SHOWN else "")
        what = f"the dataset {adapter.name or type(adapter.dataset).__name__} has {data_nc} ({names})"
        if given is None:
            raise BuildError(f"the teacher has {nc} classes but {what}; a store of {nc} classes would be refused by "
                             f"ReinforcedDataset. Use a teacher trained on the dataset's {data_nc} classes "
                             "(--num-classes cannot change a trained head)")
        raise BuildError(f"num_classes is {nc} (--num-classes) but {what}; a store of {nc} classes would be refused "
                         f"by ReinforcedDataset. Pass --num-classes {data_nc} (the dataset's), or leave it out")
    return nc


def resolve_topk(topk: int | None, num_classes: int) -> int:
    """``topk``, or ``min(10, num_classes)`` when not given.

    Raises:
        ArgumentError: not a positive integer.
        BuildError: ``topk > num_classes``.
    """
    if topk is None:
        return min(10, num_classes)
    k = check_int(topk, "topk", low=1)
    if k > num_classes:
        raise BuildError(f"topk={k} exceeds num_classes={num_classes}: a record cannot keep more classes than the "
                         f"teacher has; use --topk {num_classes} or less (default min(10, num_classes))")
    return k


def check_dataset(adapter, num_classes: int) -> None:
    """Refuse empty or duplicate keys and labels outside ``[0, num_classes)``.

    Raises:
        BuildError: naming the first few offending samples and the fix.
    """
    n = len(adapter)
    if n < 1:
        raise BuildError(f"the dataset {adapter!r} is empty; check its root folder and split")
    keys = adapter.keys()
    empty = [i for i, k in enumerate(keys) if not k]
    if empty:
        raise BuildError(f"{len(empty)} sample(s) of {adapter!r} have an empty key (samples {empty[:_SHOWN]}); a "
                         "store ties every record to its sample by key: give every sample a non-empty key")
    if len(set(keys)) != n:
        first: dict[str, int] = {}
        dups = []
        for i, k in enumerate(keys):
            if k in first:
                dups.append(f"{k!r} (samples {first[k]} and {i})")
            else:
                first[k] = i
        raise BuildError(f"{len(dups)} duplicate sample key(s) in {adapter!r}: {', '.join(dups[:_SHOWN])}; a store "
                         "ties every record to its sample by key: make the keys unique (e.g. relative file paths)")
    labels = np.asarray(adapter.labels(), dtype=np.int64)
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        shown = "; ".join(f"{adapter.describe(int(i))} has label {int(labels[i])}" for i in bad[:_SHOWN])
        raise BuildError(f"{bad.size} label(s) outside [0, {num_classes}): {shown}; the teacher's classes must "
                         "cover the dataset's labels (check --num-classes and the dataset)")


def check_teacher_input(teacher: Any, image_size: int) -> list[dict]:
    """The teacher's input pipeline for ``image_size`` px images; refuse a large resize resting on a guess.

    A member loaded from a checkpoint without a sidecar has the input size of its architecture's
    default config: nothing says the checkpoint was trained at it (a 32 px checkpoint fed 224 px
    images builds without an error and its store teaches nothing).

    Raises:
        BuildError: such a member's input resizes the images by more than 2x (either way).
    """
    describe = getattr(teacher, "input_pipeline", None)
    if describe is None:
        return [{"model": type(teacher).__name__, "image_size": int(image_size),
                 "note": "a callable: its input pipeline is its own"}]
    pipeline = [dict(m) for m in describe(int(image_size))]
    for m in pipeline:
        f = float(m["resize_factor"])
        if m["input_size_source"] == _GUESSED and m.get("checkpoint") and not 1 / MAX_RESIZE <= f <= MAX_RESIZE:
            raise BuildError(
                f"teacher {m['model']}: its checkpoint {m['checkpoint']} has no .json sidecar saying the input size "
                f"it was trained at, so its architecture's default {m['input_size']} px was assumed, and the "
                f"{image_size} px augmented images would be resized {f:g}x: if it was trained at {image_size} px, "
                "it would see pixels unlike any it was trained on and its store would teach nothing (a digits build "
                f"did this silently; its student reached 9.5%). Pass --teacher-input-size with the size it was trained "
                f"at (e.g. --teacher-input-size {image_size}), or write the sidecar with \"input_size\": "
                f"[3, N, N]; to resize on purpose, pass --teacher-input-size {m['input_size']}")
    return pipeline


@dataclass(frozen=True)
class ReplayLimits:
    """What image sizes the policy's stored params can replay (checked per decoded image)."""

    kind: str
    output_size: int
    padding: int

    @classmethod
    def of(cls, policy) -> "ReplayLimits":
        g = policy.config["geometry"]
        return cls(str(g["kind"]), int(policy.output_size), int(g.get("padding", 0) or 0))

    def check(self, height: int, width: int, where: str) -> None:
        """Raise :class:`BuildError` naming ``where`` if a ``height x width`` image cannot be replayed."""
        if max(height, width) > _MAX_SIDE:
            raise BuildError(f"{where}: a {height}x{width} image; crop boxes are stored as fractions of the image "
                             f"and replay exactly only for sides up to {_MAX_SIDE} px: downscale it in your copy of "
                             "the dataset")
        if self.kind != "pad_crop":
            return
        s = self.output_size
        short, long = min(height, width), max(height, width)
        offset = int(s * long / short) + 2 * self.padding - s
        if offset > _MAX_OFFSET:
            raise BuildError(f"{where}: a {height}x{width} image resized to a {s} px shorter side is "
                             f"{int(s * long / short)} px long; its pad-crop offsets (up to {offset}) do not fit the "
                             f"stored 16 bits: crop its aspect ratio in your copy, or use an 'rrc' policy")
