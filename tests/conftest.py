"""Shared pytest fixtures. Process logic lives in tests/support/servers.py; keep this file thin.

Sections: real servers (below). Add new fixtures under a section heading of their own.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

# `tests.support.servers` / `tests.support.faultproxy` are importable however pytest is launched:
# pyproject.toml puts the repository root on sys.path (pytest's `pythonpath`).
from tests.support.servers import NatsServer, SeaweedS3

# --------------------------------------------------------------------------- real servers


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """One nats-server with JetStream for the whole session. Do not kill or reconfigure
    it (use ``fresh_nats``); use unique stream names and subjects per test."""
    server = NatsServer(tmp_path_factory.mktemp("nats"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fresh_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """A private nats-server for one test, free to kill(), restart() or reload()."""
    server = NatsServer(tmp_path_factory.mktemp("fresh-nats"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


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
