"""The node's link to the hub over NATS, with its enrolled, node-scoped credentials.

Every wait is bounded: requests and JetStream publishes time out, and a publish is
retried under the same ``Nats-Msg-Id`` so JetStream drops the duplicate if the
first one did land. The link also serves restores as a chunk and record source.

nats-py (and the aiohttp it loads, about 0.2 s of imports) is imported only when a
link connects, so commands that never reach the hub do not pay for it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

from amber.agent.enrolment import Enrolment
from amber.protocol import wire
from amber.protocol.errors import AmberError, ConfigError, HubUnavailableError
from amber.tlsctx import client_context, find_verify_error, untrusted_peer

log = logging.getLogger("amber.agent.hub")
FETCH_BYTES = 5 * 1024 * 1024
UNTRUSTED_HINT = (
    "the hub's certificate does not chain to the CA in this node's enrolment: the "
    "enrolment was written for another hub, or something is impersonating the hub; "
    "check the address, then enrol again with a fresh 'amber-hub node rotate' file"
)


def nats_error() -> type[Exception]:
    """nats-py's root error class (an except clause evaluates this only on an error)."""
    from nats.errors import Error  # loaded already: a link exists only once connected

    return Error


class TokenBucket:
    """A bandwidth limit in bytes per second (None: unlimited)."""

    def __init__(self, rate: int | None) -> None:
        self.rate = rate
        self.allowance = float(rate or 0)
        self.stamp = time.monotonic()

    async def take(self, n: int) -> None:
        if not self.rate:
            return
        while True:
            now = time.monotonic()
            self.allowance = min(self.rate, self.allowance + (now - self.stamp) * self.rate)
            self.stamp = now
            if self.allowance >= min(n, self.rate):
                self.allowance -= n
                return
            await asyncio.sleep((min(n, self.rate) - self.allowance) / self.rate)


class ConnectionWatch:
    """``dropped`` is set when the NATS connection is lost, and is a fresh event again
    once the client has reconnected. A JetStream PubAck for a publish sent on a lost
    connection never arrives: waiting out its timeout only stalls the upload."""

    def __init__(self) -> None:
        self.dropped = asyncio.Event()

    async def on_disconnect(self) -> None:
        self.dropped.set()

    async def on_reconnect(self) -> None:
        self.dropped = asyncio.Event()


