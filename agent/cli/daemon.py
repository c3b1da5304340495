"""`amber-agent run`: the daemon, checkpointing on schedule until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from amber.agent.config import config_path, load_config


def run_daemon(args: argparse.Namespace) -> int:
    from amber.agent.daemon import AgentDaemon  # its metrics exporter (prometheus_client) only here

    cfg = load_config(config_path(args.config))

    async def run() -> None:
        daemon = AgentDaemon(cfg)
        daemon.install_signals()
        await daemon.run()

    asyncio.run(run())
    return 0


def add_commands(sub: Any) -> None:
    s = sub.add_parser("run", help="the daemon: checkpoint on schedule until SIGTERM")
    s.set_defaults(func=run_daemon)
