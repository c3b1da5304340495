"""Fixtures for the bundle tests; helpers live in bundle_helpers.py next to this file.

``site`` is one hub in a box (tests/hub/hub_helpers.HubProcess) shared by the tests of a
module, with a vault key for its nodes; the nodes themselves never reach the hub.
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

from bundle_helpers import Site  # noqa: E402


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    s = Site(tmp_path_factory.mktemp("site"))
    try:
        s.start()
        yield s
    finally:
        s.close()
