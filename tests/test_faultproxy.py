"""The asyncio TCP fault proxy: a NATS client through it survives a cut link."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.msg import Msg

from tests.support.faultproxy import FaultProxy
from tests.support.servers import NatsServer


@pytest.fixture
async def nats_proxy(nats_server: NatsServer) -> AsyncIterator[FaultProxy]:
    proxy = FaultProxy("127.0.0.1", nats_server.port)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()


@pytest.fixture
async def echo_proxy() -> AsyncIterator[FaultProxy]:
    """A proxy in front of a tiny TCP echo server."""

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    proxy = FaultProxy("127.0.0.1", server.sockets[0].getsockname()[1])
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()
        server.close()


async def test_nats_client_reconnects_after_cut(
    nats_server: NatsServer, nats_proxy: FaultProxy
) -> None:
    disconnected = asyncio.Event()
    reconnected = asyncio.Event()

    async def on_disconnect() -> None:
        disconnected.set()

    async def on_reconnect() -> None:
        reconnected.set()

    subject = f"fp.{uuid.uuid4().hex}"
    received: asyncio.Queue[bytes] = asyncio.Queue()

    async def on_msg(msg: Msg) -> None:
        await received.put(msg.data)

    # The observer talks to the server directly; the client goes through the proxy.
    observer = await nats.connect(nats_server.url)
    client = await nats.connect(
        nats_proxy.url(),
        reconnect_time_wait=0.2,
        max_reconnect_attempts=-1,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
    )
    try:
        async with asyncio.timeout(30):
            await observer.subscribe(subject, cb=on_msg)
            await observer.flush()

            await client.publish(subject, b"before")
            await client.flush()
            assert await received.get() == b"before"
            assert nats_proxy.active_connections == 1

            nats_proxy.cut()
            await disconnected.wait()
            assert not client.is_connected
            # Reconnect attempts are refused while the link is down.
            attempts = nats_proxy.connections_total
            await asyncio.sleep(0.6)
            assert nats_proxy.connections_total > attempts
            assert not reconnected.is_set()

            nats_proxy.restore()
            await reconnected.wait()
            assert client.is_connected

            await client.publish(subject, b"after")
            await client.flush()
            assert await received.get() == b"after"
    finally:
        await client.close()
        await observer.close()


async def test_blackhole_cut_then_restore(echo_proxy: FaultProxy) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", echo_proxy.port)
    try:
        async with asyncio.timeout(10):
            writer.write(b"ping")
            assert await reader.readexactly(4) == b"ping"

            echo_proxy.cut(silent=True)
            writer.write(b"lost")
            await writer.drain()
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(reader.read(1), 0.3)

            echo_proxy.restore()  # black-holed connections are reset
            assert await reader.read(1) == b""
    finally:
        writer.close()

    reader, writer = await asyncio.open_connection("127.0.0.1", echo_proxy.port)
    try:
        async with asyncio.timeout(10):
            writer.write(b"again")
            assert await reader.readexactly(5) == b"again"
    finally:
        writer.close()


async def test_latency_and_bandwidth_slow_the_link(echo_proxy: FaultProxy) -> None:
    # Only lower bounds are asserted: the proxy can make things slower, never faster.
    reader, writer = await asyncio.open_connection("127.0.0.1", echo_proxy.port)
    try:
        async with asyncio.timeout(20):
            echo_proxy.set_latency(0.1)
            start = time.monotonic()
            writer.write(b"x")
            assert await reader.readexactly(1) == b"x"
            assert time.monotonic() - start >= 0.2  # 0.1 s each way

            echo_proxy.set_latency(0)
            echo_proxy.set_bandwidth(200_000)
            payload = bytes(100_000)
            start = time.monotonic()
            writer.write(payload)
            assert await reader.readexactly(len(payload)) == payload
            assert time.monotonic() - start >= 0.45  # 100 kB at 200 kB/s

            echo_proxy.set_bandwidth(None)
            writer.write(payload)
            assert await reader.readexactly(len(payload)) == payload
    finally:
        writer.close()
