"""Exceptions raised by flashbone.

Every error a user can cause derives from :class:`BoneError`, so one ``except BoneError``
catches them all. Messages name the thing at fault (module, shape, key, file) and a way out.
"""

from __future__ import annotations


class BoneError(ValueError):
    """Base class of all flashbone errors caused by bad input."""


class BoneConfigError(BoneError):
    """An invalid configuration value (variant, r, mini_r, dropout, targets...)."""


class BoneShapeError(BoneError):
    """A layer's shape does not fit the chosen variant and block size ``r``."""


class TargetError(BoneError):
    """Target modules match nothing, or match a layer type that cannot be adapted."""


class AdapterFileError(BoneError):
    """An adapter folder or file is missing, corrupt, or does not fit the base model."""


class MergeError(BoneError):
    """Merging or unmerging would produce non-finite weights or cannot be inverted."""


class CLIError(BoneError):
    """A bad command-line input (flag, file, combination); the CLI prints it as one line."""
