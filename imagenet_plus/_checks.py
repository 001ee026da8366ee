"""Argument validation: one helper per kind of check, one error class per kind of mistake.

A bad argument value raises :class:`~imagenet_plus.errors.ArgumentError` with a
message in torchvision's ``verify_str_arg`` style that names the argument, the
value and what is valid.
"""

from __future__ import annotations

import numbers
from typing import Any, Sequence

from .errors import ArgumentError

__all__ = ["check_choice", "check_int", "check_probability", "check_device"]


def check_choice(value: Any, arg: str, valid: Sequence[str]) -> str:
    """Return ``value`` if it is one of ``valid``.

    Raises:
        ArgumentError: "Unknown value 'x' for argument arg. Valid values are {a, b}."
    """
    if not isinstance(value, str) or value not in valid:
        raise ArgumentError(f"Unknown value {value!r} for argument {arg}. Valid values are {{{', '.join(valid)}}}.")
    return value


def check_int(value: Any, arg: str, *, low: int | None = None, high: int | None = None,
              optional: bool = False) -> int | None:
    """Return ``value`` as an ``int`` if it is an integer (not a bool) in ``[low, high]``; ``None`` if optional.

    Raises:
        ArgumentError: naming the argument, the value and the valid range.
    """
    if value is None and optional:
        return None
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if ok:
        value = int(value)
        ok = (low is None or value >= low) and (high is None or value <= high)
    if not ok:
        lo = "-inf" if low is None else low
        hi = "inf" if high is None else high
        what = f"an integer in [{lo}, {hi}]" + (" or None" if optional else "")
        raise ArgumentError(f"Invalid value {value!r} for argument {arg}. Valid values are {what}.")
    return value


def check_probability(value: Any, arg: str) -> float:
    """Return ``value`` as a ``float`` if it is a number in ``[0, 1]``.

    Raises:
        ArgumentError: naming the argument and the value.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= float(value) <= 1.0:
        raise ArgumentError(f"Invalid value {value!r} for argument {arg}. Valid values are a probability in [0, 1].")
    return float(value)


def check_device(device: Any, where: str, fix: str):
    """``device`` as a ``torch.device``, refused if it is a CUDA device and this machine has none.

    Args:
        device: a ``torch.device`` or its name (``"cpu"``, ``"cuda"``, ``"cuda:1"``).
        where: what the message starts with (the argument and its value, e.g. ``"device='cuda'"``).
        fix: what to do instead (e.g. ``"use device='cpu'"``).

    Raises:
        ArgumentError: "{where}: CUDA is not available on this machine; {fix}".
    """
    import torch  # only the callers that place work on a device get here

    d = torch.device(device)
    if d.type == "cuda" and not torch.cuda.is_available():
        raise ArgumentError(f"{where}: CUDA is not available on this machine; {fix}")
    return d
