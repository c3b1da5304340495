"""TLS for tests that talk to a hub in a box directly (not through amber's clients).

The hub serves NATS (TLS from the first byte) and its admin API (HTTPS) with a
certificate of its own CA, ``DATA/tls/ca.pem``; these helpers build the client side.
Plain Python, no pytest imports.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

__all__ = ["admin_context", "enrolment_tls", "host_port", "hub_nats_tls", "tls_socket"]


def admin_context(data_dir: Path) -> ssl.SSLContext:
    """A client context trusting the hub's CA only (for urllib's ``context=``)."""
    return ssl.create_default_context(cafile=str(data_dir / "tls" / "ca.pem"))


def hub_nats_tls(data_dir: Path) -> dict[str, Any]:
    """``nats.connect`` options for the hub in a box's NATS."""
    return {"tls": admin_context(data_dir), "tls_handshake_first": True}


def enrolment_tls(enr: dict[str, Any]) -> dict[str, Any]:
    """``nats.connect`` options from an enrolment object (version 2)."""
    ctx = ssl.create_default_context(cadata=enr["ca"]) if enr.get("ca") else None
    opts: dict[str, Any] = {"tls_handshake_first": bool(enr.get("tls_handshake_first"))}
    if ctx is not None:
        opts["tls"] = ctx
    return opts


def host_port(url: str) -> tuple[str, int]:
    """``(host, port)`` of ``tls://h:p`` or ``nats://h:p``."""
    parts = urlsplit(url)
    assert parts.hostname and parts.port, url
    return parts.hostname, parts.port


def tls_socket(data_dir: Path, host: str, port: int, timeout: float = 10) -> ssl.SSLSocket:
    """A raw TCP connection to the hub's NATS with TLS started first, as the hub's
    server expects; the caller reads INFO and speaks the protocol itself."""
    raw = socket.create_connection((host, port), timeout=timeout)
    return admin_context(data_dir).wrap_socket(raw, server_hostname=host)
