"""Encrypted links: the attacker sits on the network between a node (or the admin CLI)
and the hub, or answers in the hub's place. No password or token crosses in clear, a
node trusts only the CA its enrolment carries, and a plaintext impostor learns nothing.
Threat rows: docs/SECURITY.md, "Encrypted links"."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from amber.agent.hublink import HubLink
from amber.hub.cli.client import AdminClient
from amber.hub.tls import ensure_hub_tls
from amber.protocol.enrolment import Enrolment
from amber.protocol.errors import HubUnavailableError
from tests.support.data import make_memory
from tests.support.faultproxy import ThreadedProxy
from tests.support.hub import HubProcess, new_agent
from tests.support.node import Agent

pytestmark = pytest.mark.servers  # starts hub or nats-server processes itself


def via_proxy(enrolment: Path, port: int, out: Path) -> Path:
    """The node's enrolment, its server swapped for a proxy on 127.0.0.1:PORT."""
    obj = json.loads(enrolment.read_text())
    obj["nats_servers"] = [f"tls://127.0.0.1:{port}"]
    out.write_text(json.dumps(obj))
    return out


def test_sniffer_between_agent_and_nats_sees_no_password(hub: HubProcess, tmp_path: Path) -> None:
    enrolment = hub.enrol("edge-1", "fleet", tmp_path / "edge-1.json")
    password = json.loads(enrolment.read_text())["password"]
    proxy = ThreadedProxy(hub.nats_port, record=True)
    try:
        tapped = via_proxy(enrolment, proxy.proxy.port, tmp_path / "tapped.json")
        agent = Agent.init(tmp_path / "state", "edge-1", "fleet", enroll=tapped)
        make_memory(tmp_path / "mem")
        agent.add("prompts", "files", tmp_path / "mem" / "prompts")
        agent.checkpoint()
        agent.sync()
        wire = proxy.recorded
    finally:
        proxy.close()
    assert len(wire) > 10_000  # the sync really went through the tap
    assert password.encode() not in wire
    assert b"CONNECT" not in wire and b"INFO" not in wire  # TLS from the first byte
    assert b"You are a careful assistant" not in wire


def test_sniffer_between_cli_and_admin_api_sees_no_token(hub: HubProcess) -> None:
    admin_port = int(hub.runtime["admin_url"].rsplit(":", 1)[1])
    token = json.loads((hub.data / "secrets.json").read_text())["admin_token"]
    proxy = ThreadedProxy(admin_port, record=True)
    try:
        client = AdminClient(
            f"https://127.0.0.1:{proxy.proxy.port}", token, hub.data / "tls" / "ca.pem"
        )
        assert client.call("GET", "/api/v1/nodes") == []
        wire = proxy.recorded
    finally:
        proxy.close()
    assert wire and token.encode() not in wire and b"Authorization" not in wire


def test_admin_cli_refuses_plain_http_and_an_unknown_ca(hub: HubProcess, tmp_path: Path) -> None:
    with pytest.raises(Exception, match="not https://"):
        AdminClient(hub.runtime["admin_url"].replace("https://", "http://"), "t")
    other = ensure_hub_tls(tmp_path / "other", [])
    client = AdminClient(hub.runtime["admin_url"], "a-token", other.ca_file)
    with pytest.raises(HubUnavailableError, match="does not trust") as err:
        client.call("GET", "/api/v1/nodes")
    assert "--ca" in err.value.hint


def test_agent_with_a_wrong_ca_refuses_to_connect(hub: HubProcess, tmp_path: Path) -> None:
    """A man in the middle with a certificate from another CA (here: another hub's)."""
    agent = new_agent(hub, tmp_path, "edge-2", "fleet")
    assert agent.enrolment is not None
    obj = json.loads(agent.enrolment.read_text())
    obj["ca"] = ensure_hub_tls(tmp_path / "other", []).ca_pem()
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(obj))
    assert agent.run("enroll", forged).code == 0
    res = agent.run("sync", "--once")
    assert res.code == 50, res
    assert "does not trust" in res.err
    assert "node rotate" in res.err  # the hint says what to do


async def test_plaintext_impostor_never_sees_the_password(tmp_path: Path) -> None:
    """Whoever answers on the hub's address without TLS (DNS hijack, ARP spoofing)
    offers a plain INFO line; nats-py would answer it with CONNECT and the password
    unless TLS starts before the server speaks."""
    heard = bytearray()

    async def impostor(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b'INFO {"server_id":"x","version":"2.10.0","auth_required":true}\r\n')
        await writer.drain()
        try:
            while data := await asyncio.wait_for(reader.read(4096), 3):
                heard.extend(data)
        except (TimeoutError, ConnectionError):
            pass
        writer.close()

    server = await asyncio.start_server(impostor, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    enr = Enrolment(
        vault="fleet",
        node="edge-3",
        servers=(f"tls://127.0.0.1:{port}",),
        user="node.fleet.edge-3",
        password="never-on-the-wire-0123456789",
        inbox_prefix="_INBOX_fleet.edge-3",
        ca=ensure_hub_tls(tmp_path, []).ca_pem(),
        tls_handshake_first=True,
    )
    async with server:
        with pytest.raises(HubUnavailableError):
            await HubLink.connect(enr, timeout=3)
    assert b"never-on-the-wire" not in heard and b"CONNECT" not in heard
