"""Shared helpers for the follower tests: a failure line per number and a recorder of recognised events."""

from __future__ import annotations

from pathlib import Path

from watcher import catalogue as cat
from watcher.checkpoints import Checkpoints
from watcher.events import Event
from watcher.pipeline import Analyzer
from watcher.sources.tail import Follower, specs

CATALOGUE = cat.load([cat.default_dir()])


def failure(n: int) -> bytes:
    """A real llama-server failure line naming draft number ``n``, so each one is its own event."""
    return f"srv    load_model: failed to load draft model, '/m/d{n}.gguf'\n".encode()


def filler(n: int) -> bytes:
    """An ordinary log line that is not an event."""
    return f"srv  update_slots: all slots are idle ({n})\n".encode()


class Recorder:
    """Collects the draft numbers of recognised failure events, per source."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int]] = []
        self.lines: list[int] = []  # the line number of each recognised failure
        self.errors: list[tuple[str, str]] = []
        self.notices: list[tuple[str, str]] = []

    def make(self, source: str) -> Analyzer:
        def on_event(ev: Event) -> None:
            model = ev.get("model")
            if ev.type == "draft_load_failed" and model:
                self.seen.append((source, int(Path(model).stem[1:])))
                self.lines.append(ev.record.lineno)

        return Analyzer(CATALOGUE, source=source, on_event=on_event)

    def numbers(self) -> list[int]:
        return [n for _, n in self.seen]

    def follower(self, paths: list[Path], store: Checkpoints | None = None, **kw: object) -> Follower:
        return Follower(specs(paths), self.make, checkpoints=store,
                        on_error=lambda p, m: self.errors.append((p, m)),
                        on_notice=lambda p, m: self.notices.append((p, m)), **kw)  # type: ignore[arg-type]


def append(path: Path, data: bytes) -> None:
    with path.open("ab") as fh:
        fh.write(data)
