"""The package's exceptions.

Every error raised for bad user input is a :class:`ReinforcementError` (a
``ValueError`` subclass), and its message names the file or argument, what is
wrong, and what to do about it. One class per kind of mistake: an argument
outside its valid set or range (a CUDA device on a machine without one included)
is an :class:`ArgumentError` wherever it is passed. The commands' exit statuses
(``EXIT_*``) and :func:`short_repr` (a value quoted in a message) live here too.
"""

from __future__ import annotations

from typing import Any

# The exception classes (imagenet_plus exports each of them).
__all__ = [
    "ReinforcementError",
    "StoreError",
    "IntegrityError",
    "FormatVersionError",
    "AlignmentError",
    "PolicyError",
    "ArgumentError",
    "ImageDecodeError",
    "BuildError",
    "ImportFormatError",
]

#: Exit statuses of every command: done, failed (bad data, a failed check), a usage error, interrupted.
EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def short_repr(value: Any, limit: int = 120) -> str:
    """``repr(value)``, cut to ``limit`` characters (a value quoted in an error message)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


class ReinforcementError(ValueError):
    """Base class of every error this package raises for bad input or data."""


class StoreError(ReinforcementError):
    """A reinforcement store is missing, malformed or inconsistent with its manifest."""


class IntegrityError(StoreError):
    """A shard's bytes do not match the manifest (size, sha256) or hold out-of-range values."""


class FormatVersionError(StoreError):
    """The store was written in a format version this release cannot read."""


class AlignmentError(ReinforcementError):
    """The user's dataset copy does not line up with the store (size, classes, identities)."""


class PolicyError(ReinforcementError):
    """An augmentation policy config, parameter record or input image is invalid."""


class ArgumentError(ReinforcementError):
    """A function or command argument has a value outside its valid set or range."""


class ImageDecodeError(ReinforcementError):
    """A sample's image file is missing, truncated or not a decodable image (the message names the file)."""


class BuildError(ReinforcementError):
    """A build cannot start or continue: bad settings, a teacher that does not fit, an occupied output folder."""


class ImportFormatError(ReinforcementError):
    """A foreign archive (e.g. apple/ml-dr's published reinforcements) is malformed, unsafe or unsupported."""
