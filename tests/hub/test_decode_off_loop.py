"""Large ingest batches and fetch replies are decoded off the event loop (issue #14):
a node sending 8 MB messages must not stall the hub's requests, heartbeats and acks."""

from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace
from typing import Any

import pytest

from amber.hub import ingest_stream as service
from amber.protocol import wire
from amber.protocol.errors import AmberError


def _recording(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    threads: list[str] = []
    real = wire.decode

    def decode(data: bytes, *args: Any) -> Any:
        threads.append(threading.current_thread().name)
        return real(data, *args)

    monkeypatch.setattr(wire, "decode", decode)
    return threads


def _msgs(n: int, size: int) -> list[Any]:
    blob = b"\x00" * size
    return [
        SimpleNamespace(data=wire.encode(wire.ChunkPut(id=bytes([i]) * 32, blob=blob)))
        for i in range(n)
    ]


def test_a_large_ingest_batch_is_decoded_in_a_worker_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    threads = _recording(monkeypatch)
    big = asyncio.run(service._decode_all(_msgs(4, wire.DECODE_OFF_LOOP_BYTES)))
    assert all(isinstance(m, wire.ChunkPut) for m in big)
    assert threads and threading.main_thread().name not in threads
    threads.clear()
    asyncio.run(service._decode_all(_msgs(2, 100)))  # small: no thread hop
    assert threads == [threading.main_thread().name] * 2


def test_a_malformed_message_in_a_batch_is_its_own_typed_error() -> None:
    msgs = [*_msgs(1, 10), SimpleNamespace(data=b"\xff garbage")]
    out = asyncio.run(service._decode_all(msgs))
    assert isinstance(out[0], wire.ChunkPut) and isinstance(out[1], AmberError)
