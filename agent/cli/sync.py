"""`amber-agent sync`: send committed checkpoints to the hub."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from amber import cli
from amber.agent.config import config_path, load_config
from amber.agent.remote import heartbeat, sync
from amber.agent.runtime import AgentRuntime


def run_sync(args: argparse.Namespace) -> int:
    cfg = load_config(config_path(args.config))

    async def run() -> Any:
        async with AgentRuntime.open(cfg) as rt, rt.hub(required=True) as link:
            assert link is not None
            stats = await sync(rt, link)  # no write lock: sync never touches tentative rows
            await heartbeat(rt, link)
            return stats

    st = asyncio.run(run())
    if args.json:
        cli.out(json.dumps(st.__dict__))
    else:
        cli.out(
            f"synced {st.checkpoints} checkpoint(s): {st.chunks_sent} chunks sent "
            f"({st.bytes_sent:,} bytes), {st.chunks_skipped} already at the hub; "
            f"{st.evicted_bytes:,} bytes evicted from the journal"
        )
    return 0


def add_commands(sub: Any) -> None:
    s = sub.add_parser("sync", help="send committed checkpoints to the hub")
    s.add_argument("--once", action="store_true", help="one pass, then exit (the default)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=run_sync)
