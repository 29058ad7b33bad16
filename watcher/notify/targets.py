"""Where notifications go: apprise URLs from flags, the environment, the config file and apprise config files.

A URL may carry a severity filter in apprise's own tag syntax, ``critical,warning=slack://...``: such a target
only receives incidents of those severities (resolved and repeat messages follow the incident's severity);
a target without tags receives everything. Tags written in an apprise config file (``--notify-config``,
``[notify] config``) work the same way.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from watcher.incidents import SEVERITIES
from watcher.notify.redact import privacy_url

_TAGGED = re.compile(r"^(?P<tags>[\w, -]+)=(?P<url>[A-Za-z][\w+.-]*://.*)$")


@dataclass(frozen=True)
class Target:
    """One apprise URL with its severity filter."""

    url: str
    tags: frozenset[str] = field(default_factory=frozenset)

    @property
    def id(self) -> str:
        """Stable id of the target (the outbox stores this, never the URL with its token)."""
        import hashlib

        return hashlib.sha256(self.url.encode()).hexdigest()[:16]

    @property
    def label(self) -> str:
        """The URL with secrets masked, for every output."""
        return privacy_url(self.url)

    def accepts(self, severity: str) -> bool:
        """Whether this target wants messages about incidents of ``severity``."""
        wanted = self.tags & set(SEVERITIES)
        return not wanted or severity in wanted


def parse(entry: str) -> Target:
    """``URL`` or ``tag1,tag2=URL``."""
    entry = entry.strip()
    m = _TAGGED.match(entry)
    if m:
        tags = frozenset(t.strip().lower() for t in m["tags"].split(",") if t.strip())
        return Target(m["url"].strip(), tags)
    return Target(entry)


def from_apprise_config(path: Path) -> list[Target]:
    """The URLs and tags of an apprise configuration file (text or YAML)."""
    import apprise

    conf = apprise.AppriseConfig()
    if not conf.add(str(path)):
        raise ValueError(f"cannot read apprise config {path}")
    out = []
    for server in conf.services():
        url = str(server.url(privacy=False))  # type: ignore[no-untyped-call]
        out.append(Target(url, frozenset(str(t).lower() for t in server.tags)))
    return out


def collect(flags: Iterable[str], environ: Mapping[str, str], conf_urls: Iterable[Any],
            apprise_configs: Iterable[str | Path]) -> list[Target]:
    """Every configured target once, in the order flags, environment, config file, apprise config files.

    ``SPECWATCH_NOTIFY`` holds one or more URLs separated by whitespace (apprise URLs may contain commas).
    """
    entries = [*flags, *environ.get("SPECWATCH_NOTIFY", "").split(), *(str(u) for u in conf_urls)]
    targets = [parse(e) for e in entries if e.strip()]
    for path in apprise_configs:
        targets.extend(from_apprise_config(Path(path)))
    seen: set[str] = set()
    unique = []
    for t in targets:
        if t.url not in seen:
            seen.add(t.url)
            unique.append(t)
    return unique


def labeller(targets: Sequence[Target], redact: Callable[[str], str]) -> Callable[[str], str]:
    """How an outbox row's stored label is shown: as its target's label of today, and redacted whatever it
    holds (a row queued by an older specwatch may hold a label that masked less: a webhook's path token)."""
    current = {old: t.label for t in targets for old in (t.url, t.url.split("?", 1)[0], t.label)}

    def shown(label: str) -> str:
        return current.get(label) or redact(label)

    return shown
