"""`amber-hub serve`: run the hub (a hub in a box with no configuration)."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

from amber import __version__, cli, sdnotify
from amber.hub.config import load_hub_config


def run_serve(args: argparse.Namespace) -> int:
    from amber.hub.server import Hub  # nats, aiohttp: only the serving process needs them

    cfg = load_hub_config(Path(args.config) if args.config else None, args.data)
    if args.nats_listen:
        cfg.nats_listen = args.nats_listen
    if args.admin_listen:
        cfg.admin_listen = args.admin_listen
    if args.metrics_listen:
        cfg.metrics_listen = args.metrics_listen
    if args.store:
        cfg.store_url = args.store

    async def run() -> None:
        async with Hub(cfg) as hub:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, sdnotify.stopping_then(hub.stopping.set))
            cli.out(f"amber-hub {__version__} serving: nats {hub.nats_url}, admin {hub.admin_url}")
            sys.stdout.flush()
            watchdog = sdnotify.ready(f"serving: nats {hub.nats_url}, admin {hub.admin_url}")
            try:
                await hub.wait_closed()
            finally:
                watchdog.cancel()

    asyncio.run(run())
    return 0


def add_commands(sub: Any) -> None:
    s = sub.add_parser("serve", help="run the hub")
    s.add_argument(
        "--nats-listen", type=cli.LISTEN, help="host:port for the embedded nats-server (0 = free)"
    )
    s.add_argument("--admin-listen", type=cli.LISTEN, help="host:port for the admin API")
    s.add_argument(
        "--metrics-listen",
        type=cli.LISTEN,
        help="host:port for Prometheus metrics at /metrics (0 = free port)",
    )
    s.add_argument(
        "--store",
        type=cli.STORE_URL,
        help="store URL: file:///dir or s3://bucket/prefix?endpoint=...",
    )
    s.set_defaults(func=run_serve)