class HubLink:
    def __init__(
        self,
        enr: Enrolment,
        nc: Any,
        *,
        timeout: float,
        bandwidth: int | None,
        watch: ConnectionWatch | None = None,
    ) -> None:
        self.enr, self.nc, self.timeout = enr, nc, timeout
        self.js = nc.jetstream(timeout=timeout)
        self.bucket = TokenBucket(bandwidth)
        self.watch = watch or ConnectionWatch()
        self.sent_bytes = 0

    @classmethod
    async def connect(
        cls,
        enr: Enrolment,
        *,
        timeout: float = 10.0,
        persistent: bool = False,
        bandwidth: int | None = None,
        insecure_plaintext: bool = False,
    ) -> HubLink:
        from nats.aio.client import Client

        tls = tls_options(enr, insecure_plaintext)

        async def quiet(exc: Exception) -> None:
            log.debug("nats: %s", exc)
            bad_cert = find_verify_error(exc)
            if bad_cert is not None:  # a wrong CA or an impostor: retrying cannot help
                raise untrusted_peer(", ".join(enr.servers), bad_cert, UNTRUSTED_HINT)

        watch = ConnectionWatch()
        nc = Client()
        connecting = nc.connect(
            list(enr.servers),
            user=enr.user,
            password=enr.password,
            inbox_prefix=enr.inbox_prefix,
            name=f"amber-agent-{enr.vault}-{enr.node}",
            connect_timeout=min(timeout, 5.0),
            allow_reconnect=True,
            max_reconnect_attempts=-1 if persistent else 10,
            reconnect_time_wait=0.5,
            error_cb=quiet,
            disconnected_cb=watch.on_disconnect,
            reconnected_cb=watch.on_reconnect,
            ping_interval=5,
            max_outstanding_pings=2,
            **tls,
        )
        try:  # bounded: nats-py can stall after a failed TLS handshake
            await asyncio.wait_for(connecting, None if persistent else 2 * timeout + 5)
        except HubUnavailableError as exc:
            log.error("%s", exc)
            await _abandon(nc)
            raise
        except (TimeoutError, nats_error(), OSError) as exc:
            await _abandon(nc)
            why = str(exc) or type(exc).__name__
            raise HubUnavailableError(
                f"cannot reach the hub at {', '.join(enr.servers)}: {why}"
            ) from None
        return cls(enr, nc, timeout=timeout, bandwidth=bandwidth, watch=watch)

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self.nc.close(), 5)
        except Exception:
            pass

    def subject(self, kind: str) -> str:
        return wire.subject(self.enr.vault, self.enr.node, kind)

    async def request(self, msg: wire.Message, expect: type[wire.Message]) -> Any:
        try:
            reply = await self.nc.request(
                self.subject("rpc"), wire.encode(msg), timeout=self.timeout
            )
        except (TimeoutError, nats_error(), OSError) as exc:
            raise HubUnavailableError(
                f"hub did not answer {msg.TYPE}: {exc or 'timeout'}"
            ) from None
        if len(reply.data) > wire.DECODE_OFF_LOOP_BYTES:  # a fetch reply of several MB
            return await asyncio.to_thread(wire.decode, reply.data, expect)
        return wire.decode(reply.data, expect)

    async def publish_ingest(self, msg: wire.Message, msg_id: str, deadline: float) -> None:
        """Publish to the ingest stream until JetStream acknowledges it (or deadline)."""
        payload = wire.encode(msg)
        await self.bucket.take(len(payload))
        delay = 0.2
        while True:
            try:
                await self._publish_once(payload, msg_id)
                self.sent_bytes += len(payload)
                return
            except (TimeoutError, nats_error(), OSError) as exc:
                if self.nc.is_closed:  # the client gave up reconnecting: no retry can land
                    raise HubUnavailableError(f"lost the connection to the hub: {exc}") from None
                if time.monotonic() + delay > deadline:
                    raise HubUnavailableError(f"hub did not acknowledge an upload: {exc}") from None
                log.debug("publish %s failed (%s); retrying", msg_id, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _publish_once(self, payload: bytes, msg_id: str) -> None:
        """One JetStream publish, given up early if the connection drops meanwhile."""
        dropped = self.watch.dropped
        pub = asyncio.ensure_future(
            self.js.publish(
                self.subject("ingest"),
                payload,
                timeout=self.timeout,
                headers={"Nats-Msg-Id": msg_id},
            )
        )
        if dropped.is_set():  # reconnecting now: the client sends it once reconnected
            await pub
            return
        lost = asyncio.ensure_future(dropped.wait())
        try:
            await asyncio.wait({pub, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
            if not pub.done():
                pub.cancel()
                pub.add_done_callback(lambda f: f.cancelled() or f.exception())
        if not pub.done() or pub.cancelled():
            raise TimeoutError("the connection dropped before JetStream acknowledged")
        pub.result()

    async def heartbeat(self, beat: wire.Heartbeat) -> None:
        try:
            await self.nc.publish(self.subject("status"), wire.encode(beat))
        except (nats_error(), OSError) as exc:
            log.debug("heartbeat not sent: %s", exc)

    # --- as a source for restores ---------------------------------------------------

    async def fetch(self, ids: Sequence[bytes]) -> dict[bytes, bytes]:
        found: dict[bytes, bytes] = {}
        todo = list(ids)
        while todo:
            asked = set(todo[:512])
            reply = await self.request(wire.FetchRequest(ids=tuple(todo[:512])), wire.FetchReply)
            # only what was asked for: the caller checks each object against its id
            found.update((i, b) for i, b in zip(reply.ids, reply.blobs, strict=True) if i in asked)
            gone = set(reply.missing) & asked
            todo = [i for i in todo if i not in found and i not in gone]
            if not asked & (set(reply.ids) | gone):
                break
        return found

    async def get_chunks(self, ids: Sequence[bytes]) -> dict[bytes, bytes]:
        batches, size, cur = [], 0, []
        for cid in ids:  # plaintext sizes are unknown here; FetchRequest replies are capped
            cur.append(cid)
            size += 1
            if size >= 32:
                batches.append(cur)
                cur, size = [], 0
        if cur:
            batches.append(cur)
        found: dict[bytes, bytes] = {}
        sem = asyncio.Semaphore(4)

        async def one(batch: list[bytes]) -> None:
            async with sem:
                found.update(await self.fetch(batch))

        await asyncio.gather(*(one(b) for b in batches))
        return found

    async def record(self, rid: bytes) -> bytes | None:
        return (await self.fetch([rid])).get(rid)

    async def list_checkpoints(self, after_seq: int = -1) -> list[bytes]:
        out: list[bytes] = []
        while True:
            reply = await self.request(
                wire.ListCheckpoints(node=self.enr.node, after_seq=after_seq), wire.CheckpointList
            )
            out.extend(reply.records)
            if not reply.more or not reply.records:
                return out
            from amber.protocol.records import checkpoint_public

            after_seq = checkpoint_public(reply.records[-1]).seq


def tls_options(enr: Enrolment, insecure_plaintext: bool) -> dict[str, Any]:
    """nats.connect's TLS options for ``enr``: its CA (v2) or the system's trust store
    (v1). A ``nats://`` server would get the password in clear: refused unless agent.toml
    says ``insecure_plaintext = true`` under [hub]."""
    plain = [u for u in enr.servers if not u.strip().startswith("tls://")]
    if plain and not insecure_plaintext:
        raise ConfigError(
            f"the enrolment names plaintext NATS servers ({', '.join(plain)}): the node's "
            "password would cross the network in clear",
            hint="ask the hub operator for a new enrolment ('amber-hub node rotate NAME "
            "--vault V --out FILE', then 'amber-agent enroll FILE'), or set "
            "insecure_plaintext = true under [hub] in agent.toml on a trusted network",
        )
    return {
        "tls": client_context(enr.ca or None, source="the enrolment's CA"),
        "tls_handshake_first": enr.tls_handshake_first,
    }


async def _abandon(nc: Any) -> None:
    try:
        await asyncio.wait_for(nc.close(), 2)
    except Exception:
        pass


async def try_connect(enr: Enrolment | None, timeout: float = 3.0) -> HubLink | None:
    """A link if the hub answers now, else None (the node keeps working offline)."""
    if enr is None:
        return None
    try:
        return await HubLink.connect(enr, timeout=timeout)
    except AmberError as exc:
        log.info("hub unreachable, working offline: %s", exc)
        return None
