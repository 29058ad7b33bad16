"""Secret redaction: every line specwatch prints, logs or stores about a target goes through ``Redactor``.

Notification URLs carry tokens in the user part, the host (Slack), the path (webhooks) or the query.
apprise knows, per scheme, which parts are secret and renders a *privacy* URL with them masked; the
parts that differ between the real URL and the privacy URL are the secrets, whichever scheme it is.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import unquote

MASK = "****"
_SPLIT = re.compile(r"[/:@?&=#,+]")
#: Credentials in any URL, even one apprise could not parse.
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][\w+.-]*://)(?P<user>[^/@\s:]*):(?P<pw>[^/@\s]+)@")
_QUERY_SECRET = re.compile(r"(?i)\b(token|key|apikey|api_key|secret|password|pass|pw|auth|webhook)=([^&\s]+)")


def privacy_url(url: str) -> str:
    """The URL with its secrets masked, as apprise renders it (or a generic masking if apprise cannot parse it)."""
    try:
        import apprise

        from watcher.notify.contract import load_plugins

        load_plugins()  # so our own schemes are masked by their plugin too
        obj = apprise.Apprise.instantiate(url, suppress_exceptions=True)
    except Exception:  # noqa: BLE001 - a URL apprise chokes on still gets masked below
        obj = None
    if obj is not None:
        try:
            shown = str(obj.url(privacy=True))  # type: ignore[no-untyped-call]
            # apprise appends every default parameter; show only what the user wrote.
            return shown.split("?", 1)[0] if "?" not in url else shown
        except Exception:  # noqa: BLE001, S110 - fall back to the generic masking
            pass
    return generic(url)


def generic(text: str) -> str:
    """Mask credentials and token-like query values in any text."""
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
    return _QUERY_SECRET.sub(lambda m: f"{m[1]}={MASK}", text)


def secrets_of(url: str) -> set[str]:
    """The secret substrings of ``url``: what apprise's privacy rendering hides."""
    shown = set(_SPLIT.split(privacy_url(url)))
    out: set[str] = set()
    for tok in _SPLIT.split(url):
        if len(tok) >= 4 and tok not in shown and "*" not in tok:
            out.add(tok)
            out.add(unquote(tok))
    m = _USERINFO.search(url)
    if m and len(m["pw"]) >= 2:
        out.add(m["pw"])
    for m2 in _QUERY_SECRET.finditer(url):
        out.add(m2[2])
    if out:
        out.add(url)
    return {s for s in out if s}


class Redactor:
    """Replaces every known secret (of the configured URLs) and generic credentials in text."""

    def __init__(self, urls: Iterable[str] = ()) -> None:
        self._secrets: list[str] = []
        for u in urls:
            self.add(u)

    def add(self, url: str) -> None:
        """Learn the secrets of one more URL."""
        self._secrets = sorted(set(self._secrets) | secrets_of(url), key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for s in self._secrets:
            text = text.replace(s, MASK)
        return generic(text)
