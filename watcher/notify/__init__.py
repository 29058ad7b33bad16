"""Alerts that persist: the outbox, delivery through apprise, first-party targets (see contract.py)."""
