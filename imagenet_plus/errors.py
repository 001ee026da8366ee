"""The package's exceptions.

Every error raised for bad user input is a :class:`ReinforcementError` (a
``ValueError`` subclass), and its message names the file or argument, what is
wrong, and what to do about it.
"""

from __future__ import annotations

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
