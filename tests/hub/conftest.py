"""Fixtures for the hub and sync tests; helpers live in hub_helpers.py next to this file.

``hub`` is a real hub in a box (``amber-hub serve`` subprocess with its own nats-server)
in a fresh data directory; it is stopped by pid afterwards, and every nats-server it
ever ran is killed by its pid file, so no process survives a test.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from hub_helpers import HubProcess, keygen  # noqa: E402


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[HubProcess]:
    """A running hub in a box with its data in tmp_path/hub."""
    proc = HubProcess(tmp_path / "hub")
    try:
        proc.start()
        yield proc
    finally:
        proc.cleanup()


@pytest.fixture
def vault_key(tmp_path: Path) -> Path:
    """A vault key file to hand to several nodes of one vault."""
    return keygen(tmp_path / "vault.key")
