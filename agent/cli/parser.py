"""`amber-agent`: the parser; each command group is one module beside it (keys.py,
sources.py, checkpoints.py, restore.py, sync.py, daemon.py, bundle.py, node.py), with
its options and a plain ``run_*`` function that tests may call directly.

The global options (``--config``, ``-v``, ``--log-format``) go before or after the
command. Exit codes come from the error table (``amber-agent --help``, docs/ERRORS.md).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from amber import __version__, cli
from amber.agent.cli import bundle, checkpoints, daemon, keys, node, restore, sources, sync
from amber.agent.config import CONFIG_ENV, DEFAULT_CONFIG

GROUPS = (node, keys, sync, sources, checkpoints, restore, daemon, bundle)


def add_global_options(p: argparse.ArgumentParser, suppress: bool) -> None:
    p.add_argument(
        "--config",
        type=cli.PATH,
        default=argparse.SUPPRESS if suppress else None,
        help=f"agent.toml (default: ${CONFIG_ENV}, else {DEFAULT_CONFIG})",
    )
    cli.add_logging_options(p, suppress=suppress)


def build_parser() -> argparse.ArgumentParser:
    p = cli.Parser(prog="amber-agent", description="Amber edge agent", epilog=cli.exit_codes_help())
    p.add_argument("--version", action="version", version=f"amber-agent {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.add_commands(sub)
    cli.share_options(p, add_global_options)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run(build_parser(), argv)
