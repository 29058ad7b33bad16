"""Exit statuses of the ``specwatch`` command, an interface for scripts and process managers."""

from __future__ import annotations

from enum import IntEnum


class ExitStatus(IntEnum):
    """Every status specwatch can exit with; the README documents each one."""

    OK = 0
    #: ``scan`` found incidents, ``status`` has open ones.
    INCIDENTS = 1
    #: Bad command line, unreadable input, invalid configuration or pattern.
    USAGE = 2
    #: ``run --on-spec-failure=exit`` stopped the child because speculation failed.
    SPEC_FAILURE = 3
    #: Interrupted by Ctrl-C.
    CTRL_C = 130
