"""Hints are computed from the logged sizes: the seed stories' numbers."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from watcher.hints import kv_levers


def test_seed_draft_kv_on_full_cuda1() -> None:
    """Seed 001: a 7168 MiB draft KV cache for a 131072-token context: half the context frees 3584 MiB."""
    levers = dict(kv_levers(7168.0, 131072, 1))
    assert levers == {"context 65,536 instead of 131,072": 3584.0}


def test_seed_parallel_16_by_8192() -> None:
    """Seed 000: parallel 16 x 8192 pre-allocating ~23.8 GiB; --parallel 8 frees half of it (~11.9 GiB)."""
    kv = 23.8 * 1024
    levers = dict(kv_levers(kv, 8192, 16))
    assert levers["--parallel 8 instead of 16"] == pytest.approx(kv / 2)
    assert levers["--parallel 1 instead of 16"] == pytest.approx(kv * 15 / 16)


def test_fitting_context_from_free_memory() -> None:
    """With 2000 MiB free, a 7168 MiB / 131072-token draft cache fits at 32768 tokens (1792 MiB)."""
    levers = dict(kv_levers(7168.0, 131072, 1, free_mib=2000.0))
    assert levers["context 32,768 (fits the 2,000 MiB free)"] == pytest.approx(7168 - 1792)


@given(st.floats(1, 1e6), st.integers(256, 1 << 20), st.integers(1, 64), st.floats(0, 1e6))
def test_levers_never_free_more_than_the_cache(kv: float, n_ctx: int, slots: int, free: float) -> None:
    """No lever frees more than the KV cache holds, or a negative amount."""
    for _, freed in kv_levers(kv, n_ctx, slots, free):
        assert 0 <= freed <= kv + 1e-6
