"""A regex search bounded by the CPU time it spends, not by the time its thread waits to run.

The ``regex`` module's timeout is wall-clock time, and its searches run without the GIL: on a machine busy with
the server (or with specwatch's own threads) a search may time out having hardly run, and the line it was looking
at, a failure perhaps, would be lost. A search that really spent the time (CPU) is a slow regex and its timeout
stands; a starved one is tried again, a few times.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, AnyStr

if TYPE_CHECKING:
    import regex

#: Tries of a search whose timeout ran out while its thread hardly ran, before it counts as no match.
STARVED_TRIES = 5


def search(rx: regex.Pattern[AnyStr], text: AnyStr, timeout: float) -> regex.Match[AnyStr] | None:
    """``rx.search(text)``; raises TimeoutError only when the search itself used at least half of ``timeout``."""
    start = time.thread_time()
    for _ in range(STARVED_TRIES):
        try:
            return rx.search(text, timeout=timeout)
        except TimeoutError:
            if time.thread_time() - start >= timeout / 2:
                raise
    return None


def match_or_none(rx: regex.Pattern[AnyStr], text: AnyStr, timeout: float = 0.05) -> regex.Match[AnyStr] | None:
    """``search``, with a slow regex's timeout counted as no match (relays and causes: they have no pattern
    of their own to warn about or disable)."""
    try:
        return search(rx, text, timeout)
    except TimeoutError:
        return None
