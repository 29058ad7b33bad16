"""Network helpers shared by the commands that open or reach HTTP endpoints."""

from __future__ import annotations

import ipaddress


def is_loopback_host(host: str) -> bool:
    """Only 127.0.0.0/8, ::1 and ``localhost`` count as loopback."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
