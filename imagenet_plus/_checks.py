"""Argument and settings validation: one helper per kind of check, one error class per kind of mistake.

A bad argument value raises :class:`~imagenet_plus.errors.ArgumentError` with a
message in torchvision's ``verify_str_arg`` style that names the argument, the
value and what is valid.

The same checks serve every kind of setting through :class:`Checks`, which binds
the noun a message uses and the error it raises: ``Checks()`` checks arguments
(what ``check_choice``, ``check_int`` and ``check_probability`` use),
``Checks("policy config key", PolicyError, quote=True)`` a policy config's keys,
and a caller may pass any callable as ``error`` (a message -> the exception), e.g.
one that prefixes the file the setting came from.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Iterable, Mapping, Sequence

from .errors import ArgumentError

__all__ = ["Checks", "check_choice", "check_int", "check_probability", "check_device"]


def _bounds(low, high, low_open: bool = False) -> str:
    lo = "-inf" if low is None else low
    hi = "inf" if high is None else high
    return f"{'(' if low_open else '['}{lo}, {hi}]"


class Checks:
    """The checks of one kind of setting, each returning the checked value or raising ``error``.

    Args:
        noun: what a setting is called in messages ("argument", "policy config key").
        error: the exception class (or any callable taking the message) raised on a mistake.
        quote: name settings with quotes (``'mix.prob'``) rather than bare (``num_workers``).

    Messages read ``Invalid value V for <noun> <name>. Valid values are <what>.``
    """

    def __init__(self, noun: str = "argument", error: Callable[[str], Exception] = ArgumentError, *,
                 quote: bool = False):
        self.noun, self.error, self.quote = noun, error, quote

    def _name(self, name: str) -> str:
        return repr(name) if self.quote else name

    def fail(self, value: Any, name: str, valid: str) -> Exception:
        """The error for ``value`` of setting ``name``, which should have been ``valid`` (raise it)."""
        return self.error(f"Invalid value {value!r} for {self.noun} {self._name(name)}. Valid values are {valid}.")

    def choice(self, value: Any, name: str, valid: Sequence[str]) -> str:
        """``value`` if it is one of the strings ``valid``.

        Raises: "Unknown value 'x' for <noun> name. Valid values are {a, b}."
        """
        if not isinstance(value, str) or value not in valid:
            raise self.error(f"Unknown value {value!r} for {self.noun} {self._name(name)}. "
                             f"Valid values are {{{', '.join(valid)}}}.")
        return value

    def int(self, value: Any, name: str, *, low: int | None = None, high: int | None = None,
            optional: bool = False) -> int | None:
        """``value`` as an ``int`` if it is an integer (not a bool) in ``[low, high]``; ``None`` if optional."""
        if value is None and optional:
            return None
        t = type(value)
        ok = t is int or (t is not bool and isinstance(value, numbers.Integral))
        if ok:
            value = int(value)
            ok = (low is None or value >= low) and (high is None or value <= high)
        if not ok:
            raise self.fail(value, name, f"an integer in {_bounds(low, high)}" + (" or None" if optional else ""))
        return value

    def number(self, value: Any, name: str, *, low: float | None = None, high: float | None = None,
               low_open: bool = False) -> float:
        """``value`` as a ``float`` if it is a finite real number (not a bool) in ``[low, high]``.

        ``low_open``: the interval is ``(low, high]``.
        """
        t = type(value)
        ok = (t is float or t is int or (t is not bool and isinstance(value, numbers.Real))) and math.isfinite(value)
        ok = ok and (low is None or value > low or (value == low and not low_open)) and (high is None or value <= high)
        if not ok:
            raise self.fail(value, name, f"a number in {_bounds(low, high, low_open)}")
        return float(value)

    def probability(self, value: Any, name: str) -> float:
        """``value`` as a ``float`` if it is a number in ``[0, 1]``."""
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= float(value) <= 1.0:
            raise self.fail(value, name, "a probability in [0, 1]")
        return float(value)

    def pair(self, value: Any, name: str, *, low: float | None = None, high: float | None = None,
             low_open: bool = False) -> list[float]:
        """``value`` as ``[a, b]`` (floats) if it is a pair of numbers in the interval with ``a <= b``."""
        interval = _bounds(low, high, low_open)
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            raise self.fail(value, name, f"a pair [low, high] of numbers in {interval} with low <= high")
        a, b = (self.number(x, name, low=low, high=high, low_open=low_open) for x in value)
        if a > b:
            raise self.fail(value, name, "a pair [low, high] with low <= high")
        return [a, b]

    def flag(self, value: Any, name: str) -> bool:
        """``value`` if it is ``True`` or ``False``."""
        if not isinstance(value, bool):
            raise self.fail(value, name, "true or false")
        return value

    def keys(self, mapping: Mapping, where: str, valid: Iterable[str]) -> None:
        """Raise if ``mapping`` (the settings of ``where``, e.g. "section 'mix'") has a key outside ``valid``."""
        valid = tuple(valid)
        for k in mapping:
            if k not in valid:
                raise self.error(f"Unknown key {k!r} in {where}. Valid keys are {{{', '.join(valid)}}}. "
                                 "Remove or rename it.")


_ARGUMENTS = Checks()


def check_choice(value: Any, arg: str, valid: Sequence[str]) -> str:
    """Return ``value`` if it is one of ``valid``.

    Raises:
        ArgumentError: "Unknown value 'x' for argument arg. Valid values are {a, b}."
    """
    return _ARGUMENTS.choice(value, arg, valid)


def check_int(value: Any, arg: str, *, low: int | None = None, high: int | None = None,
              optional: bool = False) -> int | None:
    """Return ``value`` as an ``int`` if it is an integer (not a bool) in ``[low, high]``; ``None`` if optional.

    Raises:
        ArgumentError: naming the argument, the value and the valid range.
    """
    return _ARGUMENTS.int(value, arg, low=low, high=high, optional=optional)


def check_probability(value: Any, arg: str) -> float:
    """Return ``value`` as a ``float`` if it is a number in ``[0, 1]``.

    Raises:
        ArgumentError: naming the argument and the value.
    """
    return _ARGUMENTS.probability(value, arg)


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
