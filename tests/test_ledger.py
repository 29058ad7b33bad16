"""The memory ledger's KV arithmetic, with figures from real logs."""

from __future__ import annotations

from watcher.ledger import Ledger


def test_kv_per_token_and_slot_from_engine_sample() -> None:
    """spec-parallel-4-verbose.log: 'CPU KV buffer size = 0.25 MiB', '512 cells, 4/4 seqs', n_slots = 4."""
    led = Ledger()
    led.add("target", "kv", "CPU", 0.25, 130)
    led.kv_cells["target"] = 512
    assert led.kv_per_token("target") == 0.25 / 512
    assert led.kv_per_slot("target", 4) == 0.0625


def test_kv_figures_absent_without_cells_or_kv() -> None:
    """No KV lines (default verbosity since b9151 hides them): no per-token figure is invented."""
    led = Ledger()
    assert led.kv_per_token("draft") is None
    assert led.kv_per_slot("draft", 4) is None
    led.add("draft", "kv", "CUDA1", 7168.0, 39)
    assert led.kv_per_token("draft") is None  # cells unknown
    assert led.kv_per_slot("draft", 4) == 1792.0
