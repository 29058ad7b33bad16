"""Typed events: what one recognised log line says, the unit that flows from classify to state."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: Field names a pattern may capture, with the type each is converted to. A fixed vocabulary
#: (like fail2ban's ``<F-*>`` tags) lets state code rely on names instead of on regexes.
FIELD_TYPES: dict[str, type] = {
    "slot": int,
    "task": int,
    "n_ctx": int,
    "n_slots": int,
    "accepted": int,
    "generated": int,
    "layers": int,
    "total_layers": int,
    "device_index": int,
    "bytes": int,
    "cells": int,
    "seqs": int,
    "tokens": int,
    "build": int,
    # The first llama.cpp build that prints a wording: a pattern ``set``s it to date a log whose build line is
    # missing or reads ``b0-unknown`` (behaviour changed by era, e.g. -md alone stopped enabling the draft).
    "min_build": int,
    "port": int,
    "free_mib": float,
    "total_mib": float,
    "mib": float,
    "gib": float,
    "limit_mib": float,
    "mb": float,
    "rate": float,
    "mean_len": float,
    "tps": float,
    "model": str,
    "draft_model": str,
    "target_model": str,
    "device": str,
    "buffer": str,
    "reason": str,
    "impl": str,
    "kind": str,
    "commit": str,
    "server": str,
    "cmd": str,
    "detail": str,
    # Why a failure happened, in a fixed vocabulary the state rules and hints read (memory, missing_file,
    # bad_gguf, unknown_arch, vocab, index_error, ...): set by the pattern, never guessed from the text.
    "cause": str,
    # The architecture named by an "unknown model architecture" or "requires ctx_other" message.
    "arch": str,
    # Whose line this is when the line itself says so ("draft": a draft-only architecture, for example).
    "role": str,
    # The model id as llama-swap's config names it (its "<id>" prefix), distinct from a GGUF path in
    # ``model``: the demux in watcher/swap.py keys per-model state on it.
    "swap_model": str,
}


@dataclass(frozen=True)
class Record:
    """One log line after framing: decoded, ANSI-free, capped, with its 1-based line number."""

    text: str
    lineno: int
    source: str = "-"


@dataclass(frozen=True)
class Event:
    """A recognised line: the event type its pattern yields, the typed fields it captured."""

    type: str
    pattern: str
    record: Record
    fields: dict[str, Any] = field(default_factory=dict)

    def get(self, name: str, default: Any = None) -> Any:
        """A captured field, or ``default`` when the line did not carry it."""
        value = self.fields.get(name)
        return default if value is None else value
