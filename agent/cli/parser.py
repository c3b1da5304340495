"""`amber-agent`: the command line. Parsing only; the work is in commands.py and bundle.py.

Exit codes: 0 success; 2 usage; every other code is an error class's stable
exit_code, listed in docs/ERRORS.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from amber import __version__, logs
from amber.agent.cli import commands as c
from amber.agent.cli.bundle import add_commands as add_bundle_commands
from amber.agent.config import CONFIG_ENV, DEFAULT_CONFIG
from amber.protocol.errors import AmberError

EPILOG = (
    "exit codes: 0 ok, 2 usage, 3 config, 10-14 damaged data, 20-21 keys, 30-31 sources, "
    "40-42 journal/disk, 44 not found, 50-53 hub/store, 70 restore failed (docs/ERRORS.md)"
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="amber-agent", description="Amber edge agent", epilog=EPILOG)
    p.add_argument("--version", action="version", version=f"amber-agent {__version__}")
    p.add_argument(
        "--config",
        help=f"agent.toml (default: ${CONFIG_ENV}, else {DEFAULT_CONFIG})",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log debug detail to stderr")
    logs.add_arguments(p)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("init", help="set up a node: config, journal, keys")
    s.add_argument("--dir", required=True, help="state directory (config, journal, keys)")
    s.add_argument("--node", required=True)
    s.add_argument("--vault", required=True)
    s.add_argument("--vault-key", help="existing vault key file or passphrase export")
    s.add_argument("--enroll", metavar="FILE", help="enrolment file from 'amber-hub node add'")
    s.set_defaults(func=c.cmd_init)

    s = sub.add_parser("enroll", help="connect this node to a hub with its enrolment file")
    s.add_argument("file")
    s.set_defaults(func=c.cmd_enroll)

    s = sub.add_parser("sync", help="send committed checkpoints to the hub")
    s.add_argument("--once", action="store_true", help="one pass, then exit (the default)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=c.cmd_sync)

    s = sub.add_parser("keygen", help="write a new vault key to hand to several nodes")
    s.add_argument("--out", required=True)
    s.set_defaults(func=c.cmd_keygen)

    s = sub.add_parser("key-export", help="write this vault key protected by a passphrase")
    s.add_argument("--out", required=True)
    s.set_defaults(func=c.cmd_key_export)

    src = sub.add_parser("source", help="manage sources").add_subparsers(dest="sub", required=True)
    s = src.add_parser("add", help="protect a path")
    s.add_argument("name")
    s.add_argument("--kind", required=True, choices=["sqlite", "files", "model", "jsonl", "state"])
    s.add_argument("--path", required=True)
    s.add_argument("--tier", default="warm", choices=["hot", "warm", "cold"])
    s.add_argument("--exclude", action="append", help="glob relative to the path (repeatable)")
    s.add_argument(
        "--lineage",
        action="append",
        metavar="KEY=VALUE",
        help="lineage label recorded in every manifest (repeatable)",
    )
    s.set_defaults(func=c.cmd_source_add)
    s = src.add_parser("remove", help="stop protecting a source")
    s.add_argument("name")
    s.set_defaults(func=c.cmd_source_remove)
    s = src.add_parser("list", help="list sources")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=c.cmd_source_list)

    s = sub.add_parser("checkpoint", help="take a checkpoint now; prints its id")
    s.add_argument("--source", action="append", help="only this source (repeatable)")
    s.add_argument("--label", action="append", metavar="KEY=VALUE")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=c.cmd_checkpoint)

    s = sub.add_parser("checkpoints", help="list checkpoints")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=c.cmd_checkpoints)

    s = sub.add_parser("status", help="backlog, checkpoint age against RPO, drift")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=c.cmd_status)

    s = sub.add_parser("verify", help="re-read and check every chunk of a checkpoint (or all)")
    s.add_argument("id", nargs="?", help="checkpoint id prefix, latest or seq:N")
    s.set_defaults(func=c.cmd_verify)

    s = sub.add_parser("restore", help="restore a checkpoint")
    s.add_argument("id", help="checkpoint id prefix, latest or seq:N")
    s.add_argument("--to", help="a new directory to restore into")
    s.add_argument(
        "--in-place",
        action="store_true",
        help="restore over the sources, after a safety checkpoint",
    )
    s.add_argument("--source", action="append", help="only this source (repeatable)")
    s.set_defaults(func=c.cmd_restore)

    s = sub.add_parser("run", help="the daemon: checkpoint on schedule until SIGTERM")
    s.set_defaults(func=c.cmd_run)
    add_bundle_commands(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logs.setup(logs.parse_format(args.log_format), logging.DEBUG if args.verbose else logging.INFO)
    try:
        return int(args.func(args))
    except AmberError as exc:
        sys.stderr.write(exc.render() + "\n")
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        os._exit(0)
