"""Errors every layer may raise and the command line turns into an exit status."""

from __future__ import annotations


class UsageError(Exception):
    """Bad input or configuration: printed as one line, exit status 2."""
