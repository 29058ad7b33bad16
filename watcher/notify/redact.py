"""Secret redaction: every line specwatch prints, logs or stores about a target goes through ``Redactor``.

Notification URLs carry tokens in the user part, the host (Slack), the path (webhooks) or the query.
apprise knows, per scheme, which parts are secret and renders a *privacy* URL with them masked; the
parts that differ between the real URL and the privacy URL are the secrets, whichever scheme it is.
apprise shows the path and the header values of its generic webhooks (``json://host/hook/TOKEN``) in
clear, because it cannot know which part of someone's receiver is secret: there every path segment but
the plain words webhook paths are made of is masked, and every header and payload value.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import unquote, urlsplit

MASK = "****"
_SPLIT = re.compile(r"[/:@?&=#,+]")
#: Credentials in any URL, even one apprise could not parse.
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][\w+.-]*://)(?P<user>[^/@\s:]*):(?P<pw>[^/@\s]+)@")
_QUERY_SECRET = re.compile(r"(?i)\b(token|key|apikey|api_key|secret|password|pass|pw|auth|webhook)=([^&\s]+)")
#: Generic webhooks: apprise's JSON, XML and form POSTs, specwatch's Alertmanager, plain http(s) URLs apprise
#: does not recognise. Their path belongs to the receiver, so any segment of it may be a token.
WEBHOOK_SCHEMES = frozenset({"json", "jsons", "xml", "xmls", "form", "forms", "alertmanager", "alertmanagers",
                             "http", "https"})
#: Path segments shown as they are: the words webhook paths are made of, never a secret.
_PLAIN_SEGMENT = re.compile(r"(?i)(?:api|hooks?|webhooks?|notify|notifications?|alerts?|events?|services|"
                            r"incoming|messages?|v\d{1,2})")
#: A webhook URL quoted in any text (an error message): up to the first space or quote.
_WEBHOOK_URL = re.compile(r"(?i)\b(?:json|jsons|xml|xmls|form|forms|alertmanagers?)://[^\s'\"<>]+")
#: Query keys apprise turns into HTTP headers (+), request parameters (-) or payload fields (:).
_HEADER_VALUE = re.compile(r"(?i)([?&](?:\+|-|:|%2B|%3A)[^=&#\s]*)=([^&#\s]*)")


def privacy_url(url: str) -> str:
    """The URL with its secrets masked, as apprise renders it (or a generic masking if apprise cannot parse it)."""
    try:
        import apprise

        from watcher.notify import plugins

        plugins.load()  # so our own schemes are masked by their plugin too
        obj = apprise.Apprise.instantiate(url, suppress_exceptions=True)
    except Exception:  # noqa: BLE001 - a URL apprise chokes on still gets masked below
        obj = None
    if obj is not None:
        try:
            shown = str(obj.url(privacy=True))  # type: ignore[no-untyped-call]
            # apprise appends every default parameter; show only what the user wrote.
            return mask_webhook(shown.split("?", 1)[0] if "?" not in url else shown)
        except Exception:  # noqa: BLE001, S110 - fall back to the generic masking
            pass
    return mask_webhook(generic(url))


def mask_webhook(url: str) -> str:
    """``url`` with its path segments (but plain words) and header values masked, if it is a generic webhook."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.scheme.lower() not in WEBHOOK_SCHEMES or not url[len(parts.scheme):].startswith("://"):
        return url
    path = "/".join(seg if not seg or seg == MASK or _PLAIN_SEGMENT.fullmatch(seg) else MASK
                    for seg in parts.path.split("/"))
    query = _HEADER_VALUE.sub(lambda m: f"{m[1]}={MASK}", "?" + parts.query)[1:] if parts.query else ""
    head = url[:len(parts.scheme) + 3 + len(parts.netloc)]
    return head + path + (f"?{query}" if query else "") + (f"#{MASK}" if parts.fragment else "")


def generic(text: str) -> str:
    """Mask credentials, token-like query values and the paths of generic webhook URLs in any text."""
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
    text = _QUERY_SECRET.sub(lambda m: f"{m[1]}={MASK}", text)
    return _WEBHOOK_URL.sub(lambda m: mask_webhook(m[0]), text)


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
