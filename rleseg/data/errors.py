"""Errors raised by the data layer: every one names the file, source or value at fault."""

from __future__ import annotations


class DataError(ValueError):
    """Bad data or a bad data configuration (a corrupt file, a mask of the wrong size, an unknown class)."""


class SourceMissingError(DataError):
    """A data source's raw files cannot be found; the message names the command that installs them."""
