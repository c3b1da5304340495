"""`amber-agent restore`: a checkpoint into a new directory, or over the sources."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from amber import cli
from amber.agent.cli.progress import ProgressLine
from amber.agent.config import config_path, load_config
from amber.agent.remote import adopt_from_hub
from amber.agent.restore.inplace import restore_in_place
from amber.agent.runtime import AgentRuntime
from amber.protocol.errors import UsageError


def run_restore(args: argparse.Namespace) -> int:
    cfg = load_config(config_path(args.config))
    if bool(args.to) == bool(args.in_place):
        raise UsageError("give exactly one of --to DIR or --in-place")

    async def run() -> Any:
        async with AgentRuntime.open(cfg) as rt, rt.hub() as link:
            if link is not None:
                await adopt_from_hub(rt, link)
            row = await rt.journal.resolve(args.id)
            bar = ProgressLine("restore")
            restorer = rt.restorer(bar, link)
            async with rt.writing():
                if args.to:
                    stats = await restorer.restore_to(row.id, Path(args.to), args.source)
                    safety = None
                else:
                    safety, stats = await restore_in_place(
                        cfg, restorer, rt.checkpointer(), row.id, args.source
                    )
            bar.finish()
            return row, stats, safety

    row, stats, safety = asyncio.run(run())
    if safety is not None:
        cli.out(f"safety checkpoint {safety.hex()} holds what was there before")
    where = args.to or "the sources' paths"
    cli.out(
        f"restored checkpoint {row.id.hex()[:16]} (seq {row.seq}) to {where}: "
        f"{stats.files} files, {stats.bytes:,} bytes, verified"
    )
    return 0


def add_commands(sub: Any) -> None:
    s = sub.add_parser("restore", help="restore a checkpoint")
    s.add_argument("id", type=cli.TEXT, help="checkpoint id prefix, latest or seq:N")
    s.add_argument("--to", type=cli.PATH, help="a new directory to restore into")
    s.add_argument(
        "--in-place",
        action="store_true",
        help="restore over the sources, after a safety checkpoint",
    )
    s.add_argument("--source", action="append", type=cli.TEXT, help="only this source (repeatable)")
    s.set_defaults(func=run_restore)
