"""A small asyncio TCP fault proxy for tests (a stand-in for Toxiproxy).

    proxy = FaultProxy("127.0.0.1", nats_server.port)
    await proxy.start()                      # listens on 127.0.0.1:proxy.port
    nc = await nats.connect(proxy.url("nats"))
    proxy.cut()                              # reset every link, refuse new ones
    proxy.restore()
    proxy.set_latency(0.05)                  # +50 ms each way, on every connection
    proxy.set_bandwidth(1_000_000)           # 1 MB/s each way, per connection
    await proxy.stop()

:class:`ThreadedProxy` runs one on an event loop thread of its own, so synchronous tests
can cut and slow a link while a child process talks through it.

Faults:
- ``cut()``: abort (RST) every proxied connection, and accept-then-abort new ones until
  ``restore()``. The client sees the link drop at once and reconnect attempts fail.
- ``cut(silent=True)``: a black hole. Connections stay open but nothing is delivered in
  either direction (the proxy reads and drops it), and new connections are accepted but
  never reach the target: the client only notices through its own timeouts / pings.
  ``restore()`` then aborts the black-holed connections (their byte streams have lost
  data, as a real link would after TCP gave up) so clients reconnect cleanly.
- ``set_latency(s)``: every chunk is delivered ``s`` seconds after it was read, in each
  direction (so a request/response round trip gains ``2 * s``). Order is kept.
- ``set_bandwidth(bps)``: each direction of each connection is throttled to ``bps``
  bytes per second (``None``: unlimited).

Sniffing: ``FaultProxy(..., record=True)`` keeps every delivered byte in ``recorded``
(both directions, in delivery order), so a test can look for secrets on the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["FaultProxy", "ThreadedProxy"]

_READ_SIZE = 64 * 1024
_QUEUE_CHUNKS = 32  # per direction: bounds buffering so TCP backpressure still works
_EOF = b""

State = Literal["up", "cut", "blackhole"]


@dataclass(eq=False)
class _Link:
    client_reader: asyncio.StreamReader
    client_writer: asyncio.StreamWriter
    upstream_reader: asyncio.StreamReader | None = None
    upstream_writer: asyncio.StreamWriter | None = None
    blackholed: bool = False
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def abort(self) -> None:
        for w in (self.client_writer, self.upstream_writer):
            if w is not None:
                w.transport.abort()
        current = asyncio.current_task()
        for t in self.tasks:
            if t is not current:
                t.cancel()


class FaultProxy:
    """Forward TCP from ``127.0.0.1:<port>`` to ``target_host:target_port``, with faults."""

    def __init__(
        self,
        target_host: str,
        target_port: int,
        listen_host: str = "127.0.0.1",
        *,
        record: bool = False,
    ) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.listen_host = listen_host
        self._server: asyncio.Server | None = None
        self._port: int | None = None
        self._links: set[_Link] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._state: State = "up"
        self._latency = 0.0
        self._bandwidth: float | None = None
        self.bytes_upstream = 0  # client -> target, delivered
        self.bytes_downstream = 0  # target -> client, delivered
        self.connections_total = 0  # accepted, including refused ones
        self.recorded: bytearray | None = bytearray() if record else None

    # -- info
    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("FaultProxy not started")
        return self._port

    @property
    def host(self) -> str:
        return self.listen_host

    def url(self, scheme: str = "nats") -> str:
        return f"{scheme}://{self.listen_host}:{self.port}"

    @property
    def state(self) -> State:
        return self._state

    @property
    def active_connections(self) -> int:
        """Connections currently forwarding to the target."""
        return sum(1 for link in self._links if link.upstream_writer is not None)

    @property
    def latency(self) -> float:
        return self._latency

    @property
    def bandwidth(self) -> float | None:
        return self._bandwidth

    # -- lifecycle
    async def start(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._on_client, self.listen_host, 0)
        self._port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self._abort_all()
        handlers = list(self._handlers)
        for t in handlers:
            t.cancel()
        if handlers:
            await asyncio.gather(*handlers, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None

    async def __aenter__(self) -> FaultProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- controls
    def cut(self, silent: bool = False) -> None:
        """Drop the link: reset all connections (or black-hole them with ``silent``)."""
        if silent:
            self._state = "blackhole"
            for link in self._links:
                link.blackholed = True
        else:
            self._state = "cut"
            self._abort_all()

    def restore(self) -> None:
        """Let traffic through again. Black-holed connections are aborted."""
        self._state = "up"
        for link in list(self._links):
            if link.blackholed:
                self._drop(link)

    def set_latency(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("latency must be >= 0")
        self._latency = float(seconds)

    def set_bandwidth(self, bytes_per_sec: float | None) -> None:
        if bytes_per_sec is not None and bytes_per_sec <= 0:
            raise ValueError("bandwidth must be > 0 bytes/s, or None for unlimited")
        self._bandwidth = None if bytes_per_sec is None else float(bytes_per_sec)

    # -- internals
    def _abort_all(self) -> None:
        for link in list(self._links):
            self._drop(link)

    def _drop(self, link: _Link) -> None:
        self._links.discard(link)
        link.abort()

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self.connections_total += 1
        link = _Link(reader, writer)
        try:
            if self._state == "cut":
                writer.transport.abort()
                return
            self._links.add(link)
            if self._state == "blackhole":
                link.blackholed = True
                await self._swallow(reader)
                return
            try:
                up_r, up_w = await asyncio.open_connection(self.target_host, self.target_port)
            except OSError:
                writer.transport.abort()
                return
            if link not in self._links:  # cut while we were connecting
                up_w.transport.abort()
                return
            link.upstream_reader, link.upstream_writer = up_r, up_w
            up = asyncio.create_task(self._direction(link, reader, up_w, upstream=True))
            down = asyncio.create_task(self._direction(link, up_r, writer, upstream=False))
            link.tasks.update((up, down))
            await asyncio.gather(up, down, return_exceptions=True)
        except asyncio.CancelledError:
            pass
        finally:
            self._links.discard(link)
            link.abort()
            self._handlers.discard(task)

    async def _swallow(self, reader: asyncio.StreamReader) -> None:
        while await reader.read(_READ_SIZE):
            pass

    async def _direction(
        self,
        link: _Link,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        upstream: bool,
    ) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(_QUEUE_CHUNKS)

        async def pump_in() -> None:
            try:
                while True:
                    data = await reader.read(_READ_SIZE)
                    if link.blackholed and data:
                        continue
                    await queue.put((loop.time(), data))
                    if not data:
                        return
            except (ConnectionError, OSError):
                await queue.put((loop.time(), _EOF))

        async def pump_out() -> None:
            while True:
                stamp, data = await queue.get()
                if data is _EOF or not data:
                    if writer.can_write_eof():
                        with contextlib.suppress(OSError, RuntimeError):
                            writer.write_eof()
                    return
                delay = stamp + self._latency - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                await self._send(writer, data, upstream=upstream)

        reader_task = asyncio.create_task(pump_in())
        try:
            await pump_out()
        except (ConnectionError, OSError):
            self._drop(link)
        finally:
            if not reader_task.done():
                # Writer side is finished; keep reading only if the other end half-closed
                # cleanly, otherwise stop.
                reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader_task

    async def _send(self, writer: asyncio.StreamWriter, data: bytes, *, upstream: bool) -> None:
        view = memoryview(data)
        while view:
            bw = self._bandwidth
            if bw is None:
                piece, view = view, view[len(view) :]
            else:
                step = max(1, int(bw / 20))  # ~50 ms slices keep the rate smooth
                piece, view = view[:step], view[step:]
            writer.write(piece)
            await writer.drain()
            if self.recorded is not None:
                self.recorded += piece
            if upstream:
                self.bytes_upstream += len(piece)
            else:
                self.bytes_downstream += len(piece)
            if bw is not None:
                await asyncio.sleep(len(piece) / bw)


class ThreadedProxy:
    """tests/support/faultproxy.py's FaultProxy on an event loop in a thread of its own."""

    def __init__(self, target_port: int, *, record: bool = False) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.proxy = FaultProxy("127.0.0.1", target_port, record=record)
        self._call(self.proxy.start())

    def _call(self, coro: Any, timeout: float = 10) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def _do(self, fn: Callable[[], None]) -> None:
        async def run() -> None:
            fn()

        self._call(run())

    @property
    def url(self) -> str:
        """The proxy as a hub's NATS address (the hub serves TLS only; the certificate names
        127.0.0.1, so a node verifies it through the proxy as it would directly)."""
        return self.proxy.url("tls")

    @property
    def port(self) -> int:
        return self.proxy.port

    @property
    def recorded(self) -> bytes:
        """Every byte the proxy delivered, both ways (with ``record=True``)."""
        return bytes(self.proxy.recorded or b"")

    @property
    def bytes_upstream(self) -> int:
        return self.proxy.bytes_upstream

    @property
    def bytes_downstream(self) -> int:
        return self.proxy.bytes_downstream

    def counts(self) -> tuple[int, int]:
        """Bytes carried so far: (client to target, target to client)."""
        return self.proxy.bytes_upstream, self.proxy.bytes_downstream

    @property
    def connections_total(self) -> int:
        return self.proxy.connections_total

    def cut(self, silent: bool = False) -> None:
        self._do(lambda: self.proxy.cut(silent=silent))

    def restore(self) -> None:
        self._do(self.proxy.restore)

    def set_latency(self, seconds: float) -> None:
        self._do(lambda: self.proxy.set_latency(seconds))

    def set_bandwidth(self, bps: float | None) -> None:
        self._do(lambda: self.proxy.set_bandwidth(bps))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._call(self.proxy.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()
