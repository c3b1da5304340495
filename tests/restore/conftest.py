"""Fixtures for the staged-restore tests; helpers live in restore_helpers.py next to this.

``fleet`` is one hub in a box and four agent daemons of one vault (n1..n4; n1, n2
labelled site=north, n3, n4 site=south; n4 reaches NATS through a fault proxy), shared by
the tests of a module. ``fresh`` hands it to a test with every daemon running, no marker
files, and full-speed links. Teardown stops every daemon by pid, then the hub and its
nats-server (tests/hub/hub_helpers.HubProcess.cleanup).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

_HERE = Path(__file__).resolve().parent
for _p in (_HERE, _HERE.parent / "hub"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from restore_helpers import Fleet  # noqa: E402

LABELS = {
    "n1": ("site=north", "role=edge"),
    "n2": ("site=north", "role=edge"),
    "n3": ("site=south", "role=edge"),
    "n4": ("site=south", "role=edge"),
}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    f = Fleet(tmp_path_factory.mktemp("fleet"))
    try:
        f.start()
        for name, labels in LABELS.items():
            f.add_node(name, labels, via_proxy=name == "n4")
        for node in f.nodes.values():
            node.start()
        yield f
    finally:
        f.close()


@pytest.fixture
def fresh(fleet: Fleet) -> Fleet:
    fleet.reset()
    return fleet
