"""sd_notify(3) for the daemons, with no libsystemd dependency.

Under systemd (``Type=notify``) the service manager passes ``$NOTIFY_SOCKET``, a unix
datagram socket (a path, or an abstract name written ``@name``), and with
``WatchdogSec=`` also ``$WATCHDOG_USEC`` and ``$WATCHDOG_PID``. Outside systemd none is
set and every call here is a no-op, so the daemons behave the same run by hand.

- :func:`notify` sends ``READY=1``, ``STOPPING=1``, ``STATUS=...`` and the like.
- :func:`ready` tells systemd the daemon is serving and starts :func:`watchdog_task`,
  which sends ``WATCHDOG=1`` every ``WATCHDOG_USEC / 2`` *from the event loop*: if the
  loop wedges, the pings stop and systemd kills and restarts the service.
- :func:`stopping_then` wraps a signal handler so ``STOPPING=1`` goes out the moment
  SIGTERM arrives.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable

log = logging.getLogger("amber.sdnotify")

NOTIFY_SOCKET = "NOTIFY_SOCKET"
WATCHDOG_USEC = "WATCHDOG_USEC"
WATCHDOG_PID = "WATCHDOG_PID"


def _address() -> str | None:
    addr = os.environ.get(NOTIFY_SOCKET, "")
    if addr.startswith("@"):
        return "\0" + addr[1:]  # abstract namespace
    if addr.startswith("/"):
        return addr
    if addr:  # vsock:... and other forms are not used for local services
        log.debug("unsupported %s=%r; notifications disabled", NOTIFY_SOCKET, addr)
    return None


def notify(*states: str) -> bool:
    """Send ``states`` (e.g. ``"READY=1"``, ``"STATUS=..."``) in one datagram.

    Returns True if it was sent; False when not under systemd or the send failed
    (never raises, never blocks: a notification is not worth stalling the loop for).
    """
    addr = _address()
    if addr is None or not states:
        return False
    payload = "\n".join(s.replace("\n", " ") for s in states).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.setblocking(False)
            sock.connect(addr)
            sock.send(payload)
    except OSError as exc:
        log.debug("sd_notify %r failed: %s", states, exc)
        return False
    return True


def watchdog_interval() -> float | None:
    """Seconds between WATCHDOG=1 pings (half of $WATCHDOG_USEC), or None if not asked."""
    pid = os.environ.get(WATCHDOG_PID)
    if pid and pid != str(os.getpid()):
        return None  # the watchdog is meant for another process (we are a child)
    try:
        usec = int(os.environ.get(WATCHDOG_USEC, "0"))
    except ValueError:
        return None
    if usec <= 0 or _address() is None:
        return None
    return usec / 2 / 1e6


async def watchdog_task() -> None:
    """Ping the systemd watchdog from this event loop until cancelled.

    Returns at once when no watchdog is configured.
    """
    interval = watchdog_interval()
    if interval is None:
        return
    log.debug("feeding the systemd watchdog every %.3fs", interval)
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(interval)


def ready(status: str = "") -> asyncio.Task[None]:
    """Send READY=1 (and STATUS) and start the watchdog task; cancel it on shutdown.

    Call it only once the daemon is actually serving, from inside the running loop.
    """
    task = asyncio.create_task(watchdog_task(), name="sd-watchdog")
    notify("READY=1", *([f"STATUS={status}"] if status else []))
    return task


def stopping_then(callback: Callable[[], object]) -> Callable[[], None]:
    """A signal handler that sends STOPPING=1, then runs ``callback`` (e.g. event.set)."""

    def handler() -> None:
        notify("STOPPING=1", "STATUS=stopping")
        callback()

    return handler
