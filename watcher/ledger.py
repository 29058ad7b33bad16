"""The memory ledger of one server run: who allocated what, on which device, and what did not fit."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

_DEV_INDEX = re.compile(r"(\d+)$")


def device_name(buffer: str | None, index: int | None = None, backend: str = "CUDA") -> str:
    """Normalise a buffer or device name: ``CUDA0``, ``ROCm1``, ``Vulkan0``, ``Metal``, ``CPU``.

    Host-side buffers (``CUDA_Host``, ``CPU_Mapped``, ``Metal_Mapped``) live in system RAM or unified
    memory; they are kept distinct from the device so a VRAM table is not polluted by them.
    """
    if buffer:
        name = buffer.strip()
        if name.endswith("_Mapped"):
            name = name[: -len("_Mapped")]
        return name
    if index is not None:
        return f"{backend}{index}"
    return "?"


@dataclass
class Allocation:
    """One line of the ledger."""

    role: str  # target | draft
    kind: str  # model | kv | compute | output | rs
    device: str
    mib: float
    lineno: int


@dataclass
class Failure:
    """An allocation that did not fit."""

    role: str
    device: str
    mib: float | None
    what: str  # kv | compute | model | unknown
    lineno: int


@dataclass
class Ledger:
    """Per-run memory figures, per device, for the target and the draft."""

    allocations: list[Allocation] = field(default_factory=list)
    free: dict[str, float] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    offload: dict[str, tuple[int, int]] = field(default_factory=dict)
    kv_cells: dict[str, int] = field(default_factory=dict)
    #: MiB llama.cpp estimated for a role before loading it ("[spec] estimated memory usage of draft").
    estimated: dict[str, float] = field(default_factory=dict)

    def add(self, role: str, kind: str, device: str, mib: float, lineno: int) -> None:
        """Record a successful allocation."""
        self.allocations.append(Allocation(role, kind, device, mib, lineno))

    def total(self, role: str | None = None, kind: str | None = None, device: str | None = None) -> float:
        """Sum of allocations matching every given filter."""
        return sum(
            a.mib
            for a in self.allocations
            if (role is None or a.role == role) and (kind is None or a.kind == kind)
            and (device is None or a.device == device)
        )

    def devices(self) -> list[str]:
        """Devices mentioned anywhere, in first-seen order."""
        seen: dict[str, None] = {}
        for d in self.free:
            seen.setdefault(d, None)
        for a in self.allocations:
            seen.setdefault(a.device, None)
        for f in self.failures:
            seen.setdefault(f.device, None)
        return list(seen)

    def table(self) -> list[dict[str, Any]]:
        """Rows per device: free at load, target and draft use by kind (``rs``: recurrent state), what failed."""
        rows = []
        for dev in self.devices():
            row: dict[str, Any] = {"device": dev, "free_mib": self.free.get(dev)}
            for role in ("target", "draft"):
                for kind in ("model", "kv", "rs", "compute"):
                    v = self.total(role, kind, dev)
                    row[f"{role}_{kind}_mib"] = round(v, 2) if v else None
            failed = [f for f in self.failures if f.device == dev]
            row["failed_mib"] = max((f.mib or 0 for f in failed), default=None) or None
            row["failed_role"] = failed[0].role if failed else None
            rows.append(row)
        return rows

    def kv_per_token(self, role: str) -> float | None:
        """MiB of KV cache per token of context, from the logged KV buffers and the cell count."""
        cells = self.kv_cells.get(role)
        kv = self.total(role, "kv")
        return kv / cells if cells and kv else None

    def kv_per_slot(self, role: str, n_slots: int | None) -> float | None:
        """MiB of KV cache each slot pre-allocates (llama.cpp sizes the cache for every slot's context)."""
        kv = self.total(role, "kv")
        return kv / n_slots if kv and n_slots else None

    def empty(self) -> bool:
        """Nothing recorded."""
        return not (self.allocations or self.free or self.failures)
