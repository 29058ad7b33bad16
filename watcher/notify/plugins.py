"""specwatch's own apprise plugins, listed here, and what any plugin declares it wants.

The first-party modules are named in :data:`FIRST_PARTY`; :func:`load` imports each and calls its
``register()``, only when someone is to be notified: apprise and the plugins
are a third of pipe mode's start-up, and the plugin contract (:mod:`watcher.notify.contract`) stays free of
the plugins that implement it.
"""

from __future__ import annotations

import importlib
from typing import Any

from watcher.notify.contract import DEFAULT_MESSAGES, MESSAGES

#: Modules with a ``register()`` that adds an apprise scheme: ``specwatch://`` and ``alertmanager[s]://``.
FIRST_PARTY = ("watcher.notify.desktop", "watcher.notify.alertmanager")


def load() -> None:
    """Register specwatch's own apprise schemes; idempotent."""
    for name in FIRST_PARTY:
        importlib.import_module(name).register()


def _plugin(url: str) -> Any:
    return _scheme_plugin(url.split("://", 1)[0].lower() if "://" in url else "")


def knows(scheme: str) -> bool:
    """Whether some plugin is registered for ``scheme``."""
    return _scheme_plugin(scheme.lower()) is not None


def _scheme_plugin(scheme: str) -> Any:
    from apprise import manager_plugins

    load()
    manager: Any = manager_plugins.NotificationManager
    plugins: Any = manager()
    try:
        return plugins[scheme] if scheme and scheme in plugins else None
    except KeyError:
        return None


def messages_for(url: str) -> frozenset[str]:
    """The message kinds the plugin behind ``url`` (an apprise URL, masked or not) declares it wants."""
    declared = getattr(_plugin(url), "specwatch_messages", None)
    return frozenset(declared) & MESSAGES if declared is not None else DEFAULT_MESSAGES


def wants(url: str, message: str) -> bool:
    """Whether the target at ``url`` is to be sent ``message`` (opened/repeat/resolved/acknowledged) messages."""
    return message in messages_for(url)


def understood(url: str) -> bool:
    """Whether some plugin accepts ``url`` (a known scheme, and syntax that plugin can parse)."""
    import apprise

    load()
    return apprise.Apprise.instantiate(url, suppress_exceptions=True) is not None
