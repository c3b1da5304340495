"""Fixtures for the edge agent's tests; helpers live in agent_helpers.py next to this file."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)


@pytest.fixture
def node(tmp_path: Path) -> Any:
    """An initialised node (state in tmp_path/state) with no sources yet."""
    from agent_helpers import Node

    return Node.init(tmp_path / "state")


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """An empty directory for the sources under test."""
    d = tmp_path / "data"
    d.mkdir()
    return d
