"""The pytest fixtures every test directory shares, registered from tests/conftest.py
(``pytest_plugins``). Process logic lives in the plain modules beside this one.

A test that uses any fixture named in :data:`SERVER_FIXTURES` starts (or shares) a real
server process; tests/conftest.py marks it ``servers`` so ``make test-fast`` can leave
it out.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.fleet import Fleet
from tests.support.hub import HubProcess
from tests.support.node import Agent, keygen
from tests.support.servers import NatsServer, SeaweedS3
from tests.support.site import Site

# Fixtures that start or share a real server process (nats-server, SeaweedFS, a hub in a
# box, agent daemons). A module that starts one in a fixture of its own, or in its test
# bodies, says ``pytestmark = pytest.mark.servers`` instead.
SERVER_FIXTURES = frozenset({"nats_server", "fresh_nats", "s3_server", "hub", "site", "fleet"})

# --------------------------------------------------------------------------- real servers


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """One nats-server with JetStream for the whole session. Do not kill or reconfigure
    it (use ``fresh_nats``); use unique stream names and subjects per test."""
    with NatsServer(tmp_path_factory.mktemp("nats")) as server:
        yield server


@pytest.fixture
def fresh_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """A private nats-server for one test, free to kill(), restart() or reload()."""
    with NatsServer(tmp_path_factory.mktemp("fresh-nats")) as server:
        yield server


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """One SeaweedFS S3 gateway for the whole session (~3-10 s to start). Use
    ``s3_server.make_bucket()`` for a fresh bucket per test."""
    server = SeaweedS3(tmp_path_factory.mktemp("s3"))
    server.start()
    try:
        yield server
    finally:
        server.kill()  # its data is thrown away; stop() would just wait 3 s for SIGTERM


@pytest.fixture(scope="module")
def lock_bucket(s3_server: SeaweedS3) -> str:
    """A bucket with Object Lock in the session's S3, shared by a module's tests."""
    return s3_server.make_bucket(object_lock=True)


@pytest.fixture(scope="module")
def plain_bucket(s3_server: SeaweedS3) -> str:
    """A bucket without Object Lock in the session's S3, shared by a module's tests."""
    return s3_server.make_bucket(object_lock=False)


# --------------------------------------------------------------------------- hubs


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[HubProcess]:
    """A running hub in a box (``amber-hub serve`` with its own nats-server) with its
    data in tmp_path/hub; stopped by pid afterwards, with every nats-server it ran."""
    proc = HubProcess(tmp_path / "hub")
    try:
        proc.start()
        yield proc
    finally:
        proc.cleanup()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """An air-gapped site (tests/support/site.py) shared by the tests of a module."""
    s = Site(tmp_path_factory.mktemp("site"))
    try:
        s.start()
        yield s
    finally:
        s.close()


FLEET_LABELS = {
    "n1": ("site=north", "role=edge"),
    "n2": ("site=north", "role=edge"),
    "n3": ("site=south", "role=edge"),
    "n4": ("site=south", "role=edge"),
}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """One hub in a box and four agent daemons of one vault (n1..n4; n1, n2 labelled
    site=north, n3, n4 site=south; n4 reaches NATS through a fault proxy), shared by the
    tests of a module. Teardown stops every daemon by pid, then the hub."""
    f = Fleet(tmp_path_factory.mktemp("fleet"))
    try:
        f.start()
        for name, labels in FLEET_LABELS.items():
            f.add_node(name, labels, via_proxy=name == "n4")
        for node in f.nodes.values():
            node.start()
        yield f
    finally:
        f.close()


@pytest.fixture
def fresh(fleet: Fleet) -> Fleet:
    """``fleet`` with every daemon running, no marker files, and full-speed links."""
    fleet.reset()
    return fleet


# --------------------------------------------------------------------------- nodes and data


@pytest.fixture
def node(tmp_path: Path) -> Agent:
    """An initialised node (state in tmp_path/state) with no sources yet."""
    return Agent.init(tmp_path / "state")


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """An empty directory for the sources under test."""
    d = tmp_path / "data"
    d.mkdir()
    return d


@pytest.fixture
def vault_key(tmp_path: Path) -> Path:
    """A vault key file to hand to several nodes of one vault."""
    return keygen(tmp_path / "vault.key")
