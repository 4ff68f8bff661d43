"""Errors for bad data: one line naming the file, and what was expected."""
from __future__ import annotations


class DataError(ValueError):
    """An annotation file, an annotation or an image cannot be used; the message names the file."""


class UnreadableImageError(DataError):
    """An image file that is corrupt (cannot be decoded); training skips it with a warning."""


class MissingImageError(UnreadableImageError, FileNotFoundError):
    """An image file that does not exist; training skips it with a warning."""
