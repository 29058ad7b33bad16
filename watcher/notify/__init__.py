"""Alerts that persist: the outbox, delivery through apprise, first-party targets (see contract.py)."""

# The delivery defaults live here, not in worker.py, so that ``--help`` can show them without loading the store.
DEFAULT_REPEAT = 3600.0
DEFAULT_BACKOFF = 10.0
DEFAULT_BACKOFF_MAX = 300.0
