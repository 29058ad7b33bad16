"""Message text: what broke and where in the title, the hint, the place and a few proving lines in the body.

Text is plain: apprise converts it for each target's markup (HTML, Markdown, Slack) and escapes it on the
way. Control characters are removed and every part is capped, so a pathological log line cannot make a
message too long for a phone. Evidence lines are the catalogue's matched lines (errors and load messages),
never prompt or completion text; lines that look like request content are dropped anyway.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from typing import Any

from watcher.incidents import slot_list

TITLE_MAX = 200
BODY_MAX = 1800
LINE_MAX = 200
EVIDENCE_LINES = 3
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\u200b-\u200f\u2028-\u202e]")
#: Verbose llama.cpp logs print request and prompt content; such lines never leave the machine.
_CONTENT = re.compile(r'(?i)("(prompt|content|messages|text|input)"\s*:|\bprompt\s*[:=]\s*["\']|<\|im_start\|>)')
_SEVERITY_ORDER = {"critical": 0, "warning": 1, "info": 2}
_PREFIX = {"opened": "", "repeat": "Still open: ", "resolved": "Resolved: ", "acknowledged": "Acknowledged: ",
           "test": ""}
#: Messages that say an incident needs nobody any more: no hint, no ``specwatch ack`` line.
_ENDED = ("resolved", "acknowledged")


def clean(text: str, limit: int) -> str:
    """One line of safe text, at most ``limit`` characters."""
    text = _CONTROL.sub(" ", text).replace("\r", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def severity_of(items: Sequence[dict[str, Any]]) -> str:
    """The most severe severity among the items."""
    return min((str(i.get("severity", "info")) for i in items), key=lambda s: _SEVERITY_ORDER.get(s, 3),
               default="info")


def render(items: Sequence[dict[str, Any]], redact: Callable[[str], str],
           clock: Callable[[], float] = time.time) -> tuple[str, str]:
    """Title and body for one (possibly grouped) message; ``items`` carry ``message`` and the incident fields."""
    if not items:
        return "specwatch test", "specwatch can reach this target."
    if len(items) == 1:
        it = items[0]
        title = _PREFIX.get(str(it["message"]), "") + str(it["title"])
        body = _block(it, clock)
    else:
        hosts = sorted({str(i.get("host", "")) for i in items})
        counts = {k: sum(1 for i in items if (i["message"] if i["message"] in _ENDED else "open") == k)
                  for k in ("open", *_ENDED)}
        parts = [f"{n} {k}" for k, n in counts.items() if n]
        title = f"specwatch: {', '.join(p for p in parts if p)} speculative-decoding incidents on {', '.join(hosts)}"
        body = "\n\n".join(f"{_PREFIX.get(str(i['message']), '') or '• '}{i['title']}\n{_block(i, clock)}"
                           for i in items)
    return redact(clean(title, TITLE_MAX)), redact(_cap(body))


def _block(it: dict[str, Any], clock: Callable[[], float]) -> str:
    lines = []
    if it["message"] not in _ENDED and it.get("hint"):
        lines.append(clean(str(it["hint"]), LINE_MAX * 2))
    if it["message"] == "resolved" and it.get("resolution"):
        lines.append(clean(f"Resolved: {it['resolution']}", LINE_MAX))
    if it["message"] == "acknowledged":
        note = f": {it['ack_note']}" if it.get("ack_note") else ""
        lines.append(clean(f"Acknowledged{note}", LINE_MAX))
    where = f"host {it.get('host', '?')}, source {it.get('source', '?')}"
    if it.get("slots"):
        where += f", slots {slot_list(list(it['slots']))}"
    lines.append(clean(where, LINE_MAX))
    seen = f"seen {it.get('count', 1)}x since {_ago(float(it.get('opened_at') or it.get('first_seen') or 0), clock)}"
    if it["message"] not in _ENDED:
        seen += f"; acknowledge: specwatch ack {str(it['id'])[:8]}"
    lines.append(seen)
    evidence = [e for e in it.get("evidence", []) if not _CONTENT.search(str(e.get("text", "")))]
    for e in evidence[:EVIDENCE_LINES]:
        lines.append(clean(f"  {e.get('line', '')}: {e.get('text', '')}", LINE_MAX))
    return "\n".join(lines)


def _ago(t: float, clock: Callable[[], float]) -> str:
    stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(t))
    minutes = int(max(0.0, clock() - t) // 60)
    return stamp if minutes < 1 else f"{stamp} ({minutes} min ago)" if minutes < 120 else \
        f"{stamp} ({minutes // 60} h ago)"


def _cap(body: str) -> str:
    body = "\n".join(_CONTROL.sub(" ", line) for line in body.splitlines())
    return body if len(body) <= BODY_MAX else body[: BODY_MAX - 20].rstrip() + "\n… (truncated)"
