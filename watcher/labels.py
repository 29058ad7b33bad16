"""Label values for metrics and alerts: short, stable and free of secrets.

Values are bounded on purpose, so a year of restarts does not grow a series count: ``source`` is a short
stable name (no directories, no dates or long numbers), ``server`` is the target model's file name,
``target`` a notification target without its secrets.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from watcher.incidents import basename

#: Schemes whose host part is a network address, not a token (apprise's slack://TokenA/... is not).
_HOST_IS_ADDRESS = {"alertmanager", "alertmanagers", "json", "jsons", "xml", "xmls", "form", "forms",
                    "gotify", "gotifys", "mailto", "mailtos", "http", "https"}
_DATEISH = re.compile(r"[-_.]?\d[\d\-_.:T]{3,}\d")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.:@+-]+")


def source_label(name: str) -> str:
    """A short stable name for a log source: the file name without dates, pids or task numbers."""
    base = basename(name) or name or "-"
    short = _DATEISH.sub("", base).strip("-_.") or base
    return _UNSAFE.sub("_", short)[:64]


def server_label(model: str | None) -> str:
    """The target model's file name, the natural name of one inference server."""
    return _UNSAFE.sub("_", basename(model))[:96] or "unknown"


def target_label(url: str) -> str:
    """A notification target as a label: scheme and address, or scheme and a short hash of the rest.

    Never the user, password, path or query, where apprise URLs keep their tokens.
    """
    try:
        parts = urlsplit(url)
        scheme = parts.scheme.lower() or "unknown"
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        scheme, host, port = "unknown", "", None
    if scheme in _HOST_IS_ADDRESS and host:
        return f"{scheme}://{host}{f':{port}' if port else ''}"
    import hashlib

    digest = hashlib.sha256(url.encode("utf-8", "replace")).hexdigest()[:8]
    return f"{scheme}://#{digest}"


def device_label(device: str) -> str:
    """A device as llama.cpp names it (``CUDA0``, ``ROCm1``, ``CPU``), cut to a safe label value."""
    return _UNSAFE.sub("_", device)[:32] or "unknown"
